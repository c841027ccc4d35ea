"""Host workarounds some tools need on hosts that lack what they assume (systemd as PID 1, udevd, a tmpfs /run).

Each workaround is applied only when the host lacks the thing, only inside a private mount namespace that the
tool runs in (`unshare --mount`), so it vanishes with the tool's process whatever happens; mount points this
module had to create on the host are removed afterwards. `applied` says which ran (it goes into the build
record and the notebook), so users see which path their build took.
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Sequence

from . import reaper

NSPAWN_DIR = Path("/run/systemd/nspawn")

FAKE_UDEVADM = """#!/bin/sh
# diskimages: no udevd runs on this host, so 'udevadm settle/trigger' would wait for ever; everything else
# goes to the real udevadm
case "$1" in settle|trigger) exit 0 ;; esac
exec {real} "$@"
"""


def _mounts() -> list[tuple[str, str]]:
    with open("/proc/self/mounts") as f:
        return [(line.split()[1], line.split()[2]) for line in f]


def run_is_tmpfs() -> bool:
    return any(mp == "/run" and fs == "tmpfs" for mp, fs in _mounts())


def systemd_is_init() -> bool:
    return Path("/run/systemd/system").is_dir()


def udevd_running() -> bool:
    return Path("/run/udev/control").exists()


class PrivateNamespace:
    """Wraps a command so it runs with the workarounds in place, in its own mount namespace.

    with PrivateNamespace(work, nspawn=True, udev=True) as ns:
        run(ns.argv(["debos", ...]))
    """

    def __init__(self, work: Path, *, nspawn: bool = False, udev: bool = False, dev_disk: bool = False,
                 hide: Sequence[str] = (), make_dirs: Sequence[str] = ()):
        self.work = Path(work)
        self.make_dirs = list(make_dirs)
        self.want_nspawn, self.want_udev, self.want_dev_disk = nspawn, udev, dev_disk
        self.hide = list(hide)
        self.applied: list[str] = []
        self._created: list[Path] = []
        self._keys: list[str] = []
        self._mounts: list[str] = []

    def _mkdir(self, path: Path) -> None:
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._created.append(d)
            self._keys.append(reaper.track("emptydir", path=str(d)))

    def __enter__(self) -> "PrivateNamespace":
        try:
            if self.want_nspawn and not run_is_tmpfs():
                self._mkdir(NSPAWN_DIR)
                self._mounts.append(f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(NSPAWN_DIR))}")
                self.applied.append(f"tmpfs on {NSPAWN_DIR} (private mount namespace): /run is not a tmpfs")
            if self.want_dev_disk and not Path("/dev/disk").exists():
                self._mkdir(Path("/dev/disk"))
                self.applied.append("created /dev/disk (no udev made it); removed afterwards")
            if self.want_udev and not udevd_running():
                real = shutil.which("udevadm")
                if real:
                    real = os.path.realpath(real)
                    self.work.mkdir(parents=True, exist_ok=True)
                    copy = self.work / "udevadm.real"
                    shutil.copy(real, copy)
                    fake = self.work / "udevadm"
                    fake.write_text(FAKE_UDEVADM.format(real=shlex.quote(str(copy))))
                    fake.chmod(0o755)
                    self._mounts.append(f"mount --bind {shlex.quote(str(fake))} {shlex.quote(real)}")
                    self.applied.append("udevadm settle/trigger return at once (private mount namespace): "
                                        "no udevd runs")
            for d in self.make_dirs:
                if not Path(d).exists():
                    self._mkdir(Path(d))
                    self.applied.append(f"created {d} (empty; removed afterwards)")
            for d in self.hide:
                if Path(d).is_dir():
                    # an empty folder over it: the tool sees none of the host's files there
                    self._mounts.append(f"mount -t tmpfs -o ro,mode=755 tmpfs {shlex.quote(d)}")
                    self.applied.append(f"{d} hidden (empty, private mount namespace)")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def argv(self, cmd: Sequence[str]) -> list[str]:
        script = "set -e\n" + "\n".join(self._mounts) + '\nexec "$@"\n'
        return ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
                "sh", "-c", script, "private-namespace", *[str(c) for c in cmd]]

    def __exit__(self, *exc) -> None:
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                pass
        self._created.clear()
        for key in self._keys:
            reaper.untrack(key)
        self._keys.clear()


DEBOOTSTRAP = Path("/usr/share/debootstrap")


def debootstrap_dir(work: Path, suite: str, script: str):
    """A copy of the host's debootstrap data with a script for `suite` (debootstrap older than the suite has none;
    newer ones link it to `script`), for DEBOOTSTRAP_DIR; None when the host's debootstrap knows the suite."""
    if not DEBOOTSTRAP.is_dir() or (DEBOOTSTRAP / "scripts" / suite).exists() or \
            not (DEBOOTSTRAP / "scripts" / script).exists():
        return None
    copy = work / "debootstrap"
    shutil.copytree(DEBOOTSTRAP, copy, symlinks=True)
    (copy / "scripts" / suite).symlink_to(script)
    return copy
