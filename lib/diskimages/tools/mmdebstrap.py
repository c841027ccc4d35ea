"""mmdebstrap: the native builder. It makes the root file system; diskimages customises it and assembles
the bootable disk (no VM, no loop devices). Packages are cached between builds with mmdebstrap's sync-in/out
hooks, so a warm build downloads nothing."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..distros import get_distro
from ..paths import cache_dir
from ..runner import run
from . import BuildContext, Tool, register


@register
class Mmdebstrap(Tool):
    name = "mmdebstrap"
    program = "mmdebstrap"
    description = "Debian's multi-mirror debootstrap: root file system, customised and assembled by diskimages"
    distros = ("debian",)

    def _cache(self, ctx: BuildContext) -> Path:
        """The package cache: shared between builds, or (use_cache off) a fresh one inside the work folder,
        so that a cold build is measured the same way (its downloads are counted, then discarded)."""
        r = ctx.recipe
        if ctx.use_cache:
            return cache_dir("apt", f"{r.distro}-{r.release}-{r.architecture}")
        return ctx.work / "apt-cache"

    def command(self, ctx: BuildContext, rootfs: Path) -> tuple[list[str], str]:
        """(argv, stdin): the mirror lines go on stdin ('-') so no mirror appears on the command line."""
        r = ctx.recipe
        opts = r.tool_options(self.name)
        pkgs = get_distro(r.distro).packages_for(r)
        argv = ["mmdebstrap", "--mode=root", f"--variant={opts.get('variant', 'apt')}",
                f"--architectures={r.architecture}", "--format=directory",
                f"--components={','.join(opts.get('components', ['main']))}",
                "--aptopt=Acquire::Languages \"none\"",
                f"--include={','.join(pkgs)}"]
        cache = self._cache(ctx)
        argv += ["--skip=download/empty", "--skip=essential/unlink",
                 "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/",
                 f"--setup-hook=sync-in {cache} /var/cache/apt/archives/",
                 f"--customize-hook=sync-out /var/cache/apt/archives {cache}"]
        argv += [str(a) for a in opts.get("extra_args", [])]
        lines = ctx.mirror.sources_lines(r.release, opts.get("components", ["main"]))
        argv += [r.release, str(rootfs)]
        if lines:
            argv.append("-")
        return argv, "\n".join(lines) + ("\n" if lines else "")

    def render(self, ctx: BuildContext) -> dict[str, str]:
        argv, stdin = self.command(ctx, Path("ROOTFS"))
        script = " \\\n  ".join(shlex.quote(a) for a in argv)
        if stdin:
            script += " <<'SOURCES'\n" + stdin + "SOURCES"
        from ..customize import render_script
        return {"mmdebstrap.sh": script + "\n", "customize.sh": render_script(ctx.recipe)}

    def bootstrap(self, ctx: BuildContext, rootfs: Path) -> None:
        cache = self._cache(ctx)
        cache.mkdir(parents=True, exist_ok=True)
        before = {p.name for p in cache.glob("*.deb")}
        argv, stdin = self.command(ctx, rootfs)
        # a private mount namespace: whatever mmdebstrap mounts disappears with it, even if it is killed
        run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", *argv],
            stdin=stdin or None, log=ctx.log, on_line=ctx.on_line)
        new = [p for p in cache.glob("*.deb") if p.name not in before]
        ctx.stats["downloaded_bytes"] = sum(p.stat().st_size for p in new)
        ctx.stats["cache"] = ("warm" if not new else "cold" if not before else "partial") if ctx.use_cache else "off"
