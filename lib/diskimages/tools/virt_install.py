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

from .. import disk, reaper, vmbuild
from ..disk import DiskInfo
from ..runner import run
from . import BASE_OPTION, BuildState, DiskTool, shell_command

MEMORY_MB = 2048
CPUS = 2


class VirtInstall(DiskTool):
    name = "virt-install"
    program = "virt-install"
    applies_recipe = True
    needs = frozenset({"base", "accel", "libvirt"})
    description = "virt-manager's installer: imports the cloud base image with cloud-init user-data from the recipe"
    package_managers = ("apt",)     # the cloud base is made by mmdebstrap
    options = {"base": BASE_OPTION, "wait_minutes": ("a whole number of minutes from 1 to 1440",
                                       lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1440)}
    native = {"packages": "user-data (runcmd: the distribution's package install, without Recommends)",
              "desktop": "user-data (the desktop's packages)", "files": "user-data write_files (staged tarball)",
              "disk": "--disk size (the base grown by cloud-init growpart)"}

    def unavailable_reason(self):
        reason = super().unavailable_reason()
        if reason:
            return reason
        if not shutil.which("libvirtd") and not os.path.exists("/usr/sbin/libvirtd"):
            return "libvirtd is not installed (Debian package libvirt-daemon-system)"
        return None

    def argv(self, state: BuildState, name: str, raw: Path, user_data: Path, serial: Path, virt_type: str,
             osinfo: str, network: str = "default") -> list[str]:
        return ["virt-install", "--name", name, "--transient", "--import",
                "--memory", str(MEMORY_MB), "--vcpus", str(CPUS), "--virt-type", virt_type,
                "--osinfo", osinfo, "--disk", f"path={raw},format=raw,bus=virtio",
                "--network", f"network={network},model=virtio", "--graphics", "none",
                "--serial", f"file,path={serial}", "--cloud-init", f"user-data={user_data}",
                "--noautoconsole", "--wait", str(state.recipe.tool_options(self.name).get("wait_minutes", 90))]

    def render(self, state: BuildState) -> dict[str, str]:
        r = state.recipe
        user_data = vmbuild.cloud_config(r, b"<tar.gz of customize.sh, files, scripts, vm-build.sh>")
        argv = self.argv(state, f"diskimages-build-{r.name}", Path("WORK/disk.raw"), Path("WORK/user-data"),
                         Path("WORK/serial.log"), "kvm|qemu", state.distro.osinfo_ids(state.release)[0])
        return {
            "user-data": user_data,
            "vm-build.sh": vmbuild.vm_script(r),
            "command": shell_command(argv),
            "preseed.cfg": preseed(state),
            "virt-install-installer.sh": shell_command(installer_argv(state)),
        }

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        base = state.base.path
        vmbuild.prepare_disk(base, raw, state.recipe.disk.size_bytes, log=state.log)
        user_data = state.work / "user-data"
        fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it holds the staged secrets
        with os.fdopen(fd, "w") as f:
            f.write(vmbuild.cloud_config(state.recipe, vmbuild.stage_tarball(state.recipe)))
        serial = state.work / "serial.log"
        name = f"diskimages-build-{uuid.uuid4().hex[:8]}"
        virt_type = "kvm" if state.accel.kind == "kvm" else "qemu"
        state.workaround(f"--virt-type {virt_type}: {state.accel.reason}")
        tracked = reaper.track("domain", name=name)      # libvirtd runs it, not us: a kill must not orphan it
        try:
            with vmbuild.SerialWatch(serial, state.on_line) as watch:
                run(self.argv(state, name, raw, user_data, serial, virt_type,
                              vmbuild.osinfo_name(state.distro, state.release), state.libvirt.network),
                    log=state.log, on_line=state.on_line)
        finally:
            state.libvirt.destroy(name)
            reaper.untrack(tracked)
            if serial.exists():
                with open(state.log, "ab") as f:
                    f.write(b"--- build VM serial console ---\n" + serial.read_bytes())
        if not watch.ok:
            raise RuntimeError(f"the build inside the VM failed (exit status {watch.failed or 'unknown'}; "
                               f"it did not report success):\n{watch.tail()}")
        vmbuild.sparsify(state, raw)
        return disk.raw_disk_info(raw, state.distro)


def preseed(state: BuildState) -> str:
    """A debian-installer preseed for the installer path (rendered, not run here: no installer tree).
    The staging tarball is injected into the installer's initrd next to it; late_command runs the same
    vm-build.sh in the installed system."""
    from urllib.parse import urlparse
    recipe = state.recipe
    u = urlparse(state.mirror.uri or "http://MIRROR_HOST/debian")
    pkgs = " ".join(state.distro.packages_for(recipe))
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


def installer_argv(state: BuildState) -> list[str]:
    recipe, mirror = state.recipe, state.mirror.uri or "DEBIAN_MIRROR"
    return ["virt-install", "--name", f"diskimages-install-{recipe.name}", "--memory", str(MEMORY_MB),
            "--vcpus", str(CPUS), "--virt-type", "qemu", "--osinfo", state.distro.osinfo_ids(state.release)[0],
            "--disk", f"size={recipe.disk.size_bytes >> 30},format=qcow2",
            "--location", f"{mirror}/dists/{state.release.codename}/main/installer-{recipe.architecture}/",
            "--initrd-inject", "preseed.cfg", "--initrd-inject", "diskimages-stage.tar.gz", "--extra-args", "auto=true priority=critical console=ttyS0",
            "--graphics", "none", "--noautoconsole", "--wait", "-1"]
