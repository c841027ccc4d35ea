"""Build tools: one module per tool, each a subclass of `RootfsTool` (the tool makes a root tree; diskimages
customises it and assembles the disk) or `DiskTool` (the tool makes the whole bootable disk).

The lifecycle is a template method, the shape of papermill's `Engine.execute_notebook`: `Tool.execute` owns the
phases, timing and clean-up order, and a tool implements only its own step (`bootstrap` or `build_disk`) and
`render`. What a build carries from step to step is one typed `BuildState`.

Each tool says which (distribution, release, architecture) it builds, and why not where it does not
(`supports`); `build`, `render`, `matrix`, `compare`, `tools` and the explorer all use that one answer.

Adding a tool is one module here (or a subclass defined anywhere and imported before use): subclass `RootfsTool`
or `DiskTool` with a `name`; it registers itself.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Optional

from .. import checkers, customize, distros, disk, measure, reproducible, trees
from ..disk import DiskInfo
from ..distros import Distribution, MirrorChoice, Release
from ..paths import cache_dir
from ..recipe import Recipe, RecipeError, load_recipe
from ..errors import Failure


class ToolUnavailable(Failure):
    """The tool is not installed, or cannot build this recipe (the message says why). Nothing was started, and
    the choice of tool is the user's input: the command exits 2."""
    exit_code = 2


@dataclass(frozen=True)
class BaseImage:
    """The image a VM-driven tool starts from, made by the orchestrator before the tool runs."""
    path: Path
    recipe: str
    built_s: float              # 0 when it came from the cache

    def as_record(self) -> dict:
        return {"base_image": self.path.name, "base_recipe": self.recipe, "base_built_s": self.built_s}


@dataclass(frozen=True)
class Accel:
    """How VMs run on this host: "kvm" or "tcg", and how that was decided (a real boot, not the device node)."""
    kind: str
    reason: str


@dataclass
class BuildState:
    recipe: Recipe
    distro: Distribution
    release: Release
    work: Path
    log: Path
    mirror: MirrorChoice
    use_cache: bool = True
    on_line: Optional[Callable[[str], None]] = None
    #: phase(name) times a phase and shows it (set by the orchestrator)
    phase: Callable[[str], ContextManager] = field(default=lambda name: contextlib.nullcontext())
    # handed in by the orchestrator to the tools that ask for them (Tool.needs)
    base: Optional[BaseImage] = None
    accel: Optional[Accel] = None
    libvirt: Any = None                     # a libvirt connection with the build network (libvirt_host.Session)
    # what the tool reports for the record
    downloaded_bytes: Optional[int] = None
    cache: str = "off"
    host_workarounds: list[str] = field(default_factory=list)
    sparsified: Optional[str] = None
    #: incremental rebuilds: the key of the tree after the package phase (None: off), and what happened to it
    tree_key: Optional[str] = None
    incremental: str = "off"
    #: the key of the tree after the package phase whether or not the tree is kept: what by-products of that
    #: tree (the initramfs) are cached under when caching is on (None: nothing is reused)
    package_key: Optional[str] = None
    initrd: str = ""
    #: how the kernel module index (depmod's outputs) came to be, where the tool says (for the record)
    module_index: str = ""
    #: CPU seconds of the tool's processes that outlived their parent, so that no rusage reached this process;
    #: the tool measures them, and the phase that ran them counts them
    detached_cpu_s: float = 0.0
    #: the build's content key: what a rootfs tool's disk derives its identifiers and times from (None: random)
    content_key: Optional[str] = None
    #: how the disk was made reproducible, or why it was not (for the record)
    reproducible: dict = field(default_factory=dict)
    #: how this tool's image differs in content from what the recipe gives the others (the comparison says so)
    content_differs: list[str] = field(default_factory=list)
    #: where a rootfs tool makes its tree (None: the work folder), and what the record says about it
    tree_home: Optional[Path] = None
    scratch: str = ""

    def workaround(self, *what: str) -> None:
        self.host_workarounds += [w for w in what if w not in self.host_workarounds]


