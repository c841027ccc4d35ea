"""Every build tool behind the one interface: each renders every shipped recipe into a configuration its own
parser accepts, and each that runs here builds the small test recipe into an image that boots and carries the
recipe's customisations. Adding a tool means adding its name to BUILDERS below (and its module)."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from diskimages import customize, distros
from diskimages.build import build, render
from diskimages.boot import boot_check
from diskimages.inspect import ImageReader
from diskimages.recipe import list_recipe_names
from diskimages.tools import ToolUnavailable, get_tool, load_checked, new_state

SMALL = Path(__file__).parent / "recipes" / "debian-13-small.yaml"
SMALL_UBUNTU = Path(__file__).parent / "recipes" / "ubuntu-24.04-small.yaml"
BUILDERS = ["mkosi", "debos", "virt-install", "packer", "virt-builder"]
# oz renders every recipe for reference (oz 0.17 builds none of these releases); the others build elsewhere
RENDERERS = BUILDERS + ["oz", "mmdebstrap", "ubuntu-image", "image-builder", "arch-boxes"]
PASSWORD = "s3cret-tester-pw"


def _need(tool):
    t = get_tool(tool)
    if t.version() is None:
        pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    return t


_CTX_RECIPE = {}


def _ctx():
    """A build context for the recipe being rendered (set by the rendering test)."""
    from diskimages.tools import new_state
    return new_state(_CTX_RECIPE["recipe"], Path("WORK"), Path("LOG"))


@pytest.fixture(scope="module")
def libvirtd():
    """virt-install's --dry-run asks libvirtd: started once for these tests, stopped after when it was started."""
    from diskimages import libvirt_host
    use = libvirt_host.using()
    conn, how = libvirt_host.connect()
    yield
    libvirt_host.release(use)
    if how.startswith("started") and not libvirt_host.others_use_it():
        libvirt_host.stop_started(conn)


@pytest.mark.parametrize("tool", RENDERERS)
@pytest.mark.parametrize("recipe", list_recipe_names() + [str(SMALL), str(SMALL_UBUNTU)])
def test_renders_every_recipe_into_a_config_the_tool_accepts(tool, recipe, tmp_path, monkeypatch, request):
    """Each tool's own parser (and the formats' checkers) accepts what it is given for every recipe of a
    distribution it supports; the pairs it does not support are refused by render with the reason."""
    monkeypatch.setenv("DISKIMAGES_TEST_PASSWORD", PASSWORD)
    r = load_checked(recipe)
    t = get_tool(tool)
    d, rel = distros.for_recipe(r)
    if t.supports(d, rel, r.architecture) and tool != "oz":
        with pytest.raises(ToolUnavailable, match=r"distro: .* is not built by " + tool):
            render(r, tool)
        return
    if t.check_needs_program:
        _need(tool)
    if tool == "virt-install":
        request.getfixturevalue("libvirtd")
    _CTX_RECIPE["recipe"] = r
    # oz cannot build these releases, so `render` refuses it; its TDL is still rendered and parsed
    files = t.render(_ctx()) if tool == "oz" else render(r, tool)
    found = t.check(new_state(r, tmp_path, tmp_path / "log"), tmp_path / "cfg")
    assert found and all(f.ok for f in found), [f for f in found if not f.ok]
    conf = "\n".join(files.values())
    assert PASSWORD not in conf                       # secrets are never rendered
    for pkg in r.packages:
        assert pkg in conf
    if tool == "mkosi":
        assert f"Hostname={r.hostname}" in files["mkosi.conf"] and "step users" in files["mkosi.postinst"]
    if tool == "debos":
        assert "image-partition" in files["debos.yaml"] and f"{r.disk.size_bytes >> 20}MiB" in files["debos.yaml"]
    if tool in ("virt-install", "packer", "virt-builder"):
        assert "customize.sh" in files["vm-build.sh"]


@pytest.mark.parametrize("tool", BUILDERS)
def test_coverage_says_how_each_field_is_carried_out(tool):
    t = get_tool(tool)
    cov = t.coverage(load_checked(SMALL))
    assert set(cov["how"]) <= {"native", "script", "diskimages", "unsupported"}
    row = cov.set_index("field").loc["packages"]
    assert row["how"] == "native" and bool(row["set in recipe"])
    assert cov.set_index("field").loc["users", "how"] == "script"


