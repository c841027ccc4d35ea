"""osbuild's image-builder: a blueprint (TOML, osbuild's blueprint reference) with the recipe's packages and the
desktop's comps group, hostname, kernel arguments, users, time zone, locale and keyboard, services, and the
recipe's overlay files and autologin setting as `customizations.files`; `image-builder build qcow2` makes the
disk. A blueprint runs no scripts, so a recipe with `scripts` is refused.

image-builder is packaged for Fedora, not Debian or Ubuntu: on the project's machines and on CI's Ubuntu runners
the blueprint is rendered and checked (TOML and the documented keys), not built.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import checkers, disk
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..recipe import RecipeError
from ..runner import run
from . import BuildState, DiskTool, shell_command

MAX_FILE = 1 << 20          # overlay files larger than this do not belong in a blueprint


def _toml(v) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays are valid TOML for these."""
    return json.dumps(v)


class ImageBuilder(DiskTool):
    name = "image-builder"
    program = "image-builder"
    packages = ("image-builder",)
    applies_recipe = True
    check_needs_program = False       # its files are checked against the documented fields
    description = "osbuild's image-builder: a blueprint (TOML) built into a qcow2 by osbuild"
    package_managers = ("dnf",)
    unsupported = {"scripts": "a blueprint has no step that runs a script (osbuild's customizations are declarative)"}
    native = {"packages": "[[packages]]", "desktop": "[[groups]] + [[packages]]", "hostname": "customizations.hostname",
              "locale": "customizations.locale", "timezone": "customizations.timezone",
              "keyboard": "customizations.locale.keyboard", "users": "[[customizations.user]]",
              "autologin": "[[customizations.files]] (LightDM)", "files": "[[customizations.files]]",
              "services": "customizations.services", "kernel_cmdline": "customizations.kernel.append",
              "disk": "image-builder's qcow2 image type"}

    def unavailable_reason(self):
        return None if self.version() else ("image-builder is not installed: it is packaged for Fedora "
                                            "(dnf install image-builder), not for this host's distribution")

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and distro.name != "fedora":
            why = f"image-builder builds Fedora, CentOS and RHEL, not {distro.pretty_name}"
        return why

    def blueprint(self, state: BuildState) -> str:
        r, d = state.recipe, state.distro
        desk = d.desktops[r.desktop]
        pkgs = d.packages_for(r)
        out = [f"# osbuild blueprint rendered by diskimages from recipe {r.name} (edit the recipe, not this file)",
               f"name = {_toml(r.name)}", f"description = {_toml(r.description or r.name)}", 'version = "0.0.1"',
               f"distro = {_toml(f'{d.name}-{state.release.version}')}", ""]
        for p in pkgs:
            if p.startswith("@"):
                out += ["[[groups]]", f"name = {_toml(p[1:])}", ""]
            else:
                out += ["[[packages]]", f"name = {_toml(p)}", 'version = "*"', ""]
        out += ["[customizations]", f"hostname = {_toml(r.hostname)}", "",
                "[customizations.kernel]", f"append = {_toml(disk.SERIAL_CONSOLE + ' ' + r.kernel_cmdline)}", "",
                "[customizations.timezone]", f"timezone = {_toml(r.timezone)}", "",
                "[customizations.locale]", f"languages = {_toml([r.locale])}",
                f"keyboard = {_toml(r.keyboard.split('(')[0])}", ""]
        for u in r.users:
            groups = list(dict.fromkeys(list(u.groups) + ([d.sudo_group] if u.sudo else [])))
            out += ["[[customizations.user]]", f"name = {_toml(u.name)}", f"uid = {r.user_uid(u.name)}",
                    f"shell = {_toml(u.shell)}", f"groups = {_toml(groups)}"]
            if u.password_hash:
                out.append(f"password = {_toml(u.password_hash)}")
            out.append("")
        enabled = list(dict.fromkeys([*d.desktop_services(desk), *r.services]))
        out += ["[customizations.services]", f"enabled = {_toml(enabled)}", ""]
        files = []
        if r.autologin and desk.display_manager == "lightdm":
            files.append(("/etc/lightdm/lightdm.conf.d/50-diskimages-autologin.conf",
                          f"[Seat:*]\nautologin-user={r.autologin}\nautologin-user-timeout=0\n"
                          f"autologin-session={desk.session}\n"))
        if r.files_dir:
            for p in sorted(r.files_dir.rglob("*")):
                if not p.is_file() or p.is_symlink():
                    continue
                rel = p.relative_to(r.files_dir)
                try:
                    if p.stat().st_size > MAX_FILE:
                        raise ValueError
                    files.append((f"/{rel}", p.read_bytes().decode("utf-8")))
                except (ValueError, UnicodeDecodeError):
                    raise RecipeError(r.source, "files", f"{rel} is not a UTF-8 text file of at most 1 MiB: a "
                                                         "blueprint carries only such files (allowed: text files; "
                                                         "or another tool)") from None
        for path, data in files:
            out += ["[[customizations.files]]", f"path = {_toml(path)}", f"data = {_toml(data)}", ""]
        return "\n".join(out)

    def render(self, state: BuildState) -> dict[str, str]:
        return {"blueprint.toml": self.blueprint(state),
                "command": shell_command(["image-builder", "build", "qcow2", "--blueprint", "blueprint.toml",
                                          "--distro", f"{state.distro.name}-{state.release.version}",
                                          "--output-dir", "OUTPUT"])}

    def check(self, state: BuildState, where: Path) -> list:
        where.mkdir(parents=True, exist_ok=True)
        (where / "blueprint.toml").write_text(self.blueprint(state))
        return [checkers.blueprint(where / "blueprint.toml", "blueprint.toml")]

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        where = state.work / "image-builder"
        where.mkdir(parents=True)
        (where / "blueprint.toml").write_text(self.blueprint(state))
        out = where / "out"
        state.cache = "image-builder's own (osbuild's store)"
        run(["image-builder", "build", "qcow2", "--blueprint", where / "blueprint.toml",
             "--distro", f"{state.distro.name}-{state.release.version}", "--output-dir", out],
            cwd=where, log=state.log, on_line=state.on_line)
        qcow2 = next(out.rglob("*.qcow2"))
        run(["qemu-img", "convert", "-O", "raw", qcow2, raw], log=state.log)
        if os.path.getsize(raw) < state.recipe.disk.size_bytes:
            run(["qemu-img", "resize", "-f", "raw", raw, str(state.recipe.disk.size_bytes)], log=state.log)
            run(["sfdisk", "--relocate", "gpt-bak-std", raw], log=state.log)
        return disk.raw_disk_info(raw, state.distro)
