"""debos (Collabora's Debian OS builder; Debian ships debos 1.1): the recipe becomes a debos YAML recipe that
makes the whole bootable disk itself: debootstrap, apt, overlay (the recipe's files), a chroot `run` of the
shared customisation script, image-partition (GPT: BIOS boot, ESP, ext4 root), filesystem-deploy, GRUB for
BIOS (grub-install) and UEFI (grub-mkimage into the ESP with mtools, which needs no vfat mount).

Host paths, said in the record's `host_workarounds`:
  * fakemachine (debos' build VM) needs a KVM that runs a stock kernel, or a matching host kernel for its qemu
    backend; where neither works (these machines) debos runs with `--disable-fakemachine` as root;
  * without fakemachine, debos' chroot runs use systemd-nspawn (a tmpfs on /run/systemd/nspawn when /run is
    not one), `udevadm settle` must not wait for a udevd that does not run, and /dev/disk must exist;
    all of this is done inside a private mount namespace and undone afterwards;
  * with no udev, update-grub writes root=/dev/loopNpM: the recipe rewrites it to the root file system's UUID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from .. import checkers, customize, disk, reaper
from ..disk import DiskInfo
from ..hostfix import PrivateNamespace
from ..runner import run
from . import COMPONENTS, BuildState, DiskTool

IMAGE = "disk.img"
STAGE_SRC = "diskimages-stage"        # next to the recipe: the staging tree the overlay action copies in

GRUB_SETUP = r"""set -e
# GRUB as the other builders set it up: serial console, the recipe's kernel command line, root by UUID
ROOTSPEC=$(awk '$2=="/"{print $1}' /etc/fstab)
sed -i -e 's|^GRUB_CMDLINE_LINUX=.*|GRUB_CMDLINE_LINUX="{console}"|' \
       -e 's|^GRUB_CMDLINE_LINUX_DEFAULT=.*|GRUB_CMDLINE_LINUX_DEFAULT="{cmdline}"|' \
       -e 's|^GRUB_TIMEOUT=.*|GRUB_TIMEOUT=0|' /etc/default/grub
