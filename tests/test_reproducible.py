"""What makes two builds of one recipe bit-identical, checked on small trees and file systems without building:
identifiers from the content key, the packages' own date, clamped times, removed volatile files, pinned inode
times, and diffoscope's account when two trees differ."""
import hashlib
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from diskimages import disk, distros, reproducible
from diskimages.reproducible import Seed
from diskimages.tools import load_checked

KEY = "sha256:" + "ab" * 32
DEBIAN = distros.get("debian")


def _seed(epoch=1_700_000_000):
    return Seed(KEY, epoch, "test")


def test_identifiers_come_from_the_content_key():
    a, b = _seed(), Seed("sha256:" + "cd" * 32, 1, "test")
    assert a.uuid("disk") == _seed(5).uuid("disk") != b.uuid("disk")
    assert a.uuid("disk") != a.uuid("filesystem/root")
    assert uuid.UUID(a.uuid("disk")).version == 4
    assert len(a.fat_id()) == 8 and int(a.fat_id(), 16) >= 0 and a.fat_id() != b.fat_id()
    recipe = load_checked("debian-13-minimal")
    one, two = disk.plan_layout(recipe, a), disk.plan_layout(recipe, a)
    assert one == two and one.root_uuid == a.uuid("filesystem/root") and one.disk_id
    assert disk.plan_layout(recipe).root_uuid != disk.plan_layout(recipe).root_uuid     # unseeded: drawn


def test_a_seeded_partition_table_carries_the_derived_guids(tmp_path):
    recipe = load_checked("debian-13-minimal")
    layout = disk.plan_layout(recipe, _seed())
    disk.partition(tmp_path / "d.raw", 256 << 20, layout)
    dump = subprocess.run(["sfdisk", "-d", str(tmp_path / "d.raw")], capture_output=True, text=True).stdout
    assert f"label-id: {layout.disk_id.upper()}" in dump
    for p in layout.partitions:
        assert f"uuid={p.uuid.upper()}" in dump


def _fake_debian_tree(root: Path, shipped_mtime: int) -> None:
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("x")
    os.utime(root / "usr/bin/tool", (shipped_mtime, shipped_mtime))
    (root / "usr/bin/made-by-a-script").write_text("now")          # newer, but no package ships it
    (root / "var/lib/dpkg/info/tool.md5sums").write_text("0" * 32 + "  usr/bin/tool\n")


def test_the_epoch_is_the_newest_file_the_packages_ship_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _fake_debian_tree(tmp_path, 1_600_000_000)
    assert reproducible.source_date_epoch(tmp_path, DEBIAN) == (1_600_000_000, "newest file the packages ship")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert reproducible.source_date_epoch(tmp_path, DEBIAN) == (1234, "environment")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH.*allowed: whole seconds"):
        reproducible.source_date_epoch(tmp_path, DEBIAN)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    with pytest.raises(NotImplementedError):
        reproducible.source_date_epoch(tmp_path, distros.get("arch"))


def test_normalising_a_tree_clamps_times_and_shadow_days_and_drops_volatile_files(tmp_path):
    epoch = 1_700_000_000
    _fake_debian_tree(tmp_path, 1_600_000_000)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (tmp_path / "etc/shadow").write_text(f"root:*:{epoch // 86400 + 400}:0:99999:7:::\nold:*:100:0:99999:7:::\n")
    os.chmod(tmp_path / "etc/shadow", 0o640)
    (tmp_path / "var/cache/ldconfig").mkdir(parents=True)
    (tmp_path / "var/cache/ldconfig/aux-cache").write_text("random")
    (tmp_path / "etc/link").symlink_to("/nowhere")
    done = reproducible.normalize_tree(tmp_path, epoch)
    assert done["removed"] == 1 and not (tmp_path / "var/cache/ldconfig/aux-cache").exists()
    assert (tmp_path / "etc/machine-id").read_text() == ""
    assert (tmp_path / "etc/shadow").read_text().splitlines() == [f"root:*:{epoch // 86400}:0:99999:7:::",
                                                                  "old:*:100:0:99999:7:::"]
    assert (tmp_path / "etc/shadow").stat().st_mode & 0o777 == 0o640
    assert os.lstat(tmp_path / "usr/bin/tool").st_mtime == 1_600_000_000            # older: kept
    for p in ("usr/bin/made-by-a-script", "etc/link", "etc", "."):
        assert os.lstat(tmp_path / p).st_mtime == epoch, p


