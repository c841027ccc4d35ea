"""The command line: `python -m diskimages COMMAND ...` (a thin layer over the library)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_recipes(args) -> int:
    import pandas as pd
    from .recipe import RecipeError, list_recipe_names, load_recipe
    rows = []
    for name in list_recipe_names():
        try:
            r = load_recipe(name)
            rows.append({"recipe": name, "distro": r.distro, "release": r.release, "desktop": r.desktop,
                         "disk": r.disk.size, "firmware": r.disk.firmware, "description": r.description})
        except RecipeError as e:
            rows.append({"recipe": name, "description": f"INVALID: {e}"})
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _cmd_validate(args) -> int:
    from .recipe import load_recipe
    status = 0
    for f in args.recipe:
        r = load_recipe(f)
        print(f"{r.source}: valid ({r.distro} {r.release}, desktop {r.desktop}, {r.digest()[:19]})")
    return status


def _cmd_tools(args) -> int:
    from .tools import tool_table
    print(tool_table().to_string(index=False))
    return 0


def _cmd_render(args) -> int:
    from .build import render
    files = render(args.recipe, args.tool, args.mirror)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(out / name)
    else:
        for name, text in files.items():
            print(f"### {name}\n{text}")
    return 0


def _cmd_build(args) -> int:
    from .build import build
    res = build(args.recipe, args.tool, args.output_dir, mirror=args.mirror, compression=args.compression,
                use_cache=not args.no_cache, progress=not args.quiet)
    print(res.table().to_string(index=False))
    print(f"image:  {res.image}\nrecord: {res.record_path}\nlog:    {res.log}")
    if args.boot:
        return _boot(res.image, res.record, args)
    return 0


def _boot(image: Path, record: dict | None, args) -> int:
    from .boot import boot_check
    result = boot_check(image, record=record, firmware=args.firmware, timeout=args.timeout,
                        screenshot_dir=Path(args.screenshots) if args.screenshots else None,
                        progress=not getattr(args, "quiet", False))
    print(result.table().to_string(index=False))
    if result.screenshot:
        print(f"screenshot: {result.screenshot}")
    if not result.passed:
        print(f"boot check failed: {result.reason}", file=sys.stderr)
        return 1
    print(f"boot check passed: {result.reason}")
    return 0


def _cmd_boot(args) -> int:
    image = Path(args.image)
    rec_path = image.with_suffix(".json")
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    return _boot(image, record, args)


def _add_boot_opts(p) -> None:
    p.add_argument("--firmware", choices=["bios", "uefi"], help="default: from the build record, else bios")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default 240 console, 600 desktop)")
    p.add_argument("--screenshots", metavar="DIR", help="where to save screenshots (default: beside the image)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diskimages", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("recipes", help="list the recipes under recipes/")
    p.set_defaults(func=_cmd_recipes)
    p = sub.add_parser("validate", help="check recipe files; errors name the file, the field and what is allowed")
    p.add_argument("recipe", nargs="+", help="recipe name or YAML file")
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("tools", help="the build tools, installed or not, with versions")
    p.set_defaults(func=_cmd_tools)
    p = sub.add_parser("render", help="print (or write) the native config/command a tool runs for a recipe")
    p.add_argument("recipe")
    p.add_argument("--tool", default="mmdebstrap")
    p.add_argument("--mirror")
    p.add_argument("-o", "--output", help="write the files to this folder")
    p.set_defaults(func=_cmd_render)
    p = sub.add_parser("build", help="build an image: IMAGE, JSON record and log in the output folder")
    p.add_argument("recipe", nargs="?", default="debian-12-xfce")
    p.add_argument("--tool", default="mmdebstrap")
    p.add_argument("-o", "--output-dir", default="build")
    p.add_argument("--mirror", help="Debian mirror URL (default: the build host's apt sources)")
    p.add_argument("--compression", choices=["zstd", "zlib", "none"])
    p.add_argument("--no-cache", action="store_true", help="do not reuse or keep downloaded packages")
    p.add_argument("--boot", action="store_true", help="boot-check the image after building")
    p.add_argument("-q", "--quiet", action="store_true")
    _add_boot_opts(p)
    p.set_defaults(func=_cmd_build)
    p = sub.add_parser("boot", help="boot-check an image in QEMU: exit 0 when it reached login/desktop")
    p.add_argument("image")
    _add_boot_opts(p)
    p.set_defaults(func=_cmd_boot)
    return ap


def main(argv=None) -> int:
    from .recipe import RecipeError
    from .runner import CommandError, Interrupted, signals_as_exceptions
    from .tools import ToolUnavailable
    args = parser().parse_args(argv)
    try:
        with signals_as_exceptions():
            return args.func(args)
    except (RecipeError, ToolUnavailable, PermissionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted: {e or 'Ctrl-C'}; nothing was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
