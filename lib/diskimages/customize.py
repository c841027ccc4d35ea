"""Customisation of a root file system from the recipe, shared by every rootfs-based tool.

`render_script(recipe)` gives one POSIX shell script (users, sudo, autologin, hostname, locale, time zone,
keyboard, network, services, overlay files, the recipe's own scripts, image hygiene). Tools that run commands
inside the image (mmdebstrap, debos `run`, mkosi postinst, cloud-init, Packer's shell provisioner) run this same
script, so every tool applies the recipe identically. Passwords given by environment variable never appear in
the script: they reach it in the environment of the process that runs it.
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Optional

from . import distros
from .chroot import chroot_run
from .recipe import Recipe, RecipeError
from .shell import q as _q, write_file as _write

STAGE = "/var/tmp/diskimages"   # inside the image while customising; removed afterwards

SSH_KEYGEN_UNIT = """\
[Unit]
Description=Generate SSH host keys on first boot (diskimages)
# off the desktop's critical path: once the display manager has started, at idle CPU and I/O priority
# (RSA keys take ~10 s of CPU on 2 emulated vCPUs); sshd waits for the keys
After=display-manager.service
Before={ssh_service}
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes
Nice=19
CPUSchedulingPolicy=idle
IOSchedulingClass=idle

[Install]
WantedBy=multi-user.target {ssh_service}
"""

UPDATE_DONE = ("# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the "
               "time this directory\n# was updated. See man:systemd-update-done.service(8).")

#: X11 on QEMU's standard VGA (bochs-drm, the boot check's display): Xorg's modesetting driver loads Mesa to try
#: glamor, finds only the llvmpipe software renderer and refuses it. Loading it costs ~3 s before the display
#: manager's screen under emulation; without it the server draws into the frame buffer as it would anyway.
#: Other graphics hardware keeps its defaults
QEMU_VGA_XORG = """\
Section "OutputClass"
  Identifier "diskimages: QEMU standard VGA, no glamor"
  MatchDriver "bochs-drm"
  Driver "modesetting"
  Option "AccelMethod" "none"
EndSection"""
QEMU_VGA_XORG_PATH = "/etc/X11/xorg.conf.d/10-diskimages-qemu-vga.conf"

#: Xfce's session manager starts the failsafe session's clients in priority groups and waits for each group to
#: register before starting the next: xfwm4, then xfsettingsd, the panel, Thunar's daemon, xfdesktop. Under
#: emulation that chain left one of two vCPUs idle for ~8 s of the session's start (kernel tracing, this
#: machine). One group starts them together, as Xfce's own Wayland failsafe session does. It is a user-level
#: default (copied from the image's own session file into /etc/skel), so no package's configuration file changes
XFCE_SESSIONS = ("xfce", "xubuntu")
XFCE_SESSION_FILE = "xfce4/xfconf/xfce-perchannel-xml/xfce4-session.xml"
XFCE_ONE_GROUP = r's/(Client[0-9]+_Priority" type="int" value=)"[0-9]+"/\1"15"/'

#: On a user's first login xfce4-panel finds no configuration in xfconf and runs its `migrate` helper (a GTK
#: program of its own, ~1 CPU-s and ~1.4 s under emulation while the panel waits), which copies the panel's
#: default layout, a channel file that already carries the current config version, property for property into
#: the user's channel. The same file in /etc/skel gives every new user that channel from the start. Not done
#: where a system-wide panel channel exists: xfconf would read that one, and the panel never migrates then
XFCE_PANEL_DEFAULT = "xfce4/panel/default.xml"
XFCE_PANEL_CHANNEL = "xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml"

#: units a desktop image does not need at boot
FIRST_BOOT_JOBS = ("e2scrub_reap.service", "e2scrub_all.timer")

NETWORKD_DHCP = """\
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""