def test_caches_checked_by_time_stay_newer_than_their_inputs_after_clamping(tmp_path):
    """console-setup trusts its cache only while it is newer than /etc/default/keyboard and console-setup
    (`-nt`): clamped to the same second, the first boot would compile the keymap and font again."""
    epoch = 1_700_000_000
    cache = "etc/console-setup/cached_setup_terminal.sh"
    for rel in (cache, "etc/default/keyboard", "etc/default/console-setup"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("made during the build")
    os.utime(tmp_path / "etc/default/console-setup", (epoch - 500, epoch - 500))   # shipped long ago
    reproducible.normalize_tree(tmp_path, epoch)
    assert os.lstat(tmp_path / cache).st_mtime == os.lstat(tmp_path / "etc/default/keyboard").st_mtime
    caches = distros.get("debian").fresh_caches
    assert reproducible.keep_caches_fresh(tmp_path, caches) == 1
    assert os.lstat(tmp_path / cache).st_mtime == epoch
    assert os.lstat(tmp_path / "etc/default/keyboard").st_mtime == epoch - 1
    assert os.lstat(tmp_path / "etc/default/console-setup").st_mtime == epoch - 500      # older: kept
    assert reproducible.keep_caches_fresh(tmp_path, caches) == 0                         # the same times again
    # the check console-setup makes at boot (dash's test)
    assert subprocess.run(["sh", "-c", f"[ {cache} -nt etc/default/keyboard ] && "
                           f"[ {cache} -nt etc/default/console-setup ]"], cwd=tmp_path).returncode == 0


def test_apt_working_folders_get_the_epoch_whether_or_not_the_build_downloaded(tmp_path):
    """apt ships archives/partial with an old time; a build that downloads a package moves it past the epoch (then
    clamped), one that finds every package cached does not: both must end up with the same time."""
    epoch = 1_700_000_000
    partial = tmp_path / "var/cache/apt/archives/partial"
    partial.mkdir(parents=True)
    (tmp_path / "usr/share").mkdir(parents=True)
    for p in (partial, tmp_path / "usr/share"):
        os.utime(p, (epoch - 86400, epoch - 86400))                     # as the packages ship them
    reproducible.normalize_tree(tmp_path, epoch, volatile_dirs=DEBIAN.volatile_dirs)
    assert os.lstat(partial).st_mtime == epoch
    assert os.lstat(tmp_path / "usr/share").st_mtime == epoch - 86400   # not volatile: kept


def test_folders_being_written_are_left_to_the_writer_and_clamped_after(tmp_path):
    """Assembly normalises the tree while fc-cache writes its cache folder: that folder is skipped, then clamped
    with its parent once the cache is done."""
    epoch = 1_700_000_000
    (tmp_path / "var/cache/fontconfig").mkdir(parents=True)
    (tmp_path / "var/cache/fontconfig/new-le64.cache-9").write_text("x")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("h")
    done = reproducible.normalize_tree(tmp_path, epoch, skip=("var/cache/fontconfig",))
    assert os.lstat(tmp_path / "etc/hostname").st_mtime == epoch and done["clamped"] >= 3
    assert os.lstat(tmp_path / "var/cache/fontconfig/new-le64.cache-9").st_mtime > epoch
    assert os.lstat(tmp_path / "var/cache/fontconfig").st_mtime > epoch
    reproducible.clamp_times(tmp_path / "var/cache", epoch)
    assert os.lstat(tmp_path / "var/cache/fontconfig/new-le64.cache-9").st_mtime == epoch
    assert os.lstat(tmp_path / "var/cache/fontconfig").st_mtime == epoch


def _fontconfig_checks(tree: Path, clamp_first: bool) -> list[tuple[str, str]]:
    """(cache, folder) checksums fontconfig compares for the font folders of `tree`, once its cache was made
    (after the font folders were clamped to EPOCH when `clamp_first`, as assembly makes it) and the tree was
    clamped."""
    font = next((l for l in subprocess.run(["fc-list", "-f", "%{file}\n"], capture_output=True, text=True)
                 .stdout.splitlines() if l.endswith(".ttf")), None)
    if not font:
        pytest.skip("no TrueType font on this host to make a fontconfig cache of")
    (tree / "fonts/truetype").mkdir(parents=True)
    (tree / "cache").mkdir()
    shutil.copy(font, tree / "fonts/truetype")
    conf = tree / "fonts.conf"
    conf.write_text(f'<?xml version="1.0"?><fontconfig><dir>{tree}/fonts</dir><cachedir>{tree}/cache</cachedir>'
                    "</fontconfig>")
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["FONTCONFIG_FILE"] = str(conf)
    if clamp_first:
        reproducible.clamp_times(tree / "fonts", EPOCH)
    subprocess.run(["fc-cache", "--really-force"], env={**env, "SOURCE_DATE_EPOCH": str(EPOCH)}, check=True,
                   capture_output=True)
    reproducible.normalize_tree(tree, EPOCH)
    out = subprocess.run(["fc-list"], env={**env, "FC_DEBUG": "16"}, capture_output=True, text=True).stdout
    return re.findall(r"FcCacheTimeValid dir .* cache checksum (\S+) dir checksum (\S+)", out)


EPOCH = 1_700_000_000


@pytest.mark.skipif(not shutil.which("fc-cache"), reason="fontconfig is not installed on this host")
def test_a_font_cache_made_from_clamped_folders_stays_valid(tmp_path):
    """Fontconfig's cache records each font folder's exact mtime. Made during the package phase it goes stale
    when the tree is clamped (each session then scans the fonts again and writes its own); made from font
    folders already clamped, as assembly makes it (`regenerated_caches`), it records the times the image keeps."""
    stale = _fontconfig_checks(tmp_path / "before", clamp_first=False)
    assert not any(cache == folder for cache, folder in stale), stale      # none kept, or none valid
    fresh = _fontconfig_checks(tmp_path / "after", clamp_first=True)
    assert len(fresh) == 2 and all(cache == folder == f"{EPOCH}.0" for cache, folder in fresh), fresh
    cache = DEBIAN.regenerated_caches["var/cache/fontconfig"]
    assert cache.command == ("fc-cache", "--system-only", "--really-force") and "usr/share/fonts" in cache.inputs


def _ext4(tree: Path, out: Path, seed: Seed, pin: bool, work: Path) -> str:
    with open(out, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", seed.uuid("fs"), "-E", f"hash_seed={seed.uuid('h')}",
                    "-d", str(tree), str(out)], check=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": str(seed.epoch)})
    if pin:
        assert reproducible.pin_inode_times(str(out), seed.epoch, work) > 100
    return hashlib.sha256(out.read_bytes()).hexdigest()


def _tree(root: Path, epoch: int) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    for d in range(5):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(30):
            (root / f"d{d}/f{f}").write_text(str(f))
    reproducible.normalize_tree(root, epoch)
    return root


def test_pinned_inode_times_make_two_file_systems_of_the_same_tree_identical(tmp_path):
    """mke2fs -d copies each file's change time, which differs between two trees made a second apart; after
    pinning, the two file systems are byte for byte the same (and without it they are not: the test can fail)."""
    seed = _seed()
    first = [_ext4(_tree(tmp_path / "t", seed.epoch), tmp_path / "a", seed, pin, tmp_path) for pin in (False, True)]
    time.sleep(1.1)
    second = [_ext4(_tree(tmp_path / "t", seed.epoch), tmp_path / "b", seed, pin, tmp_path) for pin in (False, True)]
    assert first[0] != second[0]
    assert first[1] == second[1]
    assert subprocess.run(["e2fsck", "-fn", str(tmp_path / "b")], capture_output=True).returncode == 0
    assert not list(tmp_path.glob("*.debugfs"))


@pytest.mark.skipif(not shutil.which("diffoscope"), reason="diffoscope not installed (scripts/setup.sh)")
def test_two_trees_that_differ_are_explained_by_diffoscope(tmp_path):
    for side, text in (("a", "one\n"), ("b", "two\n")):
        (tmp_path / side / "etc").mkdir(parents=True)
        (tmp_path / side / "etc/hostname").write_text(text)
        (tmp_path / side / "etc/same").write_text("same\n")
    report = reproducible.explain_difference(tmp_path / "a", tmp_path / "b", lines=30)
    assert "etc/hostname" in report and "-one" in report and "+two" in report
    assert "etc/same" not in report
    assert len(report.splitlines()) <= 30


def test_a_password_from_the_environment_gives_no_content_key(monkeypatch):
    """The key is a public annotation and holds no password: an image whose password came from the environment
    is never reused by key (another password would get the same key), and the reason names the field."""
    from diskimages.build import content_key
    from diskimages.tools import get_tool
    monkeypatch.setenv("DISKIMAGES_TEST_PASSWORD", "pw")
    recipe = load_checked(Path(__file__).parent / "recipes" / "debian-13-small.yaml")
    key, info = content_key(recipe, get_tool("mmdebstrap"))
    assert key is None and "content_key" not in info
    import re
    assert re.match(r"users\.1\.password_env: a password from the environment", info["content_key_missing"])
    assert info["tree_key"].startswith("sha256:")              # the package phase is still kept and reused
