"""Ubuntu, Fedora and Arch through the distribution layer: every (recipe x tool) pair that claims support has
its rendered configuration accepted by the tool's own parser and the formats' checkers (`diskimages check`),
a configuration broken on purpose is refused by each kind of checker, bad input is one line naming the file
and field, the CI matrix lists the new pairs and no impossible one, and where Ubuntu's archive answers an
Ubuntu image is built for real and boots."""
import json
import os
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from diskimages import checkers, distros
from diskimages.cli import main as cli_main
from diskimages.compare import matrix
from diskimages.tools import get_tool, load_checked

TESTS = Path(__file__).parent
NEW = ["ubuntu-24.04-xubuntu", "fedora-45-xfce", "arch-xfce"]
# the pairs that claim support (the list); everything else must say why not
CLAIMED = {
    "ubuntu-24.04-xubuntu": {"mmdebstrap", "mkosi", "debos", "virt-install", "packer", "virt-builder", "ubuntu-image"},
    "fedora-45-xfce": {"mkosi", "virt-install", "packer", "virt-builder", "image-builder"},
    "arch-xfce": {"mkosi", "arch-boxes"},
}


def _check_json(capsys, *args):
    code = cli_main(["check", *args, "--json", "--no-probe"])
    rows = json.loads(capsys.readouterr().out)
    return code, rows


def test_check_passes_for_every_pair_that_claims_support(capsys):
    code, rows = _check_json(capsys, *NEW)
    status = {(r["recipe"], r["tool"]): r["status"] for r in rows}
    for recipe, tools in CLAIMED.items():
        for tool in tools:
            t = get_tool(tool)
            want = "passed" if not (t.check_needs_program and t.unavailable_reason()) else "not checked"
            assert status[(recipe, tool)] == want, (recipe, tool, [r for r in rows if r["tool"] == tool])
        for tool in set(t for _, t in status) - tools - {"oz"}:
            assert status[(recipe, tool)] == "not supported", (recipe, tool)
        # oz refuses these releases itself, and its TDL parser still reads the template
        assert status[(recipe, "oz")].startswith("passed (the tool refuses the pair: oz")
    assert code == 0
    parsers = {(r["tool"], r["parser"]) for r in rows if r["detail"].startswith("ok:")}
    for want in [("mkosi", "mkosi summary"), ("debos", "debos --dry-run"), ("packer", "packer validate"),
                 ("virt-install", "virt-install --dry-run"), ("virt-install", "cloud-init schema"),
                 ("packer", "ksvalidator -v F45"), ("virt-install", "installer reference (documented keys)"),
                 ("image-builder", "TOML + blueprint reference"),
                 ("ubuntu-image", "ubuntu-image definition (documented keys)"), ("arch-boxes", "bash -n"),
                 ("virt-builder", "virt-builder (options, index)"), ("oz", "oz.TDL (oz's parser)")]:
        if get_tool(want[0]).check_needs_program and get_tool(want[0]).unavailable_reason():
            continue
        assert want in parsers, want


# -- each kind of checker refuses a configuration broken on purpose
BROKEN_FILES = [
    ("cloud-init", "#cloud-config\npower_state: {mode: explode}\n",
     lambda p: checkers.cloud_init_schema(p, "user-data"), "power_state.mode"),
    ("kickstart", "text\nurl --url=http://127.0.0.1/tree\nbootloader --nosuchoption\n",
     lambda p: checkers.ksvalidator(p, "ks.cfg", "F45"), "nosuchoption"),
    ("autoinstall", "#cloud-config\nautoinstall:\n  version: 1\n  storage: {layout: {name: raid99}}\n",
     lambda p: checkers.installer_fields(p, "user-data", distros.get("ubuntu").installer_schema), "raid99"),
    ("image-definition", "name: x\ndisplay-name: x\narchitecture: amd64\nseries: noble\nclass: live-cd\n"
                         "rootfs: {seed: {urls: [a], names: [b]}}\n",
     lambda p: checkers.image_definition(p, "image-definition.yaml"), "live-cd"),
    ("blueprint", 'name = "x"\nversion = "0.0.1"\n[customizations]\nhostnam = "typo"\n',
     lambda p: checkers.blueprint(p, "blueprint.toml"), "hostnam"),
    ("oz-tdl", "<template><name>x</name></template>",
     lambda p: checkers.oz_tdl(p, "oz.tdl"), ""),
]


