"""Packer (HashiCorp; Debian ships 1.6.6, the last MPL release line): the recipe becomes an HCL2 template whose
qemu builder boots a copy of the project's cloud base image (`disk_image = true`), with a NoCloud seed on a CD
(`cd_files`, `cd_label = "cidata"`) that creates a build user for Packer's SSH; a file provisioner uploads the
staging tarball and a shell provisioner runs vm-build.sh (packages, kernel command line, the shared
customisation); the shutdown command deletes the build user and cloud-init's state.

The template is valid for Packer 1.6.6 and the 1.9 line; from 1.7 on the qemu builder is a plugin, so
`plugins.pkr.hcl` (required_plugins) is written beside it only for those versions (1.6.6 refuses the block).
The installer variant (`iso_url` + `boot_command` + the preseed over Packer's HTTP server) is rendered and
validated with `packer validate`; it needs the Debian installer ISO, which the project's machines cannot get.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .. import disk, measure, reaper, vmbuild
from ..disk import DiskInfo
from ..runner import run
from . import BASE_OPTION, BuildState, DiskTool
from .virt_install import preseed

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
    applies_recipe = True
    needs = frozenset({"base", "accel"})
    description = "HashiCorp Packer: qemu builder from the cloud base image, shell provisioner applies the recipe"
    package_managers = ("apt",)     # the cloud base is made by mmdebstrap
    options = {"base": BASE_OPTION}
    native = {"packages": "shell provisioner (the distribution's package install, without Recommends)",
              "desktop": "shell provisioner (the desktop's packages)",
              "files": "file provisioner (staged tarball)", "scripts": "shell provisioner via customize.sh",
              "disk": "disk_size (grown by cloud-init growpart)"}

    def version(self):
        v = super().version()
        return v.lstrip("v") if v else v

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
        files = {"diskimages.pkr.hcl": self.template(state, work, Path("BASE/cloud-base.qcow2"),
                                                     "sha256:BASE_SHA256", "tcg"),
                 "cidata/user-data": vmbuild.cloud_config(state.recipe, None, ssh_user=BUILD_USER,
                                                          ssh_pubkey="ssh-ed25519 AAAA... (made per build)",
                                                          apply=False, poweroff=False),
                 "vm-build.sh": vmbuild.vm_script(state.recipe),
                 "installer/diskimages-installer.pkr.hcl": self.installer_template(state),
                 "installer/http/preseed.cfg": preseed(state),
                 "command": "packer build -color=false WORK   # WORK holds diskimages.pkr.hcl\n"}
        if self._plugins_block():
            files["plugins.pkr.hcl"] = PLUGINS
        return files

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
        base = state.base.path
        work = state.work / "packer"
        kvm = state.accel.kind == "kvm"
        state.workaround(f"accelerator = {'kvm' if kvm else 'tcg'}: {state.accel.reason}")
        tpl = self.write_config(state, work, base, "kvm" if kvm else "tcg")
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
                        f.write(b"--- build VM serial console ---\n" + serial.read_bytes())
        os.replace(work / "packer-output" / "disk.raw", raw)
        vmbuild.sparsify(state, raw)
        return disk.raw_disk_info(raw, state.distro)
