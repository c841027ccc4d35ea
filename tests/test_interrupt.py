"""Interrupting a build (Ctrl-C or SIGTERM at different phases) leaves no loop device, mount, process,
work folder or partial image behind."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.build


def _loops():
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def _mounts_under(path: Path):
    return [l for l in open("/proc/self/mountinfo") if str(path) in l]


def _wait_for(log: Path, text: str, proc, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"build ended before {text!r}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in {log}")


@pytest.mark.parametrize("sig,marker", [
    (signal.SIGINT, "I: installing remaining packages"),   # inside mmdebstrap (chroot, mounts, dpkg)
    (signal.SIGTERM, "$ mkfs.ext4"),                       # during disk assembly
])
def test_interrupted_build_leaves_nothing(tmp_path, sig, marker):
    loops_before = _loops()
    log = tmp_path / "debian-12-minimal.mmdebstrap.log"
    # SIGINT as a foreground command has it (a suite started in the background hands its children an ignored
    # SIGINT, which Python keeps ignoring)
    proc = subprocess.Popen([sys.executable, "-m", "diskimages", "build", "debian-12-minimal", "-q",
                             "-o", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(log, marker, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out.decode()
    assert b"interrupted" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.name]     # only the log is left
    assert _mounts_under(tmp_path) == []
    assert _loops() == loops_before
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert [p for p in left if int(p) != os.getpid()] == []
