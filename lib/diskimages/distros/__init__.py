"""Distributions: one module per distribution family, each a subclass of `Distribution` (the model is mkosi's
`mkosi/distributions/`: one installer class per family, a derived family overriding only what differs).

A distribution owns everything that differs between distributions: its releases, its package sources and
keyring, its package manager (install, clean up, list installed packages, which cache files count), kernel and
initramfs, the boot loader per architecture, the customisation steps that differ (locale, keyboard, time zone,
autologin, package-manager clean-up), its desktops, the osinfo ids libvirt knows it by, and its package-name rule.
Everything outside this package asks the distribution instead of knowing.

Adding a distribution is one module here (or anywhere, imported before use): subclass `Distribution` with a
`name`; it registers itself.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional

from ..recipe import Recipe, RecipeError
from ..shell import q, write_file
from .sources import MirrorChoice
from ..errors import Failure

__all__ = ["Distribution", "Release", "DesktopSpec", "BootTarget", "MirrorChoice", "get", "names", "check",
           "host", "for_recipe", "STAGE_TARBALL"]


@dataclass(frozen=True)
class Release:
    codename: str
    version: str
    eol: Optional[str] = None          # ISO date the release stops getting security updates, when known


@dataclass(frozen=True)
class RegeneratedCache:
    command: tuple[str, ...]      # run inside the image
    inputs: tuple[str, ...]       # folders (relative to the tree) whose file times the cache records


@dataclass(frozen=True)
class DesktopSpec:
    packages: tuple[str, ...]
    display_manager: Optional[str]     # lightdm | gdm | sddm | None (console autologin through getty)
    session: Optional[str]             # the session name the display manager starts
    process: Optional[str] = None      # the process that shows the user's session is running (boot check)
    min_disk_gib: int = 2              # a disk smaller than this cannot hold the desktop


@dataclass(frozen=True)
class BootTarget:
    """One firmware's boot loader image, made by the image's own grub-mkimage."""
    firmware: str                      # "bios" | "uefi"
    platform: str                      # GRUB platform, e.g. x86_64-efi
    image: str                         # file name: core.img, BOOTX64.EFI
    modules: tuple[str, ...] = ()      # modules on top of the common set


class Distribution:
    """The interface, with the defaults most systemd-based distributions share. Subclasses set the class
    attributes and override what differs; every method is a plain function of its arguments."""

    name: ClassVar[str]
    pretty_name: ClassVar[str]
    releases: ClassVar[tuple[Release, ...]] = ()
    default_release: ClassVar[str] = ""
    #: architecture -> None when images are built for it, else why not (refused at validation with this)
    architectures: ClassVar[dict[str, Optional[str]]] = {"amd64": None}
    desktops: ClassVar[dict[str, DesktopSpec]] = {}
    #: what a desktop needs beyond its DesktopSpec on one release: {(desktop, codename): (package, ...)}
    desktop_extras: ClassVar[dict[tuple[str, str], tuple[str, ...]]] = {}
    #: a package name of this distribution (validation of `packages`)
    package_name_pattern: ClassVar[str] = r"[A-Za-z0-9][A-Za-z0-9+._-]*"
    package_manager: ClassVar[str] = ""
    #: glob of the package files a package cache holds
    package_cache_glob: ClassVar[str] = "*"
    #: where the installed-package database lives in the image (read without mounting by disk tools)
    package_db: ClassVar[str] = ""
    sudo_group: ClassVar[str] = "wheel"
    ssh_service: ClassVar[str] = "sshd.service"
    grub_mkimage: ClassVar[str] = "grub-mkimage"
    grub_lib: ClassVar[str] = "/usr/lib/grub"
    grub_distributor: ClassVar[str] = ""
    #: the helper recipe the VM-driven builders start from, per release version ("{version}" is replaced)
    cloud_base_recipe: ClassVar[Optional[str]] = None
    #: the archive components (or repositories) a build enables by default
    components: ClassVar[tuple[str, ...]] = ("main",)
    #: host files that verify the archive's signatures (installed by scripts/setup.sh from `keyring_packages`)
    keyring_files: ClassVar[tuple[str, ...]] = ()
    keyring_packages: ClassVar[tuple[str, ...]] = ()
    #: the unattended installer of this distribution: "preseed", "autoinstall", "kickstart" or None
    installer: ClassVar[Optional[str]] = None
    #: the osinfo-db vendor folder and short-id form of its releases ("{version}" is replaced)
    osinfo_vendor: ClassVar[str] = ""
    osinfo_short_id: ClassVar[str] = "{name}{version}"

    # -- registry
    _registry: ClassVar[dict[str, type["Distribution"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            Distribution._registry[cls.name] = cls

    # -- releases and architectures
    def release(self, name_or_version: str) -> Release:
        """The release named by codename or version ("trixie" or "13"); KeyError naming the known ones."""
        s = str(name_or_version).strip().lower()
        for r in self.releases:
            if s in (r.codename, r.version):
                return r
        raise KeyError(self._known_releases())

    def _known_releases(self) -> str:
        return ", ".join(r.codename if r.codename == r.version else f"{r.codename} ({r.version})"
                         for r in self.releases)

    def default(self) -> Release:
        return self.release(self.default_release)

    def supported_locales(self) -> Optional[dict[str, str]]:
        """{locale: charset} this distribution can generate, or None when it does not say (no check)."""
        return None

    def osinfo_ids(self, release: Release) -> list[str]:
        """libosinfo ids for this release, most specific first (virt-install --osinfo)."""
        return [f"{self.name}{release.version}", "linux2022", "generic"]

    # -- package sources
    def mirror_from_env(self) -> Optional[str]:
        """DISKIMAGES_MIRROR_<NAME> (e.g. DISKIMAGES_MIRROR_FEDORA): a mirror for this distribution only."""
        import os
        return os.environ.get(f"DISKIMAGES_MIRROR_{self.name.upper()}") or None

    def choose_mirror(self, parameter: Optional[str] = None, root: Path = Path("/")) -> MirrorChoice:
        param = parameter or self.mirror_from_env()
        if param:
            return MirrorChoice(param.rstrip("/"), None, "parameter")
        return MirrorChoice(None, None, "tool default")

    def sources_lines(self, mirror: MirrorChoice, release: Release, components=("main",)) -> list[str]:
        return []

    def mirror_probe_url(self, mirror: MirrorChoice, release: Release) -> Optional[str]:
        """A small file the mirror serves for this release (to refuse an unreachable mirror before building)."""
        return None

    def default_archive(self, release: Release) -> Optional[str]:
        """Where the tools fetch this release from when no mirror is given, as the host's own data says (the
        tools' defaults or the osinfo database); None when nothing on the host says."""
        return None

    def probe_url(self, mirror: MirrorChoice, release: Release) -> Optional[str]:
        """What to ask to know, in a second, whether this host reaches the packages of this release."""
        if mirror.uri:
            return self.mirror_probe_url(mirror, release)
        return self.default_archive(release)

    def osinfo_entry(self, release: Release):
        """This release in the host's osinfo database (None when the database is older than the release)."""
        from . import osinfo
        return osinfo.find(self.osinfo_vendor, self.osinfo_short_id.format(name=self.name,
                                                                           version=release.version))

    def installer_media(self, release: Release, arch: str) -> Optional[str]:
        """The installer ISO the unattended install boots, from the osinfo database (None when it has none)."""
        return None

    # -- packages
    base_packages: ClassVar[tuple[str, ...]] = ()

    def kernel_packages(self, arch: str) -> tuple[str, ...]:
        return ()

    def bootloader_packages(self, arch: str) -> tuple[str, ...]:
        """What the image needs for its own grub-mkimage and GRUB modules."""
        return ()

    def grub_setup_packages(self, arch: str) -> tuple[str, ...]:
        """What a tool that runs grub-install and the GRUB config generator inside the image needs on top."""
        return ()

    def packages_for(self, recipe: Recipe) -> list[str]:
        pkgs = [*self.base_packages, *self.kernel_packages(recipe.architecture),
                *self.bootloader_packages(recipe.architecture), *self.desktop_packages(recipe), *recipe.packages]
        if any(u.sudo or u.sudo_nopasswd for u in recipe.users):
            pkgs.append("sudo")
        return list(dict.fromkeys(pkgs))

    def desktop_packages(self, recipe: Recipe) -> tuple[str, ...]:
        """The packages of the recipe's desktop on its release."""
        return (self.desktops[recipe.desktop].packages +
                self.desktop_extras.get((recipe.desktop, self.release(recipe.release).codename), ()))

    def install_command(self, packages: list[str]) -> str:
        """Shell that installs `packages` in a running system of this distribution (the VM builders)."""
        raise NotImplementedError

    def installed_packages(self, rootfs: Path) -> list[dict]:
        """[{name, version, architecture}] of the packages installed in a root tree."""
        raise NotImplementedError

    #: the package manager's logs and backups: times and leftovers that differ between two builds
    volatile_files: ClassVar[tuple] = ()
    #: the package manager's working folders: their times depend on whether a build downloaded anything (an older
    #: time shipped by the package survives a build that found every package in its cache), so they get the epoch
    volatile_dirs: ClassVar[tuple] = ()

    #: caches that the system trusts only while they are newer than their inputs (`cache -nt input`), made
    #: during the build: {cache: (input, ...)}. Assembly keeps them strictly newer, which file times clamped to
    #: SOURCE_DATE_EPOCH, or written in the same second, would not be.
    fresh_caches: ClassVar[dict] = {}

    #: caches that record their inputs' exact file times, which clamping to SOURCE_DATE_EPOCH changes: made in the
    #: finished tree at assembly, from inputs already clamped ({folder the cache is written to: RegeneratedCache}).
    #: Fontconfig's system cache holds each font folder's mtime; a stale one makes the first program of every
    #: user's session scan the fonts again and write a cache of its own. (fc-cache cannot be told the epoch
    #: instead: with SOURCE_DATE_EPOCH it deletes what it wrote as invalid, the folders' nanoseconds not being 0.)
    regenerated_caches: ClassVar[dict] = {
        "var/cache/fontconfig": RegeneratedCache(("fc-cache", "--system-only", "--really-force"),
                                                 ("usr/share/fonts", "usr/local/share/fonts"))}

    def shipped_files(self, rootfs: Path) -> list[str]:
        """The regular files the installed packages ship, relative to the tree (their times are the packages'
        own: the newest is a build's SOURCE_DATE_EPOCH)."""
        raise NotImplementedError(f"{self.pretty_name}'s package database is not read for shipped files here")

    def count_packages_in_db(self, db_text: str) -> int:
        """How many packages are installed, from the text of `package_db` (read from a disk by debugfs)."""
        raise NotImplementedError

    # -- the resolved package set: what the package manager would install from the mirror's current index
    def resolve(self, packages: list[str], release: Release, arch: str, mirror: MirrorChoice) -> list[str]:
        """["name=version", ...] sorted: the exact set the package manager would install for `packages` (and its
        essential set) from the mirror's current index, without building. Raises NotImplementedError where
        this project cannot resolve for the distribution, RuntimeError where the mirror cannot be read."""
        raise NotImplementedError(f"resolving {self.pretty_name} package sets is not implemented")

    # -- the package manifest (SBOM): read from a finished image's files, extracted without mounting it
    #: the paths in an image that hold the installed-package database (files or folders)
    manifest_paths: ClassVar[tuple[str, ...]] = ()
    #: the purl type of this distribution's packages (https://github.com/package-url/purl-spec)
    purl_type: ClassVar[str] = "generic"

    def manifest(self, root: Path) -> list[dict]:
        """[{name, version, architecture, source, license}] from a root holding (at least) `manifest_paths` and
        the files `license_paths` named; `license` is the package's declared licence as the distribution writes
        it, or None where the package declares none machine-readably."""
        raise NotImplementedError

    def license_paths(self, packages: list[dict]) -> dict[str, str]:
        """{package name: path in the image} of the files that declare each package's licence, for distributions
        that keep it outside the package database (Debian's copyright files)."""
        return {}

    def spdx_license(self, declared: Optional[str]) -> Optional[str]:
        """The declared licence as an SPDX expression where it is one (None otherwise)."""
        return declared

    def chroot_env(self) -> dict[str, str]:
        """Environment for commands run in the image's tree (no interactive questions)."""
        return {}

    def sources_step(self, lines: list[str]) -> str:
        """Shell run in an image that makes its package manager use exactly `lines` (from `sources_lines`) and
        brings the installed packages up to them: for tools whose bootstrap knows one suite only."""
        raise NotImplementedError(f"{self.pretty_name} has no sources step")

    def lean_paths(self, recipe: Recipe) -> Optional[tuple[list[str], list[str]]]:
        """(excluded, kept) path patterns of a lean image (recipe `lean`), or None where this project does not
        make lean images of this distribution (such a recipe is refused)."""
        return None

    def lean_step(self, recipe: Recipe) -> str:
        """Shell run in the image: later package installs skip the lean paths, and what is there goes."""
        raise NotImplementedError

    def downloaded_in_log(self, text: str) -> Optional[tuple[int, int]]:
        """(all bytes, package bytes) the package manager says it fetched in a build log, whatever the tool and
        its cache layout; None when this distribution's package manager does not say."""
        return None

    def package_index_cache(self, release: Release, arch: str) -> Optional[Path]:
        """The folder where resolution keeps the package manager's current indexes for this release, which a
        build may copy in before its own index update (None: every build fetches its indexes)."""
        return None

    def initramfs_step(self, recipe: Recipe) -> str:
        """Shell that writes the initramfs generator's configuration for an image that boots from its own disk.
        Customisation runs it (the initramfs is made after it); tools that install the kernel before they
        customise run it before their package step too (empty: the generator's defaults)."""
        return ""

    # -- the bootstrap: work a package installation repeats that a build does once, at the end
    def bootstrap_env(self) -> dict[str, str]:
        """Environment for a tool's package installation that leaves the initramfs to assembly, where
        `initrd_command` makes it once, after customisation (empty: the packages make it as they install)."""
        return {}

    def bootstrap_setup_step(self, recipe: Recipe) -> str:
        """Shell run in the tree once its essential packages are in, before the rest install (a lean recipe's
        rule goes in here, so the package manager does not even unpack what `lean_step` would delete)."""
        return ""

    def bootstrap_finish_step(self) -> str:
        """Shell run in the tree after the packages are in: undoes what `bootstrap_setup_step` held back."""
        return ""

    #: folders inside the tree where the package phase finds an earlier build's kernel module index (depmod's
    #: outputs, with the digest of what depmod read) and leaves its own for the build to keep; None: no reuse
    module_index_reuse: Optional[str] = None
    module_index_out: Optional[str] = None

    def merged_usr_by_tool(self, release: Release) -> bool:
        """Whether a bootstrap that starts from an empty tree lays /usr out merged itself, because the package
        set names no package that would do it (Debian bookworm: see `usr_is_merged_declared`)."""
        return False

    @contextlib.contextmanager
    def services_held(self, rootfs: Path) -> Iterator[None]:
        """While customising a tree, no package's maintainer script may start a service."""
        yield

    # -- kernel and initramfs
    def kernel_version(self, rootfs: Path) -> str:
        kernels = sorted((p.name.removeprefix("vmlinuz-") for p in (rootfs / "boot").glob("vmlinuz-*")),
                         key=_version_key)
        if not kernels:
            raise Failure(f"no kernel in {rootfs}/boot: the image needs a kernel package "
                               f"({', '.join(self.kernel_packages('amd64')) or 'linux'})")
        return kernels[-1]

    def kernel_path(self, rootfs: Path, kver: str) -> str:
        return f"/boot/vmlinuz-{kver}"

    def initrd_file(self, kver: str) -> str:
        """The initramfs of kernel `kver`, relative to the root (checked to exist before assembly)."""
        return f"boot/initramfs-{kver}.img"

    def initrd_path(self, rootfs: Path, kver: str) -> str:
        """The initramfs as the boot loader configuration names it."""
        return "/" + self.initrd_file(kver)

    def initrd_command(self, kver: str) -> list[str]:
        return ["dracut", "--force", "--kver", kver]

    #: what the initramfs generator reads beyond the packages (configuration a recipe may change), relative to
    #: the root; an incremental rebuild reuses the last initramfs only when these (and the packages, the
    #: kernel, the date and the recipe's files and scripts) are the same. Empty: never reused.
    initrd_inputs: ClassVar[tuple[str, ...]] = ()

    def initrd_inputs_digest(self, rootfs: Path) -> Optional[str]:
        """A digest of `initrd_inputs` as they are in the tree (names, modes, contents, link targets); None when
        the distribution does not list them."""
        if not self.initrd_inputs:
            return None
        h = hashlib.sha256()
        for rel in self.initrd_inputs:
            top = rootfs / rel
            paths = sorted([top, *top.rglob("*")] if top.is_dir() and not top.is_symlink() else [top])
            for p in paths:
                h.update(str(p.relative_to(rootfs)).encode() + b"\0")
                if p.is_symlink():
                    h.update(b"L" + os.readlink(p).encode())
                elif p.is_file():
                    h.update(b"F%o" % p.stat().st_mode + hashlib.sha256(p.read_bytes()).digest())
                elif p.exists():
                    h.update(b"D%o" % p.stat().st_mode)
                else:
                    h.update(b"-")
        return h.hexdigest()

    # -- boot loader
    def boot_targets(self, arch: str) -> list[BootTarget]:
        if arch == "amd64":
            return [BootTarget("uefi", "x86_64-efi", "BOOTX64.EFI", ("efi_gop", "efi_uga")),
                    BootTarget("bios", "i386-pc", "core.img", ("biosdisk",))]
        if arch == "arm64":
            return [BootTarget("uefi", "arm64-efi", "BOOTAA64.EFI", ("efi_gop",))]
        return []

    # -- customisation steps: shell text run as root inside the image
    def locale_step(self, recipe: Recipe) -> str:
        return write_file("/etc/locale.conf", f"LANG={recipe.locale}")

    def locale_gen_step(self, recipe: Recipe) -> str:
        """glibc's locale-gen for the recipe's locale (Debian and Arch generate locales from /etc/locale.gen)."""
        if recipe.locale.split(".")[0] == "C":
            return ""
        charset = (self.supported_locales() or {}).get(recipe.locale, "UTF-8")
        return write_file("/etc/locale.gen", f"{recipe.locale} {charset}") + "locale-gen\n"

    def timezone_step(self, recipe: Recipe) -> str:
        return f"ln -sf {q('../usr/share/zoneinfo/' + recipe.timezone)} /etc/localtime\n"

    def keyboard_step(self, recipe: Recipe) -> str:
        layout, variant = keyboard_layout(recipe.keyboard)
        return (write_file("/etc/vconsole.conf", f"KEYMAP={layout}") +
                write_file("/etc/X11/xorg.conf.d/00-keyboard.conf",
                           'Section "InputClass"\n  Identifier "system-keyboard"\n  MatchIsKeyboard "on"\n'
                           f'  Option "XkbLayout" "{layout}"\n  Option "XkbVariant" "{variant}"\nEndSection'))

    def autologin_step(self, user: str, desktop: DesktopSpec) -> str:
        dm, session = desktop.display_manager, desktop.session
        if dm == "lightdm":
            return ("getent group autologin >/dev/null || groupadd -r autologin\n"
                    f"gpasswd -a {q(user)} autologin >/dev/null\n" +
                    write_file("/etc/lightdm/lightdm.conf.d/50-diskimages-autologin.conf",
                               f"[Seat:*]\nautologin-user={user}\nautologin-user-timeout=0\n"
                               f"autologin-session={session}"))
        if dm == "gdm":
            return write_file(self.gdm_config,
                              f"[daemon]\nAutomaticLoginEnable=true\nAutomaticLogin={user}\n\n[security]\n\n[xdmcp]\n")
        if dm == "sddm":
            return write_file("/etc/sddm.conf.d/50-diskimages-autologin.conf",
                              f"[Autologin]\nUser={user}\nSession={session}.desktop")
        return write_file("/etc/systemd/system/getty@tty1.service.d/50-diskimages-autologin.conf",
                          f"[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin {user} --noclear %I $TERM")

    gdm_config: ClassVar[str] = "/etc/gdm/custom.conf"

    def cleanup_step(self) -> str:
        """The package manager's caches and indexes, which an image must not carry."""
        return ""

    def network_step(self, desktop: DesktopSpec) -> str:
        """How a desktop hands the network to NetworkManager, where the distribution needs more than the
        package (netplan's renderer on Ubuntu)."""
        return ""

    #: units this distribution enables that a desktop image does not need at boot (disabled in desktop images)
    desktop_skipped_units: ClassVar[tuple[str, ...]] = ()

    def desktop_services(self, desktop: DesktopSpec) -> tuple[str, ...]:
        """Units to enable for a desktop, on distributions whose packages do not enable them on install."""
        return ()

    def sudo_step(self) -> str:
        """What makes `sudo_group` able to use sudo, where the distribution's sudoers does not already."""
        return ""

    def kernel_cmdline_step(self, cmdline: str, serial: str) -> str:
        """Shell that sets the kernel command line of an installed system (the VM builders): GRUB's defaults,
        then its configuration regenerated."""
        return (f"sed -i -E 's#^GRUB_CMDLINE_LINUX=.*#GRUB_CMDLINE_LINUX=\"{serial}\"#' /etc/default/grub\n"
                f"sed -i -E 's#^GRUB_CMDLINE_LINUX_DEFAULT=.*#GRUB_CMDLINE_LINUX_DEFAULT=\"{cmdline}\"#' "
                "/etc/default/grub\n"
                "grub2-mkconfig -o /boot/grub2/grub.cfg\n")

    # -- the unattended installer (the VM builders' installer path)
    #: the installer configuration's documented fields, as a JSON schema, where its own validator does not install
    #: on a build host (Ubuntu's autoinstall: Subiquity)
    installer_schema: ClassVar[Optional[dict]] = None
    #: the installer's kernel and initrd inside its ISO (booting it from GRUB's console, or virt-install --location)
    installer_kernel: ClassVar[Optional[tuple[str, str]]] = None

    def installer_args(self, config_url: Optional[str], tree: Optional[str] = None) -> str:
        """The kernel arguments that start the unattended install (the configuration at `config_url`, or found
        by the installer itself, e.g. on a NoCloud volume)."""
        raise NotImplementedError(f"{self.pretty_name} has no unattended installer here")

    def installer_files(self, recipe: Recipe, release: Release, mirror: MirrorChoice, *, run: str,
                        tarball: Optional[bytes] = None, stage_source: str = "") -> dict[str, str]:
        """The installer's own configuration for this recipe: {file name: text}. The installed system gets the
        staging tarball at STAGE_TARBALL (embedded when `tarball` is given and the format can carry it, else
        copied from `stage_source`, a path in the installer's environment or a URL) and runs `run` in it."""
        raise NotImplementedError(f"{self.pretty_name} has no unattended installer here")

    # -- the build host, when it runs this distribution
    def host_package_version(self, package: str) -> Optional[str]:
        """The version of a package installed on the build host (tools without --version)."""
        return None


