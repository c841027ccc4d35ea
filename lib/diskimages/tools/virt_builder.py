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
import shutil
import tempfile
from pathlib import Path

from .. import disk, vbrepo, vmbuild
from ..hostfix import PrivateNamespace
from ..paths import cache_dir
from ..qemu import choose_accel
from ..runner import run
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
        accel, why = choose_accel(base)
        env = {"LIBGUESTFS_BACKEND": "direct"}
        applied = []
        if accel != "kvm":
            env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
            applied.append(f"LIBGUESTFS_BACKEND_SETTINGS=force_tcg: {why}")
        no_kernel = not vmbuild.host_has_kernel()
        if no_kernel:
            env.update(vmbuild.appliance_kernel(base, log=ctx.log))
            applied.append(f"libguestfs appliance boots the base image's kernel {env['SUPERMIN_KERNEL_VERSION']} "
                           "(SUPERMIN_KERNEL/_MODULES): the host has no kernel in /boot")
        # --source adds to the repositories in /etc/virt-builder/repos.d (which it fetches first, failing when
        # they are unreachable): the build sees only the project's repository
        # supermin copies the attributes of /lib/modules, which a host without an installed kernel may lack
        # libguestfs puts its sockets in TMPDIR: a short one (a unix socket path has at most 107 bytes)
        tmp = Path(tempfile.mkdtemp(prefix="diskimages-vb-"))
        env["TMPDIR"] = str(tmp)
        try:
            with PrivateNamespace(ctx.work / "hostfix", hide=[REPOS_D],
                                  make_dirs=["/lib/modules"] if no_kernel else []) as ns:
                ctx.stats["host_workarounds"] = applied + ns.applied
                run(ns.argv(self.argv(ctx, index, template, raw, stage)), env=env, log=ctx.log,
                    on_line=ctx.on_line)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return disk.raw_disk_info(raw)
