#!/bin/sh
# Runs inside the image (as root, after the recipe's users, autologin and overlay files are in place).
# Example customisation: make Firefox ESR the default browser and record what was built.
set -eu
if [ -x /usr/bin/firefox-esr ]; then
  update-alternatives --set x-www-browser /usr/bin/firefox-esr || true
fi
printf 'BUILT_BY=diskimages\nPACKAGES=%s\n' "$(dpkg-query -W | wc -l)" > /etc/diskimages-release
