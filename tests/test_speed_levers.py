"""The speed and size levers, checked without building: what each tool is told (one initramfs, the same suites
for every tool, the lean rule), how downloads are counted from any tool's log, and that a lean recipe is refused
where this project does not make lean images."""
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from diskimages import distros
from diskimages.cli import main as cli_main
from diskimages.customize import XFCE_SESSION_FILE, render_script
from diskimages.tools import get_tool, load_checked, new_state

REPO = Path(__file__).resolve().parent.parent


def _state(recipe, tmp_path):
    return new_state(recipe, tmp_path, tmp_path / "log")


def test_the_native_path_defers_the_initramfs_and_holds_man_db_back(tmp_path):
    r = load_checked("debian-13-xfce")
    text = get_tool("mmdebstrap").render(_state(r, tmp_path))["mmdebstrap.sh"]
    assert text.startswith("INITRD=No \\\n  mmdebstrap")
    assert "--essential-hook=chroot" in text and "man-db/auto-update boolean false" in text
    assert "man-db/auto-update boolean true" in text          # given back before the image is finished
    assert "zstd" in distros.get("debian").packages_for(r)     # initramfs-tools compresses with it
    assert "sync-in" not in text and "cp -al" in text           # the cache goes in as hard links where it can
    # depmod in the background while the packages install, waited for (and its failure a build failure) after
    setup, finish = text.index("--essential-hook="), text.index("--customize-hook=chroot")
    assert setup < text.index("/usr/local/sbin/depmod") < finish and '/usr/sbin/depmod "$@"' in text
    assert 'cat "$t.rc")" != 0' in text[finish:] and "rm -rf /var/tmp/diskimages-depmod" in text[finish:]
    # started as soon as dpkg has unpacked the kernel's modules, by dpkg's own hook, removed at the end
    assert setup < text.index("post-invoke=/usr/local/sbin/diskimages-depmod-early") < finish
    assert "/etc/dpkg/dpkg.cfg.d/79diskimages-package-phase" in text[finish:]
    # apt runs maintainer scripts with that PATH and without debconf's pre-configuration, until the end
    assert setup < text.index('DPkg::Path "/usr/local/sbin:') < text.index("#clear DPkg::Pre-Install-Pkgs") < finish
    assert "/etc/apt/apt.conf.d/79diskimages-package-phase" in text[finish:]


def test_the_native_path_starts_from_the_package_indexes_resolution_fetched(tmp_path):
    """mmdebstrap's apt-get update starts from resolution's lists (apt then asks If-Modified-Since); a build
    without caches fetches its own."""
    r = load_checked("debian-12-minimal")
    state = _state(r, tmp_path)
    lists = state.distro.package_index_cache(state.release, r.architecture)
    assert lists.parts[-2:] == ("state", "lists") and "bookworm" in str(lists)
    tool = get_tool("mmdebstrap")
    hooks = [a for a in tool.command(state, tmp_path / "root", tmp_path / "cache", tool._indexes(state))[0]
             if a.startswith("--setup-hook=") and "/var/lib/apt/lists" in a]
    assert len(hooks) == 1 and str(lists) in hooks[0] and "cp -p" in hooks[0]
    state.use_cache = False
    assert tool._indexes(state) is None
    assert distros.get("fedora").package_index_cache(state.release, r.architecture) is None


def test_every_tool_gets_the_release_updates_and_security_suites(tmp_path):
    r = load_checked("debian-13-xfce")
    state = _state(r, tmp_path)
    if not state.mirror.uri:
        return          # no mirror known here: every tool uses its own default (nothing to compare)
    doc = yaml.safe_load(get_tool("debos").render(state)["debos.yaml"])
    run = doc["actions"][1]
    assert run["action"] == "run" and run["chroot"] is True
    suites = [line.split()[2] for line in state.distro.sources_lines(state.mirror, state.release)]
    assert suites[:2] == ["trixie", "trixie-updates"]
    for line in state.distro.sources_lines(state.mirror, state.release):
        assert line in run["command"]
    assert "dist-upgrade" in run["command"]
    assert doc["actions"][3]["action"] == "apt"


