"""mkosi (systemd's image builder; Debian ships mkosi 14).

The recipe becomes mkosi's own configuration: `mkosi.conf` (distribution, mirror, packages, hostname, package
cache, clean-up), `mkosi.extra/` (the recipe's overlay files and scripts) and `mkosi.postinst` (the shared
customisation script: users, autologin, locale, time zone, keyboard, network, services, hygiene), which mkosi
runs inside the image with systemd-nspawn.

mkosi builds the tree (`Format=directory`); diskimages makes it bootable with its loop-free assembly and
generates the initrd mkosi leaves out. The record and the notebook label this "mkosi tree + diskimages
assembly". mkosi's own bootable output (`Format=gpt_ext4`, `Bootable=yes`) mounts the ESP as vfat and needs
loop partitions; it is not offered, because it could not be built and checked on the project's machines.

Incremental rebuilds use mkosi's own `--incremental`: mkosi keeps its tree after the package phase as a cache
image (`IMAGE.cache-pre-inst` beside its output) and, when it finds one, copies it in and skips installing.
diskimages keeps that cache image between builds as a checksummed zstd tarball (trees.py), keyed by mkosi.conf
without `Hostname=` and by the resolved packages. On a cached tree mkosi skips its hostname, locale and
autologin steps; mkosi.postinst applies the recipe's on every build, so a changed hostname is still honoured.
Two defects of mkosi 14's --incremental are worked around:
- without a build script it never makes `IMAGE.cache-pre-dev`, and treats the missing file as "no cache" on
  every run, making the cache image again (the full package phase) each time: an empty stand-in makes it use
  the one it has;
- it copies the cache image into the new tree with its own Python copy, which keeps modes but not owners:
  every file became root's (`/etc/shadow` lost group shadow, dbus-daemon-launch-helper group messagebus, so
  D-Bus activation broke). mkosi runs through a small shim (`SHIM`) whose copy of the cache image is
  `cp -a`: owners, modes, times, xattrs (file capabilities) and hard links kept. Other copies are mkosi's own.

Notes measured on Debian 12: mkosi 14 hard-codes Debian's own security host for the security suite; when it
is unreachable apt only warns and the build goes on. Without systemd as PID 1, `/run` is not a tmpfs and
systemd-nspawn (used for mkosi.postinst) fails unless a tmpfs is mounted on /run/systemd/nspawn: that is done
inside a private mount namespace (`hostfix`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .. import checkers, customize, trees
from ..distros import Distribution, Release
from .. import hostfix
from ..hostfix import PrivateNamespace, systemd_is_init
from ..errors import Failure
from ..runner import run
from . import BuildState, RootfsTool

ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
CONFIG_FOR = 14         # the mkosi major version whose configuration format is written here
# mkosi bind-mounts its own folder over /var/tmp while scripts run, so the staging folder lives elsewhere
STAGE = "/opt/diskimages-stage"


# mkosi 14's copy of its cache image into the new tree loses owners; the shim copies that one tree with
# `cp -a` and leaves every other copy to mkosi (see the module docstring)
SHIM = """
import subprocess, sys
import mkosi
_copy_path = mkosi.copy_path
def copy_path(oldpath, newpath, *, copystat=True):
    if str(oldpath).endswith(".cache-pre-inst"):
        subprocess.run(["cp", "-a", "--reflink=auto", "-T", str(oldpath), str(newpath)], check=True)
    else:
        _copy_path(oldpath, newpath, copystat=copystat)
