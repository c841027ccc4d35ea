"""oz (oz-install): the recipe becomes an oz TDL (template description: OS, install tree, packages, files,
commands); oz installs the OS in a libvirt VM with its own generated preseed/kickstart, then customises it over
SSH (`oz-install -u`).

oz 0.17 (Debian's) knows Debian 5-9 only ("Unsupported Debian update 12"): for newer releases the module says
so instead of pretending, and renders the TDL for reference. It also needs an installer tree or ISO, which the
project's build machines cannot reach, so no oz build has been run here.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

from .. import checkers, disk
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..runner import run
from . import BuildState, DiskTool


@lru_cache(maxsize=1)
def supported() -> dict[str, list[str]]:
    """{OS name: [versions]} as oz-install --help lists them."""
    try:
        out = subprocess.run(["oz-install", "-h"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    table = out.split("Currently supported operating systems are:", 1)[-1]
    result = {}
    for line in table.splitlines():
        m = re.match(r"^\s+([A-Za-z][A-Za-z ]*?):\s*(.+)$", line)
        if m:
            result[m.group(1).strip()] = [v.strip() for v in m.group(2).split(",")]
    return result


class Oz(DiskTool):
    name = "oz"
    program = "oz-install"
    packages = ("oz",)
    applies_recipe = True
    check_when_refused = True           # oz's TDL parser reads any release; oz-install refuses the unknown ones
    description = "oz: OS installation from a TDL in a libvirt VM, then customisation over SSH"
    native = {"packages": "<packages>", "desktop": "<packages> (the desktop's packages)", "files": "<files>",
              "scripts": "<commands>", "users": "<commands> (customize.sh)"}

    def version(self):
        return self.package_version("oz")         # oz-install has no --version

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why:
            return why
        table = supported()
        if not table:
            return "oz-install is not installed here, so the releases it supports are unknown"
        known = table.get(distro.pretty_name, [])
        if release.version not in known:
            return (f"oz {self.version()} does not support {distro.pretty_name} {release.version} "
                    f"(it knows {distro.pretty_name} {', '.join(known) or 'none'}; oz-install says "
                    f"'Unsupported {distro.pretty_name} update {release.version}')")
        return None

    def tdl(self, state: BuildState) -> str:
        r = state.recipe
        pkgs = state.distro.packages_for(r)
        mirror = state.mirror.uri or "http://MIRROR/"
        files = []
        if r.files_dir and r.files_dir.is_dir():
            for p in sorted(r.files_dir.rglob("*")):
                if p.is_file():
                    dest = "/" + str(p.relative_to(r.files_dir))
                    files.append(f"    <file name='{escape(dest)}' type='raw'>{escape(p.read_text(errors='replace'))}"
                                 "</file>")
        from ..customize import render_script
        script = escape(render_script(r))
        return f"""<?xml version="1.0"?>
<!-- oz TDL rendered by diskimages from recipe {r.name} -->
<template>
  <name>{r.name}</name>
  <description>{escape(r.description)}</description>
  <os>
    <name>{state.distro.pretty_name}</name>
    <version>{state.release.version}</version>
    <arch>{'x86_64' if r.architecture == 'amd64' else 'aarch64'}</arch>
    <install type='url'>
      <url>{escape(mirror)}</url>
    </install>
    <rootpw>locked-by-customize</rootpw>
  </os>
  <disk>
    <size>{max(1, r.disk.size_bytes >> 30)}</size>
  </disk>
  <packages>
{chr(10).join(f"    <package name='{p}'/>" for p in pkgs)}
  </packages>
  <files>
{chr(10).join(files)}
  </files>
  <commands>
    <command name='customize'>{script}</command>
  </commands>
</template>
"""

    def render(self, state: BuildState) -> dict[str, str]:
        return {"oz.tdl": self.tdl(state),
                "command": "oz-install -u -d 3 -s WORK/disk.qcow2 -x WORK/libvirt.xml oz.tdl\n"}

    def check(self, state: BuildState, where: Path) -> list:
        """oz's own TDL parser (its refusal of releases it does not know comes from `supports`)."""
        where.mkdir(parents=True, exist_ok=True)
        (where / "oz.tdl").write_text(self.tdl(state))
        return [checkers.oz_tdl(where / "oz.tdl", "oz.tdl")]

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        tdl = state.work / "oz.tdl"
        tdl.write_text(self.tdl(state))
        out = state.work / "disk.qcow2"
        run(["oz-install", "-u", "-d", "3", "-s", out, "-x", state.work / "libvirt.xml", tdl], log=state.log,
            on_line=state.on_line)
        run(["qemu-img", "convert", "-O", "raw", out, raw], log=state.log)
        return disk.raw_disk_info(raw, state.distro)