class Tool:
    name: ClassVar[str]
    program: ClassVar[str]
    #: "rootfs": the tool makes a tree and diskimages assembles it; "disk": the tool makes the bootable disk
    produces: ClassVar[str]
    #: True when the tool's own configuration applies the recipe (mkosi.postinst, a debos run action, ...);
    #: False when diskimages customises the tree the tool made
    applies_recipe: ClassVar[bool] = False
    #: recipe field -> the tool's own setting that expresses it (the rest goes through customize.sh)
    native: ClassVar[dict[str, str]] = {}
    #: recipe field -> why this tool cannot honour it (the build is refused with that message)
    unsupported: ClassVar[dict[str, str]] = {}
    description: ClassVar[str] = ""
    #: the package managers of the distributions it installs (e.g. "apt"); empty: any
    package_managers: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ("amd64",)
    #: what the orchestrator must hand in: "base" (a cloud base image), "accel" (KVM or TCG), "libvirt"
    needs: ClassVar[frozenset[str]] = frozenset()
    #: the phase the orchestrator runs first when "base" is needed
    BASE_PHASE: ClassVar[str] = "base"
    #: whether `check` needs the tool installed (False: its files are checked by format checkers only)
    check_needs_program: ClassVar[bool] = True
    #: whether `check` reads the tool's files even for pairs the tool refuses (its parser is independent of it)
    check_when_refused: ClassVar[bool] = False
    #: the options a recipe may give this tool under `tools: {NAME: {...}}`: name -> (what is allowed, check)
    options: ClassVar[dict[str, tuple[str, Callable[[Any], bool]]]] = {}

    _registry: ClassVar[dict[str, type["Tool"]]] = {}

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__:
            Tool._registry[cls.name] = cls

    # -- installed?
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
        """The version of the host package that installed the tool (for tools without --version)."""
        if not shutil.which(self.program):
            return None
        h = distros.host()
        return (h.host_package_version(package) if h else None) or "unknown"

    def unavailable_reason(self) -> Optional[str]:
        """Why this tool cannot run on this host (None when it can)."""
        if self.version() is None:
            return f"{self.program} is not installed (scripts/setup.sh installs it)"
        return None

    #: the distribution packages that install the tool (scripts/setup.sh installs them where they exist)
    packages: ClassVar[tuple[str, ...]] = ()

    def usable_version(self, version: str) -> Optional[str]:
        """Why this version of the tool cannot run the configuration diskimages writes (None when it can)."""
        return None

    def installable_reason(self) -> Optional[str]:
        """Why scripts/setup.sh cannot give this host the tool (None when it is installed and usable, or its
        package is in the host's package sources in a usable version): what a CI matrix asks on its runner."""
        if self.unavailable_reason() is None:
            return None
        if not self.packages or not shutil.which("apt-cache"):
            return self.unavailable_reason()
        for pkg in self.packages:
            out = subprocess.run(["apt-cache", "policy", pkg], capture_output=True, text=True).stdout
            m = re.search(r"Candidate: (\S+)", out)
            if not m or m.group(1) == "(none)":
                return f"{pkg} is not in this host's package sources"
            why = self.usable_version(re.sub(r"^\d+:", "", m.group(1)))
            if why:
                return f"{pkg} {m.group(1)} from this host's package sources: {why}"
        return None

    # -- can it build this?
    def supports(self, distro: Distribution, release: Release, arch: str) -> Optional[str]:
        """Why this tool cannot build (distro, release, arch), or None when it can."""
        if self.package_managers and distro.package_manager not in self.package_managers:
            return (f"{self.name} installs {'/'.join(self.package_managers)} distributions; "
                    f"{distro.pretty_name} uses {distro.package_manager or 'another package manager'}")
        if arch not in self.architectures:
            return f"{self.name} builds {', '.join(self.architectures)} images here, not {arch}"
        return None

    def refusals(self, recipe: Recipe) -> list[str]:
        """Recipe fields this tool cannot honour, each as 'FILE: FIELD: why' (empty when it can build it)."""
        return [f"{recipe.source or recipe.name}: {fld}: {self.name} cannot do this: {why}"
                for fld, why in self.unsupported.items() if _field_is_set(recipe, fld)]

    def cannot_build(self, recipe: Recipe, *, installed: bool = True, probe: Optional[bool] = None) -> Optional[str]:
        """The one answer to "can this tool build this recipe here?": None, or why not. `installed`: whether the
        tool must be installed here; `probe` (default: as `installed`): whether the archive must answer."""
        try:
            d, rel = distros.for_recipe(recipe)
        except KeyError as e:
            return str(e.args[0])
        why = self.supports(d, rel, recipe.architecture)
        if why is None:
            refused = self.refusals(recipe)
            why = "; ".join(refused) if refused else None
        if why is None and installed:
            why = self.unavailable_reason()
        if why is None and installed:
            why = self.host_lacks(recipe)
        if why is None and (installed if probe is None else probe):
            why = self.source_unreachable(recipe)
        return why

    def host_lacks(self, recipe: Recipe) -> Optional[str]:
        """What this host lacks for this recipe besides the tool itself (e.g. an installer its osinfo database
        does not know); None when nothing. Asked by the CI matrix on its runner too."""
        return None

    def source_unreachable(self, recipe: Recipe) -> Optional[str]:
        """Why this host cannot fetch what the build installs (None when it can): the distribution's archive,
        asked once per process in a few seconds, before any work."""
        d, rel = distros.for_recipe(recipe)
        return distros.unreachable(d, rel, d.choose_mirror())

    def tree_config(self, state: BuildState) -> Optional[str]:
        """What decides the root tree after this tool's package phase, besides the resolved packages (its
        rendered bootstrap configuration), for incremental rebuilds; None where the tool has no such step."""
        return None

    #: True when the tool's package phase is the package manager's own run of the request that
    #: `Distribution.resolve` simulates: its image must then hold exactly the resolved versions
    installs_as_resolved: ClassVar[bool] = False

    #: why this tool has no incremental rebuilds (the record says so when they are asked for)
    no_incremental: ClassVar[str] = "the tool makes the whole disk in one step: there is no tree after its package " \
                                    "phase to keep"

    def needs_for(self, distro: Optional[Distribution] = None) -> frozenset[str]:
        """What the orchestrator hands in for a build of this distribution (a tool whose path differs per
        distribution, such as an installer instead of a cloud base image, narrows `needs`)."""
        return self.needs

    # -- the lifecycle
    def phases(self, distro: Optional[Distribution] = None) -> tuple[str, ...]:
        raise NotImplementedError

    def render(self, state: BuildState) -> dict[str, str]:
        """The tool's native configuration and command line for this recipe: {file name: text}."""
        raise NotImplementedError

    def check(self, state: BuildState, where: Path) -> list:
        """The rendered configuration written into `where` and read by the tool's own parser (and the formats'
        checkers): a list of `checkers.Finding`. Every tool checks at least its shell scripts."""
        where.mkdir(parents=True, exist_ok=True)
        found = []
        for name, text in self.render(state).items():
            if name.endswith(".sh") or text.startswith("#!/bin/sh"):
                f = where / name.replace("/", "_")
                f.write_text(text)
                found.append(checkers.run(name, "sh -n", ["sh", "-n", f]))
        return found

    def execute(self, state: BuildState, raw: Path) -> DiskInfo:
        """Make the bootable raw disk `raw`, phase by phase (the template method; tools implement the steps)."""
        raise NotImplementedError

    def label(self) -> str:
        return f"{self.name} + diskimages assembly" if self.produces == "rootfs" else self.name

    def cache_path(self, state: BuildState) -> Path:
        """This tool's own package cache for the recipe's distribution, release and architecture: tools never
        share one (one tool's cache layout would end up inside another tool's image)."""
        r = state.recipe
        if not state.use_cache:
            return state.work / "package-cache"
        return cache_dir("packages", self.name, f"{r.distro}-{state.release.codename}-{r.architecture}")

    @contextlib.contextmanager
    def package_cache(self, state: BuildState) -> Iterator[Path]:
        """Count what a build downloaded into the tool's package cache (the record's `cache` and
        `downloaded_bytes`); a throwaway cache when caching is off, so a cold build is measured the same way."""
        path = self.cache_path(state)
        path.mkdir(parents=True, exist_ok=True)
        glob = state.distro.package_cache_glob
        before = {p for p in path.rglob(glob)}
        yield path
        new = [p for p in path.rglob(glob) if p not in before]
        state.downloaded_bytes = sum(p.stat().st_size for p in new)
        state.cache = ("warm" if not new else "cold" if not before else "partial") if state.use_cache else "off"

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


