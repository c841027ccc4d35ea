"""virt-install (virt-manager's command-line installer): the recipe becomes a cloud-init user-data file; virt-install
imports a copy of the project's cloud base image (`--import --cloud-init user-data=...`) as a transient libvirt
domain; cloud-init installs the packages and runs the shared customisation inside the VM, then powers it off;
the disk is then compressed like any other (`qemu-img convert -c`).

The installer path (`--location` + a preseed rendered from the recipe) needs the Debian installer tree, which
the project's build machines cannot reach: it is rendered (`preseed.cfg`, `virt-install-installer.sh`) and
checked with `virt-install --dry-run`, not built. Where KVM works the VM uses it; otherwise TCG (`--virt-type
qemu`).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .. import disk, vmbuild
from ..qemu import choose_accel
from ..runner import run
from . import BuildContext, DiskInfo, Tool, register, shell_command

MEMORY_MB = 2048
CPUS = 2


@register
class VirtInstall(Tool):
    name = "virt-install"
    program = "virt-install"
    produces = "disk"
    applies_recipe = True
    prepare_phase = "base"
    description = "virt-manager's installer: imports the cloud base image with cloud-init user-data from the recipe"
    distros = ("debian",)
    native = {"packages": "user-data (runcmd: apt-get install --no-install-recommends)",
              "desktop": "user-data (the desktop's packages)", "files": "user-data write_files (staged tarball)",
              "disk": "--disk size (the base grown by cloud-init growpart)"}

    def unavailable_reason(self, recipe=None):
        reason = super().unavailable_reason(recipe)
        if reason:
            return reason
        if not shutil.which("libvirtd") and not os.path.exists("/usr/sbin/libvirtd"):
            return "libvirtd is not installed (Debian package libvirt-daemon-system)"
        return None

    def argv(self, ctx: BuildContext, name: str, raw: Path, user_data: Path, serial: Path, virt_type: str,
             osinfo: str, network: str = "default") -> list[str]:
        return ["virt-install", "--name", name, "--transient", "--import",
                "--memory", str(MEMORY_MB), "--vcpus", str(CPUS), "--virt-type", virt_type,
                "--osinfo", osinfo, "--disk", f"path={raw},format=raw,bus=virtio",
                "--network", f"network={network},model=virtio", "--graphics", "none",
                "--serial", f"file,path={serial}", "--cloud-init", f"user-data={user_data}",
                "--noautoconsole", "--wait", str(ctx.recipe.tool_options(self.name).get("wait_minutes", 90))]

    def prepare(self, ctx: BuildContext) -> None:
        vmbuild.prepare_base(ctx, self.name)

    def render(self, ctx: BuildContext) -> dict[str, str]:
        r = ctx.recipe
        user_data = vmbuild.cloud_config(r, b"<tar.gz of customize.sh, files, scripts, vm-build.sh>")
        argv = self.argv(ctx, f"diskimages-build-{r.name}", Path("WORK/disk.raw"), Path("WORK/user-data"),
                         Path("WORK/serial.log"), "kvm|qemu", "debian11")
        return {
            "user-data": user_data,
            "vm-build.sh": vmbuild.vm_script(r),
            "command": shell_command(argv),
            "preseed.cfg": preseed(r, ctx.mirror.uri),
            "virt-install-installer.sh": shell_command(installer_argv(r, ctx.mirror.uri or "DEBIAN_MIRROR")),
        }

    def build_disk(self, ctx: BuildContext, raw: Path) -> DiskInfo:
        from .. import libvirt_host
        from ..vm import destroy, list_vms
        base = ctx.stats["base_path"]
        vmbuild.prepare_disk(base, raw, ctx.recipe.disk.size_bytes, log=ctx.log)
        user_data = ctx.work / "user-data"
        fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it holds the staged secrets
        with os.fdopen(fd, "w") as f:
            f.write(vmbuild.cloud_config(ctx.recipe, vmbuild.stage_tarball(ctx.recipe)))
        serial = ctx.work / "serial.log"
        name = f"diskimages-build-{uuid.uuid4().hex[:8]}"
        accel, why = choose_accel(base)
        virt_type = "kvm" if accel == "kvm" else "qemu"
        ctx.stats["host_workarounds"] = [f"--virt-type {virt_type}: {why}"]
        conn, how = libvirt_host.connect()
        started = how.startswith("started")
        try:
            network, _ = libvirt_host.ensure_network(conn)
            with vmbuild.SerialWatch(serial, ctx.on_line) as watch:
                run(self.argv(ctx, name, raw, user_data, serial, virt_type, vmbuild.osinfo_name(), network),
                    log=ctx.log, on_line=ctx.on_line)
        finally:
            destroy(name, conn=conn)
            if serial.exists():
                with open(ctx.log, "ab") as f:
                    f.write(b"--- build VM serial console ---\n" + serial.read_bytes())
            if started and not list_vms():
                libvirt_host.stop_started(conn)
        if not watch.ok:
            raise RuntimeError(f"the build inside the VM failed (exit status {watch.failed or 'unknown'}; "
                               f"it did not report success):\n{watch.tail()}")
        vmbuild.sparsify(ctx, raw, base)
        return disk.raw_disk_info(raw)


def preseed(recipe, mirror=None) -> str:
    """A debian-installer preseed for the installer path (rendered, not run here: no installer tree).
    The staging tarball is injected into the installer's initrd next to it; late_command runs the same
    vm-build.sh in the installed system."""
    from urllib.parse import urlparse
    u = urlparse(mirror or "http://MIRROR_HOST/debian")
    from ..distros import get_distro
    pkgs = " ".join(get_distro(recipe.distro).packages_for(recipe))
    users = recipe.users
    first = users[0] if users else None
    lines = [f"# debian-installer preseed rendered by diskimages from recipe {recipe.name}",
             f"d-i debian-installer/locale string {recipe.locale.split('.')[0] if recipe.locale != 'C.UTF-8' else 'en_US'}",
             f"d-i keyboard-configuration/xkb-keymap select {recipe.keyboard}",
             "d-i netcfg/choose_interface select auto",
             f"d-i netcfg/get_hostname string {recipe.hostname}",
             "d-i mirror/country string manual",
             f"d-i mirror/http/hostname string {u.netloc}", f"d-i mirror/http/directory string {u.path or '/'}",
             f"d-i time/zone string {recipe.timezone}", "d-i clock-setup/utc boolean true",
             "d-i passwd/root-login boolean false"]
    if first:
        lines += [f"d-i passwd/user-fullname string {first.name}", f"d-i passwd/username string {first.name}"]
        if first.password_hash:
            lines.append(f"d-i passwd/user-password-crypted password {first.password_hash}")
    lines += ["d-i partman-auto/method string regular", "d-i partman-auto/choose_recipe select atomic",
              "d-i partman-partitioning/confirm_write_new_label boolean true",
              "d-i partman/choose_partition select finish", "d-i partman/confirm boolean true",
              "d-i partman/confirm_nooverwrite boolean true",
              "tasksel tasksel/first multiselect standard",
              f"d-i pkgsel/include string {pkgs}", "d-i pkgsel/install-recommends boolean false",
              "d-i grub-installer/only_debian boolean true", "d-i grub-installer/bootdev string default",
              "d-i finish-install/reboot_in_progress note", "d-i debian-installer/exit/poweroff boolean true",
              "d-i preseed/late_command string cp /diskimages-stage.tar.gz /target/var/tmp/; "
              "in-target tar -xzf /var/tmp/diskimages-stage.tar.gz -C /; "
              f"in-target sh {vmbuild.customize.STAGE}/{vmbuild.VM_SCRIPT}"]
    return "\n".join(lines) + "\n"


def installer_argv(recipe, mirror: str) -> list[str]:
    return ["virt-install", "--name", f"diskimages-install-{recipe.name}", "--memory", str(MEMORY_MB),
            "--vcpus", str(CPUS), "--virt-type", "qemu", "--osinfo", "debian11",
            "--disk", f"size={recipe.disk.size_bytes >> 30},format=qcow2",
            "--location", f"{mirror}/dists/{recipe.release}/main/installer-amd64/",
            "--initrd-inject", "preseed.cfg", "--initrd-inject", "diskimages-stage.tar.gz", "--extra-args", "auto=true priority=critical console=ttyS0",
            "--graphics", "none", "--noautoconsole", "--wait", "-1"]
