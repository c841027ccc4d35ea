"""The package mirror a build uses, as the distribution chose it: given as a parameter, read from the build
host's own package sources, or left to the tool's default. Nothing in this project names a mirror host; the
build record says which origin was taken (`mirror_origin`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class MirrorChoice:
    uri: Optional[str]              # main archive (None: the tool's default)
    security_uri: Optional[str]
    origin: str                     # "parameter", "host apt sources", "tool default"
