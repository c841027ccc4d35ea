#!/usr/bin/env python3
"""Benchmark: qcow2 cluster size and zstd level for one built image. Each variant is written by the project's
qcow2 writer from the same raw disk (time, CPU, size, `qemu-img check`), then read **inside a booted guest**:
the image boots once to its desktop (libvirt, kept), each variant is attached to it in turn as a second,
read-only virtio disk, and the guest reads 4 KiB at random offsets of the disk's data with O_DIRECT, then
256 MiB of data in disk order (1 MiB reads). The variants take turns twice (A B A B), so drift on the host
hits them alike.
Prints one table with ratios to the first variant. Needs root.

    sudo .venv/bin/python bench/clusters.py build/debian-12-xfce.mmdebstrap.qcow2 --variant 64K:3 \\
        --variant 256K:5 --variant 128K:7
"""
import argparse
import base64
import json
import os
import random
import re
import shlex
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd

from diskimages import libvirt_host, qcow2, reaper
from diskimages.boot import boot_check
from diskimages.vm import get_vm, ssh_run, stop

READS = 3000
SEQ_MIB = 256
GUEST = r"""
import base64, mmap, os, struct, sys, time, zlib
offs = struct.unpack('<%dQ' % int(sys.argv[3]), zlib.decompress(base64.b64decode(sys.argv[1])))
seq = struct.unpack('<%dQ' % int(sys.argv[4]), zlib.decompress(base64.b64decode(sys.argv[2])))
dev = os.open('/dev/vdb', os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
spent = 0.0
for off in offs:
    t = time.perf_counter(); os.preadv(dev, [buf], off); spent += time.perf_counter() - t
big = mmap.mmap(-1, 1 << 20)
t = time.perf_counter()
for off in seq:
    os.preadv(dev, [big], off)
print(spent, time.perf_counter() - t)
"""


def variant(text: str) -> tuple[str, int, int]:
    """CLUSTER:LEVEL (64K:3) -> (text, cluster bytes, level); one line naming what is allowed otherwise."""
    m = re.fullmatch(r"(\d+)([KM]?):(\d+)", text.strip(), re.I)
    units = {"": 1, "K": 1 << 10, "M": 1 << 20}
    csize = int(m.group(1)) * units[m.group(2).upper()] if m else 0
    if not m or csize & (csize - 1) or not 512 <= csize <= 2 << 20 or not 1 <= int(m.group(3)) <= 19:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed is CLUSTER:LEVEL, a power of two from 512 to 2M "
                                         f"and a zstd level from 1 to 19 (e.g. 64K:3)")
    return text, csize, int(m.group(3))


def data_offsets(raw: Path, n: int, seq_mib: int, seed: int = 1) -> tuple[list[int], list[int]]:
    """`n` random 4 KiB-aligned offsets of blocks that hold data (not zeros: a zero cluster is not stored, so
    reading it decompresses nothing), and the first `seq_mib` 1 MiB chunks with data, in disk order."""
    fd = os.open(raw, os.O_RDONLY)
    try:
        # the 4 KiB blocks outside the file's holes, found the way the qcow2 writer finds its clusters
        blocks = list(qcow2._data_clusters(fd, raw.stat().st_size, 4096))
        rng, zero4k, out = random.Random(seed), bytes(4096), []
        while len(out) < n:
            o = rng.choice(blocks) * 4096
            if os.pread(fd, 4096, o) != zero4k:
                out.append(o)
        zero1m, seq = bytes(1 << 20), []
        for o in sorted({b * 4096 >> 20 << 20 for b in blocks}):
            if len(seq) == seq_mib:
                break
            if os.pread(fd, 1 << 20, o) != zero1m:
                seq.append(o)
    finally:
        os.close(fd)
    return out, seq


def pack(offsets: list[int]) -> str:
    return base64.b64encode(zlib.compress(struct.pack(f"<{len(offsets)}Q", *offsets))).decode()


