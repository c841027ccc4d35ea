"""arch-boxes (Arch Linux's own image project) in its Packer-and-pacstrap way: Packer's qemu builder boots the Arch
installation ISO, `boot_command` fetches `install.sh` from Packer's HTTP server and runs it in the live system;
it partitions the disk (GPT: BIOS boot, ESP, root), installs the recipe's packages with `pacstrap`, writes the
fstab with `genfstab`, installs GRUB for BIOS and UEFI, and runs vm-build.sh (kernel command line and the shared
customisation) with `arch-chroot`, then powers the VM off (`communicator = "none"`).

The ISO comes from the tool option or the host's osinfo database; the mirror from the parameter, else the live
ISO's own mirror list. On the project's machines (no Arch mirror) the template is rendered and checked with
`packer validate` and `bash -n`, not built.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import checkers, disk, vmbuild
from ..disk import DiskInfo
from ..runner import run
from . import BuildState, DiskTool
from .packer import PLUGINS, Packer, hcl, run_packer
from ..errors import Failure

INSTALL = r"""#!/bin/bash
# arch-boxes-style install rendered by diskimages from recipe {name}: runs in the Arch live system
set -euo pipefail
SERVER="$1"
device=/dev/vda
[ -e "$device" ] || device=/dev/sda
sgdisk --zap-all "$device"
{partitions}
partprobe "$device" || true
sleep 2
root="${device}{root_no}"
mkfs.ext4 -q -F -L root "$root"
mount "$root" /mnt
{esp}
{mirror}
pacman-key --init
pacman-key --populate archlinux
pacstrap -K /mnt {packages}
genfstab -U /mnt >> /mnt/etc/fstab
curl -fsS -o /mnt{tarball} "$SERVER/diskimages-stage.tar.gz"
{grub}
arch-chroot /mnt sh -c {run}
umount -R /mnt
systemctl poweroff
"""


class ArchBoxes(DiskTool):
    name = "arch-boxes"
    program = "packer"
    packages = ("packer",)
    applies_recipe = True
    needs = frozenset({"accel"})
    description = "arch-boxes' way: Packer boots the Arch ISO, install.sh runs pacstrap and vm-build.sh"
    package_managers = ("pacman",)
    options = {"iso_url": Packer.options["iso_url"]}
    native = {"packages": "pacstrap", "desktop": "pacstrap (the desktop's packages)",
              "files": "staged tarball over Packer's HTTP server", "scripts": "arch-chroot vm-build.sh",
              "disk": "disk_size + install.sh's partitions"}

    def version(self):
        return Packer().version()

    def host_lacks(self, recipe):
        from .. import distros
        d, rel = distros.for_recipe(recipe)
        if recipe.tool_options(self.name).get("iso_url") or d.installer_media(rel, recipe.architecture):
            return None
        return (f"the host's osinfo database does not know {d.pretty_name} {rel.version}'s installer ISO "
                f"(allowed: tools.{self.name}.iso_url)")

    def iso(self, state: BuildState) -> tuple[str, str]:
        url = state.recipe.tool_options(self.name).get("iso_url") or \
            state.distro.installer_media(state.release, state.recipe.architecture)
        if not url:
            raise Failure("no Arch Linux ISO is known here: the host's osinfo database does not list it "
                               f"(allowed: tools.{self.name}.iso_url in the recipe)")
        return url, ("file:" + url.rsplit("/", 1)[0] + "/sha256sums.txt") if "://" in url else "none"

    def install_script(self, state: BuildState) -> str:
        r, d = state.recipe, state.distro
        fw = r.disk.firmware
        parts, n = [], 0
        if fw in ("bios", "both"):
            n += 1
            parts.append(f'sgdisk -n {n}:0:+1M -t {n}:ef02 "$device"')
        esp_no = None
        if fw in ("uefi", "both"):
            n += 1
            esp_no = n
            parts.append(f'sgdisk -n {n}:0:+{r.disk.esp_bytes >> 20}M -t {n}:ef00 "$device"')
        n += 1
        parts.append(f'sgdisk -n {n}:0:0 -t {n}:8304 "$device"')
        esp = (f'mkfs.fat -F 32 "${{device}}{esp_no}"\nmkdir -p /mnt/boot/efi\nmount "${{device}}{esp_no}" '
               "/mnt/boot/efi") if esp_no else ""
        mirror = (f"echo 'Server = {state.mirror.uri}/$repo/os/$arch' > /etc/pacman.d/mirrorlist"
                  if state.mirror.uri else "# the live ISO's own mirror list (reflector) is used")
        grub = []
        if fw in ("bios", "both"):
            grub.append('arch-chroot /mnt grub-install --target=i386-pc "$device"')
        if fw in ("uefi", "both"):
            grub.append("arch-chroot /mnt grub-install --target=x86_64-efi --efi-directory=/boot/efi --removable "
                        "--no-nvram")
        grub.append("arch-chroot /mnt grub-mkconfig -o /boot/grub/grub.cfg")
        import shlex
        return (INSTALL.replace("{name}", r.name).replace("{partitions}", "\n".join(parts))
                .replace("{root_no}", str(n)).replace("{esp}", esp).replace("{mirror}", mirror)
                .replace("{packages}", " ".join(shlex.quote(p) for p in d.packages_for(r)))
                .replace("{tarball}", vmbuild.distros.STAGE_TARBALL).replace("{grub}", "\n".join(grub))
                .replace("{run}", shlex.quote(vmbuild.installer_run())))

    def template(self, state: BuildState, work: Path, iso: tuple[str, str], accel: str) -> str:
        r = state.recipe
        server = "http://{{ .HTTPIP }}:{{ .HTTPPort }}"
        src = {"iso_url": iso[0], "iso_checksum": iso[1], "format": "raw",
               "disk_size": f"{r.disk.size_bytes >> 20}M", "accelerator": accel, "headless": True,
               "memory": 2048, "cpus": 2, "net_device": "virtio-net", "disk_interface": "virtio",
               "http_directory": str(work / "http"), "boot_wait": "10s",
               # the live ISO's boot menu, then its root shell (arch-boxes' own boot_command, with our script)
               "boot_command": ["<enter><wait60>",
                                f"curl -fsSO {server}/install.sh && bash install.sh {server}<enter>"],
               "communicator": "none", "shutdown_timeout": "120m",
               "output_directory": str(work / "packer-output"), "vm_name": "disk.raw",
               "qemuargs": [["-serial", f"file:{work / 'serial.log'}"]]}
        body = "\n".join(f"  {k} = {hcl(v)}" for k, v in src.items())
        return (f"# arch-boxes-style Packer template rendered by diskimages from recipe {r.name} (edit the recipe, "
                f"not this file)\nsource \"qemu\" \"diskimages\" {{\n{body}\n}}\n\n"
                "build {\n  sources = [\"source.qemu.diskimages\"]\n}\n")

    def render(self, state: BuildState) -> dict[str, str]:
        try:
            iso = self.iso(state)
        except RuntimeError:
            iso = ("ARCH_ISO_URL", "none")
        files = {"diskimages.pkr.hcl": self.template(state, Path("WORK"), iso, "tcg"),
                 "http/install.sh": self.install_script(state), "vm-build.sh": vmbuild.vm_script(state.recipe),
                 "command": "packer build -color=false WORK/template\n"}
        if Packer()._plugins_block():
            files["plugins.pkr.hcl"] = PLUGINS
        return files

    def write_config(self, state: BuildState, work: Path, accel: str, tarball: bytes,
                     iso: tuple[str, str] | None = None) -> Path:
        (work / "http").mkdir(parents=True)
        (work / "http/install.sh").write_text(self.install_script(state))
        fd = os.open(work / "http/diskimages-stage.tar.gz", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(tarball)
        tpl = work / "template"
        tpl.mkdir()
        (tpl / "diskimages.pkr.hcl").write_text(self.template(state, work, iso or self.iso(state), accel))
        if Packer()._plugins_block():
            (tpl / "plugins.pkr.hcl").write_text(PLUGINS)
        return tpl

    def check(self, state: BuildState, where: Path) -> list:
        try:
            url = self.iso(state)[0]
        except RuntimeError:
            url = str(where / "archlinux-x86_64.iso")
        tpl = self.write_config(state, where / "w", "tcg", b"stage", iso=(url, checkers.stand_in_checksum(where, url)))
        return [checkers.run("diskimages.pkr.hcl", "packer validate", ["packer", "validate", tpl],
                             env={"CHECKPOINT_DISABLE": "1"}),
                checkers.run("http/install.sh", "bash -n", ["bash", "-n", where / "w/http/install.sh"])]

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        work = state.work / "arch-boxes"
        kvm = state.accel.kind == "kvm"
        state.workaround(f"accelerator = {'kvm' if kvm else 'tcg'}: {state.accel.reason}")
        tpl = self.write_config(state, work, "kvm" if kvm else "tcg", vmbuild.stage_tarball(state.recipe))
        run_packer(state, work, tpl, raw, "installer VM")
        return disk.raw_disk_info(raw, state.distro)
