"""oz (oz-install): the recipe becomes an oz TDL (template description: OS, install tree, packages, files,
commands); oz installs the OS in a libvirt VM with its own generated preseed/kickstart, then customises it over
SSH (`oz-install -u`).

oz 0.17 (Debian's) knows Debian 5-9 only ("Unsupported Debian update 12"): for newer releases the module says
so instead of pretending, and renders the TDL for reference. It also needs an installer tree or ISO, which the
project's build machines cannot reach, so no oz build has been run here.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path
from xml.sax.saxutils import escape

from .. import disk
from ..distros import get_distro
from ..runner import run
from . import BuildContext, DiskInfo, Tool, register

RELEASE_NUMBERS = {"buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13", "stretch": "9",
                   "jessie": "8", "wheezy": "7", "squeeze": "6", "lenny": "5"}
OZ_NAMES = {"debian": "Debian", "ubuntu": "Ubuntu", "fedora": "Fedora"}


@lru_cache(maxsize=1)
def supported() -> dict[str, list[str]]:
    """{OS name: [versions]} as oz-install --help lists them."""
    try:
        out = subprocess.run(["oz-install", "-h"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    table = out.split("Currently supported operating systems are:", 1)[-1]
    result = {}
    for line in table.splitlines():
        m = re.match(r"^\s+([A-Za-z][A-Za-z ]*?):\s*(.+)$", line)
        if m:
            result[m.group(1).strip()] = [v.strip() for v in m.group(2).split(",")]
    return result


@register
class Oz(Tool):
    name = "oz"
    program = "oz-install"
    produces = "disk"
    applies_recipe = True
    description = "oz: OS installation from a TDL in a libvirt VM, then customisation over SSH"
    native = {"packages": "<packages>", "desktop": "<packages> (the desktop's packages)", "files": "<files>",
              "scripts": "<commands>", "users": "<commands> (customize.sh)"}

    def version(self):
        return self.package_version("oz")         # oz-install has no --version

    def unavailable_reason(self, recipe=None):
        reason = super().unavailable_reason(recipe)
        if reason or recipe is None:
            return reason
        os_name = OZ_NAMES.get(recipe.distro)
        version = RELEASE_NUMBERS.get(recipe.release, recipe.release)
        known = supported().get(os_name or "", [])
        if version not in known:
            return (f"oz {self.version()} does not support {os_name or recipe.distro} {version} "
                    f"(it knows {os_name} {', '.join(known) or 'none'}; oz-install says "
                    f"'Unsupported {os_name} update {version}')")
        return None

    def tdl(self, ctx: BuildContext) -> str:
        r = ctx.recipe
        pkgs = get_distro(r.distro).packages_for(r)
        mirror = ctx.mirror.uri or "http://DEBIAN_MIRROR/debian"
        files = []
        if r.files_dir and r.files_dir.is_dir():
            for p in sorted(r.files_dir.rglob("*")):
                if p.is_file():
                    dest = "/" + str(p.relative_to(r.files_dir))
                    files.append(f"    <file name='{escape(dest)}' type='raw'>{escape(p.read_text(errors='replace'))}"
                                 "</file>")
        from ..customize import render_script
        script = escape(render_script(r))
        return f"""<?xml version="1.0"?>
<!-- oz TDL rendered by diskimages from recipe {r.name} -->
<template>
  <name>{r.name}</name>
  <description>{escape(r.description)}</description>
  <os>
    <name>{OZ_NAMES.get(r.distro, r.distro)}</name>
    <version>{RELEASE_NUMBERS.get(r.release, r.release)}</version>
    <arch>{'x86_64' if r.architecture == 'amd64' else 'aarch64'}</arch>
    <install type='url'>
      <url>{escape(mirror)}</url>
    </install>
    <rootpw>locked-by-customize</rootpw>
  </os>
  <disk>
    <size>{max(1, r.disk.size_bytes >> 30)}</size>
  </disk>
  <packages>
{chr(10).join(f"    <package name='{p}'/>" for p in pkgs)}
  </packages>
  <files>
{chr(10).join(files)}
  </files>
  <commands>
    <command name='customize'>{script}</command>
  </commands>
</template>
"""

    def render(self, ctx: BuildContext) -> dict[str, str]:
        return {"oz.tdl": self.tdl(ctx),
                "command": "oz-install -u -d 3 -s WORK/disk.qcow2 -x WORK/libvirt.xml oz.tdl\n"}

    def build_disk(self, ctx: BuildContext, raw: Path) -> DiskInfo:
        tdl = ctx.work / "oz.tdl"
        tdl.write_text(self.tdl(ctx))
        out = ctx.work / "disk.qcow2"
        run(["oz-install", "-u", "-d", "3", "-s", out, "-x", ctx.work / "libvirt.xml", tdl], log=ctx.log,
            on_line=ctx.on_line)
        run(["qemu-img", "convert", "-O", "raw", out, raw], log=ctx.log)
        return disk.raw_disk_info(raw)
