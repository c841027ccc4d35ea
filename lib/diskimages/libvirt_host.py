"""libvirt on hosts with or without systemd: connect to a running libvirtd, or start virtlogd + libvirtd (and
the NAT network) ourselves and stop exactly what we started.

Containers and CI runners often have no systemd, so nothing starts libvirtd; the daemons run fine when started
by hand (`virtlogd -d; libvirtd -d`). What this module started is written to a state file so that a later
process (`diskimages stop NAME`) can stop it when the last VM is gone.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from .paths import cache_dir
from .errors import Failure

URI = os.environ.get("DISKIMAGES_LIBVIRT_URI", "qemu:///system")
NETWORK = "default"
FALLBACK_NETWORK_XML = """<network><name>diskimages</name><forward mode='nat'/>
  <bridge name='virbr-di' stp='on' delay='0'/>
  <ip address='192.168.124.1' netmask='255.255.255.0'><dhcp><range start='192.168.124.2' end='192.168.124.254'/></dhcp></ip>
</network>"""


class LibvirtUnavailable(Failure):
    pass


class Session:
    """A libvirt connection and the network VMs join, handed to the tools that drive libvirt themselves."""

    def __init__(self, conn, network: str):
        self.conn, self.network = conn, network

    def destroy(self, name: str) -> None:
        """Stop the domain `name` if it still runs (a transient domain is then gone)."""
        libvirt = _libvirt()
        try:
            dom = self.conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass


def _libvirt():
    try:
        import libvirt
    except ImportError as e:
        raise LibvirtUnavailable("libvirt-python is not installed (scripts/setup.sh installs it)") from e
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors arrive as exceptions; no stderr noise
    return libvirt


def _state_file() -> Path:
    return cache_dir("vms") / "daemons.json"


def _state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    _state_file().write_text(json.dumps(state))


def _try_open(libvirt):
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError:
        return None


def _pidfile_pid(path: str) -> Optional[int]:
    try:
        pid = int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def using() -> str:
    """Record that this process uses the daemons (until `release`): a live user keeps them running, and a
    killed one's record tells `reaper` that they may be stopped."""
    from . import reaper
    return reaper.track("libvirt")


def release(key: str) -> None:
    from . import reaper
    reaper.untrack(key)


def started_by_us() -> bool:
    s = _state()
    return bool(s.get("started") or s.get("network_started") or s.get("network_created") or "qemu_conf" in s)


def others_use_it() -> bool:
    """Whether a live diskimages process (other than a caller that has released its use) uses the daemons:
    then they are not stopped."""
    from . import reaper
    return reaper.libvirt_users() > 0


def connect(start: bool = True, timeout: float = 90.0):
    """A libvirt connection; starts the daemons (and records that) when none answers and `start` is set.
    Returns (connection, how): how is "running" or "started virtlogd, libvirtd"."""
    libvirt = _libvirt()
    conn = _try_open(libvirt)
    if conn is not None:
        return conn, "libvirtd was running"
    if not start:
        raise LibvirtUnavailable(f"no libvirtd answers at {URI}")
    for prog in ("virtlogd", "libvirtd"):
        if not shutil.which(prog) and not os.path.exists(f"/usr/sbin/{prog}"):
            raise LibvirtUnavailable(f"{prog} is not installed (Debian package libvirt-daemon-system)")
    if os.geteuid() != 0:
        raise LibvirtUnavailable("libvirtd is not running and starting it needs root (or start it yourself)")
    state = _state()
    started = []
    _qemu_runs_as_root(state)
    if _pidfile_pid("/run/virtlogd.pid") is None:
        subprocess.run(["virtlogd", "-d"], check=True)
        started.append("virtlogd")
    if _pidfile_pid("/run/libvirtd.pid") is None:
        subprocess.run(["libvirtd", "-d"], check=True)
        started.append("libvirtd")
    state["started"] = sorted(set(state.get("started", [])) | set(started))
    _save_state(state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = _try_open(libvirt)
        if conn is not None:
            return conn, f"started {', '.join(started) or 'nothing'} (no service manager runs them here)"
        time.sleep(0.5)
    raise LibvirtUnavailable(f"libvirtd did not answer within {timeout:.0f} s after starting it")


QEMU_CONF = Path("/etc/libvirt/qemu.conf")
QEMU_CONF_LINES = '\nuser = "root"   # diskimages: added while it runs libvirtd, removed when it stops it\ngroup = "root"\n'


def _qemu_runs_as_root(state: dict) -> None:
    """QEMU as root while we run libvirtd: otherwise libvirt re-probes QEMU's capabilities at every domain start
    when /dev/kvm is not usable by its QEMU user (~45-55 s per start instead of <1 s). Undone by stop_started."""
    import re
    try:
        text = QEMU_CONF.read_text()
    except OSError:
        return
    if re.search(r"^\s*user\s*=", text, re.M) or "qemu_conf" in state:
        return
    state["qemu_conf"] = text
    _save_state(state)
    QEMU_CONF.write_text(text + QEMU_CONF_LINES)


def _restore_qemu_conf(state: dict) -> None:
    original = state.get("qemu_conf")
    if original is not None:
        QEMU_CONF.write_text(original)


def ensure_network(conn) -> tuple[str, str]:
    """(network name, how): the NAT network VMs join; started (and recorded) if it was not active."""
    libvirt = _libvirt()
    state = _state()
    try:
        net = conn.networkLookupByName(NETWORK)
    except libvirt.libvirtError:
        try:
            net = conn.networkLookupByName("diskimages")
        except libvirt.libvirtError:
            net = conn.networkCreateXML(FALLBACK_NETWORK_XML)
            state["network_created"] = "diskimages"
            _save_state(state)
            return "diskimages", "created a transient NAT network"
    if net.isActive():
        return net.name(), "was active"
    net.create()
    state["network_started"] = net.name()
    _save_state(state)
    return net.name(), "started"


def stop_started(conn=None) -> list[str]:
    """Stop what `connect`/`ensure_network` started (network, libvirtd, virtlogd); returns what was stopped."""
    state = _state()
    stopped = []
    libvirt = _libvirt()
    if conn is None:
        conn = _try_open(libvirt)
    if conn is not None:
        for key in ("network_started", "network_created"):
            name = state.get(key)
            if name:
                try:
                    conn.networkLookupByName(name).destroy()
                    stopped.append(f"network {name}")
                except libvirt.libvirtError:
                    pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
    for prog in ("libvirtd", "virtlogd"):
        if prog in state.get("started", []):
            pid = _pidfile_pid(f"/run/{prog}.pid")
            if pid:
                _terminate(pid)
                stopped.append(prog)
    _restore_qemu_conf(state)
    _state_file().unlink(missing_ok=True)
    return stopped


def _terminate(pid: int, grace: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
