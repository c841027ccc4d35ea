"""Run a program inside a root file system tree, with /proc, /sys, /dev and /run mounted in a private mount
namespace (`unshare --mount`): the mounts exist only for that process and vanish with it, whatever happens,
so a failed or interrupted step can never leave a mount behind on the host.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional, Sequence

from . import runner

_SETUP = r"""
set -e
R="$1"; shift
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
exec chroot "$R" "$@"
"""


def chroot_run(rootfs: Path, cmd: Sequence[str], *, log: Optional[Path] = None, env: Optional[dict] = None,
               stdin: Optional[str] = None, on_line=None, capture: bool = False) -> str:
    """`env` adds to a neutral environment; callers pass the distribution's (`Distribution.chroot_env`)."""
    rootfs = Path(rootfs).resolve()
    base_env = {"LC_ALL": "C.UTF-8",
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    wrapped = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
               "sh", "-c", _SETUP, "chroot-run", str(rootfs), *cmd]
    return runner.run(wrapped, log=log, env={**base_env, **(env or {})}, stdin=stdin, on_line=on_line,
                      capture=capture)


def mounts_under(path: Path) -> list[str]:
    """Mount points under `path` visible to this process (to refuse deleting a tree that still has mounts)."""
    prefix = str(Path(path).resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                found.append(mp)
    return found


def quote(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)
