#!/usr/bin/env python3
"""Benchmark: push and pull a large image through a local registry with diskimages (monolithic and chunked)
and with plain curl against the same registry; prints a table of seconds, MB/s, peak RSS and the ratio.

usage: .venv/bin/python bench/transfer.py [--gib 4] [--dir /var/tmp/diskimages-bench]
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import requests

from diskimages.localregistry import LocalRegistry

CHILD = """
import re, sys, time
from pathlib import Path
from diskimages import publish
from diskimages.registry import RegistryClient, Ref
mode, path, ref, out = sys.argv[1:5]
r = Ref.parse(ref)
t = time.monotonic()
if mode == "push":
    c = RegistryClient(r.registry)
    publish.push(path, ref, progress=False, client=c, record={})
elif mode == "push-chunked":
    c = RegistryClient(r.registry, chunk_threshold=0, chunk_size=256 << 20)
    publish.push(path, ref, progress=False, client=c, record={})
else:
    publish.pull(ref, out, progress=False)
secs = time.monotonic() - t
hwm = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(secs, hwm)
"""


def child(mode, path, ref, out=""):
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), ref, str(out)], capture_output=True,
                       text=True, check=True)
    secs, hwm = r.stdout.split()
    return float(secs), int(hwm) / 1024


def curl_push(host, repo, path, digest):
    loc = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/").headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    sep = "&" if "?" in loc else "?"
    t = time.monotonic()
    subprocess.run(["curl", "-sf", "-X", "PUT", "-H", "Content-Type: application/octet-stream", "--upload-file",
                    str(path), f"{loc}{sep}digest={digest}"], check=True)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gib", type=float, default=4)
    ap.add_argument("--dir", default="/var/tmp/diskimages-bench")
    a = ap.parse_args()
    work = Path(a.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = int(a.gib * (1 << 30))
    img = work / "bench.raw"
    h = hashlib.sha256()
    block = os.urandom(16 << 20)
    with open(img, "wb") as f:
        written = 0
        while written < size:
            b = block[: min(len(block), size - written)]
            f.write(b)
            h.update(b)
            written += len(b)
    digest = "sha256:" + h.hexdigest()
    rows = []
    mb = size / 1e6
    try:
        with LocalRegistry(work / "storage-curl") as reg:
            s = curl_push(reg.host, "bench/curl", img, digest)
            rows.append(("push", "curl PUT (monolithic)", s, mb / s, None))
            t = time.monotonic()
            subprocess.run(["curl", "-sf", "-o", str(work / "curl.out"),
                            f"http://{reg.host}/v2/bench/curl/blobs/{digest}"], check=True)
            s = time.monotonic() - t
            rows.append(("pull", "curl GET", s, mb / s, None))
            (work / "curl.out").unlink()
        with LocalRegistry(work / "storage-di") as reg:
            s, rss = child("push", img, f"{reg.host}/bench/di:v1")
            rows.append(("push", "diskimages (streamed PUT)", s, mb / s, rss))
            s, rss = child("pull", img, f"{reg.host}/bench/di:v1", work / "pulled")
            rows.append(("pull", "diskimages (verified)", s, mb / s, rss))
            shutil.rmtree(work / "pulled")
        with LocalRegistry(work / "storage-chunked") as reg:
            s, rss = child("push-chunked", img, f"{reg.host}/bench/chunked:v1")
            rows.append(("push", "diskimages (256 MiB PATCH chunks)", s, mb / s, rss))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    df = pd.DataFrame(rows, columns=["op", "client", "seconds", "MB/s", "peak RSS MB"]).round(1)
    for op in ("push", "pull"):
        best = df[(df.op == op) & df.client.str.startswith("curl")]["seconds"].iloc[0]
        df.loc[df.op == op, "time vs curl"] = (df[df.op == op]["seconds"] / best).round(2)
    print(f"{a.gib:g} GiB of random data through Debian's docker-registry on 127.0.0.1")
    print(df.to_string(index=False))


if __name__ == "__main__":
    main()
