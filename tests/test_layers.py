"""Distributions and tools are layers: no distribution knowledge outside distros/, no import runs upward, and a
distribution and a tool defined outside lib/ (tests/plugins/fakeos.py) go through validate, render, matrix,
the support table and the build orchestration without any change to lib/."""
import ast
import importlib
import os
import re
import sys
import time
from pathlib import Path

import pytest

from diskimages import compare, distros
from diskimages.build import build, render
from diskimages.cli import main as cli_main
from diskimages.distros import Distribution
from diskimages.recipe import RecipeError
from diskimages.tools import Tool, ToolUnavailable, load_checked, support_table

TESTS = Path(__file__).parent
LIB = TESTS.parent / "lib" / "diskimages"
FAKE_RECIPE = TESTS / "recipes" / "fakeos-tiny.yaml"

# what only a distribution module may know (`.deb` as a word: `.debugfs` is not a package file)
FORBIDDEN = [r"apt-get", r"\bdpkg", r"debconf", r"update-initramfs", r"locale-gen", r"/etc/default/keyboard",
             r"debian12", r"\.deb\b"]


def test_no_distribution_knowledge_outside_distros():
    offenders = []
    for p in sorted(LIB.rglob("*.py")):
        if p.relative_to(LIB).parts[0] == "distros":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            offenders += [f"{p.relative_to(LIB)}:{i}: {pat}: {line.strip()}" for pat in FORBIDDEN
                          if re.search(pat, line)]
    assert not offenders, "\n".join(offenders)


def _imports(path: Path) -> set[str]:
    """The diskimages modules a file imports (anywhere in it, function bodies included), as top-level names
    such as "build" or "tools"."""
    rel = path.relative_to(LIB).with_suffix("").parts
    package = list(rel[:-1])            # the package the file is in (for __init__.py: that package)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
                found |= {parts[0]} if parts else {a.name for a in node.names}
            elif node.module and node.module.startswith("diskimages."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("diskimages.")}
    return found


# layer -> the modules no file of that layer may import
ABOVE_TOOLS = {"build", "boot", "vm", "libvirt_host", "qemu", "probe", "inspect", "publish", "registry",
               "localregistry", "compare", "docs", "explore", "cli", "preflight"}
RULES = {
    "recipe.py": {"distros", "tools", "customize", "disk", "vmbuild"} | ABOVE_TOOLS,
    "distros": {"tools", "customize", "disk", "vmbuild", "chroot"} | ABOVE_TOOLS,
    "customize.py": {"tools"} | ABOVE_TOOLS,
    "disk.py": {"tools"} | ABOVE_TOOLS,
    "vmbuild.py": {"tools"} | ABOVE_TOOLS,
    "checkers.py": {"distros", "tools", "customize", "disk", "vmbuild"} | ABOVE_TOOLS,
    "manifest.py": {"tools", "customize", "vmbuild"} | ABOVE_TOOLS,
    "preflight.py": {"compare", "docs", "explore", "cli"},
    "tools": ABOVE_TOOLS,
    "build.py": {"compare", "docs", "explore", "cli"},
}


def test_no_import_runs_upward():
    bad = []
    for p in sorted(LIB.rglob("*.py")):
        key = p.relative_to(LIB).parts[0]
        forbidden = RULES.get(key, set())
        for mod in sorted(_imports(p) & forbidden):
            bad.append(f"{p.relative_to(LIB)} imports {mod}")
    assert not bad, "\n".join(bad)
    assert {"tools", "vm", "qemu"} <= _imports(LIB / "build.py")   # the checker sees imports, in functions too


def test_release_by_codename_or_version_and_default():
    d = distros.get("debian")
    assert d.release("13") == d.release("trixie") == d.default()
    assert d.release("bookworm").version == "12"
    r = load_checked(TESTS / "recipes" / "debian-13-small.yaml")
    assert r.release == "trixie"


def test_tools_command_shows_support_per_distribution_and_release(capsys):
    assert cli_main(["tools"]) == 0
    out = capsys.readouterr().out
    assert "debian 12" in out and "debian 13" in out
    assert re.search(r"oz:\n  arch rolling +no: .*\n  debian 12 +no: ", out)
    assert re.search(r"mmdebstrap:\n  arch rolling +no: .*\n  debian 12 +yes\n  debian 13 +yes\n  fedora 44 +no: .*\n"
                     r"  fedora 45 +no: .*\n  ubuntu 24.04 +yes\n  ubuntu 26.04 +yes", out)
    assert re.search(r"ubuntu-image:\n(  .*\n)*  ubuntu 24.04 +yes", out)


