"""What the VM-driven builders (virt-install, Packer, virt-builder) share.

They start from a cloud base image of the recipe's release (e.g. `debian-13-cloud-base`), which the orchestrator
builds with the native builder, caches by its recipe digest and hands to the tool, and turn it into the recipe's
image inside a VM, the way these tools are used with
distribution cloud images. Inside the VM one script (`vm-build.sh`, in a staging tarball with the shared
customisation script, the recipe's files and scripts) installs the packages without Recommends (as the other
builders do), sets the kernel command line, runs customize.sh, and cleans cloud-init's state; it reports its
result on the serial console. The cloud base images have GPT + BIOS boot + ESP + ext4 root
with the root last, so the disk is grown by moving the GPT backup header here and growing the root partition and
file system at first boot (cloud-init growpart/resizefs).
"""
from __future__ import annotations

import base64
import os
import io
import json
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import customize, disk, distros, reaper
from .paths import cache_dir
from .recipe import Recipe
from .errors import Failure, InputError
OK_MARK = "DISKIMAGES-VM-BUILD-OK"
FAIL_MARK = "DISKIMAGES-VM-BUILD-FAILED"
VM_SCRIPT = "vm-build.sh"
BUILD_UID = 59999


def vm_script(recipe: Recipe) -> str:
    """The script the VM runs as root: packages, kernel command line, the shared customisation, clean-up."""
    distro, _ = distros.for_recipe(recipe)
    install = distro.install_command(distro.packages_for(recipe))
    stage = customize.STAGE
    return f"""#!/bin/sh
# diskimages: turn the cloud base into recipe {recipe.name} (runs inside the build VM as root)
set -eu
echo "diskimages: packages"
{install.rstrip()}
echo "diskimages: kernel command line"
{distro.kernel_cmdline_step(recipe.kernel_cmdline, disk.SERIAL_CONSOLE).rstrip()}
echo "diskimages: customisation"
sh {stage}/customize.sh
rm -rf {stage}
echo "diskimages: cloud-init state removed (the image configures itself again if given a seed)"
cloud-init clean --logs --seed || true
rm -rf /var/lib/cloud/instances /var/lib/cloud/instance
# the finished image does not run cloud-init at boot (it came with the base); delete this file to re-enable it
touch /etc/cloud/cloud-init.disabled
"""


def stage_tarball(recipe: Recipe) -> bytes:
    """customize.sh, the recipe's files and scripts, the passwords from the environment (root-only) and
    vm-build.sh, as a tar.gz that unpacks at /."""
    with tempfile.TemporaryDirectory(prefix="diskimages-stage-") as tmp:
        root = Path(tmp)
        st = customize.stage(recipe, root, secrets=True)
        (st / VM_SCRIPT).write_text(vm_script(recipe))
        (st / VM_SCRIPT).chmod(0o755)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(st, arcname=customize.STAGE.lstrip("/"))
        return buf.getvalue()


def run_line() -> str:
    """The shell line that unpacks the stage, runs vm-build.sh and reports on the serial console."""
    st = customize.STAGE
    return (f"if sh {st}/{VM_SCRIPT} > /var/log/diskimages-vm-build.log 2>&1; then echo {OK_MARK} > /dev/ttyS0; "
            f"else echo \"{FAIL_MARK} $?\" > /dev/ttyS0; tail -n 30 /var/log/diskimages-vm-build.log > /dev/ttyS0; "
            f"fi; rm -f /var/log/diskimages-vm-build.log")


