"""A real mmdebstrap build of debian-12-minimal: the image is sound, measured, clean, and boots on BIOS and UEFI."""
import json
import re
import subprocess

import pytest

from diskimages import measure
from diskimages.boot import boot_check
from diskimages.inspect import ImageReader

pytestmark = pytest.mark.build


def test_image_is_a_valid_compressed_qcow2(minimal_build):
    img = minimal_build.image
    assert img.name == "debian-12-minimal.mmdebstrap.qcow2"
    subprocess.run(["qemu-img", "check", str(img)], check=True, capture_output=True)
    info = measure.qemu_img_info(img)
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 << 30
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    # nothing but the image, its record and its log
    assert sorted(p.name for p in img.parent.iterdir()) == sorted(
        [img.name, "debian-12-minimal.mmdebstrap.json", "debian-12-minimal.mmdebstrap.log",
         "debian-12-minimal.mmdebstrap.spdx.json"])


def test_record_has_the_measurements(minimal_build):
    rec = json.loads(minimal_build.record_path.read_text())
    assert rec["tool"] == "mmdebstrap" and rec["tool_version"][0].isdigit()
    assert rec["recipe"] == "debian-12-minimal" and rec["recipe_digest"].startswith("sha256:")
    assert set(rec["phases"]) == {"bootstrap", "customize", "assemble", "compress"}
    assert all(p["wall_s"] > 0 for p in rec["phases"].values())
    assert rec["packages"] > 100
    assert rec["file_bytes"] == minimal_build.image.stat().st_size < rec["allocated_bytes"] < rec["virtual_bytes"]
    assert rec["rootfs_bytes"] > 200 << 20
    assert rec["sha256"] == measure.sha256_file(minimal_build.image)
    assert rec["downloaded_bytes"] is not None
    df = measure.load_records(minimal_build.record_path.parent)
    assert len(df) == 1 and df.loc[0, "bootstrap_wall_s"] == rec["phases"]["bootstrap"]["wall_s"]
    table = measure.summary_table(df)
    assert list(table.columns[:3]) == ["tool", "version", "recipe"] and table.loc[0, "packages"] == rec["packages"]


