#!/usr/bin/env python3
"""Benchmark: the same recipe through every installed build tool, with a shared warm package cache (so the
network does not decide the ranking), each image boot-checked; prints the comparison table and the ratios to
the best tool. Needs root.

    sudo .venv/bin/python bench/compare.py --recipe debian-12-xfce --output build/bench
"""
import argparse
import sys
from pathlib import Path

import pandas as pd

from diskimages import compare
from diskimages.boot import boot_check
from diskimages.build import attach_boot, build
from diskimages.recipe import load_recipe
from diskimages.tools import TOOLS, get_tool


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="debian-12-xfce")
    ap.add_argument("--tool", action="append", help="limit to these tools (default: every installed one)")
    ap.add_argument("--output", default="build/bench")
    ap.add_argument("--no-boot", action="store_true")
    ap.add_argument("--no-warmup", action="store_true", help="do not fill the package cache first")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    out = Path(args.output)
    tools = []
    for name in args.tool or sorted(TOOLS):
        reason = get_tool(name).unavailable_reason(recipe)
        if reason:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        else:
            tools.append(name)
    if not args.no_warmup and "mmdebstrap" in tools:
        # fills the shared cache (mmdebstrap and mkosi read it; debos has none); not measured
        build(recipe, "mmdebstrap", out / "warmup", progress=False)
    for name in tools:
        print(f"building {recipe.name} with {name}", file=sys.stderr)
        try:
            res = build(recipe, name, out, progress=sys.stderr.isatty())
        except Exception as e:      # a failed tool is a row, not the end of the benchmark
            print(f"{name} failed: {e}", file=sys.stderr)
            continue
        if not args.no_boot:
            attach_boot(res, boot_check(res.image, res.record, screenshot_dir=out))
    df = compare.load(out)
    table = compare.table(df, recipe.name)
    cols = [c for c in ["tool", "version", "build s", "CPU s", "downloaded MB", "packages", "rootfs MB",
                        "allocated MB", "file MB", "desktop s", "boot ok"] if c in table]
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table[cols].to_string(index=False))
        print()
        print(compare.ratios(table).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