def cloud_config(recipe: Recipe, tarball: Optional[bytes], *, ssh_user: Optional[str] = None,
                 ssh_pubkey: Optional[str] = None, apply: bool = True, poweroff: bool = True) -> str:
    """#cloud-config user-data: the staging tarball as a file, then (apply) unpack and run it, then power off.
    With `ssh_user`, a build user with that key (the Packer path; the user is deleted at the end)."""
    import yaml
    cfg: dict = {"growpart": {"mode": "auto", "devices": ["/"]}, "resize_rootfs": True}
    if tarball is not None:
        cfg["write_files"] = [{"path": "/var/tmp/diskimages-stage.tar.gz", "encoding": "b64",
                               "permissions": "0600", "content": base64.b64encode(tarball).decode()}]
        cmds = ["tar -xzf /var/tmp/diskimages-stage.tar.gz -C / && rm -f /var/tmp/diskimages-stage.tar.gz"]
        if apply:
            cmds.append(run_line())
        cfg["runcmd"] = cmds
    if ssh_user:
        # a UID far from the recipe's users (they start at 1000); deleted before the image is finished
        cfg["users"] = [{"name": ssh_user, "uid": BUILD_UID, "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/sh",
                         "ssh_authorized_keys": [ssh_pubkey]}]
    if poweroff:
        cfg["power_state"] = {"mode": "poweroff", "condition": True, "timeout": 30}
    return "#cloud-config\n" + yaml.safe_dump(cfg, sort_keys=False, width=1 << 20)


def prepare_disk(base: Path, raw: Path, size: int, log: Optional[Path] = None) -> None:
    """The base image as a raw disk of the recipe's size (GPT backup header moved to the new end)."""
    from .runner import run
    base_size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(base)], capture_output=True,
                                          text=True, check=True).stdout)["virtual-size"]
    if size < base_size:
        raise InputError(f"disk.size {size >> 20} MiB is smaller than the base image ({base_size >> 20} MiB): "
                         "the VM builders can grow the base, not shrink it (allowed: at least the base's size)")
    run(["qemu-img", "convert", "-O", "raw", base, raw], log=log)
    if raw.stat().st_size < size:
        with open(raw, "r+b") as f:
            f.truncate(size)
        run(["sfdisk", "--relocate", "gpt-bak-std", raw], log=log)


PANIC = "Kernel panic - not syncing"
#: QEMU's multi-threaded TCG can run stale code while a guest kernel patches its own text (int3 in a static
#: branch), and the kernel oopses: an emulator race, not the image's fault. Boots and build VMs that meet it
#: under TCG run once more, and say so
TCG_RACE_OOPS = "Oops: int3"


class SerialWatch:
    """Follows a serial log file: lines to `on_line`, whether the build reported success or failure, and whether
    the guest's kernel panicked; then `on_panic` runs at once (a panicked guest never powers off: the VM's
    runner would wait for it until its own timeout)."""

    def __init__(self, path: Path, on_line: Optional[Callable[[str], None]] = None,
                 on_panic: Optional[Callable[[], None]] = None):
        self.path, self.on_line, self.on_panic = path, on_line, on_panic
        self.ok = False
        self.failed: Optional[str] = None
        self.panic: Optional[str] = None
        self.tcg_race = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> "SerialWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._scan_all()

    def _scan_all(self) -> None:
        if self.path.exists():
            for line in self.path.read_bytes().decode(errors="replace").splitlines():
                self._check(line)

    def _check(self, line: str) -> None:
        if OK_MARK in line:
            self.ok = True
        elif FAIL_MARK in line and self.failed is None:
            self.failed = line.split(FAIL_MARK, 1)[1].strip() or "?"
        elif TCG_RACE_OOPS in line:
            self.tcg_race = True
        elif PANIC in line and self.panic is None:
            self.panic = line[line.index(PANIC):][:160]
            if self.on_panic:
                self.on_panic()

    def _follow(self) -> None:
        pos = 0
        buf = b""
        while not self._stop.is_set():
            if self.path.exists():
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
                    pos += len(data)
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").strip()
                    self._check(line)
                    if line and self.on_line:
                        self.on_line(line)
            time.sleep(0.5)

    def tail(self, n: int = 30) -> str:
        if not self.path.exists():
            return ""
        return "\n".join(self.path.read_bytes().decode(errors="replace").splitlines()[-n:])