#: where the installed system finds the staging tarball (the same path the VM builders use)
STAGE_TARBALL = "/var/tmp/diskimages-stage.tar.gz"


def keyboard_layout(keyboard: str) -> tuple[str, str]:
    """'de(nodeadkeys)' -> ('de', 'nodeadkeys')."""
    layout, _, variant = keyboard.partition("(")
    return layout, variant.rstrip(")")


def _version_key(v: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.-]", v)]


# -- the registry: every module of this package, plus any subclass defined elsewhere (imported before use)
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        _discovered = True
        for m in pkgutil.iter_modules(__path__):
            if m.name not in ("sources", "osinfo"):
                importlib.import_module(f"{__name__}.{m.name}")


def names() -> list[str]:
    _discover()
    return sorted(Distribution._registry)


def get(name: str) -> Distribution:
    _discover()
    cls = Distribution._registry.get(name)
    if cls is None:
        raise KeyError(f"no distribution {name!r} (allowed: {', '.join(names())})")
    return cls()


def for_recipe(recipe: Recipe) -> tuple[Distribution, Release]:
    d = get(recipe.distro)
    return d, d.release(recipe.release)


def os_release_id(root: Path = Path("/")) -> str:
    """The ID= of a system's /etc/os-release ("" when there is none)."""
    try:
        text = (root / "etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r"^ID=\"?([^\"\n]+)", text, re.M)
    return m.group(1) if m else ""