def test_manifest_is_valid_spdx_and_matches_dpkg_inside_the_image(minimal_build):
    """The SBOM beside the image parses and validates with spdx-tools, and lists exactly what dpkg says is
    installed in the image (name, version, architecture), each with its purl."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from diskimages import manifest
    from diskimages.distros.debian import _paragraphs
    rec = json.loads(minimal_build.record_path.read_text())
    path = minimal_build.image.with_name(rec["manifest"])
    assert path.name == "debian-12-minimal.mmdebstrap.spdx.json"
    doc = parse_file(str(path))
    assert validate_full_spdx_document(doc) == []
    assert doc.creation_info.spdx_version == "SPDX-2.3"
    rows = manifest.load(path)
    with ImageReader(minimal_build.image) as r:
        status = _paragraphs(r.read("/var/lib/dpkg/status"))
    installed = {(p["package"], p["version"], p["architecture"]) for p in status
                 if p.get("status", "").endswith(" installed")}
    assert {(x["name"], x["version"], x["architecture"]) for x in rows} == installed
    assert rec["manifest_packages"] == len(installed) == rec["packages"]
    bash = next(x for x in rows if x["name"] == "bash")
    assert bash["purl"].startswith("pkg:deb/debian/bash@") and "distro=debian-12" in bash["purl"]
    assert bash["license"] == "GPL-3.0-or-later"               # bash's DEP-5 "GPL-3+" as SPDX
    assert 0 < rec["manifest_licenses_declared"] < len(rows)


def test_image_contents_follow_the_recipe_and_are_clean(minimal_build):
    with ImageReader(minimal_build.image) as r:
        assert r.read("/etc/hostname").strip() == "debian-minimal"
        assert "user:x:1000:1000" in r.read("/etc/passwd")
        shadow = r.read("/etc/shadow")
        assert "user:$6$diskimagesuser$" in shadow and "root:!" in shadow
        assert "sudo:x:27:user" in r.read("/etc/group")
        assert r.read("/etc/machine-id") == ""                      # generated at first boot
        assert not [f for f in r.listdir("/etc/ssh") if f.startswith("ssh_host_")]
        assert r.listdir("/var/lib/apt/lists") == ["partial"]
        assert not [f for f in r.listdir("/var/cache/apt/archives") if f.endswith(".deb")]
        assert not r.exists("/var/tmp/diskimages") and not r.exists("/usr/sbin/policy-rc.d")
        assert "root=UUID=" in r.read("/boot/grub/grub.cfg")
        # the ESP is mounted by its volume id: the one in fstab is the one on the disk
        esp = [line.split()[0] for line in r.read("/etc/fstab").splitlines() if " /boot/efi " in line]
        table = json.loads(subprocess.run(["sfdisk", "--json", str(r.raw)], capture_output=True, text=True,
                                          check=True).stdout)["partitiontable"]
        start = next(p["start"] for p in table["partitions"] if p.get("name") == "esp") * table["sectorsize"]
        blkid = subprocess.run(["blkid", "-p", "-O", str(start), "-s", "UUID", "-o", "value", str(r.raw)],
                               capture_output=True, text=True).stdout.strip()
        assert esp == [f"UUID={blkid}"]
        assert r.exists("/etc/systemd/system/multi-user.target.wants/ssh.service")
        assert r.exists("/etc/systemd/system/multi-user.target.wants/diskimages-ssh-keygen.service")
        # /usr merged by mmdebstrap's hook, as debootstrap and mkosi do it: no usrmerge, and none of its perl
        assert "Size: 7\n" in r.debugfs("stat /bin") and "Type: symlink" in r.debugfs("stat /bin")
        installed = set(re.findall(r"^Package: (\S+)", r.read("/var/lib/dpkg/status"), re.M))
        assert "usr-is-merged" in installed and not {"usrmerge", "perl", "perl-modules-5.36"} & installed

def test_identical_files_under_usr_share_one_inode_and_nothing_else_is_linked(minimal_build):
    """Packages of one source ship the same changelog: under /usr the copies become links to one inode (the
    bytes every path reads are the same); /boot's GRUB modules, copies of /usr/lib/grub's that grub-install
    overwrites in place, stay separate files."""
    def inode(r, path):
        out = r.debugfs(f"stat {path}")
        m = re.search(r"Inode: (\d+).*?Links: (\d+)", out, re.S)
        assert m, (path, out[:200])
        return int(m.group(1)), int(m.group(2))
    with ImageReader(minimal_build.image) as r:
        pam = [inode(r, f"/usr/share/doc/{p}/changelog.gz") for p in ("libpam0g", "libpam-runtime", "libpam-modules")]
        assert len({i for i, _ in pam}) == 1 and pam[0][1] >= 3, pam
        boot, usr = inode(r, "/boot/grub/i386-pc/normal.mod"), inode(r, "/usr/lib/grub/i386-pc/normal.mod")
        assert boot[0] != usr[0] and boot[1] == usr[1] == 1, (boot, usr)
    log = minimal_build.image.with_suffix(".log").read_text()
    assert re.search(r"identical files under /usr linked \(hardlink\): [1-9]\d* files", log)



@pytest.mark.boot
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_to_login(minimal_build, firmware, tmp_path):
    res = boot_check(minimal_build.image, minimal_build.record, firmware=firmware, screenshot_dir=tmp_path,
                     backend="qemu")
    assert res.passed, res.reason
    assert res.firmware == firmware and "login" in res.milestones and "systemd" in res.milestones
    assert res.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    assert len(Image.open(res.screenshot).convert("RGB").getcolors(1 << 16)) > 1
    assert b"debian-minimal login:" in res.serial_log.read_bytes()


@pytest.mark.boot
def test_unbootable_disk_fails_clearly(tmp_path):
    bad = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(bad), "1G"], check=True)
    res = boot_check(bad, firmware="bios", expect="login", timeout=150, screenshot_dir=tmp_path, backend="qemu")
    assert not res.passed
    assert "no output on the serial console" in res.reason
    assert res.seconds < 150
    assert not list(tmp_path.glob("diskimages-vm-*"))


def test_a_second_build_with_the_same_content_key_is_skipped(minimal_build):
    """The same recipe, tool, configuration and resolved packages: no build, the image is reused in seconds and
    the record says so; an image changed on disk since is not reused."""
    import time
    from diskimages.build import _reusable, build, content_key
    from diskimages.tools import get_tool, load_checked
    rec = minimal_build.record
    assert rec["content_key"].startswith("sha256:") and rec["resolved_packages"] > 100 and rec["reused"] is False
    before = minimal_build.image.stat().st_mtime_ns
    t0 = time.monotonic()
    again = build("debian-12-minimal", "mmdebstrap", minimal_build.image.parent, progress=False)
    took = time.monotonic() - t0
    assert took < 5, took
    assert again.record["reused"] is True and again.record["reused_image"] == minimal_build.image.name
    assert again.record["content_key"] == rec["content_key"] and again.record["sha256"] == rec["sha256"]
    assert minimal_build.image.stat().st_mtime_ns == before                 # not rewritten
    assert json.loads(minimal_build.record_path.read_text())["reused"] is True
    key, _ = content_key(load_checked("debian-12-minimal"), get_tool("mmdebstrap"))
    os_touch = minimal_build.image.stat()
    import os
    os.utime(minimal_build.image, ns=(os_touch.st_atime_ns, os_touch.st_mtime_ns + 1))
    try:
        assert _reusable(minimal_build.image, minimal_build.record_path, key) is None
    finally:
        os.utime(minimal_build.image, ns=(os_touch.st_atime_ns, os_touch.st_mtime_ns))


def test_two_builds_of_the_same_recipe_are_bit_identical(minimal_build, no_kept_initramfs, tmp_path):
    """The same recipe and resolved packages built again from the same cache: the same sha256 for the qcow2 and
    for the raw disk inside it; its identifiers come from the content key and its times from the packages. The
    first build ran depmod, the second copies its outputs: the same bytes either way. When they differ, the
    failure is diffoscope's account of why."""
    from diskimages.build import build
    from diskimages.inspect import why_images_differ
    rec = minimal_build.record
    assert rec["reproducible"] is True and rec["source_date_epoch_from"] == "newest file the packages ship"
    assert rec["initrd"].startswith("made in")     # and made again below (no_kept_initramfs), not copied
    again = build("debian-12-minimal", "mmdebstrap", tmp_path, progress=False, rebuild=True)
    assert again.record["content_key"] == rec["content_key"] and again.record["reused"] is False
    assert again.record["initrd"].startswith("made in"), again.record["initrd"]
    assert rec["module_index"].startswith("made by depmod for ") and "kept for rebuilds" in rec["module_index"]
    assert again.record["module_index"].startswith("reused for "), again.record["module_index"]
    if again.record["sha256"] != rec["sha256"]:
        pytest.fail("two builds differ: " + why_images_differ(minimal_build.image, again.image), pytrace=False)
    raws = []
    for image in (minimal_build.image, again.image):
        raw = tmp_path / f"{len(raws)}.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
        raws.append(measure.sha256_file(raw))
        raw.unlink()
    assert raws[0] == raws[1]
    assert again.record["root_uuid"] == rec["root_uuid"] and again.record["source_date_epoch"] == \
        rec["source_date_epoch"] < again.record["image_mtime_ns"] // 10**9


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def test_native_build_makes_one_zstd_initramfs_and_ships_first_boot_caches(minimal_build):
    """The kernel's hook and initramfs-tools' trigger make no initramfs while packages install; assembly makes the
    only one, zstd-compressed; console-setup's cache and systemd's "caches current" stamps are in the image, so
    the first boot does not build them; the package manager's timed output is in the log."""
    log = minimal_build.log.read_text()
    assert log.count("update-initramfs: Generating") == 1, log.count("update-initramfs: Generating")
    assert "No zstd" not in log
    assert "Processing triggers for initramfs-tools" in log                  # the trigger ran, and made nothing
    assert "] Unpacking bash " in log                                         # timed dpkg output
    # apt-get update started from resolution's lists a moment ago: it fetched no Packages file again
    update = log[log.index("I: running apt-get update"):log.index("I: downloading packages with apt")]
    assert "Hit:" in update or "Get:" in update, update
    assert not re.search(r"Get:\d+ .* Packages \[", update), update
    kver = minimal_build.record["kernel"]
    with ImageReader(minimal_build.image) as r:
        r.debugfs(f"dump /boot/initrd.img-{kver} {r.tmp}/initrd")
        data = (r.tmp / "initrd").read_bytes()
        assert data[:4] == ZSTD_MAGIC or ZSTD_MAGIC in data[:1 << 20], data[:8]
        assert [f for f in r.listdir("/etc/console-setup") if f.startswith("cached_setup_keyboard")]
        # and console-setup trusts it: newer than its inputs (console-setup.sh: `-nt`)
        mtime = {p: int(re.search(r"mtime: 0x([0-9a-f]+)", r.debugfs(f"stat {p}")).group(1), 16)
                 for p in ("/etc/console-setup/cached_setup_terminal.sh", "/etc/default/keyboard",
                           "/etc/default/console-setup")}
        assert mtime["/etc/console-setup/cached_setup_terminal.sh"] > max(
            mtime["/etc/default/keyboard"], mtime["/etc/default/console-setup"]), mtime
        assert r.read("/etc/.updated").startswith("# This file was created by systemd-update-done")
        assert "set timeout=0" in r.read("/boot/grub/grub.cfg")
        # a console image is often run headless: GRUB's menu stays reachable from the serial port
        assert "\nterminal_input console serial\n" in r.read("/boot/grub/grub.cfg")
        unit = r.read("/etc/systemd/system/diskimages-ssh-keygen.service")
        assert "CPUSchedulingPolicy=idle" in unit and "After=display-manager.service" in unit
        assert r.read("/var/lib/dpkg/info/man-db.list") == "" or r.exists("/var/lib/man-db/auto-update")
        # the kernel's depmod ran in the background and was waited for: its index is there, its helper is not
        assert "kernel/fs/ext4/ext4.ko" in r.read(f"/usr/lib/modules/{kver}/modules.dep")
        assert not r.exists("/usr/local/sbin/depmod") and not r.exists("/var/tmp/diskimages-depmod")
        assert not r.exists("/usr/local/sbin/diskimages-depmod-early")
        assert not r.exists("/etc/dpkg/dpkg.cfg.d/79diskimages-package-phase")
        assert not r.exists("/etc/apt/apt.conf.d/79diskimages-package-phase")
        assert r.exists("/etc/apt/apt.conf.d/70debconf")          # debconf's pre-configuration is back
    # and the kernel's postinst called the stand-in, first in the PATH apt gives maintainer scripts
    assert re.search(r"diskimages: waited for [1-9]\d* depmod run", log), "depmod ran in the foreground"


