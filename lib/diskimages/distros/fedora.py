"""Fedora: dnf and rpm, `kernel` with a dracut initramfs, GRUB 2 for BIOS (grub2-pc) and UEFI (grub2-efi-x64 with
shim), the Xfce desktop from its comps group with LightDM, and an SELinux relabel at first boot (a tree made
outside the installer carries no labels). The package sets follow the Fedora Xfce spin's kickstart and comps
group (`xfce-desktop`)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from ..recipe import Recipe
from ..shell import q
from . import STAGE_TARBALL, DesktopSpec, Distribution, Release, keyboard_layout, osinfo
from .sources import MirrorChoice
from ..errors import Failure

_X = ("xorg-x11-server-Xorg", "xorg-x11-drv-libinput", "xorg-x11-drv-qxl", "xorg-x11-drv-fbdev",
      "dejavu-sans-fonts", "dbus-x11")
_NM = ("NetworkManager", "NetworkManager-wifi")


class Fedora(Distribution):
    name = "fedora"
    pretty_name = "Fedora"
    # eol: about four weeks after the release two versions later (Fedora's 13-month life cycle)
    releases = (Release("44", "44", "2027-05-19"), Release("45", "45", "2027-12-08"))
    default_release = "45"
    architectures = {"amd64": None,
                     "arm64": "arm64 images are not built yet (no aarch64 boot check in this project)"}
    # rpm names carry capitals (NetworkManager); a leading @ names a comps group
    package_name_pattern = r"@?[A-Za-z0-9][A-Za-z0-9+._-]*"
    package_manager = "dnf"
    package_cache_glob = "*.rpm"
    package_db = "/var/lib/rpm/rpmdb.sqlite"
    sudo_group = "wheel"
    ssh_service = "sshd.service"
    grub_mkimage = "grub2-mkimage"
    grub_lib = "/usr/lib/grub"
    grub_distributor = "Fedora"
    components = ("fedora", "updates")
    installer = "kickstart"
    osinfo_vendor = "fedoraproject.org"
    osinfo_short_id = "fedora{version}"

    base_packages = ("systemd", "systemd-udev", "dbus-broker", "kbd", "glibc-langpack-en", "e2fsprogs",
                     "passwd", "shadow-utils", "util-linux", "iproute", "less", "procps-ng", "ca-certificates",
                     "selinux-policy-targeted", "policycoreutils")
    desktops = {
        "none": DesktopSpec(("systemd-networkd", "systemd-resolved"), None, None, min_disk_gib=2),
        # the comps group of Fedora's Xfce spin, plus LightDM's greeter (which the group only suggests)
        "xfce": DesktopSpec(("@xfce-desktop", "lightdm", "lightdm-gtk", "xfce4-terminal",
                             "network-manager-applet") + _NM + _X, "lightdm", "xfce", min_disk_gib=4),
    }

    def osinfo_ids(self, release: Release) -> list[str]:
        older = [f"fedora{v}" for v in range(int(release.version) - 1, 36, -1)]
        return [f"fedora{release.version}", *older, "linux2022", "generic"]

    def kernel_packages(self, arch: str) -> tuple[str, ...]:
        return ("kernel", "dracut")

    def bootloader_packages(self, arch: str) -> tuple[str, ...]:
        if arch == "amd64":
            return ("grub2-pc", "grub2-pc-modules", "grub2-efi-x64", "grub2-efi-x64-modules", "grub2-tools",
                    "shim-x64", "efibootmgr")
        return ("grub2-efi-aa64", "grub2-efi-aa64-modules", "grub2-tools", "shim-aa64")

    def packages_for(self, recipe: Recipe) -> list[str]:
        pkgs = super().packages_for(recipe)
        lang = recipe.locale.split("_")[0].split(".")[0]
        if lang not in ("C", "POSIX", "en"):
            pkgs.append(f"glibc-langpack-{lang}")
        return pkgs

    def install_command(self, packages: list[str]) -> str:
        return ("dnf -y install --setopt=install_weak_deps=False "
                + " ".join(q(p) for p in packages) + "\n")

    def installed_packages(self, rootfs: Path) -> list[dict]:
        out = subprocess.run(["rpm", f"--root={rootfs}", "-qa", "--qf", "%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n"],
                             capture_output=True, text=True)
        return [dict(zip(("name", "version", "architecture"), line.split("\t")))
                for line in out.stdout.splitlines() if line.count("\t") == 2 and not line.startswith("gpg-pubkey")]

    # -- the manifest: rpm's database (SQLite), read with the host's rpm; Fedora's License tags are SPDX
    manifest_paths = ("/var/lib/rpm",)
    purl_type = "rpm"

    def manifest(self, root: Path) -> list[dict]:
        import shutil
        if not shutil.which("rpm"):
            raise Failure("rpm is needed on the build host to read Fedora's package database "
                               "(Debian/Ubuntu package rpm)")
        out = subprocess.run(["rpm", "--dbpath", str(root / "var/lib/rpm"), "-qa", "--qf",
                              "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{ARCH}\t%{SOURCERPM}\t%{LICENSE}\n"],
                             capture_output=True, text=True, check=True).stdout
        rows = []
        for line in out.splitlines():
            name, version, arch, srpm, lic = (line.split("\t") + [""] * 5)[:5]
            if not name or name == "gpg-pubkey":
                continue
            rows.append({"name": name, "version": version.removeprefix("0:"), "architecture": arch,
                         "source": srpm.rsplit("-", 2)[0] if srpm not in ("", "(none)") else name,
                         "license": lic if lic not in ("", "(none)") else None})
        return sorted(rows, key=lambda r: (r["name"], r["architecture"]))

    def count_packages_in_db(self, db_text: str) -> int:
        raise NotImplementedError("the rpm database is SQLite: count with rpm --root on the tree")

    # -- kernel: kernel-core keeps vmlinuz under /usr/lib/modules; kernel-install copies it to /boot
    def kernel_version(self, rootfs: Path) -> str:
        mods = sorted(p.parent.name for p in (rootfs / "usr/lib/modules").glob("*/vmlinuz"))
        if not mods:
            return super().kernel_version(rootfs)
        return mods[-1]

    def kernel_path(self, rootfs: Path, kver: str) -> str:
        return f"/boot/vmlinuz-{kver}" if (rootfs / f"boot/vmlinuz-{kver}").exists() else \
            f"/usr/lib/modules/{kver}/vmlinuz"

    # -- customisation steps
    def desktop_services(self, desktop: DesktopSpec) -> tuple[str, ...]:
        return ("NetworkManager.service", f"{desktop.display_manager}.service") if desktop.display_manager else ()

    def kernel_cmdline_step(self, cmdline: str, serial: str) -> str:
        return f"grubby --update-kernel=ALL --args={q(serial + ' ' + cmdline)}\n"

    def cleanup_step(self) -> str:
        # a tree made outside the installer has no SELinux labels: relabel once at first boot
        return "dnf clean all\nrm -rf /var/cache/dnf/* /var/lib/dnf/history*\ntouch /.autorelabel\n"

    installer_kernel = ("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img")

    def installer_args(self, config_url: Optional[str], tree: Optional[str] = None) -> str:
        return " ".join(["inst.text", *([f"inst.repo={tree}"] if tree else []),
                         *([f"inst.ks={config_url}"] if config_url else [])])

    # -- Anaconda's kickstart
    #: a stage_source that means "beside the kickstart", for a kickstart served over HTTP (Packer's server)
    BESIDE_KICKSTART = '"$(sed -n \'s#.*inst.ks=\\([^ ]*\\)/ks.cfg.*#\\1#p\' /proc/cmdline)/diskimages-stage.tar.gz"'

    def installer_files(self, recipe: Recipe, release: Release, mirror: MirrorChoice, *, run: str,
                        tarball: Optional[bytes] = None, stage_source: str = "/diskimages-stage.tar.gz") -> dict:
        """`ks.cfg`: the install tree, locale, keyboard, time zone, network, users, a GPT disk with BIOS boot,
        ESP and root, the packages without weak dependencies, then (in %post) the staging tarball copied from
        `stage_source` (a file injected into the installer's initrd, or a URL) and `run` in the installed system."""
        layout, _ = keyboard_layout(recipe.keyboard)
        tree = self.install_tree(mirror, release, recipe.architecture) or "INSTALL_TREE_URL"
        fw = recipe.disk.firmware
        lines = [f"# Fedora kickstart rendered by diskimages from recipe {recipe.name}", "text",
                 f"url --url={tree}"]
        if mirror.uri:
            lines.append(f"repo --name=updates --baseurl={mirror.uri}/updates/{release.version}/Everything/"
                         f"{'x86_64' if recipe.architecture == 'amd64' else 'aarch64'}/")
        lines += [f"lang {recipe.locale if recipe.locale not in ('C', 'POSIX', 'C.UTF-8') else 'en_US.UTF-8'}",
                  f"keyboard --vckeymap={layout} --xlayouts='{layout}'",
                  f"timezone {recipe.timezone} --utc",
                  f"network --bootproto=dhcp --device=link --activate --hostname={recipe.hostname}",
                  "rootpw --lock", "selinux --enforcing", "firstboot --disable"]
        for u in recipe.users:
            groups = list(dict.fromkeys(list(u.groups) + ([self.sudo_group] if u.sudo else [])))
            opts = f"user --name={u.name} --uid={recipe.user_uid(u.name)} --shell={u.shell}"
            if groups:
                opts += f" --groups={','.join(groups)}"
            if u.password_hash:
                opts += f" --iscrypted --password={u.password_hash}"
            else:
                opts += " --lock"
            lines.append(opts)
        lines += ["zerombr", "clearpart --all --initlabel --disklabel=gpt"]
        if fw in ("bios", "both"):
            lines.append("part biosboot --fstype=biosboot --size=1")
        if fw in ("uefi", "both"):
            lines.append(f"part /boot/efi --fstype=efi --size={recipe.disk.esp_bytes >> 20}")
        lines += ["part / --fstype=ext4 --grow",
                  f"bootloader --timeout=1 --append=\"{recipe.kernel_cmdline}\"", "poweroff", "",
                  "%packages --exclude-weakdeps", "@core", *self.packages_for(recipe), "%end", "",
                  "%post --nochroot --erroronfail",
                  (f"curl -fsS -o /mnt/sysroot{STAGE_TARBALL} {stage_source}"
                   if "://" in stage_source or stage_source.startswith('"$(')
                   else f"cp {stage_source} /mnt/sysroot{STAGE_TARBALL}"),
                  "%end", "",
                  "%post --erroronfail --log=/root/diskimages-ks-post.log", run, "rm -f /root/diskimages-ks-post.log",
                  "%end"]
        return {"ks.cfg": "\n".join(lines) + "\n"}

    # -- sources: Fedora's repositories by metalink are the tools' defaults (mkosi, dnf, the installer)
    def mirror_probe_url(self, mirror, release: Release) -> Optional[str]:
        return f"{mirror.uri}/releases/{release.version}/Everything/x86_64/os/repodata/repomd.xml" \
            if mirror.uri else None

    def default_archive(self, release: Release) -> Optional[str]:
        e = self.osinfo_entry(release) or osinfo.newest(self.osinfo_vendor, r"fedora\d+")
        tree = next((u for a, u in (e.trees if e else ()) if a == "x86_64"), None)
        return osinfo.base_url(tree) if tree else None

    def install_tree(self, mirror, release: Release, arch: str) -> Optional[str]:
        """The Everything install tree the kickstart installs from: the mirror given, else the osinfo database's
        tree for this release."""
        a = {"amd64": "x86_64", "arm64": "aarch64"}[arch]
        if mirror.uri:
            return f"{mirror.uri}/releases/{release.version}/Everything/{a}/os"
        e = self.osinfo_entry(release)
        return next((u for ar, u in (e.trees if e else ()) if ar == a), None)

    def installer_media(self, release: Release, arch: str) -> Optional[str]:
        """The Everything/Server netinst ISO of this release, from the osinfo database."""
        e = self.osinfo_entry(release)
        want = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
        return next((m.url for m in (e.media if e else ()) if m.arch == want and "netinst" in m.url), None)