def attach(name: str, image: Path, attach_it: bool) -> None:
    conn, _ = libvirt_host.connect(start=False)
    try:
        dom = conn.lookupByName(name)
        xml = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{image}'/>"
               f"<target dev='vdb' bus='virtio'/><readonly/></disk>")
        (dom.attachDevice if attach_it else dom.detachDevice)(xml)
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", type=Path, help="a built qcow2 with its JSON record beside it")
    ap.add_argument("--variant", action="append", required=True, type=variant,
                    help="CLUSTER:LEVEL, e.g. 64K:3 (the first is the base of the ratios)")
    ap.add_argument("--reads", type=int, default=READS, choices=range(1, 100_001), metavar="1..100000")
    ap.add_argument("--no-guest", action="store_true", help="only write the variants")
    args = ap.parse_args()
    try:
        record = json.loads(args.image.with_suffix(".json").read_text())
    except (OSError, ValueError) as e:
        ap.error(f"{args.image}: needs the build record beside it ({e})")
    name = f"clusters-bench-{os.getpid()}"
    # removed when done, and by the next diskimages command if this one is killed
    with reaper.temp_dir("diskimages-clusters-", Path("/var/tmp")) as tmp:
        os.chmod(tmp, 0o711)
        raw = Path(tmp) / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(args.image), str(raw)], check=True)
        rows, files = [], {}
        for v, csize, lvl in args.variant:
            out = Path(tmp) / f"{csize}-{lvl}.qcow2"
            t0, c0 = time.monotonic(), time.process_time()
            qcow2.write(raw, out, cluster_size=csize, level=lvl)
            wall, cpu = time.monotonic() - t0, time.process_time() - c0
            ok = subprocess.run(["qemu-img", "check", "-q", str(out)], capture_output=True).returncode == 0
            rows.append({"variant": v, "write s": round(wall, 1), "write CPU s": round(cpu, 1),
                         "MiB": round(out.stat().st_size / 2**20, 1), "qemu-img check": "ok" if ok else "FAILED"})
            files[v] = out
            print(f"{v}: {rows[-1]['MiB']} MiB in {wall:.1f} s", flush=True)
        if not args.no_guest:
            offs, seq = data_offsets(raw, args.reads, SEQ_MIB)
            res = boot_check(args.image, record, backend="libvirt", keep=True, name=name)
            print(f"booted: {res.reason}", flush=True)
            if not res.passed:
                return 1
            try:
                vm = get_vm(name)
                rand: dict = {v: [] for v in files}
                seqt: dict = {v: [] for v in files}
                for _ in range(2):
                    for v, f in files.items():
                        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # host cache warm
                        attach(name, f, True)
                        time.sleep(3)
                        r = ssh_run(Path(vm["key"]), vm["ip"],
                                    f"python3 -c {shlex.quote(GUEST)} {pack(offs)} {pack(seq)} {len(offs)} {len(seq)}",
                                    timeout=900)
                        if r.returncode != 0:
                            raise SystemExit(f"guest read failed for {v}: {r.stderr.strip()[-400:]}")
                        a, b = map(float, r.stdout.split())
                        rand[v].append(a)
                        seqt[v].append(b)
                        attach(name, f, False)
                        time.sleep(3)
                        print(f"{v}: random {a:.2f} s, sequential {b:.2f} s", flush=True)
                for row in rows:
                    v = row["variant"]
                    row["guest random 4K reads/s"] = round(args.reads / (sum(rand[v]) / 2))
                    row["guest sequential MiB/s"] = round(SEQ_MIB / (sum(seqt[v]) / 2), 1)
            finally:
                stop(name)
    df = pd.DataFrame(rows).set_index("variant")
    base = df.iloc[0]
    for col in [c for c in df.columns if c != "qemu-img check"]:
        df[col + " ×"] = (df[col] / base[col]).round(2)
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(df.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