def test_initramfs_has_the_storage_drivers_and_no_network_drivers(minimal_build):
    """A disk image's initramfs: MODULES=most's disk, bus and input drivers (virtio, AHCI, NVMe, USB storage,
    ext4) and their hidden dependencies, but none of the drivers only a root on the network needs, and no root
    file system but the image's own."""
    import zstandard
    kver = minimal_build.record["kernel"]
    with ImageReader(minimal_build.image) as r:
        r.debugfs(f"dump /boot/initrd.img-{kver} {r.tmp}/initrd")
        data = (r.tmp / "initrd").read_bytes()
    cpio = zstandard.ZstdDecompressor().decompressobj().decompress(data[data.index(ZSTD_MAGIC):])
    names = set(re.findall(rb"/kernel/([\w/.+-]+\.ko)", cpio))
    for needed in (b"drivers/block/virtio_blk.ko", b"drivers/ata/ahci.ko", b"drivers/nvme/host/nvme.ko",
                   b"drivers/usb/storage/usb-storage.ko", b"drivers/scsi/virtio_scsi.ko", b"fs/ext4/ext4.ko",
                   b"drivers/hid/hid-generic.ko", b"drivers/pci/controller/vmd.ko",
                   b"crypto/crc32c_generic.ko"):
        assert needed in names, (needed, len(names))
    # the root's fsck runs in the initramfs (FSTYPE named: a build cannot probe the device), not later in the boot
    assert re.search(rb"sbin/fsck\.ext4\0", cpio) and re.search(rb"sbin/e2fsck\0", cpio)
    # local SCSI, SAS and RAID controllers and the hypervisors' disks stay
    for needed in (b"drivers/scsi/sd_mod.ko", b"drivers/scsi/hv_storvsc.ko", b"drivers/scsi/vmw_pvscsi.ko",
                   b"drivers/message/fusion/mptspi.ko", b"drivers/scsi/megaraid/megaraid_sas.ko",
                   b"drivers/scsi/mpt3sas/mpt3sas.ko", b"drivers/block/xen-blkfront.ko"):
        assert needed in names, needed
    # the network drivers go, and with them what only storage on a network uses: SAN adapters (which would
    # bring network drivers back), NVMe over fabrics, network block devices and InfiniBand
    assert not [n for n in names if n.startswith((b"drivers/net/", b"drivers/infiniband/", b"drivers/target/"))]
    for gone in (b"drivers/scsi/lpfc/lpfc.ko", b"drivers/scsi/qla2xxx/qla2xxx.ko", b"drivers/scsi/fcoe/fcoe.ko",
                 b"drivers/scsi/iscsi_tcp.ko", b"drivers/nvme/host/nvme-tcp.ko", b"drivers/block/nbd.ko",
                 b"drivers/block/rbd.ko", b"drivers/block/drbd/drbd.ko"):
        assert gone not in names, gone
    assert len(names) > 300, len(names)        # MODULES=list alone would have taken almost nothing
    # root file systems other than the image's own go (the base class takes them all), with what NFS uses
    assert not [n for n in names if n.startswith((b"fs/btrfs/", b"fs/xfs/", b"fs/nfs", b"net/sunrpc/"))], \
        sorted(n for n in names if n.startswith(b"fs/"))


