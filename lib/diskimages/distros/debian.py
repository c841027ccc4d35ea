"""Debian: apt and dpkg, initramfs-tools, GRUB from the image's own grub-*-bin packages, and the packages each
desktop needs when Recommends are not installed (every builder here installs without them).

A derived family (Ubuntu) subclasses `Debian` and overrides the releases, the sources and the desktops.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional

from ..recipe import Recipe
from ..shell import q, write_file
from . import STAGE_TARBALL, DesktopSpec, Distribution, Release, keyboard_layout, os_release_id
from .sources import MirrorChoice
from ..errors import Failure

_X = ("xserver-xorg-core", "xserver-xorg-input-libinput", "xserver-xorg-video-qxl", "xserver-xorg-video-fbdev",
      "xserver-xorg-video-vesa", "fonts-dejavu-core", "dbus-x11", "at-spi2-core")
_NM = ("network-manager",)

#: where fontconfig's fc-cache waits while the native path installs packages (a no-op stands in for it)
FC_CACHE_HELD = "/usr/bin/fc-cache.diskimages-held"
#: while the native path installs packages, `depmod` (first in maintainer scripts' PATH, which apt sets from
#: DPkg::Path) starts the real one in the background and returns; the end of the package phase waits for each
#: run and fails when one failed
DEPMOD_STUB = "/usr/local/sbin/depmod"
DEPMOD_RUNS = "/var/tmp/diskimages-depmod"
#: apt's configuration while the native path installs packages (removed after): the PATH above, and no
#: debconf pre-configuration (trixie's apt extracts every package's templates first, 1.3 s, to ask questions
#: a non-interactive build answers with the defaults anyway; bookworm skips it already, having no
#: apt-extracttemplates)
PACKAGE_PHASE_APT_CONF = "/etc/apt/apt.conf.d/79diskimages-package-phase"
#: dpkg runs this after each of its runs in the package phase (a `post-invoke` in PACKAGE_PHASE_DPKG_CFG): a
#: kernel whose modules are unpacked gets its depmod started then, beside the rest of the unpacking, rather than
#: when its package is configured near the end (on trixie that run outlasted the phase by 1.2 s)
DEPMOD_EARLY = "/usr/local/sbin/diskimages-depmod-early"
PACKAGE_PHASE_DPKG_CFG = "/etc/dpkg/dpkg.cfg.d/79diskimages-package-phase"
_DEPMOD_EARLY_TEXT = f"""#!/bin/sh
for o in /lib/modules/*/modules.order; do
  [ -e "$o" ] || continue
  v=${{o#/lib/modules/}}; v=${{v%/modules.order}}
  [ -e {DEPMOD_RUNS}/early.$v ] && continue
  {DEPMOD_STUB} "$v"
  touch {DEPMOD_RUNS}/early.$v
done
exit 0
"""
#: depmod's outputs for a kernel (its module index) are kept by a build that keeps caches, with the digest of
#: what depmod read, and a later build whose depmod would read the same copies them instead of running it
#: again: on trixie, whose modules are xz-compressed, depmod takes 4.5 CPU-s of a 70 CPU-s build. The build
#: stages what it kept in DEPMOD_REUSE before the packages install; DEPMOD_OUT is what this build leaves for it
DEPMOD_REUSE = "/var/tmp/diskimages-depmod-reuse"
DEPMOD_OUT = "/var/tmp/diskimages-depmod-out"
#: what depmod reads for kernel $1 (its version, its configuration, the modules' names, sizes and times, and the
#: module lists the kernel package ships), as one digest; depmod's outputs are everything else it writes
_DEPMOD_INPUTS = r"""depmod_inputs() {
  ( /usr/sbin/depmod -V
    cd /lib/modules/$1 && find . \( -name '*.ko*' -o -path ./modules.order -o -path ./modules.builtin \
      -o -path ./modules.builtin.modinfo \) -printf '%P %s %T@\n' | LC_ALL=C sort
    find /etc/depmod.d /lib/depmod.d /usr/lib/depmod.d -type f 2>/dev/null | LC_ALL=C sort |
      while read -r f; do echo "$f"; cat "$f"; done ) | sha256sum | cut -d' ' -f1
}
"""
_DEPMOD_STUB_TEXT = f"""#!/bin/sh
# diskimages: depmod runs beside the rest of the package phase, which does not read its output; the end of
# the phase waits for it. A kernel's `depmod VERSION` is not run again when the run started early found every
# module it has now, nor at all when an earlier build's run read the same inputs: its outputs are copied.
if [ $# = 1 ] && [ -e {DEPMOD_RUNS}/early.$1 ] && \
   [ -z "$(find /lib/modules/$1/ -name '*.ko*' -cnewer {DEPMOD_RUNS}/early.$1 -print -quit)" ]; then
  exit 0
fi
mkdir -p {DEPMOD_RUNS}
if [ $# = 1 ] && [ -d "/lib/modules/$1" ]; then
{_DEPMOD_INPUTS}  if [ -d {DEPMOD_REUSE}/$1 ] && [ "$(cat {DEPMOD_REUSE}/$1.inputs 2>/dev/null)" = "$(depmod_inputs "$1")" ] &&
     cp -p {DEPMOD_REUSE}/$1/* /lib/modules/$1/; then
    mkdir -p {DEPMOD_OUT} && : > {DEPMOD_OUT}/$1.reused
    exit 0
  fi
  [ -e {DEPMOD_RUNS}/start.$1 ] || touch {DEPMOD_RUNS}/start.$1
fi
t=$(mktemp {DEPMOD_RUNS}/run.XXXXXX)
( /usr/sbin/depmod "$@" > "$t.out" 2>&1; echo $? > "$t.tmp"; times > "$t.times"; mv "$t.tmp" "$t.rc" ) \
  < /dev/null > /dev/null 2>&1 &
"""
# after every run ended: each kernel depmod ran for leaves its outputs (the files it wrote since its first run
# began) and the digest of its final inputs in DEPMOD_OUT, for the build to keep. The runs' CPU time goes there
# too (DEPMOD_CPU): their parent shell exits before them, so the build's own accounting never sees it
DEPMOD_CPU = f"{DEPMOD_OUT}/cpu_s"
_DEPMOD_WAIT = f"""n=0
mkdir -p {DEPMOD_OUT}
for t in {DEPMOD_RUNS}/run.??????; do
  [ -e "$t" ] || continue
  while [ ! -e "$t.rc" ]; do sleep 0.1; done
  if [ "$(cat "$t.rc")" != 0 ]; then cat "$t.out" >&2; echo "depmod failed" >&2; exit 1; fi
  n=$((n + 1))
done
echo "diskimages: waited for $n depmod runs"
# `times`: this shell's user and system time, then its children's ("0m4.210000s 0m0.370000s")
cat {DEPMOD_RUNS}/run.??????.times 2>/dev/null | awk 'NR % 2 == 0 {{ for (i = 1; i <= 2; i++) {{
  split($i, a, "m"); s += a[1] * 60 + a[2] }} }} END {{ printf "%.2f\\n", s }}' > {DEPMOD_CPU}
{_DEPMOD_INPUTS}for s in {DEPMOD_RUNS}/start.*; do
  [ -e "$s" ] || continue
  v=${{s#{DEPMOD_RUNS}/start.}}
  rm -rf {DEPMOD_OUT}/$v {DEPMOD_OUT}/$v.reused
  mkdir -p {DEPMOD_OUT}/$v
  find /lib/modules/$v -maxdepth 1 -name 'modules.*' -newer "$s" -exec cp -p -t {DEPMOD_OUT}/$v {{}} +
  depmod_inputs "$v" > {DEPMOD_OUT}/$v.inputs
done
for r in {DEPMOD_OUT}/*.reused; do
  if [ -e "$r" ]; then echo "diskimages: depmod's outputs for $(basename "$r" .reused) reused from an earlier build"; fi
done
rm -rf {DEPMOD_RUNS} {DEPMOD_REUSE} {DEPMOD_STUB} {DEPMOD_EARLY} {PACKAGE_PHASE_DPKG_CFG} {PACKAGE_PHASE_APT_CONF}
"""

POLICY_RC_D = "#!/bin/sh\n# diskimages: no services start while the image is customised\nexit 101\n"


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: Optional[str] = None


class Debian(Distribution):
    name = "debian"
    pretty_name = "Debian"
    # eol: the end of LTS security support as announced by Debian
    releases = (Release("bookworm", "12", "2028-06-30"), Release("trixie", "13", "2030-06-30"))
    default_release = "trixie"
    architectures = {
        "amd64": None,
        "arm64": "arm64 images are not built yet: a cross-build needs qemu-user through binfmt_misc and the boot "
                 "check needs qemu-system-aarch64, which this project does not drive yet",
    }
    package_name_pattern = r"[a-z0-9][a-z0-9+.-]+"
    package_manager = "apt"
    package_cache_glob = "*.deb"
    package_db = "/var/lib/dpkg/status"
    sudo_group = "sudo"
    ssh_service = "ssh.service"
    grub_distributor = "Debian"
    gdm_config = "/etc/gdm3/daemon.conf"
    cloud_base_recipe = "debian-{version}-cloud-base"
    keyring_packages = ("debian-archive-keyring",)
    installer = "preseed"
    # grub-common.service clears GRUB's recordfail flag, which the grub.cfg diskimages writes never reads
    desktop_skipped_units = ("grub-common.service",)
    osinfo_vendor = "debian.org"
    osinfo_short_id = "debian{version}"

    base_packages = (
        "initramfs-tools", "systemd-sysv", "udev", "dbus", "dbus-user-session", "libpam-systemd", "kmod",
        "e2fsprogs", "locales", "tzdata", "keyboard-configuration", "console-setup",
        "iproute2", "netbase", "ca-certificates", "less", "procps",
        # initramfs-tools compresses with zstd when it is installed (else gzip, slower to unpack at boot)
        "zstd",
    )
    desktops = {
        # console only: systemd-networkd + resolved configure the network (desktops use NetworkManager)
        "none": DesktopSpec(("systemd-resolved",), None, None, min_disk_gib=1),
        "xfce": DesktopSpec(("xfce4", "xfce4-terminal", "lightdm", "lightdm-gtk-greeter", "network-manager-gnome")
                            + _NM + _X, "lightdm", "xfce", min_disk_gib=3),
        "gnome": DesktopSpec(("gnome-core", "gdm3") + _NM + _X, "gdm", "gnome", min_disk_gib=6),
        "kde": DesktopSpec(("kde-plasma-desktop", "sddm") + _NM + _X, "sddm", "plasma", min_disk_gib=6),
        "mate": DesktopSpec(("mate-desktop-environment-core", "lightdm", "lightdm-gtk-greeter") + _NM + _X,
                            "lightdm", "mate", min_disk_gib=3),
        "lxqt": DesktopSpec(("lxqt-core", "sddm") + _NM + _X, "sddm", "lxqt", min_disk_gib=3),
    }

    # Xfce's polkit agent: on bookworm network-manager-gnome brings policykit-1-gnome. trixie has no such package,
    # and without Recommends apt met its `polkit-1-auth-agent` with ukui-polkit, which starts only in UKUI and MATE
    # sessions, brings no polkitd (so NetworkManager refused the user) and pulls in 96 packages of Qt 5, OpenCV
    # and GDAL. xfce4 recommends mate-polkit, which starts in Xfce.
    desktop_extras = {("xfce", "trixie"): ("mate-polkit",)}

    # bookworm's init-system-helpers depends on "usrmerge | usr-is-merged". Unless usr-is-merged is named, apt
    # takes usrmerge, which converts a split /usr and brings perl and perl-modules (46 MB, 1,700 files) that the
    # other tools' images do not have: debootstrap and mkosi lay /usr out merged and install usr-is-merged.
    # Named here, every tool gets the same package set, and a bootstrap that starts from nothing lays /usr out
    # merged itself (`merged_usr_by_tool`: mmdebstrap's merged-usr hook). trixie no longer has that dependency.
    usr_is_merged_declared = ("bookworm",)

    def merged_usr_by_tool(self, release: Release) -> bool:
        return release.codename in self.usr_is_merged_declared

    def packages_for(self, recipe: Recipe) -> list[str]:
        pkgs = super().packages_for(recipe)
        if self.merged_usr_by_tool(self.release(recipe.release)) and "usr-is-merged" not in pkgs:
            pkgs.append("usr-is-merged")
        return pkgs

    def supported_locales(self) -> dict[str, str]:
        """Debian's list of supported locales (the `locales` package's SUPPORTED file, shipped here)."""
        text = (Path(__file__).parent / "debian-locales.txt").read_text()
        return dict(line.split()[:2] for line in text.splitlines() if len(line.split()) >= 2)

    def osinfo_ids(self, release: Release) -> list[str]:
        older = [f"debian{v}" for v in range(int(release.version) - 1, 10, -1)] if release.version.isdigit() else []
        return [f"debian{release.version}", *older, "linux2022", "generic"]

    # -- sources: the host's own archive when the host runs Debian, else the parameter or the tool's default
    def choose_mirror(self, parameter: Optional[str] = None, root: Path = Path("/")) -> MirrorChoice:
        # DISKIMAGES_MIRROR is Debian's (the first distribution); every family also has its own variable
        param = parameter or self.mirror_from_env() or \
            (os.environ.get("DISKIMAGES_MIRROR") if self.name == "debian" else None) or None
        if param:
            return MirrorChoice(param.rstrip("/"), None, "parameter")
        if os_release_id(root) != self.name:
            return MirrorChoice(None, None, "tool default")
        main = security = None
        for s in host_apt_sources(root):
            if any(x.endswith("-security") or x.endswith("/updates") for x in s.suites):
                security = security or s.uri
            elif any("-" not in x for x in s.suites):
                main = main or s.uri
        if not main:
            return MirrorChoice(None, None, "tool default")
        return MirrorChoice(main, security, "host apt sources")

    def sources_lines(self, mirror: MirrorChoice, release: Release, components=None) -> list[str]:
        """One-line apt sources (the form mmdebstrap and debootstrap-style tools accept)."""
        if not mirror.uri:
            return []
        comps = " ".join(components or self.components)
        suite = release.codename
        lines = [f"deb {mirror.uri} {suite} {comps}", f"deb {mirror.uri} {suite}-updates {comps}"]
        if mirror.security_uri:
            lines.append(f"deb {mirror.security_uri} {suite}-security {comps}")
        return lines

    def mirror_probe_url(self, mirror: MirrorChoice, release: Release) -> Optional[str]:
        return f"{mirror.uri}/dists/{release.codename}/InRelease" if mirror.uri else None

    # -- packages
    def kernel_packages(self, arch: str) -> tuple[str, ...]:
        return (f"linux-image-{arch}",)

    def bootloader_packages(self, arch: str) -> tuple[str, ...]:
        # GRUB's modules and grub-mkimage, used inside the image so the boot loader matches its own release
        if arch == "amd64":
            return ("grub-pc-bin", "grub-efi-amd64-bin", "grub2-common")
        return (f"grub-efi-{arch}-bin", "grub2-common")

    def grub_setup_packages(self, arch: str) -> tuple[str, ...]:
        """What a tool that runs grub-install and update-grub inside the image needs on top (debos)."""
        return ("grub-pc",) if arch == "amd64" else (f"grub-efi-{arch}",)

    def install_command(self, packages: list[str]) -> str:
        return ("export DEBIAN_FRONTEND=noninteractive\n"
                "apt-get update -q\n"
                "apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "
                + " ".join(q(p) for p in packages) + "\n")

    def installed_packages(self, rootfs: Path) -> list[dict]:
        out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f",
                              "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n"],
                             capture_output=True, text=True)
        rows = []
        for line in out.stdout.splitlines():
            status, name, version, arch = (line.split("\t") + ["", "", ""])[:4]
            if status.startswith("ii"):
                rows.append({"name": name, "version": version, "architecture": arch})
        return rows

    # console-setup.service compiles the keymap and font again (13 s under emulation, on the way to the display
    # manager) unless this cache is newer than both files
    fresh_caches = {"etc/console-setup/cached_setup_terminal.sh": ("etc/default/keyboard",
                                                                   "etc/default/console-setup")}

    volatile_dirs = ("var/cache/apt", "var/cache/apt/archives", "var/cache/apt/archives/partial",
                     "var/lib/apt/lists", "var/lib/apt/lists/partial")

    volatile_files = ("var/log/dpkg.log", "var/log/apt/history.log", "var/log/apt/term.log",
                      "var/log/apt/eipp.log.xz", "var/log/alternatives.log", "var/cache/debconf/config.dat-old",
                      "var/cache/debconf/templates.dat-old", "var/lib/dpkg/status-old",
                      "var/lib/dpkg/diversions-old")

    def shipped_files(self, rootfs: Path) -> list[str]:
        files = []
        for sums in sorted((rootfs / "var/lib/dpkg/info").glob("*.md5sums")):
            files += [line[34:] for line in sums.read_text(errors="replace").splitlines() if len(line) > 34]
        return files

    def sources_step(self, lines: list[str]) -> str:
        return (write_file("/etc/apt/sources.list", "\n".join(lines)) +
                "export DEBIAN_FRONTEND=noninteractive\napt-get update -q\n"
                "apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade\n")

    def _lean_translations(self, recipe: Recipe) -> list[str]:
        """The /usr/share/locale folders gettext reads for the recipe's locale: language, language_TERRITORY and
        their @modifier forms (en_US keeps en and en_US, not en_GB or en@quot)."""
        name, _, modifier = recipe.locale.partition("@")
        base = name.split(".")[0]
        if base in ("C", "POSIX"):
            return []
        names = [base.split("_")[0], base] if "_" in base else [base]
        return names + [f"{n}@{modifier}" for n in names] if modifier else names

    def _lean_charmap(self, recipe: Recipe) -> Optional[str]:
        """The charmap locale-gen reads for the recipe's locale (none for C, which glibc carries compiled)."""
        if recipe.locale.split(".")[0] in ("C", "POSIX"):
            return None
        return (self.supported_locales() or {}).get(recipe.locale, "UTF-8") + ".gz"

    def lean_paths(self, recipe: Recipe) -> Optional[tuple[list[str], list[str]]]:
        # licences stay (the manifest reads them); charmaps are what locale-gen reads to generate other locales
        kept = ["/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias"]
        kept += [f"/usr/share/locale/{n}/*" for n in self._lean_translations(recipe)]
        charmap = self._lean_charmap(recipe)
        kept += [f"/usr/share/i18n/charmaps/{charmap}"] if charmap else []
        return ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                "/usr/share/i18n/charmaps/*"], kept

    def _lean_rule(self, recipe: Recipe) -> str:
        """dpkg's form of the lean rule (path-exclude, then path-include): later installs skip those paths too."""
        excluded, kept = self.lean_paths(recipe)
        return write_file("/etc/dpkg/dpkg.cfg.d/90-diskimages-lean",
                          "# a lean image (recipe: lean): written by diskimages\n" +
                          "\n".join([f"path-exclude={p}" for p in excluded] + [f"path-include={p}" for p in kept]))

    def lean_step(self, recipe: Recipe) -> str:
        keep_locale = "".join(f" ! -name {q(n)}" for n in self._lean_translations(recipe))
        charmap = self._lean_charmap(recipe)
        keep_charmap = f" ! -name {q(charmap)}" if charmap else ""
        return (self._lean_rule(recipe) +
                "find /usr/share/doc -mindepth 1 -type f ! -name copyright -delete\n"
                "find /usr/share/doc -mindepth 1 -depth -type d -empty -delete\n"
                "rm -rf /usr/share/man/* /usr/share/info/*\n"
                f"find /usr/share/locale -mindepth 1 -maxdepth 1 -type d{keep_locale} -exec rm -rf {{}} +\n"
                "[ ! -d /usr/share/i18n/charmaps ] || "
                f"find /usr/share/i18n/charmaps -mindepth 1 -maxdepth 1{keep_charmap} -delete\n")

    def downloaded_in_log(self, text: str) -> Optional[tuple[int, int]]:
        # apt: "Fetched 305 MB in 1s (228 MB/s)" per run (indexes and packages); "Need to get 0 B/252 MB of
        # archives." / "Need to get 305 MB of archives." before packages are fetched (SI units)
        fetched = [_si_bytes(n, u) for n, u in re.findall(r"\bFetched ([\d.,]+) ([kMG]?B) in ", text)]
        packages = [_si_bytes(n, u) for n, u in re.findall(r"\bNeed to get ([\d.,]+) ([kMG]?B)\b", text)]
        if not fetched and not packages:
            return None
        return max(sum(fetched), sum(packages)), sum(packages)

    def count_packages_in_db(self, db_text: str) -> int:
        return sum(1 for s in db_text.split("\n\n") if "Status: install ok installed" in s)

    # -- resolution: apt in a private state folder (cached, so an unchanged index costs one If-Modified-Since)
    def _resolve_root(self, release: Release, arch: str) -> Path:
        from ..paths import cache_dir
        return cache_dir("resolve", f"{self.name}-{release.codename}-{arch}")

    def package_index_cache(self, release: Release, arch: str) -> Optional[Path]:
        # apt's lists as resolution left them: a build's `apt-get update` then asks only whether the InRelease
        # files changed (If-Modified-Since), instead of fetching 9 MB of Packages again
        return self._resolve_root(release, arch) / "state/lists"

    def resolve(self, packages: list[str], release: Release, arch: str, mirror: MirrorChoice) -> list[str]:
        if not mirror.uri:
            raise Failure(f"no {self.pretty_name} mirror is known here to resolve packages against")
        root = self._resolve_root(release, arch)
        keyring = next((k for k in self.keyring_files if os.path.exists(k)),
                       f"/usr/share/keyrings/{self.name}-archive-keyring.gpg")
        lines = [line.replace("deb ", f"deb [signed-by={keyring}] ", 1)
                 for line in self.sources_lines(mirror, release)]
        (root / "sources.list").write_text("\n".join(lines) + "\n")
        (root / "status").touch()
        (root / "apt.conf").touch()          # no host configuration: the same answer on every host
        for d in ("state/lists/partial", "cache/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        opts = ["-q", "-o", f"Dir::State={root}/state", "-o", f"Dir::State::status={root}/status",
                "-o", f"Dir::Cache={root}/cache", "-o", f"Dir::Etc::SourceList={root}/sources.list",
                "-o", "Dir::Etc::SourceParts=-", "-o", "Dir::Etc::Preferences=-", "-o", "Dir::Etc::PreferencesParts=-",
                "-o", f"APT::Architecture={arch}", "-o", f"APT::Architectures={arch}",
                "-o", "Acquire::Languages=none", "-o", "Debug::NoLocking=1", "-o", "APT::Get::List-Cleanup=1",
                "-o", "Dir::Cache::pkgcache=pkgcache.bin", "-o", "Dir::Cache::srcpkgcache=srcpkgcache.bin",
                "-o", "APT::Sandbox::User=root"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "APT_CONFIG": str(root / "apt.conf")}
        upd = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True, env=env)
        if upd.returncode != 0 or "\nE: " in "\n" + upd.stdout + upd.stderr:
            raise Failure(f"apt-get update against {mirror.uri} failed: {(upd.stderr or upd.stdout).strip()[-300:]}")
        # the essential set (an apt pattern) and apt, as mmdebstrap's apt variant installs before the packages
        want = ["?essential", "apt", *sorted(set(packages))]
        # apt's solver takes seconds: its answer is kept per index (the InRelease files) and request
        import hashlib
        import json
        h = hashlib.sha256(json.dumps([arch, want, lines]).encode())
        for f in sorted((root / "state/lists").glob("*InRelease")):
            h.update(f.name.encode() + f.read_bytes())
        answer = root / f"resolved-{h.hexdigest()[:32]}.json"
        if answer.is_file():
            try:
                return json.loads(answer.read_text())
            except ValueError:
                answer.unlink()             # a half-written answer (killed while writing): computed again
        sim = subprocess.run(["apt-get", *opts, "install", "-s", "--no-install-recommends", *want],
                             capture_output=True, text=True, env=env)
        if sim.returncode != 0:
            raise Failure(f"apt cannot install this package set from {mirror.uri}: "
                               f"{(sim.stderr or sim.stdout).strip().splitlines()[-1][:300]}")
        found = re.findall(r"^Inst (\S+) \((\S+) ", sim.stdout, re.M)
        result = sorted(f"{n}={v}" for n, v in found)
        newest = max((f.stat().st_mtime for f in (root / "state/lists").glob("*InRelease")), default=0)
        for old in root.glob("resolved-*.json"):        # answers for indexes that changed since
            if old.stat().st_mtime < newest:
                old.unlink(missing_ok=True)
        for old in root.glob("resolved-*.partial"):     # left by a resolution that was killed while writing
            pid = old.name.split(".")[-2]
            if not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
                old.unlink(missing_ok=True)
        tmp = answer.with_suffix(f".{os.getpid()}.partial")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, answer)
        return result

    # -- the manifest: dpkg's status file and each package's machine-readable copyright file (DEP-5)
    manifest_paths = ("/var/lib/dpkg/status",)
    purl_type = "deb"

    def manifest(self, root: Path) -> list[dict]:
        rows = []
        for para in _paragraphs((root / "var/lib/dpkg/status").read_text(errors="replace")):
            if para.get("status", "").split()[-1:] != ["installed"]:
                continue
            source = para.get("source", para.get("package", "")).split(" ")[0] or para.get("package")
            name = para.get("package", "")
            copyright_file = root / f"usr/share/doc/{name}/copyright"
            rows.append({"name": name, "version": para.get("version", ""),
                         "architecture": para.get("architecture", ""), "source": source,
                         "license": dep5_license(copyright_file.read_text(errors="replace"))
                         if copyright_file.is_file() else None})
        return sorted(rows, key=lambda r: (r["name"], r["architecture"]))

    def license_paths(self, packages: list[dict]) -> dict[str, str]:
        return {p["name"]: f"/usr/share/doc/{p['name']}/copyright" for p in packages}

    def spdx_license(self, declared: Optional[str]) -> Optional[str]:
        """Debian's licence short names (copyright-format 1.0) as SPDX identifiers, where each has one."""
        if not declared:
            return None
        parts = re.split(r"\s+(or|and)\s+", declared.strip())
        out = []
        for i, part in enumerate(parts):
            if i % 2:
                out.append(part.upper())
                continue
            spdx = DEBIAN_TO_SPDX.get(part) or (part if part in SPDX_SAME else None)
            if spdx is None:
                return None
            out.append(spdx)
        return " ".join(out)

    def chroot_env(self) -> dict[str, str]:
        return {"DEBIAN_FRONTEND": "noninteractive"}

    # -- the bootstrap. The kernel's postinst and initramfs-tools' trigger each make an initramfs (17 s apiece
    # on 2 cores); with INITRD=No the kernel hook makes none and the trigger's `update-initramfs -u` finds none
    # to update, so assembly makes the only one, after customisation (the keyboard it carries is the recipe's).
    # man-db's trigger only rebuilds its index cache; it is held back while installing and re-enabled after,
    # so the image behaves as a stock one (man-db.timer builds the index). fc-cache is diverted to a no-op while
    # installing: assembly makes fontconfig's cache in the finished tree (`regenerated_caches`), and each run
    # sleeps 2 s after writing. The kernel's depmod (3.5 s on trixie, whose modules are xz-compressed) runs on
    # the other core while dpkg configures the packages after it; its output is the same.
    # openssh-server's postinst makes host keys that the image's hygiene deletes (each machine makes its own at
    # first boot); it skips any key file that exists, so empty stand-ins save the key generation (RSA 3072:
    # 0.2-0.9 s), and the finish step removes them.
    SSH_HOST_KEYS = tuple(f"/etc/ssh/ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519"))

    def bootstrap_env(self) -> dict[str, str]:
        return {"INITRD": "No"}

    def bootstrap_setup_step(self, recipe: Recipe) -> str:
        return ('echo "man-db man-db/auto-update boolean false" | debconf-set-selections\n'
                f"dpkg-divert --quiet --local --rename --divert {FC_CACHE_HELD} --add /usr/bin/fc-cache\n"
                "printf '#!/bin/sh\\nexit 0\\n' > /usr/bin/fc-cache\nchmod 755 /usr/bin/fc-cache\n" +
                write_file(DEPMOD_STUB, _DEPMOD_STUB_TEXT, "0755") +
                write_file(DEPMOD_EARLY, _DEPMOD_EARLY_TEXT, "0755") +
                write_file(PACKAGE_PHASE_DPKG_CFG, f"post-invoke={DEPMOD_EARLY}") +
                write_file(PACKAGE_PHASE_APT_CONF, 'DPkg::Path "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin";\n'
                                                   "#clear DPkg::Pre-Install-Pkgs;") +
                "mkdir -p /etc/ssh\n" + "".join(f": > {k}\n" for k in self.SSH_HOST_KEYS) +
                (self._lean_rule(recipe) if recipe.lean else ""))

    module_index_reuse = DEPMOD_REUSE
    module_index_out = DEPMOD_OUT

    def bootstrap_finish_step(self) -> str:
        return ('echo "man-db man-db/auto-update boolean true" | debconf-set-selections\n'
                "if [ -d /var/lib/man-db ]; then touch /var/lib/man-db/auto-update; fi\n"
                "rm -f /usr/bin/fc-cache\n"
                "dpkg-divert --quiet --local --rename --remove /usr/bin/fc-cache\n"
                f"for k in {' '.join(self.SSH_HOST_KEYS)}; do [ -s \"$k\" ] || rm -f \"$k\"; done\n"
                "rmdir /etc/ssh 2>/dev/null || true\n" + _DEPMOD_WAIT)

    @contextlib.contextmanager
    def services_held(self, rootfs: Path) -> Iterator[None]:
        policy = rootfs / "usr/sbin/policy-rc.d"
        had = policy.exists()
        try:
            if not had:
                policy.write_text(POLICY_RC_D)
                policy.chmod(0o755)
            yield
        finally:
            if not had and policy.exists():
                policy.unlink()

    # -- kernel and initramfs (the /vmlinuz and /initrd.img links keep kernel upgrades booting)
    def kernel_path(self, rootfs: Path, kver: str) -> str:
        return "/vmlinuz" if os.path.lexists(rootfs / "vmlinuz") else f"/boot/vmlinuz-{kver}"

    def initrd_path(self, rootfs: Path, kver: str) -> str:
        if os.path.lexists(rootfs / "initrd.img") and os.path.exists(rootfs / f"boot/initrd.img-{kver}"):
            return "/initrd.img"
        return f"/boot/initrd.img-{kver}"

    def initrd_file(self, kver: str) -> str:
        return f"boot/initrd.img-{kver}"

    def initrd_command(self, kver: str) -> list[str]:
        return ["update-initramfs", "-c", "-k", kver]

    # initramfs-tools' configuration and what its hooks copy from /etc: the keymap (console-setup), module
    # options, udev rules, crypto/RAID/LVM set-up, the linker cache copy_exec follows. The fstab is left out:
    # the fsck hook takes only the file system type from it, and diskimages writes the same types every time.
    initrd_inputs = ("etc/initramfs-tools", "etc/modprobe.d", "etc/modules", "etc/modules-load.d",
                     "etc/default/keyboard", "etc/default/console-setup", "etc/console-setup", "etc/udev",
                     "etc/crypttab", "etc/cryptsetup-initramfs", "etc/lvm", "etc/mdadm", "etc/dropbear",
                     "etc/plymouth", "etc/ld.so.conf", "etc/ld.so.conf.d", "etc/ld.so.cache", "etc/kernel-img.conf")

    # -- the initramfs of a disk image: MODULES=most's storage, input and bus drivers, without what only a root
    # reached over a network needs: the network drivers (40 of bookworm's 127 MB of initramfs), the SCSI drivers
    # of SAN adapters (Fibre Channel, FCoE, iSCSI offload) that pull them back in, NVMe over fabrics and the
    # network block devices (NBD, RBD, DRBD, AoE, RNBD, which brings InfiniBand). Local SCSI, SAS and RAID
    # controllers, virtio, Hyper-V, VMware and Xen disks stay. debian-12-xfce's zstd file: 30 MB with
    # MODULES=most, 21 MB without the network drivers, 16 MB without the rest; every boot loads and unpacks it.
    # The hook keeps doing this on the user's machine at each kernel update, and stands aside when anyone sets
    # MODULES to something else. It names the classes and folders of initramfs-tools' `auto_add_modules`
    # (hook-functions); copy_modules_dir's arguments after the folder are its exclusions.
    INITRAMFS_CONF = "/etc/initramfs-tools/conf.d/50-diskimages-local-disk"
    INITRAMFS_HOOK = "/etc/initramfs-tools/hooks/diskimages-local-disk"
    INITRAMFS_CLASSES = "base ide ata dasd firewire mmc usb_storage fb"
    INITRAMFS_SAN_SCSI = ("lpfc qla2xxx qla4xxx bfa bnx2fc bnx2i qedf qedi be2iscsi cxgbi csiostor fnic snic fcoe "
                          "libfc elx efct iscsi_tcp.ko libiscsi_tcp.ko scsi_debug.ko")
    INITRAMFS_NETWORK_BLOCK = "aoe drbd rnbd nbd.ko rbd.ko"
    INITRAMFS_NVME_FABRICS = "target nvme-tcp.ko nvme-rdma.ko nvme-fc.ko"
    # the `base` class takes every root file system initramfs-tools knows (btrfs, xfs, f2fs, jfs, reiserfs, udf,
    # NFS and what NFS uses): the image's root has one type, and the installed system keeps them all. Their
    # modules (the folders under kernel/) go: initramfs-tools 0.142 (bookworm) has copied them when the hook
    # ends, so they are removed from the initramfs (depmod runs after the hooks); 0.148 (trixie) only queues
    # module names in $__MODULES_TO_ADD and copies them after the hooks, so their names leave the queue.
    # debian-12-xfce's initramfs: 15.8 MiB -> 12.7 MiB; debian-13-xfce's: 22.3 MiB -> 19.2 MiB
    INITRAMFS_ROOT_FILE_SYSTEMS = {"btrfs": "fs/btrfs", "xfs": "fs/xfs", "f2fs": "fs/f2fs", "jfs": "fs/jfs",
                                   "reiserfs": "fs/reiserfs", "udf": "fs/udf",
                                   "nfs": "fs/nfs fs/nfs_common fs/lockd fs/fscache fs/netfs net/sunrpc "
                                          "net/dns_resolver"}

    def initramfs_step(self, recipe: Recipe) -> str:
        # FSTYPE: the fsck hook finds the root's type by probing the device, which a build does not have, so
        # without it the initramfs has no fsck ("fsck not present") and systemd-fsck-root checks the root later,
        # on the critical path of the boot
        conf = ("# written by diskimages: this image boots from a local disk, so the initramfs takes the drivers\n"
                f"# MODULES=most takes except those of network storage ({self.INITRAMFS_HOOK} adds them).\n"
                "# Set MODULES=most in a later conf.d file for a root file system on the network.\n"
                "MODULES=list\n"
                "# the root file system's type, for the fsck the initramfs runs before mounting it\n"
                f"FSTYPE={recipe.disk.filesystem}")
        other_fs = " ".join(d for fs, dirs in self.INITRAMFS_ROOT_FILE_SYSTEMS.items()
                            if fs != recipe.disk.filesystem for d in dirs.split())
        hook = ("#!/bin/sh\n"
                f"# written by diskimages: see {self.INITRAMFS_CONF}\n"
                'PREREQ=""\n'
                'case "$1" in prereqs) echo "$PREREQ"; exit 0 ;; esac\n'
                '[ "${MODULES:-}" = list ] || exit 0\n'
                ". /usr/share/initramfs-tools/hook-functions\n"
                f"auto_add_modules {self.INITRAMFS_CLASSES}\n"
                "# the scsi and block classes, without SAN adapters, NVMe over fabrics and network block devices\n"
                f"copy_modules_dir kernel/drivers/scsi {self.INITRAMFS_SAN_SCSI}\n"
                "copy_modules_dir kernel/drivers/ufs\n"
                "# the modules the scsi class names besides its folders, as it names them\n"
                "manual_add_modules mptfc mptsas mptscsih mptspi zfcp\n"
                f"copy_modules_dir kernel/drivers/block {self.INITRAMFS_NETWORK_BLOCK}\n"
                f"copy_modules_dir kernel/drivers/nvme {self.INITRAMFS_NVME_FABRICS}\n"
                "manual_add_modules vmd\n"
                "# mkinitramfs resolved the modules' hidden dependencies before the hooks ran\n"
                "hidden_dep_add_modules\n"
                f"# root file systems other than this image's ({recipe.disk.filesystem}), which the base class took\n"
                f"other_fs='{other_fs}'\n"
                'for d in $other_fs; do rm -rf "${DESTDIR}/lib/modules/${version}/kernel/$d"; done\n'
                'if [ -s "${__MODULES_TO_ADD:-}" ]; then\n'
                '  kept=$( (cd "${MODULESDIR:-/lib/modules/${version}}/kernel" && find $other_fs -name "*.ko*" '
                '2>/dev/null) |\n'
                '    sed "s|.*/||; s|\\.ko.*||" | grep -vxF -f - "$__MODULES_TO_ADD")\n'
                '  printf "%s\\n" "$kept" > "$__MODULES_TO_ADD"\n'
                'fi')
        return write_file(self.INITRAMFS_CONF, conf) + write_file(self.INITRAMFS_HOOK, hook, "0755")

    # -- customisation steps
    def locale_step(self, recipe: Recipe) -> str:
        return self.locale_gen_step(recipe) + write_file("/etc/default/locale", f"LANG={recipe.locale}")

    def timezone_step(self, recipe: Recipe) -> str:
        return (f"ln -sf {q('/usr/share/zoneinfo/' + recipe.timezone)} /etc/localtime\n"
                + write_file("/etc/timezone", recipe.timezone))

    def keyboard_step(self, recipe: Recipe) -> str:
        layout, variant = keyboard_layout(recipe.keyboard)
        # console-setup's cache made now: without it the first boot compiles the keymap and font (13 s under
        # emulation, on the way to the display manager)
        return write_file("/etc/default/keyboard", f'XKBMODEL="pc105"\nXKBLAYOUT="{layout}"\n'
                                                   f'XKBVARIANT="{variant}"\nXKBOPTIONS=""\nBACKSPACE="guess"') + \
            "if command -v setupcon >/dev/null; then setupcon --force --save-only; fi\n"

    def kernel_cmdline_step(self, cmdline: str, serial: str) -> str:
        # the cloud base's grub.cfg was written by diskimages (no grub-mkconfig in it): edit it in place
        return (f"sed -i -E 's#^(  linux .* ro {serial}).*#\\1 {cmdline}#' /boot/grub/grub.cfg\n"
                f"sed -i -E 's#^GRUB_CMDLINE_LINUX_DEFAULT=.*#GRUB_CMDLINE_LINUX_DEFAULT=\"{cmdline}\"#' "
                "/etc/default/grub\n")

    def cleanup_step(self) -> str:
        return ("apt-get clean\n"
                "rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/apt/lists/partial\n"
                "rm -f /var/cache/debconf/*-old /var/lib/dpkg/*-old\n")

    # -- debian-installer: a preseed; the staging tarball is injected into the installer's initrd
    def installer_files(self, recipe: Recipe, release: Release, mirror: MirrorChoice, *, run: str,
                        tarball: Optional[bytes] = None, stage_source: str = "/diskimages-stage.tar.gz") -> dict:
        from urllib.parse import urlparse
        u = urlparse(mirror.uri or "http://MIRROR_HOST/debian")
        first = recipe.users[0] if recipe.users else None
        lang = recipe.locale.split(".")[0] if recipe.locale not in ("C.UTF-8", "C", "POSIX") else "en_US"
        lines = [f"# debian-installer preseed rendered by diskimages from recipe {recipe.name}",
                 f"d-i debian-installer/locale string {lang}",
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
                  f"d-i pkgsel/include string {' '.join(self.packages_for(recipe))}",
                  "d-i pkgsel/install-recommends boolean false",
                  "d-i grub-installer/only_debian boolean true", "d-i grub-installer/bootdev string default",
                  "d-i finish-install/reboot_in_progress note", "d-i debian-installer/exit/poweroff boolean true",
                  f"d-i preseed/late_command string cp {stage_source} /target{STAGE_TARBALL}; "
                  f"in-target sh -c {q(run)}"]
        return {"preseed.cfg": "\n".join(lines) + "\n"}

    # -- the build host (Debian), for the versions of the tools it installed
    def host_package_version(self, package: str) -> Optional[str]:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        return out.stdout.split("-")[0] if out.returncode == 0 and out.stdout else None