@pytest.mark.skipif(os.geteuid() != 0, reason="build() needs root")
def test_unreachable_mirror_is_refused_before_any_work(tmp_path, capsys):
    t0 = time.monotonic()
    code = cli_main(["build", "debian-13-minimal", "-o", str(tmp_path / "out"), "-q",
                     "--mirror", "http://127.0.0.1:9/debian"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "debian-13-minimal.yaml: release: Debian trixie cannot be built from this host: its mirror" in err
    assert "127.0.0.1:9" in err and "allowed:" in err
    assert time.monotonic() - t0 < 15
    assert not list((tmp_path / "out").iterdir())          # no log, no work folder, no image


@pytest.fixture
def fake():
    """Import the fake distribution and tool the way a user's own module would be imported."""
    sys.path.insert(0, str(TESTS / "plugins"))
    try:
        yield importlib.import_module("fakeos")
    finally:
        sys.path.remove(str(TESTS / "plugins"))
        sys.modules.pop("fakeos", None)
        Distribution._registry.pop("fakeos", None)
        Tool._registry.pop("fakedisk", None)


def test_a_distribution_and_a_tool_from_outside_lib(fake, capsys):
    assert cli_main(["validate", str(FAKE_RECIPE)]) == 0
    assert "valid (fakeos one, desktop none" in capsys.readouterr().out
    assert render(FAKE_RECIPE, "fakedisk")["fakedisk.conf"] == "release=one\npackages=fake-base\n"
    with pytest.raises(ToolUnavailable, match="mmdebstrap installs apt distributions; FakeOS uses fakepkg"):
        render(FAKE_RECIPE, "mmdebstrap")
    with pytest.raises(ToolUnavailable, match="fakedisk installs fakepkg distributions; Debian uses apt"):
        render("debian-13-minimal", "fakedisk")
    jobs = compare.matrix([str(FAKE_RECIPE), "debian-13-minimal"])["include"]
    assert {"recipe": "fakeos-tiny", "tool": "fakedisk"} in jobs
    assert not [j for j in jobs if (j["recipe"] == "fakeos-tiny") != (j["tool"] == "fakedisk")]
    row = support_table().set_index("tool").loc["fakedisk"]
    assert row["fakeos 1"] == "yes" and row["debian 13"].startswith("no: ")
    bad = FAKE_RECIPE.parent / "fakeos-bad.yaml"
    try:
        bad.write_text(FAKE_RECIPE.read_text().replace("release: 1", "release: 3"))
        with pytest.raises(RecipeError, match=r"fakeos-bad.yaml: release: '3' is not a FakeOS release "
                                              r"\(allowed: one \(1\), two \(2\)\)"):
            load_checked(bad)
    finally:
        bad.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="build() needs root")
def test_the_fake_tool_goes_through_the_build_orchestration(fake, tmp_path):
    from diskimages import measure
    res = build(FAKE_RECIPE, "fakedisk", tmp_path, progress=False)
    rec = res.record
    assert res.image.name == "fakeos-tiny.fakedisk.qcow2"
    assert (rec["distro"], rec["release"], rec["release_version"], rec["tool"]) == ("fakeos", "one", "1", "fakedisk")
    assert set(rec["phases"]) == {"build", "compress"} and rec["kernel"] == "0-fake"
    assert measure.qemu_img_info(res.image)["virtual-size"] == 1 << 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakeos-tiny.fakedisk.json", "fakeos-tiny.fakedisk.log",
                                                          "fakeos-tiny.fakedisk.qcow2"]


@pytest.mark.parametrize("recipe,tool", [("debian-13-xfce", t) for t in ("mmdebstrap", "mkosi", "debos",
                                                                           "virt-install", "packer", "virt-builder")]
                         + [("ubuntu-24.04-xubuntu", "ubuntu-image"), ("ubuntu-24.04-xubuntu", "virt-install"),
                            ("fedora-45-xfce", "image-builder"), ("fedora-45-xfce", "packer"),
                            ("arch-xfce", "arch-boxes")])
def test_render_writes_every_file_of_every_tool(recipe, tool, tmp_path, capsys):
    assert cli_main(["render", recipe, "--tool", tool, "-o", str(tmp_path)]) == 0
    written = capsys.readouterr().out.split()
    files = render(recipe, tool)
    assert len(written) == len(files) and all(Path(w).is_file() and Path(w).stat().st_size for w in written)


@pytest.mark.skipif(os.geteuid() != 0, reason="build() needs root")
def test_plugins_by_environment_and_one_progress_line_per_phase(tmp_path):
    """A user's own module (DISKIMAGES_PLUGINS) reaches the command line; on a non-terminal the progress is one
    plain line per phase (CI logs), not a redrawn bar."""
    import subprocess
    env = {**os.environ, "DISKIMAGES_PLUGINS": "fakeos",
           "PYTHONPATH": f"{TESTS / 'plugins'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, "-m", "diskimages", "build", str(FAKE_RECIPE), "--tool", "fakedisk",
                        "-o", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("fakeos-tiny / fakedisk: ")]
    assert [line.split(" (")[0] for line in lines[:2]] == ["fakeos-tiny / fakedisk: phase 1/2 build",
                                                           "fakeos-tiny / fakedisk: phase 2/2 compress"]
    assert lines[-1].startswith("fakeos-tiny / fakedisk: 2/2 phases done in ")


def test_every_exception_of_the_project_has_one_base_class():
    """What diskimages raises on purpose derives from DiskImagesError (the CLI's exit code comes from it), and
    lib/ raises no bare ValueError or RuntimeError. Interrupted is the exception: like KeyboardInterrupt it must
    pass through `except Exception`."""
    from diskimages.errors import DiskImagesError
    from diskimages.runner import Interrupted
    found, bare = [], []
    for p in sorted(LIB.rglob("*.py")):
        mod = "diskimages." + ".".join(p.relative_to(LIB).with_suffix("").parts).replace(".__init__", "")
        if mod.endswith("__main__"):
            continue
        module = importlib.import_module(mod)
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                cls = getattr(module, node.name, None)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                    getattr(node.exc.func, "id", "") in ("ValueError", "RuntimeError", "Exception"):
                bare.append(f"{p.relative_to(LIB)}:{node.lineno}")
    assert len(found) >= 10
    assert [c.__name__ for c in found if not issubclass(c, DiskImagesError)] == [Interrupted.__name__]
    assert not bare, bare