class RootfsTool(Tool):
    """The tool makes a root file system tree; diskimages customises it (unless the tool applies the recipe
    itself) and assembles the bootable disk."""
    produces = "rootfs"
    no_incremental = "the tool does not say what makes its tree after the package phase (tree_config), so the " \
                     "tree has no key to be kept by"

    def bootstrap(self, state: BuildState, rootfs: Path) -> None:
        """Make the root tree in `rootfs` (the tool's one step)."""
        raise NotImplementedError

    def phases(self, distro: Optional[Distribution] = None) -> tuple[str, ...]:
        return ("bootstrap", "assemble") if self.applies_recipe else ("bootstrap", "customize", "assemble")

    def make_tree(self, state: BuildState, rootfs: Path) -> None:
        """`bootstrap`, with incremental rebuilds (`state.tree_key`): the tree kept after an earlier package phase
        of the same key is restored instead, or this one is kept. A tool with an incremental mode of its own
        (mkosi) overrides this: a tree it applied the recipe to must not be kept."""
        restored = trees.restore(state.tree_key, rootfs, log=state.log) if state.tree_key else None
        if restored:
            state.incremental, state.cache, state.downloaded_bytes = restored, "not needed", 0
            return
        self.bootstrap(state, rootfs)
        if state.tree_key:
            state.incremental = trees.save(state.tree_key, rootfs, log=state.log)

    def execute(self, state: BuildState, raw: Path) -> DiskInfo:
        rootfs = (state.tree_home or state.work) / "rootfs"
        with state.phase("bootstrap"):
            self.make_tree(state, rootfs)
        packages = len(state.distro.installed_packages(rootfs))
        if not self.applies_recipe:
            with state.phase("customize"):
                customize.apply(state.recipe, rootfs, log=state.log, on_line=state.on_line)
        rootfs_bytes = measure.tree_bytes(rootfs)
        with state.phase("assemble"):
            seed = self.seed(state, rootfs)
            layout = disk.assemble(state.recipe, rootfs, raw, state.work, log=state.log, seed=seed,
                                   tree_key=state.package_key)
            state.initrd = layout.initrd
            kernel = state.distro.kernel_version(rootfs)
            shutil.rmtree(rootfs)  # free the space before the compressed copy is written
        return DiskInfo(root_uuid=layout.root_uuid, kernel=kernel, packages=packages, rootfs_bytes=rootfs_bytes)


    def seed(self, state: BuildState, rootfs: Path) -> Optional[reproducible.Seed]:
        """What makes the disk bit-identical for the same content key (None, and the record says why, when
        there is no key or the distribution's packages give no date)."""
        if not state.content_key:
            state.reproducible = state.reproducible or {"reproducible": False,
                                                        "reproducible_why": "no content key for this build"}
            return None
        try:
            epoch, origin = reproducible.source_date_epoch(rootfs, state.distro)
        except (NotImplementedError, RuntimeError) as e:
            state.reproducible = {"reproducible": False, "reproducible_why": str(e)}
            return None
        seed = reproducible.Seed(state.content_key, epoch, origin)
        state.reproducible = {"reproducible": True, **seed.as_record()}
        return seed


