"""The command line as scripts use it: --version, --json tables, exit 2 for bad input."""
import json
import subprocess
import sys

from diskimages import __version__


def cli(*args):
    return subprocess.run([sys.executable, "-m", "diskimages", *args], capture_output=True, text=True, timeout=120)


def test_version():
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"diskimages {__version__}"


def test_json_tables():
    recipes = json.loads(cli("recipes", "--json").stdout)
    assert {"recipe": "debian-13-xfce", "release": "trixie"}.items() <= next(
        r for r in recipes if r["recipe"] == "debian-13-xfce").items()
    tools = {t["tool"]: t for t in json.loads(cli("tools", "--json").stdout)}
    assert tools["mmdebstrap"]["debian 13"] == "yes" and tools["oz"]["debian 13"].startswith("no: ")
    assert isinstance(json.loads(cli("vms", "--json").stdout), list)


def test_a_bad_reference_is_bad_input():
    p = cli("pull", "ghcr.io/Not A/Reference", "/tmp/nowhere")       # (a host: no embedded registry starts)
    assert p.returncode == 2 and p.stderr.startswith("error: 'ghcr.io/Not A/Reference' is not a reference")