def _xfce_one_group(session: str) -> str:
    """The failsafe session the display manager's session reads first (Xubuntu's own folder, else /etc/xdg),
    with every client in one priority group, as the users' default; a recipe's own file is left alone."""
    skel = f"/etc/skel/.config/{XFCE_SESSION_FILE}"
    return (f"if [ ! -e {skel} ]; then\n"
            f"  for d in /etc/xdg/xdg-{session} /etc/xdg; do\n"
            f"    if [ -f \"$d/{XFCE_SESSION_FILE}\" ]; then\n"
            f"      mkdir -p {skel.rsplit('/', 1)[0]}\n"
            f"      sed -E {_q(XFCE_ONE_GROUP)} \"$d/{XFCE_SESSION_FILE}\" > {skel}\n"
            "      break\n"
            "    fi\n"
            "  done\n"
            "fi")


def _xfce_panel_layout(session: str) -> str:
    """The layout the panel's migrate helper would read first (a user's own, Xubuntu's folder, /etc/xdg) as the
    users' panel channel, when it is already at the current config version (the helper then copies it as is)."""
    skel = f"/etc/skel/.config/{XFCE_PANEL_CHANNEL}"
    dirs = f"/etc/skel/.config /etc/xdg/xdg-{session} /etc/xdg"
    return (f"layout=; channel_exists=\n"
            f"for d in {dirs}; do\n"
            f"  if [ -z \"$layout\" ] && [ -f \"$d/{XFCE_PANEL_DEFAULT}\" ]; then layout=\"$d/{XFCE_PANEL_DEFAULT}\"; fi\n"
            f"  if [ -e \"$d/{XFCE_PANEL_CHANNEL}\" ]; then channel_exists=yes; fi\n"
            "done\n"
            "if [ -z \"$channel_exists\" ] && [ -n \"$layout\" ] && "
            "grep -Eq '<property name=\"configver\" type=\"int\" value=\"2\" */>' \"$layout\"; then\n"
            f"  mkdir -p {skel.rsplit('/', 1)[0]}\n"
            f"  cp \"$layout\" {skel}\n"
            "fi")


def password_env_vars(recipe: Recipe) -> dict[str, str]:
    """{script variable: value} for users whose password comes from the build host's environment."""
    out = {}
    for i, u in enumerate(recipe.users):
        if u.password_env:
            value = os.environ.get(u.password_env)
            if not value:
                raise RecipeError(recipe.source, f"users.{i}.password_env",
                                  f"environment variable {u.password_env} is not set (it must hold the password "
                                  f"for user {u.name} at build time)")
            out[f"DISKIMAGES_PASSWORD_{i}"] = value
    return out


