"""Build tools: one module per tool, all behind the `Tool` interface, found through the `TOOLS` registry.

Adding a tool means one module here that subclasses `Tool` (or `RootfsTool`) and registers itself with
`@register`, plus one test.
"""
from __future__ import annotations

import importlib
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

from ..mirror import MirrorChoice
from ..recipe import Recipe

TOOLS: dict[str, type["Tool"]] = {}
_MODULES = ("mmdebstrap",)


class ToolUnavailable(RuntimeError):
    """The tool is not installed, or cannot build this recipe (the message says why)."""


@dataclass
class BuildContext:
    recipe: Recipe
    work: Path
    log: Path
    mirror: MirrorChoice
    use_cache: bool = True
    on_line: Optional[Callable[[str], None]] = None
    stats: dict = field(default_factory=dict)   # what the tool measured (downloaded_bytes, ...)


class Tool:
    name: ClassVar[str]
    program: ClassVar[str]
    #: "rootfs": the tool makes a tree and diskimages customises and assembles it; "disk": a bootable disk
    produces: ClassVar[str] = "rootfs"
    description: ClassVar[str] = ""
    distros: ClassVar[tuple[str, ...]] = ()

    def version(self) -> Optional[str]:
        """The installed version, or None when the tool is not installed."""
        if not shutil.which(self.program):
            return None
        try:
            out = subprocess.run([self.program, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0].split()[-1] if text else "unknown"

    def unavailable_reason(self, recipe: Optional[Recipe] = None) -> Optional[str]:
        """Why this tool cannot build `recipe` here (None when it can)."""
        if self.version() is None:
            return f"{self.program} is not installed (scripts/setup.sh installs it)"
        if recipe is not None and self.distros and recipe.distro not in self.distros:
            return f"{self.name} builds {', '.join(self.distros)} images, not {recipe.distro}"
        return None

    def render(self, ctx: BuildContext) -> dict[str, str]:
        """The tool's native configuration and command line for this recipe: {file name: text}."""
        raise NotImplementedError

    def bootstrap(self, ctx: BuildContext, rootfs: Path) -> None:
        """Make the root file system tree in `rootfs` (rootfs tools)."""
        raise NotImplementedError

    def label(self) -> str:
        return f"{self.name} + diskimages assembly" if self.produces == "rootfs" else self.name


def register(cls: type[Tool]) -> type[Tool]:
    TOOLS[cls.name] = cls
    return cls


for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")


def get_tool(name: str) -> Tool:
    if name not in TOOLS:
        raise ToolUnavailable(f"unknown tool {name!r} (allowed: {', '.join(sorted(TOOLS))})")
    return TOOLS[name]()


def tool_table():
    """Installed tools and their versions as a pandas DataFrame."""
    import pandas as pd
    rows = []
    for name in sorted(TOOLS):
        t = TOOLS[name]()
        rows.append({"tool": name, "produces": t.produces, "version": t.version(),
                     "available": t.unavailable_reason() is None, "description": t.description})
    return pd.DataFrame(rows)
