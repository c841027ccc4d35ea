"""The parsers that check a rendered configuration before any build: each tool's own (`mkosi summary`,
`debos --dry-run`, `packer validate`, `virt-install --dry-run`, oz's TDL parser), the formats' own
(`cloud-init schema`, pykickstart's `ksvalidator`), and, where the format's tool does not install here
(Ubuntu autoinstall's Subiquity, ubuntu-image, osbuild's image-builder), a check of the documented fields
(JSON schemas written from each format's reference).

Each check returns a `Finding`: the file, the parser that read it, whether it passed, and the parser's words."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .paths import venv_share


@dataclass(frozen=True)
class Finding:
    file: str
    parser: str
    ok: bool
    detail: str

    def as_row(self) -> dict:
        return asdict(self)


def _tail(text: str, n: int = 6) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return " | ".join(lines[-n:])[:1500]


def run(file: str, parser: str, argv: Sequence, *, cwd: Optional[Path] = None, env: Optional[dict] = None,
        timeout: float = 300) -> Finding:
    try:
        r = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Finding(file, parser, False, f"{argv[0]} is not installed (scripts/setup.sh installs it)")
    except subprocess.TimeoutExpired:
        return Finding(file, parser, False, f"{parser} did not finish in {timeout:.0f} s")
    out = (r.stdout or "") + (r.stderr or "")
    return Finding(file, parser, r.returncode == 0, _tail(out) or f"exit status {r.returncode}")


# -- cloud-init's own schema check
def cloud_init_argv() -> Optional[list[str]]:
    """`cloud-init schema` from the host, else from the Debian package scripts/setup.sh unpacked into the venv
    (installing cloud-init on a workstation would let it run at boot)."""
    if shutil.which("cloud-init"):
        return ["cloud-init"]
    unpacked = venv_share() / "cloud-init"
    if (unpacked / "usr/bin/cloud-init").is_file():
        return [sys.executable, str(unpacked / "usr/bin/cloud-init")]
    return None


def cloud_init_schema(path: Path, name: str) -> Finding:
    argv = cloud_init_argv()
    if argv is None:
        return Finding(name, "cloud-init schema", False, "cloud-init is not installed (scripts/setup.sh unpacks it)")
    unpacked = venv_share() / "cloud-init/usr/lib/python3/dist-packages"
    env = {"PYTHONPATH": str(unpacked)} if argv[0] == sys.executable else {}
    return run(name, "cloud-init schema", [*argv, "schema", "--config-file", path], env=env)


# -- pykickstart
def ksvalidator(path: Path, name: str, version: str) -> Finding:
    """pykickstart writes its preprocessed copy of the file to `mkstemp(suffix="-ks.cfg")` and never removes it,
    so each check would leave a file in /tmp: it runs with TMPDIR in a folder beside the file, removed after
    (and reaped with the check's work folder after a kill)."""
    exe = shutil.which("ksvalidator") or str(Path(sys.executable).parent / "ksvalidator")
    tmp = tempfile.mkdtemp(prefix=".ksvalidator-", dir=path.parent)
    try:
        return run(name, f"ksvalidator -v {version}", [exe, "-e", "-v", version, path], env={"TMPDIR": tmp})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kickstart_version(release_version: str) -> str:
    """pykickstart's syntax version for a Fedora release (its newest when the release is newer than it knows)."""
    try:
        from pykickstart import version as v
    except ImportError:
        return f"F{release_version}"
    name = f"F{release_version}"
    return name if name in v.versionMap else v.versionToString(v.DEVEL)


# -- documented fields, for formats whose tool does not install here
def _documented(path: Path, name: str, parser: str, fmt: str, schema: dict) -> Finding:
    """A YAML or TOML file read and checked against a schema written from its format's reference."""
    import tomllib

    import yaml
    text = path.read_text()
    try:
        doc = tomllib.loads(text) if fmt == "TOML" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        return Finding(name, parser, False, f"not {fmt}: {e}")
    return _schema_check(name, parser, doc, schema)


def _schema_check(name: str, parser: str, doc: Any, schema: dict) -> Finding:
    import jsonschema
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        return Finding(name, parser, False, "; ".join(
            f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}" for e in errors[:5]))
    return Finding(name, parser, True, "all fields are documented ones with documented values")


def installer_fields(path: Path, name: str, schema: dict) -> Finding:
    """An installer configuration (YAML) against its documented keys (`schema`, from the distribution module),
    for installers whose own validator does not install here (Ubuntu's Subiquity)."""
    return _documented(path, name, "installer reference (documented keys)", "YAML", schema)


_STRINGS = {"type": "array", "items": {"type": "string"}}
#: ubuntu-image's image definition (internal/imagedefinition/README.rst), classic images
IMAGE_DEFINITION = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "display-name", "architecture", "series", "class", "rootfs"],
    "properties": {
        "name": {"type": "string"}, "display-name": {"type": "string"}, "revision": {"type": "integer"},
        "architecture": {"enum": ["amd64", "armhf", "arm64", "s390x", "ppc64el", "riscv64"]},
        "series": {"type": "string"}, "class": {"enum": ["cloud", "installer", "preinstalled"]},
        "kernel": {"type": "string"}, "model-assertion": {"type": "string"},
        "gadget": {"type": "object", "required": ["url", "type"], "additionalProperties": False,
                   "properties": {"url": {"type": "string", "pattern": "^(https?|file)://"},
                                  "type": {"enum": ["git", "directory", "prebuilt"]}, "ref": {"type": "string"},
                                  "branch": {"type": "string"}, "target": {"type": "string"}}},
        "rootfs": {"type": "object", "additionalProperties": False,
                   "oneOf": [{"required": ["seed"]}, {"required": ["tarball"]}, {"required": ["archive-tasks"]}],
                   "properties": {
                       "components": _STRINGS, "archive": {"type": "string"}, "flavor": {"type": "string"},
                       "mirror": {"type": "string"}, "sources-list-deb822": {"type": "boolean"},
                       "pocket": {"enum": ["release", "security", "updates", "proposed",
                                           "Release", "Security", "Updates", "Proposed"]},
                       "seed": {"type": "object", "required": ["urls", "names"], "additionalProperties": False,
                                "properties": {"urls": _STRINGS, "names": _STRINGS, "vcs": {"type": "boolean"},
                                               "branch": {"type": "string"}}},
                       "tarball": {"type": "object", "required": ["url"]}, "archive-tasks": _STRINGS}},
        "customization": {"type": "object", "additionalProperties": False, "properties": {
            "components": _STRINGS, "pocket": {"type": "string"}, "installer": {"type": "object"},
            "cloud-init": {"type": "object", "additionalProperties": False,
                           "properties": {"meta-data": {"type": "string"}, "user-data": {"type": "string"},
                                          "network-config": {"type": "string"}}},
            "extra-ppas": {"type": "array"},
            "extra-packages": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                          "properties": {"name": {"type": "string"}}}},
            "extra-snaps": {"type": "array"},
            "manual": {"type": "object", "additionalProperties": False, "properties": {
                "make-dirs": {"type": "array"}, "copy-file": {"type": "array", "items": {
                    "type": "object", "required": ["source", "destination"]}},
                "touch-file": {"type": "array"}, "execute": {"type": "array", "items": {
                    "type": "object", "required": ["path"]}},
                "add-user": {"type": "array"}, "add-group": {"type": "array"}}},
            "fstab": {"type": "array"}}},
        "artifacts": {"type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
            **{k: {"type": "array", "items": {"type": "object", "required": ["name"]}}
               for k in ("img", "iso", "qcow2")},
            **{k: {"type": "object", "required": ["name"]}
               for k in ("manifest", "filelist", "changelog", "rootfs-tarball")}}},
    },
}


