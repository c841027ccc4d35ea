"""ubuntu-image (Canonical): a classic image definition (`image-definition.yaml`, the shape of ubuntu-image's own
`internal/imagedefinition` reference) that germinates the flavour's seed, adds the recipe's and its desktop's
packages (`customization.extra-packages`), copies in the staging tarball and runs the shared customisation
(`customization.manual`), with the PC gadget for the boot loader and a raw `.img` as the artifact.

ubuntu-image ships only as a snap: on the project's machines it is rendered and its definition checked against
the documented fields, not built. Where the snap is installed (an Ubuntu runner), `build` runs
`ubuntu-image classic`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

from .. import checkers, customize, disk, distros, vmbuild
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..runner import run
from . import BuildState, DiskTool, shell_command

#: the flavour seeds and the PC gadget, as ubuntu-image's own example definitions name them (source
#: repositories, not package mirrors)
SEEDS = {"xubuntu": "git://git.launchpad.net/~xubuntu-dev/ubuntu-seeds/+git/"}
PLATFORM_SEEDS = "git://git.launchpad.net/~ubuntu-core-dev/ubuntu-seeds/+git/"
GADGET = "https://github.com/snapcore/pc-gadget.git"
RUN_SCRIPT = "/var/tmp/diskimages-run.sh"
IMG = "disk.img"


class UbuntuImage(DiskTool):
    name = "ubuntu-image"
    program = "ubuntu-image"
    applies_recipe = True
    check_needs_program = False       # its files are checked against the documented fields
    description = "Canonical's ubuntu-image: a classic image definition (seed, extra packages, manual customisation)"
    native = {"packages": "customization.extra-packages", "desktop": "rootfs.seed (the flavour) + extra-packages",
              "files": "customization.manual.copy-file (staged tarball)",
              "scripts": "customization.manual.execute (customize.sh)", "disk": "the PC gadget's volume"}

    def installable_reason(self):
        import shutil
        if self.version() or shutil.which("snap"):
            return None      # scripts/setup.sh installs the snap where snapd runs
        return "ubuntu-image ships only as a snap, and this host has no snapd"

    def unavailable_reason(self):
        return None if self.version() else ("ubuntu-image is not installed: it ships only as a snap, which "
                                            "scripts/setup.sh installs where snapd runs (not on this host)")

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and distro.name != "ubuntu":
            why = f"ubuntu-image builds Ubuntu only, not {distro.pretty_name}"
        return why

    def definition(self, state: BuildState) -> dict:
        r, d = state.recipe, state.distro
        flavor = r.desktop if r.desktop in SEEDS else "ubuntu"
        seeds = [SEEDS[flavor], PLATFORM_SEEDS] if flavor in SEEDS else [PLATFORM_SEEDS]
        names = ["desktop-minimal"] if flavor in SEEDS else ["server", "minimal", "standard", "cloud-image"]
        rootfs: dict = {"components": list(d.components), "flavor": flavor, "pocket": "updates",
                        "sources-list-deb822": True,
                        "seed": {"urls": seeds, "names": names, "branch": state.release.codename}}
        if state.mirror.uri:
            rootfs["mirror"] = state.mirror.uri + "/"
        return {
            "name": r.name, "display-name": r.description or r.name, "revision": 1,
            "architecture": r.architecture, "series": state.release.codename, "class": "preinstalled",
            "kernel": d.kernel_packages(r.architecture)[0],
            "gadget": {"url": GADGET, "branch": "classic", "type": "git"},
            "rootfs": rootfs,
            "customization": {
                "components": list(d.components), "pocket": "updates",
                "extra-packages": [{"name": p} for p in d.packages_for(r)],
                "manual": {
                    "copy-file": [{"source": "diskimages-stage.tar.gz", "destination": distros.STAGE_TARBALL},
                                  {"source": "diskimages-run.sh", "destination": RUN_SCRIPT}],
                    "execute": [{"path": RUN_SCRIPT}],
                },
            },
            "artifacts": {"img": [{"name": IMG}], "manifest": {"name": f"{r.name}.manifest"}},
        }

    def run_script(self, state: BuildState) -> str:
        r = state.recipe
        return ("#!/bin/sh\n# diskimages: the shared customisation inside ubuntu-image's root file system\nset -eu\n"
                f"tar -xzf {distros.STAGE_TARBALL} -C / && rm -f {distros.STAGE_TARBALL}\n"
                "mkdir -p /etc/default/grub.d\n"
                f"printf 'GRUB_CMDLINE_LINUX=\"{disk.SERIAL_CONSOLE}\"\\nGRUB_CMDLINE_LINUX_DEFAULT=\"{r.kernel_cmdline}\"\\n'"
                " > /etc/default/grub.d/50-diskimages.cfg\n"
                f"sh {customize.STAGE}/customize.sh\nrm -rf {customize.STAGE} {RUN_SCRIPT}\n")

    def render(self, state: BuildState) -> dict[str, str]:
        head = (f"# ubuntu-image classic image definition rendered by diskimages from recipe {state.recipe.name}\n"
                "# (edit the recipe, not this file)\n")
        return {"image-definition.yaml": head + yaml.safe_dump(self.definition(state), sort_keys=False, width=110),
                "diskimages-run.sh": self.run_script(state),
                "command": shell_command(["ubuntu-image", "classic", "--output-dir", "OUTPUT",
                                          "image-definition.yaml"])}

    def check(self, state: BuildState, where: Path) -> list:
        where.mkdir(parents=True, exist_ok=True)
        files = self.render(state)
        for name in ("image-definition.yaml", "diskimages-run.sh"):
            (where / name).write_text(files[name])
        found = [checkers.image_definition(where / "image-definition.yaml", "image-definition.yaml"),
                 checkers.run("diskimages-run.sh", "sh -n", ["sh", "-n", where / "diskimages-run.sh"])]
        if shutil.which("ubuntu-image"):
            found.append(checkers.run("image-definition.yaml", "ubuntu-image classic --dry-run",
                                      ["ubuntu-image", "classic", "--dry-run", where / "image-definition.yaml"]))
        return found

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        where = state.work / "ubuntu-image"
        where.mkdir(parents=True)
        files = self.render(state)
        (where / "image-definition.yaml").write_text(files["image-definition.yaml"])
        (where / "diskimages-run.sh").write_text(files["diskimages-run.sh"])
        fd = os.open(where / "diskimages-stage.tar.gz", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(vmbuild.stage_tarball(state.recipe))
        out = state.work / "ubuntu-image-out"
        state.cache = "none (ubuntu-image has no package cache option)"
        run(["ubuntu-image", "classic", "--output-dir", out, where / "image-definition.yaml"], cwd=where,
            log=state.log, on_line=state.on_line)
        os.replace(out / IMG, raw)
        with open(raw, "r+b") as f:           # the gadget's volume is sized to its content: grow to the recipe's
            if os.fstat(f.fileno()).st_size < state.recipe.disk.size_bytes:
                f.truncate(state.recipe.disk.size_bytes)
        run(["sfdisk", "--relocate", "gpt-bak-std", raw], log=state.log)
        return disk.raw_disk_info(raw, state.distro)
