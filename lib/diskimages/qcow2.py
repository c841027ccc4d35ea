"""A compressed qcow2 (version 3, zstd clusters) written from a raw disk on every core, with the same bytes
from the same disk every time.

Why not `qemu-img convert -c`: it compresses on one thread as long as its writes stay in order, and with
out-of-order writes (`-W`) it uses every core but places the clusters differently from run to run, so the
image is no longer bit-identical. It also has no compression level. Here the clusters are compressed in
parallel (zstandard releases the GIL) and written in disk order, packed at byte granularity the way qemu
packs compressed clusters. qemu reads the result like its own; the tests run `qemu-img check` and
`qemu-img compare` on it, and boot it.

The layout: the header, the L1 table, the compressed clusters in disk order, then those that do not compress
(in disk order too, each at a cluster boundary as qcow2 requires; zero clusters are left out: they read as
zeros), the L2 tables, then the refcount table and its blocks (16-bit refcounts), every structure at a
cluster boundary.
A compressed cluster's descriptor covers whole 512-byte sectors; each host cluster those sectors touch counts
one reference per compressed cluster, as `qemu-img check` counts them.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import struct
from pathlib import Path

from .errors import Failure, InputError

MAGIC = b"QFI\xfb"
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZSTD = 1                       # the header's compression_type
INCOMPAT_COMPRESSION = 1 << 3  # the incompatible feature bit that says compression_type is not zlib
HEADER_LENGTH = 112
REFCOUNT_ORDER = 4             # 16-bit refcounts, as qemu-img create makes them
BATCH = 64                     # clusters per compression task


def _data_clusters(fd: int, size: int, csize: int):
    """The indexes of the clusters that hold data (the file's holes are skipped), in order."""
    seen = -1
    off = 0
    while off < size:
        try:
            off = os.lseek(fd, off, os.SEEK_DATA)
        except OSError:          # ENXIO: no data after `off`
            return
        end = os.lseek(fd, off, os.SEEK_HOLE)
        for i in range(max(off // csize, seen + 1), (end - 1) // csize + 1):
            seen = i
            yield i
        off = end


def _compress_batch(fd: int, indexes: list[int], csize: int, level: int) -> list[tuple[int, bytes, bool]]:
    import zstandard
    comp = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=False)
    zero = bytes(csize)
    out = []
    for i in indexes:
        data = os.pread(fd, csize, i * csize)
        if len(data) < csize:
            data += bytes(csize - len(data))
        if data == zero:
            continue
        packed = comp.compress(data)
        # a cluster that does not shrink is stored as it is (qemu does the same)
        out.append((i, packed, True) if len(packed) < csize - 512 else (i, data, False))
    return out


def write(raw: Path, out: Path, *, cluster_size: int = 65536, level: int = 4, threads: int = 0) -> None:
    """Write `raw` as a zstd-compressed qcow2 to `out` (created; the caller renames it into place)."""
    csize = cluster_size
    bits = csize.bit_length() - 1
    if csize != 1 << bits or not 512 <= csize <= 2 << 20:
        raise InputError(f"cluster size {csize} is not allowed (allowed: a power of two from 512 to 2M)")
    csize_shift = 62 - (bits - 8)
    virtual = raw.stat().st_size
    l2_entries = csize // 8
    l1_size = max(1, -(-virtual // (csize * l2_entries)))
    l1_clusters = -(-l1_size * 8 // csize)
    refs: dict[int, int] = collections.Counter()
    l2: dict[int, list[int]] = {}
    fd = os.open(raw, os.O_RDONLY)
    try:
        workers = threads or os.cpu_count() or 1
        with open(out, "wb") as f, concurrent.futures.ThreadPoolExecutor(workers) as pool:
            pos = (1 + l1_clusters) * csize          # the clusters start after the header and the L1 table
            f.seek(pos)
            pending: collections.deque = collections.deque()
            batch: list[int] = []
            stored: list[int] = []          # clusters that do not compress: written after the compressed ones

            def drain(keep: int) -> None:
                nonlocal pos
                while len(pending) > keep:
                    for i, data, packed in pending.popleft().result():
                        if packed:
                            sectors = ((pos + len(data) - 1) >> 9) - (pos >> 9)
                            entry = COMPRESSED | (sectors << csize_shift) | pos
                            start = pos & ~511
                            for c in range(start >> bits, (start + (sectors + 1) * 512 - 1 >> bits) + 1):
                                refs[c] += 1
                        else:
                            stored.append(i)
                            continue
                        f.write(data)
                        pos += len(data)
                        l2.setdefault(i // l2_entries, [0] * l2_entries)[i % l2_entries] = entry

            for i in _data_clusters(fd, virtual, csize):
                batch.append(i)
                if len(batch) == BATCH:
                    pending.append(pool.submit(_compress_batch, fd, batch, csize, level))
                    batch = []
                    drain(2 * workers)
            if batch:
                pending.append(pool.submit(_compress_batch, fd, batch, csize, level))
            drain(0)
            # An uncompressed cluster must start at a cluster boundary. Placed in disk order among compressed
            # ones, each would leave half a cluster of padding on average (2.5 MiB of a desktop image); read
            # again from the raw disk and put together here, they leave none.
            pos = -(-pos // csize) * csize
            f.seek(pos)
            for i in stored:
                data = os.pread(fd, csize, i * csize)
                f.write(data + bytes(csize - len(data)))
                refs[pos >> bits] += 1
                l2.setdefault(i // l2_entries, [0] * l2_entries)[i % l2_entries] = COPIED | pos
                pos += csize
            # the L2 tables, each in a cluster of its own
            l1 = [0] * l1_size
            for t in sorted(l2):
                l1[t] = COPIED | pos
                refs[pos >> bits] += 1
                f.seek(pos)
                f.write(struct.pack(f">{l2_entries}Q", *l2[t]))
                pos += csize
            # the refcount table and blocks, which count themselves too
            for c in range(1 + l1_clusters):
                refs[c] += 1
            per_block = csize * 8 >> REFCOUNT_ORDER
            first = pos >> bits
            blocks = table = 0
            while True:
                total = first + table + blocks
                need_blocks = -(-total // per_block)
                need_table = -(-need_blocks * 8 // csize)
                if (need_blocks, need_table) == (blocks, table):
                    break
                blocks, table = need_blocks, need_table
            table_at = first
            for c in range(first, first + table + blocks):
                refs[c] += 1
            counts = [0] * (blocks * per_block)
            for c, n in refs.items():
                if n > 0xFFFF:
                    raise Failure(f"host cluster {c} has {n} references (more than 16-bit refcounts hold)")
                counts[c] = n
            f.seek(table_at * csize)
            f.write(struct.pack(f">{blocks}Q", *[(first + table + b) * csize for b in range(blocks)]))
            for b in range(blocks):
                f.seek((first + table + b) * csize)
                f.write(struct.pack(f">{per_block}H", *counts[b * per_block:(b + 1) * per_block]))
            f.seek(csize)
            f.write(struct.pack(f">{l1_size}Q", *l1))
            f.seek(0)
            f.write(MAGIC + struct.pack(">IQIIQIIQQIIQQQQII", 3, 0, 0, bits, virtual, 0, l1_size, csize,
                                        table_at * csize, table, 0, 0, INCOMPAT_COMPRESSION, 0, 0,
                                        REFCOUNT_ORDER, HEADER_LENGTH) + bytes([ZSTD]) + bytes(7))
            f.truncate((first + table + blocks) * csize)
    finally:
        os.close(fd)
