"""Pure parts: mirror selection from apt sources, the rendered customisation script, the mmdebstrap command."""
import subprocess

import pytest

from diskimages.customize import password_env_vars, render_script
from diskimages import distros
from diskimages.distros.debian import host_apt_sources
from diskimages.recipe import RecipeError, recipe_from_data

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main
"""


def fake_root(tmp_path, os_id="debian", sources=DEB822):
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(sources)
    (tmp_path / "etc/os-release").write_text(f'ID={os_id}\n')
    return tmp_path


def test_mirror_from_host_deb822(tmp_path):
    root = fake_root(tmp_path)
    assert [s.uri for s in host_apt_sources(root)] == ["http://mirror.example/debian",
                                                       "http://security.example/debian-security"]
    debian = distros.get("debian")
    m = debian.choose_mirror(root=root)
    assert m.origin == "host apt sources"
    assert debian.sources_lines(m, debian.release("13")) == ["deb http://mirror.example/debian trixie main",
                                         "deb http://mirror.example/debian trixie-updates main",
                                         "deb http://security.example/debian-security trixie-security main"]


def test_mirror_one_line_format_and_other_distro_host(tmp_path):
    root = fake_root(tmp_path, os_id="ubuntu", sources="")
    (root / "etc/apt/sources.list").write_text("deb [arch=amd64] http://archive.example/ubuntu jammy main\n")
    assert host_apt_sources(root)[0].uri == "http://archive.example/ubuntu"
    debian = distros.get("debian")
    m = debian.choose_mirror(root=root)   # an Ubuntu runner: no Debian mirror of its own
    assert m.origin == "tool default" and debian.sources_lines(m, debian.release("bookworm")) == []


def test_mirror_parameter_wins(tmp_path):
    m = distros.get("debian").choose_mirror("http://param.example/debian/", root=fake_root(tmp_path))
    assert m.origin == "parameter" and m.uri == "http://param.example/debian"


@pytest.mark.parametrize("desktop", ["xfce", "gnome", "kde", "mate", "lxqt", "none"])
def test_customize_script_is_valid_shell_for_every_desktop(desktop, tmp_path):
    r = recipe_from_data({"name": "t", "distro": "debian", "release": "bookworm", "desktop": desktop,
                          "users": [{"name": "u", "password_hash": "$6$s$h", "sudo": True}], "autologin": "u"})
    script = render_script(r)
    (tmp_path / "s.sh").write_text(script)
    subprocess.run(["sh", "-n", str(tmp_path / "s.sh")], check=True)
    assert "useradd -m -u 1000 -s /bin/bash -G sudo u" in script
    assert ": > /etc/machine-id" in script
    dm_file = {"xfce": "lightdm.conf.d", "mate": "lightdm.conf.d", "gnome": "/etc/gdm3/daemon.conf",
               "kde": "Session=plasma.desktop", "lxqt": "Session=lxqt.desktop", "none": "--autologin u"}[desktop]
    assert dm_file in script


def test_password_from_environment_never_in_script(monkeypatch):
    data = {"name": "t", "distro": "debian", "release": "bookworm",
            "users": [{"name": "u", "password_env": "DI_TEST_PW"}]}
    r = recipe_from_data(data)
    with pytest.raises(RecipeError, match=r"users\.0\.password_env: environment variable DI_TEST_PW is not set"):
        password_env_vars(r)
    monkeypatch.setenv("DI_TEST_PW", "s3cret-pw")
    assert password_env_vars(r) == {"DISKIMAGES_PASSWORD_0": "s3cret-pw"}
    assert "s3cret-pw" not in render_script(r)
    assert '"$DISKIMAGES_PASSWORD_0" | chpasswd' in render_script(r)


def test_mmdebstrap_render_reads_mirror_at_run_time():
    from diskimages.build import render
    files = render("debian-12-xfce", "mmdebstrap", mirror="http://param.example/debian")
    sh = files["mmdebstrap.sh"]
    assert "--include=" in sh and "xfce4" in sh and "lightdm" in sh and "firefox-esr" in sh
    assert "deb http://param.example/debian bookworm main" in sh
    sh13 = render("debian-13-xfce", "mmdebstrap", mirror="http://param.example/debian")["mmdebstrap.sh"]
    assert "deb http://param.example/debian trixie main" in sh13 and "trixie \\\n  ROOTFS" in sh13
    assert "autologin-user=user" in files["customize.sh"]


def test_boot_milestones_tell_grub_from_systemd():
    import re
    from diskimages.boot import MILESTONES
    pats = dict(MILESTONES)
    assert not re.search(pats["systemd"], b"Welcome to GRUB!")
    assert re.search(pats["systemd"], b"\x1b[0mWelcome to \x1b[1mDebian GNU/Linux 12 (bookworm)\x1b[0m!")
    assert re.search(pats["login"], b"debian-minimal login: ")


def test_a_tcg_int3_oops_is_recognised(tmp_path):
    from diskimages.boot import _tcg_int3_oops
    log = tmp_path / "serial.log"
    log.write_bytes(b"[    8.472006] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[    8.473973] Kernel panic - not syncing\n")
    assert _tcg_int3_oops(log)
    log.write_bytes(b"[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert not _tcg_int3_oops(log) and not _tcg_int3_oops(tmp_path / "missing")


class _LeaseAfter:
    """A machine whose DHCP lease shows up on the n-th look, as a guest's does a few seconds after its login
    prompt (libvirt's lease table is what `ip()` reads)."""

    def __init__(self, n):
        self.looks, self.n = 0, n

    def ip(self):
        self.looks += 1
        return "192.168.122.50" if self.looks >= self.n else None


def test_the_address_is_waited_for_not_read_once():
    from diskimages.vm import wait_ip
    m = _LeaseAfter(3)
    assert wait_ip(m, timeout=30) == "192.168.122.50" and m.looks == 3
    never = _LeaseAfter(10**6)
    assert wait_ip(never, timeout=1.5) is None and 2 <= never.looks <= 4


def test_a_chrooted_program_is_seen_asleep_only_while_it_sleeps(tmp_path):
    """Assembly makes the disk while fc-cache does its closing 2 s sleep: the sleep is told from work by the
    program's kernel wait channel, for the copy running in the tree (the host's root stands in for one)."""
    import shutil
    import time
    from pathlib import Path
    from diskimages.disk import _asleep
    sleeper, busy = tmp_path / "zzsleeper", tmp_path / "zzbusy"
    shutil.copy(shutil.which("sleep"), sleeper)
    shutil.copy(shutil.which("yes"), busy)
    procs = [subprocess.Popen([str(sleeper), "30"]),
             subprocess.Popen([str(busy)], stdout=subprocess.DEVNULL)]
    try:
        time.sleep(0.5)
        assert _asleep(Path("/"), "zzsleeper")
        assert not _asleep(Path("/"), "zzbusy")
        assert not _asleep(tmp_path, "zzsleeper")          # the same program in another root is not the one
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert not _asleep(Path("/"), "zzsleeper")


def _last_pid() -> int:
    return int(open("/proc/sys/kernel/ns_last_pid").read())


def test_the_boot_probe_finds_the_session_without_a_process_per_process(tmp_path):
    """The probe runs inside the guest being measured: it must find the session process, and must not fork
    for every process it looks at (it did: ~400 forks a second, 12 CPU-seconds of a TCG guest's boot)."""
    import os
    import shutil
    import time
    from diskimages import probe
    script = tmp_path / "probe"
    script.write_text(probe.SCRIPT)
    script.chmod(0o755)
    session = tmp_path / "xfce4-session"          # its comm is the session's name
    shutil.copy("/bin/sleep", session)
    uid = os.getuid()
    env = dict(os.environ, DISKIMAGES_PROBE_OUT=str(tmp_path / "nobody-home"))
    # a user without a session: the probe keeps looking, once a second
    waiting = subprocess.Popen(["sh", str(script), "4242"], env=env)
    try:
        time.sleep(1.5)
        before = _last_pid()
        time.sleep(3)
        forked = _last_pid() - before
    finally:
        waiting.kill()
        waiting.wait()
    processes = sum(1 for p in os.listdir("/proc") if p.isdigit())
    assert forked < 30, f"{forked} processes started in 3 looks at {processes} processes"

    out = tmp_path / "ttyS1"
    env["DISKIMAGES_PROBE_OUT"] = str(out)
    with subprocess.Popen([str(session), "60"]) as proc:
        try:
            subprocess.run(["sh", str(script), str(uid)], env=env, timeout=30, check=True)
        finally:
            proc.kill()
    found = probe.parse(out.read_bytes())
    assert found["session"] == f"uid={uid} process=xfce4-session" and "done" in found


def test_a_build_vm_whose_kernel_panics_is_seen_at_once(tmp_path):
    """A panicked guest never powers off, and virt-install waits for it 90 minutes: the serial watch says so as
    the panic is printed, once, and tells QEMU's TCG int3 race (worth a second run) from other panics."""
    import time
    from diskimages.vmbuild import SerialWatch
    log = tmp_path / "serial.log"
    log.write_bytes(b"[   24.9] systemd[1]: Starting systemd-networkd-wait-online.service\r\n")
    calls = []
    with SerialWatch(log, on_panic=lambda: calls.append(time.monotonic())) as watch:
        time.sleep(0.7)
        assert watch.panic is None and not calls
        with open(log, "ab") as f:
            f.write(b"[   25.441201] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\r\n[   25.44] RIP: 0010:__netif_rece")
            f.write(b"ive_skb_core\r\n[   25.443602] Kernel panic - not syncing: Fatal exception in interrupt\r\n")
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(calls) == 1
    assert watch.panic == "Kernel panic - not syncing: Fatal exception in interrupt" and watch.tcg_race
    assert len(calls) == 1 and not watch.ok

    other = tmp_path / "other.log"
    other.write_bytes(b"[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n")
    with SerialWatch(other) as watch:
        pass
    assert watch.panic.startswith("Kernel panic - not syncing: VFS") and not watch.tcg_race


def test_a_child_whose_starter_died_before_it_was_set_up_does_not_run(tmp_path):
    """kill -9 between the fork and the child's set-up: the parent-death signal is armed too late to fire, so
    die_with_parent sees that its parent is no longer the process that started it and ends the child before
    the command runs (nothing untracked is left to outlive the build)."""
    import os
    import subprocess
    from diskimages import reaper
    marker = tmp_path / "ran"
    ok = subprocess.run(["touch", str(marker)], preexec_fn=reaper.die_with_parent)
    assert ok.returncode == 0 and marker.exists()
    marker.unlink()
    real = reaper.os.getppid
    reaper.os.getppid = lambda: 1   # as if the starter had died and the child had been adopted by init
    try:
        late = subprocess.run(["touch", str(marker)], preexec_fn=reaper.die_with_parent)
    finally:
        reaper.os.getppid = real
    assert late.returncode == -9 and not marker.exists()
    # a forked copy of a process that imported diskimages (a user's multiprocessing pool) is its children's
    # starter: they run
    pid = os.fork()
    if pid == 0:
        os._exit(subprocess.run(["touch", str(marker)], preexec_fn=reaper.die_with_parent).returncode)
    assert os.waitpid(pid, 0)[1] == 0 and marker.exists()
