"""Packer (HashiCorp; Debian ships 1.6.6, the last MPL release line), two ways, chosen by the distribution:

* **import** (Debian): an HCL2 template whose qemu builder boots a copy of the project's cloud base image
  (`disk_image = true`), with a NoCloud seed on a CD (`cd_files`, `cd_label = "cidata"`) that creates a build user
  for Packer's SSH; a file provisioner uploads the staging tarball and a shell provisioner runs vm-build.sh
  (packages, kernel command line, the shared customisation); the shutdown command deletes the build user and
  cloud-init's state.
* **installer** (Ubuntu, Fedora): the distribution's installer ISO with its unattended configuration, no SSH
  (`communicator = "none"`; the installer powers the VM off): Ubuntu's autoinstall on a `cidata` CD (`cd_files`)
  started from GRUB's console by `boot_command`; Fedora's kickstart and the staging tarball from Packer's HTTP
  server (`http_directory`, `inst.ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg`). The installed system runs the
  same vm-build.sh.

The template is valid for Packer 1.6.6 and the 1.9 line; from 1.7 on the qemu builder is a plugin, so
`plugins.pkr.hcl` (required_plugins) is written beside it only for those versions (1.6.6 refuses the block).
Debian's installer variant (`boot_command` + the preseed over Packer's HTTP server) is rendered and validated
with `packer validate`; it needs the Debian installer ISO, which the project's machines cannot get.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import re

from .. import checkers, disk, measure, reaper, vmbuild
from ..disk import DiskInfo
from ..distros import Distribution, Release
from ..runner import run
from . import BASE_OPTION, BuildState, DiskTool
from ..errors import Failure


BUILD_USER = "diskimages-build"
PLUGINS = """packer {
  required_plugins {
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.0.0"
    }
  }
}
"""


def hcl(value) -> str:
    """An HCL2 literal (strings, numbers, booleans, lists) — JSON syntax is valid HCL2 for these."""
    return json.dumps(value)


class Packer(DiskTool):
    name = "packer"
    program = "packer"
    packages = ("packer",)
    applies_recipe = True
    needs = frozenset({"base", "accel"})
    description = "HashiCorp Packer: qemu builder from the cloud base image, shell provisioner applies the recipe"
    options = {"base": BASE_OPTION,
               "iso_url": ("the installer ISO: an http(s) URL or an absolute path",
                           lambda v: isinstance(v, str) and len(v) < 2048 and v.startswith(("http://", "https://", "/"))
                           and "\n" not in v and '"' not in v)}
    native = {"packages": "shell provisioner (the distribution's package install, without Recommends)",
              "desktop": "shell provisioner (the desktop's packages)",
              "files": "file provisioner (staged tarball)", "scripts": "shell provisioner via customize.sh",
              "disk": "disk_size (grown by cloud-init growpart)"}

    def version(self):
        v = super().version()
        return v.lstrip("v") if v else v

    def supports(self, distro: Distribution, release: Release, arch: str):
        why = super().supports(distro, release, arch)
        if why is None and vmbuild.vm_path(distro) is None:
            why = (f"{distro.pretty_name} has neither a cloud base recipe nor an unattended installer this template "
                   "drives (arch-boxes is Packer's way for Arch Linux)")
        return why

    def needs_for(self, distro=None):
        if distro is not None and vmbuild.vm_path(distro) == "installer":
            return frozenset({"accel"})
        return self.needs

    # -- the installer path
    def host_lacks(self, recipe):
        from .. import distros
        d, rel = distros.for_recipe(recipe)
        if vmbuild.vm_path(d) != "installer" or recipe.tool_options(self.name).get("iso_url") or d.installer_media(rel, recipe.architecture):
            return None
        return (f"the host's osinfo database does not know {d.pretty_name} {rel.version}'s installer ISO "
                f"(allowed: tools.{self.name}.iso_url)")

    def iso(self, state: BuildState) -> tuple[str, str]:
        """(iso_url, iso_checksum): the option, else the osinfo database's installer ISO with the checksum file
        published beside it."""
        url = state.recipe.tool_options(self.name).get("iso_url") or \
            state.distro.installer_media(state.release, state.recipe.architecture)
        if not url:
            raise Failure(f"no installer ISO for {state.distro.pretty_name} {state.release.version} is known "
                               f"here: the host's osinfo database does not list it (allowed: tools.{self.name}."
                               "iso_url in the recipe)")
        return url, _checksum_for(url)

    def installer_source(self, state: BuildState, work: Path, iso: tuple[str, str], accel: str) -> str:
        r, d = state.recipe, state.distro
        kernel, initrd = d.installer_kernel
        if d.installer == "autoinstall":
            args = d.installer_args(None)
            seed = {"cd_files": [str(work / "cidata/user-data"), str(work / "cidata/meta-data")],
                    "cd_label": "cidata"}
        else:
            args = d.installer_args("http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg")
            seed = {"http_directory": str(work / "http")}
        # GRUB's console on the installer ISO: the installer's kernel with the unattended arguments
        boot = ["c<wait>", f"linux /{kernel} {args} {disk.SERIAL_CONSOLE}<enter><wait>",
                f"initrd /{initrd}<enter><wait>", "boot<enter>"]
        src = {"iso_url": iso[0], "iso_checksum": iso[1], "format": "raw",
               "disk_size": f"{r.disk.size_bytes >> 20}M", "accelerator": accel, "headless": True,
               "memory": 4096, "cpus": 2, "net_device": "virtio-net", "disk_interface": "virtio", **seed,
               "boot_wait": "10s", "boot_command": boot, "communicator": "none", "shutdown_timeout": "240m",
               "output_directory": str(work / "packer-output"), "vm_name": "disk.raw",
               "qemuargs": [["-serial", f"file:{work / 'serial.log'}"]]}
        body = "\n".join(f"  {k} = {hcl(v)}" for k, v in src.items())
        return (f"# Packer template rendered by diskimages from recipe {r.name}: {d.pretty_name}'s installer "
                f"({d.installer}), edit the recipe, not this file\nsource \"qemu\" \"diskimages\" {{\n{body}\n}}\n\n"
                "build {\n  sources = [\"source.qemu.diskimages\"]\n}\n")

    def write_installer_config(self, state: BuildState, work: Path, accel: str, *, tarball: bytes,
                               iso: tuple[str, str] | None = None) -> Path:
        d = state.distro
        if d.installer == "autoinstall":
            where = work / "cidata"
            files = vmbuild.installer_files(state, tarball=tarball)
        else:
            where = work / "http"
            files = vmbuild.installer_files(state, stage_source=d.BESIDE_KICKSTART)
        where.mkdir(parents=True)
        for name, text in files.items():
            fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        if d.installer == "kickstart":
            # served to the installer only, from Packer's HTTP server bound for this build
            (where / "diskimages-stage.tar.gz").write_bytes(tarball)
        tpl = work / "template"
        tpl.mkdir()
        (tpl / "diskimages.pkr.hcl").write_text(self.installer_source(state, work, iso or self.iso(state), accel))
        if self._plugins_block():
            (tpl / "plugins.pkr.hcl").write_text(PLUGINS)
        return tpl

    def template(self, state: BuildState, work: Path, base: Path, base_sum: str, accel: str) -> str:
        r = state.recipe
        size_mb = r.disk.size_bytes >> 20
        src = {
            "disk_image": True, "iso_url": str(base), "iso_checksum": base_sum, "format": "raw",
            "disk_size": f"{size_mb}M", "accelerator": accel, "headless": True, "memory": 2048, "cpus": 2,
            "net_device": "virtio-net", "disk_interface": "virtio",
            "cd_files": [str(work / "cidata/user-data"), str(work / "cidata/meta-data")], "cd_label": "cidata",
            "ssh_username": BUILD_USER, "ssh_private_key_file": str(work / "id_ed25519"), "ssh_timeout": "30m",
            "shutdown_command": (f"sudo sh -c 'userdel -rf {BUILD_USER} 2>/dev/null; "
                                 "rm -f /etc/sudoers.d/90-cloud-init-users; "
                                 "cloud-init clean --logs --seed; rm -rf /var/lib/cloud/instances; poweroff'"),
            "shutdown_timeout": "5m",
            "output_directory": str(work / "packer-output"), "vm_name": "disk.raw",
            "qemuargs": [["-serial", f"file:{work / 'serial.log'}"]],
        }
        body = "\n".join(f"  {k} = {hcl(v)}" for k, v in src.items())
        return f"""# Packer template rendered by diskimages from recipe {r.name} (edit the recipe, not this file)
