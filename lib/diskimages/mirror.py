"""The package mirror a build uses: given as a parameter, or read at run time from the build host's apt sources.

Nothing here names a mirror host: on a Debian host the archive URIs of its own apt configuration are reused for
the recipe's release; elsewhere (an Ubuntu CI runner) the tool's own default mirror is used, and the build record
says which.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: Optional[str] = None


@dataclass(frozen=True)
class MirrorChoice:
    uri: Optional[str]              # main archive (None: the tool's default)
    security_uri: Optional[str]
    origin: str                     # "parameter", "host apt sources", "tool default"

    def sources_lines(self, release: str, components=("main",)) -> list[str]:
        """One-line apt sources for `release` (the form mmdebstrap and debootstrap-style tools accept)."""
        if not self.uri:
            return []
        comps = " ".join(components)
        lines = [f"deb {self.uri} {release} {comps}", f"deb {self.uri} {release}-updates {comps}"]
        if self.security_uri:
            lines.append(f"deb {self.security_uri} {release}-security {comps}")
        return lines


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri.rstrip("/"), tuple(fields.get("suites", "").split()),
                                 tuple(fields.get("components", "").split()), fields.get("signed-by")))
    return out


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if m:
            out.append(AptSource(m.group(2).rstrip("/"), (m.group(3),), tuple(m.group(4).split())))
    return out


def host_apt_sources(root: Path = Path("/")) -> list[AptSource]:
    sources = []
    main = root / "etc/apt/sources.list"
    if main.is_file():
        sources += _parse_one_line(main.read_text(errors="replace"))
    d = root / "etc/apt/sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.suffix == ".sources":
                sources += _parse_deb822(f.read_text(errors="replace"))
            elif f.suffix == ".list":
                sources += _parse_one_line(f.read_text(errors="replace"))
    return sources


def _os_id(root: Path) -> str:
    try:
        text = (root / "etc/os-release").read_text()
    except OSError:
        return ""
    m = re.search(r"^ID=\"?([^\"\n]+)", text, re.M)
    return m.group(1) if m else ""


def choose_mirror(distro: str, parameter: Optional[str] = None, root: Path = Path("/")) -> MirrorChoice:
    """The mirror for a build: the parameter (or $DISKIMAGES_MIRROR), else the host's own archive if the host
    runs the same distribution, else None (the tool's default)."""
    param = parameter or os.environ.get("DISKIMAGES_MIRROR") or None
    if param:
        return MirrorChoice(param.rstrip("/"), None, "parameter")
    if _os_id(root) != distro:
        return MirrorChoice(None, None, "tool default")
    main = security = None
    for s in host_apt_sources(root):
        if any(x.endswith("-security") or x.endswith("/updates") for x in s.suites):
            security = security or s.uri
        elif any("-" not in x for x in s.suites):
            main = main or s.uri
    if not main:
        return MirrorChoice(None, None, "tool default")
    return MirrorChoice(main, security, "host apt sources")
