"""Ubuntu: Debian's package tooling with Ubuntu's archive (components main and universe, Ubuntu's keyring from
Debian's `ubuntu-keyring` package), `linux-image-generic`, the Xubuntu desktop set, LightDM autologin, and
NetworkManager as netplan's renderer. Only what differs from Debian is here."""
from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Optional

from ..shell import write_file
from ..recipe import Recipe
from . import STAGE_TARBALL, DesktopSpec, Release, keyboard_layout, osinfo
from .sources import MirrorChoice
from .debian import _NM, _X, Debian

#: netplan hands every interface to NetworkManager (what Ubuntu's desktop images ship)
NETPLAN_NM = "network:\n  version: 2\n  renderer: NetworkManager\n"
DEBOOTSTRAP_SCRIPTS = Path("/usr/share/debootstrap/scripts")
_COMMANDS = {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}


class Ubuntu(Debian):
    name = "ubuntu"
    pretty_name = "Ubuntu"
    # eol: the end of standard support as announced by Canonical
    releases = (Release("noble", "24.04", "2029-05-31"), Release("resolute", "26.04", "2031-05-31"))
    default_release = "noble"
    architectures = {"amd64": None, "arm64": Debian.architectures["arm64"]}
    components = ("main", "universe")
    keyring_packages = ("ubuntu-keyring",)
    keyring_files = ("/usr/share/keyrings/ubuntu-archive-keyring.gpg",)
    grub_distributor = "Ubuntu"
    gdm_config = "/etc/gdm3/custom.conf"
    installer = "autoinstall"
    # Ubuntu's own grub.cfg (update-grub) sets recordfail at each boot; grub-common.service clears it, else the
    # next boot waits in the menu
    desktop_skipped_units = ()
    #: the debootstrap script every Ubuntu suite uses (a debootstrap older than a release lacks its link to it)
    debootstrap_script = "gutsy"
    osinfo_vendor = "ubuntu.com"
    osinfo_short_id = "ubuntu{version}"
    cloud_base_recipe = None
    desktops = {
        "none": Debian.desktops["none"],
        # Xubuntu's own metapackage: its Depends are the desktop (LightDM, Xfce, Xorg); what it only recommends
        # and a desktop image needs is named
        "xubuntu": DesktopSpec(("xubuntu-desktop-minimal", "xfce4-terminal", "network-manager-gnome", "netplan.io")
                               + _NM + _X, "lightdm", "xubuntu", min_disk_gib=4),
        "xfce": Debian.desktops["xfce"],
        "gnome": DesktopSpec(("ubuntu-desktop-minimal", "gdm3", "netplan.io") + _NM + _X, "gdm", "ubuntu",
                             min_disk_gib=8),
    }

    def kernel_packages(self, arch: str) -> tuple[str, ...]:
        return ("linux-image-generic",)

    def osinfo_ids(self, release: Release) -> list[str]:
        older = [e.short_ids[0] for e in osinfo.entries(self.osinfo_vendor) if e.short_ids
                 and re.fullmatch(r"ubuntu\d+\.04", e.short_ids[0])]
        older = sorted(older, key=lambda s: [int(x) for x in s[6:].split(".")], reverse=True)
        return [f"ubuntu{release.version}", *[o for o in older if o != f"ubuntu{release.version}"],
                "linux2022", "generic"]

    def sources_lines(self, mirror, release: Release, components=None) -> list[str]:
        # Ubuntu's security pocket lives on the same archive unless the host's sources name another
        if not mirror.uri:
            return []
        comps = " ".join(components or self.components)
        suite = release.codename
        sec = mirror.security_uri or mirror.uri
        return [f"deb {mirror.uri} {suite} {comps}", f"deb {mirror.uri} {suite}-updates {comps}",
                f"deb {sec} {suite}-security {comps}"]

    def choose_mirror(self, parameter: Optional[str] = None, root: Path = Path("/")) -> MirrorChoice:
        """The parameter, else the host's apt sources on an Ubuntu host, else debootstrap's default archive (so
        every tool gets the release, -updates and -security pockets, as on an Ubuntu host)."""
        choice = super().choose_mirror(parameter, root)
        if choice.uri is None:
            archive = debootstrap_default(self.releases[0].codename)
            if archive:
                return MirrorChoice(archive, None, "debootstrap's default for Ubuntu")
        return choice

    def default_archive(self, release: Release) -> Optional[str]:
        archive = debootstrap_default(release.codename)
        return f"{archive}/dists/{release.codename}/InRelease" if archive else None

    def installer_media(self, release: Release, arch: str) -> Optional[str]:
        """The live-server ISO (Subiquity, autoinstall) of this release, from the osinfo database."""
        e = self.osinfo_entry(release)
        want = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
        for m in (e.media if e else ()):
            if m.arch == want and "live-server" in m.url:
                return m.url
        return None

    def network_step(self, desktop: DesktopSpec) -> str:
        if not desktop.display_manager:
            return ""
        return ("if [ -d /etc/netplan ] || [ -x /usr/sbin/netplan ]; then\n"
                + write_file("/etc/netplan/01-network-manager-all.yaml", NETPLAN_NM.rstrip("\n"), "0600")
                + "fi\n")

    #: Subiquity's autoinstall reference (version 1): the top-level keys and the values this project writes
    installer_schema = {
        "type": "object", "required": ["autoinstall"],
        "properties": {"autoinstall": {
            "type": "object", "required": ["version"],
            "anyOf": [{"required": ["identity"]}, {"required": ["user-data"]}],
            "additionalProperties": False,
            "properties": {
                "version": {"const": 1}, "interactive-sections": {"type": "array"},
                "early-commands": _COMMANDS, "late-commands": _COMMANDS, "error-commands": _COMMANDS,
                "locale": {"type": "string", "minLength": 1}, "refresh-installer": {"type": "object"},
                "keyboard": {"type": "object", "required": ["layout"], "additionalProperties": False,
                             "properties": {"layout": {"type": "string"}, "variant": {"type": "string"},
                                            "toggle": {"type": ["string", "null"]}}},
                "source": {"type": "object", "properties": {"id": {"type": "string"},
                                                            "search_drivers": {"type": "boolean"}}},
                "network": {"type": "object"}, "proxy": {"type": ["string", "null"]}, "apt": {"type": "object"},
                "storage": {"type": "object", "anyOf": [
                    {"required": ["layout"], "properties": {"layout": {
                        "type": "object", "required": ["name"],
                        "properties": {"name": {"enum": ["lvm", "direct", "zfs", "hybrid"]}}}}},
                    {"required": ["config"]}]},
                "identity": {"type": "object", "required": ["username", "hostname", "password"],
                             "additionalProperties": False,
                             "properties": {"realname": {"type": "string"}, "username": {"type": "string"},
                                            "hostname": {"type": "string"}, "password": {"type": "string"}}},
                "active-directory": {"type": "object"}, "ubuntu-pro": {"type": "object"},
                "ssh": {"type": "object", "additionalProperties": False,
                        "properties": {"install-server": {"type": "boolean"}, "authorized-keys": {"type": "array"},
                                       "allow-pw": {"type": "boolean"}}},
                "codecs": {"type": "object"}, "drivers": {"type": "object"}, "oem": {"type": "object"},
                "snaps": {"type": "array"}, "debconf-selections": {"type": "string"},
                "packages": {"type": "array", "items": {"type": "string"}}, "kernel": {"type": "object"},
                "kernel-crash-dumps": {"type": "object"}, "timezone": {"type": "string"},
                "updates": {"enum": ["security", "all"]}, "shutdown": {"enum": ["reboot", "poweroff"]},
                "reporting": {"type": "object"}, "user-data": {"type": "object"},
            }}},
    }

    installer_kernel = ("casper/vmlinuz", "casper/initrd")

    def installer_args(self, config_url: Optional[str], tree: Optional[str] = None) -> str:
        # the user-data comes from a NoCloud volume labelled cidata, which cloud-init finds by itself
        return "autoinstall" if not config_url else f"autoinstall ds=nocloud;s={config_url}"

    # -- Subiquity's autoinstall, delivered as cloud-init user-data (NoCloud): the reference image's own flow
    def installer_files(self, recipe: Recipe, release: Release, mirror: MirrorChoice, *, run: str,
                        tarball: Optional[bytes] = None, stage_source: str = "") -> dict[str, str]:
        """`user-data` (#cloud-config with the `autoinstall` key) and `meta-data`. The staging tarball is a
        top-level `write_files` entry, which cloud-init writes into the live installer; a late command copies it
        into the installed system (/target) and runs `run` there with curtin."""
        import base64

        import yaml
        layout, variant = keyboard_layout(recipe.keyboard)
        first = recipe.users[0] if recipe.users else None
        build_user = "diskimages-build"
        ai: dict = {
            "version": 1,
            "locale": recipe.locale if recipe.locale not in ("C", "POSIX") else "C.UTF-8",
            "keyboard": {"layout": layout, "variant": variant},
            "timezone": recipe.timezone,
            "identity": {"hostname": recipe.hostname, "realname": first.name if first else build_user,
                         "username": first.name if first else build_user,
                         # a password given by environment variable is set by customize.sh, never written here
                         "password": (first.password_hash if first and first.password_hash else "!")},
            "ssh": {"install-server": "openssh-server" in recipe.packages, "allow-pw": True},
            "source": {"id": "ubuntu-server-minimal"},
            "storage": {"layout": {"name": "direct"}},
            "packages": self.packages_for(recipe),
        }
        if mirror.uri:
            ai["apt"] = {"primary": [{"arches": ["default"], "uri": mirror.uri}]}
        copy = (f"cp {STAGE_TARBALL} /target{STAGE_TARBALL}" if tarball is not None
                else f"cp {stage_source} /target{STAGE_TARBALL}")
        late = [copy, f"curtin in-target --target=/target -- sh -c {_sq(run)}"]
        if not first:
            late.append(f"curtin in-target --target=/target -- userdel -rf {build_user}")
        ai["late-commands"] = late
        ai["shutdown"] = "poweroff"
        doc: dict = {"autoinstall": ai}
        if tarball is not None:
            doc["write_files"] = [{"path": STAGE_TARBALL, "encoding": "b64", "permissions": "0600",
                                   "content": base64.b64encode(tarball).decode()}]
        head = f"#cloud-config\n# Ubuntu autoinstall rendered by diskimages from recipe {recipe.name}\n"
        return {"user-data": head + yaml.safe_dump(doc, sort_keys=False, width=1 << 20),
                "meta-data": f"instance-id: diskimages-{recipe.name}\nlocal-hostname: {recipe.hostname}\n"}

    def kernel_cmdline_step(self, cmdline: str, serial: str) -> str:
        return (f"sed -i -E 's#^GRUB_CMDLINE_LINUX=.*#GRUB_CMDLINE_LINUX=\"{serial}\"#' /etc/default/grub\n"
                f"sed -i -E 's#^GRUB_CMDLINE_LINUX_DEFAULT=.*#GRUB_CMDLINE_LINUX_DEFAULT=\"{cmdline}\"#' "
                "/etc/default/grub\n"
                "update-grub\n")


def debootstrap_default(codename: str) -> Optional[str]:
    """debootstrap's default archive for an Ubuntu suite (its script for the suite, else the one every Ubuntu suite
    links to): also what mmdebstrap and debos use when given no mirror. Read from the host, never written here."""
    for name in (codename, "gutsy"):
        f = DEBOOTSTRAP_SCRIPTS / name
        if f.is_file():
            text = f.read_text(errors="replace")
            block = text[text.find("amd64|i386)"):]
            # the current suites' branch ("*)"), not the one for releases moved to the old-releases archive
            m = re.search(r"\*\)\s*\n\s*default_mirror\s+(\S+)", block)
            if m:
                return m.group(1).rstrip("/")
    return None


def _sq(text: str) -> str:
    import shlex
    return shlex.quote(text)
