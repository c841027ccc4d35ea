"""Boot check: boot an image headless (QEMU, on a throwaway overlay), follow the boot on the serial console,
and decide whether it reached what its recipe promises:
  * console images: the `login:` prompt;
  * desktop images: the autologin user's desktop session process runs (reported by the boot probe, see
    probe.py) and the screen settled on a drawn desktop (sampled every second; many colours, unchanged for 5 s;
    the milestone is the moment it stopped changing).
Seconds to each milestone are reported; the last screenshot is kept as PNG.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import probe
from .qemu import Machine, choose_accel
from .vmbuild import TCG_RACE_OOPS
from .runner import signals_as_exceptions
from .errors import Failure, InputError

MILESTONES = [  # (name, pattern) in boot order; the pattern is searched in the serial console output
    ("bootloader", rb"GNU GRUB|Booting `"),
    ("kernel", rb"Linux version"),
    ("systemd", rb"Welcome to (?!GRUB)"),            # GRUB EFI also greets: "Welcome to GRUB!"
    ("multi-user", rb"Reached target .*Multi-User System"),
    ("display-manager", rb"Started .*(Light Display Manager|GNOME Display Manager|Simple Desktop Display Manager)"),
    ("graphical", rb"Reached target .*Graphical Interface"),
    ("login", rb"login: "),
]
FAILURES = [
    (rb"Kernel panic", "the kernel panicked"),
    (rb"grub rescue>", "GRUB could not find its files (grub rescue prompt)"),
    (rb"error: (no such device|file .* not found|unknown filesystem)[^\r\n]*", "GRUB error"),
    (rb"You are in emergency mode|Give root password for maintenance", "systemd dropped to emergency mode"),
    (rb"ALERT! .* does not exist", "the initramfs did not find the root file system"),
]
NO_OUTPUT_S = 45        # nothing at all on the serial console by then (GRUB prints within ~5 s even under TCG)
SETTLE_EVERY_S = 1.0      # how often the screen is sampled once the session runs
SETTLED_FOR_S = 5.0       # unchanged this long: settled (reported as the moment it stopped changing)
LEASE_TIMEOUT = 120      # seconds from the login prompt or desktop to a DHCP lease (TCG, a busy host)
MIN_DESKTOP_COLOURS = 256   # a drawn desktop (wallpaper, panel, icons); a bare X screen with a cursor has < 100


class BootFailed(Failure):
    pass


@dataclass
class BootResult:
    image: str
    expect: str
    firmware: str
    accel: str
    accel_reason: str
    passed: bool = False
    reason: str = ""
    milestones: dict[str, float] = field(default_factory=dict)
    probe: dict[str, str] = field(default_factory=dict)
    screenshot: Optional[Path] = None
    serial_log: Optional[Path] = None
    seconds: float = 0.0
    backend: str = "qemu"
    vm_name: Optional[str] = None
    ip: Optional[str] = None
    vnc: Optional[str] = None
    ssh: dict[str, str] = field(default_factory=dict)
    kept: bool = False
    retried: Optional[str] = None

    def as_record(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "retried": self.retried, "expect": self.expect, "firmware": self.firmware,
                "accel": self.accel, "backend": self.backend, "milestones": self.milestones, "probe": self.probe,
                "ip": self.ip, "ssh": self.ssh, "seconds": self.seconds,
                "screenshot": self.screenshot.name if self.screenshot else None}

    def table(self):
        import pandas as pd
        rows = [{"milestone": k, "seconds": v} for k, v in sorted(self.milestones.items(), key=lambda kv: kv[1])]
        return pd.DataFrame(rows, columns=["milestone", "seconds"])


def _colours(img) -> int:
    cols = img.convert("RGB").getcolors(1 << 16)
    return len(cols) if cols is not None else 1 << 16


def choose_backend(backend: str = "auto") -> str:
    """"libvirt" (libvirt-python, libvirtd started if needed) or "qemu" (QEMU directly)."""
    if backend != "auto":
        return backend
    env = os.environ.get("DISKIMAGES_BOOT_BACKEND")
    if env in ("libvirt", "qemu"):
        return env
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "qemu"
    return "libvirt" if shutil.which("libvirtd") or os.path.exists("/usr/sbin/libvirtd") else "qemu"


def boot_check(image: Path | str, record: Optional[dict] = None, *, firmware: Optional[str] = None,
               expect: Optional[str] = None, autologin_uid: Optional[int] = None, timeout: Optional[float] = None,
               screenshot_dir: Optional[Path] = None, accel: Optional[str] = None, memory_mb: int = 2048,
               cpus: int = 2, use_probe: bool = True, backend: str = "auto", keep: bool = False,
               name: Optional[str] = None, progress: bool = False) -> BootResult:
    """Boot `image` and wait for its login prompt (console) or its autologin desktop (desktop images).
    `record` (the build's JSON record) supplies firmware, expectation and the autologin uid.
    backend "libvirt" also checks the running system over SSH (`_ssh_phase`); `keep` leaves it running
    (when the check passed; `kept` says so)."""
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"no image at {image}")
    record = record or {}
    fw = firmware or {"uefi": "uefi"}.get(record.get("firmware", "bios"), "bios")
    expect = expect or record.get("expect", "login")
    uid = autologin_uid if autologin_uid is not None else record.get("autologin_uid")
    if expect == "desktop" and uid is None:
        raise InputError("a desktop boot check needs the autologin user's uid (from the build record)")
    timeout = timeout or (600.0 if expect == "desktop" else 240.0)
    shots = Path(screenshot_dir) if screenshot_dir else image.parent
    shots.mkdir(parents=True, exist_ok=True)
    stem = image.name.rsplit(".", 1)[0]
    backend = choose_backend(backend)
    if keep and backend != "libvirt":
        raise InputError("keeping a VM running needs the libvirt backend")
    if accel:
        acc, why = accel, "parameter"
    else:
        acc, why = choose_accel(image, fw)
    serial = shots / f"{stem}.{fw}.serial.log"
    res = _attempt(image, fw, acc, why, expect, uid, timeout, backend, keep, name, progress, memory_mb, cpus,
                   use_probe, serial, shots / f"{stem}.{fw}.png")
    if not res.passed and acc == "tcg" and _tcg_int3_oops(serial):
        # QEMU's emulator race (vmbuild.TCG_RACE_OOPS), not the image's fault: one more boot, said in the record
        first = res.reason
        os.replace(serial, serial.with_name(f"{stem}.{fw}.oops.serial.log"))
        res = _attempt(image, fw, acc, why, expect, uid, timeout, backend, keep, name, progress, memory_mb, cpus,
                       use_probe, serial, shots / f"{stem}.{fw}.png")
        res.retried = (f"booted a second time: the first boot hit a kernel oops typical of QEMU's multi-threaded "
                       f"TCG (int3 in patched kernel text; {first[:120]})")
    return res


def _tcg_int3_oops(serial: Path) -> bool:
    try:
        return TCG_RACE_OOPS.encode() in serial.read_bytes()
    except OSError:
        return False


def _attempt(image, fw, acc, why, expect, uid, timeout, backend, keep, name, progress, memory_mb, cpus, use_probe,
             serial, shot) -> BootResult:
    res = BootResult(str(image), expect, fw, acc, why, serial_log=serial, backend=backend)
    prepare = (lambda raw, key: probe.inject(raw, uid, key)) if use_probe else None  # noqa: E731

    def machine(prep):
        if backend == "libvirt":
            from .vm import LibvirtMachine
            return LibvirtMachine(image, fw, acc, memory_mb, cpus, serial_log=res.serial_log, prepare_copy=prep,
                                  name=name, keep=keep)
        return Machine(image, fw, acc, memory_mb, cpus, serial_log=res.serial_log, prepare_copy=prep)

    with signals_as_exceptions():
        try:
            with machine(prepare) as m:
                res.vm_name = getattr(m, "name", None)
                _watch(m, res, uid, timeout, shot, progress)
                if res.passed and backend == "libvirt":
                    _ssh_phase(m, res, uid)
                if keep and res.passed:
                    res.vnc, res.kept = m.vnc_display(), True
                elif keep:
                    m.keep = False
        except probe.ProbeError as e:
            if expect == "desktop":
                res.reason = f"cannot verify a desktop session: the boot probe could not be added ({e})"
                return res
            res.probe = {"unavailable": str(e)}
            keep = False
            with machine(None) as m:
                m.keep = False
                _watch(m, res, uid, timeout, shot, progress)
                if res.passed:
                    res.reason += f"; no probe or SSH checks ({e})"
    return res


SSH_SCRIPT = """echo machine-id=$(cat /etc/machine-id)
echo hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub | sha256sum | cut -c1-32)
echo sessions=$(loginctl list-sessions --no-legend | awk '{print $1":"$3":"$4}' | tr '\n' ' ')
echo session_process=$(for d in /proc/[0-9]*; do [ "$(stat -c %u $d 2>/dev/null)" = "{uid}" ] && cat $d/comm 2>/dev/null; done | grep -x -E '{procs}' | head -1)
gw=$(ip route | awk '/^default/ {print $3; exit}')
echo gateway=$gw
if timeout 5 bash -c "echo > /dev/tcp/$gw/53" 2>/dev/null; then echo gateway_reachable=yes; else echo gateway_reachable=no; fi
home=$(getent passwd {uid} | cut -d: -f6)
if [ -n "$home" ] && [ -d "$home/.cache/fontconfig" ]; then echo user_font_cache=yes; else echo user_font_cache=no; fi
echo polkit_agent=$(for d in /proc/[0-9]*; do [ "$(stat -c %u $d 2>/dev/null)" = "{uid}" ] && tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -o -m1 -E 'polkit-[a-z]+-authentication-agent-1'; done | head -1)
echo polkitd=$(pgrep -x polkitd > /dev/null && echo yes || echo no)
sp=$(pgrep -u {uid} -o -x '{procs}' 2>/dev/null)
echo session_children=$([ -n "$sp" ] && for c in $(pgrep -P "$sp"); do printf '%s:%s ' "$(cat /proc/$c/comm)" "$(sed 's/.*) //' /proc/$c/stat | awk -v hz=$(getconf CLK_TCK) '{printf "%.2f", $20 / hz}')"; done)
echo xorg_accel=$(grep -o -m1 -E 'glamor (disabled|initialized)|glamor initialization failed' /var/log/Xorg.0.log 2>/dev/null | tr ' ' _)
echo unmounted=$(awk '!/^#/ && $2 ~ "^/" && $3 != "swap" && $4 !~ /(^|,)noauto(,|$)/ {print $2}' /etc/fstab | while read -r m; do mountpoint -q "$m" || echo "$m"; done)
"""


def _ssh_phase(m, res: BootResult, uid: Optional[int]) -> None:
    """Over SSH (a key that exists only in this boot's copy): the desktop session, network, first-boot state."""
    from .vm import wait_ip, wait_ssh
    t0 = m.elapsed()
    res.ip = wait_ip(m, LEASE_TIMEOUT)
    if not res.ip:
        res.passed, res.reason = False, (f"no IP address from the libvirt network's DHCP lease within "
                                         f"{LEASE_TIMEOUT} s of the {res.expect}")
        return
    res.milestones["lease"] = m.elapsed()
    key = m.dir / "ssh/id_ed25519"
    try:
        wait_ssh(key, res.ip)
    except RuntimeError as e:
        res.passed, res.reason = False, str(e)
        return
    script = SSH_SCRIPT.replace("{uid}", str(uid if uid is not None else -1)).replace(
        "{procs}", probe.SESSION_PROCESSES.replace(" ", "|"))
    r = m.ssh(script)
    m.read_serial(wait=1.5)                      # what the probe reported meanwhile (e.g. the host key)
    res.probe.update(probe.parse(m.probe_buffer))
    facts = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    res.ssh = facts
    res.milestones["ssh"] = m.elapsed()
    problems = []
    if r.returncode != 0:
        problems.append(f"ssh exited {r.returncode}: {r.stderr.strip()[-200:]}")
    if facts.get("gateway_reachable") != "yes":
        problems.append(f"the guest cannot reach its gateway ({facts.get('gateway') or 'no default route'})")
    if facts.get("unmounted"):
        problems.append(f"file systems in /etc/fstab not mounted: {facts['unmounted']}")
    if len(facts.get("machine-id", "")) != 32:
        problems.append("no machine-id was generated at first boot")
    if res.expect == "desktop":
        user_seat = [s for s in facts.get("sessions", "").split() if s.split(":")[-1].startswith("seat")]
        if not user_seat or not facts.get("session_process"):
            problems.append(f"no graphical session of UID {uid} (sessions: {facts.get('sessions') or 'none'})")
    if problems:
        res.passed, res.reason = False, "; ".join(problems)
    else:
        res.reason += f"; SSH to root@{res.ip} ok ({m.elapsed() - t0:.1f} s): " + (
            f"session {facts.get('session_process')} on {facts.get('sessions').strip()}, "
            if res.expect == "desktop" else "") + "gateway reachable, fresh machine-id"


def _watch(m: Machine, res: BootResult, uid: Optional[int], timeout: float, shot: Path, progress: bool) -> None:
    expect = res.expect

    def say(msg: str) -> None:
        if progress:
            print(f"[{m.elapsed():6.1f}s] {msg}", flush=True)

    deadline = time.monotonic() + timeout
    prev = None
    since = 0.0
    next_shot = 0.0
    try:
        while True:
            if time.monotonic() > deadline:
                seen = ", ".join(res.milestones) or "nothing"
                raise BootFailed(f"timed out after {timeout:.0f} s waiting for the {expect} (reached: {seen})")
            if not m.alive():
                raise BootFailed(f"the VM stopped ({m.exit_status()}) before the {expect}: "
                                 f"{m.qemu_output()[-300:]}")
            m.read_serial()
            buf = m.buffer
            for name, rx in MILESTONES:
                if name not in res.milestones and re.search(rx, buf):
                    res.milestones[name] = m.elapsed()
                    say(name)
            found = probe.parse(m.probe_buffer)
            for key in ("ip", "session"):
                if key in found and key not in res.milestones:
                    res.milestones[key] = m.elapsed()
                    say(f"{key}: {found[key]}")
            res.probe.update(found)
            for rx, what in FAILURES:
                hit = re.search(rx, buf)
                if hit:
                    raise BootFailed(f"{what}: {hit.group(0).decode(errors='replace').strip()}")
            if not buf and m.elapsed() > NO_OUTPUT_S:
                raise BootFailed(f"no output on the serial console after {NO_OUTPUT_S} s: the firmware found "
                                 "nothing to boot (not a bootable disk for this firmware?)")
            if expect == "login" and "login" in res.milestones:
                m.screenshot(shot)
                res.screenshot = shot
                res.passed, res.reason = True, f"login prompt after {res.milestones['login']} s"
                break
            if expect == "desktop" and "session" in res.milestones and m.elapsed() >= next_shot:
                now = m.elapsed()
                next_shot = now + SETTLE_EVERY_S
                img = m.screenshot(shot)
                ncol = _colours(img)
                if prev is None or ncol < MIN_DESKTOP_COLOURS or img.tobytes() != prev.tobytes():
                    prev, since = img, now
                elif now - since >= SETTLED_FOR_S:
                    res.milestones["desktop"] = since
                    res.screenshot = shot
                    res.passed = True
                    res.reason = (f"{found['session']}: desktop drawn after {since} s and unchanged for "
                                  f"{now - since:.0f} s ({ncol} colours)")
                    say("desktop")
                    break
    except BootFailed as e:
        res.reason = str(e)
        try:
            m.screenshot(shot)
            res.screenshot = shot
        except Exception:
            res.screenshot = None
    finally:
        res.seconds = m.elapsed()