def test_a_field_a_tool_cannot_express_is_refused_with_its_name(monkeypatch):
    from diskimages.build import prepare
    from diskimages.tools import ToolUnavailable
    t = get_tool("mkosi")
    monkeypatch.setattr(type(t), "unsupported", {"kernel_cmdline": "no boot loader settings in this test"})
    with pytest.raises(ToolUnavailable) as e:
        prepare(SMALL, "mkosi")
    assert "debian-13-small.yaml: kernel_cmdline: mkosi cannot do this" in str(e.value)


def test_oz_refuses_debian_12_and_13_clearly():
    _need("oz")
    from diskimages.build import prepare
    from diskimages.tools import ToolUnavailable
    for recipe, version in (("debian-12-xfce", "12"), ("debian-13-xfce", "13")):
        with pytest.raises(ToolUnavailable) as e:
            prepare(recipe, "oz")
        assert f"does not support Debian {version}" in str(e.value)
        assert f"Unsupported Debian update {version}" in str(e.value)


def _mounts():
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture(scope="module", params=BUILDERS)
def small_build(request, tmp_path_factory):
    tool = request.param
    _need(tool)
    nspawn_before = Path("/run/systemd/nspawn").exists()
    loops_before = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts_before = _mounts()
    os.environ["DISKIMAGES_TEST_PASSWORD"] = PASSWORD
    try:
        out = tmp_path_factory.mktemp(f"small-{tool}")
        res = build(SMALL, tool, out, progress=False)
    finally:
        del os.environ["DISKIMAGES_TEST_PASSWORD"]
    # nothing of the build's host workarounds is left behind
    assert Path("/run/systemd/nspawn").exists() == nspawn_before
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout == loops_before
    assert _mounts() == mounts_before
    return res


@pytest.mark.build
def test_small_build_follows_the_recipe(small_build):
    rec = small_build.record
    assert rec["tool"] in BUILDERS and rec["tool_version"]
    assert rec["packages"] > 100 and rec["rootfs_bytes"] > 200 << 20 and rec["kernel"].endswith("amd64")
    assert rec["file_bytes"] == small_build.image.stat().st_size
    assert json.loads(small_build.record_path.read_text())["sha256"] == rec["sha256"]
    assert isinstance(rec["host_workarounds"], list)
    assert PASSWORD not in small_build.log.read_text(errors="replace")
    with ImageReader(small_build.image) as r:
        assert r.read("/etc/hostname").strip() == "small-test"
        assert r.read("/etc/diskimages-overlay.txt").strip() == "placed by the recipe's overlay"
        assert r.read("/etc/diskimages-release").startswith("BUILT_BY=diskimages")
        assert r.read("/etc/timezone").strip() == "Europe/Paris"
        assert r.exists("/usr/bin/tree")
        shadow = r.read("/etc/shadow")
        assert "user:$6$diskimagesuser$" in shadow and "root:!" in shadow
        tester = next(line for line in shadow.splitlines() if line.startswith("tester:"))
        assert tester.split(":")[1].startswith("$")            # a password hash, from the environment
        assert PASSWORD not in shadow
        assert "sudo:x:27:user" in r.read("/etc/group")
        assert r.read("/etc/machine-id").strip() in ("", "uninitialized")
        assert not [f for f in r.listdir("/etc/ssh") if f.startswith("ssh_host_")]
        assert not r.exists(customize.STAGE) and not r.exists("/opt/diskimages-stage")
        assert r.exists("/etc/systemd/system/multi-user.target.wants/ssh.service")
        assert "root=UUID=" in r.read("/boot/grub/grub.cfg")
        if rec["tool"] in ("virt-install", "packer", "virt-builder"):
            # made from the cloud base: its cloud-init state and the build user are gone, cloud-init is off
            assert r.exists("/etc/cloud/cloud-init.disabled") and not r.exists("/var/lib/cloud/instance")
            assert "diskimages-build" not in r.read("/etc/passwd")
            assert "quiet systemd.show_status=1" in r.read("/boot/grub/grub.cfg")
            assert rec["base"]["base_recipe"] == "debian-13-cloud-base"
            assert rec["sparsified"] == "virt-sparsify --in-place"


@pytest.mark.boot
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_small_build_boots_to_login(small_build, firmware, tmp_path):
    res = boot_check(small_build.image, small_build.record, firmware=firmware, screenshot_dir=tmp_path,
                     backend="qemu")
    assert res.passed, res.reason
    assert b"small-test login:" in res.serial_log.read_bytes()


