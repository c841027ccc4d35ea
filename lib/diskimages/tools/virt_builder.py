"""virt-builder (libguestfs), two ways, chosen by the distribution:

* **the project's repository** (distributions with a cloud base recipe: Debian): the cloud base image of the
  recipe's release is published as a virt-builder template repository (index in virt-builder's format, checked by
  virt-index-validate; `write_repo`, which also publishes any built image: `python -m diskimages
  virt-builder-repo`), and the recipe becomes `--source file://REPO/index`;
* **the libguestfs index** (Ubuntu, Fedora): the index virt-builder is configured with (its repos.d) publishes
  `ubuntu-*` and `fedora-*` templates, used when that index is reachable.

Either way the command line is `--size`, `--upload` of the staging tarball and `--run-command` of vm-build.sh
(packages, kernel command line, the shared customisation), run inside the libguestfs appliance (not a booted
system, so no cloud-init is involved). libguestfs' appliance uses KVM when it works, else TCG
(`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`, said in the record).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from functools import lru_cache

from .. import checkers, disk, distros, measure, vmbuild
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..hostfix import PrivateNamespace
from ..paths import cache_dir
from . import BASE_OPTION, BuildState, DiskTool, shell_command
from ..errors import Failure


REPOS_D = "/etc/virt-builder/repos.d"
#: the template names of the libguestfs index, per distribution
INDEX_TEMPLATES = {"ubuntu": "ubuntu-{version}", "fedora": "fedora-{version}"}


@lru_cache(maxsize=1)
def index_templates() -> tuple[Optional[set[str]], str]:
    """(the template names the configured indexes list, or None when they cannot be read, and why)."""
    try:
        r = subprocess.run(["virt-builder", "--list", "--list-format", "short"], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)
    if r.returncode != 0:
        lines = [x.strip() for x in (r.stderr or r.stdout).splitlines() if x.strip()]
        said = next((x for x in lines if x.startswith("curl:") or "error" in x.lower()), lines[-1] if lines else "")
        return None, said or f"exit status {r.returncode}"
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}, ""


class VirtBuilder(DiskTool):
    name = "virt-builder"
    program = "virt-builder"
    packages = ("guestfs-tools",)
    applies_recipe = True
    needs = frozenset({"base", "accel"})
    description = "libguestfs' virt-builder from a template repository of the cloud base made by diskimages"
    options = {"base": BASE_OPTION}
    native = {"packages": "--run-command vm-build.sh (the distribution's package install, without Recommends)",
              "desktop": "--run-command vm-build.sh (the desktop's packages)",
              "files": "--upload (staged tarball)", "disk": "--size (virt-resize expands the root)"}

    @staticmethod
    def path_for(distro: Distribution) -> Optional[str]:
        """"repo" (the project's repository of its cloud base), "index" (the libguestfs index) or None."""
        if distro.cloud_base_recipe:
            return "repo"
        return "index" if distro.name in INDEX_TEMPLATES else None

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and self.path_for(distro) is None:
            why = (f"neither the project's cloud base nor the libguestfs index has {distro.pretty_name} templates")
        return why

    def needs_for(self, distro=None):
        if distro is not None and self.path_for(distro) == "index":
            return frozenset({"accel"})
        return self.needs

    def template_name(self, state: BuildState) -> str:
        if self.path_for(state.distro) == "index":
            return INDEX_TEMPLATES[state.distro.name].format(version=state.release.version)
        return state.distro.cloud_base_recipe.format(version=state.release.version)

    def source_unreachable(self, recipe) -> Optional[str]:
        d, rel = distros.for_recipe(recipe)
        if self.path_for(d) != "index":
            return super().source_unreachable(recipe)
        names, why = index_templates()
        template = INDEX_TEMPLATES[d.name].format(version=rel.version)
        if names is None:
            return f"checked, not built here: the libguestfs template index is unreachable ({why})"
        if template not in names:
            return f"the libguestfs index has no template {template} (it has {', '.join(sorted(names)[:12])} ...)"
        return None

    def argv(self, state: BuildState, index: Optional[Path], template: str, raw: Path, stage: Path) -> list[str]:
        st = vmbuild.customize.STAGE
        source = ["--source", index.as_uri(), "--no-check-signature"] if index else []
        return ["virt-builder", template, *source, "--no-cache",
                "--arch", ARCHES[state.recipe.architecture], "--format", "raw",
                "--size", f"{state.recipe.disk.size_bytes >> 20}M", "-o", str(raw),
                # the root account stays locked, as the recipe's customisation left it (the default is random)
                "--root-password", "locked:disabled", "--upload", f"{stage}:/var/tmp/diskimages-stage.tar.gz",
                "--run-command", "tar -xzf /var/tmp/diskimages-stage.tar.gz -C / && "
                                 "rm -f /var/tmp/diskimages-stage.tar.gz",
                "--run-command", f"sh {st}/{vmbuild.VM_SCRIPT}"]

    def render(self, state: BuildState) -> dict[str, str]:
        template = self.template_name(state)
        if self.path_for(state.distro) == "index":
            argv = self.argv(state, None, template, Path("WORK/disk.raw"), Path("WORK/stage.tar.gz"))
            return {"command": shell_command(argv), "vm-build.sh": vmbuild.vm_script(state.recipe)}
        argv = self.argv(state, Path("/REPO/index"), template, Path("WORK/disk.raw"), Path("WORK/stage.tar.gz"))
        return {"command": shell_command(argv), "vm-build.sh": vmbuild.vm_script(state.recipe),
                "index": f"[{template}]\nname=... (written by python -m diskimages virt-builder-repo, "
                         "checked by virt-index-validate)\n"}

    def check(self, state: BuildState, where: Path) -> list:
        """virt-builder's own option and index parsers on the rendered command, against a stand-in index that
        lists the template (checked by virt-index-validate) with the configured indexes hidden: the command is
        accepted when virt-builder gets as far as downloading the stand-in template."""
        where.mkdir(parents=True, exist_ok=True)
        template = self.template_name(state)
        index = where / "index"
        index.write_text(f"[{template}]\nname=stand-in\nosinfo=linux2022\narch={ARCHES[state.recipe.architecture]}\n"
                         "file=stand-in.xz\nchecksum[sha512]=00\nformat=raw\nsize=1073741824\ncompressed_size=1\n")
        found = [checkers.run("index (stand-in)", "virt-index-validate", ["virt-index-validate", index])]
        (where / "stage.tar.gz").write_bytes(b"")
        argv = self.argv(state, index, template, where / "disk.raw", where / "stage.tar.gz")
        if "--source" not in argv:
            argv[2:2] = ["--source", index.as_uri(), "--no-check-signature"]
        with PrivateNamespace(where / "hostfix", hide=[REPOS_D]) as ns:
            f = checkers.run("command", "virt-builder (options, index)", ns.argv(argv), timeout=60)
        reached = f"Downloading: {(where / 'stand-in.xz').as_uri()}" in f.detail or "stand-in.xz" in f.detail
        found.insert(0, checkers.Finding("command", f.parser, reached,
                                         "options and index accepted; stopped at the stand-in template's download"
                                         if reached else f.detail))
        return found

    def repo(self, state: BuildState) -> tuple[Path, str]:
        base = state.base.path
        d = cache_dir("virt-builder", base.stem)
        index = d / "index"
        if not index.is_file():
            write_repo(d, [base])
        return index, state.base.recipe

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        if self.path_for(state.distro) == "index":
            index, template, hide = None, self.template_name(state), []
        else:
            (index, template), hide = self.repo(state), [REPOS_D]
        stage = state.work / "stage.tar.gz"
        fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(vmbuild.stage_tarball(state.recipe))
        # --source adds to the repositories in /etc/virt-builder/repos.d (which it fetches first, failing when
        # they are unreachable): the build sees only the project's repository
        vmbuild.run_guestfs(state, self.argv(state, index, template, raw, stage), hide=hide)
        vmbuild.sparsify(state, raw)
        return disk.raw_disk_info(raw, state.distro)


# -- virt-builder template repositories made from built images: a second way to share them.
# `write_repo(dir, images)` writes each image as an xz-compressed template plus the `index` file in
# virt-builder's format (checked with `virt-index-validate`); `virt-builder --source file://DIR/index` (or an
# HTTP URL to it) then lists and builds from them. The templates keep their build records' facts in the notes.

ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def _sha512(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha512").hexdigest()


def _osinfo(rec: dict) -> str:
    try:
        d = distros.get(rec.get("distro", ""))
        return d.osinfo_ids(d.release(str(rec.get("release_version") or rec.get("release"))))[0]
    except KeyError:
        return "linux2022"


def template_entry(name: str, image: Path, xz: Path, record: Optional[dict], expand: Optional[str]) -> str:
    info = measure.qemu_img_info(image)
    rec = record or {}
    lines = [f"[{name}]", f"name={rec.get('recipe', name)} (diskimages, {rec.get('tool_label', 'built')})",
             f"osinfo={_osinfo(rec)}",
             f"arch={ARCHES.get(rec.get('architecture', 'amd64'), 'x86_64')}",
             f"file={xz.name}", f"checksum[sha512]={_sha512(xz)}", f"format={info['format']}",
             f"size={info['virtual-size']}", f"compressed_size={xz.stat().st_size}"]
    if expand:
        lines.append(f"expand={expand}")
    notes = [f"built by {rec.get('tool_label', '?')} {rec.get('tool_version', '')}".rstrip(),
             f"recipe digest {rec.get('recipe_digest', '?')}", f"image sha256 {rec.get('sha256', '?')}"]
    lines.append("notes=" + "\n ".join(notes))
    return "\n".join(lines) + "\n"


def write_repo(directory: Path | str, images: Iterable[Path | str], *, expand: Optional[str] = "/dev/sda3") -> Path:
    """Write templates + index into `directory`; returns the index path (validated). `expand`: the partition
    virt-resize grows to a requested --size (the root: the 3rd partition of diskimages' BIOS+ESP+root layout)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for image in map(Path, images):
        rec_path = image.with_suffix(".json")
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else None
        name = (rec or {}).get("recipe") or image.name.split(".")[0]
        xz = d / f"{image.name}.xz"
        if not xz.is_file():
            tmp = xz.with_name(xz.name + ".partial")
            try:
                with open(tmp, "wb") as out:
                    subprocess.run(["xz", "-0", "-T0", "-c", str(image)], stdout=out, check=True)
                tmp.rename(xz)
            finally:
                tmp.unlink(missing_ok=True)
        entries.append(template_entry(name, image, xz, rec, expand))
    index = d / "index"
    index.write_text("\n".join(entries))
    validate(index)
    return index


def validate(index: Path) -> None:
    r = subprocess.run(["virt-index-validate", str(index)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"virt-index-validate refused {index}: {(r.stderr or r.stdout).strip()}")
