"""The command line: `python -m diskimages COMMAND ...` (a thin layer over the library)."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT_RECIPE = "debian-13-xfce"


def _cmd_recipes(args) -> int:
    import pandas as pd
    from .recipe import RecipeError, list_recipe_names
    from .tools import load_checked
    rows = []
    for name in list_recipe_names():
        try:
            r = load_checked(name)
            rows.append({"recipe": name, "distro": r.distro, "release": r.release, "desktop": r.desktop,
                         "disk": r.disk.size, "firmware": r.disk.firmware, "description": r.description})
        except RecipeError as e:
            rows.append({"recipe": name, "description": f"INVALID: {e}"})
    _show(pd.DataFrame(rows), args)
    return 0


def _show(df, args, empty: str = "") -> None:
    """A table on the terminal, or with --json a JSON list of rows (for scripts)."""
    if getattr(args, "json", False):
        print(df.to_json(orient="records"))
    else:
        print(df.to_string(index=False) if len(df) else empty)


def _cmd_validate(args) -> int:
    from .tools import load_checked
    for f in args.recipe:
        r = load_checked(f)
        print(f"{r.source}: valid ({r.distro} {r.release}, desktop {r.desktop}, {r.digest()[:19]})")
    return 0


def _cmd_tools(args) -> int:
    from .tools import support_table, tool_table
    if args.json:
        table = support_table()
        print(tool_table().merge(table.drop(columns=["version", "produces"]), on="tool").to_json(orient="records"))
        return 0
    print(tool_table().to_string(index=False))
    print("\nWhich distribution releases each tool builds (amd64):\n")
    table = support_table()
    cols = [c for c in table.columns if c not in ("version", "produces", "installed")]
    for _, row in table[cols].iterrows():
        print(f"{row['tool']}:")
        for c in cols[1:]:
            print(f"  {c:12} {row[c]}")
    return 0


def _cmd_render(args) -> int:
    from .build import render
    files = render(args.recipe, args.tool, args.mirror)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            # a folder's entry (`mkosi.extra/`) lists what the tool would get in it
            dest = out / (f"{name.rstrip('/')}.contents.txt" if name.endswith("/") else name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            print(dest)
    else:
        for name, text in files.items():
            print(f"### {name}\n{text}")
    return 0


def _cmd_check(args) -> int:
    from .preflight import failed, check
    from .tools import get_tool
    for t in args.tool or []:
        get_tool(t)             # an unknown tool is an input error (exit 2), named with the allowed ones
    df = check(args.recipe, args.tool or None, mirror=args.mirror, buildable=not args.no_probe)
    if args.json:
        print(df.to_json(orient="records"))
    else:
        for (recipe, tool), rows in df.groupby(["recipe", "tool"], sort=False):
            first = rows.iloc[0]
            print(f"{recipe} x {tool}: {first['status']}")
            for r in rows.itertuples():
                if r.parser:
                    print(f"    {r.file or '-'}: {r.parser}: {r.detail[:160]}")
            if first["status"] != "not supported":
                print(f"    built here: {first['built here']}")
        pairs = df.drop_duplicates(["recipe", "tool"])
        print(f"\n{(pairs.status == 'passed').sum()} pairs passed, "
              f"{pairs.status.str.startswith('refused').sum()} refused by a parser, "
              f"{(pairs.status == 'not supported').sum()} not supported, {(pairs.status == 'not checked').sum()} "
              "not checked here")
    return 1 if failed(df) else 0


def _cmd_build(args) -> int:
    from .build import build
    res = build(args.recipe, args.tool, args.output_dir, mirror=args.mirror, compression=args.compression,
                use_cache=not args.no_cache, progress=not args.quiet, rebuild=args.rebuild,
                reuse_from=args.reuse_from, incremental=args.incremental)
    print(res.table().to_string(index=False))
    print(f"image:  {res.image}\nrecord: {res.record_path}\nlog:    {res.log}")
    if args.boot:
        return _boot(res.image, res.record, args, build_result=res)
    return 0


def _boot(image: Path, record: dict | None, args, build_result=None) -> int:
    from .boot import boot_check
    keep = getattr(args, "keep", False)
    result = boot_check(image, record=record, firmware=args.firmware, timeout=args.timeout,
                        screenshot_dir=Path(args.screenshots) if args.screenshots else None,
                        backend="libvirt" if keep else args.backend, keep=keep, name=getattr(args, "name", None),
                        progress=not getattr(args, "quiet", False))
    if build_result is not None:
        from .build import attach_boot
        attach_boot(build_result, result)
    print(f"backend {result.backend}, {result.firmware}, {result.accel} ({result.accel_reason})")
    print(result.table().to_string(index=False))
    if result.screenshot:
        print(f"screenshot: {result.screenshot}")
    if not result.passed:
        print(f"boot check failed: {result.reason}", file=sys.stderr)
        return 1
    print(f"boot check passed: {result.reason}")
    if result.kept:
        print(f"VM {result.vm_name} is running\n  IP:      {result.ip}\n"
              f"  SSH:     python -m diskimages ssh {result.vm_name} [-- COMMAND]\n"
              f"  display: {result.vnc} (any VNC viewer)\n"
              f"  stop:    python -m diskimages stop {result.vm_name}")
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify
    v = verify(args.image, mirror=args.mirror, progress=not args.quiet,
               work_dir=Path(args.work_dir) if args.work_dir else None)
    print(v.table().to_string(index=False))
    print(f"{v.outcome}: {v.reason}")
    for line in v.details[:40]:
        print(f"  {line}")
    return v.exit_code


def _cmd_vms(args) -> int:
    import pandas as pd
    from .vm import list_vms
    rows = [{k: v.get(k) for k in ("name", "state", "ip", "vnc", "image")} for v in list_vms()]
    _show(pd.DataFrame(rows, columns=["name", "state", "ip", "vnc", "image"]), args, "no VMs started by diskimages")
    return 0


def _cmd_ssh(args) -> int:
    from .vm import get_vm, ssh_run
    v = get_vm(args.name)
    if v["state"] != "running":
        print(f"error: VM {args.name} is {v['state']}", file=sys.stderr)
        return 2
    command = " ".join(args.command[1:] if args.command[:1] == ["--"] else args.command)
    r = ssh_run(Path(v["key"]), v["ip"], command or "exec $SHELL -l", timeout=None if not command else 3600,
                tty=not command)
    if command:
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
    return r.returncode


def _cmd_stop(args) -> int:
    from .vm import stop
    stopped = stop(args.name)
    print(f"stopped {args.name}" + (f"; also stopped what diskimages had started: {', '.join(stopped)}"
                                    if stopped else ""))
    return 0


def _cmd_boot(args) -> int:
    image = Path(args.image)
    rec_path = image.with_suffix(".json")
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    return _boot(image, record, args)


def _cmd_gc(args) -> int:
    from .reaper import reap
    from .trees import prune
    done = reap() + prune(args.trees_max_days, int(args.trees_max_gib * (1 << 30)))
    for line in done:
        print(line)
    print(f"gc: {len(done)} thing(s) cleaned up" if done else
          "gc: nothing left by killed commands, no cached tree too old or over the limit")
    return 0


def _cmd_matrix(args) -> int:
    from .compare import gitlab_pipeline, matrix
    if args.format == "gitlab":
        print(gitlab_pipeline(args.recipe or None, args.tool or None), end="")
    else:
        print(json.dumps(matrix(args.recipe or None, args.tool or None)))
    return 0


def _cmd_vbrepo(args) -> int:
    from .tools.virt_builder import write_repo
    index = write_repo(args.directory, args.image)
    print(f"index: {index} (checked by virt-index-validate)\n"
          f"use:   virt-builder --source {index.resolve().as_uri()} --no-check-signature --list")
    return 0


def _cmd_docs(args) -> int:
    from .docs import build_site
    index = build_site(args.output, args.results, build_recipe=args.build_recipe, tool=args.tool)
    print(f"site: {index}")
    return 0


def _repository(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?/[a-z0-9]+([._/-][a-z0-9]+)*", text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r} is not allowed (allowed: a registry host and repository, "
                                         "e.g. ghcr.io/owner/images, no tag)")
    return text


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not allowed (allowed: a number, 0 or more)")
    return value


def _zstd_level(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,2}", text) or not 1 <= int(text) <= 19:
        raise argparse.ArgumentTypeError(f"{text[:20]!r} is not allowed (allowed: 1 to 19)")
    return int(text)


def _cmd_push(args) -> int:
    from .publish import is_embedded, push, registry_for
    with registry_for(args.ref, args.storage) as ref:
        res = push(args.image, ref, extra_tags=tuple(args.tag or ()), plain_http=args.plain_http or None,
                   progress=sys.stderr.isatty(), download_format=args.download_format, zstd_level=args.zstd_level)
    mb = res.bytes / (1 << 20)
    pinned = f"{args.ref.rsplit(':', 1)[0]}@{res.digest}" if is_embedded(args.ref) else res.pinned
    where = f" (embedded registry, storage {args.storage})" if is_embedded(args.ref) else ""
    print(f"pushed {args.image} ({mb:.1f} MiB in {res.seconds:.1f} s) to {args.ref}{where}\ndigest {res.digest}\n"
          f"pull:  python -m diskimages pull {pinned} DIR")
    return 0


def _cmd_pull(args) -> int:
    from .publish import pull, registry_for
    with registry_for(args.ref, args.storage) as ref:
        res = pull(ref, args.directory, plain_http=args.plain_http or None, progress=sys.stderr.isatty(),
                   force=args.force)
    for f in res.files:
        print(f)
    return 0


def _cmd_blob_url(args) -> int:
    from .publish import blob_url, registry_for
    from .publish import is_embedded
    with registry_for(args.ref, args.storage) as ref:
        print(blob_url(ref, plain_http=args.plain_http or None).explain())
    if is_embedded(args.ref):
        print("(the embedded registry stopped with this command: keep one running with "
              "`python -m diskimages registry serve`, and use its HOST:PORT in the reference)")
    return 0


def _cmd_mirror(args) -> int:
    from .publish import mirror
    digest = mirror(args.src, args.dst, plain_http=args.plain_http or None, progress=sys.stderr.isatty())
    print(f"mirrored {args.src} -> {args.dst}\ndigest {digest} (unchanged)")
    return 0


def _cmd_tags(args) -> int:
    from .publish import registry_for, tags
    with registry_for(args.repo, args.storage) as repo:
        df = tags(repo, plain_http=args.plain_http or None)
    _show(df, args, "no tags")
    return 0


def _cmd_registry(args) -> int:
    from .localregistry import LocalRegistry
    LocalRegistry(args.storage, port=args.port).serve_forever()
    return 0


def _add_registry_opts(p) -> None:
    p.add_argument("--plain-http", action="store_true",
                   help="use HTTP instead of HTTPS (default only for registries on 127.0.0.1/localhost)")
    p.add_argument("--storage", default="build/registry",
                   help="storage of the embedded registry used for references without a host (default: %(default)s)")


def _add_boot_opts(p) -> None:
    p.add_argument("--firmware", choices=["bios", "uefi"], help="default: from the build record, else bios")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default 240 console, 600 desktop)")
    p.add_argument("--screenshots", metavar="DIR", help="where to save screenshots (default: beside the image)")
    p.add_argument("--backend", choices=["auto", "libvirt", "qemu"], default="auto",
                   help="libvirt (libvirt-python; SSH checks) or QEMU directly; auto: libvirt when installed")


def parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="diskimages", description=__doc__)
    ap.add_argument("--version", action="version", version=f"diskimages {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("recipes", help="list the recipes under recipes/")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.set_defaults(func=_cmd_recipes)
    p = sub.add_parser("validate", help="check recipe files; errors name the file, the field and what is allowed")
    p.add_argument("recipe", nargs="+", help="recipe name or YAML file")
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("tools", help="the build tools, installed or not, with versions and what each builds")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.set_defaults(func=_cmd_tools)
    p = sub.add_parser("check", help="render each tool's configuration for recipes and run the tools' own parsers "
                                      "on it (exit 1 when one refuses), and say which pairs this host builds")
    p.add_argument("recipe", nargs="+", help="recipe name or YAML file")
    p.add_argument("--tool", action="append", help="only this tool (repeatable; default: every tool)")
    p.add_argument("--mirror", help="the distribution's mirror (default: the host's sources, else the tool's)")
    p.add_argument("--no-probe", action="store_true", help="do not ask the mirrors whether this host reaches them")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("render", help="print (or write) the native config/command a tool runs for a recipe")
    p.add_argument("recipe")
    p.add_argument("--tool", default="mmdebstrap")
    p.add_argument("--mirror")
    p.add_argument("-o", "--output", help="write the files to this folder")
    p.set_defaults(func=_cmd_render)
    p = sub.add_parser("build", help="build an image: IMAGE, JSON record and log in the output folder")
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE)
    p.add_argument("--tool", default="mmdebstrap")
    p.add_argument("-o", "--output-dir", default="build")
    p.add_argument("--mirror", help="package mirror URL (default: the build host's own package sources when it "
                                    "runs the recipe's distribution, else the tool's default)")
    p.add_argument("--compression", choices=["zstd", "zlib", "none"])
    p.add_argument("--no-cache", action="store_true", help="do not reuse or keep downloaded packages")
    p.add_argument("--rebuild", action="store_true", help="build even when the image in the output folder has "
                                                          "the same content key (recipe, tool, configuration, "
                                                          "resolved packages)")
    p.add_argument("--incremental", action="store_true",
                   help="keep the tree after the package phase (a zstd tarball in ~/.cache/diskimages/trees) and "
                        "restore it when only users, files, hostname, scripts, services, locale, disk or output "
                        "changed (mmdebstrap; mkosi through its own --incremental)")
    p.add_argument("--reuse-from", type=_repository, metavar="HOST/REPO",
                   help="pull the image published there with the same content key instead of building it (every "
                        "push tags it ck-KEY); build when there is none")
    p.add_argument("--boot", action="store_true", help="boot-check the image after building")
    p.add_argument("-q", "--quiet", action="store_true")
    _add_boot_opts(p)
    p.set_defaults(func=_cmd_build)
    p = sub.add_parser("verify", help="rebuild an image (file or HOST/REPO:TAG) from its recipe and the exact "
                                      "packages of its manifest: exit 0 when the sha256 is the same, 1 when it "
                                      "differs (with diffoscope's account), 3 when it cannot be verified here "
                                      "(the reason names the recipe, tool or packages that moved)")
    p.add_argument("image", metavar="IMAGE_OR_REF")
    p.add_argument("--mirror", help="package mirror URL (a snapshot of the archive from the build's day verifies "
                                    "an image whose packages have since moved)")
    p.add_argument("--work-dir", help="where the rebuild happens (default: the system's temporary folder)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("boot", help="boot-check an image: exit 0 when it reached its login prompt/desktop")
    p.add_argument("image")
    _add_boot_opts(p)
    p.add_argument("--keep", action="store_true", help="leave the VM running (libvirt) and print how to reach it")
    p.add_argument("--name", help="name of the kept VM (default: diskimages-RECIPE-XXXXXX)")
    p.set_defaults(func=_cmd_boot)
    p = sub.add_parser("gc", help="end and remove what killed commands left (processes, VMs, daemons, "
                                  "loop devices, work folders; qemu.conf restored)")
    p.add_argument("--trees-max-days", type=_non_negative, default=14, metavar="DAYS",
                   help="remove cached trees (build --incremental) unused this long (default 14)")
    p.add_argument("--trees-max-gib", type=_non_negative, default=20, metavar="GIB",
                   help="then the least recently used until the cached trees fit (default 20)")
    p.set_defaults(func=_cmd_gc)
    p = sub.add_parser("vms", help="the VMs diskimages started and left running")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.set_defaults(func=_cmd_vms)
    p = sub.add_parser("ssh", help="ssh into a kept VM as root; with -- COMMAND, run it and exit with its status")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_ssh)
    p = sub.add_parser("stop", help="destroy a kept VM and remove its disk copy")
    p.add_argument("name")
    p.set_defaults(func=_cmd_stop)
    p = sub.add_parser("matrix", help="the CI job matrix (JSON) of the recipe x tool pairs the tools can build")
    p.add_argument("--recipe", action="append", help="limit to these recipes (repeatable)")
    p.add_argument("--tool", action="append", help="limit to these tools (repeatable)")
    p.add_argument("--format", choices=["github", "gitlab"], default="github",
                   help="github: strategy.matrix JSON; gitlab: a child pipeline (YAML) with one job per pair")
    p.set_defaults(func=_cmd_matrix)
    p = sub.add_parser("virt-builder-repo", help="publish built images as a virt-builder template repository")
    p.add_argument("directory", help="where the index and the xz templates go (serve it over HTTP, or file://)")
    p.add_argument("image", nargs="+", help="built images (their JSON records go into the notes)")
    p.set_defaults(func=_cmd_vbrepo)
    p = sub.add_parser("docs", help="execute the notebooks and render them with a landing page (HTML site)")
    p.add_argument("--results", default="build/compare", help="records (and images) to compare and publish")
    p.add_argument("--output", default="site")
    p.add_argument("--build-recipe", help="build this recipe for the build page when no executed one exists")
    p.add_argument("--tool", default="mmdebstrap")
    p.set_defaults(func=_cmd_docs)
    p = sub.add_parser("push", help="push an image (and its JSON record) as an OCI artifact",
                       description="REF: HOST/REPO:TAG (credentials from DISKIMAGES_REGISTRY_USER/_PASSWORD or "
                                   "~/.docker/config.json), or REPO:TAG for the embedded local registry")
    p.add_argument("image")
    p.add_argument("ref")
    p.add_argument("--tag", action="append", help="also tag it so (repeatable)")
    p.add_argument("--download-format", choices=["raw.zst"],
                   help="also push the image in this download format (raw.zst: the raw disk, zstd with long-distance "
                        "matching; `zstd -d` unpacks it), made beside the image once")
    p.add_argument("--zstd-level", type=_zstd_level, default=19, metavar="1-19",
                   help="zstd level of the download format (default 19: the smallest, and the slowest)")
    _add_registry_opts(p)
    p.set_defaults(func=_cmd_push)
    p = sub.add_parser("pull", help="download an artifact's files, each verified against its digest (resumable)")
    p.add_argument("ref")
    p.add_argument("directory")
    p.add_argument("--force", action="store_true", help="replace existing files of other content")
    _add_registry_opts(p)
    p.set_defaults(func=_cmd_pull)
    p = sub.add_parser("blob-url", help="a plain download URL for an artifact's disk (or the curl command that works)")
    p.add_argument("ref")
    _add_registry_opts(p)
    p.set_defaults(func=_cmd_blob_url)
    p = sub.add_parser("mirror", help="copy an artifact to another registry/repository, digest unchanged")
    p.add_argument("src")
    p.add_argument("dst")
    _add_registry_opts(p)
    p.set_defaults(func=_cmd_mirror)
    p = sub.add_parser("tags", help="a repository's tags with their annotations")
    p.add_argument("--json", action="store_true", help="JSON rows instead of a table")
    p.add_argument("repo")
    _add_registry_opts(p)
    p.set_defaults(func=_cmd_tags)
    p = sub.add_parser("registry", help="run the embedded registry: registry serve [--storage DIR] [--port N]")
    p.add_argument("action", choices=["serve"])
    p.add_argument("--storage", default="build/registry")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=_cmd_registry)
    return ap


def main(argv=None) -> int:
    from .errors import DiskImagesError
    from .registry import printable
    from .runner import Interrupted, signals_as_exceptions
    args = parser().parse_args(argv)
    try:
        with signals_as_exceptions():
            return args.func(args)
    except DiskImagesError as e:
        # one line, and what a registry or a recipe sent is never printed raw (terminal escapes)
        print(f"error: {printable(str(e).replace(chr(10), ' '))}", file=sys.stderr)
        return e.exit_code
    except (PermissionError, FileNotFoundError, KeyError, ValueError) as e:
        # the same kinds of bad input, found by the standard library or a dependency
        if isinstance(e, KeyError):
            e = e.args[0]
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`... | head`): nothing left to say to it
        sys.stderr.close()
        return 0
    except (KeyboardInterrupt, Interrupted) as e:
        print(f"interrupted: {e or 'Ctrl-C'}; nothing was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
