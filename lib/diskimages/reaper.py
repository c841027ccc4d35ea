"""Nothing outlives a killed command: what a command starts or creates is recorded on disk while it lives, and the
next command (build, boot, registry) or `python -m diskimages gc` ends and removes what a dead one left.

Each live process that starts something keeps one file, `~/.cache/diskimages/running/PID-START.json` (START:
the process's start time, so a reused PID is not mistaken for it), with entries:

  * group:  a process group (session) it started: every process of that session is killed;
  * path:   a folder or file it created (a work folder, a VM's disk copy, a registry's config);
  * emptydir: a host folder it created for a tool (removed only while still empty);
  * loop:   an image file a loop device may still be attached to;
  * domain: a libvirt domain it started;
  * libvirt: it used the libvirt daemons (which diskimages may have started for it).

The file goes when the process ends normally. A SIGKILL leaves it behind, and `reap()` then finds its owner
dead. Direct children also get a parent-death signal (SIGKILL), so they stop at once, not only at the next
command.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

from .paths import cache_dir

PR_SET_PDEATHSIG = 1
_lock = threading.Lock()
_entries: dict[str, dict] = {}
_counter = 0


def _stat(pid: int, field: int) -> Optional[int]:
    """A numeric field of /proc/PID/stat, counted after the command name (3: session, 19: start time)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[field])


def _start_time(pid: int) -> Optional[int]:
    return _stat(pid, 19)


def _session(pid: int) -> Optional[int]:
    return _stat(pid, 3)


def _state_dir() -> Path:
    return cache_dir("running")


def _own_file() -> Path:
    return _state_dir() / f"{os.getpid()}-{_start_time(os.getpid())}.json"


def _save() -> None:
    path = _own_file()
    if not _entries:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(list(_entries.values())))
    os.replace(tmp, path)


def track(kind: str, **info) -> str:
    """Record something this process started or created; returns the key to `untrack` it with."""
    global _counter
    with _lock:
        _counter += 1
        key = str(_counter)
        _entries[key] = {"kind": kind, **info}
        _save()
    return key


def untrack(key: Optional[str]) -> None:
    if key is None:
        return
    with _lock:
        _entries.pop(key, None)
        _save()


@contextlib.contextmanager
def temp_dir(prefix: str, where: Optional[Path] = None) -> Iterator[Path]:
    """A temporary folder (in `where`, default the system's) that is removed when the block ends, and by the
    next command if this one is killed."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    key = track("path", path=str(path), what="temporary folder")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        untrack(key)


@contextlib.contextmanager
def temp_files(*paths: Path, what: str) -> Iterator[None]:
    """Files being written under temporary names: removed when the block ends (renamed into place or not),
    and by the next command if this one is killed."""
    keys = [track("path", path=str(p), what=what) for p in paths]
    try:
        yield
    finally:
        for p, key in zip(paths, keys):
            Path(p).unlink(missing_ok=True)
            untrack(key)


def track_group(pid: int, what: str) -> str:
    """A child started with start_new_session=True: its session id is its PID."""
    return track("group", sid=pid, start=_start_time(pid) or 0, what=what)


def _find_prctl():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# looked up once, in the parent: a child forked while another thread of the parent holds the dynamic loader's
# lock (an import, a dlopen) would wait for it forever if the child called dlopen or dlsym itself
_PRCTL = _find_prctl()


def die_with_parent() -> None:
    """preexec_fn for children: SIGKILL when the process that started them dies (even by SIGKILL). A parent
    that died between the fork and this call sends no signal (the child already has another parent, and no
    tracking entry names it yet): the child ends itself instead of running the command."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _STARTER:
        os.kill(os.getpid(), signal.SIGKILL)


def _note_starter() -> None:
    global _STARTER
    _STARTER = os.getpid()


#: the process about to fork, noted just before every fork: the parent a child set up by die_with_parent must
#: still have (a copy of a process that imported this module, forked by a user's multiprocessing pool, starts
#: children of its own)
_STARTER = os.getpid()
os.register_at_fork(before=_note_starter)