class DiskTool(Tool):
    """The tool makes the whole bootable disk."""
    produces = "disk"

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        """Make the bootable raw disk `raw` (the tool's one step)."""
        raise NotImplementedError

    def phases(self, distro: Optional[Distribution] = None) -> tuple[str, ...]:
        return ((self.BASE_PHASE,) if "base" in self.needs_for(distro) else ()) + ("build",)

    def execute(self, state: BuildState, raw: Path) -> DiskInfo:
        with state.phase("build"):
            return self.build_disk(state, raw)


def _components(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(c, str) and re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", c)
                                                   for c in v)


COMPONENTS = ("a list of archive components such as [main, contrib]", _components)
BASE_OPTION = ("the name of a cloud base recipe under recipes/",
               lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", v) is not None)


COVERED_FIELDS = ("packages", "desktop", "hostname", "locale", "timezone", "keyboard", "users", "autologin",
                  "files", "scripts", "services", "kernel_cmdline", "lean", "disk", "output")


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


# -- the registry: every module of this package, plus any subclass defined elsewhere: imported before use, or
# named in DISKIMAGES_PLUGINS (comma-separated module names: a distribution or a tool of your own, no edit here)
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
for _plugin in filter(None, (p.strip() for p in os.environ.get("DISKIMAGES_PLUGINS", "").split(","))):
    importlib.import_module(_plugin)


def names() -> list[str]:
    return sorted(Tool._registry)


def get_tool(name: str) -> Tool:
    if name not in Tool._registry:
        raise ToolUnavailable(f"unknown tool {name!r} (allowed: {', '.join(names())})")
    return Tool._registry[name]()


def refuse(recipe: Recipe, tool: "Tool", *, installed: bool = True) -> Optional[str]:
    """One line for a tool that cannot build the recipe: naming the file and the field when the recipe is the cause
    (its distribution, or a field the tool cannot honour), with the tools that can; None when it can."""
    d, rel = distros.for_recipe(recipe)
    src = recipe.source or recipe.name
    why = tool.supports(d, rel, recipe.architecture)
    if why:
        ok = [n for n in names() if get_tool(n).supports(d, rel, recipe.architecture) is None]
        return (f"{src}: distro: {d.pretty_name} {rel.version} is not built by {tool.name}: {why} "
                f"(allowed tools: {', '.join(ok) or 'none'})")
    why = tool.cannot_build(recipe, installed=installed)
    return f"{tool.name} cannot build {recipe.name}: {why}" if why else None


def check_recipe(recipe: Recipe) -> Recipe:
    """The recipe checked against its distribution and the tools it names; `release` becomes the codename."""
    recipe = distros.check(recipe)
    for key, opts in recipe.tools.items():
        if key not in Tool._registry:
            raise RecipeError(recipe.source, f"tools.{str(key)[:40]}", f"unknown tool (allowed: {', '.join(names())})")
        known = Tool._registry[key].options
        if not isinstance(opts, dict):
            raise RecipeError(recipe.source, f"tools.{key}", f"must be a mapping of {key}'s options "
                                                            f"(allowed: {', '.join(known) or 'none'})")
        for name, value in opts.items():
            if name not in known:
                raise RecipeError(recipe.source, f"tools.{key}.{str(name)[:40]}",
                                  f"unknown option of {key} (allowed: {', '.join(known) or 'none'})")
            what, ok = known[name]
            if not ok(value):
                raise RecipeError(recipe.source, f"tools.{key}.{name}", f"is not allowed (allowed: {what})")
    return recipe


def load_checked(name_or_path) -> Recipe:
    """load_recipe plus the checks that need the distribution and tool layers (every command uses this)."""
    return check_recipe(load_recipe(name_or_path))


def new_state(recipe: Recipe, work: Path, log: Path, mirror: Optional[str] = None, **kw) -> BuildState:
    d, rel = distros.for_recipe(recipe)
    return BuildState(recipe, d, rel, work, log, d.choose_mirror(mirror), **kw)


def support_table(installed: bool = True):
    """Each tool's answer for each distribution release it could meet (amd64): "yes" or why not."""
    import pandas as pd
    rows = []
    for tname in names():
        t = get_tool(tname)
        row: dict[str, Any] = {"tool": tname, "version": t.version(), "produces": t.produces,
                               "installed": t.unavailable_reason() is None}
        for dname in distros.names():
            d = distros.get(dname)
            for rel in d.releases:
                why = t.supports(d, rel, "amd64")
                row[f"{dname} {rel.version}"] = "yes" if why is None else f"no: {why}"
        rows.append(row)
    return pd.DataFrame(rows)


def tool_table():
    """Installed tools and their versions as a pandas DataFrame."""
    import pandas as pd
    return pd.DataFrame([{"tool": n, "produces": (t := get_tool(n)).produces, "version": t.version(),
                          "available": t.unavailable_reason() is None, "description": t.description}
                         for n in names()])
