"""virt-install (virt-manager's command-line installer), two ways, chosen by the distribution:

* **import** (distributions with a cloud base recipe: Debian): the recipe becomes a cloud-init user-data file;
  virt-install imports a copy of the project's cloud base image (`--import --cloud-init user-data=...`) as a
  transient libvirt domain; cloud-init installs the packages and runs the shared customisation, then powers off.
* **installer** (Ubuntu, Fedora): the distribution's own unattended installer. Ubuntu boots the live-server ISO
  with `--location ISO --extra-args autoinstall` and the autoinstall user-data as NoCloud (`--cloud-init
  user-data=,meta-data=`), the reference image's own flow; Fedora boots its install tree with the kickstart and
  the staging tarball injected into the installer's initrd (`--initrd-inject`, `inst.ks=file:/ks.cfg`). The ISO
  and the tree come from the tool option, the mirror, or the host's osinfo database.

Debian's installer variant (`--location` + a preseed) needs the debian-installer tree, which the project's build
machines cannot reach: it is rendered and checked with `virt-install --dry-run`, not built. Where KVM works the
VM uses it; otherwise TCG (`--virt-type qemu`).
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .. import checkers, disk, reaper, vmbuild
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..runner import run
from . import BASE_OPTION, BuildState, DiskTool, shell_command
from ..errors import Failure

MEMORY_MB = 2048
INSTALLER_MEMORY_MB = 4096      # Subiquity's live session and Anaconda need more than the import path
CPUS = 2
STAGE_INJECTED = "/diskimages-stage.tar.gz"     # where --initrd-inject puts the staging tarball


def _location_option(v) -> bool:
    return isinstance(v, str) and len(v) < 2048 and (v.startswith(("http://", "https://", "/")) and "\n" not in v)


class VirtInstall(DiskTool):
    name = "virt-install"
    program = "virt-install"
    packages = ("virtinst",)
    applies_recipe = True
    needs = frozenset({"base", "accel", "libvirt"})
    description = "virt-manager's installer: imports the cloud base image with cloud-init user-data from the recipe"
    options = {"base": BASE_OPTION, "wait_minutes": ("a whole number of minutes from 1 to 1440",
                                       lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1440),
               "location": ("an installer ISO or install tree: an http(s) URL or an absolute path",
                            _location_option)}
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

    @staticmethod
    def path_for(distro: Distribution) -> str | None:
        return vmbuild.vm_path(distro)

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and self.path_for(distro) is None:
            why = (f"{distro.pretty_name} has neither a cloud base recipe nor an unattended installer virt-install "
                   "drives (arch-boxes is the Packer-and-pacstrap way for Arch Linux)")
        return why

    def needs_for(self, distro=None):
        if distro is not None and self.path_for(distro) == "installer":
            return frozenset({"accel", "libvirt"})
        return self.needs

    def host_lacks(self, recipe):
        from .. import distros
        d, rel = distros.for_recipe(recipe)
        if self.path_for(d) != "installer" or recipe.tool_options(self.name).get("location"):
            return None
        found = d.install_tree(d.choose_mirror(), rel, recipe.architecture) if d.installer == "kickstart" \
            else d.installer_media(rel, recipe.architecture)
        if found:
            return None
        return (f"the host's osinfo database does not know {d.pretty_name} {rel.version}'s installer (allowed: "
                f"tools.{self.name}.location, or a mirror: --mirror or DISKIMAGES_MIRROR_{d.name.upper()})")

    def location(self, state: BuildState) -> str:
        """The installer ISO (autoinstall) or install tree (kickstart) this build boots."""
        opt = state.recipe.tool_options(self.name).get("location")
        if opt:
            return opt
        d, rel, arch = state.distro, state.release, state.recipe.architecture
        found = d.install_tree(state.mirror, rel, arch) if d.installer == "kickstart" else \
            d.installer_media(rel, arch)
        if not found:
            raise Failure(f"no installer for {d.pretty_name} {rel.version} is known here: the host's osinfo "
                               f"database does not list it and no mirror was given (allowed: tools.{self.name}."
                               "location in the recipe, or --mirror)")
        return found

    def installer_argv(self, state: BuildState, name: str, raw: Path, files: Path, location: str, serial: Path,
                       virt_type: str, osinfo: str, network: str = "default") -> list[str]:
        d = state.distro
        argv = ["virt-install", "--name", name, "--transient", "--noreboot",
                "--memory", str(INSTALLER_MEMORY_MB), "--vcpus", str(CPUS), "--virt-type", virt_type,
                "--osinfo", osinfo, "--disk", f"path={raw},format=raw,bus=virtio",
                "--network", f"network={network},model=virtio", "--graphics", "none",
                "--serial", f"file,path={serial}"]
        if vmbuild.installer_firmware(state.recipe) == "uefi":
            argv += ["--boot", "uefi"]
        if d.installer == "autoinstall":
            kernel, initrd = d.installer_kernel
            argv += ["--location", f"{location},kernel={kernel},initrd={initrd}",
                     "--extra-args", f"{d.installer_args(None)} {disk.SERIAL_CONSOLE}",
                     "--cloud-init", f"user-data={files / 'user-data'},meta-data={files / 'meta-data'}"]
        else:
            argv += ["--location", location, "--initrd-inject", str(files / "ks.cfg"),
                     "--initrd-inject", str(files / Path(STAGE_INJECTED).name),
                     "--extra-args", f"{d.installer_args('file:/ks.cfg')} {disk.SERIAL_CONSOLE}"]
        return argv + ["--noautoconsole", "--wait",
                       str(state.recipe.tool_options(self.name).get("wait_minutes", 180))]

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
        if self.path_for(state.distro) == "installer":
            files = vmbuild.installer_files(state, tarball=b"<tar.gz of customize.sh, files, scripts, vm-build.sh>"
                                            if state.distro.installer == "autoinstall" else None,
                                            stage_source=STAGE_INJECTED)
            try:
                location = self.location(state)
            except RuntimeError:
                location = "INSTALLER_ISO_OR_TREE"
            argv = self.installer_argv(state, f"diskimages-build-{r.name}", Path("WORK/disk.raw"), Path("WORK"),
                                       location, Path("WORK/serial.log"), "kvm|qemu",
                                       state.distro.osinfo_ids(state.release)[0])
            return {**files, "vm-build.sh": vmbuild.vm_script(r), "command": shell_command(argv)}
        user_data = vmbuild.cloud_config(r, b"<tar.gz of customize.sh, files, scripts, vm-build.sh>")
        argv = self.argv(state, f"diskimages-build-{r.name}", Path("WORK/disk.raw"), Path("WORK/user-data"),
                         Path("WORK/serial.log"), "kvm|qemu", state.distro.osinfo_ids(state.release)[0])
        return {
            "user-data": user_data,
            "vm-build.sh": vmbuild.vm_script(r),
            "command": shell_command(argv),
            "installer/preseed.cfg": vmbuild.installer_files(state, stage_source=STAGE_INJECTED)["preseed.cfg"],
            "installer/virt-install-installer.sh": shell_command(preseed_argv(state)),
        }

    def check(self, state: BuildState, where: Path) -> list:
        """virt-install's own argument and domain checks (`--dry-run`, which creates nothing) on the command with
        real files, and cloud-init's schema or pykickstart on the installer's configuration. A stand-in ISO or
        tree with the installer's layout takes the place of the download."""
        found = []
        where.mkdir(parents=True, exist_ok=True)
        (where / "disk.raw").write_bytes(b"")
        osinfo = vmbuild.osinfo_name(state.distro, state.release)
        if self.path_for(state.distro) == "installer":
            files = vmbuild.installer_files(state, tarball=b"stage" if state.distro.installer == "autoinstall"
                                            else None, stage_source=STAGE_INJECTED)
            for name, text in files.items():
                (where / name).write_text(text)
            (where / Path(STAGE_INJECTED).name).write_bytes(b"")
            location = _stand_in_location(state.distro, where)
            argv = self.installer_argv(state, "diskimages-check", where / "disk.raw", where, str(location),
                                       where / "serial.log", "qemu", osinfo)
            if "user-data" in files:
                found.append(checkers.cloud_init_schema(where / "user-data", "user-data"))
                found.append(checkers.installer_fields(where / "user-data", "user-data",
                                                       state.distro.installer_schema))
            if "ks.cfg" in files:
                found.append(checkers.ksvalidator(where / "ks.cfg", "ks.cfg",
                                                  checkers.kickstart_version(state.release.version)))
        else:
            (where / "user-data").write_text(vmbuild.cloud_config(state.recipe, b"stage"))
            found.append(checkers.cloud_init_schema(where / "user-data", "user-data"))
            argv = self.argv(state, "diskimages-check", where / "disk.raw", where / "user-data",
                             where / "serial.log", "qemu", osinfo)
        found.insert(0, checkers.run("command", "virt-install --dry-run", [*argv, "--dry-run"]))
        return found

    def install(self, state: BuildState, raw: Path) -> DiskInfo:
        """The installer path: an empty disk, the distribution's installer booted with its configuration, the
        installed system running vm-build.sh, the VM powering itself off."""
        files = state.work / "installer"
        files.mkdir(parents=True)
        tarball = vmbuild.stage_tarball(state.recipe)
        autoinstall = state.distro.installer == "autoinstall"
        for name, text in vmbuild.installer_files(state, tarball=tarball if autoinstall else None,
                                                  stage_source=STAGE_INJECTED).items():
            fd = os.open(files / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # may hold staged secrets
            with os.fdopen(fd, "w") as f:
                f.write(text)
        if not autoinstall:
            fd = os.open(files / Path(STAGE_INJECTED).name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(tarball)
        location = self.location(state)
        if autoinstall:
            location = str(vmbuild.fetch(location, log=state.log))
        serial = state.work / "serial.log"
        virt_type = "kvm" if state.accel.kind == "kvm" else "qemu"
        state.workaround(f"--virt-type {virt_type}: {state.accel.reason}",
                         f"installed under {vmbuild.installer_firmware(state.recipe).upper()}: the installer sets up "
                         "the boot loader of the firmware it booted with")

        def empty_disk():
            with open(raw, "wb") as f:
                f.truncate(state.recipe.disk.size_bytes)

        _run_vm(state, serial, "installer VM", empty_disk,
                lambda name: self.installer_argv(state, name, raw, files, location, serial, virt_type,
                                                 vmbuild.osinfo_name(state.distro, state.release),
                                                 state.libvirt.network))
        return disk.raw_disk_info(raw, state.distro)

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        if self.path_for(state.distro) == "installer":
            return self.install(state, raw)
        base = state.base.path
        user_data = state.work / "user-data"
        fd = os.open(user_data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # it holds the staged secrets
        with os.fdopen(fd, "w") as f:
            f.write(vmbuild.cloud_config(state.recipe, vmbuild.stage_tarball(state.recipe)))
        serial = state.work / "serial.log"
        virt_type = "kvm" if state.accel.kind == "kvm" else "qemu"
        state.workaround(f"--virt-type {virt_type}: {state.accel.reason}")
        watch = _run_vm(state, serial, "build VM",
                        lambda: vmbuild.prepare_disk(base, raw, state.recipe.disk.size_bytes, log=state.log),
                        lambda name: self.argv(state, name, raw, user_data, serial, virt_type,
                                               vmbuild.osinfo_name(state.distro, state.release),
                                               state.libvirt.network))
        if not watch.ok:
            raise Failure(f"the build inside the VM failed (exit status {watch.failed or 'unknown'}; "
                               f"it did not report success):\n{watch.tail()}")
        vmbuild.sparsify(state, raw)
        return disk.raw_disk_info(raw, state.distro)


def _run_vm(state: BuildState, serial: Path, vm: str, prepare_disk: Callable[[], None],
            argv: Callable[[str], list[str]]) -> vmbuild.SerialWatch:
    """Prepare the disk and run virt-install's transient domain (`argv(name)`) to its end. The domain is destroyed
    whatever happens (libvirtd runs it, not us: a kill must not orphan it) and its serial console goes into the
    log. A guest whose kernel panics is destroyed at once (virt-install would wait for it until its own timeout)
    and the build fails saying so; under TCG, a panic after QEMU's race (vmbuild.TCG_RACE_OOPS) gets one more run
    on a fresh disk, recorded among the host workarounds."""
    for attempt in (1, 2):
        prepare_disk()
        serial.unlink(missing_ok=True)
        name = f"diskimages-build-{uuid.uuid4().hex[:8]}"
        tracked = reaper.track("domain", name=name)
        try:
            with vmbuild.SerialWatch(serial, state.on_line, on_panic=lambda: state.libvirt.destroy(name)) as watch:
                try:
                    run(argv(name), log=state.log, on_line=state.on_line)
                except Failure:
                    if not watch.panic:
                        raise
        finally:
            state.libvirt.destroy(name)
            reaper.untrack(tracked)
            if serial.exists():
                with open(state.log, "ab") as f:
                    f.write(f"--- {vm} serial console ---\n".encode() + serial.read_bytes())
        if not watch.panic:
            return watch
        if attempt == 2 or not watch.tcg_race or state.accel.kind == "kvm":
            break
        state.workaround(f"the {vm} ran a second time: its first kernel met QEMU's multi-threaded TCG race (int3 "
                         "in patched kernel text) and panicked")
    raise Failure(f"the {vm}'s kernel panicked ({watch.panic}):\n{watch.tail()}")


def preseed_argv(state: BuildState) -> list[str]:
    recipe, mirror = state.recipe, state.mirror.uri or "DEBIAN_MIRROR"
    return ["virt-install", "--name", f"diskimages-install-{recipe.name}", "--memory", str(MEMORY_MB),
            "--vcpus", str(CPUS), "--virt-type", "qemu", "--osinfo", state.distro.osinfo_ids(state.release)[0],
            "--disk", f"size={recipe.disk.size_bytes >> 30},format=qcow2",
            "--location", f"{mirror}/dists/{state.release.codename}/main/installer-{recipe.architecture}/",
            "--initrd-inject", "preseed.cfg", "--initrd-inject", "diskimages-stage.tar.gz", "--extra-args", "auto=true priority=critical console=ttyS0",
            "--graphics", "none", "--noautoconsole", "--wait", "-1"]


def _stand_in_location(distro: Distribution, where: Path) -> Path:
    """For --dry-run: an ISO (autoinstall) or install tree (kickstart) with the layout virt-install reads the
    installer's kernel and initrd from, made here in place of the real download."""
    tree = where / "stand-in-tree"
    for f in distro.installer_kernel:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).write_bytes(b"stand-in")
    if distro.installer == "autoinstall":
        iso = where / "stand-in.iso"
        run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "stand-in", "-o", iso, tree])
        return iso
    kernel, initrd = distro.installer_kernel
    (tree / ".treeinfo").write_text(f"[general]\nfamily = {distro.pretty_name}\narch = x86_64\n\n"
                                    f"[images-x86_64]\nkernel = {kernel}\ninitrd = {initrd}\n")
    return tree
