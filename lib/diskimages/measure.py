"""Measurements of a build: wall and CPU seconds per phase, sizes, digests; one JSON record per build."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class PhaseTimer:
    """`with timer.phase("bootstrap"):` records wall and CPU seconds (this process and its waited-for children,
    plus `detached`: what the phase's code measured of processes whose parent exited before them)."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}
        self.detached = 0.0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        w0, c0 = time.monotonic(), _cpu()
        self.detached = 0.0
        try:
            yield
        finally:
            self.phases[name] = {"wall_s": round(time.monotonic() - w0, 2),
                                 "cpu_s": round(_cpu() - c0 + self.detached, 2)}

    @property
    def total_wall(self) -> float:
        return round(sum(p["wall_s"] for p in self.phases.values()), 2)


def sha256_file(path: Path, bufsize: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def tree_bytes(path: Path) -> int:
    """Apparent size of a directory tree (each hard-linked file counted once), without crossing mounts."""
    out = subprocess.run(["du", "-s", "-x", "-b", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def write_record(record: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One flat row per record for pandas: phases become `<phase>_wall_s` / `<phase>_cpu_s` columns."""
    row = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    for phase, t in (record.get("phases") or {}).items():
        row[f"{phase}_wall_s"] = t.get("wall_s")
        row[f"{phase}_cpu_s"] = t.get("cpu_s")
    host = record.get("host")
    if isinstance(host, dict):
        row.update({f"host_{k}": v for k, v in host.items() if not isinstance(v, (dict, list))})
    boot = record.get("boot") or {}
    if boot:
        row["boot_passed"] = boot.get("passed")
        for m, s in (boot.get("milestones") or {}).items():
            row[f"boot_{m}_s"] = s
    return row


def load_records(*paths: Path | str):
    """Every `*.json` build record under the given files/folders as one pandas DataFrame."""
    import pandas as pd
    rows = []
    for p in map(Path, paths):
        files = sorted(p.rglob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict) and rec.get("kind") == "diskimages.build":
                rows.append(flatten(rec))
    return pd.DataFrame(rows)


MEASUREMENT_COLUMNS = {
    "tool": "tool", "tool_version": "version", "recipe": "recipe", "total_wall_s": "build s",
    "base_wall_s": "base image s", "build_wall_s": "tool run s", "bootstrap_wall_s": "bootstrap s", "customize_wall_s": "customise s", "assemble_wall_s": "assemble s",
    "compress_wall_s": "compress s", "total_cpu_s": "CPU s", "downloaded_mb": "downloaded MB", "cache": "cache", "lean": "lean",
    "packages": "packages", "rootfs_mb": "rootfs MB", "virtual_mb": "virtual MB", "allocated_mb": "allocated MB",
    "compressed_mb": "file MB", "sha256_short": "sha256", "content_differs": "content differs",
}


def summary_table(df):
    """The measurement table shown in notebooks: the main columns, readable names, one row per build."""
    df = df.copy()
    mb = 1 << 20
    for src, dst in (("downloaded_bytes", "downloaded_mb"), ("rootfs_bytes", "rootfs_mb"),
                     ("virtual_bytes", "virtual_mb"), ("allocated_bytes", "allocated_mb"),
                     ("file_bytes", "compressed_mb")):
        if src in df:
            df[dst] = (df[src] / mb).round(1)
    if "sha256" in df:
        df["sha256_short"] = df["sha256"].str.slice(7, 19)
    cols = [c for c in MEASUREMENT_COLUMNS if c in df]
    return df[cols].rename(columns=MEASUREMENT_COLUMNS)
