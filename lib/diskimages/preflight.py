"""`python -m diskimages check`: every rendered configuration of a recipe, for every tool that supports its
distribution, written out and read by the tool's own parser and the formats' checkers, before any build; and for
each pair whether this host can build it (or why not, said in a second).

A pair the tool does not support is listed with the tool's reason and not checked; a pair whose parser is not
installed here is listed as not checked, with why. A checker that refuses a file fails the pair."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator, Optional

from . import reaper
from .checkers import Finding
from .recipe import RecipeError
from .tools import Tool, get_tool, load_checked, names as tool_names, new_state

PASSED, REFUSED, UNSUPPORTED, NOT_CHECKED = "passed", "refused", "not supported", "not checked"


@contextlib.contextmanager
def _libvirt_if(needed: bool) -> Iterator[None]:
    """virt-install's --dry-run asks libvirtd: started for the checks when it is not running, stopped after."""
    if not needed:
        yield
        return
    from . import libvirt_host
    use = libvirt_host.using()
    conn, how = libvirt_host.connect()
    try:
        yield
    finally:
        libvirt_host.release(use)
        if how.startswith("started") and not libvirt_host.others_use_it():
            libvirt_host.stop_started(conn)


def _parsers_missing(tool: Tool) -> Optional[str]:
    return tool.unavailable_reason() if tool.check_needs_program else None


def check(recipes: Iterable[str], tools: Optional[Iterable[str]] = None, *, mirror: Optional[str] = None,
          buildable: bool = True):
    """A pandas DataFrame: one row per (recipe, tool, checked file) with the parser, its verdict and words,
    the pair's status and, with `buildable`, whether this host builds it."""
    import pandas as pd
    tools = list(tools or tool_names())
    loaded = [load_checked(r) for r in recipes]        # a bad recipe stops here, naming its field
    rows = []
    plan = []
    for recipe in loaded:
        for tname in tools:
            t = get_tool(tname)
            why = t.cannot_build(recipe, installed=False)
            here = t.cannot_build(recipe, probe=buildable) if why is None else why
            plan.append((recipe, t, why, here))
    need_libvirt = any(t.name == "virt-install" and why is None and not _parsers_missing(t)
                       for _, t, why, _ in plan)
    with _libvirt_if(need_libvirt), reaper.temp_dir("diskimages-check-") as tmp:
        for recipe, t, why, here in plan:
            base = {"recipe": recipe.name, "tool": t.name, "built here": "yes" if here is None else f"no: {here}"}
            if why is not None and not t.check_when_refused:
                rows.append({**base, "status": UNSUPPORTED, "file": "", "parser": "", "detail": why})
                continue
            missing = _parsers_missing(t)
            if missing:
                rows.append({**base, "status": NOT_CHECKED, "file": "", "parser": "", "detail": missing})
                continue
            state = new_state(recipe, Path(tmp), Path(tmp) / "log", mirror)
            try:
                found = t.check(state, Path(tmp) / recipe.name / t.name)
            except (OSError, RuntimeError, ValueError) as e:
                found = [Finding("", "render", False, f"{type(e).__name__}: {e}")]
            status = PASSED if all(f.ok for f in found) else REFUSED
            if why is not None:
                status = f"{status} (the tool refuses the pair: {why})"
            for f in found or [Finding("", "(none)", True, "no parser for this tool's files")]:
                rows.append({**base, "status": status, "file": f.file, "parser": f.parser,
                             "detail": ("ok: " if f.ok else "REFUSED: ") + f.detail})
    return pd.DataFrame(rows, columns=["recipe", "tool", "status", "file", "parser", "detail", "built here"])


def failed(df) -> bool:
    return bool(df["status"].str.startswith(REFUSED).any())
