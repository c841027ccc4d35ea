"""virt-builder template repositories made from built images: a second way to share them.

`write_repo(dir, images)` writes each image as an xz-compressed template plus the `index` file in virt-builder's
format (checked with `virt-index-validate`); `virt-builder --source file://DIR/index` (or an HTTP URL to it)
then lists and builds from them. The templates keep their build records' facts in the notes.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Iterable, Optional

from . import measure

ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def _sha512(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha512").hexdigest()


def template_entry(name: str, image: Path, xz: Path, record: Optional[dict], expand: Optional[str]) -> str:
    info = measure.qemu_img_info(image)
    rec = record or {}
    lines = [f"[{name}]", f"name={rec.get('recipe', name)} (diskimages, {rec.get('tool_label', 'built')})",
             "osinfo=debian11" if rec.get("distro", "debian") == "debian" else f"osinfo={rec.get('distro')}",
             f"arch={ARCHES.get(rec.get('architecture', 'amd64'), 'x86_64')}",
             f"file={xz.name}", f"checksum[sha512]={_sha512(xz)}", f"format={info['format']}",
             f"size={info['virtual-size']}", f"compressed_size={xz.stat().st_size}"]
    if expand:
        lines.append(f"expand={expand}")
    notes = [f"built by {rec.get('tool_label', '?')} {rec.get('tool_version', '')}".rstrip(),
             f"recipe digest {rec.get('recipe_digest', '?')}", f"image sha256 {rec.get('sha256', '?')}"]
    lines.append("notes=" + "\n ".join(notes))
    return "\n".join(lines) + "\n"


def write_repo(directory: Path | str, images: Iterable[Path | str], *, expand: Optional[str] = "/dev/sda3") -> Path:
    """Write templates + index into `directory`; returns the index path (validated). `expand`: the partition
    virt-resize grows to a requested --size (the root: the 3rd partition of diskimages' BIOS+ESP+root layout)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    entries = []
    for image in map(Path, images):
        rec_path = image.with_suffix(".json")
        rec = json.loads(rec_path.read_text()) if rec_path.is_file() else None
        name = (rec or {}).get("recipe") or image.name.split(".")[0]
        xz = d / f"{image.name}.xz"
        if not xz.is_file():
            tmp = xz.with_name(xz.name + ".partial")
            try:
                with open(tmp, "wb") as out:
                    subprocess.run(["xz", "-0", "-T0", "-c", str(image)], stdout=out, check=True)
                tmp.rename(xz)
            finally:
                tmp.unlink(missing_ok=True)
        entries.append(template_entry(name, image, xz, rec, expand))
    index = d / "index"
    index.write_text("\n".join(entries))
    validate(index)
    return index


def validate(index: Path) -> None:
    r = subprocess.run(["virt-index-validate", str(index)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"virt-index-validate refused {index}: {(r.stderr or r.stdout).strip()}")
