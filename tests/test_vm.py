"""VMs through libvirt-python (real libvirtd and QEMU, TCG here): started from a host where no libvirtd runs,
reached over SSH, kept and stopped from the CLI; nothing is left behind, not even the daemons."""
import subprocess
import sys

import pytest

from diskimages import libvirt_host
from diskimages.boot import boot_check
from diskimages.vm import list_vms, vms_dir

pytestmark = [pytest.mark.build, pytest.mark.boot]


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "diskimages", *args], capture_output=True, text=True,
                          timeout=timeout)


def daemons_running():
    return subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode == 0


@pytest.fixture
def no_libvirtd():
    """Each test starts from a host with no libvirtd running, as a CI runner without systemd is. A libvirtd
    that diskimages did not start (the host's own service) is never touched: the test is skipped instead."""
    libvirt_host.stop_started()          # leftovers of an earlier run that diskimages started
    if daemons_running():
        pytest.skip("a libvirtd that diskimages did not start is running; these tests need a host without one")
    qemu_conf = libvirt_host.QEMU_CONF.read_text() if libvirt_host.QEMU_CONF.exists() else None
    yield
    assert not daemons_running(), "libvirtd left running"
    assert [v["name"] for v in list_vms()] == []
    if qemu_conf is not None:
        assert libvirt_host.QEMU_CONF.read_text() == qemu_conf, "qemu.conf not restored"


def test_keep_ssh_stop_and_fresh_identity_per_boot(minimal_build, no_libvirtd, tmp_path):
    img = str(minimal_build.image)
    r = cli("boot", img, "--keep", "--name", "di-test-kept", "--screenshots", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VM di-test-kept is running" in r.stdout and "vnc://127.0.0.1:" in r.stdout
    try:
        assert "di-test-kept" in cli("vms").stdout
        s = cli("ssh", "di-test-kept", "--", "cat /etc/hostname; exit 7")
        assert s.returncode == 7 and s.stdout.strip() == "debian-minimal", s.stderr
        first = cli("ssh", "di-test-kept", "--", "cat /etc/machine-id; cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub")
        machine_id_1, hostkey_1 = first.stdout.split()
    finally:
        stop = cli("stop", "di-test-kept")
    assert stop.returncode == 0 and "also stopped what diskimages had started" in stop.stdout, stop.stdout
    assert not (vms_dir() / "di-test-kept").exists()

    # a second boot of the same image: its own machine-id and SSH host keys
    res = boot_check(minimal_build.image, minimal_build.record, backend="libvirt", screenshot_dir=tmp_path)
    assert res.passed, res.reason
    assert res.ip and res.ssh["gateway_reachable"] == "yes"
    assert res.milestones["login"] <= res.milestones["lease"] <= res.milestones["ssh"], res.milestones
    assert len(res.ssh["machine-id"]) == 32 and res.ssh["machine-id"] != machine_id_1
    assert res.ssh["hostkey"] and res.probe["hostkey"] == res.ssh["hostkey"]
    import hashlib
    assert hashlib.sha256((hostkey_1 + "\n").encode()).hexdigest()[:32] != res.ssh["hostkey"]


def test_unbootable_image_fails_clearly_and_leaves_nothing(no_libvirtd, tmp_path):
    bad = tmp_path / "truncated.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(bad), "1G"], check=True)
    r = cli("boot", str(bad), "--timeout", "120", "--backend", "libvirt", timeout=300)
    assert r.returncode == 1
    assert "boot check failed: no output on the serial console after 45 s" in r.stderr, r.stderr
    assert not any(vms_dir().iterdir())


def test_ssh_to_unknown_vm_names_known_ones(no_libvirtd):
    r = cli("ssh", "nope", "--", "true")
    assert r.returncode == 2 and "no VM named 'nope' (known: none)" in r.stderr