def render_script(recipe: Recipe, stage: str = STAGE) -> str:
    """The customisation script; `stage` is where the tool put the staging folder inside the image."""
    STAGE = stage  # noqa: N806 (the folder the rest of the script refers to)
    distro, _ = distros.for_recipe(recipe)
    desk = distro.desktops[recipe.desktop]
    s = ["#!/bin/sh",
         f"# diskimages customisation for recipe {recipe.name} (rendered from the recipe; do not edit)",
         "set -eu", 'step() { echo "diskimages: $*"; }', ""]
    add = s.append
    if any(u.password_env for u in recipe.users):
        add("# passwords given by environment variable: in the environment, or in a root-only staging file that")
        add("# is read and deleted here (tools that cannot pass an environment safely)")
        add(f"if [ -f {STAGE}/secrets ]; then set -a; . {STAGE}/secrets; set +a; rm -f {STAGE}/secrets; fi")

    def step(text: str) -> None:
        add(f"step {_q(text)}")

    step("hostname")
    add(_write("/etc/hostname", recipe.hostname))
    add(_write("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{recipe.hostname}\n"
                             "::1\tlocalhost ip6-localhost ip6-loopback\n"))

    step("locale")
    add(distro.locale_step(recipe))

    step("timezone")
    add(distro.timezone_step(recipe))

    step("keyboard")
    add(distro.keyboard_step(recipe))

    if distro.initramfs_step(recipe):
        step("initramfs for a local disk")
        add(distro.initramfs_step(recipe))

    step("overlay files")
    add(f"if [ -d {STAGE}/files ]; then cp -dR --preserve=mode,timestamps,links {STAGE}/files/. /; fi")

    if desk.session in XFCE_SESSIONS:
        step("Xfce: the session components start together (a default in /etc/skel)")
        add(_xfce_one_group(desk.session))
        step("Xfce: the default panel layout in /etc/skel, so no first-login migration")
        add(_xfce_panel_layout(desk.session))

    step("users")
    add("passwd -l root >/dev/null")
    for i, u in enumerate(recipe.users):
        groups = list(u.groups) + ([distro.sudo_group] if u.sudo else [])
        for g in dict.fromkeys(groups):
            add(f"getent group {_q(g)} >/dev/null || groupadd {_q(g)}")
        gopt = f" -G {_q(','.join(dict.fromkeys(groups)))}" if groups else ""
        add(f"useradd -m -u {recipe.user_uid(u.name)} -s {_q(u.shell)}{gopt} {_q(u.name)} 2>&1 "
            "| grep -v 'home directory already exists' || true")
        add(f"id {_q(u.name)} >/dev/null")
        add(f"cp -an /etc/skel/. {_q('/home/' + u.name + '/')}")
        add(f"chown -R {_q(u.name)}: {_q('/home/' + u.name)}")
        if u.password_hash:
            add(f"usermod -p {_q(u.password_hash)} {_q(u.name)}")
        elif u.password_env:
            add(f'printf "%s:%s\\n" {_q(u.name)} "$DISKIMAGES_PASSWORD_{i}" | chpasswd')
        else:
            add(f"passwd -l {_q(u.name)} >/dev/null")
        if u.sudo_nopasswd:
            add(_write(f"/etc/sudoers.d/90-diskimages-{u.name}", f"{u.name} ALL=(ALL) NOPASSWD:ALL", "0440"))

    if any(u.sudo for u in recipe.users) and distro.sudo_step():
        add(distro.sudo_step())

    if recipe.autologin:
        step(f"autologin {recipe.autologin} ({desk.display_manager or 'console'})")
        add(distro.autologin_step(recipe.autologin, desk))

    if desk.display_manager:
        step("X11 on QEMU's standard VGA without glamor")
        add(_write(QEMU_VGA_XORG_PATH, QEMU_VGA_XORG))

    step("network")
    add("if [ ! -x /usr/sbin/NetworkManager ]; then")
    add(_write("/etc/systemd/network/80-diskimages-dhcp.network", NETWORKD_DHCP))
    add("  systemctl enable systemd-networkd.service")
    add("  if [ -f /lib/systemd/system/systemd-resolved.service ]; then systemctl enable systemd-resolved.service; fi")
    add("elif [ -f /etc/systemd/network/80-diskimages-dhcp.network ]; then")
    add("  # a desktop made from a console base image: NetworkManager takes over from systemd-networkd")
    add("  rm -f /etc/systemd/network/80-diskimages-dhcp.network")
    add("  systemctl disable systemd-networkd.service")
    add("fi")
    if distro.network_step(desk):
        add(distro.network_step(desk))
    for unit in distro.desktop_services(desk):
        add(f"systemctl enable {_q(unit)}")

    step("ssh host keys are generated at first boot")
    add("if [ -x /usr/sbin/sshd ]; then")
    add(_write("/etc/systemd/system/diskimages-ssh-keygen.service",
               SSH_KEYGEN_UNIT.format(ssh_service=distro.ssh_service)))
    add("  systemctl enable diskimages-ssh-keygen.service")
    add("fi")

    if desk.display_manager:
        step("no first-boot jobs a desktop does not need")
        # e2scrub_reap looks for stale LVM snapshots of ext4 scrubs (there is no LVM here); it costs ~10 s of
        # a first boot under emulation
        for unit in FIRST_BOOT_JOBS + distro.desktop_skipped_units:
            add(f"systemctl disable {unit} 2>/dev/null || true")

    if recipe.services:
        step("services")
        for svc in recipe.services:
            add(f"systemctl enable {_q(svc)}")
    add(f"systemctl set-default {'graphical' if desk.display_manager else 'multi-user'}.target")

    for i, path in enumerate(recipe.scripts):
        step(f"script {path}")
        add(f"(cd / && {STAGE}/scripts/{i} )")

    if recipe.lean:
        step("lean: no documentation, man pages, other languages' translations or other charsets' charmaps")
        add(distro.lean_step(recipe))

    step("hygiene: no machine-id, host keys, caches or logs baked in")
    add(distro.cleanup_step())
    add("rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub")
    add(": > /etc/machine-id")
    add("if [ -d /var/lib/dbus ]; then ln -sf /etc/machine-id /var/lib/dbus/machine-id; fi")
    add("rm -f /var/lib/systemd/random-seed /root/.bash_history")
    add("find /var/log -type f -exec truncate -s 0 {} +")
    step("caches current: the first boot skips ldconfig.service and the other /usr-newer-than-/etc updates")
    add("ldconfig")
    # what systemd-update-done writes (it does nothing in a chroot): ConditionNeedsUpdate= compares /usr's time
    add("if [ -d /usr/lib/systemd ]; then for f in /etc/.updated /var/.updated; do")
    add(f"  printf '%s\\n' {_q(UPDATE_DONE)} > \"$f\"; touch -r /usr \"$f\"")
    add("done; fi")
    step("done")
    return "\n".join(s) + "\n"