def _after_uncompressed_cpios(data: bytes) -> int:
    """Where the compressed part of an initramfs starts: after its uncompressed newc archives (early microcode,
    compressed modules) and the zeros that pad them."""
    pos = 0
    while data[pos:pos + 6] == b"070701":
        while True:
            namesize, filesize = int(data[pos + 94:pos + 102], 16), int(data[pos + 54:pos + 62], 16)
            name = data[pos + 110:pos + 110 + namesize - 1]
            pos = (pos + 110 + namesize + 3) & ~3
            pos = (pos + filesize + 3) & ~3
            if name == b"TRAILER!!!":
                break
        while pos < len(data) and data[pos] == 0:
            pos += 1
    return pos


def test_trixie_initramfs_has_its_root_file_system_and_no_others(tmp_path):
    """initramfs-tools 0.148 (trixie) queues the modules the hooks name and copies them after the hooks, and puts
    compressed modules (.ko.xz) in an uncompressed cpio before the zstd one: the other root file systems must
    leave the queue there, not only the initramfs tree as on bookworm."""
    import zstandard
    from diskimages.build import build
    res = build("debian-13-minimal", "mmdebstrap", tmp_path, progress=False)
    kver = res.record["kernel"]
    with ImageReader(res.image) as r:
        r.debugfs(f"dump /boot/initrd.img-{kver} {r.tmp}/initrd")
        data = (r.tmp / "initrd").read_bytes()
    start = _after_uncompressed_cpios(data)
    assert data[start:start + 4] == ZSTD_MAGIC, data[start:start + 8]
    everything = data[:start] + zstandard.ZstdDecompressor().decompressobj().decompress(data[start:])
    names = set(re.findall(rb"/kernel/([\w/.+-]+?\.ko)(?:\.xz|\.zst)?\0", everything))
    for needed in (b"fs/ext4/ext4.ko", b"drivers/block/virtio_blk.ko", b"drivers/ata/ahci.ko",
                   b"drivers/nvme/host/nvme.ko", b"drivers/scsi/sd_mod.ko"):
        assert needed in names, (needed, len(names))
    assert not [n for n in names if n.startswith((b"fs/btrfs/", b"fs/xfs/", b"fs/f2fs/", b"fs/nfs",
                                                  b"net/sunrpc/", b"drivers/net/"))], \
        sorted(n for n in names if n.startswith((b"fs/", b"net/")))
    assert len(names) > 300, len(names)


