"""Incremental rebuilds: the root tree a tool leaves after its package phase, kept as a zstd tarball keyed by
what made it (the tool, its version, its rendered bootstrap configuration and the resolved package set), so a
recipe change that leaves the packages alone (users, files, hostname, scripts, services, locale, disk, output)
restores the tree in seconds and re-runs only customisation, assembly and compression.

Each entry is `KEY.tar.zst` with `KEY.sha256` beside it, both written under a temporary name and renamed when
complete; an entry whose checksum does not match (a kill while writing, a damaged disk) is deleted and the tree
is built again, never used. `prune` keeps the cache within an age and a size (`python -m diskimages gc`).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from . import reaper, runner
from .paths import cache_dir
from .errors import InputError

#: GNU tar keeps what an image needs: owners by number, modes, hard links, xattrs (file capabilities) and ACLs
TAR_KEEP = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-p"]
MAX_AGE_DAYS = 14
MAX_BYTES = 20 << 30


def _entry(key: str) -> tuple[Path, Path]:
    name = key.split(":", 1)[-1][:64]
    if not name.isalnum():
        raise InputError(f"not a tree key: {key[:80]!r}")
    d = cache_dir("trees")
    return d / f"{name}.tar.zst", d / f"{name}.sha256"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def restore(key: str, rootfs: Path, *, log: Optional[Path] = None) -> Optional[str]:
    """Unpack the tree cached under `key` into `rootfs` (created). Returns None when there is no usable entry
    (none, or one that failed its checksum: deleted), else what the record says."""
    tarball, sums = _entry(key)
    if not tarball.is_file() or not sums.is_file():
        return None
    t0 = time.monotonic()
    rootfs.mkdir(parents=True, exist_ok=True)
    # the checksum is taken while tar unpacks (a second core): a damaged entry is found all the same, and
    # what it unpacked is removed before anything uses it
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        digest = pool.submit(_sha256, tarball)
        try:
            runner.run(["tar", "-C", rootfs, *TAR_KEEP, "-I", "zstd -T0", "-xf", tarball], log=log)
            failed = None
        except runner.CommandError as e:
            failed = e
        good = sums.read_text().strip() == digest.result()
    if not good:
        shutil.rmtree(rootfs, ignore_errors=True)
        tarball.unlink(missing_ok=True)
        sums.unlink(missing_ok=True)
        return None
    if failed:
        raise failed
    os.utime(tarball)                       # recently used: pruned last
    return f"restored the package phase's tree ({tarball.stat().st_size >> 20} MiB) in " \
           f"{time.monotonic() - t0:.1f} s"


def save(key: str, rootfs: Path, *, log: Optional[Path] = None) -> str:
    """Keep `rootfs` as the tree of `key` (written under a temporary name, checksummed, then renamed)."""
    tarball, sums = _entry(key)
    t0 = time.monotonic()
    part = tarball.with_name(f".{tarball.name}-{os.getpid()}.partial")
    part_sums = sums.with_name(f".{sums.name}-{os.getpid()}.partial")
    with reaper.temp_files(part, part_sums, what="unfinished cached tree"):
        runner.run(["tar", "-C", rootfs, *TAR_KEEP, "-I", "zstd -T0 -3", "-cf", part, "."], log=log)
        part_sums.write_text(_sha256(part) + "\n")
        os.replace(part, tarball)
        os.replace(part_sums, sums)
    return f"kept the package phase's tree ({tarball.stat().st_size >> 20} MiB, {time.monotonic() - t0:.1f} s)"


def _file_entry(key: str, kind: str) -> tuple[Path, Path]:
    name = key.split(":", 1)[-1][:64]
    if not name.isalnum() or not kind.isalnum():
        raise InputError(f"not a cache key: {key[:80]!r}")
    d = cache_dir("trees")
    return d / f"{name}.{kind}", d / f"{name}.{kind}.sha256"


def restore_file(key: str, kind: str, dest: Path) -> bool:
    """Copy the file cached as `kind` under `key` to `dest` (written under a temporary name, then renamed);
    False when there is no usable entry (none, or one that failed its checksum: deleted)."""
    data, sums = _file_entry(key, kind)
    if not data.is_file() or not sums.is_file():
        return False
    blob = data.read_bytes()
    if sums.read_text().strip() != hashlib.sha256(blob).hexdigest():
        data.unlink(missing_ok=True)
        sums.unlink(missing_ok=True)
        return False
    part = dest.with_name(f".{dest.name}.partial")
    part.write_bytes(blob)
    part.chmod(0o644)
    os.replace(part, dest)
    os.utime(data)
    return True


def save_file(key: str, kind: str, src: Path) -> None:
    """Keep `src` as the `kind` file of `key` (under a temporary name until complete and checksummed)."""
    save_bytes(key, kind, src.read_bytes())


def save_bytes(key: str, kind: str, blob: bytes) -> None:
    """Keep `blob` as the `kind` file of `key` (under a temporary name until complete and checksummed)."""
    data, sums = _file_entry(key, kind)
    part = data.with_name(f".{data.name}-{os.getpid()}.partial")
    part_sums = sums.with_name(f".{sums.name}-{os.getpid()}.partial")
    with reaper.temp_files(part, part_sums, what="unfinished cached file"):
        part.write_bytes(blob)
        part_sums.write_text(hashlib.sha256(blob).hexdigest() + "\n")
        os.replace(part, data)
        os.replace(part_sums, sums)


def save_folder(key: str, kind: str, src: Path) -> None:
    """Keep the files of folder `src` (and of its subfolders) as the `kind` entry of `key`: a tar made in memory,
    with the files' modes and times."""
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder, dirs, files in os.walk(src):          # links are neither followed nor kept
            dirs.sort()
            for name in sorted(files):
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    save_bytes(key, kind, buf.getvalue())


