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
from ..paths import cache_dir
from ..recipe import Recipe

TOOLS: dict[str, type["Tool"]] = {}
_MODULES = ("mmdebstrap", "mkosi", "debos", "virt_install", "packer", "virt_builder", "oz")


class ToolUnavailable(RuntimeError):
    """The tool is not installed, or cannot build this recipe (the message says why)."""


@dataclass
class DiskInfo:
    """What a disk-producing tool reports about the raw disk it made."""
    root_uuid: str
    kernel: str
    packages: int
    rootfs_bytes: int


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
    #: "rootfs": the tool makes a tree and diskimages assembles it; "disk": the tool makes the bootable disk
    produces: ClassVar[str] = "rootfs"
    #: True when the tool's own configuration applies the recipe (mkosi.postinst, a debos run action, ...);
    #: False when diskimages customises the tree the tool made
    applies_recipe: ClassVar[bool] = False
    #: recipe field -> the tool's own setting that expresses it (anything else goes through the shared
    #: customisation script, run the tool's way); see `coverage()`
    native: ClassVar[dict[str, str]] = {}
    #: recipe field -> why this tool cannot honour it (the build is refused with that message)
    unsupported: ClassVar[dict[str, str]] = {}
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

    def package_version(self, package: str) -> Optional[str]:
        """The version of the distribution package that installed the tool (for tools without --version)."""
        if not shutil.which(self.program):
            return None
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        return out.stdout.split("-")[0] if out.returncode == 0 and out.stdout else "unknown"

    def unavailable_reason(self, recipe: Optional[Recipe] = None) -> Optional[str]:
        """Why this tool cannot build `recipe` here (None when it can)."""
        if self.version() is None:
            return f"{self.program} is not installed (scripts/setup.sh installs it)"
        if recipe is not None and self.distros and recipe.distro not in self.distros:
            return f"{self.name} builds {', '.join(self.distros)} images, not {recipe.distro}"
        return None

    def refusals(self, recipe: Recipe) -> list[str]:
        """Recipe fields this tool cannot honour, each as 'FILE: FIELD: why' (empty when it can build it)."""
        out = []
        for fld, why in self.unsupported.items():
            if _field_is_set(recipe, fld):
                out.append(f"{recipe.source or recipe.name}: {fld}: {self.name} cannot do this: {why}")
        return out

    def coverage(self, recipe: Recipe):
        """How each recipe field is carried out by this tool: a pandas DataFrame (field, how, setting)."""
        import pandas as pd
        rows = []
        for fld in COVERED_FIELDS:
            if fld in self.unsupported:
                how, setting = "unsupported", self.unsupported[fld]
            elif fld in self.native:
                how, setting = "native", self.native[fld]
            elif fld in ("disk", "output"):
                how, setting = "diskimages", "disk assembly / qemu-img convert"
            else:
                how = "script"
                setting = "customize.sh run by the tool" if self.applies_recipe else "customize.sh run by diskimages"
            rows.append({"field": fld, "set in recipe": _field_is_set(recipe, fld), "how": how, "setting": setting})
        return pd.DataFrame(rows)

    def render(self, ctx: BuildContext) -> dict[str, str]:
        """The tool's native configuration and command line for this recipe: {file name: text}."""
        raise NotImplementedError

    def bootstrap(self, ctx: BuildContext, rootfs: Path) -> None:
        """Make the root file system tree in `rootfs` (rootfs tools)."""
        raise NotImplementedError

    #: the name of a phase run before the build (e.g. "base": the VM builders' cloud base image), or None
    prepare_phase: ClassVar[Optional[str]] = None

    def prepare(self, ctx: BuildContext) -> None:
        """Work before the tool's own run, timed as `prepare_phase` (the VM builders make their base image)."""

    def build_disk(self, ctx: BuildContext, raw: Path) -> DiskInfo:
        """Make the bootable raw disk `raw` (disk tools)."""
        raise NotImplementedError

    def label(self) -> str:
        return f"{self.name} + diskimages assembly" if self.produces == "rootfs" else self.name


COVERED_FIELDS = ("packages", "desktop", "hostname", "locale", "timezone", "keyboard", "users", "autologin",
                  "files", "scripts", "services", "kernel_cmdline", "disk", "output")


def shell_command(argv: list[str]) -> str:
    """A command line to show: the program, then one option with its value per line."""
    import shlex
    out, i = [shlex.quote(str(argv[0]))], 1
    while i < len(argv):
        a = str(argv[i])
        if a.startswith("-") and i + 1 < len(argv) and not str(argv[i + 1]).startswith("-"):
            out.append(f"{a} {shlex.quote(str(argv[i + 1]))}")
            i += 2
        else:
            out.append(shlex.quote(a))
            i += 1
    return " \\\n  ".join(out) + "\n"


def _field_is_set(recipe: Recipe, fld: str) -> bool:
    """Whether the recipe sets `fld` ("users", "disk.firmware", ...) to something other than its default."""
    head, *rest = fld.split(".")
    value = getattr(recipe, head)
    default = type(recipe).model_fields[head].get_default(call_default_factory=True)
    for part in rest:
        value, default = getattr(value, part), getattr(default, part, None)
    return value != default and value not in (None, "", [], {})


class PackageCache:
    """The shared .deb cache of a distro release (or a throwaway one inside the work folder when the cache is
    off, so a cold build is measured the same way): counts what a build downloaded into it."""

    def __init__(self, ctx: BuildContext):
        r = ctx.recipe
        self.use = ctx.use_cache
        self.path = cache_dir("apt", f"{r.distro}-{r.release}-{r.architecture}") if ctx.use_cache \
            else ctx.work / "apt-cache"
        self.ctx = ctx

    def __enter__(self) -> "PackageCache":
        self.path.mkdir(parents=True, exist_ok=True)
        self.before = {p.name for p in self.path.glob("*.deb")}
        return self

    def __exit__(self, *exc) -> None:
        new = [p for p in self.path.glob("*.deb") if p.name not in self.before]
        self.ctx.stats["downloaded_bytes"] = sum(p.stat().st_size for p in new)
        self.ctx.stats["cache"] = ("warm" if not new else "cold" if not self.before else "partial") \
            if self.use else "off"


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