def test_images_boot_from_an_initramfs_without_network_drivers_in_every_tool(tmp_path):
    """The initramfs configuration (MODULES=list and a hook adding MODULES=most's classes except network storage) is in
    the customisation every tool runs, and debos writes it before its apt action makes the initramfs."""
    debian = distros.get("debian")
    for name in ("debian-13-xfce", "debian-12-minimal", "ubuntu-24.04-xubuntu"):
        script = render_script(load_checked(name))
        assert "MODULES=list" in script and debian.INITRAMFS_HOOK in script, name
        assert "auto_add_modules base ide ata" in script and " net" not in debian.INITRAMFS_CLASSES
        assert "copy_modules_dir kernel/drivers/scsi lpfc qla2xxx" in script and "drivers/block aoe" in script
    r = load_checked("debian-13-xfce")
    doc = yaml.safe_load(get_tool("debos").render(_state(r, tmp_path))["debos.yaml"])
    kinds = [(a["action"], a.get("description", "")) for a in doc["actions"]]
    at = kinds.index(("run", "the initramfs for a local disk"))
    assert kinds[at + 1][0] == "apt" and "MODULES=list" in doc["actions"][at]["command"]
    assert "MODULES=list" not in render_script(load_checked("fedora-45-xfce"))


def test_downloads_are_counted_from_what_apt_says():
    log = ("Get:1 http://mirror.invalid/debian bookworm InRelease [151 kB]\n"
           "Fetched 6979 kB in 1s (12.9 MB/s)\n"
           "Need to get 305 MB of archives.\n"
           "Fetched 305 MB in 1s (228 MB/s)\n"
           "[   4.87] Need to get 0 B/30.3 MB of archives.\n")
    total, packages = distros.get("debian").downloaded_in_log(log)
    assert (total, packages) == (311_979_000, 305_000_000)
    assert distros.get("debian").downloaded_in_log("nothing fetched here\n") is None
    assert distros.get("fedora").downloaded_in_log(log) is None      # dnf says it otherwise: not guessed


def test_lean_rule_is_one_for_every_tool_and_keeps_licences(tmp_path):
    r = load_checked("debian-13-xfce").model_copy(update={"lean": True})
    script = render_script(r)
    assert "path-exclude=/usr/share/doc/*" in script and "path-include=/usr/share/doc/*/copyright" in script
    assert "path-include=/usr/share/locale/en/*" in script and "path-include=/usr/share/locale/en_US/*" in script
    assert "/usr/share/locale/en_*" not in script                      # en_GB's translations are not read
    assert "path-exclude=/usr/share/i18n/charmaps/*" in script
    assert "path-include=/usr/share/i18n/charmaps/UTF-8.gz" in script  # locale-gen can make en_US.UTF-8 again
    latin1 = render_script(r.model_copy(update={"locale": "de_DE"}))
    assert "path-include=/usr/share/i18n/charmaps/ISO-8859-1.gz" in latin1, latin1
    assert "path-include=/usr/share/locale/de_DE/*" in latin1
    assert "! -name copyright -delete" in script
    argv, _ = get_tool("mmdebstrap").command(_state(r, tmp_path), tmp_path / "root", tmp_path / "cache")
    hook = next(a for a in argv if a.startswith("--essential-hook="))
    assert "path-exclude=/usr/share/man/*" in hook           # in place before the packages install
    plain = load_checked("debian-13-xfce")
    assert "path-exclude" not in render_script(plain)