def stage(recipe: Recipe, rootfs: Path, *, where: str = STAGE, files: bool = True, secrets: bool = False) -> Path:
    """Put the rendered script, the recipe's scripts and (`files`) its overlay into `rootfs/where`, the
    staging folder the script reads. `secrets`: also a root-only file with the passwords given by environment
    variable, for tools that cannot pass them in the environment without showing them on a command line;
    the script deletes it as soon as it has read it."""
    st = rootfs / where.lstrip("/")
    if st.exists():
        shutil.rmtree(st)
    (st / "scripts").mkdir(parents=True)
    st.chmod(0o700)
    (st / "customize.sh").write_text(render_script(recipe, where))
    (st / "customize.sh").chmod(0o755)
    for i, p in enumerate(recipe.script_paths):
        shutil.copy(p, st / "scripts" / str(i))
        (st / "scripts" / str(i)).chmod(0o755)
    if files and recipe.files_dir:
        shutil.copytree(recipe.files_dir, st / "files", symlinks=True)
    env = password_env_vars(recipe)
    if secrets and env:
        fd = os.open(st / "secrets", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    return st


class _HostResolver:
    """Give the tree the host's resolv.conf while customising (scripts may install packages) and put back
    exactly what was there before (a file, a symlink such as systemd-resolved's, or nothing)."""

    def __init__(self, rootfs: Path):
        self.path = rootfs / "etc/resolv.conf"
        self.saved = rootfs / "etc/.resolv.conf.diskimages"

    def __enter__(self):
        if os.path.lexists(self.path):
            os.rename(self.path, self.saved)
        if os.path.exists("/etc/resolv.conf"):
            shutil.copy("/etc/resolv.conf", self.path)
        return self

    def __exit__(self, *exc):
        if os.path.lexists(self.path):
            os.unlink(self.path)
        if os.path.lexists(self.saved):
            os.rename(self.saved, self.path)


def apply(recipe: Recipe, rootfs: Path, *, log: Optional[Path] = None, on_line=None) -> None:
    """Run the recipe's customisation inside `rootfs` (a private mount namespace; nothing leaks)."""
    env = password_env_vars(recipe)
    distro, _ = distros.for_recipe(recipe)
    st = stage(recipe, rootfs)
    try:
        with distro.services_held(rootfs), _HostResolver(rootfs):
            chroot_run(rootfs, ["/bin/sh", f"{STAGE}/customize.sh"], log=log, env={**distro.chroot_env(), **env},
                       on_line=on_line)
    finally:
        shutil.rmtree(st, ignore_errors=True)
