"""Bit-identical rebuilds of an assembled disk: what varies from one build of the same inputs to the next is
pinned down here, from the build's content key and the packages' own dates.

  * one time, SOURCE_DATE_EPOCH: the environment's when set, else the newest file the installed packages ship
    (each Debian package's files carry its changelog date), so it depends on the resolved packages only;
  * every later time in the tree clamped to it: file modification times, /etc/shadow's last-change days;
  * the files whose content is a time or a random number (logs, ldconfig's aux-cache, machine ids) removed;
  * file system, partition and disk identifiers derived from the content key (`Seed`);
  * the ext4 inode change and access times, which mke2fs -d copies from the host's files (E2FSPROGS_FAKE_TIME
    does not reach them), set afterwards with debugfs on exactly the inodes the bitmap says are in use.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import runner
from .distros import Distribution
from .errors import Failure, InputError

#: files whose content is a time, a log or a random number, and which the first boot recreates as needed (a
#: distribution adds its package manager's: `Distribution.volatile_files`)
VOLATILE_FILES = ("var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id", "var/lib/systemd/random-seed",
                  "etc/shadow-", "etc/gshadow-", "etc/passwd-", "etc/group-", "etc/subuid-", "etc/subgid-")
_DAY = 86400


@dataclass(frozen=True)
class Seed:
    """Everything a build would otherwise draw at random or read from the clock, fixed by its inputs."""
    key: str                  # the content key ("sha256:...")
    epoch: int                # SOURCE_DATE_EPOCH
    epoch_from: str           # where the epoch came from (for the record)

    def uuid(self, what: str) -> str:
        return str(uuid.UUID(bytes=hashlib.sha256(f"{self.key}/{what}".encode()).digest()[:16], version=4))

    def fat_id(self) -> str:
        return hashlib.sha256(f"{self.key}/esp-id".encode()).hexdigest()[:8].upper()

    def env(self) -> dict[str, str]:
        return {"SOURCE_DATE_EPOCH": str(self.epoch)}

    def as_record(self) -> dict:
        return {"source_date_epoch": self.epoch, "source_date_epoch_from": self.epoch_from}


def source_date_epoch(rootfs: Path, distro: Distribution) -> tuple[int, str]:
    """(epoch, where from): the environment's SOURCE_DATE_EPOCH, else the newest modification time of the
    files the installed packages ship."""
    given = os.environ.get("SOURCE_DATE_EPOCH", "")
    if given:
        if not given.isdigit():
            raise InputError(f"environment: SOURCE_DATE_EPOCH={given[:40]!r} is not allowed "
                             "(allowed: whole seconds since 1970)")
        return int(given), "environment"
    newest = 0
    for rel in distro.shipped_files(rootfs):
        try:
            st = os.lstat(rootfs / rel)
        except OSError:
            continue
        newest = max(newest, int(st.st_mtime))
    if not newest:
        raise Failure(f"no file shipped by the {distro.pretty_name} packages was found in the tree")
    return newest, "newest file the packages ship"


def normalize_tree(rootfs: Path, epoch: int, volatile: tuple = (), skip: tuple = (),
                   volatile_dirs: tuple = ()) -> dict:
    """Remove the volatile files, clamp /etc/shadow's last-change days and every file time to `epoch` (but
    under the folders in `skip`, relative to `rootfs`); the folders in `volatile_dirs` get `epoch` even when
    older. Returns what it changed (counts, for the log)."""
    removed = 0
    for rel in (*VOLATILE_FILES, *volatile):
        p = rootfs / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed += 1
    mid = rootfs / "etc/machine-id"
    if mid.is_file() and mid.read_text().strip():
        mid.write_text("")       # "uninitialized": each machine makes its own at first boot
    for name in ("etc/shadow",):
        _clamp_shadow(rootfs / name, epoch // _DAY)
    clamped = clamp_times(rootfs, epoch, skip)
    for rel in volatile_dirs:
        p = rootfs / rel
        if p.is_dir() and not p.is_symlink():
            os.utime(p, (epoch, epoch))
    return {"removed": removed, "clamped": clamped}


def clamp_times(top: Path, epoch: int, skip: tuple = ()) -> int:
    """Every file time under `top` (and its own) later than `epoch` becomes `epoch`, but under the folders in
    `skip` (relative to `top`). Returns how many."""
    clamped = 0
    skipped = {os.path.join(top, s) for s in skip}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skipped]
        for n in (*dirnames, *filenames):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if st.st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
                clamped += 1
    st = os.lstat(top)
    t = min(int(st.st_mtime), epoch)
    os.utime(top, (t, t))
    return clamped


def keep_caches_fresh(rootfs: Path, caches: dict) -> int:
    """Make the inputs of each cache in `caches` ({cache: (input, ...)}, paths in `rootfs`) one second older
    than the cache, never newer than they were: the same times from the same tree. Returns how many moved."""
    moved = 0
    for cache, inputs in caches.items():
        c = rootfs / cache
        if not c.is_file():
            continue
        limit = int(os.lstat(c).st_mtime) - 1
        for rel in inputs:
            p = rootfs / rel
            if p.is_file() and os.lstat(p).st_mtime > limit:
                os.utime(p, (limit, limit), follow_symlinks=False)
                moved += 1
    return moved


def _clamp_shadow(path: Path, days: int) -> None:
    """Field 3 (the day of the last password change) of every entry later than `days` becomes `days`."""
    if not path.is_file():
        return
    lines = []
    for line in path.read_text().splitlines():
        f = line.split(":")
        if len(f) > 2 and f[2].isdigit() and int(f[2]) > days:
            f[2] = str(days)
        lines.append(":".join(f))
    st = path.stat()
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, st.st_mode & 0o7777)


def used_inodes(target: str) -> list[int]:
    """The inode numbers an ext2/3/4 file system's bitmaps mark in use (dumpe2fs; `target` may carry
    ?offset=)."""
    out = subprocess.run(["dumpe2fs", target], capture_output=True, text=True, check=True).stdout
    per_group = int(re.search(r"^Inodes per group:\s*(\d+)", out, re.M).group(1))
    free = re.findall(r"^Group (\d+):.*?^\s+Free inodes: ?([0-9, -]*)$", out, re.M | re.S)
    used = []
    for group, ranges in free:
        first = int(group) * per_group + 1
        taken = set(range(first, first + per_group))
        for r in filter(None, (x.strip() for x in ranges.split(","))):
            a, _, b = r.partition("-")
            taken -= set(range(int(a), int(b or a) + 1))
        used += sorted(taken)
    return used


def pin_inode_times(target: str, epoch: int, work: Path, log: Optional[Path] = None) -> int:
    """Set the change and access times of every inode in use to `epoch`: mke2fs -d copies them from the host's
    files, where no one can set a change time, and its own reading of a folder moves that folder's access time.
    Returns how many inodes it set."""
    inodes = used_inodes(target)
    cmds = work / "pin-ctimes.debugfs"
    cmds.write_text("".join(f"sif <{i}> ctime @{epoch}\nsif <{i}> atime @{epoch}\n" for i in inodes))
    try:
        # not through the build log: debugfs echoes every one of its (tens of thousands of) commands
        r = subprocess.run(["debugfs", "-w", "-f", str(cmds), target], capture_output=True, text=True,
                           env={**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)})   # the superblock's write time
    finally:
        cmds.unlink(missing_ok=True)
    bad = [line for line in (r.stdout + r.stderr).splitlines()
           if line.strip() and not line.startswith(("debugfs ", "debugfs:"))]
    if r.returncode != 0 or bad:
        raise Failure(f"debugfs could not pin the inode change times: {(bad or [r.stderr])[0][:200]}")
    runner.note(log, f"change and access times of {len(inodes)} inodes set to {epoch}")
    return len(inodes)


def explain_difference(a: Path, b: Path, lines: int = 40, timeout: float = 300) -> str:
    """The first `lines` of diffoscope's report on two trees or disks (why two builds differ)."""
    try:
        r = subprocess.run(["diffoscope", "--no-progress", "--text", "-", "--max-report-size", "200000",
                            str(a), str(b)], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return "diffoscope is not installed (scripts/setup.sh installs diffoscope-minimal)"
    except subprocess.TimeoutExpired as e:
        return "\n".join(((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                          else (e.stdout or "")).splitlines()[:lines]) + f"\n(diffoscope stopped after {timeout} s)"
    return "\n".join(r.stdout.splitlines()[:lines]) or (r.stderr.strip()[:500] or "diffoscope found no difference")
