"""The main job: the Debian 12 Xfce recipe builds with mmdebstrap and boots to the autologin user's
desktop, shown in a screenshot."""
import re

import pytest

from diskimages.boot import boot_check
from diskimages.build import attach_boot, build
from diskimages.customize import XFCE_PANEL_CHANNEL, XFCE_PANEL_DEFAULT, XFCE_SESSION_FILE
from diskimages.inspect import ImageReader

SESSION_CLIENTS = ("xfwm4", "xfsettingsd", "xfce4-panel", "xfdesktop")

pytestmark = [pytest.mark.build, pytest.mark.boot]


def test_default_desktop_image_boots_to_the_autologin_desktop(tmp_path):
    res = build("debian-12-xfce", "mmdebstrap", tmp_path, progress=False)
    assert res.record["desktop"] == "xfce" and res.record["autologin_uid"] == 1000
    assert res.record["packages"] > 350
    with ImageReader(res.image) as r:
        # Xfce's failsafe session as the user's default, every client in one priority group
        system = r.read(f"/etc/xdg/{XFCE_SESSION_FILE}")
        user = r.read(f"/home/user/.config/{XFCE_SESSION_FILE}")
        assert r.read(f"/etc/skel/.config/{XFCE_SESSION_FILE}") == user
        # the panel's default layout is the user's panel channel from the start (no first-login migration)
        layout = r.read(f"/etc/xdg/{XFCE_PANEL_DEFAULT}")
        assert 'name="configver" type="int" value="2"' in layout
        assert r.read(f"/home/user/.config/{XFCE_PANEL_CHANNEL}") == layout
    assert set(re.findall(r'_Priority" type="int" value="(\d+)"', user)) == {"15"}
    assert len(set(re.findall(r'_Priority" type="int" value="(\d+)"', system))) > 1   # the package's groups
    assert re.sub(r'value="\d+"', "", user) == re.sub(r'value="\d+"', "", system)  # nothing else changed
    check = boot_check(res.image, res.record, firmware="uefi", backend="libvirt", progress=True)
    assert check.passed, check.reason
    # the session's clients started together (one group), not one group after the other (~8 s apart)
    started = dict(c.rsplit(":", 1) for c in check.ssh["session_children"].split())
    assert set(SESSION_CLIENTS) <= set(started), check.ssh["session_children"]
    seconds = [float(started[c]) for c in SESSION_CLIENTS]
    assert max(seconds) - min(seconds) < 2, check.ssh["session_children"]
    assert check.probe["session"] == "uid=1000 process=xfce4-session"
    # over SSH: the autologin user's graphical session on seat0, its Xfce session process, the network
    assert check.ssh["session_process"] == "xfce4-session"
    assert any(s.endswith(":user:seat0") for s in check.ssh["sessions"].split()), check.ssh
    assert check.ssh["gateway_reachable"] == "yes" and check.ssh["machine-id"] == check.probe["machine-id"]
    assert check.milestones["session"] < check.milestones["desktop"]
    # the system's font cache survived SOURCE_DATE_EPOCH's clamp (else the session scans the fonts and writes its
    # own), and Xorg did not load Mesa to try glamor on QEMU's VGA
    assert check.ssh["user_font_cache"] == "no", check.ssh
    assert check.ssh["xorg_accel"] == "glamor_disabled", check.ssh
    # a polkit agent runs in the session (NetworkManager and the rest ask the user through it), polkitd answers
    assert check.ssh["polkit_agent"] == "polkit-gnome-authentication-agent-1" and check.ssh["polkitd"] == "yes"
    assert len(check.probe["machine-id"]) == 32
    from PIL import Image
    img = Image.open(check.screenshot)
    assert img.size[0] >= 640 and len(img.convert("RGB").getcolors(1 << 20)) >= 256
    # GRUB reads the keyboard only: the serial port among its inputs costs 3 s of every boot
    with ImageReader(res.image) as r:
        assert "\nterminal_input console\n" in r.read("/boot/grub/grub.cfg")
        assert 'GRUB_TERMINAL_INPUT="console"' in r.read("/etc/default/grub")
    attach_boot(res, check)
    print(res.table().to_string(), check.table().to_string(), sep="\n")