def image_definition(path: Path, name: str) -> Finding:
    return _documented(path, name, "ubuntu-image definition (documented keys)", "YAML", IMAGE_DEFINITION)


#: osbuild's blueprint reference (on-premises TOML)
BLUEPRINT = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"}, "distro": {"type": "string"},
        "packages": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                "properties": {"name": {"type": "string"},
                                                               "version": {"type": "string"}}}},
        "modules": {"type": "array"},
        "groups": {"type": "array", "items": {"type": "object", "required": ["name"],
                                              "properties": {"name": {"type": "string"}}}},
        "containers": {"type": "array"},
        "customizations": {"type": "object", "additionalProperties": False, "properties": {
            "hostname": {"type": "string"},
            "kernel": {"type": "object", "additionalProperties": False,
                       "properties": {"name": {"type": "string"}, "append": {"type": "string"}}},
            "user": {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                                "properties": {k: {"type": "string"} for k in (
                                                    "name", "description", "password", "key", "home", "shell")}
                                                | {"groups": _STRINGS, "uid": {"type": "integer"},
                                                   "gid": {"type": "integer"}}}},
            "group": {"type": "array"}, "sshkey": {"type": "array"},
            "timezone": {"type": "object", "additionalProperties": False,
                         "properties": {"timezone": {"type": "string"}, "ntpservers": _STRINGS}},
            "locale": {"type": "object", "additionalProperties": False,
                       "properties": {"languages": _STRINGS, "keyboard": {"type": "string"}}},
            "firewall": {"type": "object"},
            "services": {"type": "object", "additionalProperties": False,
                         "properties": {"enabled": _STRINGS, "disabled": _STRINGS, "masked": _STRINGS}},
            "filesystem": {"type": "array"}, "disk": {"type": "object"},
            "files": {"type": "array", "items": {"type": "object", "required": ["path"], "additionalProperties": False,
                                                 "properties": {k: {"type": "string"} for k in (
                                                     "path", "mode", "user", "group", "data")}}},
            "directories": {"type": "array"}, "installation_device": {"type": "string"},
            "fdo": {"type": "object"}, "openscap": {"type": "object"}, "ignition": {"type": "object"},
            "repositories": {"type": "array"}, "fips": {"type": "boolean"}, "installer": {"type": "object"},
            "rpm": {"type": "object"}, "rhsm": {"type": "object"}, "cacerts": {"type": "object"}}},
    },
}


def blueprint(path: Path, name: str) -> Finding:
    return _documented(path, name, "TOML + blueprint reference", "TOML", BLUEPRINT)


def oz_tdl(path: Path, name: str) -> Finding:
    """oz's own TDL parser (the python3-oz module oz-install uses)."""
    code = "import sys, oz.TDL; t = oz.TDL.TDL(open(sys.argv[1]).read()); print(t.distro, t.update, t.arch)"
    return run(name, "oz.TDL (oz's parser)", ["/usr/bin/python3", "-c", code, path])


def stand_in_checksum(where: Path, iso_url: str) -> str:
    """A local checksum file listing the ISO's name, so `packer validate` reads a checksum file (and checks the
    ISO is named in it) without fetching the one published beside the ISO."""
    where.mkdir(parents=True, exist_ok=True)
    sums = where / "SHA256SUMS.stand-in"
    sums.write_text(f"{'0' * 64}  {iso_url.rstrip('/').rsplit('/', 1)[-1]}\n")
    return f"file:{sums}"
