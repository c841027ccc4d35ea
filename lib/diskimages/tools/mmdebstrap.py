"""mmdebstrap: the native builder. It makes the root file system; diskimages customises it and assembles
the bootable disk (no VM, no loop devices). Packages are cached between builds with mmdebstrap's sync-in/out
hooks, so a warm build downloads nothing."""
from __future__ import annotations

import shlex
from pathlib import Path

from ..distros import get_distro
from ..runner import run
from . import BuildContext, PackageCache, Tool, register


@register
class Mmdebstrap(Tool):
    name = "mmdebstrap"
    program = "mmdebstrap"
    description = "Debian's multi-mirror debootstrap: root file system, customised and assembled by diskimages"
    distros = ("debian",)
    native = {"packages": "--include=", "desktop": "--include= (the desktop's packages)"}

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
        cache = PackageCache(ctx).path
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
        argv, stdin = self.command(ctx, rootfs)
        with PackageCache(ctx):
            # a private mount namespace: whatever mmdebstrap mounts disappears with it, even if it is killed
            run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", *argv],
                stdin=stdin or None, log=ctx.log, on_line=ctx.on_line)