def osinfo_name(distro, release) -> str:
    """The most specific osinfo id of the release that virt-install's osinfo database knows (older databases
    stop at earlier releases)."""
    ids = distro.osinfo_ids(release)
    try:
        out = subprocess.run(["virt-install", "--osinfo", "list"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ids[-1]
    names = {n.strip() for line in out.splitlines() for n in line.split(",")}
    return next((i for i in ids if i in names), "generic")


def host_has_kernel() -> bool:
    """Whether supermin (libguestfs' appliance builder) finds a kernel on this host: /boot/vmlinuz-* with its
    modules. Containers and some CI machines run a kernel that is not installed as files."""
    import glob
    for k in glob.glob("/boot/vmlinuz-*"):
        if Path("/lib/modules", Path(k).name.removeprefix("vmlinuz-")).is_dir():
            return True
    return False


def appliance_kernel(base: Path, distro, log: Optional[Path] = None) -> dict[str, str]:
    """SUPERMIN_KERNEL/_MODULES/_KERNEL_VERSION pointing at the kernel and modules of the base image itself
    (extracted once with debugfs, no mounts), for hosts without a kernel in /boot."""
    from .runner import run
    where = cache_dir("appliance-kernel", base.stem)
    done = where / "version"
    if not done.is_file():
        with tempfile.TemporaryDirectory(prefix="diskimages-kernel-", dir=where) as tmp:
            raw = Path(tmp) / "base.raw"
            run(["qemu-img", "convert", "-O", "raw", base, raw], log=log)
            info = disk.raw_disk_info(raw, distro)
            target = f"{raw}?offset={disk.root_partition_offset(raw)}"
            kver = info.kernel
            (where / "modules").mkdir(exist_ok=True)
            run(["debugfs", "-R", f"dump /boot/vmlinuz-{kver} {where / 'vmlinuz'}", target], log=log)
            run(["debugfs", "-R", f"rdump /usr/lib/modules/{kver} {where / 'modules'}", target], log=log)
        if not (where / "vmlinuz").stat().st_size or not (where / "modules" / kver).is_dir():
            raise Failure(f"could not extract the kernel {kver} from {base.name} for libguestfs' appliance")
        done.write_text(kver)
    kver = done.read_text().strip()
    return {"SUPERMIN_KERNEL": str(where / "vmlinuz"), "SUPERMIN_MODULES": str(where / "modules" / kver),
            "SUPERMIN_KERNEL_VERSION": kver}


def guestfs_env(state, log: Optional[Path] = None) -> tuple[dict, list[str], list[str]]:
    """(environment, what it works around, folders to create) for a libguestfs tool on this host: TCG when
    KVM does not run guests, and the base image's own kernel for the appliance when the host has none."""
    base = state.base.path if state.base else None
    env, applied, make_dirs = {"LIBGUESTFS_BACKEND": "direct"}, [], []
    if state.accel is None or state.accel.kind != "kvm":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
        applied.append(f"LIBGUESTFS_BACKEND_SETTINGS=force_tcg: {state.accel.reason if state.accel else 'no KVM'}")
    if not host_has_kernel():
        if base is None:
            raise Failure("libguestfs' appliance needs a kernel in /boot on this host, and this build has no "
                               "base image whose kernel it could boot instead (install the host's kernel package)")
        env.update(appliance_kernel(base, state.distro, log=log))
        applied.append(f"libguestfs appliance boots the base image's kernel {env['SUPERMIN_KERNEL_VERSION']} "
                       "(SUPERMIN_KERNEL/_MODULES): the host has no kernel in /boot")
        # supermin copies the attributes of /lib/modules, which such a host may lack
        make_dirs.append("/lib/modules")
    return env, applied, make_dirs


def run_guestfs(state, argv: list, hide: Sequence[str] = ()) -> None:
    """Run a libguestfs tool (virt-builder, virt-sparsify) the way this host needs (the workarounds go into
    the record)."""
    from .hostfix import PrivateNamespace
    from .runner import run
    env, applied, make_dirs = guestfs_env(state, state.log)
    # libguestfs puts its sockets in TMPDIR: a short one (a unix socket path has at most 107 bytes)
    with reaper.temp_dir("diskimages-gfs-") as tmp:
        env["TMPDIR"] = str(tmp)
        with PrivateNamespace(state.work / f"hostfix-{Path(argv[0]).name}", hide=hide, make_dirs=make_dirs) as ns:
            run(ns.argv(argv), env=env, log=state.log, on_line=state.on_line)
            state.workaround(*applied, *ns.applied)


def sparsify(state, raw: Path) -> None:
    """Zero the free space of the finished disk in place (virt-sparsify --in-place, as the seed's create-image
    did): packages downloaded and deleted inside the VM leave data behind that compression would otherwise keep."""
    run_guestfs(state, ["virt-sparsify", "--in-place", str(raw)])
    state.sparsified = "virt-sparsify --in-place"


# -- the installer path: a distribution's own unattended installer (autoinstall, kickstart, preseed) installs the
# system in the build VM; its configuration comes from the distribution module, and the installed system runs
# the same vm-build.sh as the cloud-base path

def installer_run() -> str:
    """What the installed system runs (chrooted by the installer): unpack the stage, run vm-build.sh."""
    st = customize.STAGE
    tb = distros.STAGE_TARBALL
    return f"tar -xzf {tb} -C / && rm -f {tb} && sh {st}/{VM_SCRIPT}"


def installer_files(state, *, tarball: Optional[bytes] = None, stage_source: str = "/diskimages-stage.tar.gz"):
    """The distribution's installer configuration for this build's recipe."""
    return state.distro.installer_files(state.recipe, state.release, state.mirror, run=installer_run(),
                                        tarball=tarball, stage_source=stage_source)


def installer_firmware(recipe: Recipe) -> str:
    """The firmware the installer boots with: the installed boot loader is the one for that firmware, so a recipe
    asking for both is installed under BIOS (what the boot check starts by default)."""
    return "uefi" if recipe.disk.firmware == "uefi" else "bios"


def fetch(url: str, name: Optional[str] = None, log: Optional[Path] = None) -> Path:
    """An installer ISO (or other large download) in the cache, verified against the SHA256SUMS beside it when the
    server has one; written under a .partial name and renamed when complete."""
    import hashlib
    import urllib.request
    if "://" not in url:
        p = Path(url)
        if not p.is_file():
            raise FileNotFoundError(f"installer image {url} does not exist")
        return p
    dest = cache_dir("downloads") / (name or url.rstrip("/").rsplit("/", 1)[-1])
    if dest.is_file():
        return dest
    for stale in dest.parent.glob(dest.name + ".*.partial"):     # left by a download that was killed
        pid = stale.name[len(dest.name) + 1:-len(".partial")]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    partial = dest.with_name(dest.name + f".{os.getpid()}.partial")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(partial, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                h.update(chunk)
        sums_url = url.rsplit("/", 1)[0] + "/SHA256SUMS"
        try:
            with urllib.request.urlopen(sums_url, timeout=30) as r:
                sums = r.read(1 << 20).decode(errors="replace")
        except OSError:
            sums = ""
        want = next((line.split()[0] for line in sums.splitlines() if line.strip().endswith(dest.name)), None)
        if want and want != h.hexdigest():
            raise Failure(f"{url}: sha256 {h.hexdigest()} does not match {want} from {sums_url}")
        if log:
            with open(log, "a") as f:
                f.write(f"downloaded {url}: sha256 {h.hexdigest()} ({'verified' if want else 'no SHA256SUMS'})\n")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def vm_path(distro) -> Optional[str]:
    """How the VM builders make this distribution: "import" (its cloud base image, made by the native builder),
    "installer" (its own unattended installer: autoinstall, kickstart) or None."""
    if distro.cloud_base_recipe:
        return "import"
    if distro.installer in ("autoinstall", "kickstart"):
        return "installer"
    return None