def test_lean_is_refused_where_it_is_not_made(tmp_path, capsys):
    base = yaml.safe_load((REPO / "recipes" / "fedora-45-xfce.yaml").read_text())
    base.pop("files", None)
    base["lean"] = True
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base))
    t0 = time.monotonic()
    assert cli_main(["validate", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {p}: lean: lean images of Fedora are not made here (allowed: false)", err
    assert time.monotonic() - t0 < 5


def test_desktop_images_skip_first_boot_jobs_and_generate_host_keys_off_the_critical_path():
    desk = render_script(load_checked("debian-13-xfce"))
    assert "systemctl disable e2scrub_reap.service" in desk and "systemctl disable grub-common.service" in desk
    assert "After=display-manager.service" in desk and "CPUSchedulingPolicy=idle" in desk
    assert "setupcon --force --save-only" in desk and "touch -r /usr" in desk
    assert 'MatchDriver "bochs-drm"' in desk and 'Option "AccelMethod" "none"' in desk
    console = render_script(load_checked("debian-13-minimal"))
    assert "e2scrub_reap" not in console and "bochs-drm" not in console
    ubuntu = render_script(load_checked("ubuntu-24.04-xubuntu"))
    assert "grub-common.service" not in ubuntu            # Ubuntu's own grub.cfg needs its recordfail cleared


def test_cached_trees_roundtrip_and_a_damaged_entry_is_never_used(tmp_path, monkeypatch):
    """A tree kept by trees.save comes back identical (modes, links, symlinks); an entry whose checksum fails is
    deleted and reported as missing; prune keeps the cache within its size, least recently used first."""
    import os
    from diskimages import trees
    monkeypatch.setenv("DISKIMAGES_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "tree"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("tree\n")
    (src / "etc/secret").write_text("x")
    os.chmod(src / "etc/secret", 0o600)
    os.link(src / "etc/hostname", src / "etc/hardlink")
    os.symlink("hostname", src / "etc/link")
    (src / "big").write_bytes(os.urandom(1 << 20))
    key = "sha256:" + "a1" * 32
    assert trees.restore(key, tmp_path / "none") is None
    assert trees.save(key, src).startswith("kept the package phase's tree")
    said = trees.restore(key, tmp_path / "back")
    assert said and said.startswith("restored")
    back = tmp_path / "back"
    assert (back / "etc/hostname").read_text() == "tree\n" and os.readlink(back / "etc/link") == "hostname"
    assert (back / "etc/secret").stat().st_mode & 0o777 == 0o600
    assert (back / "etc/hardlink").stat().st_ino == (back / "etc/hostname").stat().st_ino
    tarball, sums = trees._entry(key)
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))
    assert trees.restore(key, tmp_path / "again") is None
    assert not tarball.exists() and not sums.exists() and not (tmp_path / "again").exists()
    other = "sha256:" + "b2" * 32
    trees.save(key, src)
    time.sleep(0.05)
    trees.save(other, src)
    gone = trees.prune(max_bytes=trees._entry(other)[0].stat().st_size)
    assert len(gone) == 1 and "a1a1" in gone[0] and trees._entry(other)[0].is_file()
    with __import__("pytest").raises(ValueError):
        trees._entry("sha256:../../etc")


def test_an_initramfs_is_reused_only_from_the_same_inputs(tmp_path, monkeypatch):
    """The key of a cached initramfs follows what initramfs-tools reads (the keymap here) and the recipe's own
    scripts, not the hostname; the cached copy comes back whole, a damaged one is deleted and not used, and
    prune removes it with its checksum."""
    import os
    from diskimages import distros, trees
    from diskimages.disk import initrd_key
    from diskimages.reproducible import Seed
    monkeypatch.setenv("DISKIMAGES_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/keyboard").write_text('XKBLAYOUT="us"\n')
    (root / "etc/hostname").write_text("one\n")
    r, d = load_checked("debian-13-minimal"), distros.get("debian")
    tree, seed = "sha256:" + "c3" * 32, Seed("sha256:" + "d4" * 32, 1795542068, "test")
    first = initrd_key(r, d, root, "6.12", tree, seed)
    (root / "etc/hostname").write_text("two\n")
    assert initrd_key(r, d, root, "6.12", tree, seed) == first
    assert initrd_key(r, d, root, "6.13", tree, seed) != first
    assert initrd_key(r, d, root, "6.12", None, seed) is None              # package cache off: no key
    scripted = r.model_copy(update={"scripts": ["scripts/customize.sh"]})
    assert initrd_key(scripted, d, root, "6.12", tree, seed) != first
    (root / "etc/default/keyboard").write_text('XKBLAYOUT="de"\n')
    assert initrd_key(r, d, root, "6.12", tree, seed) != first

    made = tmp_path / "initrd.img"
    made.write_bytes(os.urandom(1 << 16))
    assert not trees.restore_file(first, "initrd", tmp_path / "x")
    trees.save_file(first, "initrd", made)
    assert trees.restore_file(first, "initrd", tmp_path / "back") and (tmp_path / "back").read_bytes() == \
        made.read_bytes()
    data, sums = trees._file_entry(first, "initrd")
    data.write_bytes(b"damaged")
    assert not trees.restore_file(first, "initrd", tmp_path / "again")
    assert not data.exists() and not sums.exists() and not (tmp_path / "again").exists()
    trees.save_file(first, "initrd", made)
    gone = trees.prune(max_bytes=0)
    assert gone == [f"removed cached initrd {data.name} (over the size limit)"]
    assert not list(data.parent.iterdir())


def test_cluster_size_is_a_recipe_choice_checked_by_qemu_img(tmp_path, capsys):
    import json as _json
    import os
    import subprocess
    from diskimages import disk
    raw = tmp_path / "d.raw"
    with open(raw, "wb") as f:
        f.truncate(32 << 20)
        f.write(os.urandom(1 << 20) + bytes(1 << 20) + b"x" * (1 << 20))
    for size, expect in (("64K", 65536), ("2M", 2 << 20)):
        out = tmp_path / f"d-{size}.qcow2"
        disk.convert(raw.with_name("d.raw"), out, "qcow2", "zstd", cluster_size=size)
        info = _json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True,
                                          text=True, check=True).stdout)
        assert info["cluster-size"] == expect
        subprocess.run(["qemu-img", "check", "-q", str(out)], check=True)
    base = yaml.safe_load((REPO / "recipes" / "debian-13-minimal.yaml").read_text())
    base.pop("files", None)
    base.pop("scripts", None)
    base["output"] = {"format": "qcow2", "compression": "zstd", "cluster_size": "3M"}
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(base))
    assert cli_main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}: output.cluster_size:" in err and "'64K'" in err and "'2M'" in err, err


