"""VMs through libvirt-python: a transient domain on a throwaway copy of an image (the image itself is never
written), serial console through `openConsole()`, screenshots with `virDomainScreenshot`, the IP from the DHCP
lease, SSH with a key that exists only in the throwaway copy. VMs kept running (`boot --keep`) are listed
under ~/.cache/diskimages/vms/ for `ssh`, `stop` and `vms`.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional
from xml.sax.saxutils import escape

from . import libvirt_host, reaper
from .paths import cache_dir
from .qemu import OVMF_CODE, OVMF_VARS, _first
from .errors import Failure

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]


def vms_dir() -> Path:
    """Where VM copies live: QEMU may run as its own user (libvirt-qemu), so not under a private home folder."""
    env = os.environ.get("DISKIMAGES_VM_DIR")
    if env:
        p = Path(env)
    elif os.geteuid() == 0:
        p = Path("/var/lib/libvirt/images/diskimages")
    else:
        return cache_dir("vms")
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, 0o711)
    return p


def domain_xml(name: str, disk: Path, firmware: str, accel: str, memory_mb: int, cpus: int, network: str,
               probe_sock: Path, nvram: Path, keep: bool) -> str:
    loader = ""
    if firmware == "uefi":
        code, vars_ = _first(OVMF_CODE), _first(OVMF_VARS)
        if not code or not vars_:
            raise Failure("UEFI boot needs OVMF (Debian package ovmf): no OVMF firmware found")
        loader = (f"<loader readonly='yes' secure='no' type='pflash'>{code}</loader>"
                  f"<nvram template='{vars_}'>{nvram}</nvram>")
    cpu = "<cpu mode='host-passthrough'/>" if accel == "kvm" else ""
    on_reboot = "restart" if keep else "destroy"
    return f"""<domain type='{'kvm' if accel == 'kvm' else 'qemu'}'>
  <name>{escape(name)}</name>
  <description>diskimages VM</description>
  <memory unit='MiB'>{memory_mb}</memory><vcpu>{cpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{loader}<boot dev='hd'/></os>
  <features><acpi/></features>{cpu}
  <on_poweroff>destroy</on_poweroff><on_reboot>{on_reboot}</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='network'><source network='{network}'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='{probe_sock}'/><target port='1'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
    <video><model type='vga'/></video>
  </devices>
</domain>"""


class LibvirtMachine:
    """Same interface as qemu.Machine (alive, elapsed, read_serial, screenshot, buffer, probe_buffer), plus
    ip(), ssh() and vnc_display(). With keep=True the VM outlives the `with` block."""

    def __init__(self, image: Path, firmware: str = "bios", accel: str = "tcg", memory_mb: int = 2048,
                 cpus: int = 2, serial_log: Optional[Path] = None,
                 prepare_copy: Optional[Callable[[Path, str], None]] = None, name: Optional[str] = None,
                 keep: bool = False):
        self.image, self.firmware, self.accel = Path(image).resolve(), firmware, accel
        self.memory_mb, self.cpus, self.serial_log_path = memory_mb, cpus, serial_log
        self.prepare_copy = prepare_copy
        stem = self.image.name.split(".")[0]
        self.name = name or f"diskimages-{stem}-{secrets.token_hex(3)}"
        self.keep = keep
        self.dir = vms_dir() / self.name
        self.buffer = b""
        self.probe_buffer = b""
        self.dom = None
        self.conn = None
        self.daemons = ""
        self.started_daemons = False
        self._stream = None
        self._probe = None
        self.t0 = 0.0

    # -- lifecycle
    def __enter__(self) -> "LibvirtMachine":
        if self.dir.exists():
            raise Failure(f"a VM named {self.name} already exists ({self.dir}); stop it or pick another name")
        reaper.reap(say=True)
        self._tracked = [reaper.track("domain", name=self.name), reaper.track("path", path=str(self.dir)),
                         libvirt_host.using()]
        try:
            self.conn, self.daemons = libvirt_host.connect()
            self.started_daemons = self.daemons.startswith("started")
            self.network, _ = libvirt_host.ensure_network(self.conn)
            self.dir.mkdir(parents=True)
            os.chmod(self.dir, 0o711)          # QEMU may run as another user: it must reach the disk
            keydir = self.dir / "ssh"
            keydir.mkdir(mode=0o700)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"diskimages-{self.name}",
                            "-f", str(keydir / "id_ed25519")], check=True)
            disk = self.dir / "disk.raw"
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(self.image), str(disk)], check=True,
                           capture_output=True)
            if self.prepare_copy:
                self.prepare_copy(disk, (keydir / "id_ed25519.pub").read_text())
            xml = domain_xml(self.name, disk, self.firmware, self.accel, self.memory_mb, self.cpus,
                             self.network, self.dir / "probe.sock", self.dir / "VARS.fd", self.keep)
            self.t0 = time.monotonic()
            self.dom = self.conn.createXML(xml, 0)
            self._save()
            self._open_console()
            self._open_probe()
            self.log = open(self.serial_log_path, "wb") if self.serial_log_path else None
        except BaseException:
            self.keep = False
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for key in getattr(self, "_tracked", []):
            reaper.untrack(key)      # kept (`vms` lists it, `stop` ends it) or destroyed below
        if self.keep and self.dom is not None and self.alive():
            self._close_streams()
            return
        destroy(self.name, conn=self.conn)
        self._close_streams()
        if self.started_daemons and not list_vms() and not libvirt_host.others_use_it():
            libvirt_host.stop_started(self.conn)

    def _close_streams(self) -> None:
        if self._stream is not None:
            try:
                self._stream.abort()
            except Exception:
                pass
        if self._probe is not None:
            self._probe.close()
        if getattr(self, "log", None):
            self.log.close()
            self.log = None

    def _save(self) -> None:
        (self.dir / "vm.json").write_text(json.dumps({
            "name": self.name, "image": str(self.image), "firmware": self.firmware, "accel": self.accel,
            "key": str(self.dir / "ssh/id_ed25519"), "started": time.time()}))

    # -- console and probe
    def _open_console(self) -> None:
        """A non-blocking console stream, read in read_serial() (a blocking recv in a thread can stall the
        connection's other calls, e.g. a screenshot, while a guest prints nothing)."""
        import libvirt
        self._stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        self.dom.openConsole(None, self._stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)

    def _read_console(self) -> bytes:
        import libvirt
        got = b""
        for _ in range(64):
            try:
                data = self._stream.recv(65536)
            except libvirt.libvirtError:
                break
            if isinstance(data, int) or not data:   # -2: nothing now; b"": closed
                break
            got += data
        if got:
            self.buffer += got
            if getattr(self, "log", None):
                self.log.write(got)
                self.log.flush()
        return got

    def _open_probe(self) -> None:
        import socket
        for _ in range(100):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(self.dir / "probe.sock"))
                s.setblocking(False)
                self._probe = s
                return
            except OSError:
                s.close()
                time.sleep(0.1)

    # -- the Machine interface
    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def alive(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except Exception:
            return False

    def qemu_output(self) -> str:
        log = Path(f"/var/log/libvirt/qemu/{self.name}.log")
        try:
            return log.read_text(errors="replace").strip()[-800:]
        except OSError:
            return ""

    def exit_status(self) -> str:
        return "domain shut off"

    def read_serial(self, wait: float = 0.2) -> bytes:
        if self._probe is not None:
            try:
                self.probe_buffer += self._probe.recv(1 << 16)
            except (BlockingIOError, OSError):
                pass
        got = self._read_console()
        if not got:
            time.sleep(wait)
        return got

    def screenshot(self, path: Path):
        from PIL import Image
        st = self.conn.newStream(0)
        mime = self.dom.screenshot(st, 0, 0)
        data = bytearray()
        st.recvAll(lambda s, d, o: o.extend(d) or len(d), data)
        st.finish()
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
        if "png" in mime:
            Path(path).write_bytes(bytes(data))
        else:
            img.save(path)
        return img

    # -- more than QEMU alone
    def ip(self) -> Optional[str]:
        return domain_ip(self.dom)

    def vnc_display(self) -> Optional[str]:
        return vnc_display(self.dom)

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return ssh_run(self.dir / "ssh/id_ed25519", self.ip(), command, timeout)


def domain_ip(dom) -> Optional[str]:
    import libvirt
    try:
        ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    except libvirt.libvirtError:
        return None
    for iface in (ifaces or {}).values():
        for a in iface.get("addrs") or []:
            if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                return a["addr"]
    return None


def vnc_display(dom) -> Optional[str]:
    import re
    m = re.search(r"<graphics type='vnc' port='(\d+)'[^>]*listen='([^']+)'", dom.XMLDesc(0))
    if not m or m.group(1) == "-1":
        return None
    return f"{m.group(2)}:{int(m.group(1)) - 5900}  (vnc://{m.group(2)}:{m.group(1)})"


def ssh_run(key: Path, ip: Optional[str], command: str, timeout: float = 60, user: str = "root",
            tty: bool = False) -> subprocess.CompletedProcess:
    if not ip:
        raise Failure("the VM has no IP address (yet): no DHCP lease on the libvirt network")
    argv = ["ssh", "-i", str(key), *SSH_OPTS, *(["-t"] if tty else []), f"{user}@{ip}", command]
    return subprocess.run(argv, capture_output=not tty, text=True, timeout=timeout)


def wait_ip(machine, timeout: float = 120) -> Optional[str]:
    """The VM's IPv4 address from the libvirt network's DHCP lease, once there is one (None after `timeout`): the
    login prompt, or the desktop, can come before the guest's DHCP exchange ends, since neither networkd nor
    NetworkManager holds up multi-user.target."""
    deadline = time.monotonic() + timeout
    while True:
        ip = machine.ip()
        if ip or time.monotonic() >= deadline:
            return ip
        time.sleep(1)


def wait_ssh(key: Path, ip: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = ssh_run(key, ip, "true", timeout=15)
            if r.returncode == 0:
                return
            last = (r.stderr or "").strip()
        except subprocess.TimeoutExpired:
            last = "timed out"
        time.sleep(2)
    raise Failure(f"SSH to root@{ip} did not answer within {timeout:.0f} s ({last})")


# -- the registry of VMs this project started
def list_vms() -> list[dict]:
    """VMs started by diskimages that still have their folder, with their live state."""
    out = []
    conn = None
    for d in sorted(vms_dir().iterdir()) if vms_dir().exists() else []:
        meta = d / "vm.json"
        if not meta.is_file():
            continue
        info = json.loads(meta.read_text())
        state, ip, vnc = "gone", None, None
        try:
            if conn is None:
                conn, _ = libvirt_host.connect(start=False)
            dom = conn.lookupByName(info["name"])
            state = "running" if dom.isActive() else "shut off"
            ip, vnc = domain_ip(dom), vnc_display(dom)
        except Exception:
            pass
        out.append({**info, "state": state, "ip": ip, "vnc": vnc, "dir": str(d)})
    return out


def get_vm(name: str) -> dict:
    for v in list_vms():
        if v["name"] == name:
            return v
    known = ", ".join(v["name"] for v in list_vms()) or "none"
    raise KeyError(f"no VM named {name!r} (known: {known})")


def destroy(name: str, conn=None) -> None:
    """Destroy the domain (if it runs) and remove its folder (disk copy, key, nvram)."""
    try:
        import libvirt
        if conn is None:
            conn, _ = libvirt_host.connect(start=False)
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass
    except (ImportError, libvirt_host.LibvirtUnavailable):
        pass
    shutil.rmtree(vms_dir() / name, ignore_errors=True)


def stop(name: str) -> list[str]:
    """`diskimages stop NAME`: destroy the VM, remove its copy; stop the daemons we started if it was the last."""
    get_vm(name)
    destroy(name)
    if not list_vms() and not libvirt_host.others_use_it():
        return libvirt_host.stop_started()
    return []
