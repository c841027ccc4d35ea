"""A fresh CI runner stand-in: a root file system made by mmdebstrap from the distribution's mirror (Ubuntu 24.04
like GitHub's `ubuntu-24.04` runner, or the Debian image a GitLab job names), the repository copied in as a
checkout would, and a workflow's steps executed in it one after the other, as the runner's user (with sudo), with
the variables the CI service sets. Mounts live in a private mount namespace and vanish with it."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from diskimages.tools import load_checked, new_state

REPO_DIR = Path(__file__).resolve().parent.parent
RUNNER_UID = 1001          # the runner user's id on GitHub's hosted runners


def make_root(dest: Path, recipe: str, log: Path) -> Path:
    """A minimal system of the recipe's distribution and release with sudo, git and Python, and a `runner`
    user allowed to sudo without a password."""
    state = new_state(load_checked(recipe), dest, log)
    d = state.distro
    lines = d.sources_lines(state.mirror, state.release, list(d.components))
    argv = ["mmdebstrap", "--mode=root", "--variant=apt", f"--components={','.join(d.components)}",
            "--include=sudo,passwd,ca-certificates,git,python3,curl", *[f"--keyring={k}" for k in d.keyring_files],
            "--customize-hook=chroot \"$1\" /usr/sbin/useradd -m -u %d -s /bin/bash runner" % RUNNER_UID,
            "--customize-hook=echo 'runner ALL=(ALL) NOPASSWD:ALL' > \"$1\"/etc/sudoers.d/runner",
            # the machine's own certificate authorities (a proxy's, an organisation's), as it passes its DNS
            "--customize-hook=cp -r /usr/local/share/ca-certificates/. \"$1\"/usr/local/share/ca-certificates/ "
            "2>/dev/null; chroot \"$1\" /usr/sbin/update-ca-certificates >/dev/null",
            state.release.codename, str(dest), "-"]
    with open(log, "ab") as f:
        subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child", *argv],
                       input="\n".join(lines).encode() + b"\n", stdout=f, stderr=subprocess.STDOUT, check=True)
    return dest


def checkout(root: Path, where: str) -> Path:
    """The repository's tracked files (as the commit under test has them) copied to `where` in the root, owned
    by the runner user."""
    dest = root / where.lstrip("/")
    files = subprocess.run(["git", "-C", str(REPO_DIR), "ls-files", "-z"], capture_output=True, check=True
                           ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO_DIR / rel
        if not src.exists() and not src.is_symlink():
            continue                               # deleted in the working tree
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / rel)
        else:
            shutil.copy2(src, dest / rel)
    subprocess.run(["chown", "-R", f"{RUNNER_UID}:{RUNNER_UID}", str(root / "home/runner")], check=True)
    return dest


def run_in_root(root: Path, script: str, *, cwd: str, env: dict, log: Path, user: str = "runner",
                timeout: float = 1500) -> int:
    """Run `script` with bash -eo pipefail (GitHub's default shell for `run:`) in the root, as `user`, with
    exactly `env` (plus PATH and HOME). Returns the exit status; the output goes to `log`."""
    step = root / "tmp/step.sh"
    step.write_text(script)
    home = "/root" if user == "root" else f"/home/{user}"
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    envs = " ".join(shlex.quote(f"{k}={v}") for k, v in {**base, **env}.items())
    r = shlex.quote(str(root))
    # the root is a mount point, as a runner's / is (mount namespaces made inside need one)
    inner = (f"mount --bind {r} {r} && mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev && "
             f"mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {r}/dev/pts && "
             f"mount --bind {r}/dev/pts/ptmx {r}/dev/ptmx && mount --rbind /sys {r}/sys && "
             f"cp /etc/resolv.conf {r}/etc/resolv.conf && "
             f"exec chroot --userspec={user}:{user} {r} env -i {envs} "
             f"sh -c 'cd {shlex.quote(cwd)} && exec bash --noprofile --norc -eo pipefail /tmp/step.sh'")
    with open(log, "ab") as f:
        f.write(f"\n### {cwd}$ {script}\n".encode())
        f.flush()
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
                            "sh", "-c", inner], stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode


class Expressions:
    """`${{ ... }}` of a GitHub workflow, for the contexts a job here uses; an expression it does not know
    fails the test (so a new one is added here knowingly)."""

    def __init__(self, values: dict):
        self.values = values

    def __call__(self, text: str) -> str:
        return re.sub(r"\$\{\{\s*(.*?)\s*\}\}", lambda m: self.eval(m.group(1)), text)

    def eval(self, expr: str) -> str:
        m = re.fullmatch(r"(.+?)\s*&&\s*(.+?)\s*\|\|\s*(.+)", expr)
        if m:                                          # cond && a || b
            return self.eval(m.group(2)) if self._true(m.group(1)) else self.eval(m.group(3))
        if re.fullmatch(r"'[^']*'", expr):
            return expr[1:-1]
        if expr.startswith("secrets."):
            return ""                                  # a fork's run, or a secret not set
        m = re.fullmatch(r"format\('([^']*)',\s*(.+)\)", expr)
        if m:
            return m.group(1).replace("{0}", self.eval(m.group(2)))
        if expr.startswith("hashFiles("):
            return "0" * 64
        if expr not in self.values:
            raise KeyError(f"the runner stand-in does not know ${{{{ {expr} }}}}")
        return str(self.values[expr])

    def condition(self, cond: str) -> bool:
        """A step's `if:` (always(), or a comparison)."""
        cond = re.sub(r"^\$\{\{\s*(.*?)\s*\}\}$", r"\1", cond.strip())
        return cond in ("always()", "success()") or self._true(cond)

    def _true(self, cond: str) -> bool:
        m = re.fullmatch(r"(\S+)\s*(==|!=)\s*'([^']*)'", cond.strip())
        if not m:
            raise KeyError(f"the runner stand-in does not know the condition {cond!r}")
        v = self.eval(m.group(1))
        return (v == m.group(3)) == (m.group(2) == "==")


def github_env(workspace: str, root: Path, event: str = "push") -> dict:
    """The variables GitHub sets for a step (those the workflow's steps and the project read)."""
    (root / "tmp/github").mkdir(parents=True, exist_ok=True)
    for f in ("output", "env", "summary"):
        (root / f"tmp/github/{f}").write_text("")
        os.chown(root / f"tmp/github/{f}", RUNNER_UID, RUNNER_UID)
    return {"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": workspace, "GITHUB_EVENT_NAME": event,
            "GITHUB_REPOSITORY": "Example-Owner/disk-images", "GITHUB_REPOSITORY_OWNER": "Example-Owner",
            "GITHUB_ACTOR": "example", "GITHUB_RUN_NUMBER": "1", "GITHUB_REF": "refs/heads/main",
            "GITHUB_OUTPUT": "/tmp/github/output", "GITHUB_ENV": "/tmp/github/env",
            "GITHUB_STEP_SUMMARY": "/tmp/github/summary", "RUNNER_OS": "Linux", "RUNNER_TEMP": "/tmp"}


def step_outputs(root: Path) -> dict:
    """What the steps wrote to $GITHUB_OUTPUT (name=value lines)."""
    out = {}
    for line in (root / "tmp/github/output").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def run_github_job(job: dict, root: Path, workspace: str, expressions: Expressions, log: Path,
                   uses: dict, rewrite=lambda text: text) -> dict:
    """Every step of `job` in order: `run:` steps in the root with the job's and the step's environment, `uses:`
    steps by the handler `uses` names for the action (an action without one fails the test), steps whose `if:`
    is false skipped. `rewrite` is applied to each command and variable (a stand-in's address for a service's).
    Returns the outputs the steps wrote."""
    def ex(text):
        return rewrite(expressions(str(text)))

    env_job = {k: ex(v) for k, v in (job.get("env") or {}).items()}
    base = github_env(workspace, root, expressions.values.get("github.event_name", "push"))
    for step in job["steps"]:
        if "if" in step and not expressions.condition(str(step["if"])):
            continue
        if "uses" in step:
            action = step["uses"].split("@")[0]
            assert action in uses, f"the runner stand-in has no {action}"
            uses[action]({k: ex(v) for k, v in (step.get("with") or {}).items()})
            continue
        env = {**base, **env_job, **{k: ex(v) for k, v in (step.get("env") or {}).items()}}
        status = run_in_root(root, ex(step["run"]), cwd=workspace, env=env, log=log)
        assert status == 0, (f"step {step.get('name', step['run'][:60])!r} exited {status}; the end of {log}:\n"
                             + log_tail(log))
    return step_outputs(root)


def log_tail(log: Path, lines: int = 60) -> str:
    """The last lines of a runner log, for a failure message: CI keeps the report, not the temporary folder."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])



class Artifacts:
    """upload-artifact and download-artifact between the jobs: files copied out of one job's workspace, merged
    into another's."""

    def __init__(self, store: Path):
        self.store = store

    def upload(self, root: Path, workspace: str, w: dict) -> None:
        """Files kept relative to their least common ancestor folder, as upload-artifact stores them."""
        import glob
        base = root / workspace.lstrip("/")
        matched = [Path(f) for pattern in filter(None, (p.strip() for p in w["path"].splitlines()))
                   for f in glob.glob(str(base / pattern))]
        files = [f for m in matched for f in ([m] if m.is_file() else [x for x in m.rglob("*") if x.is_file()])]
        assert files, f"upload-artifact {w['name']}: no file matches {w['path']!r}"
        top = Path(os.path.commonpath([f.parent for f in files]))
        for f in files:
            target = self.store / w["name"] / f.relative_to(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)

    def download(self, root: Path, workspace: str, w: dict, uid: int = RUNNER_UID) -> None:
        import fnmatch
        dest = root / workspace.lstrip("/") / w["path"]
        dest.mkdir(parents=True, exist_ok=True)
        for art in sorted(self.store.iterdir()):
            if fnmatch.fnmatch(art.name, w.get("pattern", "*")):
                shutil.copytree(art, dest, dirs_exist_ok=True)      # merge-multiple
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(dest)], check=True)


def links() -> set[str]:
    """The host's network interfaces (the stand-in shares the host's network)."""
    return set(os.listdir("/sys/class/net"))


def reap_root(root: Path, links_before: set[str]) -> list[str]:
    """End every process still running inside the root (daemons a job started and its failure left) and remove
    the network interfaces they made on the shared network; returns what it ended or removed."""
    import signal
    done = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/root") == str(root):
                os.kill(int(pid), signal.SIGKILL)
                done.append(f"process {pid}")
        except OSError:
            continue
    for link in links() - links_before:
        subprocess.run(["ip", "link", "del", link], capture_output=True)
        done.append(f"interface {link}")
    return done
