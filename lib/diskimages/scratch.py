"""Where a build's root tree lives while it is made, customised and assembled: in memory (the tmpfs at
/dev/shm) when there is room for the whole disk there, else in the work folder beside the image.

A root tree is tens of thousands of small files. Writing them to a disk file system costs most of an
incremental rebuild on some hosts: here, unpacking the cached debian-13-xfce tree took 23-34 s on ext4 and
2.1-2.3 s on tmpfs, the same 579 MiB tarball. debos' fakemachine keeps its scratch space in memory for the
same reason. The raw disk the tree is assembled into goes to memory too when both fit there: mkfs.ext4
writing the debian-12-xfce tree into a tmpfs took 2.6 s, into an ext4 work folder 3.6-3.9 s (this machine).

DISKIMAGES_SCRATCH chooses: `auto` (the default: memory when it fits), `memory` (an error when it does not
fit) or `disk`. The record says which was used and why.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import InputError

MEMORY = Path("/dev/shm")
ENV = "DISKIMAGES_SCRATCH"
CHOICES = ("auto", "memory", "disk")
#: memory left to everything else while the tree is in RAM
MARGIN = 2 << 30


def _mount_options(path: Path) -> Optional[tuple[str, set[str]]]:
    """(file system type, options) of the mount at exactly `path`, from /proc/mounts (the last one wins)."""
    found = None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == str(path):
                found = (parts[2], set(parts[3].split(",")))
    except OSError:
        return None
    return found


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_unusable(need: int, base: Path = MEMORY, what: str = "the disk") -> Optional[str]:
    """Why a tree that may grow to `need` bytes cannot live in `base`; None when it can."""
    mount = _mount_options(base)
    if mount is None or mount[0] != "tmpfs":
        return f"{base} is not a tmpfs"
    if "noexec" in mount[1]:
        return f"{base} is mounted noexec (the tree's programs run in a chroot)"
    st = os.statvfs(base)
    free = st.f_bavail * st.f_frsize
    if free < need:
        return f"{base} has {free / 2**30:.1f} GiB free, {what} may need {need / 2**30:.1f} GiB"
    avail = _mem_available()
    if avail < need + MARGIN:
        return f"{avail / 2**30:.1f} GiB of memory is available, {what} may need {need / 2**30:.1f} GiB " \
               f"and {MARGIN >> 30} GiB is left to the rest"
    return None


def choose(need: int) -> tuple[Optional[Path], str]:
    """(the folder to make the tree under, or None for the work folder; what the record says)."""
    mode = os.environ.get(ENV, "auto")
    if mode not in CHOICES:
        raise InputError(f"{ENV}={mode[:40]!r} is not allowed (allowed: {', '.join(CHOICES)})")
    if mode == "disk":
        return None, f"disk (the work folder; {ENV}=disk)"
    why = memory_unusable(need)
    if why is None:
        return MEMORY, f"memory ({MEMORY}, a tmpfs)"
    if mode == "memory":
        raise InputError(f"{ENV}=memory: {why}")
    return None, f"disk (the work folder): {why}"


def choose_disk(need: int, tree_base: Optional[Path]) -> tuple[Optional[Path], str]:
    """(the folder to write the raw disk under, or None for the work folder; what the record adds): memory only
    beside a tree in memory, and only when the tree and the disk, each as large as the disk may be, fit together."""
    if tree_base is None:
        return None, ""
    why = memory_unusable(2 * need, tree_base, "the tree and the raw disk")
    if why is None:
        return tree_base, "; the raw disk too"
    return None, f"; the raw disk in the work folder: {why}"
