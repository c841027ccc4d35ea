"""One build: recipe x tool -> image file + JSON measurement record + log, all in the output folder.

Phases: bootstrap (the tool), customize (the recipe, inside the image), assemble (bootable raw disk),
compress (final format). The image appears under its final name only when complete; the work folder is
removed on success, failure and interruption alike.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import customize, disk, distros, measure, reaper, scratch
from .chroot import mounts_under
from .progress import Progress
from .recipe import Recipe, RecipeError
from .runner import signals_as_exceptions
from .tools import (Accel, BaseImage, BuildState, Tool, ToolUnavailable, get_tool, load_checked, new_state,
                    refuse)
from .errors import Failure

COMPRESS = "compress"
BASE_TOOL = "mmdebstrap"     # the native builder makes the VM builders' cloud base image


def phases_of(tool: Tool, distro=None) -> tuple[str, ...]:
    """The phases a build with this tool goes through (for this distribution, when given)."""
    return tool.phases(distro) + (COMPRESS,)


WORK_PREFIX = ".work-"
DISK_PREFIX = "diskimages-disk-"     # a raw disk being assembled in memory (scratch.choose_disk)


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
        raise Failure(f"refusing to remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path)


def _fetch_published(repo: str, key: str, final: Path, record_path: Path, progress: bool) -> Optional[dict]:
    """The image with this content key pulled from `repo` into place (disk, record, package manifest), with a
    record that says where it came from; None when `repo` has none."""
    import time
    from . import publish
    t0 = time.monotonic()
    from .registry import RegistryError
    spdx = manifest_path(final)
    try:
        got = publish.fetch_by_content_key(repo, key, {final.name: final, record_path.name: record_path,
                                                       spdx.name: spdx}, progress=progress)
    except (RegistryError, OSError) as e:
        # a registry that refuses, fails or answers wrongly costs a build, never the build
        print(f"{final.name}: not reused from {repo}: {str(e)[:300]}: building", flush=True)
        return None
    if got is None:
        if progress:
            print(f"{final.name}: {repo} has no image with content key {key[:19]}...: building", flush=True)
        return None
    pinned, rec = got
    record = {**rec, "reused": True, "reused_image": final.name, "reused_from": pinned,
              "reused_check_s": round(time.monotonic() - t0, 2), "image_mtime_ns": final.stat().st_mtime_ns}
    measure.write_record(record, record_path)
    if progress:
        print(f"{final.name}: pulled from {pinned} (same content key; {record['reused_check_s']} s)", flush=True)
    return record


def _count_downloads(state, log: Path) -> None:
    """What the package manager says it fetched (every tool's log, whatever its cache layout) is the floor of
    `downloaded_bytes`; a cache called warm whose tool still fetched packages is said not to be kept."""
    said = state.distro.downloaded_in_log(log.read_text(errors="replace")) if log.is_file() else None
    if said is None:
        return
    total, packages = said
    state.downloaded_bytes = max(state.downloaded_bytes or 0, total)
    if packages and state.cache == "warm":
        state.cache = f"not kept: the tool fetched {packages / 1e6:.0f} MB of packages its cache does not keep"


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
    """The checked recipe (with a compression override) and the tool, or a clear error if the tool cannot
    build it here."""
    recipe = load_checked(recipe)
    if compression:
        recipe = recipe.model_copy(update={"output": recipe.output.model_validate(
            {**recipe.output.model_dump(), "compression": compression})})
    t = get_tool(tool)
    why = refuse(recipe, t)
    if why:
        raise ToolUnavailable(why)
    customize.password_env_vars(recipe)      # a password variable that is not set stops the build here
    return recipe, t


def render(recipe: str | Path | Recipe, tool: str = "mmdebstrap", mirror: Optional[str] = None) -> dict[str, str]:
    """The native configuration/command the tool would run for this recipe (no build; the tool need not be
    installed, but it must support the recipe's distribution, release and architecture)."""
    recipe = load_checked(recipe)
    t = get_tool(tool)
    why = refuse(recipe, t, installed=False)
    if why:
        raise ToolUnavailable(why)
    return t.render(new_state(recipe, Path("WORK"), Path("LOG"), mirror))


def check_mirror(state: BuildState, timeout: float = 10.0) -> None:
    """Refuse a build whose package mirror does not answer, before any work starts."""
    import urllib.error
    import urllib.request
    url = state.distro.mirror_probe_url(state.mirror, state.release)
    if not url:
        return
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise RecipeError(state.recipe.source or state.recipe.name, "release",
                          f"{state.distro.pretty_name} {state.release.codename} cannot be built from this host: "
                          f"its mirror ({state.mirror.origin}) does not answer for {url}: {reason} "
                          "(allowed: a release whose mirror answers; give one with --mirror)") from None


def content_key(recipe: Recipe, tool: Tool, mirror: Optional[str] = None) -> tuple[Optional[str], dict]:
    """The build's content key: sha256 over the recipe digest (its data, files and scripts), the tool and its
    version, the tool's rendered configuration, and the resolved package set (exact versions, as the package
    manager would install them from the mirror's current index, resolved without building).
    (None, {why}) where the distribution's package set cannot be resolved here."""
    import hashlib
    import json
    from . import __version__
    state = new_state(recipe, Path("WORK"), Path("LOG"), mirror)
    d = state.distro
    try:
        resolved = d.resolve(d.packages_for(recipe), state.release, recipe.architecture, state.mirror)
    except (NotImplementedError, RuntimeError, OSError) as e:
        return None, {"content_key_missing": str(e).splitlines()[0][:200]}
    config = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in sorted(tool.render(state).items())}
    data = {"recipe": recipe.digest(), "tool": tool.name, "tool_version": tool.version(), "config": config,
            "packages": resolved, "diskimages": __version__}
    key = "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    info = {"content_key": key, "resolved_packages": len(resolved), "_resolved": resolved}
    tree = tool.tree_config(state)
    if tree is not None:
        # the tree after the package phase: the same tool, configuration and packages whatever else changed
        info["tree_key"] = "sha256:" + hashlib.sha256(json.dumps(
            {"tool": tool.name, "tool_version": data["tool_version"], "tree": tree, "packages": resolved,
             "diskimages": __version__}, sort_keys=True).encode()).hexdigest()
    secret = next((i for i, u in enumerate(recipe.users) if u.password_env), None)
    if secret is not None:
        # the password is not in the key (a public annotation): the same key would name images with other
        # passwords, so such an image is never reused, and its password hash has a random salt
        del info["content_key"]
        info["content_key_missing"] = (f"users.{secret}.password_env: a password from the environment is not part "
                                       "of the key (built every time, never reused, not bit-identical)")
        return None, info
    return key, info


def _reusable(final: Path, record_path: Path, key: str) -> Optional[dict]:
    """The record of the image already in the output folder when it was built with this content key and is
    still the file that build wrote (size and modification time as recorded)."""
    import json
    try:
        rec = json.loads(record_path.read_text())
        st = final.stat()
    except (OSError, ValueError):
        return None
    if rec.get("content_key") != key or rec.get("file_bytes") != st.st_size or \
            rec.get("image_mtime_ns") != st.st_mtime_ns:
        return None
    if rec.get("manifest") and not (final.parent / str(rec["manifest"])).is_file():
        return None
    return rec


def build(recipe: str | Path | Recipe, tool: str = "mmdebstrap", output_dir: str | Path = "build",
          mirror: Optional[str] = None, compression: Optional[str] = None, use_cache: bool = True,
          progress: bool = True, listener=None, rebuild: bool = False,
          reuse_from: Optional[str] = None, incremental: bool = False) -> BuildResult:
    """Build `recipe` with `tool` into `output_dir`. `listener(event)` gets the progress events (see Progress).
    An image already there with the same content key (`content_key`) is reused, not rebuilt, unless
    `rebuild`; its record then says `reused`. `reuse_from` (HOST/REPO): an image published there with the same
    content key is pulled (verified) instead of built; its record says `reused_from`. `incremental`: the tree
    after the package phase is kept, and restored when only other things changed (see trees.py)."""
    import time
    from . import __version__
    t_start = time.monotonic()
    recipe, t = prepare(recipe, tool, compression)
    if os.geteuid() != 0:
        raise PermissionError("building an image needs root (the tools chroot and keep file ownership): "
                              "run with sudo")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    reap_stale_work(output_dir)
    final, record_path, log = artifact_paths(output_dir, recipe, t)
    key, key_info = content_key(recipe, t, mirror)
    resolved = key_info.pop("_resolved", None)
    if key and not rebuild:
        old = _reusable(final, record_path, key)
        if old is not None:
            record = {**old, "reused": True, "reused_image": final.name,
                      "reused_check_s": round(time.monotonic() - t_start, 2)}
            measure.write_record(record, record_path)
            if progress:
                print(f"{recipe.name} / {t.name}: reused {final.name}: its content key matches "
                      f"({key[:19]}; rebuild to build it again)", flush=True)
            return BuildResult(final, record_path, log, record)
    if key and reuse_from and not rebuild:
        fetched = _fetch_published(reuse_from, key, final, record_path, progress)
        if fetched is not None:
            return BuildResult(final, record_path, log, fetched)
    work = output_dir / f"{WORK_PREFIX}{recipe.name}.{t.name}-{os.getpid()}"
    partial = output_dir / f".{final.name}-{os.getpid()}.partial"
    timer = measure.PhaseTimer()
    started = _dt.datetime.now(_dt.timezone.utc)
    bar = Progress(phases_of(t, distros.get(recipe.distro)), enabled=progress, title=f"{recipe.name} / {t.name}", listener=listener)

    @contextlib.contextmanager
    def phase(name: str):
        with timer.phase(name), bar.phase(name):
            before = state.detached_cpu_s
            try:
                yield
            finally:
                timer.detached += state.detached_cpu_s - before

    state = new_state(recipe, work, log, mirror, use_cache=use_cache, on_line=bar.line, phase=phase)
    state.content_key = key
    if key is None:
        state.reproducible = {"reproducible": False, "reproducible_why": "no content key: " +
                              key_info.get("content_key_missing", "")}
    if use_cache:
        state.package_key = key_info.get("tree_key")
    if incremental:
        state.tree_key = key_info.get("tree_key")
        state.incremental = "no tree key: " + key_info.get("content_key_missing", t.no_incremental) \
            if state.tree_key is None else "on"
    tree_base, state.scratch = scratch.choose(recipe.disk.size_bytes) if t.produces == "rootfs" else \
        (None, f"{t.name} makes the whole disk in its own work space")
    raw_base, raw_where = scratch.choose_disk(recipe.disk.size_bytes, tree_base)
    state.scratch += raw_where
    check_mirror(state)
    reaper.reap(say=True)
    log.write_text("")
    tracked = [reaper.track("path", path=str(work), what="build work folder"),
               reaper.track("path", path=str(partial), what="unfinished image")]
    with signals_as_exceptions():
        try:
            work.mkdir()
            with (reaper.temp_dir(f"{DISK_PREFIX}{recipe.name}.{t.name}-", raw_base) if raw_base
                  else contextlib.nullcontext(work)) as raw_home:
                raw = raw_home / "disk.raw"
                with (reaper.temp_dir(f"diskimages-tree-{recipe.name}.{t.name}-", tree_base) if tree_base
                      else contextlib.nullcontext(None)) as state.tree_home, _services(t, state):
                    info = t.execute(state, raw)
                allocated = measure.allocated_bytes(raw)
                _count_downloads(state, log)
                sbom = _manifest(raw, state, t, final, work)
                if resolved and sbom.get("manifest") and t.installs_as_resolved:
                    _check_resolution(resolved, work / "manifest.spdx.json", state)
                with phase(COMPRESS):
                    compressed_by = disk.convert(raw, partial, recipe.output.format, recipe.output.compression,
                                                 log=log, cluster_size=recipe.output.cluster_size,
                                                 level=recipe.output.level)
                    subprocess.run(["qemu-img", "check", "-q", str(partial)],
                                   check=recipe.output.format == "qcow2", capture_output=True)
                    sha = measure.sha256_file(partial)
            os.replace(partial, final)
            if sbom.get("manifest"):
                os.replace(work / "manifest.spdx.json", output_dir / sbom["manifest"])
        finally:
            bar.close()
            partial.unlink(missing_ok=True)
            remove_tree(work)
            for key in tracked:
                reaper.untrack(key)

    record = {
        "kind": "diskimages.build", "schema": 1,
        "recipe": recipe.name, "recipe_digest": recipe.digest(), "recipe_file": str(recipe.source or ""),
        "distro": recipe.distro, "release": recipe.release, "release_version": state.release.version,
        "architecture": recipe.architecture,
        "desktop": recipe.desktop, "tool": t.name, "tool_version": t.version(), "tool_label": t.label(),
        "diskimages_version": __version__,
        "assembly": disk.ASSEMBLY_METHOD if t.produces == "rootfs" else t.name,
        "mirror_origin": state.mirror.origin, "cache": state.cache,
        "host": {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "started": started.isoformat(timespec="seconds"),
        "phases": timer.phases, "total_wall_s": timer.total_wall,
        "total_cpu_s": round(sum(p["cpu_s"] for p in timer.phases.values()), 2),
        "downloaded_bytes": state.downloaded_bytes,
        "packages": info.packages, "rootfs_bytes": info.rootfs_bytes,
        "virtual_bytes": measure.qemu_img_info(final)["virtual-size"], "allocated_bytes": allocated,
        "file_bytes": final.stat().st_size, "sha256": sha,
        "image": final.name, "format": recipe.output.format, "compression": recipe.output.compression,
        "cluster_size": recipe.output.cluster_size if recipe.output.format == "qcow2" else None,
        "compression_level": recipe.output.level if recipe.output.compression == "zstd" else None,
        "compressed_by": compressed_by,
        "firmware": recipe.disk.firmware, "lean": recipe.lean, "kernel": info.kernel, "root_uuid": info.root_uuid,
        "host_workarounds": state.host_workarounds, **sbom, **key_info, "reused": False,
        **(state.reproducible or {"reproducible": False,
                                  "reproducible_why": f"{t.name} makes the whole disk itself"}),
        **({"content_differs": "; ".join(state.content_differs)} if state.content_differs else {}),
        "incremental": state.incremental, "scratch": state.scratch, "initrd": state.initrd or None,
        "module_index": state.module_index or None,
        "image_mtime_ns": final.stat().st_mtime_ns,
        "base": state.base.as_record() if state.base else None, "sparsified": state.sparsified,
        "autologin_uid": recipe.user_uid(recipe.autologin) if recipe.autologin else None,
        "expect": "desktop" if recipe.desktop != "none" else "login",
    }
    measure.write_record(record, record_path)
    return BuildResult(final, record_path, log, record)


def manifest_table(result: "BuildResult"):
    """The image's package manifest as a table (name, version, architecture, declared licence, purl), with the
    counts in its caption; says why when the build could not write one."""
    import pandas as pd
    from . import manifest
    rec = result.record
    if not rec.get("manifest"):
        return pd.DataFrame({"manifest": [f"none: {rec.get('manifest_error', 'not written')}"]})
    df = pd.DataFrame(manifest.load(result.image.with_name(rec["manifest"])))
    shown = 25
    return df.head(shown).style.set_caption(
        f"{rec['manifest']}: {rec['manifest_packages']} packages ({min(shown, len(df))} shown), "
        f"{rec['manifest_licenses_declared']} with an SPDX licence declared") if len(df) else df


def manifest_path(image: Path) -> Path:
    """The SPDX manifest beside an image: NAME.TOOL.spdx.json for NAME.TOOL.qcow2."""
    return image.with_name(image.name.rsplit(".", 1)[0] + ".spdx.json")


def _check_resolution(resolved: list[str], manifest_file: Path, state: BuildState) -> None:
    """The tool installed what the content key was resolved to (a tool whose package phase is apt's own run of
    the same request): a package both have in other versions moved in the mirror's index between resolving and
    building, and the image is not the one its key names."""
    from . import manifest
    want = dict(x.split("=", 1) for x in resolved)
    got = {p["name"]: p["version"] for p in manifest.load(manifest_file)}
    moved = sorted(n for n in want.keys() & got.keys() if want[n] != got[n])
    if moved:
        n = moved[0]
        raise Failure(f"the {state.distro.pretty_name} mirror's index changed between resolving and building: "
                           f"{n} was resolved to {want[n]} but {got[n]} was installed"
                           + (f" (and {len(moved) - 1} more)" if len(moved) > 1 else "") +
                           "; build again to resolve against the new index")


def _manifest(raw: Path, state: BuildState, tool: Tool, final: Path, work: Path) -> dict:
    """The image's package manifest (SPDX), read from the finished disk; a build whose manifest cannot be read
    still succeeds and its record says why."""
    import time
    from . import __version__, manifest
    t0 = time.monotonic()
    try:
        info = manifest.write(raw, state.distro, state.release, work / "manifest.spdx.json", image_name=final.name,
                              creators=[f"diskimages-{__version__}", f"{tool.name}-{tool.version() or 'unknown'}"])
        info["manifest"] = manifest_path(final).name
    except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError) as e:
        return {"manifest": None, "manifest_error": str(e).splitlines()[0][:300]}
    info["manifest_s"] = round(time.monotonic() - t0, 2)
    return info


@contextlib.contextmanager
def _services(tool: Tool, state: BuildState):
    """Hand the tool what it declared it needs: the cloud base image (timed as its own phase), how VMs run
    here (KVM only after a real boot showed it works), and a libvirt connection with a network; what was
    started for it is stopped afterwards."""
    needs = tool.needs_for(state.distro)
    if "base" in needs:
        with state.phase(tool.BASE_PHASE):
            state.base = base_image(state, tool)
    if "accel" in needs:
        from .qemu import choose_accel
        kind, why = choose_accel(state.base.path if state.base else None)
        state.accel = Accel(kind, why)
    if "libvirt" not in needs:
        yield
        return
    from . import libvirt_host
    from .vm import list_vms
    use = libvirt_host.using()
    conn, how = libvirt_host.connect()
    try:
        network, _ = libvirt_host.ensure_network(conn)
        state.libvirt = libvirt_host.Session(conn, network)
        yield
    finally:
        libvirt_host.release(use)
        if how.startswith("started") and not list_vms() and not libvirt_host.others_use_it():
            libvirt_host.stop_started(conn)


def base_image(state: BuildState, tool: Tool) -> BaseImage:
    """The cloud base image of the recipe's release (built with the native builder the first time, then reused
    while its recipe is unchanged; a recipe may name another with `tools: {TOOL: {base: RECIPE}}`)."""
    import time
    from .paths import cache_dir
    d, rel = state.distro, state.release
    default = d.cloud_base_recipe.format(version=rel.version) if d.cloud_base_recipe else None
    name = state.recipe.tool_options(tool.name).get("base", default)
    if not name:
        raise ToolUnavailable(f"{tool.name} starts from a cloud base image, and {d.pretty_name} has none")
    recipe = load_checked(name)
    where = cache_dir("base", recipe.name)
    digest = recipe.digest().split(":")[1][:16]
    image = where / f"{recipe.name}.{digest}.qcow2"
    if image.is_file():
        return BaseImage(image, recipe.name, 0.0)
    t0 = time.monotonic()
    res = build(recipe, BASE_TOOL, where / "build", mirror=state.mirror.uri if state.mirror.origin == "parameter"
                else None, use_cache=state.use_cache, progress=False)
    os.replace(res.record_path, image.with_suffix(".json"))
    os.replace(res.image, image)
    shutil.rmtree(where / "build", ignore_errors=True)
    for old in where.glob(f"{recipe.name}.*"):          # earlier versions of the base recipe
        if old.name.split(".")[1] != digest:
            old.unlink()
    return BaseImage(image, recipe.name, round(time.monotonic() - t0, 1))


def attach_boot(result: BuildResult, boot_result) -> None:
    """Store a boot check's outcome in the build's JSON record."""
    result.record["boot"] = boot_result.as_record()
    measure.write_record(result.record, result.record_path)


def phase_table(record: dict[str, Any]):
    import pandas as pd
    df = pd.DataFrame(record["phases"]).T
    df.loc["total"] = df.sum()
    return df.rename(columns={"wall_s": "wall s", "cpu_s": "CPU s"})