def test_lean_image_has_no_docs_but_keeps_licences(minimal_build, tmp_path):
    """`lean: true`: no man pages or documentation, translations and a charmap only for the locale, licence files
    kept (the manifest's licences are the same), a smaller root, and dpkg keeps the rule for later installs."""
    from diskimages.build import build
    from diskimages.tools import load_checked
    recipe = load_checked("debian-12-minimal").model_copy(update={"lean": True, "locale": "en_US.UTF-8"})
    lean = build(recipe, "mmdebstrap", tmp_path, progress=False)
    rec, full = lean.record, minimal_build.record
    assert rec["lean"] is True and full["lean"] is False
    assert rec["manifest_licenses_declared"] == full["manifest_licenses_declared"]
    assert rec["packages"] == full["packages"]
    assert rec["rootfs_bytes"] < full["rootfs_bytes"] - (10 << 20), (rec["rootfs_bytes"], full["rootfs_bytes"])
    with ImageReader(lean.image) as r:
        assert r.listdir("/usr/share/man") == [] and r.listdir("/usr/share/info") == []
        assert set(r.listdir("/usr/share/doc/bash")) == {"copyright"}
        assert "path-exclude=/usr/share/doc/*" in r.read("/etc/dpkg/dpkg.cfg.d/90-diskimages-lean")
        assert set(r.listdir("/usr/share/locale")) <= {"en", "en_US", "locale.alias"}, r.listdir("/usr/share/locale")
        # one charmap is left, and locale-gen made the recipe's locale from it
        assert r.listdir("/usr/share/i18n/charmaps") == ["UTF-8.gz"]
        r.debugfs(f"dump /usr/lib/locale/locale-archive {r.tmp}/locale-archive")
        assert b"en_US.utf8" in (r.tmp / "locale-archive").read_bytes()
    with ImageReader(minimal_build.image) as r:
        assert len(r.listdir("/usr/share/i18n/charmaps")) > 100