source "qemu" "diskimages" {{
{body}
}}

build {{
  sources = ["source.qemu.diskimages"]

  provisioner "file" {{
    source      = {hcl(str(work / "stage.tar.gz"))}
    destination = "/tmp/diskimages-stage.tar.gz"
  }}

  provisioner "shell" {{
    execute_command = "sudo sh -c '{{{{ .Vars }}}} {{{{ .Path }}}}'"
    inline = [
      "tar -xzf /tmp/diskimages-stage.tar.gz -C / && rm -f /tmp/diskimages-stage.tar.gz",
      "sh {vmbuild.customize.STAGE}/{vmbuild.VM_SCRIPT}",
    ]
  }}
}}
"""

    def installer_template(self, state: BuildState) -> str:
        """The ISO + preseed variant: rendered and validated, needs the installer ISO to run."""
        r = state.recipe
        return f"""# Packer installer variant rendered by diskimages from recipe {r.name}: debian-installer with a preseed
# served by Packer's HTTP server (needs the Debian netinst ISO and an installer-capable mirror)
variable "iso_url" {{
  type    = string
  default = "{r.distro}-{state.release.version}-{r.architecture}-netinst.iso"
}}
variable "iso_checksum" {{
  type    = string
  default = "none"
}}
source "qemu" "installer" {{
  iso_url          = var.iso_url
  iso_checksum     = var.iso_checksum
  disk_size        = "{r.disk.size_bytes >> 20}M"
  format           = "qcow2"
  accelerator      = "tcg"
  headless         = true
  memory           = 2048
  http_directory   = "http"
  boot_wait        = "5s"
  boot_command     = ["<esc><wait>", "auto url=http://{{{{ .HTTPIP }}}}:{{{{ .HTTPPort }}}}/preseed.cfg ",
                      "priority=critical console=ttyS0<enter>"]
  communicator     = "none"
  shutdown_timeout = "120m"
}}
build {{
  sources = ["source.qemu.installer"]
}}
"""

    def render(self, state: BuildState) -> dict[str, str]:
        work = Path("WORK")
        if vmbuild.vm_path(state.distro) == "installer":
            try:
                iso = self.iso(state)
            except RuntimeError:
                iso = ("INSTALLER_ISO_URL", "none")
            seed = "cidata" if state.distro.installer == "autoinstall" else "http"
            files = {"diskimages.pkr.hcl": self.installer_source(state, work, iso, "tcg"),
                     **{f"{seed}/{k}": v for k, v in vmbuild.installer_files(
                         state, tarball=b"<tar.gz of customize.sh, files, scripts, vm-build.sh>",
                         stage_source=getattr(state.distro, "BESIDE_KICKSTART", "")).items()},
                     "vm-build.sh": vmbuild.vm_script(state.recipe),
                     "command": "packer build -color=false WORK/template\n"}
        else:
            files = {"diskimages.pkr.hcl": self.template(state, work, Path("BASE/cloud-base.qcow2"),
                                                         "sha256:BASE_SHA256", "tcg"),
                     "cidata/user-data": vmbuild.cloud_config(state.recipe, None, ssh_user=BUILD_USER,
                                                              ssh_pubkey="ssh-ed25519 AAAA... (made per build)",
                                                              apply=False, poweroff=False),
                     "vm-build.sh": vmbuild.vm_script(state.recipe),
                     "installer/diskimages-installer.pkr.hcl": self.installer_template(state),
                     "installer/http/preseed.cfg": vmbuild.installer_files(
                         state, stage_source="/diskimages-stage.tar.gz")["preseed.cfg"],
                     "command": "packer build -color=false WORK/template\n"}
        if self._plugins_block():
            files["plugins.pkr.hcl"] = PLUGINS
        return files

    def check(self, state: BuildState, where: Path) -> list:
        """`packer validate` on the template with real files, and the seed's own checkers."""
        found = []
        where.mkdir(parents=True, exist_ok=True)
        work = where / "w"
        if vmbuild.vm_path(state.distro) == "installer":
            try:
                url = self.iso(state)[0]
            except RuntimeError as e:
                url = str(where / "stand-in.iso")
                found.append(checkers.Finding("diskimages.pkr.hcl", "installer ISO", True,
                                              f"{e}; a stand-in path is checked instead"))
            tpl = self.write_installer_config(state, work, "tcg", tarball=b"stage",
                                              iso=(url, checkers.stand_in_checksum(where, url)))
            if state.distro.installer == "autoinstall":
                found += [checkers.cloud_init_schema(work / "cidata/user-data", "cidata/user-data"),
                          checkers.installer_fields(work / "cidata/user-data", "cidata/user-data",
                                                    state.distro.installer_schema)]
            else:
                found.append(checkers.ksvalidator(work / "http/ks.cfg", "http/ks.cfg",
                                                  checkers.kickstart_version(state.release.version)))
        else:
            base = where / "base.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
            tpl = self.write_config(state, work, base, "tcg")
            found.append(checkers.cloud_init_schema(work / "cidata/user-data", "cidata/user-data"))
            inst = where / "installer"
            inst.mkdir()
            (inst / "diskimages-installer.pkr.hcl").write_text(self.installer_template(state))
            found.append(checkers.run("installer/diskimages-installer.pkr.hcl", "packer validate",
                                      ["packer", "validate", inst], env={"CHECKPOINT_DISABLE": "1"}))
        found.insert(0, checkers.run("diskimages.pkr.hcl", "packer validate", ["packer", "validate", tpl],
                                     env={"CHECKPOINT_DISABLE": "1"}))
        return found

    def _plugins_block(self) -> bool:
        v = self.version() or "1.6"
        try:
            major, minor = (int(x) for x in v.split(".")[:2])
        except ValueError:
            return False
        return (major, minor) >= (1, 7)

    def write_config(self, state: BuildState, work: Path, base: Path, accel: str) -> Path:
        (work / "cidata").mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "diskimages-packer-build",
                        "-f", str(work / "id_ed25519")], check=True)
        pub = (work / "id_ed25519.pub").read_text().strip()
        (work / "cidata/user-data").write_text(vmbuild.cloud_config(state.recipe, None, ssh_user=BUILD_USER,
                                                                    ssh_pubkey=pub, apply=False, poweroff=False))
        (work / "cidata/meta-data").write_text(f"instance-id: diskimages-{os.getpid()}\n"
                                               f"local-hostname: {state.recipe.hostname}\n")
        fd = os.open(work / "stage.tar.gz", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(vmbuild.stage_tarball(state.recipe))
        tpl = work / "template"
        tpl.mkdir()
        (tpl / "diskimages.pkr.hcl").write_text(self.template(state, work, base, measure.sha256_file(base), accel))
        if self._plugins_block():
            (tpl / "plugins.pkr.hcl").write_text(PLUGINS)
        return tpl

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        work = state.work / "packer"
        kvm = state.accel.kind == "kvm"
        state.workaround(f"accelerator = {'kvm' if kvm else 'tcg'}: {state.accel.reason}")
        installer = vmbuild.vm_path(state.distro) == "installer"
        if installer:
            state.workaround("installed under BIOS: the installer sets up the boot loader of the firmware it "
                             "booted with")
            tpl = self.write_installer_config(state, work, "kvm" if kvm else "tcg",
                                              tarball=vmbuild.stage_tarball(state.recipe))
        else:
            tpl = self.write_config(state, work, state.base.path, "kvm" if kvm else "tcg")
        run_packer(state, work, tpl, raw, "installer VM" if installer else "build VM")
        if not installer:        # an installer writes a fresh disk: nothing deleted is left to zero
            vmbuild.sparsify(state, raw)
        return disk.raw_disk_info(raw, state.distro)


def run_packer(state: BuildState, work: Path, tpl: Path, raw: Path, vm: str) -> None:
    """`packer build` of the template in `tpl`, the VM's serial console appended to the log, the disk moved to
    `raw`."""
    # Packer's plugin sockets live in TMPDIR: a short one (a unix socket path has at most 107 bytes)
    with reaper.temp_dir("diskimages-packer-") as tmp, vmbuild.SerialWatch(work / "serial.log", state.on_line):
        env = {"PACKER_CACHE_DIR": str(work / "cache"), "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1",
               "TMPDIR": str(tmp)}
        try:
            run(["packer", "build", "-color=false", "-on-error=cleanup", str(tpl)], cwd=work, env=env,
                log=state.log, on_line=state.on_line)
        finally:
            serial = work / "serial.log"
            if serial.exists():
                with open(state.log, "ab") as f:
                    f.write(f"--- {vm} serial console ---\n".encode() + serial.read_bytes())
    os.replace(work / "packer-output" / "disk.raw", raw)


def _checksum_for(iso_url: str) -> str:
    """Packer's iso_checksum: the checksum file published beside the ISO (Ubuntu's SHA256SUMS, Fedora's
    NAME-CHECKSUM), which Packer downloads and reads itself; "none" for a local file."""
    if "://" not in iso_url:
        return "none"
    folder, name = iso_url.rsplit("/", 1)
    m = re.fullmatch(r"Fedora-(\w+)-netinst-(\w+)-(\d+)-([\d.]+)\.iso", name)
    if m:
        return f"file:{folder}/Fedora-{m.group(1)}-{m.group(3)}-{m.group(4)}-{m.group(2)}-CHECKSUM"
    return f"file:{folder}/SHA256SUMS"
