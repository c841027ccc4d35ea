#!/bin/sh
# Set up a fresh Debian 12 (or Ubuntu) machine for the disk-images cookbook:
# the system tools from the distribution (apt-get) and the Python packages in .venv (from pyproject.toml).
# Usage: scripts/setup.sh            (idempotent; safe to run again)
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Image tools and what the disk assembly and boot checks run on the host.
PACKAGES="mmdebstrap debian-archive-keyring qemu-system-x86 qemu-utils ovmf
  e2fsprogs dosfstools mtools fdisk util-linux procps curl
  mkosi debootstrap systemd-container debos parted
  virtinst packer guestfs-tools xorriso xz-utils oz
  chromium
  docker-registry skopeo
  libvirt-daemon-system libvirt-clients dnsmasq-base iptables openssh-client
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -q
  # --no-install-recommends: recommends of image tools (debos: systemd-resolved) can break the host's DNS.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "setup: done (.venv/bin/python -m diskimages --help)"