def restore_folder(key: str, kind: str, dest: Path) -> bool:
    """Unpack the `kind` entry of `key` into folder `dest` (made; files only, with their modes and times).
    False when there is no usable entry."""
    import tarfile
    dest.mkdir(parents=True, exist_ok=True)
    blob = dest / f".{kind}.tar"
    if not restore_file(key, kind, blob):
        return False
    try:
        with tarfile.open(blob) as tar:
            tar.extractall(dest, filter="data")
    finally:
        blob.unlink(missing_ok=True)
    return True


def _data_of(sums: Path) -> Path:
    """The entry a checksum file belongs to: `KEY.sha256` is a tree's, `KEY.KIND.sha256` a file's."""
    stem = sums.name[:-len(".sha256")]
    return sums.with_name(stem if "." in stem else f"{stem}.tar.zst")


def prune(max_age_days: float = MAX_AGE_DAYS, max_bytes: int = MAX_BYTES) -> list[str]:
    """Delete entries unused for `max_age_days`, then the least recently used until the cache is within
    `max_bytes`, and any checksum without its tarball. Returns what was deleted."""
    d = cache_dir("trees")
    gone = []
    entries = sorted((p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                      and not p.name.endswith(".sha256")), key=lambda p: p.stat().st_mtime)
    now = time.time()
    total = sum(p.stat().st_size for p in entries)
    for p in entries:
        old = now - p.stat().st_mtime > max_age_days * 86400
        if old or total > max_bytes:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            tree = p.name.endswith(".tar.zst")
            p.with_name(p.name.replace(".tar.zst", ".sha256") if tree else p.name + ".sha256").unlink(
                missing_ok=True)
            gone.append(f"removed cached {'tree' if tree else p.name.rsplit('.', 1)[-1]} {p.name} "
                        f"({'unused for ' + str(max_age_days) + ' days' if old else 'over the size limit'})")
    for s in d.glob("*.sha256"):
        if not _data_of(s).exists():
            s.unlink(missing_ok=True)
    return gone