def test_ensure_initrd_copies_a_kept_initramfs_instead_of_running_the_generator(tmp_path, monkeypatch):
    """With a key whose initramfs is kept, assembly copies it into the tree and says so (the generator is not
    run: the tree here has none, and a chroot into it would fail); without one it runs the generator."""
    import os
    from diskimages import distros, runner, trees
    from diskimages.disk import ensure_initrd
    monkeypatch.setenv("DISKIMAGES_CACHE", str(tmp_path / "cache"))
    d, key = distros.get("debian"), "sha256:" + "e5" * 32
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    made = tmp_path / "initrd.img"
    made.write_bytes(os.urandom(1 << 16))
    trees.save_file(key, "initrd", made)
    how = ensure_initrd(d, root, "6.12.1-amd64", reuse_key=key)
    assert how.startswith("reused: made before from the same packages")
    assert (root / d.initrd_file("6.12.1-amd64")).read_bytes() == made.read_bytes()
    assert ensure_initrd(d, root, "6.12.1-amd64", reuse_key=key) == "left by the tool"
    with __import__("pytest").raises(runner.CommandError):
        ensure_initrd(d, root, "6.12.2-amd64", reuse_key="sha256:" + "f6" * 32)   # no entry: the generator runs


def test_background_depmod_is_waited_for_and_its_failure_fails_the_package_phase(tmp_path):
    """The stub and the wait, run for real with a stand-in depmod: the stub returns at once, the wait returns
    only when the run ended, and a failed run fails the wait with depmod's own message."""
    import subprocess
    from diskimages.distros import debian
    runs = tmp_path / "runs"
    for outcome, code in (("sleep 1; echo built", 0), ("echo 'depmod: ERROR: no such kernel' >&2; exit 1", 1)):
        fake = tmp_path / "depmod"
        fake.write_text(f"#!/bin/sh\n{outcome}\n")
        fake.chmod(0o755)
        stub = debian._DEPMOD_STUB_TEXT.replace("/usr/sbin/depmod", str(fake)).replace(debian.DEPMOD_RUNS, str(runs))
        wait = debian._DEPMOD_WAIT.replace(debian.DEPMOD_RUNS, str(runs)).replace(debian.DEPMOD_STUB, str(fake))
        t0 = time.monotonic()
        subprocess.run(["sh", "-c", stub, "depmod", "6.12.0-amd64"], check=True, timeout=5)
        assert time.monotonic() - t0 < 0.9                      # returned before the run ended
        done = subprocess.run(["sh", "-ec", wait], capture_output=True, text=True, timeout=10)
        assert done.returncode == code, done.stderr
        if code:
            assert "no such kernel" in done.stderr and "depmod failed" in done.stderr
        else:
            assert time.monotonic() - t0 >= 1.0 and not runs.exists()


