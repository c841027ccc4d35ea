"""virt-builder (libguestfs): the project's cloud base image is published as a virt-builder template repository
(index in virt-builder's format, checked by virt-index-validate; `vbrepo`), and the recipe becomes a
virt-builder command line: `--source file://REPO/index`, `--size`, `--upload` of the staging tarball and
`--run-command` of vm-build.sh (packages, kernel command line, the shared customisation), run inside the
libguestfs appliance (not a booted system, so no cloud-init is involved).

libguestfs' appliance uses KVM when it works, else TCG (`LIBGUESTFS_BACKEND_SETTINGS=force_tcg`, said in the
record).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import disk, vbrepo, vmbuild
from ..paths import cache_dir
from . import BuildContext, DiskInfo, Tool, register, shell_command


REPOS_D = "/etc/virt-builder/repos.d"


@register
class VirtBuilder(Tool):
    name = "virt-builder"
    program = "virt-builder"
    produces = "disk"
    applies_recipe = True
    prepare_phase = "base"
    description = "libguestfs' virt-builder from a template repository of the cloud base made by diskimages"
    distros = ("debian",)
    native = {"packages": "--run-command vm-build.sh (apt-get install --no-install-recommends)",
              "desktop": "--run-command vm-build.sh (the desktop's packages)",
              "files": "--upload (staged tarball)", "disk": "--size (virt-resize expands the root)"}

    def argv(self, ctx: BuildContext, index: Path, template: str, raw: Path, stage: Path) -> list[str]:
        st = vmbuild.customize.STAGE
        return ["virt-builder", template, "--source", index.as_uri(), "--no-check-signature", "--no-cache",
                "--arch", "x86_64", "--format", "raw", "--size", f"{ctx.recipe.disk.size_bytes >> 20}M",
                "-o", str(raw),
                # the root account stays locked, as the recipe's customisation left it (the default is random)
                "--root-password", "locked:disabled", "--upload", f"{stage}:/var/tmp/diskimages-stage.tar.gz",
                "--run-command", "tar -xzf /var/tmp/diskimages-stage.tar.gz -C / && "
                                 "rm -f /var/tmp/diskimages-stage.tar.gz",
                "--run-command", f"sh {st}/{vmbuild.VM_SCRIPT}"]

    def prepare(self, ctx: BuildContext) -> None:
        vmbuild.prepare_base(ctx, self.name)

    def render(self, ctx: BuildContext) -> dict[str, str]:
        argv = self.argv(ctx, Path("/REPO/index"), vmbuild.BASE_RECIPE, Path("WORK/disk.raw"),
                         Path("WORK/stage.tar.gz"))
        return {"command": shell_command(argv), "vm-build.sh": vmbuild.vm_script(ctx.recipe),
                "index (template repository)": f"[{vmbuild.BASE_RECIPE}]\nname=... (written by "
                                               "python -m diskimages virt-builder-repo, checked by "
                                               "virt-index-validate)\n"}

    def repo(self, ctx: BuildContext) -> tuple[Path, str, Path]:
        base = ctx.stats["base_path"]
        d = cache_dir("virt-builder", base.stem)
        index = d / "index"
        if not index.is_file():
            vbrepo.write_repo(d, [base])
        return index, ctx.stats["base"]["base_recipe"], base

    def build_disk(self, ctx: BuildContext, raw: Path) -> DiskInfo:
        index, template, base = self.repo(ctx)
        stage = ctx.work / "stage.tar.gz"
        fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(vmbuild.stage_tarball(ctx.recipe))
        # --source adds to the repositories in /etc/virt-builder/repos.d (which it fetches first, failing when
        # they are unreachable): the build sees only the project's repository
        ctx.stats["host_workarounds"] = vmbuild.run_guestfs(ctx, self.argv(ctx, index, template, raw, stage), base,
                                                            hide=[REPOS_D])
        vmbuild.sparsify(ctx, raw, base)
        return disk.raw_disk_info(raw)
