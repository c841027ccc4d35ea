"""mmdebstrap: the native builder. It makes the root file system; diskimages customises it and assembles
the bootable disk (no VM, no loop devices). Packages are cached between builds with mmdebstrap's sync-in/out
hooks, so a warm build downloads nothing."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Optional

import re

from .. import checkers, trees
from ..errors import Failure
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
# apt's lists from resolution (a release's InRelease and Packages files), copied with their times: apt asks
# the mirror If-Modified-Since and keeps them when nothing changed. Copies: apt replaces them whole
_INDEXES_IN = ('if [ -d {indexes} ]; then mkdir -p "$1"/var/lib/apt/lists; find {indexes} -maxdepth 1 -type f '
               '\\( -name "*_InRelease" -o -name "*_Packages*" \\) -exec cp -p -t "$1"/var/lib/apt/lists/ {{}} +; fi')
# The package cache goes in and out as hard links when the cache and the tree share a file system (apt never
# rewrites a downloaded package), else as copies; out, only the packages the cache lacks. mmdebstrap's own
# sync-in/sync-out copy all of it both ways: 7 s of a 75 s Xfce build.
_SAME_FS = '[ "$(stat -c %d {cache})" = "$(stat -c %d "$1")" ]'
_SYNC_IN = f'if {_SAME_FS}; then cp -al {{cache}}/. "$1"{{archives}}; else cp -a {{cache}}/. "$1"{{archives}}; fi'
_SYNC_OUT = (f'if {_SAME_FS}; then l=-l; else l=; fi; '
             'find "$1"{archives} -maxdepth 1 -name "{glob}" -exec cp -n $l -t {cache} {{}} +')


def merged_usr_hooks() -> Path:
    """mmdebstrap's own merged-usr hooks, beside the program (/usr/bin/mmdebstrap: /usr/share/mmdebstrap/hooks)."""
    program = shutil.which("mmdebstrap")
    base = Path(program).resolve().parent.parent if program else Path("/usr")
    return base / "share/mmdebstrap/hooks/merged-usr"


def _missing_merged_usr_hook(state: BuildState) -> Optional[Path]:
    """The merged-usr hook a build needs and this host lacks (None: not needed, or there)."""
    if not state.distro.merged_usr_by_tool(state.release):
        return None
    hook = merged_usr_hooks() / "setup00.sh"
    return None if hook.is_file() else hook


