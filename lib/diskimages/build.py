"""One build: recipe x tool -> image file + JSON measurement record + log, all in the output folder.

Phases: bootstrap (the tool), customize (the recipe, inside the image), assemble (bootable raw disk),
compress (final format). The image appears under its final name only when complete; the work folder is
removed on success, failure and interruption alike.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import customize, disk, measure
from .chroot import mounts_under
from .mirror import choose_mirror
from .progress import Progress
from .recipe import Recipe, load_recipe
from .runner import signals_as_exceptions
from .tools import BuildContext, Tool, ToolUnavailable, get_tool

PHASES = ("bootstrap", "customize", "assemble", "compress")


def phases_of(tool: Tool) -> tuple[str, ...]:
    """The phases a build with this tool goes through (a disk tool's own run is one 'build' phase)."""
    if tool.produces == "disk":
        return ((tool.prepare_phase,) if tool.prepare_phase else ()) + ("build", "compress")
    if tool.applies_recipe:
        return ("bootstrap", "assemble", "compress")
    return PHASES


WORK_PREFIX = ".work-"


@dataclass
class BuildResult:
    image: Path
    record_path: Path
    log: Path
    record: dict[str, Any]

    def table(self):
        import pandas as pd
        return measure.summary_table(pd.DataFrame([measure.flatten(self.record)]))


def artifact_paths(output_dir: Path, recipe: Recipe, tool: Tool) -> tuple[Path, Path, Path]:
    stem = f"{recipe.name}.{tool.name}"
    ext = "qcow2" if recipe.output.format == "qcow2" else "raw"
    return output_dir / f"{stem}.{ext}", output_dir / f"{stem}.json", output_dir / f"{stem}.log"


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to walk into a tree with mounts under it (which would delete the host's files)."""
    if not path.exists():
        return
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"refusing to remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path)


def reap_stale_work(output_dir: Path) -> list[Path]:
    """Remove work folders of builds whose process is gone (killed with SIGKILL, power loss)."""
    removed = []
    for d in output_dir.glob(WORK_PREFIX + "*"):
        try:
            pid = int(d.name.rsplit("-", 1)[-1])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            remove_tree(d)
            removed.append(d)
    for p in output_dir.glob(".*.partial"):
        pid_owner = p.name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        if not pid_owner.isdigit() or not Path(f"/proc/{pid_owner}").exists():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def prepare(recipe: str | Path | Recipe, tool: str = "mmdebstrap",
            compression: Optional[str] = None) -> tuple[Recipe, Tool]:
    """The recipe (with a compression override) and the tool, or a clear error if the tool cannot build it."""
    recipe = load_recipe(recipe)
    if compression:
        recipe = recipe.model_copy(update={"output": recipe.output.model_validate(
            {**recipe.output.model_dump(), "compression": compression})})
    t = get_tool(tool)
    reason = t.unavailable_reason(recipe)
    if reason:
        raise ToolUnavailable(f"{tool} cannot build {recipe.name}: {reason}")
    refused = t.refusals(recipe)
    if refused:
        raise ToolUnavailable("\n".join(refused))
    return recipe, t


def render(recipe: str | Path | Recipe, tool: str = "mmdebstrap", mirror: Optional[str] = None) -> dict[str, str]:
    """The native configuration/command the tool would run for this recipe (no build)."""
    recipe = load_recipe(recipe)
    t = get_tool(tool)
    ctx = BuildContext(recipe, Path("WORK"), Path("LOG"), choose_mirror(recipe.distro, mirror))
    return t.render(ctx)


def build(recipe: str | Path | Recipe, tool: str = "mmdebstrap", output_dir: str | Path = "build",
          mirror: Optional[str] = None, compression: Optional[str] = None, use_cache: bool = True,
          progress: bool = True, listener=None) -> BuildResult:
    """Build `recipe` with `tool` into `output_dir`. `listener(event)` gets the progress events (see Progress)."""
    recipe, t = prepare(recipe, tool, compression)
    if os.geteuid() != 0:
        raise PermissionError("building an image needs root (the tools chroot and keep file ownership): "
                              "run with sudo")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    reap_stale_work(output_dir)
    final, record_path, log = artifact_paths(output_dir, recipe, t)
    log.write_text("")
    work = output_dir / f"{WORK_PREFIX}{recipe.name}.{t.name}-{os.getpid()}"
    partial = output_dir / f".{final.name}-{os.getpid()}.partial"
    mirror_choice = choose_mirror(recipe.distro, mirror)
    timer = measure.PhaseTimer()
    started = _dt.datetime.now(_dt.timezone.utc)
    bar = Progress(phases_of(t), enabled=progress, title=f"{recipe.name} / {t.name}", listener=listener)
    ctx = BuildContext(recipe, work, log, mirror_choice, use_cache, on_line=bar.line)
    stats: dict[str, Any] = {}
    with signals_as_exceptions():
        try:
            work.mkdir()
            rootfs, raw = work / "rootfs", work / "disk.raw"
            if t.produces == "disk":
                if t.prepare_phase:
                    with timer.phase(t.prepare_phase), bar.phase(t.prepare_phase):
                        t.prepare(ctx)
                with timer.phase("build"), bar.phase("build"):
                    info = t.build_disk(ctx, raw)
                stats.update(packages=info.packages, rootfs_bytes=info.rootfs_bytes, kernel=info.kernel)
                root_uuid = info.root_uuid
            else:
                with timer.phase("bootstrap"), bar.phase("bootstrap"):
                    t.bootstrap(ctx, rootfs)
                stats["packages"] = _count_packages(rootfs)
                if not t.applies_recipe:
                    with timer.phase("customize"), bar.phase("customize"):
                        customize.apply(recipe, rootfs, log=log, on_line=bar.line)
                stats["rootfs_bytes"] = measure.tree_bytes(rootfs)
                with timer.phase("assemble"), bar.phase("assemble"):
                    root_uuid = disk.assemble(recipe, rootfs, raw, work, log=log).root_uuid
                    stats["kernel"] = disk.kernel_version(rootfs)
                    shutil.rmtree(rootfs)  # free the space before the compressed copy is written
            stats["allocated_bytes"] = measure.allocated_bytes(raw)
            with timer.phase("compress"), bar.phase("compress"):
                disk.convert(raw, partial, recipe.output.format, recipe.output.compression, log=log)
                subprocess.run(["qemu-img", "check", "-q", str(partial)], check=recipe.output.format == "qcow2",
                               capture_output=True)
                sha = measure.sha256_file(partial)
            os.replace(partial, final)
        finally:
            bar.close()
            partial.unlink(missing_ok=True)
            remove_tree(work)

    record = {
        "kind": "diskimages.build", "schema": 1,
        "recipe": recipe.name, "recipe_digest": recipe.digest(), "recipe_file": str(recipe.source or ""),
        "distro": recipe.distro, "release": recipe.release, "architecture": recipe.architecture,
        "desktop": recipe.desktop, "tool": t.name, "tool_version": t.version(), "tool_label": t.label(),
        "assembly": disk.ASSEMBLY_METHOD if t.produces == "rootfs" else t.name,
        "mirror_origin": mirror_choice.origin, "cache": ctx.stats.get("cache", "off"),
        "host": {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "started": started.isoformat(timespec="seconds"),
        "phases": timer.phases, "total_wall_s": timer.total_wall,
        "total_cpu_s": round(sum(p["cpu_s"] for p in timer.phases.values()), 2),
        "downloaded_bytes": ctx.stats.get("downloaded_bytes"),
        "packages": stats["packages"], "rootfs_bytes": stats["rootfs_bytes"],
        "virtual_bytes": measure.qemu_img_info(final)["virtual-size"], "allocated_bytes": stats["allocated_bytes"],
        "file_bytes": final.stat().st_size, "sha256": sha,
        "image": final.name, "format": recipe.output.format, "compression": recipe.output.compression,
        "firmware": recipe.disk.firmware, "kernel": stats["kernel"], "root_uuid": root_uuid,
        "host_workarounds": ctx.stats.get("host_workarounds", []),
        "base": ctx.stats.get("base"), "sparsified": ctx.stats.get("sparsified"),
        "autologin_uid": recipe.user_uid(recipe.autologin) if recipe.autologin else None,
        "expect": "desktop" if recipe.desktop != "none" else "login",
    }
    measure.write_record(record, record_path)
    return BuildResult(final, record_path, log, record)


def attach_boot(result: BuildResult, boot_result) -> None:
    """Store a boot check's outcome in the build's JSON record."""
    result.record["boot"] = boot_result.as_record()
    measure.write_record(result.record, result.record_path)


def phase_table(record: dict[str, Any]):
    import pandas as pd
    df = pd.DataFrame(record["phases"]).T
    df.loc["total"] = df.sum()
    return df.rename(columns={"wall_s": "wall s", "cpu_s": "CPU s"})


def _count_packages(rootfs: Path) -> int:
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f", "${db:Status-Abbrev}\n"],
                         capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("ii"))
