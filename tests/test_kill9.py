"""kill -9 at any moment leaves nothing the next command does not reap: a build killed in each phase, a boot
through libvirt, `registry serve`, a pull, and papermill's kernel during a build. After the kill, the next
command (`python -m diskimages gc`, which `build`, `boot` and `registry` also do first) must leave no process,
domain, daemon, mount, loop device, qemu.conf edit, port, work folder or unfinished image."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from diskimages import libvirt_host, scratch
from diskimages.paths import cache_dir
from diskimages.build import DISK_PREFIX

REPO = Path(__file__).resolve().parent.parent


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "diskimages", *args], capture_output=True, text=True,
                          timeout=timeout)


def _as_in_a_terminal():
    """SIGINT as a foreground command has it: a suite started in the background (`nohup ... &`) hands its
    children an ignored SIGINT, which Python then keeps ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "diskimages", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, preexec_fn=_as_in_a_terminal, **kw)


def wait_for(check, what, proc=None, timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if check():
            return
        assert proc is None or proc.poll() is None, f"ended before {what}: {proc.stdout.read().decode()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def processes_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd[:200]}")
    return found


def mounts_under(path: Path) -> list[str]:
    return [line for line in open("/proc/self/mountinfo") if str(path) in line]


def loops() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


def dead_owner_records() -> list[str]:
    out = []
    for f in cache_dir("running").glob("*.json"):
        pid = f.stem.split("-")[0]
        if not Path(f"/proc/{pid}").exists():
            out.append(f.name)
    return out


def assert_nothing_left(folder: Path, loops_before: str):
    gc = cli("gc")
    assert gc.returncode == 0, gc.stderr
    assert processes_mentioning(str(folder)) == []
    assert mounts_under(folder) == []
    assert loops() == loops_before
    assert not [p for p in folder.rglob("*") if p.name.startswith(".work-") or p.name.endswith(".partial")]
    # a root tree made in memory (scratch.py) goes too, with whatever ran in it
    assert not list(scratch.MEMORY.glob("diskimages-tree-*")) and processes_mentioning("diskimages-tree-") == []
    assert not list(scratch.MEMORY.glob(f"{DISK_PREFIX}*"))      # and a raw disk assembled in memory
    assert mounts_under(scratch.MEMORY / "diskimages-tree-") == []
    assert dead_owner_records() == []
    return gc.stdout


@pytest.mark.build
@pytest.mark.parametrize("marker,compression", [
    ("I: installing remaining packages", "zstd"),      # inside mmdebstrap (chroot, dpkg)
    ("$ mkfs.ext4", "zstd"),                           # disk assembly
    ("$ qemu-img convert", "zlib"),                    # compression (zlib: slow enough to be caught)
])
def test_build_killed_in_each_phase(tmp_path, marker, compression):
    before = loops()
    tool_temp_before = set(Path(tempfile.gettempdir()).glob("mmdebstrap.*"))
    log = tmp_path / "debian-13-minimal.mmdebstrap.log"
    proc = start("build", "debian-13-minimal", "-q", "-o", str(tmp_path), "--compression", compression)
    wait_for(lambda: log.exists() and marker in log.read_text(errors="replace"), marker, proc)
    proc.kill()
    proc.wait()
    said = assert_nothing_left(tmp_path, before)
    assert "removed" in said and ".work-debian-13-minimal" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == [log.name]
    # mmdebstrap's own temporary files (gpg home, apt.conf) went with the tree, not left in /tmp
    assert set(Path(tempfile.gettempdir()).glob("mmdebstrap.*")) == tool_temp_before


def _daemons():
    return {p for p in ("libvirtd", "virtlogd") if subprocess.run(["pgrep", "-x", p], capture_output=True).returncode == 0}


@pytest.mark.build
@pytest.mark.boot
def test_boot_killed_leaves_no_vm_daemon_or_qemu_conf_edit(minimal_build, tmp_path):
    libvirt_host.stop_started()
    if _daemons():
        pytest.skip("a libvirtd that diskimages did not start is running; this test needs a host without one")
    conf = libvirt_host.QEMU_CONF.read_text() if libvirt_host.QEMU_CONF.exists() else None
    vms = Path("/var/lib/libvirt/images/diskimages")
    before = set(os.listdir(vms)) if vms.is_dir() else set()
    proc = start("boot", str(minimal_build.image), "--backend", "libvirt")
    wait_for(lambda: processes_mentioning("qemu-system") and vms.is_dir() and set(os.listdir(vms)) - before,
             "the boot's VM", proc)
    proc.kill()
    proc.wait()
    said = assert_nothing_left(tmp_path, loops())
    assert "destroyed VM" in said and "qemu.conf restored" in said
    assert not _daemons() and not processes_mentioning("qemu-system") and not processes_mentioning("dnsmasq")
    assert (set(os.listdir(vms)) if vms.is_dir() else set()) == before
    if conf is not None:
        assert libvirt_host.QEMU_CONF.read_text() == conf


@pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry not installed")
def test_registry_serve_killed_frees_its_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = start("registry", "serve", "--storage", str(tmp_path / "reg"), "--port", str(port))
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, "the registry listening", proc, 60)
    proc.kill()
    proc.wait()
    wait_for(lambda: not processes_mentioning("docker-registry serve"), "docker-registry ended", timeout=10)
    assert_nothing_left(tmp_path, loops())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0          # nobody listens: the port is free
    again = start("registry", "serve", "--storage", str(tmp_path / "reg"), "--port", str(port))
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, "a restart", again, 60)
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(timeout=30)


def test_pull_killed_resumes_and_leaves_no_partial(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_hostile_registry import BLOB, HostileRegistry
    with HostileRegistry(blob_mode="slow") as reg:
        proc = start("pull", f"{reg.host}/x/img:v1", str(tmp_path))
        part = tmp_path / "disk.qcow2.partial"
        wait_for(lambda: part.exists(), "a partial download", proc, 60)
        time.sleep(1)
        proc.kill()
        proc.wait()
        reg.blob_mode = "ok"
        p = cli("pull", f"{reg.host}/x/img:v1", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path)) == ["disk.qcow2"] and (tmp_path / "disk.qcow2").read_bytes() == BLOB


@pytest.mark.build
def test_papermill_kernel_killed_during_a_build(tmp_path):
    out = tmp_path / "out"
    log = out / "debian-13-minimal.mmdebstrap.log"
    before = loops()
    pm = subprocess.Popen([str(Path(sys.executable).parent / "papermill"), str(REPO / "notebooks/build.ipynb"),
                           str(tmp_path / "b.ipynb"), "-p", "recipe", "debian-13-minimal", "-p", "tool", "mmdebstrap",
                           "-p", "output_dir", str(out), "-p", "boot_test", "False"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: log.exists() and "I: installing remaining packages" in log.read_text(errors="replace"),
             "mmdebstrap installing", pm)
    kernels = [p.split(":")[0] for p in processes_mentioning("ipykernel_launcher")]
    assert kernels
    for pid in kernels:
        os.kill(int(pid), signal.SIGKILL)
    pm.wait(timeout=120)
    assert_nothing_left(out, before)
    assert not processes_mentioning("mmdebstrap")
    assert json.dumps(sorted(p.name for p in out.iterdir())) == json.dumps([log.name])
