"""A headless QEMU machine for boot checks: a throwaway qcow2 overlay over the image (the image is never
written), the serial console and QMP on unix sockets in a temp folder, and everything removed on exit.

Acceleration: KVM only where it really runs guests (a real boot shows signs of life), otherwise TCG; the
verdict is cached per host kernel and CPU. `DISKIMAGES_ACCEL=tcg|kvm` forces one.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from . import reaper
from .paths import cache_dir
from .errors import Failure

OVMF_CODE = ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/ovmf/OVMF.fd"]
OVMF_VARS = ["/usr/share/OVMF/OVMF_VARS_4M.fd", "/usr/share/OVMF/OVMF_VARS.fd"]
LIFE = re.compile(rb"Welcome to (?!GRUB)|Linux version|login: |Reached target")


def _first(paths: list[str]) -> Optional[str]:
    return next((p for p in paths if os.path.exists(p)), None)


class Machine:
    """`with Machine(image, firmware="uefi") as m:` m.read_serial(), m.screenshot(path), m.elapsed()."""

    def __init__(self, image: Path, firmware: str = "bios", accel: str = "tcg", memory_mb: int = 2048,
                 cpus: int = 2, serial_log: Optional[Path] = None,
                 prepare_copy: Optional[Callable[[Path, Optional[str]], None]] = None):
        """`prepare_copy`: boot a sparse raw copy instead of an overlay, after calling prepare_copy(copy, None)
        (the boot probe is written into it); its second serial port is read into `probe_buffer`."""
        self.image, self.firmware, self.accel = Path(image).resolve(), firmware, accel
        self.prepare_copy = prepare_copy
        self.probe_buffer = b""
        self.probe = None
        self.memory_mb, self.cpus = memory_mb, cpus
        self.serial_log_path = serial_log
        self.proc: Optional[subprocess.Popen] = None
        self.tmp: Optional[Path] = None
        self.buffer = b""
        self.t0 = 0.0

    def command(self) -> list[str]:
        t = self.tmp
        fmt = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(self.image)],
                                        capture_output=True, text=True, check=True).stdout)["format"]
        if self.prepare_copy:
            disk, disk_fmt = t / "copy.raw", "raw"
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(self.image), str(disk)], check=True,
                           capture_output=True)
            self.prepare_copy(disk, None)
        else:
            disk, disk_fmt = t / "overlay.qcow2", "qcow2"
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(self.image),
                            str(disk)], check=True, capture_output=True)
        cmd = ["qemu-system-x86_64", "-accel", self.accel, "-smp", str(self.cpus), "-m", str(self.memory_mb),
               "-drive", f"file={disk},if=virtio,format={disk_fmt}",
               "-vga", "std", "-display", "none", "-no-reboot",
               "-chardev", f"socket,id=s0,path={t / 'serial.sock'},server=on,wait=off", "-serial", "chardev:s0",
               "-chardev", f"socket,id=s1,path={t / 'probe.sock'},server=on,wait=off", "-serial", "chardev:s1",
               "-qmp", f"unix:{t / 'qmp.sock'},server=on,wait=off",
               "-nic", "user,model=virtio-net-pci"]
        if self.accel == "kvm":
            cmd += ["-cpu", "host"]
        if self.firmware == "uefi":
            code, vars_ = _first(OVMF_CODE), _first(OVMF_VARS)
            if not code or not vars_:
                raise Failure("UEFI boot needs OVMF (Debian package ovmf): no OVMF firmware found")
            shutil.copy(vars_, t / "OVMF_VARS.fd")
            cmd += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                    "-drive", f"if=pflash,format=raw,unit=1,file={t / 'OVMF_VARS.fd'}"]
        return cmd

    def __enter__(self) -> "Machine":
        reaper.reap(say=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="diskimages-vm-"))
        self._tracked = [reaper.track("path", path=str(self.tmp), what="VM folder")]
        try:
            cmd = self.command()
            self.qemu_log = open(self.tmp / "qemu.log", "wb")
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.qemu_log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=reaper.die_with_parent)
            self._tracked.append(reaper.track_group(self.proc.pid, "qemu-system"))
            self.serial = self._connect(self.tmp / "serial.sock")
            self.serial.setblocking(False)
            self.probe = self._connect(self.tmp / "probe.sock")
            self.probe.setblocking(False)
            self.qmp_sock = self._connect(self.tmp / "qmp.sock")
            self.qmp_file = self.qmp_sock.makefile("rw")
            self.qmp_file.readline()
            self.qmp("qmp_capabilities")
            self.log = open(self.serial_log_path, "wb") if self.serial_log_path else None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _connect(self, path: Path) -> socket.socket:
        for _ in range(300):
            if self.proc.poll() is not None:
                raise Failure(f"QEMU exited at start ({self.proc.returncode}): {self.qemu_output()}")
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(path))
                return s
            except OSError:
                s.close()
                time.sleep(0.1)
        raise Failure(f"QEMU did not open {path.name}: {self.qemu_output()}")

    def qemu_output(self) -> str:
        try:
            return (self.tmp / "qemu.log").read_text(errors="replace").strip()[-800:]
        except OSError:
            return ""

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> str:
        return f"exit {self.proc.returncode}" if self.proc is not None else "not started"

    def qmp(self, command: str, **arguments) -> dict:
        self.qmp_file.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.qmp_file.flush()
        while True:
            line = self.qmp_file.readline()
            if not line:
                raise Failure("QMP connection closed")
            r = json.loads(line)
            if "return" in r or "error" in r:
                return r

    def read_serial(self, wait: float = 0.2) -> bytes:
        """New serial console bytes (also appended to `buffer` and the serial log)."""
        try:
            self.probe_buffer += self.probe.recv(1 << 16)
        except (BlockingIOError, OSError):
            pass
        try:
            data = self.serial.recv(1 << 16)
        except BlockingIOError:
            time.sleep(wait)
            return b""
        except OSError:
            return b""
        if data:
            self.buffer += data
            if self.log:
                self.log.write(data)
                self.log.flush()
        else:
            time.sleep(wait)
        return data

    def send_serial(self, text: str) -> None:
        self.serial.sendall(text.encode())

    def screenshot(self, path: Path):
        """Save the screen as PNG; returns the PIL image."""
        from PIL import Image
        path = Path(path)
        r = self.qmp("screendump", filename=str(path), format="png")
        if "error" in r:  # QEMU older than 7.1 writes PPM only
            ppm = self.tmp / "screen.ppm"
            r = self.qmp("screendump", filename=str(ppm))
            if "error" in r:
                raise Failure(f"screendump failed: {r['error']}")
            Image.open(ppm).save(path)
        img = Image.open(path)
        img.load()
        return img

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.qmp("quit")
                self.proc.wait(timeout=10)
            except Exception:
                pass
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        for attr in ("serial", "probe", "qmp_sock"):
            s = getattr(self, attr, None)
            if s:
                s.close()
        if getattr(self, "log", None):
            self.log.close()
        if getattr(self, "qemu_log", None):
            self.qemu_log.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for key in getattr(self, "_tracked", []):
            reaper.untrack(key)
        self._tracked = []


def _host_key() -> str:
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.release()}|{cpu}"


def _kernel_probe(probe_seconds: float) -> tuple[str, str]:
    """A real boot without a disk image: the host's own kernel under KVM, watched for its first words on the
    serial console (the installer path has no base image to probe with)."""
    import glob
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        return "tcg", "no image and no kernel in /boot on this host to probe KVM with"
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "512", "-nographic",
                             "-no-reboot", "-kernel", kernels[-1], "-append", "console=ttyS0 panic=-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=reaper.die_with_parent)
    buf, t0 = b"", time.monotonic()
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() - t0 < probe_seconds and proc.poll() is None:
            chunk = proc.stdout.read(65536) or b""
            buf += chunk
            if LIFE.search(buf):
                return "kvm", f"KVM probe: the host's kernel booted in {time.monotonic() - t0:.1f} s"
            time.sleep(0.2)
        return "tcg", "KVM probe (host kernel): " + ("QEMU stopped" if proc.poll() is not None else "no sign of life")
    finally:
        proc.kill()
        proc.wait()


def choose_accel(image: Optional[Path], firmware: str = "bios", probe_seconds: float = 45.0) -> tuple[str, str]:
    """(accel, how it was decided). KVM is trusted only after a real boot shows signs of life: of `image`, or
    without one, of the host's own kernel."""
    forced = os.environ.get("DISKIMAGES_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "DISKIMAGES_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "no usable /dev/kvm"
    cache = cache_dir() / "accel.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    key = _host_key()
    if key in known:
        return known[key], "cached probe"
    if image is None:
        verdict, why = _kernel_probe(probe_seconds)
        if "no kernel" not in why:
            known[key] = verdict
            cache.write_text(json.dumps(known))
        return verdict, why
    verdict, why = "tcg", "KVM probe: no sign of life"
    try:
        with Machine(image, firmware, accel="kvm", memory_mb=1024, cpus=1) as m:
            deadline = time.monotonic() + probe_seconds
            while time.monotonic() < deadline and m.alive():
                m.read_serial()
                if LIFE.search(m.buffer):
                    verdict, why = "kvm", f"KVM probe: booted in {m.elapsed()} s"
                    break
            if not m.alive():
                why = "KVM probe: QEMU stopped"
    except Exception as e:
        why = f"KVM probe failed: {str(e).splitlines()[0][:120]}"
    known[key] = verdict
    cache.write_text(json.dumps(known))
    return verdict, why