@pytest.mark.parametrize("kind,text,run,words", BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_each_format_checker_refuses_a_broken_file(kind, text, run, words, tmp_path):
    if kind == "cloud-init" and checkers.cloud_init_argv() is None:
        pytest.skip("cloud-init is not unpacked (scripts/setup.sh)")
    f = tmp_path / "file"
    f.write_text(text)
    found = run(f)
    assert not found.ok and words in found.detail, found


def test_ksvalidator_leaves_no_file_in_tmp(tmp_path, monkeypatch):
    """pykickstart leaves its preprocessed copy in TMPDIR on every run; the checker must not."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / "ks.cfg").write_text("text\nurl --url=http://127.0.0.1/tree\nrootpw --lock\n")
    found = checkers.ksvalidator(checked / "ks.cfg", "ks.cfg", "F45")
    assert found.ok, found
    assert list(tmp.iterdir()) == [] and [p.name for p in checked.iterdir()] == ["ks.cfg"]


def _break(monkeypatch, tool, recipe):
    """Make the tool render a configuration its own parser must refuse."""
    t = type(get_tool(tool))
    if tool == "mkosi":
        orig = t.conf
        monkeypatch.setattr(t, "conf", lambda self, st: orig(self, st).replace("Format=directory",
                                                                                "Format=no-such-format"))
    elif tool == "debos":
        orig = t.recipe_yaml
        monkeypatch.setattr(t, "recipe_yaml", lambda self, st, **kw: orig(self, st, **kw).replace(
            "action: image-partition", "action: no-such-action"))
    elif tool == "packer":
        orig = t.installer_source
        monkeypatch.setattr(t, "installer_source", lambda self, *a: orig(self, *a).replace(
            "communicator = ", "no_such_attribute = 1\n  communicator = "))
    elif tool == "virt-install":
        orig = t.installer_argv
        monkeypatch.setattr(t, "installer_argv", lambda self, *a, **kw: [*orig(self, *a, **kw), "--no-such-option"])
    elif tool == "virt-builder":
        orig = t.argv
        monkeypatch.setattr(t, "argv", lambda self, *a: [*orig(self, *a), "--no-such-option"])
    elif tool == "arch-boxes":
        orig = t.install_script
        monkeypatch.setattr(t, "install_script", lambda self, st: orig(self, st) + "\nif then fi\n")
    elif tool == "image-builder":
        orig = t.blueprint
        monkeypatch.setattr(t, "blueprint", lambda self, st: orig(self, st) + "\n[customizations.nosuch]\n")
    elif tool == "ubuntu-image":
        orig = t.definition
        monkeypatch.setattr(t, "definition", lambda self, st: {**orig(self, st), "class": "live-cd"})


BROKEN_TOOLS = [("mkosi", "fedora-45-xfce"), ("debos", "ubuntu-24.04-xubuntu"), ("packer", "fedora-45-xfce"),
                ("virt-install", "ubuntu-24.04-xubuntu"), ("virt-builder", "fedora-45-xfce"),
                ("arch-boxes", "arch-xfce"), ("image-builder", "fedora-45-xfce"),
                ("ubuntu-image", "ubuntu-24.04-xubuntu")]


@pytest.mark.parametrize("tool,recipe", BROKEN_TOOLS, ids=[b[0] for b in BROKEN_TOOLS])
def test_each_tool_parser_refuses_a_broken_configuration(tool, recipe, monkeypatch, capsys):
    t = get_tool(tool)
    if t.check_needs_program and t.unavailable_reason():
        pytest.skip(t.unavailable_reason())
    _break(monkeypatch, tool, recipe)
    code = cli_main(["check", recipe, "--tool", tool, "--no-probe"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"{recipe} x {tool}: refused" in out and "REFUSED" in out, out


# -- bad input: one line naming the file, the field and what is allowed, before any work
def _recipe(tmp_path, **fields):
    base = yaml.safe_load((TESTS.parent / "recipes" / "fedora-45-xfce.yaml").read_text())
    base.pop("files", None)
    base.update(fields)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base))
    return p


def _one_line_error(capsys, argv):
    t0 = time.monotonic()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and time.monotonic() - t0 < 10, err
    return err


def test_each_distribution_applies_its_own_package_rule(tmp_path, capsys):
    ok = _recipe(tmp_path, packages=["NetworkManager", "@development-tools", "firefox"])
    assert cli_main(["validate", str(ok)]) == 0
    bad = _recipe(tmp_path, distro="debian", release="trixie", desktop="xfce", packages=["NetworkManager"])
    err = _one_line_error(capsys, ["validate", str(bad)])
    assert err.startswith(f"error: {bad}: packages: 'NetworkManager' is not a Debian package name (allowed: ")
    arch = _recipe(tmp_path, distro="arch", release="rolling", packages=["Xorg_Server"])
    err = _one_line_error(capsys, ["validate", str(arch)])
    assert f"{arch}: packages: 'Xorg_Server' is not a Arch Linux package name" in err


def test_unknown_desktop_and_release_name_what_the_distribution_has(tmp_path, capsys):
    p = _recipe(tmp_path, distro="ubuntu", release="noble", desktop="kde")
    err = _one_line_error(capsys, ["validate", str(p)])
    assert f"{p}: desktop: 'kde' is not a Ubuntu desktop (allowed: none, xubuntu, xfce, gnome)" in err
    p = _recipe(tmp_path, release="39")
    err = _one_line_error(capsys, ["validate", str(p)])
    assert f"{p}: release: '39' is not a Fedora release (allowed: 44, 45)" in err


def test_a_tool_that_does_not_support_the_distribution_is_refused_with_the_tools_that_do(tmp_path, capsys):
    for argv in (["render", "fedora-45-xfce", "--tool", "debos"],
                 ["build", "fedora-45-xfce", "--tool", "debos", "-o", str(tmp_path / "out")]):
        err = _one_line_error(capsys, argv)
        assert "recipes/fedora-45-xfce.yaml: distro: Fedora 45 is not built by debos: debos installs apt " \
               "distributions; Fedora uses dnf (allowed tools: image-builder, mkosi, packer, virt-builder, " \
               "virt-install)" in err, err
    assert not (tmp_path / "out").exists()         # refused before any work


def test_an_unreachable_archive_is_said_in_seconds_before_any_work(monkeypatch):
    fedora = type(distros.get("fedora"))
    monkeypatch.setattr(fedora, "default_archive", lambda self, rel: "http://127.0.0.1:9/")
    distros._probed.clear()
    t0 = time.monotonic()
    why = get_tool("mkosi").cannot_build(load_checked("fedora-45-xfce"))
    assert time.monotonic() - t0 < 10
    if get_tool("mkosi").unavailable_reason():
        assert why == get_tool("mkosi").unavailable_reason()
    else:
        assert why.startswith("checked, not built here: the Fedora mirror is unreachable (http://127.0.0.1:9/"), why
    distros._probed.clear()


def test_matrix_lists_the_new_pairs_and_no_impossible_one():
    m = {(j["recipe"], j["tool"]) for j in matrix()["include"]}
    for recipe, tools in CLAIMED.items():
        r = load_checked(recipe)
        for tool in tools:
            t = get_tool(tool)
            possible = t.installable_reason() is None and t.host_lacks(r) is None
            assert ((recipe, tool) in m) == possible, (recipe, tool, t.installable_reason(), t.host_lacks(r))
        for recipe2, tool in m:
            if recipe2 == recipe:
                assert tool in tools and get_tool(tool).cannot_build(r, installed=False) is None
    assert not [p for p in m if p[1] == "oz"]
    assert ("ubuntu-24.04-xubuntu", "mmdebstrap") in m


def test_a_mirror_for_one_distribution_makes_its_installer_known(monkeypatch):
    """Where the host's osinfo database predates the release, a Fedora mirror (DISKIMAGES_MIRROR_FEDORA) gives the
    kickstart its install tree; Debian's DISKIMAGES_MIRROR is never taken for another distribution."""
    monkeypatch.delenv("DISKIMAGES_MIRROR_FEDORA", raising=False)
    monkeypatch.setenv("DISKIMAGES_MIRROR", "http://127.0.0.1:9/debian")
    r = load_checked("fedora-45-xfce")
    vi = get_tool("virt-install")
    f = distros.get("fedora")
    if f.install_tree(f.choose_mirror(), f.default(), "amd64") is None:
        assert "osinfo database does not know Fedora 45's installer" in vi.host_lacks(r)
    monkeypatch.setenv("DISKIMAGES_MIRROR_FEDORA", "http://127.0.0.1:9/fedora/linux")
    assert vi.host_lacks(r) is None
    assert f.install_tree(f.choose_mirror(), f.default(), "amd64") == \
        "http://127.0.0.1:9/fedora/linux/releases/45/Everything/x86_64/os"
    u = distros.get("ubuntu")
    assert u.choose_mirror().uri != "http://127.0.0.1:9/debian"


def test_distribution_modules_are_found_and_own_their_installers():
    assert {"debian", "ubuntu", "fedora", "arch"} <= set(distros.names())
    u, f = distros.get("ubuntu"), distros.get("fedora")
    assert u.installer == "autoinstall" and f.installer == "kickstart" and distros.get("arch").installer is None
    r = load_checked("ubuntu-24.04-xubuntu")
    files = u.installer_files(r, u.default(), u.choose_mirror(), run="true", tarball=b"x")
    doc = yaml.safe_load(files["user-data"])
    assert doc["autoinstall"]["identity"]["username"] == "user" and doc["autoinstall"]["shutdown"] == "poweroff"
    assert "xubuntu-desktop-minimal" in doc["autoinstall"]["packages"]
    ks = f.installer_files(load_checked("fedora-45-xfce"), f.default(), f.choose_mirror(), run="true")["ks.cfg"]
    assert "@xfce-desktop" in ks and "lightdm" in ks and "--iscrypted" in ks and "poweroff" in ks


# -- a real Ubuntu build, where Ubuntu's archive answers (it does on the project's machines)
def _ubuntu_reachable() -> bool:
    u = distros.get("ubuntu")
    url = u.probe_url(u.choose_mirror(), u.default())
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.build
@pytest.mark.boot
@pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")
def test_ubuntu_small_builds_with_mmdebstrap_and_boots(tmp_path):
    if not _ubuntu_reachable():
        pytest.skip("Ubuntu's archive does not answer from this host: the CI matrix builds Ubuntu")
    from diskimages.boot import boot_check
    from diskimages.build import build
    from diskimages.inspect import ImageReader
    res = build(TESTS / "recipes" / "ubuntu-24.04-small.yaml", "mmdebstrap", tmp_path, progress=False)
    rec = res.record
    assert rec["distro"] == "ubuntu" and rec["packages"] > 100
    with ImageReader(res.image) as r:
        osr = r.read("/usr/lib/os-release")      # /etc/os-release links to it
        assert 'ID=ubuntu' in osr and 'VERSION_ID="24.04"' in osr
        assert r.read("/etc/hostname").strip() == "ubuntu-small"
        assert r.exists("/etc/diskimages-overlay.txt")
        assert "noble-security" in r.read("/etc/apt/sources.list") + "".join(
            r.read(f"/etc/apt/sources.list.d/{f}") for f in r.listdir("/etc/apt/sources.list.d"))
    result = boot_check(res.image, rec, screenshot_dir=tmp_path)
    assert result.passed, result.reason


def test_content_key_follows_the_recipe_and_the_resolved_packages(tmp_path):
    """The key is the same for the same inputs, changes with a recipe field (the hostname), and carries the
    exact package set apt would install from the mirror's current index (resolved in seconds, no build)."""
    from diskimages.build import content_key
    recipe = load_checked("debian-13-minimal")
    t0 = time.monotonic()
    k1, info = content_key(recipe, get_tool("mmdebstrap"))
    if k1 is None:
        pytest.skip(f"the mirror cannot be read here: {info}")
    assert time.monotonic() - t0 < 60 and info["resolved_packages"] > 100
    t0 = time.monotonic()
    assert content_key(recipe, get_tool("mmdebstrap"))[0] == k1
    assert time.monotonic() - t0 < 3                      # the resolution is kept per index and request
    other = recipe.model_copy(update={"hostname": "another-name"})
    assert content_key(other, get_tool("mmdebstrap"))[0] != k1
    assert content_key(recipe, get_tool("debos"))[0] not in (k1, None)
    fedora = content_key(load_checked("fedora-45-xfce"), get_tool("mkosi"))
    assert fedora[0] is None and "not implemented" in fedora[1]["content_key_missing"]


def test_an_xfce_image_gets_the_polkit_agent_its_release_starts_in_xfce():
    """trixie's Xfce gets mate-polkit (xfce4's own recommendation): without it apt met network-manager-gnome's
    `polkit-1-auth-agent` with ukui-polkit, which never starts in Xfce and brought 96 packages of Qt 5, OpenCV
    and GDAL but no polkitd. bookworm's comes with network-manager-gnome; other desktops bring their own."""
    debian = distros.get("debian")

    def packages(name):
        return debian.packages_for(load_checked(name))
    assert "mate-polkit" in packages("debian-13-xfce")
    assert "mate-polkit" not in packages("debian-12-xfce") and "mate-polkit" not in packages("debian-13-minimal")
    ubuntu = load_checked("ubuntu-24.04-xubuntu")
    assert "mate-polkit" not in distros.get(ubuntu.distro).packages_for(ubuntu)


def test_bookworm_names_usr_is_merged_so_no_tool_brings_usrmerge_and_perl():
    """bookworm's init-system-helpers depends on "usrmerge | usr-is-merged": unnamed, apt takes usrmerge, whose
    perl (46 MB) only mmdebstrap's images carried. Named, apt resolves the set without them (asked of the
    mirror), and mmdebstrap lays /usr out merged with its own hook. trixie and Ubuntu have no such dependency."""
    from diskimages.build import new_state
    debian = distros.get("debian")
    d12 = load_checked("debian-12-xfce")
    pkgs = debian.packages_for(d12)
    assert "usr-is-merged" in pkgs
    for name in ("debian-13-xfce", "ubuntu-24.04-xubuntu"):
        r = load_checked(name)
        assert "usr-is-merged" not in distros.get(r.distro).packages_for(r)
    rendered = {n: get_tool("mmdebstrap").render(new_state(load_checked(n), Path("W"), Path("L")))["mmdebstrap.sh"]
                for n in ("debian-12-xfce", "debian-13-xfce")}
    assert "--hook-dir=" in rendered["debian-12-xfce"] and "/mmdebstrap/hooks/merged-usr" in rendered["debian-12-xfce"]
    assert "--hook-dir=" not in rendered["debian-13-xfce"]
    state = new_state(d12, Path("W"), Path("L"))
    try:
        named = {p.split("=")[0] for p in debian.resolve(pkgs, state.release, "amd64", state.mirror)}
    except RuntimeError as e:
        pytest.skip(f"the mirror cannot be read here: {e}")
    unnamed = {p.split("=")[0] for p in debian.resolve([p for p in pkgs if p != "usr-is-merged"], state.release,
                                                       "amd64", state.mirror)}
    assert {"usrmerge", "perl", "perl-modules-5.36"} <= unnamed
    assert "usr-is-merged" in named and not {"usrmerge", "perl", "perl-modules-5.36"} & named
