"""mmdebstrap: the native builder. It makes the root file system; diskimages customises it and assembles
the bootable disk (no VM, no loop devices). Packages are cached between builds with mmdebstrap's sync-in/out
hooks, so a warm build downloads nothing."""
from __future__ import annotations

import shlex
from pathlib import Path

import re

from ..customize import render_script
from ..runner import run
from . import COMPONENTS, BuildState, RootfsTool

VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "debootstrap",
            "standard")


def _safe_args(v) -> bool:
    """Extra mmdebstrap options, never a hook: hooks run on the build host as root."""
    return isinstance(v, list) and all(
        isinstance(a, str) and re.fullmatch(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:/+=@ -]*)?", a)
        and "hook" not in a.split("=", 1)[0] for a in v)

# where apt keeps downloaded packages inside the tree mmdebstrap builds
ARCHIVES = "/var/cache/apt/archives/"


class Mmdebstrap(RootfsTool):
    name = "mmdebstrap"
    program = "mmdebstrap"
    description = "Debian's multi-mirror debootstrap: root file system, customised and assembled by diskimages"
    package_managers = ("apt",)
    native = {"packages": "--include=", "desktop": "--include= (the desktop's packages)"}
    options = {"variant": (f"one of {', '.join(VARIANTS)}", lambda v: v in VARIANTS),
               "components": COMPONENTS,
               "extra_args": ("a list of --option[=value] arguments; no hooks (they would run on the build host)",
                              _safe_args)}

    def command(self, state: BuildState, rootfs: Path, cache: Path) -> tuple[list[str], str]:
        """(argv, stdin): the mirror lines go on stdin ('-') so no mirror appears on the command line."""
        r = state.recipe
        opts = r.tool_options(self.name)
        components = opts.get("components", ["main"])
        argv = ["mmdebstrap", "--mode=root", f"--variant={opts.get('variant', 'apt')}",
                f"--architectures={r.architecture}", "--format=directory",
                f"--components={','.join(components)}",
                "--aptopt=Acquire::Languages \"none\"",
                f"--include={','.join(state.distro.packages_for(r))}",
                "--skip=download/empty", "--skip=essential/unlink",
                f"--setup-hook=mkdir -p \"$1\"{ARCHIVES}",
                f"--setup-hook=sync-in {cache} {ARCHIVES}",
                f"--customize-hook=sync-out {ARCHIVES.rstrip('/')} {cache}"]
        argv += [str(a) for a in opts.get("extra_args", [])]
        lines = state.distro.sources_lines(state.mirror, state.release, components)
        argv += [state.release.codename, str(rootfs)]
        if lines:
            argv.append("-")
        return argv, "\n".join(lines) + ("\n" if lines else "")

    def render(self, state: BuildState) -> dict[str, str]:
        argv, stdin = self.command(state, Path("ROOTFS"), Path("PACKAGE_CACHE"))
        script = " \\\n  ".join(shlex.quote(a) for a in argv)
        if stdin:
            script += " <<'SOURCES'\n" + stdin + "SOURCES"
        return {"mmdebstrap.sh": script + "\n", "customize.sh": render_script(state.recipe)}

    def bootstrap(self, state: BuildState, rootfs: Path) -> None:
        with self.package_cache(state) as cache:
            argv, stdin = self.command(state, rootfs, cache)
            # a private mount namespace: whatever mmdebstrap mounts disappears with it, even if it is killed
            run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", *argv],
                stdin=stdin or None, log=state.log, on_line=state.on_line)
