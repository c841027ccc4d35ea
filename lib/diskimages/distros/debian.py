"""Debian: the packages each desktop needs when Recommends are not installed (mmdebstrap's default)."""
from . import DesktopSpec, Distro

_X = ("xserver-xorg-core", "xserver-xorg-input-libinput", "xserver-xorg-video-qxl", "xserver-xorg-video-fbdev",
      "xserver-xorg-video-vesa", "fonts-dejavu-core", "dbus-x11", "at-spi2-core")

DEBIAN = Distro(
    name="debian",
    base_packages=(
        "linux-image-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "dbus-user-session",
        "libpam-systemd", "kmod", "e2fsprogs", "locales", "tzdata", "keyboard-configuration", "console-setup",
        # GRUB's modules and grub-mkimage, used inside the image so the boot loader matches its own release
        "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common",
        "iproute2", "netbase", "ca-certificates", "less", "procps",
    ),
    desktops={
        # console only: systemd-networkd + resolved configure the network (desktops use NetworkManager)
        "none": DesktopSpec(("systemd-resolved",), None, None),
        "xfce": DesktopSpec(("xfce4", "xfce4-terminal", "lightdm", "lightdm-gtk-greeter", "network-manager",
                             "network-manager-gnome") + _X, "lightdm", "xfce"),
        "gnome": DesktopSpec(("gnome-core", "gdm3", "network-manager") + _X, "gdm3", "gnome"),
        "kde": DesktopSpec(("kde-plasma-desktop", "sddm", "network-manager") + _X, "sddm", "plasma"),
        "mate": DesktopSpec(("mate-desktop-environment-core", "lightdm", "lightdm-gtk-greeter",
                             "network-manager") + _X, "lightdm", "mate"),
        "lxqt": DesktopSpec(("lxqt-core", "sddm", "network-manager") + _X, "sddm", "lxqt"),
    },
)