@pytest.mark.build
def test_each_tool_keeps_its_own_package_cache_out_of_every_image(tmp_path, monkeypatch):
    """mkosi's cache layout (a debian~trixie/ folder of packages) once ended up inside every later mmdebstrap
    image through a shared cache folder."""
    _need("mkosi")
    monkeypatch.setenv("DISKIMAGES_TEST_PASSWORD", PASSWORD)
    mk = build(SMALL, "mkosi", tmp_path / "mkosi", progress=False)
    mm = build(SMALL, "mmdebstrap", tmp_path / "mmdebstrap", progress=False)
    from diskimages.tools import new_state
    state = new_state(load_checked(SMALL), Path("WORK"), Path("LOG"))
    assert get_tool("mkosi").cache_path(state) != get_tool("mmdebstrap").cache_path(state)
    # mkosi 14 fetches its packages again every build (its cache keeps none): the record says so and counts them
    assert mk.record["cache"] in ("cold", "partial", "warm") or (
        mk.record["cache"].startswith("not kept: the tool fetched") and mk.record["downloaded_bytes"] > 1 << 20)
    with ImageReader(mm.image) as r:
        assert set(r.listdir("/var/cache/apt/archives")) <= {"partial", "lock"}
    assert mm.record["file_bytes"] < 400 << 20


@pytest.mark.build
def test_mkosi_incremental_uses_its_own_cache_image_and_the_recipe_still_applies(tmp_path):
    """mkosi's own --incremental: the first build keeps mkosi's cache image (its tree after the package phase);
    a recipe that changes only the hostname brings it back, mkosi skips its package phase, and mkosi.postinst
    still applies the new hostname. Without the stand-in for mkosi 14's missing cache-pre-dev file, mkosi would
    make the cache image again (the package phase) on every run."""
    from diskimages import trees
    from diskimages.build import content_key
    _need("mkosi")
    recipe = load_checked("debian-12-minimal")
    _, info = content_key(recipe, get_tool("mkosi"))
    changed = recipe.model_copy(update={"hostname": "mkosi-changed"})
    assert content_key(changed, get_tool("mkosi"))[1]["tree_key"] == info["tree_key"]
    for p in trees._entry(info["tree_key"]):
        p.unlink(missing_ok=True)
    full = build(recipe, "mkosi", tmp_path / "a", progress=False, incremental=True)
    assert full.record["incremental"].startswith("mkosi --incremental: kept"), full.record["incremental"]
    inc = build(changed, "mkosi", tmp_path / "b", progress=False, incremental=True)
    assert inc.record["incremental"].startswith("mkosi --incremental: restored"), inc.record["incremental"]
    log = inc.log.read_text()
    assert "Copying in cached tree" in log and "Installing Debian" not in log
    assert inc.record["phases"]["bootstrap"]["wall_s"] < full.record["phases"]["bootstrap"]["wall_s"] * 0.75
    assert inc.record["manifest_packages"] == full.record["manifest_packages"]
    assert inc.record["initrd"].startswith("reused"), inc.record["initrd"]
    with ImageReader(inc.image) as r:
        assert r.read("/etc/hostname").strip() == "mkosi-changed"
        assert "mkosi-changed" in r.read("/etc/hosts")
        inc_owners = {p: _owner(r, p) for p in OWNED}
    # mkosi 14 copies its cache image without owners: the shim's copy keeps them (shadow, messagebus groups)
    with ImageReader(full.image) as r:
        assert {p: _owner(r, p) for p in OWNED} == inc_owners
    assert inc_owners["/etc/shadow"][2] != 0 and inc_owners["/usr/lib/dbus-1.0/dbus-daemon-launch-helper"][2] != 0


# files a Debian image has that are not root:root, with setuid and capability-free modes
OWNED = ("/etc/shadow", "/usr/lib/dbus-1.0/dbus-daemon-launch-helper", "/usr/bin/chage", "/var/log/journal")


def _owner(reader, path):
    """(mode, uid, gid) of a path inside the image, from debugfs."""
    import re
    out = reader.debugfs(f"stat {path}")
    m, u = re.search(r"Mode:\s+(\d+)", out), re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert m and u, f"{path}: {out[:200]}"
    return m.group(1), int(u.group(1)), int(u.group(2))
