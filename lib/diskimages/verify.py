"""Check that an image really comes from its recipe: rebuild it from the recipe, with the exact packages its
manifest lists (the mirror's current index must still resolve to them), and compare the digests.

`verify(IMAGE_OR_REF)` takes a built image (its record NAME.TOOL.json beside it) or a published one
(HOST/REPO:TAG or @DIGEST, pulled first). The outcome is "same", "differs" (with diffoscope's account), or
"cannot verify" with the exact reason: another recipe, another tool version, packages gone from the mirror.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import measure, reaper
from .build import build, content_key, manifest_path
from .recipe import RecipeError
from .tools import get_tool, load_checked
from .errors import InputError

SAME, DIFFERS, CANNOT = "same", "differs", "cannot verify"
_SHA = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass
class Verification:
    image: str
    outcome: str
    reason: str
    recipe: str = ""
    tool: str = ""
    published_sha256: str = ""
    rebuilt_sha256: str = ""
    rebuild_s: Optional[float] = None
    details: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {SAME: 0, DIFFERS: 1}.get(self.outcome, 3)

    def table(self):
        import pandas as pd
        return pd.DataFrame([{"image": self.image, "recipe": self.recipe, "tool": self.tool, "outcome": self.outcome,
                              "published sha256": self.published_sha256[7:19],
                              "rebuilt sha256": self.rebuilt_sha256[7:19], "rebuild s": self.rebuild_s}])


def _record(path: Path, where: str) -> dict:
    """The build record, checked field by field (it may come from anywhere)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{where}: no readable build record {path.name}: {str(e)[:120]}") from None
    if not isinstance(rec, dict):
        raise InputError(f"{where}: {path.name} is not a build record (allowed: a JSON object)")
    checks = {"recipe": lambda v: re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", v),
              "tool": lambda v: re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,39}", v),
              "content_key": _SHA.fullmatch, "sha256": _SHA.fullmatch, "recipe_digest": _SHA.fullmatch}
    for name, ok in checks.items():
        v = rec.get(name)
        if not isinstance(v, str) or not ok(v):
            raise InputError(f"{where}: {path.name}: field {name} is {str(v)[:60]!r} "
                             f"(allowed: {'a sha256:HEX digest' if name in ('content_key', 'sha256', 'recipe_digest') else 'a name'})")
    return rec


def _local(image: Path) -> tuple[Path, Path]:
    stem = image.name.rsplit(".", 1)[0]
    return image, image.with_name(stem + ".json")


def verify(image_or_ref: str | Path, *, mirror: Optional[str] = None, progress: bool = True,
           work_dir: Optional[Path] = None) -> Verification:
    """Rebuild the image from its recipe and say whether the digest matches (see the module's text)."""
    with reaper.temp_dir("diskimages-verify-", work_dir) as tmp:
        image, where = _fetch(image_or_ref, tmp, progress)
        return _verify(image, where, mirror, progress, tmp)


def _fetch(image_or_ref: str | Path, tmp: Path, progress: bool) -> tuple[Path, str]:
    p = Path(image_or_ref)
    if p.is_file():
        return p, str(p)
    from .registry import Ref
    ref = str(image_or_ref)
    try:
        Ref.parse(ref)
    except ValueError:
        raise InputError(f"{ref}: neither an image file nor a registry reference (allowed: PATH.qcow2 or "
                         "HOST/REPO:TAG or HOST/REPO@sha256:...)") from None
    from .publish import pull
    files = pull(ref, tmp / "published", progress=progress).files
    disks = [f for f in files if f.suffix in (".qcow2", ".raw")]
    if len(disks) != 1:
        raise InputError(f"{ref}: the artifact holds {len(disks)} disk images (allowed: one)")
    return disks[0], ref


def _verify(image: Path, where: str, mirror: Optional[str], progress: bool, tmp: Path) -> Verification:
    image, record_path = _local(image)
    rec = _record(record_path, where)
    v = Verification(image=where, outcome=CANNOT, reason="", recipe=rec["recipe"], tool=rec["tool"],
                     published_sha256=rec["sha256"])
    if measure.sha256_file(image) != rec["sha256"]:
        v.outcome, v.reason = DIFFERS, f"{image.name} is not the image its record describes (sha256 differs)"
        return v
    try:
        recipe = load_checked(rec["recipe"])
    except (RecipeError, FileNotFoundError, KeyError) as e:
        v.reason = f"its recipe {rec['recipe']} is not here: {str(e)[:200]}"
        return v
    if recipe.digest() != rec["recipe_digest"]:
        v.reason = (f"{recipe.source or recipe.name} is not the recipe the image was built from (its digest is "
                    f"{recipe.digest()[:19]}..., the image's {rec['recipe_digest'][:19]}...)")
        return v
    tool = get_tool(rec["tool"])
    if tool.version() != rec.get("tool_version"):
        v.reason = f"the image was built with {tool.name} {rec.get('tool_version')}; this host has {tool.version()}"
        return v
    from . import __version__
    if rec.get("diskimages_version", __version__) != __version__:
        v.reason = f"the image was built by diskimages {rec['diskimages_version']}; this is {__version__}"
        return v
    if not rec.get("reproducible"):
        v.reason = f"its build was not reproducible: {rec.get('reproducible_why', 'the record does not say why')}"
        return v
    key, info = content_key(recipe, tool, mirror)
    if key is None:
        v.reason = f"its packages cannot be resolved here: {info.get('content_key_missing')}"
        return v
    if key != rec["content_key"]:
        v.reason, v.details = _why_key_moved(image, info.get("_resolved") or [])
        return v
    t0 = time.monotonic()
    again = build(recipe, tool.name, tmp / "rebuilt", mirror=mirror, progress=progress, rebuild=True)
    v.rebuild_s = round(time.monotonic() - t0, 1)
    v.rebuilt_sha256 = again.record["sha256"]
    if v.rebuilt_sha256 == rec["sha256"]:
        v.outcome, v.reason = SAME, (f"rebuilt from {recipe.source or recipe.name} with the manifest's "
                                     f"{again.record.get('manifest_packages')} packages: the same sha256")
        return v
    from .inspect import why_images_differ
    v.outcome, v.reason = DIFFERS, "the rebuilt image has another sha256"
    v.details = why_images_differ(image, again.image).splitlines()
    return v


def _why_key_moved(image: Path, resolved: list[str]) -> tuple[str, list[str]]:
    """The packages whose version in the image's manifest the mirror no longer offers."""
    from . import manifest
    spdx = manifest_path(image)
    if not spdx.is_file():
        return "the mirror's packages changed since the build, and the image has no manifest to say which", []
    had = {p["name"]: p["version"] for p in manifest.load(spdx)}
    now = dict(x.split("=", 1) for x in resolved)
    gone = sorted(n for n in had if n in now and had[n] != now[n])
    added = sorted(set(now) - set(had))
    if not gone and not added:
        return "the content key differs though the packages resolve the same (another configuration)", []
    lines = [f"{n} {had[n]} (the mirror now has {now[n]})" for n in gone] + \
            [f"{n} (not in the image; the mirror now pulls it in)" for n in added]
    return (f"the mirror no longer has the image's exact packages: {len(gone)} gone"
            + (f", {len(added)} new" if added else "") + f": {lines[0]}"
            + (f" and {len(lines) - 1} more" if len(lines) > 1 else "")
            + "; give --mirror a snapshot of the archive from the build's day to verify"), lines

