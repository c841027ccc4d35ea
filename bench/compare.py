#!/usr/bin/env python3
"""Benchmark: recipes through every installed build tool that builds them, each tool from its own warm
package cache (so the network does not decide the ranking), each image boot-checked; prints one comparison
table per recipe and the ratios to the best tool. Needs root.

    sudo .venv/bin/python bench/compare.py --recipe debian-13-xfce \\
        --recipe debian-12-xfce:mmdebstrap,mkosi,debos --baseline HEAD~3 --uefi debian-13-xfce --output build/bench

`--recipe NAME:TOOL,TOOL` limits that recipe to those tools.

`--baseline REV` also builds each recipe with mmdebstrap from the project's code at git revision REV (a
temporary worktree), warmed and measured the same way in the same run: the row `mmdebstrap@REV` shows whether
a change made the native path slower.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from diskimages import compare
from diskimages.boot import boot_check
from diskimages.build import attach_boot, build
from diskimages.tools import get_tool, load_checked, names, new_state

REPO = Path(__file__).resolve().parent.parent
CACHED = ("mmdebstrap", "mkosi")      # the tools that keep a package cache (warmed before measuring)

BASELINE_BUILD = """
import json, sys
from diskimages.build import build
res = build(sys.argv[1], "mmdebstrap", sys.argv[2], progress=False)
print(json.dumps({"image": str(res.image), "record": str(res.record_path)}))
"""


def baseline(rev: str, recipe: Path, out: Path, warm: bool) -> Path:
    """Build `recipe` with mmdebstrap from the code at `rev`; returns its record (tool renamed)."""
    with tempfile.TemporaryDirectory(prefix="diskimages-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
        try:
            env = {**os.environ, "PYTHONPATH": str(tree / "lib"), "DISKIMAGES_RECIPES": str(tree / "recipes")}
            for run_out in ([out.parent / f"{out.name}-warmup" / "baseline"] if warm else []) + [out / "baseline"]:
                r = subprocess.run([sys.executable, "-c", BASELINE_BUILD, str(recipe), str(run_out)], env=env,
                                   capture_output=True, text=True, check=True)
            made = json.loads(r.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)
    rec = json.loads(Path(made["record"]).read_text())
    rec["tool"] = f"mmdebstrap@{rev}"
    dest = out / f"{rec['recipe']}.mmdebstrap@{rev}.json"
    dest.write_text(json.dumps(rec, indent=2))
    Path(made["record"]).unlink()
    return dest


def _as_round(record: Path, run: int) -> None:
    """Keep each round's record: TOOL becomes "TOOL round N" (its own row in the table)."""
    rec = json.loads(record.read_text())
    rec["tool"] = f"{rec['tool']} round {run}"
    record.with_name(record.name.replace(".json", f".round{run}.json")).write_text(json.dumps(rec, indent=2))
    record.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", action="append", help="recipes to build, as NAME or NAME:TOOL,TOOL "
                                                       "(default: debian-13-xfce)")
    ap.add_argument("--tool", action="append", help="limit to these tools (default: every one that can)")
    ap.add_argument("--output", default="build/bench")
    ap.add_argument("--baseline", metavar="REV", help="also build with mmdebstrap from the code at this revision")
    ap.add_argument("--no-boot", action="store_true")
    ap.add_argument("--uefi", action="append", default=[], metavar="RECIPE",
                    help="also boot this recipe's images with UEFI firmware (BIOS is the table's boot)")
    ap.add_argument("--no-warmup", action="store_true", help="do not fill the tools' package caches first")
    ap.add_argument("--lean", action="store_true",
                    help="also build each recipe's lean variant (lean: true; named RECIPE-lean) with the same tools")
    ap.add_argument("--incremental", action="store_true",
                    help="also measure the incremental rebuilds of each tool that has them (mmdebstrap, mkosi): "
                         "full (keeping the package phase's tree), then with a changed hostname (the tree "
                         "restored), then unchanged (no-op: the content key matches)")
    ap.add_argument("--download-format", action="append", default=[], metavar="RECIPE",
                    help="also make the download format (raw.zst, zstd -19 --long) of this recipe's native image")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="build every tool (and the baseline) N times, interleaved; boots only the first round")
    args = ap.parse_args()
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    warm_dir = out.parent / f"{out.name}-warmup"
    uefi_rows = []
    tools_of = {}
    for spec in args.recipe or ["debian-13-xfce"]:
        rname, _, only = spec.partition(":")
        recipe = load_checked(rname)
        tools = []
        for name in (only.split(",") if only else None) or args.tool or names():
            reason = get_tool(name).cannot_build(recipe)
            if reason:
                print(f"skipped {name} for {recipe.name}: {reason}", file=sys.stderr)
            else:
                tools.append(name)
        tools_of[recipe.name] = tools
        variants = [recipe] + ([recipe.model_copy(update={"lean": True, "name": f"{recipe.name}-lean"})]
                               if args.lean else [])
        if not args.no_warmup:
            for name in tools:
                if name in CACHED:
                    print(f"warming {name}'s package cache for {recipe.name} (not measured)", file=sys.stderr)
                    build(recipe, name, warm_dir / name, progress=False)
        for variant in variants:
            for run in range(1, args.repeat + 1):
                # interleaved: every tool (and the baseline) once per round, so drift hits them alike
                for name in tools:
                    print(f"building {variant.name} with {name}" + (f" (round {run})" if args.repeat > 1 else ""),
                          file=sys.stderr)
                    try:
                        res = build(variant, name, out, progress=sys.stderr.isatty())
                    except Exception as e:      # a failed tool is a row, not the end of the benchmark
                        print(f"{name} failed: {e}", file=sys.stderr)
                        continue
                    if not args.no_boot and run == 1:
                        attach_boot(res, boot_check(res.image, res.record, screenshot_dir=out))
                        if variant.name in args.uefi:
                            u = boot_check(res.image, res.record, firmware="uefi", screenshot_dir=out / "uefi")
                            uefi_rows.append({"recipe": variant.name, "tool": name, "uefi boot ok": u.passed,
                                              "desktop s": u.milestones.get("desktop", u.milestones.get("login")),
                                              "reason": u.reason})
                    if args.repeat > 1:
                        _as_round(res.record_path, run)
                if args.baseline and variant is recipe:
                    print(f"building {variant.name} with mmdebstrap at {args.baseline}", file=sys.stderr)
                    rec = baseline(args.baseline, recipe.source, out, warm=not args.no_warmup and run == 1)
                    if args.repeat > 1:
                        _as_round(rec, run)
    dl_rows = []
    for rname in args.download_format:
        from diskimages.publish import download_file
        img = out / f"{rname}.mmdebstrap.qcow2"
        if img.is_file():
            t0 = time.monotonic()
            f = download_file(img)
            dl_rows.append({"recipe": rname, "qcow2 MiB": round(img.stat().st_size / 2**20, 1),
                            "raw.zst MiB": round(f.stat().st_size / 2**20, 1),
                            "zstd -19 --long s": round(time.monotonic() - t0, 1)})
    if dl_rows:
        print("\nthe download format of the native image\n")
        print(pd.DataFrame(dl_rows).to_string(index=False))
    if args.incremental:
        rows = []
        for rname, tools in tools_of.items():
            recipe = load_checked(rname)
            changed = recipe.model_copy(update={"hostname": "changed-host"})
            inc = out.parent / f"{out.name}-incremental"
            for name in tools:
                if get_tool(name).tree_config(new_state(recipe, inc, inc / "log")) is None:
                    continue                    # no tree after a package phase to keep (a disk tool)
                for what, r, kw in (("full, tree kept", recipe, {"rebuild": True}),
                                    ("hostname changed", changed, {"rebuild": True}),
                                    ("unchanged (no-op)", changed, {})):
                    t0 = time.monotonic()
                    res = build(r, name, inc, progress=False, incremental=True, **kw)
                    rows.append({"recipe": recipe.name, "tool": name, "build": what,
                                 "seconds": round(time.monotonic() - t0, 1),
                                 "incremental": res.record.get("incremental", "")[:70],
                                 "reused": res.record.get("reused")})
        print("\nincremental rebuilds (wall seconds, the whole build call)\n")
        print(pd.DataFrame(rows).to_string(index=False))
    df = compare.load(out)
    for rname in dict.fromkeys(df["recipe"]):
        table = compare.table(df, rname)
        cols = [c for c in ["tool", "version", "build s", "CPU s", "downloaded MB", "cache", "packages", "rootfs MB",
                            "allocated MB", "file MB", "desktop s", "boot ok"] if c in table]
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(f"\n{rname}\n")
            print(table[cols].to_string(index=False))
            print()
            print(compare.ratios(table).to_string(index=False))
            steps = compare.milestones(df, rname)
            if len(steps.columns) > 2:
                print("\nboot milestones (seconds after power-on, TCG here)\n")
                print(steps.to_string(index=False))
    if uefi_rows:
        print("\nthe same images booted with UEFI firmware (OVMF)\n")
        print(pd.DataFrame(uefi_rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