def host(root: Path = Path("/")) -> Optional[Distribution]:
    """The distribution the build host runs, when this project knows it (for its own package versions)."""
    try:
        return get(os_release_id(root))
    except KeyError:
        return None


def check(recipe: Recipe, *, field_prefix: str = "") -> Recipe:
    """Check the recipe against its distribution and return it with `release` as the codename.
    Raises RecipeError naming the file, the field and what is allowed."""
    src = recipe.source
    try:
        d = get(recipe.distro)
    except KeyError:
        raise RecipeError(src, "distro", f"{recipe.distro!r} is not allowed (allowed: {', '.join(names())})") \
            from None
    try:
        rel = d.release(recipe.release)
    except KeyError as e:
        raise RecipeError(src, "release", f"{recipe.release!r} is not a {d.pretty_name} release "
                                          f"(allowed: {e.args[0]})") from None
    arch_why = d.architectures.get(recipe.architecture, "unknown architecture")
    if recipe.architecture not in d.architectures or arch_why:
        ok = ", ".join(a for a, why in d.architectures.items() if why is None)
        raise RecipeError(src, "architecture", f"{recipe.architecture!r} is not built for {d.pretty_name}: "
                                               f"{arch_why} (allowed: {ok})")
    if recipe.desktop not in d.desktops:
        raise RecipeError(src, "desktop", f"{recipe.desktop!r} is not a {d.pretty_name} desktop "
                                          f"(allowed: {', '.join(d.desktops)})")
    pat = re.compile(d.package_name_pattern)
    for p in recipe.packages:
        if not pat.fullmatch(p):
            raise RecipeError(src, "packages", f"{p!r} is not a {d.pretty_name} package name "
                                                    f"(allowed: {d.package_name_pattern})")
    locales = d.supported_locales()
    if locales is not None and recipe.locale not in ("C", "C.UTF-8", "POSIX") and recipe.locale not in locales:
        near = sorted(x for x in locales if x.split(".")[0].split("@")[0] == recipe.locale.split(".")[0])[:4]
        raise RecipeError(src, "locale", f"{recipe.locale!r} is not a {d.pretty_name} locale (allowed: one of its "
                                         f"supported list, e.g. {', '.join(near) or 'en_US.UTF-8, de_DE.UTF-8'})")
    if recipe.lean and d.lean_paths(recipe) is None:
        raise RecipeError(src, "lean", f"lean images of {d.pretty_name} are not made here (allowed: false)")
    need = d.desktops[recipe.desktop].min_disk_gib
    if recipe.disk.size_bytes < need << 30:
        raise RecipeError(src, "disk.size", f"{recipe.disk.size} is too small for the {recipe.desktop} "
                                            f"desktop of {d.pretty_name} (allowed: {need}G or more)")
    if rel.codename != recipe.release:
        recipe = recipe.model_copy(update={"release": rel.codename})
    return recipe



_probed: dict[str, Optional[str]] = {}


def unreachable(distro: Distribution, release: Release, mirror: MirrorChoice, timeout: float = 5.0) -> Optional[str]:
    """Why this host cannot reach the archive of `release` (None when it answers, or when nothing on the host
    names the archive, so the tool's own default is left to try). Each URL is asked once per process."""
    import urllib.error
    import urllib.request
    url = distro.probe_url(mirror, release)
    if not url:
        return None
    if url not in _probed:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                _probed[url] = None
        except urllib.error.HTTPError as e:
            # the server answered: a 4xx/5xx for a HEAD of the root still means it is reachable
            _probed[url] = None if e.code < 500 and url.endswith("/") else f"{url} answered {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            _probed[url] = f"{url}: {getattr(e, 'reason', None) or e}"
    why = _probed[url]
    return (f"checked, not built here: the {distro.pretty_name} mirror is unreachable ({why})") if why else None