def test_a_kernels_depmod_starts_once_its_modules_are_unpacked_and_is_not_run_twice(tmp_path):
    """dpkg's post-invoke hook, the stub and the wait, run for real with a stand-in depmod and module folder:
    the hook starts one run per kernel, the postinst's `depmod VERSION` is then skipped, unless a module came
    after the early run started."""
    import subprocess
    from diskimages.distros import debian
    runs, modules, calls = tmp_path / "runs", tmp_path / "modules", tmp_path / "calls"
    fake, stub_path = tmp_path / "depmod", tmp_path / "stub"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = -V ] && exit 0\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)

    def adapt(text):
        return (text.replace("/usr/sbin/depmod", str(fake)).replace(debian.DEPMOD_OUT, str(tmp_path / "out"))
                .replace(debian.DEPMOD_RUNS, str(runs))
                .replace(debian.DEPMOD_STUB, str(stub_path)).replace("/lib/modules", str(modules)))

    def install_stub():                        # the wait removes it, as it does in the image
        stub_path.write_text(adapt(debian._DEPMOD_STUB_TEXT))
        stub_path.chmod(0o755)
    install_stub()
    hook, wait = adapt(debian._DEPMOD_EARLY_TEXT), adapt(debian._DEPMOD_WAIT)
    kernel = modules / "6.12.0-amd64"
    (kernel / "kernel").mkdir(parents=True)
    subprocess.run(["sh", "-c", hook], check=True, timeout=5)            # a dpkg run before the kernel's
    assert not runs.exists()
    (kernel / "kernel/ext4.ko.xz").write_bytes(b"")
    (kernel / "modules.order").write_text("kernel/ext4.ko\n")
    for _ in range(2):                                                    # the kernel's run, then a later one
        subprocess.run(["sh", "-c", hook], check=True, timeout=5)
    subprocess.run([str(stub_path), "6.12.0-amd64"], check=True, timeout=5)   # the postinst: skipped
    done = subprocess.run(["sh", "-ec", wait], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and "waited for 1 depmod runs" in done.stdout, done.stderr
    assert calls.read_text() == "6.12.0-amd64\n"

    # a module unpacked after the early run began: the postinst's depmod runs again
    calls.unlink()
    install_stub()
    subprocess.run(["sh", "-c", hook], check=True, timeout=5)
    time.sleep(0.05)
    (kernel / "kernel/extra.ko.xz").write_bytes(b"")
    subprocess.run([str(stub_path), "6.12.0-amd64"], check=True, timeout=5)
    done = subprocess.run(["sh", "-ec", wait], capture_output=True, text=True, timeout=10)
    assert "waited for 2 depmod runs" in done.stdout and calls.read_text() == "6.12.0-amd64\n" * 2


def test_a_kernels_module_index_is_reused_only_when_depmod_would_read_the_same(tmp_path):
    """The dpkg hook, the stub and the wait, run for real with a stand-in depmod: a run leaves its outputs and
    the digest of its inputs for the build to keep; staged for the next package phase, they are copied instead
    of running depmod; a module of another size, or another depmod version, runs depmod again."""
    import shutil
    import subprocess
    from diskimages.distros import debian
    runs, modules, calls = tmp_path / "runs", tmp_path / "modules", tmp_path / "calls"
    reuse, out = tmp_path / "reuse", tmp_path / "out"
    fake, stub_path = tmp_path / "depmod", tmp_path / "stub"
    version = tmp_path / "kmod-version"
    version.write_text("kmod version 34\n")
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -V ]; then cat {version}; exit 0; fi\necho \"$@\" >> {calls}\n"
                    "i=0; while [ $i -lt 100000 ]; do i=$((i + 1)); done\n"     # CPU time for the accounting
                    f"ls {modules}/$1/kernel > {modules}/$1/modules.dep\n: > {modules}/$1/modules.alias.bin\n")
    fake.chmod(0o755)

    def adapt(text):
        return (text.replace("/usr/sbin/depmod", str(fake)).replace(debian.DEPMOD_REUSE, str(reuse))
                .replace(debian.DEPMOD_OUT, str(out)).replace(debian.DEPMOD_RUNS, str(runs))
                .replace(debian.DEPMOD_STUB, str(stub_path)).replace("/lib/modules", str(modules)))

    def package_phase() -> str:
        """The kernel's modules are in: dpkg's hook, then the postinst's own depmod, then the wait."""
        stub_path.write_text(adapt(debian._DEPMOD_STUB_TEXT))
        stub_path.chmod(0o755)
        subprocess.run(["sh", "-c", adapt(debian._DEPMOD_EARLY_TEXT)], check=True, timeout=10)
        subprocess.run([str(stub_path), "6.12.0-amd64"], check=True, timeout=10)
        done = subprocess.run(["sh", "-ec", adapt(debian._DEPMOD_WAIT)], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert not reuse.exists() and not runs.exists()
        return done.stdout

    def next_build() -> Path:
        """What the build does between package phases: keeps what the phase left and stages it for the next,
        whose tree is fresh (no depmod outputs)."""
        kept = tmp_path / f"kept{len(list(tmp_path.glob('kept*')))}"
        (out / "cpu_s").unlink()
        shutil.copytree(out, kept)
        shutil.rmtree(out)
        shutil.copytree(kept, reuse)
        for f in ("modules.dep", "modules.alias.bin"):
            (kernel / f).unlink()
        return kept

    kernel = modules / "6.12.0-amd64"
    (kernel / "kernel").mkdir(parents=True)
    (kernel / "kernel/ext4.ko.xz").write_bytes(b"x" * 10)
    (kernel / "modules.order").write_text("kernel/ext4.ko\n")
    assert "waited for 1 depmod runs" in package_phase()
    assert calls.read_text() == "6.12.0-amd64\n"
    assert sorted(p.name for p in (out / "6.12.0-amd64").iterdir()) == ["modules.alias.bin", "modules.dep"]
    assert len((out / "6.12.0-amd64.inputs").read_text().strip()) == 64
    assert float((out / "cpu_s").read_text()) >= 0.05          # depmod's CPU, which the build cannot see itself
    made = (kernel / "modules.dep").read_bytes()

    kept = next_build()
    said = package_phase()
    assert "waited for 0 depmod runs" in said and "6.12.0-amd64 reused from an earlier build" in said
    assert calls.read_text() == "6.12.0-amd64\n"                          # depmod did not run
    assert (kernel / "modules.dep").read_bytes() == made and (kernel / "modules.alias.bin").exists()
    assert sorted(p.name for p in out.iterdir()) == ["6.12.0-amd64.reused", "cpu_s"]
    assert float((out / "cpu_s").read_text()) == 0

    # what depmod reads changes: a module of another size, then another depmod; each time it runs again
    for n, change in enumerate((lambda: (kernel / "kernel/ext4.ko.xz").write_bytes(b"x" * 11),
                                lambda: version.write_text("kmod version 35\n")), start=2):
        shutil.rmtree(out)
        shutil.copytree(kept, out)
        (out / "cpu_s").write_text("0.00\n")
        (kernel / "modules.dep").write_bytes(made)
        (kernel / "modules.alias.bin").write_bytes(b"")
        kept = next_build()
        change()
        assert "waited for 1 depmod runs" in package_phase()
        assert calls.read_text() == "6.12.0-amd64\n" * n
        assert (out / "6.12.0-amd64.inputs").read_text() != (kept / "6.12.0-amd64.inputs").read_text()
        assert (out / "6.12.0-amd64/modules.dep").is_file()


def test_a_folder_is_kept_and_restored_with_its_times_and_a_damaged_entry_is_not_used(tmp_path):
    import os
    from diskimages import trees
    key = "sha256:" + os.urandom(32).hex()
    src = tmp_path / "src"
    (src / "6.12.0-amd64").mkdir(parents=True)
    (src / "6.12.0-amd64/modules.dep").write_text("kernel/ext4.ko:\n")
    os.utime(src / "6.12.0-amd64/modules.dep", (1_700_000_000, 1_700_000_000))
    (src / "6.12.0-amd64.inputs").write_text("ab" * 32 + "\n")
    try:
        trees.save_folder(key, "modindex", src)
        assert trees.restore_folder(key, "modindex", tmp_path / "dest")
        got = tmp_path / "dest/6.12.0-amd64/modules.dep"
        assert got.read_text() == "kernel/ext4.ko:\n" and got.stat().st_mtime == 1_700_000_000
        assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["6.12.0-amd64", "6.12.0-amd64.inputs"]
        data, _ = trees._file_entry(key, "modindex")
        with open(data, "r+b") as f:
            f.seek(600)
            f.write(b"damaged")
        assert not trees.restore_folder(key, "modindex", tmp_path / "again")
        assert not data.exists() and list((tmp_path / "again").iterdir()) == []
    finally:
        for f in trees._file_entry(key, "modindex"):
            f.unlink(missing_ok=True)


def _tree_with_copies(root: Path) -> dict:
    """A small /usr with two identical changelogs, a third of other time, identical fonts and one /etc copy."""
    import os
    files = {"usr/share/doc/a/changelog.gz": 1_600_000_000, "usr/share/doc/b/changelog.gz": 1_600_000_000,
             "usr/share/doc/c/changelog.gz": 1_700_000_000, "usr/share/fonts/x/f1.ttf": 1_600_000_000,
             "usr/share/fonts/x/f2.ttf": 1_600_000_000, "etc/a.conf": 1_600_000_000,
             "etc/b.conf": 1_600_000_000}
    for rel, t in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"same bytes" * 1000)
        os.utime(p, (t, t))
    for d in sorted({p.parent for p in (root / r for r in files)} | {root / "usr/share/doc", root / "usr/share"}):
        os.utime(d, (1_500_000_000, 1_500_000_000))
    return files