mkosi.copy_path = copy_path
sys.argv[0] = "mkosi"
from mkosi.__main__ import main
main()
"""


def mkosi_python() -> str:
    """The interpreter the `mkosi` program runs (its launcher runs the python3 beside it, `$(dirname "$0")`,
    else the first one on PATH), so the shim imports the same mkosi."""
    prog = shutil.which("mkosi")
    beside = Path(prog).parent / "python3" if prog else None
    if beside and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("python3") or "python3"


# the distributions mkosi 14 installs, by its own Distribution= names (each release is checked per distribution)
DISTRIBUTIONS = ("debian", "ubuntu", "fedora", "arch", "opensuse", "centos", "mageia", "openmandriva", "rocky",
                 "alma", "gentoo")


class Mkosi(RootfsTool):
    name = "mkosi"
    program = "mkosi"
    packages = ("mkosi",)
    applies_recipe = True
    description = "systemd's image builder: tree by mkosi (mkosi.conf, mkosi.extra, mkosi.postinst), " \
                  "made bootable by diskimages"
    options = {"with_docs": ("true or false", lambda v: isinstance(v, bool))}
    native = {"packages": "Packages=", "desktop": "Packages= (the desktop's packages)", "hostname": "Hostname=",
              "files": "mkosi.extra/ (ExtraTrees)"}

    def label(self) -> str:
        return "mkosi tree + diskimages assembly"

    def version(self):
        v = super().version()
        return v.removeprefix("mkosi ") if v else v

    def unavailable_reason(self):
        why = super().unavailable_reason()
        if why is None:
            why = self.usable_version(self.version())
            why = f"mkosi {self.version()} is installed; {why}" if why else None
        return why

    def usable_version(self, version: str):
        if version.split(".")[0].split("~")[0] != str(CONFIG_FOR):
            return (f"the configuration diskimages writes is mkosi {CONFIG_FOR}'s (Debian 12's), whose sections, "
                    "options and command line later mkosi versions changed")
        return None

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and distro.name not in DISTRIBUTIONS:
            why = f"mkosi has no Distribution={distro.name}"
        return why

    def conf(self, state: BuildState) -> str:
        r = state.recipe
        opts = r.tool_options(self.name)
        pkgs = state.distro.packages_for(r)
        lines = [f"# mkosi {self.version() or ''} configuration rendered by diskimages from recipe {r.name}",
                 "# (edit the recipe, not this file)", "",
                 "[Distribution]", f"Distribution={r.distro}", f"Release={state.release.codename}",
                 f"Architecture={ARCHES[r.architecture]}"]
        if state.mirror.uri:
            lines.append(f"Mirror={state.mirror.uri}")
        if state.distro.package_manager == "apt" and list(state.distro.components) != ["main"]:
            # Debian/Ubuntu components are mkosi's Repositories= (which replaces its default, main)
            lines.append("Repositories=" + ",".join(state.distro.components))
        lines += ["", "[Output]", "Format=directory", f"Hostname={r.hostname}", "ManifestFormat=json", "",
                  "[Content]", "Packages=" + ",".join(pkgs),
                  # the same content as the other builders (mkosi drops documentation by default)
                  f"WithDocs={'yes' if opts.get('with_docs', True) else 'no'}",
                  f"RemoveFiles={STAGE}"]
        if r.scripts:
            lines.append("WithNetwork=yes")
        return "\n".join(lines) + "\n"

    def render(self, state: BuildState) -> dict[str, str]:
        r = state.recipe
        extra = []
        if r.files_dir:
            extra += [f"{p.relative_to(r.files_dir)}" for p in sorted(r.files_dir.rglob("*")) if not p.is_dir()]
        extra += [f"{STAGE.lstrip('/')}/scripts/{i}  (from {p})" for i, p in enumerate(r.scripts)]
        if any(u.password_env for u in r.users):
            extra.append(f"{STAGE.lstrip('/')}/secrets  (passwords from the environment; read and deleted by "
                         "mkosi.postinst, never on a command line)")
        return {
            "mkosi.conf": self.conf(state),
            "mkosi.postinst": customize.render_script(r, STAGE),
            "mkosi.extra/": "\n".join(extra) + ("\n" if extra else "(empty)\n"),
            "command": "mkosi --force --cache PACKAGE_CACHE --output OUTPUT/image build\n",
        }

    def check(self, state: BuildState, where: Path) -> list:
        """`mkosi summary` (mkosi's own configuration parser) in the folder the build uses, and `sh -n` on
        mkosi.postinst."""
        conf = self.write_config(state, where / "mkosi")
        return [checkers.run("mkosi.conf", "mkosi summary", ["mkosi", "summary"], cwd=conf),
                checkers.run("mkosi.postinst", "sh -n", ["sh", "-n", conf / "mkosi.postinst"])]

    def write_config(self, state: BuildState, where: Path) -> Path:
        r = state.recipe
        where.mkdir(parents=True)
        (where / "mkosi.conf").write_text(self.conf(state))
        post = where / "mkosi.postinst"
        post.write_text(customize.render_script(r, STAGE))
        post.chmod(0o755)
        extra = where / "mkosi.extra"
        if r.files_dir:
            shutil.copytree(r.files_dir, extra, symlinks=True)
        customize.stage(r, extra, where=STAGE, files=False, secrets=True)
        return where

    def tree_config(self, state: BuildState) -> str:
        # what mkosi's cache image is made from: the host name mkosi writes into it is set again by mkosi.postinst
        # on every build, cached tree or not, so it is left out (comments name the recipe: left out too)
        return "".join(line + "\n" for line in self.conf(state).splitlines()
                       if line and not line.startswith(("#", "Hostname=")))

    def make_tree(self, state: BuildState, rootfs: Path) -> None:
        # mkosi applies the recipe itself, so its finished tree is never the one to keep: its own --incremental
        # keeps the tree after its package phase (see bootstrap)
        self.bootstrap(state, rootfs)

    def bootstrap(self, state: BuildState, rootfs: Path) -> None:
        conf = self.write_config(state, state.work / "mkosi")
        # the tree is made where diskimages keeps it (in memory when there is room: scratch.py), so mkosi's
        # workspace and output are there too and the tree is renamed into place, not copied
        out = rootfs.parent / "mkosi-output"
        out.mkdir()
        cached = out / "image.cache-pre-inst"
        restored = None
        if state.tree_key:
            restored = trees.restore(state.tree_key, cached, log=state.log)
            (out / "image.cache-pre-dev").mkdir()       # the stand-in for mkosi 14's defect (module docstring)
        with self.package_cache(state) as cache, PrivateNamespace(state.work / "hostfix", nspawn=True) as ns:
            argv = ["mkosi", "--force", "--cache", str(cache), "--workspace-dir", str(rootfs.parent),
                    "--output", str(out / "image")]
            if state.tree_key:
                argv = [mkosi_python(), "-c", SHIM, *argv[1:], "--incremental"]
            state.workaround(*ns.applied)
            if not systemd_is_init():
                # nspawn would ask systemd (over the system bus) for a scope unit
                argv.append("--nspawn-keep-unit")
                state.workaround("mkosi --nspawn-keep-unit: systemd is not PID 1 (no system bus)")
            env = {}
            script = getattr(state.distro, "debootstrap_script", None)
            boot_dir = hostfix.debootstrap_dir(state.work, state.release.codename, script) if script else None
            if boot_dir:
                env["DEBOOTSTRAP_DIR"] = str(boot_dir)
                state.workaround(f"DEBOOTSTRAP_DIR with a {state.release.codename} script: this host's debootstrap "
                                 f"is older than the release (newer ones link it to {script})")
            run(ns.argv([*argv, "build"]), cwd=conf, env=env, log=state.log, on_line=state.on_line)
        if restored:
            state.incremental = f"mkosi --incremental: {restored}; mkosi copied it in and skipped its package phase"
            state.cache, state.downloaded_bytes = "not needed", 0
        elif state.tree_key:
            if not cached.is_dir():
                raise Failure(f"mkosi --incremental left no cache image ({cached.name}) in {out}")
            state.incremental = "mkosi --incremental: " + trees.save(state.tree_key, cached, log=state.log)
        os.rename(out / "image", rootfs)
