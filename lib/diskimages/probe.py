"""The boot probe: a tiny systemd unit written into the *throwaway copy* of an image that a boot check boots
(never into the image itself). It reports on the second serial port (ttyS1) what the serial console cannot
show: the machine-id and SSH host key made at first boot, the IP address, and whether the autologin user's
desktop session process runs. systemd stops printing its status on the console once a getty owns it, so
without the probe a boot check could not tell "display manager up" from "user logged into the desktop".

The copy is a sparse raw file; the files are written into its ext4 root with debugfs at the partition's
offset, so no loop device, mount or guest tools are needed.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from .disk import root_partition_offset
from .errors import Failure

MARK = "DISKIMAGES-PROBE"
SESSION_PROCESSES = "xfce4-session gnome-shell plasmashell mate-session lxqt-session"

SCRIPT = r"""#!/bin/sh
# diskimages boot probe (only in boot-check copies): reports to ttyS1, then exits
uid="$1"
out=${DISKIMAGES_PROBE_OUT:-/dev/ttyS1}
say() { echo "__MARK__ $*" >> "$out" 2>/dev/null || true; }
say machine-id=$(cat /etc/machine-id 2>/dev/null)
seen_ip= seen_session= seen_key=
i=0
while [ "$i" -lt 900 ]; do
  if [ -z "$seen_key" ] && [ -s /etc/ssh/ssh_host_ed25519_key.pub ]; then
    say hostkey=$(cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub | sha256sum | cut -c1-32); seen_key=1
  fi
  if [ -z "$seen_ip" ]; then
    set -- $(hostname -I 2>/dev/null); ip=${1:-}
    [ -n "$ip" ] && { say ip=$ip; seen_ip=1; }
  fi
  if [ -n "$uid" ] && [ -z "$seen_session" ]; then
    # shell builtins only: a fork per process per second cost the booting guest ~12 CPU-seconds under TCG
    for d in /proc/[0-9]*; do
      read -r comm 2>/dev/null < "$d/comm" || continue
      case " __SESSIONS__ " in *" $comm "*) ;; *) continue ;; esac
      owner=
      while read -r key real rest; do
        [ "$key" = "Uid:" ] && { owner=$real; break; }
      done 2>/dev/null < "$d/status"
      if [ "$owner" = "$uid" ]; then say session uid=$uid process=$comm; seen_session=1; break; fi
    done
  fi
  if [ -n "$seen_ip" ] && [ -n "$seen_key$seen_session" ] && { [ -z "$uid" ] || [ -n "$seen_session" ]; }; then
    say done; exit 0
  fi
  i=$((i + 1)); sleep 1
done
say gave-up
""".replace("__MARK__", MARK).replace("__SESSIONS__", SESSION_PROCESSES)

UNIT = """[Unit]
Description=diskimages boot probe (boot-check copies only)
After=basic.target

[Service]
Type=simple
ExecStart=/usr/local/sbin/diskimages-probe {uid}

[Install]
WantedBy=multi-user.target
"""


class ProbeError(Failure):
    pass


def inject(raw: Path, uid: Optional[int], authorized_key: Optional[str] = None) -> None:
    """Write the probe (and optionally an SSH public key for root) into the ext4 root of the raw disk `raw`,
    a copy made for this boot."""
    try:
        off = root_partition_offset(raw)
    except RuntimeError as e:
        raise ProbeError(str(e)) from None
    dev = f"{raw}?offset={off}"
    with tempfile.TemporaryDirectory(prefix="diskimages-probe-") as tmp:
        t = Path(tmp)
        (t / "probe").write_text(SCRIPT)
        (t / "unit").write_text(UNIT.format(uid="" if uid is None else uid))
        ls = subprocess.run(["debugfs", "-R", "ls -p /etc/systemd/system", dev], capture_output=True, text=True)
        if "/multi-user.target.wants/" not in ls.stdout:
            if ls.returncode != 0 or "/" not in ls.stdout:
                raise ProbeError(f"the root file system is not ext4 (debugfs: {ls.stderr.strip()[-200:]})")
            mk = "mkdir /etc/systemd/system/multi-user.target.wants\n"
        else:
            mk = ""
        cmds = (mk +
                "rm /usr/local/sbin/diskimages-probe\n"
                f"write {t / 'probe'} /usr/local/sbin/diskimages-probe\n"
                "sif /usr/local/sbin/diskimages-probe mode 0100755\n"
                "rm /etc/systemd/system/diskimages-probe.service\n"
                f"write {t / 'unit'} /etc/systemd/system/diskimages-probe.service\n"
                "symlink /etc/systemd/system/multi-user.target.wants/diskimages-probe.service "
                "/etc/systemd/system/diskimages-probe.service\n")
        if authorized_key:
            (t / "authorized_keys").write_text(authorized_key.strip() + "\n")
            cmds += ("mkdir /root/.ssh\n"
                     "sif /root/.ssh mode 040700\n"
                     "rm /root/.ssh/authorized_keys\n"
                     f"write {t / 'authorized_keys'} /root/.ssh/authorized_keys\n"
                     "sif /root/.ssh/authorized_keys mode 0100600\n")
        (t / "cmds").write_text(cmds)
        r = subprocess.run(["debugfs", "-w", "-f", str(t / "cmds"), dev], capture_output=True, text=True)
        check = subprocess.run(["debugfs", "-R", "stat /usr/local/sbin/diskimages-probe", dev],
                               capture_output=True, text=True)
        if "Inode:" not in check.stdout:
            raise ProbeError(f"could not write the probe: {r.stderr.strip()[-300:]}")


def parse(buffer: bytes) -> dict[str, str]:
    """{key: value} from the probe's lines, e.g. machine-id, hostkey, ip, session."""
    found: dict[str, str] = {}
    for m in re.finditer(rb"%s (\S+?)(?:=(\S*))?(?: ([^\r\n]*))?\r?\n" % MARK.encode(), buffer):
        key = m.group(1).decode()
        val = (m.group(2) or b"").decode()
        rest = (m.group(3) or b"").decode()
        found[key] = (val + (" " + rest if rest else "")).strip()
    return found