def test_identical_files_under_usr_are_linked_with_their_folders_times_kept(tmp_path):
    """hardlink links /usr's identical files of the same time; a file of another time, the font folders a cache
    records and /etc keep their own inodes; the folders' times are the same as before."""
    from diskimages.disk import link_identical_files
    root = tmp_path / "tree"
    _tree_with_copies(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_dir()}
    link_identical_files(root, distros.get("debian"), tmp_path / "log")
    st = lambda rel: (root / rel).stat()
    assert st("usr/share/doc/a/changelog.gz").st_ino == st("usr/share/doc/b/changelog.gz").st_ino
    assert st("usr/share/doc/c/changelog.gz").st_ino != st("usr/share/doc/a/changelog.gz").st_ino
    assert st("usr/share/fonts/x/f1.ttf").st_ino != st("usr/share/fonts/x/f2.ttf").st_ino
    assert st("etc/a.conf").st_ino != st("etc/b.conf").st_ino
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "identical files under /usr linked (hardlink): 1 files" in (tmp_path / "log").read_text()


def test_a_hardlink_with_other_options_leaves_copies_and_says_so(tmp_path, monkeypatch):
    """The hardlink before util-linux's has no --respect-xattrs: the build goes on with the copies."""
    from diskimages.disk import link_identical_files
    root = tmp_path / "tree"
    _tree_with_copies(root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_dir()}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hardlink").write_text("#!/bin/sh\necho 'hardlink: unrecognized option --respect-xattrs' >&2\n"
                                      "exit 1\n")
    (bin_dir / "hardlink").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    link_identical_files(root, distros.get("debian"), tmp_path / "log")
    doc = root / "usr/share/doc"
    assert (doc / "a/changelog.gz").stat().st_ino != (doc / "b/changelog.gz").stat().st_ino
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "hardlink failed, identical files under /usr stay copies" in (tmp_path / "log").read_text()