# -- reaping what dead processes left
def _alive(owner: str) -> bool:
    pid, _, start = owner.partition("-")
    return pid.isdigit() and str(_start_time(int(pid))) == start


def _kill_session(sid: int, since: int) -> int:
    """SIGKILL every process of session `sid` started at or after `since` (not an older unrelated one)."""
    killed = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        pid = int(d.name)
        if pid != os.getpid() and _session(pid) == sid and (_start_time(pid) or 0) >= since:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def _mounted_under(path: Path) -> bool:
    prefix = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == prefix or line.split()[4].startswith(prefix + "/") for line in f)


def _reap_entry(e: dict) -> Optional[str]:
    kind = e.get("kind")
    if kind == "group":
        n = _kill_session(int(e["sid"]), int(e.get("start", 0)))
        return f"killed {n} process(es) of {e.get('what', 'a command')}" if n else None
    if kind == "loop":
        out = subprocess.run(["losetup", "-j", e["image"]], capture_output=True, text=True).stdout
        devs = [line.split(":", 1)[0] for line in out.splitlines()]
        for dev in devs:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        return f"detached {', '.join(devs)}" if devs else None
    if kind == "domain":
        try:
            from . import libvirt_host
            conn = libvirt_host._try_open(libvirt_host._libvirt())
            if conn is not None:
                dom = conn.lookupByName(e["name"])
                if dom.isActive():
                    dom.destroy()
                    return f"destroyed VM {e['name']}"
        except Exception:       # no libvirt, no such domain: nothing to do
            return None
        return None
    if kind == "emptydir":
        try:
            Path(e["path"]).rmdir()
            return f"removed {e['path']}"
        except OSError:
            return None
    if kind == "path":
        p = Path(e["path"])
        if not os.path.lexists(p) or _mounted_under(p):
            return None
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return f"removed {p}"
    return None


ORDER = {"group": 0, "domain": 1, "loop": 2, "path": 3, "emptydir": 4, "libvirt": 5}


def reap(say: bool = False) -> list[str]:
    """End and remove what dead diskimages processes left; returns what was done, one line each (`say`: also
    print each on stderr)."""
    done: list[str] = []
    for f in sorted(_state_dir().glob("*.json")):
        if _alive(f.stem):
            continue
        try:
            entries = json.loads(f.read_text())
        except (OSError, ValueError):
            entries = []
        for e in sorted(entries, key=lambda e: ORDER.get(e.get("kind"), 9)):
            try:
                what = _reap_entry(e)
            except OSError:
                what = None
            if what:
                done.append(what)
        f.unlink(missing_ok=True)
    for f in _state_dir().glob("*.json.partial"):
        if not _alive(f.name.split(".")[0]):
            f.unlink(missing_ok=True)
    done += _reap_libvirt()
    if say:
        for line in done:
            print(f"diskimages: cleaned up after a killed command: {line}", file=sys.stderr)
    return done


def libvirt_users() -> int:
    """How many live diskimages processes use libvirt now (this one included)."""
    n = 0
    for f in _state_dir().glob("*.json"):
        if _alive(f.stem):
            try:
                n += any(e.get("kind") == "libvirt" for e in json.loads(f.read_text()))
            except (OSError, ValueError):
                pass
    return n


def _reap_libvirt() -> list[str]:
    """The libvirt daemons diskimages started, once no live process uses them and no kept VM runs: stopped,
    and /etc/libvirt/qemu.conf restored."""
    from . import libvirt_host
    if not libvirt_host.started_by_us() or libvirt_users():
        return []
    try:
        from .vm import list_vms
        if list_vms():
            return []
        conn = libvirt_host._try_open(libvirt_host._libvirt())
        if conn is not None and conn.listAllDomains(1):      # a running VM (ours or not): leave them up
            return []
    except Exception:
        return []
    stopped = libvirt_host.stop_started()
    return [f"stopped {', '.join(stopped)} (left by a killed command); qemu.conf restored"] if stopped else []