def _si_bytes(number: str, unit: str) -> int:
    """apt's sizes: "6979 kB", "1,234 kB" (a locale's grouping), "305 MB" (powers of 1000)."""
    return int(float(number.replace(",", "")) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri.rstrip("/"), tuple(fields.get("suites", "").split()),
                                 tuple(fields.get("components", "").split()), fields.get("signed-by")))
    return out


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if m:
            out.append(AptSource(m.group(2).rstrip("/"), (m.group(3),), tuple(m.group(4).split())))
    return out


def host_apt_sources(root: Path = Path("/")) -> list[AptSource]:
    sources = []
    main = root / "etc/apt/sources.list"
    if main.is_file():
        sources += _parse_one_line(main.read_text(errors="replace"))
    d = root / "etc/apt/sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".sources":
                sources += _parse_deb822(f.read_text(errors="replace"))
            elif f.suffix == ".list":
                sources += _parse_one_line(f.read_text(errors="replace"))
    return sources


def _paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (dpkg's status file): {lower-case field: first-line value}."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
        if fields:
            out.append(fields)
    return out


def dep5_license(text: str) -> Optional[str]:
    """The licence of the `Files: *` paragraph of a machine-readable copyright file (None when the file is not
    machine-readable or has no such paragraph)."""
    if not text.startswith("Format:"):
        return None
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        files = next((x.partition(":")[2].strip() for x in lines if x.lower().startswith("files:")), None)
        if files == "*":
            lic = next((x.partition(":")[2].strip() for x in lines if x.lower().startswith("license:")), "")
            return lic or None
    return None


#: Debian's copyright-format short names whose SPDX identifier differs (the rest are the same, SPDX_SAME)
DEBIAN_TO_SPDX = {
    "GPL-1": "GPL-1.0-only", "GPL-1+": "GPL-1.0-or-later", "GPL-2": "GPL-2.0-only", "GPL-2+": "GPL-2.0-or-later",
    "GPL-3": "GPL-3.0-only", "GPL-3+": "GPL-3.0-or-later", "LGPL-2": "LGPL-2.0-only", "LGPL-2+": "LGPL-2.0-or-later",
    "LGPL-2.1": "LGPL-2.1-only", "LGPL-2.1+": "LGPL-2.1-or-later", "LGPL-3": "LGPL-3.0-only",
    "LGPL-3+": "LGPL-3.0-or-later", "AGPL-3": "AGPL-3.0-only", "AGPL-3+": "AGPL-3.0-or-later",
    "GFDL-1.2": "GFDL-1.2-only", "GFDL-1.2+": "GFDL-1.2-or-later", "GFDL-1.3": "GFDL-1.3-only",
    "GFDL-1.3+": "GFDL-1.3-or-later", "Expat": "MIT", "BSD-2-clause": "BSD-2-Clause",
    "BSD-3-clause": "BSD-3-Clause", "BSD-4-clause": "BSD-4-Clause", "MPL-1.1": "MPL-1.1", "MPL-2.0": "MPL-2.0",
    "Artistic": "Artistic-1.0-Perl", "Artistic-2.0": "Artistic-2.0", "Apache-2": "Apache-2.0",
    "Zlib": "Zlib", "zlib": "Zlib", "PSF-2": "PSF-2.0", "OpenSSL": "OpenSSL", "ISC": "ISC",
}
SPDX_SAME = {"Apache-2.0", "MIT", "ISC", "CC0-1.0", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0",
             "BSL-1.0", "MPL-2.0", "EPL-1.0", "EPL-2.0", "Unlicense", "WTFPL", "X11", "0BSD", "Python-2.0",
             "OFL-1.1", "curl", "Libpng", "IJG", "FTL", "BSD-1-Clause"}
