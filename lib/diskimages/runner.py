"""Running external programs: output to a log, the last line to a progress callback, and no orphans.

Every child runs in its own process group; when the build is interrupted (Ctrl-C, SIGTERM) or fails, the group
is terminated and waited for before the exception goes on, so cleanup never races a still-running tool.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from . import reaper
from .errors import Failure


class CommandError(Failure):
    def __init__(self, cmd: Sequence[str], code: int, tail: str, log: Optional[Path] = None):
        self.cmd, self.code, self.tail, self.log = list(cmd), code, tail, log
        where = f" (full log: {log})" if log else ""
        super().__init__(f"{os.path.basename(str(cmd[0]))} failed with exit status {code}{where}:\n{tail}")


class Interrupted(BaseException):
    """Raised in the main thread on SIGTERM/SIGHUP so `finally:` blocks clean up as they do for Ctrl-C."""


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"interrupted by signal {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` s, and finally SIGKILL whatever of the
    group is left (grandchildren that outlived their parent) so nothing writes into a folder being removed."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd: Sequence[str], *, log: Optional[Path] = None, on_line: Optional[Callable[[str], None]] = None,
        stdin: Optional[str | bytes] = None, env: Optional[dict] = None, cwd: Optional[Path] = None,
        check: bool = True, capture: bool = False, stamp: bool = False) -> str:
    """Run `cmd`, appending its output to `log`; returns the output when `capture` (else the last 40 lines).
    `stamp`: each log line starts with the seconds since the command started ("[  12.34] "), for tools whose
    own output has no times."""
    cmd = [str(c) for c in cmd]
    full_env = None if env is None else {**os.environ, **env}
    logf = open(log, "ab") if log else None
    tail: list[str] = []
    captured: list[str] = []
    try:
        if logf:
            logf.write(("$ " + " ".join(cmd) + "\n").encode())
            logf.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                start_new_session=True, preexec_fn=reaper.die_with_parent)
        tracked = reaper.track_group(proc.pid, os.path.basename(cmd[0]))
        try:
            if stdin is not None:
                data = stdin.encode() if isinstance(stdin, str) else stdin
                threading.Thread(target=_feed, args=(proc, data), daemon=True).start()
            started = time.monotonic()
            for raw in proc.stdout:
                if logf:
                    if stamp:
                        logf.write(f"[{time.monotonic() - started:8.2f}] ".encode())
                    logf.write(raw)
                    logf.flush()
                line = raw.decode(errors="replace").rstrip("\n")
                if capture:
                    captured.append(line)
                tail.append(line)
                del tail[:-40]
                if on_line and line.strip():
                    on_line(line)
            proc.wait()
            if logf:
                # every command's time in the log, so a slow step is found by reading it
                logf.write(f"diskimages: {os.path.basename(cmd[0])} exited {proc.returncode} after "
                           f"{time.monotonic() - started:.2f} s\n".encode())
        except BaseException:
            _stop_group(proc)
            raise
        finally:
            proc.stdout.close()
            reaper.untrack(tracked)
    finally:
        if logf:
            logf.close()
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, "\n".join(tail[-15:]), log)
    return "\n".join(captured if capture else tail)


def note(log: Optional[Path], text: str) -> None:
    """One line of diskimages' own in a build log (what it did between the commands it ran)."""
    if log:
        with open(log, "a") as f:
            f.write(f"diskimages: {text}\n")


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