def test_reuse_from_pulls_the_published_image_with_the_same_content_key(minimal_build, tmp_path, monkeypatch):
    """`build --reuse-from HOST/REPO`: the image pushed by another build (tagged ck-KEY by every push) is pulled,
    verified and put in place instead of building; the next build reuses it locally; an image whose record names
    another key is refused with a line naming the registry."""
    import hashlib
    import time
    from diskimages import publish
    from diskimages.build import build
    from diskimages.localregistry import LocalRegistry
    from diskimages.registry import Ref, RegistryClient, RegistryError
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    for k in ("DISKIMAGES_REGISTRY_USER", "DISKIMAGES_REGISTRY_PASSWORD", "DISKIMAGES_REGISTRY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    key = minimal_build.record["content_key"]
    with LocalRegistry(tmp_path / "storage") as reg:
        repo = f"{reg.host}/ci/images"
        pushed = publish.push(minimal_build.image, f"{repo}:v1", progress=False)
        t0 = time.monotonic()
        got = build("debian-12-minimal", "mmdebstrap", tmp_path / "out", progress=False, reuse_from=repo)
        took = time.monotonic() - t0
        assert got.record["reused_from"] == f"{repo}@{pushed.digest}" and got.record["content_key"] == key
        assert "sha256:" + hashlib.sha256(got.image.read_bytes()).hexdigest() == minimal_build.record["sha256"]
        assert (got.image.parent / got.record["manifest"]).is_file()
        assert not [p.name for p in got.image.parent.iterdir() if p.name.startswith(".")]
        assert took < 30, took
        again = build("debian-12-minimal", "mmdebstrap", tmp_path / "out", progress=False)
        assert again.record["reused"] is True and again.record["sha256"] == minimal_build.record["sha256"]

        # a registry whose ck- tag names an image of another key: refused, nothing written
        other = f"{reg.host}/ci/other"
        c = RegistryClient(reg.host)
        publish.push(minimal_build.image, f"{other}:v1", progress=False,
                     record={**minimal_build.record, "content_key": "sha256:" + "0" * 64})
        raw, mtype, _ = c.get_manifest_raw(Ref.parse(f"{other}:v1"))
        c.put_manifest(Ref.parse(f"{other}:v1"), raw, mtype, reference=publish.content_key_tag(key))
        dest = tmp_path / "hostile" / minimal_build.image.name
        dest.parent.mkdir()
        with pytest.raises(RegistryError, match=f"{reg.host}: .*names content key 'sha256:0000"):
            publish.fetch_by_content_key(other, key, {dest.name: dest}, progress=False)
        assert list(dest.parent.iterdir()) == []
        assert publish.fetch_by_content_key(f"{reg.host}/ci/empty", key, {dest.name: dest}, progress=False) is None


def test_incremental_rebuild_restores_the_package_phase_and_a_damaged_cache_is_rebuilt(tmp_path):
    """`incremental`: the first build keeps the tree after the package phase; a recipe that changes only the
    hostname restores it (no package phase) and has the same packages; a damaged entry is detected by its
    checksum, discarded and the tree made again."""
    from diskimages import trees
    from diskimages.build import build, content_key
    from diskimages.tools import get_tool, load_checked
    recipe = load_checked("debian-12-minimal")
    _, info = content_key(recipe, get_tool("mmdebstrap"))
    for p in trees._entry(info["tree_key"]):
        p.unlink(missing_ok=True)
    full = build(recipe, "mmdebstrap", tmp_path / "a", progress=False, incremental=True)
    assert full.record["incremental"].startswith("kept the package phase's tree"), full.record["incremental"]
    changed = recipe.model_copy(update={"hostname": "changed-host"})
    inc = build(changed, "mmdebstrap", tmp_path / "b", progress=False, incremental=True)
    assert inc.record["incremental"].startswith("restored"), inc.record["incremental"]
    assert inc.record["phases"]["bootstrap"]["wall_s"] < full.record["phases"]["bootstrap"]["wall_s"] / 2
    assert inc.record["manifest_packages"] == full.record["manifest_packages"]
    assert inc.record["content_key"] != full.record["content_key"]
    assert inc.record["initrd"].startswith("reused"), inc.record["initrd"]
    with ImageReader(inc.image) as r:
        assert r.read("/etc/hostname").strip() == "changed-host"
    tarball, _ = trees._entry(info["tree_key"])
    with open(tarball, "r+b") as f:
        f.seek(tarball.stat().st_size // 2)
        f.write(b"damaged")
    again = build(recipe.model_copy(update={"hostname": "third-host"}), "mmdebstrap", tmp_path / "c",
                  progress=False, incremental=True)
    assert again.record["incremental"].startswith("kept the package phase's tree"), again.record["incremental"]
    assert trees.restore(info["tree_key"], tmp_path / "check")         # the new entry is sound


def test_a_package_that_moved_since_resolving_fails_the_build_naming_it(tmp_path):
    """The content key names the resolved package set; when the mirror's index moves between resolving and
    building, the native build installs another version: it fails naming the package, and leaves no image."""
    from diskimages.build import build, content_key
    from diskimages.paths import cache_dir
    from diskimages.tools import get_tool, load_checked
    recipe = load_checked("debian-12-minimal")
    _, info = content_key(recipe, get_tool("mmdebstrap"))
    answer = next(p for p in cache_dir("resolve", "debian-bookworm-amd64").glob("resolved-*.json")
                  if json.loads(p.read_text()) == info["_resolved"])
    saved = answer.read_text()
    moved = [("bash=0.0-moved" if x.startswith("bash=") else x) for x in json.loads(saved)]
    answer.write_text(json.dumps(moved))
    try:
        with pytest.raises(RuntimeError, match=r"index changed between resolving and building: bash was resolved "
                                               r"to 0\.0-moved but \S+ was installed"):
            build(recipe, "mmdebstrap", tmp_path, progress=False, rebuild=True)
        assert not list(tmp_path.glob("*.qcow2")) and not list(tmp_path.glob(".*"))
    finally:
        answer.write_text(saved)


def _copy_published(minimal_build, dest, **record_changes):
    """The image, its record (with `record_changes`) and its manifest, as a user would have downloaded them."""
    import shutil
    dest.mkdir()
    image = dest / minimal_build.image.name
    shutil.copy(minimal_build.image, image)
    rec = {**json.loads(minimal_build.record_path.read_text()), **record_changes}
    (dest / minimal_build.record_path.name).write_text(json.dumps(rec))
    spdx = minimal_build.image.with_name(minimal_build.record["manifest"])
    shutil.copy(spdx, dest / spdx.name)
    return image, dest / spdx.name


def test_verify_rebuilds_a_published_image_and_finds_the_same_digest(minimal_build, tmp_path, monkeypatch):
    """`verify HOST/REPO:TAG`: pulled, rebuilt from its recipe with its manifest's packages, the same sha256."""
    from diskimages import publish
    from diskimages.cli import main as cli_main
    from diskimages.localregistry import LocalRegistry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    with LocalRegistry(tmp_path / "storage") as reg:
        ref = f"{reg.host}/verify/minimal:v1"
        publish.push(minimal_build.image, ref, progress=False)
        assert cli_main(["verify", "-q", ref, "--work-dir", str(tmp_path)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["storage"]            # the rebuild left nothing


def test_verify_says_exactly_why_an_image_cannot_be_verified(minimal_build, tmp_path, capsys):
    """No rebuild when the answer is known: packages gone from the mirror are named with both versions, another
    recipe is named, an image that is not its record's is caught, and a hostile record names its field."""
    from diskimages.cli import main as cli_main
    from diskimages.verify import verify
    image, spdx = _copy_published(minimal_build, tmp_path / "moved", content_key="sha256:" + "1" * 64)
    doc = json.loads(spdx.read_text())
    bash = next(p for p in doc["packages"] if p.get("name") == "bash")
    now = bash["versionInfo"]
    bash["versionInfo"] = "4.0-1"
    spdx.write_text(json.dumps(doc))
    v = verify(image, progress=False)
    assert v.outcome == "cannot verify" and v.exit_code == 3
    assert "the mirror no longer has the image's exact packages: 1 gone" in v.reason
    assert f"bash 4.0-1 (the mirror now has {now})" in v.reason

    image, _ = _copy_published(minimal_build, tmp_path / "recipe", recipe_digest="sha256:" + "2" * 64)
    v = verify(image, progress=False)
    assert v.outcome == "cannot verify" and "debian-12-minimal.yaml is not the recipe the image was built from" \
        in v.reason

    image, _ = _copy_published(minimal_build, tmp_path / "other", sha256="sha256:" + "3" * 64)
    v = verify(image, progress=False)
    assert v.outcome == "differs" and v.exit_code == 1 and "not the image its record describes" in v.reason

    image, _ = _copy_published(minimal_build, tmp_path / "hostile", tool="../../bin/sh")
    assert cli_main(["verify", str(image)]) == 2
    err = capsys.readouterr().err
    assert "field tool is '../../bin/sh'" in err and "Traceback" not in err and len(err.splitlines()) == 1
