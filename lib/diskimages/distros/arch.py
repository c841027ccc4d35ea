"""Arch Linux: pacman, `base linux mkinitcpio`, GRUB for BIOS and UEFI, Xfce (the `xfce4` group) with LightDM.
Arch is a rolling release: its one release is "rolling". Packages enable no services on install, so the desktop's
display manager and NetworkManager are enabled here, and the `wheel` group is given sudo (Arch's sudoers leaves it
commented out). The package sets follow the ArchWiki's installation guide, Xfce and LightDM pages."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from ..recipe import Recipe
from ..shell import q, write_file
from . import DesktopSpec, Distribution, Release, osinfo
from ..errors import Failure

_X = ("xorg-server", "xf86-input-libinput", "xf86-video-qxl", "xf86-video-fbdev", "xf86-video-vesa", "ttf-dejavu")
_NM = ("networkmanager",)


class Arch(Distribution):
    name = "arch"
    pretty_name = "Arch Linux"
    releases = (Release("rolling", "rolling"),)
    default_release = "rolling"
    architectures = {"amd64": None, "arm64": "Arch Linux builds x86_64 only (ARM is a separate project)"}
    package_name_pattern = r"@?[a-z0-9@_+][a-z0-9@._+-]*"
    package_manager = "pacman"
    package_cache_glob = "*.pkg.tar.*"
    package_db = "/var/lib/pacman/local"
    sudo_group = "wheel"
    ssh_service = "sshd.service"
    grub_distributor = "Arch"
    components = ("core", "extra")
    keyring_packages = ("archlinux-keyring",)
    osinfo_vendor = "archlinux.org"
    osinfo_short_id = "archlinux"

    base_packages = ("base", "mkinitcpio", "e2fsprogs", "iproute2", "less", "ca-certificates")
    desktops = {
        "none": DesktopSpec((), None, None, min_disk_gib=2),
        "xfce": DesktopSpec(("xfce4", "xfce4-terminal", "lightdm", "lightdm-gtk-greeter", "network-manager-applet")
                            + _NM + _X, "lightdm", "xfce", min_disk_gib=4),
    }

    def supported_locales(self) -> dict[str, str]:
        # glibc's SUPPORTED list, which Arch's /etc/locale.gen is made from (the same list Debian ships)
        from .debian import Debian
        return Debian().supported_locales()

    def osinfo_ids(self, release: Release) -> list[str]:
        return ["archlinux", "linux2022", "generic"]

    def kernel_packages(self, arch: str) -> tuple[str, ...]:
        return ("linux",)

    def bootloader_packages(self, arch: str) -> tuple[str, ...]:
        return ("grub", "efibootmgr")

    def install_command(self, packages: list[str]) -> str:
        return "pacman -Syu --noconfirm --needed " + " ".join(q(p) for p in packages) + "\n"

    def installed_packages(self, rootfs: Path) -> list[dict]:
        out = subprocess.run(["pacman", "--root", str(rootfs), "-Q"], capture_output=True, text=True) \
            if (rootfs / "var/lib/pacman/local").is_dir() and _has("pacman") else None
        if out is not None and out.returncode == 0:
            return [{"name": n, "version": v, "architecture": "x86_64"}
                    for n, v in (line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)]
        rows = []
        for desc in sorted((rootfs / "var/lib/pacman/local").glob("*/desc")):
            fields = _pacman_desc(desc.read_text(errors="replace"))
            rows.append({"name": fields.get("NAME", ""), "version": fields.get("VERSION", ""),
                         "architecture": fields.get("ARCH", "")})
        return rows

    # -- the manifest: pacman's local database, one desc file per package; Arch's licences are SPDX ids
    manifest_paths = ("/var/lib/pacman/local",)
    purl_type = "alpm"

    def manifest(self, root: Path) -> list[dict]:
        rows = []
        for desc in sorted((root / "var/lib/pacman/local").glob("*/desc")):
            f = _pacman_fields(desc.read_text(errors="replace"))
            lic = f.get("LICENSE", [])
            rows.append({"name": (f.get("NAME") or [""])[0], "version": (f.get("VERSION") or [""])[0],
                         "architecture": (f.get("ARCH") or [""])[0],
                         "source": (f.get("BASE") or f.get("NAME") or [""])[0],
                         "license": " AND ".join(lic) if lic else None})
        return sorted(rows, key=lambda r: (r["name"], r["architecture"]))

    def count_packages_in_db(self, db_text: str) -> int:
        raise NotImplementedError("pacman's database is a folder per package: count with installed_packages")

    # -- kernel: /boot/vmlinuz-linux, not versioned; the version is the modules folder's name
    def kernel_version(self, rootfs: Path) -> str:
        mods = sorted(p.parent.name for p in (rootfs / "usr/lib/modules").glob("*/vmlinuz"))
        if not mods:
            raise Failure(f"no kernel in {rootfs}/usr/lib/modules: the image needs the linux package")
        return mods[-1]

    def kernel_path(self, rootfs: Path, kver: str) -> str:
        return "/boot/vmlinuz-linux"

    def initrd_file(self, kver: str) -> str:
        return "boot/initramfs-linux.img"

    def initrd_command(self, kver: str) -> list[str]:
        return ["mkinitcpio", "-k", kver, "-g", "/boot/initramfs-linux.img"]

    # -- customisation steps
    def locale_step(self, recipe: Recipe) -> str:
        return self.locale_gen_step(recipe) + write_file("/etc/locale.conf", f"LANG={recipe.locale}")

    def desktop_services(self, desktop: DesktopSpec) -> tuple[str, ...]:
        return ("NetworkManager.service", f"{desktop.display_manager}.service") if desktop.display_manager else ()

    def sudo_step(self) -> str:
        return write_file("/etc/sudoers.d/10-diskimages-wheel", "%wheel ALL=(ALL:ALL) ALL", "0440")

    def kernel_cmdline_step(self, cmdline: str, serial: str) -> str:
        return (f"sed -i -E 's#^GRUB_CMDLINE_LINUX=.*#GRUB_CMDLINE_LINUX=\"{serial}\"#' /etc/default/grub\n"
                f"sed -i -E 's#^GRUB_CMDLINE_LINUX_DEFAULT=.*#GRUB_CMDLINE_LINUX_DEFAULT=\"{cmdline}\"#' "
                "/etc/default/grub\n"
                "grub-mkconfig -o /boot/grub/grub.cfg\n")

    def cleanup_step(self) -> str:
        return "rm -rf /var/cache/pacman/pkg/* /var/lib/pacman/sync/*\n"

    # -- sources: the installer ISO's own mirror list (reflector) or the mirror given
    def mirror_probe_url(self, mirror, release: Release) -> Optional[str]:
        return f"{mirror.uri}/core/os/x86_64/core.db" if mirror.uri else None

    def default_archive(self, release: Release) -> Optional[str]:
        e = osinfo.find(self.osinfo_vendor, "archlinux")
        url = next((m.url for m in (e.media if e else ()) if m.arch == "x86_64"), None)
        return osinfo.base_url(url) if url else None

    def installer_media(self, release: Release, arch: str) -> Optional[str]:
        e = osinfo.find(self.osinfo_vendor, "archlinux")
        return next((m.url for m in (e.media if e else ()) if m.arch == "x86_64"), None) if arch == "amd64" else None


def _has(program: str) -> bool:
    import shutil
    return shutil.which(program) is not None


def _pacman_desc(text: str) -> dict[str, str]:
    """pacman's local database entry: %FIELD% lines each followed by the value."""
    out, key = {}, None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%"):
            key = line.strip("%")
        elif key and line and key not in out:
            out[key] = line
    return out


def _pacman_fields(text: str) -> dict[str, list[str]]:
    """pacman's desc file: %FIELD% then its values, one per line, until a blank line."""
    out: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("%") and line.endswith("%") and len(line) > 2:
            key = line.strip("%")
            out[key] = []
        elif key and line:
            out[key].append(line)
        else:
            key = None
    return out