XFCE_FAILSAFE = """<channel name="xfce4-session" version="1.0">
  <property name="sessions" type="empty">
    <property name="Failsafe" type="empty">
      <property name="Count" type="int" value="2"/>
      <property name="Client0_Command" type="array">
        <value type="string" value="xfwm4"/>
      </property>
      <property name="Client0_Priority" type="int" value="15"/>
      <property name="Client1_Command" type="array">
        <value type="string" value="xfdesktop"/>
      </property>
      <property name="Client1_Priority" type="int" value="35"/>
      <property name="Client1_PerScreen" type="bool" value="false"/>
    </property>
  </property>
</channel>
"""


@pytest.mark.parametrize("recipe,folder", [("debian-13-xfce", "/etc/xdg"),
                                           ("ubuntu-24.04-xubuntu", "/etc/xdg/xdg-xubuntu")])
def test_xfce_session_clients_start_in_one_group_for_new_users(recipe, folder, tmp_path):
    """The step every tool runs, on a tree laid out as the image's: the session file the display manager's session
    reads first, copied into /etc/skel with every priority 15; a recipe's own file in /etc/skel is kept."""
    script = render_script(load_checked(recipe))
    start = script.index("step 'Xfce: the session components start together")
    snippet = script[script.index("\n", start) + 1:script.index("\nstep 'Xfce: the default panel layout")]
    for d in ("/etc/xdg", folder):
        (tmp_path / d.lstrip("/") / XFCE_SESSION_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / d.lstrip("/") / XFCE_SESSION_FILE).write_text(
            XFCE_FAILSAFE.replace("xfdesktop", "from " + d))
    rooted = snippet.replace("/etc/", f"{tmp_path}/etc/")
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    skel = tmp_path / "etc/skel/.config" / XFCE_SESSION_FILE
    out = skel.read_text()
    assert "from " + folder in out
    assert 'Client1_Priority" type="int" value="15"' in out and 'value="35"' not in out
    assert out == XFCE_FAILSAFE.replace("xfdesktop", "from " + folder).replace('value="35"', 'value="15"')
    skel.write_text("the recipe's own")
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert skel.read_text() == "the recipe's own"
    assert "Xfce: the session" not in render_script(load_checked("debian-13-gnome"))


PANEL_LAYOUT = """<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
  </property>
</channel>
"""