class Mmdebstrap(RootfsTool):
    name = "mmdebstrap"
    program = "mmdebstrap"
    packages = ("mmdebstrap",)
    description = "Debian's multi-mirror debootstrap: root file system, customised and assembled by diskimages"
    package_managers = ("apt",)
    installs_as_resolved = True
    native = {"packages": "--include=", "desktop": "--include= (the desktop's packages)",
              "lean": "--essential-hook: the rule is in place before the packages install (then customize.sh, "
                      "as every tool)"}
    options = {"variant": (f"one of {', '.join(VARIANTS)}", lambda v: v in VARIANTS),
               "components": COMPONENTS,
               "extra_args": ("a list of --option[=value] arguments; no hooks (they would run on the build host)",
                              _safe_args)}

    def command(self, state: BuildState, rootfs: Path, cache: Path,
                indexes: Optional[Path] = None, module_index: Optional[Path] = None) -> tuple[list[str], str]:
        """(argv, stdin): the mirror lines go on stdin ('-') so no mirror appears on the command line.
        `indexes`: a folder of current package indexes to start from (`Distribution.package_index_cache`).
        `module_index`: a folder of kernel module indexes an earlier build kept (`_module_index_key`)."""
        r = state.recipe
        opts = r.tool_options(self.name)
        components = opts.get("components", list(state.distro.components))
        c = shlex.quote(str(cache))
        sync_in = _SYNC_IN.format(cache=c, archives=ARCHIVES)
        sync_out = _SYNC_OUT.format(cache=c, archives=ARCHIVES, glob=state.distro.package_cache_glob)
        argv = ["mmdebstrap", "--mode=root", f"--variant={opts.get('variant', 'apt')}",
                f"--architectures={r.architecture}", "--format=directory",
                f"--components={','.join(components)}",
                "--aptopt=Acquire::Languages \"none\"",
                f"--include={','.join(state.distro.packages_for(r))}",
                "--skip=download/empty", "--skip=essential/unlink",
                f"--setup-hook=mkdir -p \"$1\"{ARCHIVES}",
                f"--setup-hook={sync_in}", f"--customize-hook={sync_out}"]
        if indexes:
            argv.append(f"--setup-hook={_INDEXES_IN.format(indexes=shlex.quote(str(indexes)))}")
        if module_index and state.distro.module_index_reuse:
            # after the essential packages, which make /var/tmp with its own mode, before the kernel
            reuse = shlex.quote(state.distro.module_index_reuse)
            argv.append(f"--essential-hook=mkdir -p \"$1\"{reuse} && "
                        f"cp -a {shlex.quote(str(module_index))}/. \"$1\"{reuse}/")
        # what the distribution holds back while its packages install (the initramfs, index caches)
        for hook, step in (("essential", state.distro.bootstrap_setup_step(r)),
                           ("customize", state.distro.bootstrap_finish_step())):
            if step:
                argv.append(f"--{hook}-hook=chroot \"$1\" sh -ec {shlex.quote(step)}")
        if state.distro.merged_usr_by_tool(state.release):
            # /usr merged the way debootstrap does it, usr-is-merged installed, no usrmerge (nor its perl)
            argv.append(f"--hook-dir={merged_usr_hooks()}")
        # the package manager's output in the log, each line timed (runner.run stamps it): where the time goes
        argv.append("--verbose")
        # a distribution whose archive the host does not trust by default (Ubuntu on Debian): its keyring
        argv += [f"--keyring={k}" for k in state.distro.keyring_files]
        argv += [str(a) for a in opts.get("extra_args", [])]
        lines = state.distro.sources_lines(state.mirror, state.release, components)
        argv += [state.release.codename, str(rootfs)]
        if lines:
            argv.append("-")
        return argv, "\n".join(lines) + ("\n" if lines else "")

    @staticmethod
    def _indexes(state: BuildState, placeholder: Optional[str] = None) -> Optional[Path]:
        """Resolution's package indexes, for a build that keeps caches (`--no-cache` fetches its own)."""
        if not state.use_cache:
            return None
        found = state.distro.package_index_cache(state.release, state.recipe.architecture)
        return Path(placeholder) if found and placeholder else found

    def render(self, state: BuildState) -> dict[str, str]:
        argv, stdin = self.command(state, Path("ROOTFS"), Path("PACKAGE_CACHE"), self._indexes(state, "INDEXES"))
        env = [f"{k}={shlex.quote(v)}" for k, v in state.distro.bootstrap_env().items()]
        script = " \\\n  ".join(env + [shlex.quote(a) for a in argv])
        if stdin:
            script += " <<'SOURCES'\n" + stdin + "SOURCES"
        return {"mmdebstrap.sh": script + "\n", "customize.sh": render_script(state.recipe)}

    def tree_config(self, state: BuildState) -> str:
        return self.render(state)["mmdebstrap.sh"]

    def check(self, state: BuildState, where: Path) -> list:
        """mmdebstrap has no parser that runs without the archive: the command's keyrings must exist, the
        sources must be well-formed apt lines, and the scripts must parse (`sh -n`)."""
        found = super().check(state, where)
        argv, stdin = self.command(state, where / "rootfs", where / "cache")
        missing = [a.split("=", 1)[1] for a in argv if a.startswith("--keyring=") and
                   not os.path.exists(a.split("=", 1)[1])]
        found.append(checkers.Finding("mmdebstrap.sh", "keyrings on this host", not missing,
                                      f"missing {', '.join(missing)} (scripts/setup.sh installs "
                                      f"{', '.join(state.distro.keyring_packages)})" if missing else
                                      "every --keyring file exists"))
        if state.distro.merged_usr_by_tool(state.release):
            missing = _missing_merged_usr_hook(state)
            found.append(checkers.Finding("mmdebstrap.sh", "merged-usr hook", not missing,
                                          f"{missing} is missing (mmdebstrap's package ships it)" if missing
                                          else str(merged_usr_hooks())))
        bad = [line for line in stdin.splitlines() if not re.fullmatch(r"deb \S+://\S+ \S+( [a-z0-9-]+)+", line)]
        found.append(checkers.Finding("mmdebstrap.sh", "apt sources lines", not bad,
                                      f"not an apt line: {bad[0]}" if bad else f"{len(stdin.splitlines())} lines"))
        return found

    def bootstrap(self, state: BuildState, rootfs: Path) -> None:
        missing = _missing_merged_usr_hook(state)
        if missing:
            raise Failure(f"mmdebstrap's merged-usr hook is missing ({missing}): {state.recipe.name} needs it to "
                          f"lay /usr out merged (install mmdebstrap from {state.distro.pretty_name}'s package, "
                          "which ships it)")
        key = self._module_index_key(state)
        staged = rootfs.parent / "module-index"
        if not (key and trees.restore_folder(key, "modindex", staged)):
            staged = None
        with self.package_cache(state) as cache:
            argv, stdin = self.command(state, rootfs, cache, self._indexes(state), staged)
            # mmdebstrap's own temporary files (its gpg home, apt.conf) beside the tree, in the folder the
            # reaper tracks: in /tmp they would outlive a kill -9 (it removes them only when it exits)
            tmp = rootfs.parent / "mmdebstrap-tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            # a private mount namespace: whatever mmdebstrap mounts disappears with it, even if it is killed
            run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", *argv],
                stdin=stdin or None, log=state.log, on_line=state.on_line,
                env={**state.distro.bootstrap_env(), "TMPDIR": str(tmp)}, stamp=True)
            shutil.rmtree(tmp, ignore_errors=True)
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
        state.module_index = self._keep_module_index(state, rootfs, key)

    @staticmethod
    def _module_index_key(state: BuildState) -> Optional[str]:
        """Where a build that keeps caches keeps its kernel module indexes: one entry per distribution, release
        and architecture (the index of the newest kernel built); what depmod read decides in the tree whether
        an index is reused."""
        if not (state.use_cache and state.distro.module_index_out):
            return None
        what = ["kernel module index", state.distro.name, state.release.codename, state.recipe.architecture]
        return "sha256:" + hashlib.sha256(json.dumps(what).encode()).hexdigest()

    @staticmethod
    def _keep_module_index(state: BuildState, rootfs: Path, key: Optional[str]) -> str:
        """What the package phase left about its module indexes (`Distribution.module_index_out`), kept under
        `key` when depmod made them, then removed from the tree; returns what the record says."""
        if not state.distro.module_index_out:
            return ""
        out = rootfs / state.distro.module_index_out.lstrip("/")
        # the tree's own folder, not one a link in the tree leads to on the build host
        if not out.is_dir() or not os.path.realpath(out).startswith(os.path.realpath(rootfs) + os.sep):
            return ""
        cpu = out / "cpu_s"
        figure = cpu.read_text().strip() if cpu.is_file() and not cpu.is_symlink() else ""
        if re.fullmatch(r"\d{1,6}(\.\d+)?", figure):
            state.detached_cpu_s += float(figure)
        cpu.unlink(missing_ok=True)
        made = sorted(p.name for p in out.iterdir() if p.is_dir() and (out / f"{p.name}.inputs").is_file())
        reused = sorted(n for n in (p.name[:-len(".reused")] for p in out.glob("*.reused")) if n not in made)
        if made and key:
            for marker in out.glob("*.reused"):
                marker.unlink()
            trees.save_folder(key, "modindex", out)
        shutil.rmtree(out)
        how = []
        if made:
            how.append(f"made by depmod for {', '.join(made)}" + (" (kept for rebuilds)" if key else ""))
        if reused:
            how.append(f"reused for {', '.join(reused)}: depmod's outputs from an earlier build that read the "
                       "same modules and configuration")
        return "; ".join(how)
