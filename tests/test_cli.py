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


def test_an_installed_wheel_finds_its_recipes_and_notebooks(tmp_path):
    """Installed from a wheel (not a checkout), the recipes and notebooks come from share/diskimages/. The wheel
    goes into a venv of its own (installing it here would replace this checkout's editable install); the
    dependencies come from this environment's site-packages on PYTHONPATH."""
    import os
    import sysconfig
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheel"),
                    str(repo)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("diskimages-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    env.pop("DISKIMAGES_RECIPES", None)
    code = ("import diskimages, json; from diskimages.paths import recipes_dir, notebooks_dir; "
            "print(json.dumps([diskimages.__file__, str(recipes_dir()), str(notebooks_dir())]))")
    out = subprocess.run([str(venv / "bin/python"), "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True)
    module, recipes, notebooks = json.loads(out.stdout)
    assert module.startswith(str(venv)) and recipes == str(venv / "share/diskimages/recipes")
    assert (Path(recipes) / "debian-13-xfce.yaml").is_file() and (Path(notebooks) / "build.ipynb").is_file()
    p = subprocess.run([str(venv / "bin/python"), "-m", "diskimages", "validate", "debian-13-xfce"], env=env,
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "valid (debian trixie" in p.stdout, p.stderr