printf 'GRUB_TIMEOUT_STYLE=hidden\nGRUB_TERMINAL_INPUT="{terminal_input}"\nGRUB_TERMINAL_OUTPUT="console serial"\nGRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n' >> /etc/default/grub
{bios}
update-grub
# no udev here means no /dev/disk/by-uuid, so grub-mkconfig fell back to the loop device's name
sed -i -E "s#root=/dev/loop[0-9]+p[0-9]+#root=$ROOTSPEC#g" /boot/grub/grub.cfg
grep -q "root=$ROOTSPEC" /boot/grub/grub.cfg
{efi}
"""

EFI_IMAGE = r"""# UEFI: a removable-media GRUB that finds the root file system by UUID
UUID=${ROOTSPEC#UUID=}
mkdir -p /boot/grub/x86_64-efi /var/tmp/diskimages-efi
cp /usr/lib/grub/x86_64-efi/*.mod /usr/lib/grub/x86_64-efi/*.lst /boot/grub/x86_64-efi/
printf 'search --no-floppy --fs-uuid --set=root %s\nset prefix=($root)/boot/grub\n' "$UUID" > /var/tmp/diskimages-efi/early.cfg
grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -c /var/tmp/diskimages-efi/early.cfg -p /boot/grub \
  -o /var/tmp/diskimages-efi/BOOTX64.EFI efi_gop efi_uga {modules}"""

ESP_FILL = r"""set -e
# copy BOOTX64.EFI into the ESP with mtools: no vfat mount needed (some kernels have no vfat)
START=$(partx -g -o START -n {esp_no} "$IMAGE")
export MTOOLS_SKIP_CHECK=1
mmd -i "$IMAGE@@$((START * 512))" ::/EFI ::/EFI/BOOT
mcopy -i "$IMAGE@@$((START * 512))" "$ROOTDIR/var/tmp/diskimages-efi/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
rm -rf "$ROOTDIR/var/tmp/diskimages-efi"
"""


class Debos(DiskTool):
    name = "debos"
    program = "debos"
    packages = ("debos",)
    applies_recipe = True
    description = "Collabora's Debian OS builder: a debos YAML recipe that makes the whole bootable disk"
    package_managers = ("apt",)
    options = {"components": COMPONENTS}
    native = {"packages": "apt action", "desktop": "apt action (the desktop's packages)",
              "files": "overlay action", "scripts": "run action (chroot) via customize.sh",
              "kernel_cmdline": "run action: GRUB_CMDLINE_LINUX_DEFAULT", "disk": "image-partition action"}

    def version(self):
        return self.package_version("debos")      # debos has no --version

    def recipe_yaml(self, state: BuildState, files_src: str = "files") -> str:
        r = state.recipe
        opts = r.tool_options(self.name)
        pkgs = state.distro.packages_for(r) + list(state.distro.grub_setup_packages(r.architecture))
        fw = r.disk.firmware
        actions: list[dict] = [
            {"action": "debootstrap", "suite": state.release.codename,
             "components": opts.get("components", list(state.distro.components)),
             "variant": "minbase", "check-gpg": True,
             **({"mirror": state.mirror.uri} if state.mirror.uri else {}),
             **({"keyring-file": state.distro.keyring_files[0]} if state.distro.keyring_files else {})},
            {"action": "apt", "description": "packages of the recipe and its desktop", "recommends": False,
             "packages": pkgs},
        ]
        # debootstrap knows one suite: the release's -updates and -security come after it, as every tool has them
        lines = state.distro.sources_lines(state.mirror, state.release, opts.get("components"))
        if lines:
            actions.insert(1, {"action": "run", "chroot": True,
                               "description": "the same suites as every tool: " + ", ".join(l.split()[2] for l in lines),
                               "command": "set -e\n" + state.distro.sources_step(lines)})
        # the kernel's packages make the initramfs in the apt action, before customisation writes this
        if state.distro.initramfs_step(r):
            apt = next(i for i, a in enumerate(actions) if a["action"] == "apt")
            actions.insert(apt, {"action": "run", "chroot": True, "description": "the initramfs for a local disk",
                                 "command": "set -e\n" + state.distro.initramfs_step(r)})
        if r.files:
            actions.append({"action": "overlay", "description": "the recipe's files", "source": files_src})
        actions.append({"action": "overlay", "description": "customize.sh and the recipe's scripts (staged)",
                        "source": STAGE_SRC})
        actions.append({"action": "run", "description": "users, autologin, locale, services, scripts, hygiene",
                        "chroot": True,
                        "command": f"sh {customize.STAGE}/customize.sh && rm -rf {customize.STAGE}"})
        parts: list[dict] = []
        start = 1
        if fw in ("bios", "both"):
            parts.append({"name": "bios", "fs": "none", "start": "1MiB", "end": "2MiB", "flags": ["bios_grub"]})
            start = 2
        if fw in ("uefi", "both"):
            esp_end = start + r.disk.esp_bytes // (1 << 20)
            parts.append({"name": "esp", "fs": "vfat", "start": f"{start}MiB", "end": f"{esp_end}MiB",
                          "flags": ["esp"]})
            start = esp_end
        parts.append({"name": "root", "fs": "ext4", "start": f"{start}MiB", "end": "100%"})
        actions.append({"action": "image-partition", "imagename": IMAGE,
                        "imagesize": f"{r.disk.size_bytes // (1 << 20)}MiB", "partitiontype": "gpt",
                        "mountpoints": [{"mountpoint": "/", "partition": "root"}], "partitions": parts})
        actions.append({"action": "filesystem-deploy", "description": "copy the tree into the image, write fstab",
                        "setup-kernel-cmdline": False})
        efi = EFI_IMAGE.replace("{modules}", " ".join(disk.GRUB_MODULES)) if fw in ("uefi", "both") else ""
        bios = 'grub-install --target=i386-pc "$IMAGE"' if fw in ("bios", "both") else ""
        actions.append({"action": "run", "description": "GRUB (BIOS and UEFI)", "chroot": True,
                        "command": GRUB_SETUP.replace("{console}", disk.SERIAL_CONSOLE)
                        .replace("{terminal_input}", disk.grub_terminal_input(r))
                        .replace("{cmdline}", r.kernel_cmdline).replace("{bios}", bios).replace("{efi}", efi)})
        if fw in ("uefi", "both"):
            esp_no = 2 if fw == "both" else 1
            actions.append({"action": "run", "description": "UEFI boot loader into the ESP",
                            "command": ESP_FILL.replace("{esp_no}", str(esp_no))})
        doc = {"architecture": r.architecture, "actions": actions}
        head = (f"# debos {self.version() or ''} recipe rendered by diskimages from recipe {r.name}\n"
                "# (edit the recipe, not this file)\n")
        return head + yaml.safe_dump(doc, sort_keys=False, width=110)

    def render(self, state: BuildState) -> dict[str, str]:
        return {"debos.yaml": self.recipe_yaml(state),
                f"{STAGE_SRC}/{customize.STAGE.lstrip('/')}/customize.sh": customize.render_script(state.recipe),
                "command": "debos --disable-fakemachine --artifactdir OUTPUT debos.yaml   "
                           "# where fakemachine works: drop --disable-fakemachine\n"}

    def check(self, state: BuildState, where: Path) -> list:
        """debos' own recipe parser and action checks (`--dry-run --print-recipe`), and `sh -n` on the staged
        customisation script."""
        where.mkdir(parents=True, exist_ok=True)
        (where / "files").mkdir(exist_ok=True)
        (where / STAGE_SRC).mkdir(exist_ok=True)
        (where / "debos.yaml").write_text(self.recipe_yaml(state))
        script = where / "customize.sh"
        script.write_text(customize.render_script(state.recipe))
        f = checkers.run("debos.yaml", "debos --dry-run", ["debos", "--disable-fakemachine", "--dry-run",
                                                           "--print-recipe", "debos.yaml"], cwd=where)
        if f.ok and "Recipe done" not in f.detail:
            f = checkers.Finding(f.file, f.parser, False, f.detail)
        return [f, checkers.run("customize.sh", "sh -n", ["sh", "-n", script])]

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        r = state.recipe
        where = state.work / "debos"
        where.mkdir(parents=True)
        if r.files_dir:
            shutil.copytree(r.files_dir, where / "files", symlinks=True)
        customize.stage(r, where / STAGE_SRC, files=False, secrets=True)
        (where / "debos.yaml").write_text(self.recipe_yaml(state))
        out = state.work / "debos-out"
        out.mkdir()
        # debos has no package cache option: every build downloads its packages (the record says so)
        state.cache = "none (debos has no package cache)"
        if not state.distro.sources_lines(state.mirror, state.release):
            state.content_differs.append("the release suite only: no mirror is known here to add -updates and "
                                         "-security to debootstrap's")
        with PrivateNamespace(state.work / "hostfix", nspawn=True, udev=True, dev_disk=True) as ns:
            state.workaround("debos --disable-fakemachine: fakemachine needs a KVM or kernel this host does not give",
                             *ns.applied)
            argv = ["debos", "--disable-fakemachine", f"--artifactdir={out}", "debos.yaml"]
            # debos attaches the image to a loop device: a kill leaves it attached (the next command detaches it)
            loop = reaper.track("loop", image=str(out / IMAGE))
            try:
                run(ns.argv(argv), cwd=where, log=state.log, on_line=state.on_line)
            finally:
                _detach_loops(out / IMAGE)
                reaper.untrack(loop)
        os.replace(out / IMAGE, raw)
        return disk.raw_disk_info(raw, state.distro)


def _detach_loops(image: Path) -> None:
    """debos detaches its loop device itself; after a kill it cannot, so do it here."""
    r = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        dev = line.split(":", 1)[0]
        subprocess.run(["losetup", "-d", dev], capture_output=True)