@pytest.mark.parametrize("recipe,folder", [("debian-13-xfce", "/etc/xdg"),
                                           ("ubuntu-24.04-xubuntu", "/etc/xdg/xdg-xubuntu")])
def test_the_panel_layout_is_new_users_channel_where_migrate_would_copy_it_as_is(recipe, folder, tmp_path):
    """The step every tool runs, on a laid-out tree: the layout the panel's migrate helper reads first becomes
    /etc/skel's panel channel; not when that layout is older than the current config version (migrate would
    rewrite it), not when a panel channel exists already (a recipe's own, or a system-wide one xfconf reads)."""
    script = render_script(load_checked(recipe))
    start = script.index("step 'Xfce: the default panel layout")
    snippet = script[script.index("\n", start) + 1:script.index("\nstep users")]
    rooted = snippet.replace("/etc/", f"{tmp_path}/etc/")
    layout = "xfce4/panel/default.xml"
    skel = tmp_path / "etc/skel/.config/xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml"
    for d in ("/etc/xdg", folder):
        (tmp_path / d.lstrip("/") / layout).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / d.lstrip("/") / layout).write_text(PANEL_LAYOUT.replace("</channel>", f"<!-- {d} -->\n</channel>"))
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert skel.read_text() == (tmp_path / folder.lstrip("/") / layout).read_text()
    assert "<!-- " + folder + " -->" in skel.read_text()

    skel.write_text("the recipe's own")
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert skel.read_text() == "the recipe's own"

    skel.unlink()
    (tmp_path / folder.lstrip("/") / layout).write_text(PANEL_LAYOUT.replace('value="2"', 'value="1"'))
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert not skel.exists()

    (tmp_path / folder.lstrip("/") / layout).write_text(PANEL_LAYOUT)
    system = tmp_path / "etc/xdg/xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml"
    system.parent.mkdir(parents=True)
    system.write_text(PANEL_LAYOUT)
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert not skel.exists()
    system.unlink()
    subprocess.run(["sh", "-eu", "-c", rooted], check=True)
    assert skel.read_text() == PANEL_LAYOUT
    assert "default panel layout" not in render_script(load_checked("debian-13-gnome"))


def test_what_the_package_phase_left_about_module_indexes_is_kept_counted_and_removed(tmp_path):
    """The build's side: the runs' CPU is counted, a made index is kept for the next build (and only a made
    one), the folder leaves the tree; a link where the folder should be, or a CPU figure that is not one, is
    not followed or counted."""
    import os
    from diskimages import trees
    from diskimages.distros import debian
    from diskimages.tools import get_tool, load_checked, new_state
    tool = get_tool("mmdebstrap")
    key = "sha256:" + os.urandom(32).hex()
    rootfs = tmp_path / "rootfs"
    out = rootfs / debian.DEPMOD_OUT.lstrip("/")
    state = new_state(load_checked("debian-13-minimal"), tmp_path, tmp_path / "log")
    try:
        (out / "6.12.0-amd64").mkdir(parents=True)
        (out / "6.12.0-amd64/modules.dep").write_text("kernel/ext4.ko:\n")
        (out / "6.12.0-amd64.inputs").write_text("ab" * 32 + "\n")
        (out / "cpu_s").write_text("4.27\n")
        how = tool._keep_module_index(state, rootfs, key)
        assert how == "made by depmod for 6.12.0-amd64 (kept for rebuilds)" and state.detached_cpu_s == 4.27
        assert not out.exists()
        assert trees.restore_folder(key, "modindex", tmp_path / "kept")
        assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["6.12.0-amd64", "6.12.0-amd64.inputs"]

        out.mkdir(parents=True)
        (out / "6.12.0-amd64.reused").write_text("")
        (out / "cpu_s").write_text("1e9; rm -rf /\n")
        how = tool._keep_module_index(state, rootfs, key)
        assert how.startswith("reused for 6.12.0-amd64: ") and state.detached_cpu_s == 4.27

        elsewhere = tmp_path / "host-folder"
        elsewhere.mkdir()
        (elsewhere / "cpu_s").write_text("9.0\n")
        out.symlink_to(elsewhere)
        assert tool._keep_module_index(state, rootfs, key) == "" and state.detached_cpu_s == 4.27
        assert (elsewhere / "cpu_s").exists()
    finally:
        for f in trees._file_entry(key, "modindex"):
            f.unlink(missing_ok=True)
