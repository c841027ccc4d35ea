"""Boot check: boot an image headless (QEMU, on a throwaway overlay), follow the boot on the serial console,
and decide whether it reached what its recipe promises:
  * console images: the `login:` prompt;
  * desktop images: the autologin user's desktop session process runs (reported by the boot probe, see
    probe.py) and the screen settled on a drawn desktop (two equal screenshots in a row with many colours).
Seconds to each milestone are reported; the last screenshot is kept as PNG.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import probe
from .qemu import Machine, choose_accel
from .runner import signals_as_exceptions

MILESTONES = [  # (name, pattern) in boot order; the pattern is searched in the serial console output
    ("bootloader", rb"GNU GRUB|Booting `"),
    ("kernel", rb"Linux version"),
    ("systemd", rb"Welcome to "),
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
NO_OUTPUT_S = 90        # nothing at all on the serial console by then: the disk did not boot
SETTLE_EVERY_S = 5.0
MIN_DESKTOP_COLOURS = 256   # a drawn desktop (wallpaper, panel, icons); a bare X screen with a cursor has < 100


class BootFailed(RuntimeError):
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

    def as_record(self) -> dict:
        return {"passed": self.passed, "reason": self.reason, "expect": self.expect, "firmware": self.firmware,
                "accel": self.accel, "milestones": self.milestones, "probe": self.probe, "seconds": self.seconds,
                "screenshot": self.screenshot.name if self.screenshot else None}

    def table(self):
        import pandas as pd
        rows = [{"milestone": k, "seconds": v} for k, v in sorted(self.milestones.items(), key=lambda kv: kv[1])]
        return pd.DataFrame(rows, columns=["milestone", "seconds"])


def _colours(img) -> int:
    cols = img.convert("RGB").getcolors(1 << 16)
    return len(cols) if cols is not None else 1 << 16


def boot_check(image: Path | str, record: Optional[dict] = None, *, firmware: Optional[str] = None,
               expect: Optional[str] = None, autologin_uid: Optional[int] = None, timeout: Optional[float] = None,
               screenshot_dir: Optional[Path] = None, accel: Optional[str] = None, memory_mb: int = 2048,
               cpus: int = 2, use_probe: bool = True, progress: bool = False) -> BootResult:
    """Boot `image` and wait for its login prompt (console) or its autologin desktop (desktop images).
    `record` (the build's JSON record) supplies firmware, expectation and the autologin uid."""
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"no image at {image}")
    record = record or {}
    fw = firmware or {"uefi": "uefi"}.get(record.get("firmware", "bios"), "bios")
    expect = expect or record.get("expect", "login")
    uid = autologin_uid if autologin_uid is not None else record.get("autologin_uid")
    if expect == "desktop" and uid is None:
        raise ValueError("a desktop boot check needs the autologin user's uid (from the build record)")
    timeout = timeout or (600.0 if expect == "desktop" else 240.0)
    shots = Path(screenshot_dir) if screenshot_dir else image.parent
    shots.mkdir(parents=True, exist_ok=True)
    stem = image.name.rsplit(".", 1)[0]
    if accel:
        acc, why = accel, "parameter"
    else:
        acc, why = choose_accel(image, fw)
    res = BootResult(str(image), expect, fw, acc, why, serial_log=shots / f"{stem}.{fw}.serial.log")
    prepare = None
    if use_probe:
        prepare = lambda raw: probe.inject(raw, uid)  # noqa: E731
    with signals_as_exceptions():
        try:
            with Machine(image, fw, acc, memory_mb, cpus, serial_log=res.serial_log, prepare_copy=prepare) as m:
                _watch(m, res, uid, timeout, shots / f"{stem}.{fw}.png", progress)
        except probe.ProbeError as e:
            if expect == "desktop":
                res.reason = f"cannot verify the desktop session: the boot probe could not be added ({e})"
                return res
            res.probe = {"unavailable": str(e)}
            with Machine(image, fw, acc, memory_mb, cpus, serial_log=res.serial_log) as m:
                _watch(m, res, uid, timeout, shots / f"{stem}.{fw}.png", progress)
    return res


def _watch(m: Machine, res: BootResult, uid: Optional[int], timeout: float, shot: Path, progress: bool) -> None:
    expect = res.expect

    def say(msg: str) -> None:
        if progress:
            print(f"[{m.elapsed():6.1f}s] {msg}", flush=True)

    deadline = time.monotonic() + timeout
    prev = None
    next_shot = 0.0
    try:
        while True:
            if time.monotonic() > deadline:
                seen = ", ".join(res.milestones) or "nothing"
                raise BootFailed(f"timed out after {timeout:.0f} s waiting for the {expect} (reached: {seen})")
            if not m.alive():
                raise BootFailed(f"QEMU stopped (exit {m.proc.returncode}) before the {expect}: "
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
                next_shot = m.elapsed() + SETTLE_EVERY_S
                img = m.screenshot(shot)
                ncol = _colours(img)
                if prev is not None and ncol >= MIN_DESKTOP_COLOURS and img.tobytes() == prev.tobytes():
                    res.milestones["desktop"] = m.elapsed()
                    res.screenshot = shot
                    res.passed = True
                    res.reason = (f"{found['session']}: desktop drawn and settled after "
                                  f"{res.milestones['desktop']} s ({ncol} colours)")
                    say("desktop")
                    break
                prev = img
    except BootFailed as e:
        res.reason = str(e)
        try:
            m.screenshot(shot)
            res.screenshot = shot
        except Exception:
            res.screenshot = None
    finally:
        res.seconds = m.elapsed()
