"""Disk assembly: a root file system tree -> a partitioned raw disk that boots on BIOS and/or UEFI.

No loop devices, no mounts, no partition scanning, no VM, so it works the same on every host (including
kernels without vfat, partition parsers or device-mapper):
  * GPT written by sfdisk into a sparse file;
  * the root ext4 made and populated in place by `mkfs.ext4 -E offset=... -d TREE`;
  * the ESP made by `mkfs.fat --offset`, filled with mtools;
  * GRUB images made by the image's own grub-mkimage (so the boot loader matches the image's release):
    x86_64-efi as the removable-media path EFI/BOOT/BOOTX64.EFI, i386-pc core.img embedded in the BIOS boot
    partition with boot.img in the MBR (what grub-bios-setup does, which refuses plain files).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import distros, qcow2, reproducible, runner, trees
from .chroot import chroot_run
from .distros import Distribution
from .recipe import Recipe
from .reproducible import Seed
from .errors import Failure, InputError

SECTOR = 512
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SERIAL_CONSOLE = "console=tty0 console=ttyS0,115200n8"
GRUB_MODULES = ("part_gpt part_msdos ext2 fat search search_fs_uuid search_label normal linux configfile echo test "
                "all_video gzio serial terminal ls cat").split()
LINUX_TYPES = {LINUX, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "83"}   # Linux data, x86-64 root, MBR Linux
ASSEMBLY_METHOD = "loop-free: sfdisk + mkfs.ext4 -d at offset + mkfs.fat/mtools + grub-mkimage"


@dataclass
class DiskInfo:
    """What the record needs from a finished raw disk (read from the disk itself, or told by the tool)."""
    root_uuid: str
    kernel: str
    packages: int
    rootfs_bytes: int


@dataclass
class Partition:
    name: str
    type: str
    start: int = 0   # sectors
    size: int = 0    # sectors
    uuid: str = ""   # the partition's GUID ("": sfdisk draws one)

    @property
    def offset(self) -> int:
        return self.start * SECTOR


@dataclass
class Layout:
    partitions: list[Partition] = field(default_factory=list)
    root_uuid: str = ""
    esp_id: str = ""
    disk_id: str = ""   # the GPT disk GUID ("": sfdisk draws one)
    initrd: str = ""    # how the initramfs came to be (for the record)

    def get(self, name: str) -> Optional[Partition]:
        return next((p for p in self.partitions if p.name == name), None)


def initrd_key(recipe: Recipe, distro: Distribution, rootfs: Path, kver: str, tree_key: Optional[str],
               seed: Optional[Seed]) -> Optional[str]:
    """What an initramfs is made from: the tree's packages (its incremental key), the kernel, the date it
    carries, the distribution's initramfs configuration as customised, and the recipe's own files and scripts.
    None where nothing can be reused (no tree key, or the distribution does not say what its generator reads)."""
    inputs = distro.initrd_inputs_digest(rootfs) if tree_key else None
    if inputs is None:
        return None
    from . import __version__
    return "sha256:" + hashlib.sha256(json.dumps([tree_key, kver, seed.epoch if seed else None, inputs,
                                                  recipe.overlay_digest(), __version__]).encode()).hexdigest()


def ensure_initrd(distro: Distribution, rootfs: Path, kver: str, log: Optional[Path] = None,
                  seed: Optional[Seed] = None, reuse_key: Optional[str] = None) -> str:
    """Make the initramfs inside the image when the tool left none (the native path holds it back until
    customisation is done; mkosi's directory output has none), reproducibly when seeded (the initramfs tools
    honour SOURCE_DATE_EPOCH). With `reuse_key` (a build that keeps caches), the one made before from the same
    inputs is copied instead: a rebuild, or a changed hostname or user, does not make it again (on 2 cores
    the Debian generator takes 15-17 s, mostly one shell step per kernel module). Returns what happened."""
    import time
    target = rootfs / distro.initrd_file(kver)
    if target.exists():
        return "left by the tool"
    if reuse_key and trees.restore_file(reuse_key, "initrd", target):
        how = (f"reused: made before from the same packages, kernel, date and configuration "
               f"({target.stat().st_size >> 20} MiB)")
        runner.note(log, "initramfs " + how)
        return how
    t0 = time.monotonic()
    chroot_run(rootfs, distro.initrd_command(kver), log=log,
               env={**distro.chroot_env(), **(seed.env() if seed else {})})
    if reuse_key and target.is_file():
        trees.save_file(reuse_key, "initrd", target)
    return f"made in {time.monotonic() - t0:.1f} s" + (" (kept for rebuilds)" if reuse_key else "")


def grub_terminal_input(recipe: Recipe) -> str:
    """Where GRUB reads keys. GRUB with the serial port among its inputs boots 3.0 s later (measured under TCG,
    GRUB 2.06 and 2.12 alike, with nothing attached to the port): a desktop image, whose menu is reached from
    the keyboard, leaves it out; a console image, often run headless, keeps it."""
    return "console" if recipe.desktop != "none" else "console serial"


def grub_cfg(recipe: Recipe, layout: Layout, kver: str, rootfs: Path, distro: Distribution) -> str:
    kernel, initrd = distro.kernel_path(rootfs, kver), distro.initrd_path(rootfs, kver)
    title = recipe.description or recipe.name
    return f"""\
# written by diskimages
# no wait: Esc (or F4) pressed or held while GRUB starts shows the menu
set timeout_style=hidden
set timeout=0
serial --unit=0 --speed=115200
terminal_input {grub_terminal_input(recipe)}
terminal_output console serial
insmod part_gpt
insmod ext2
insmod all_video
search --no-floppy --fs-uuid --set=root {layout.root_uuid}
menuentry '{title.replace("'", "")}' {{
  linux {kernel} root=UUID={layout.root_uuid} ro {SERIAL_CONSOLE} {recipe.kernel_cmdline}
  initrd {initrd}
}}
"""


def start_regenerating_caches(pool: ThreadPoolExecutor, rootfs: Path, distro: Distribution,
                              seed: Optional[Seed]) -> list:
    """The distribution's `regenerated_caches`, made inside the tree beside the boot configuration. Seeded, their
    inputs are clamped first, so the caches record the times the image keeps. `caches_written` waits until
    they are written, `finish_regenerating_caches` until their commands have ended."""
    jobs = []
    for folder, cache in distro.regenerated_caches.items():
        if not any((rootfs / d / cache.command[0]).is_file() for d in ("usr/bin", "usr/sbin", "bin", "sbin")):
            continue
        if seed:
            for rel in cache.inputs:
                if (rootfs / rel).is_dir():
                    reproducible.clamp_times(rootfs / rel, seed.epoch)
        jobs.append((folder, cache.command, pool.submit(chroot_run, rootfs, cache.command, capture=True,
                                                        env={**distro.chroot_env(), **(seed.env() if seed else {})})))
    return jobs


def _asleep(rootfs: Path, program: str) -> bool:
    """Whether `program`, running chrooted in `rootfs`, is blocked in a sleep (False where /proc does not say)."""
    root = str(Path(rootfs).resolve())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == program[:15] and os.readlink(d / "root") == root:
                return (d / "wchan").read_text().strip() in ("hrtimer_nanosleep", "do_nanosleep")
        except OSError:
            continue
    return False


def caches_written(jobs: list, rootfs: Path, seed: Optional[Seed]) -> None:
    """Waits until each of `start_regenerating_caches`' commands has ended or sleeps; seeded, then clamps the
    folders they wrote to (and the folder holding each: the clamp of the rest of the tree skipped them).
    fc-cache's last act, once its caches are written and closed, is a fixed 2 s sleep (so that later changes
    get newer times than those it recorded; here every time is clamped anyway): the disk is made meanwhile."""
    for folder, cmd, job in jobs:
        while not job.done() and not _asleep(rootfs, cmd[0]):
            time.sleep(0.02)
        if seed and (rootfs / folder).is_dir():
            reproducible.clamp_times((rootfs / folder).parent, seed.epoch)


def finish_regenerating_caches(jobs: list, log: Optional[Path] = None) -> None:
    """Waits for `start_regenerating_caches`' commands to end: a failed one raises here."""
    for folder, cmd, job in jobs:
        out = job.result().strip()
        runner.note(log, f"/{folder} made in the finished tree ({' '.join(cmd)})" +
                    (f": {out[-300:]}" if out else ""))


def plan_layout(recipe: Recipe, seed: Optional[Seed] = None) -> Layout:
    """The partitions the recipe's firmware needs, with identifiers drawn at random, or derived from the
    build's content key when seeded."""
    fw = recipe.disk.firmware
    parts = []
    if fw in ("bios", "both"):
        parts.append(Partition("bios", BIOS_BOOT, size=2048))  # 1 MiB
    if fw in ("uefi", "both"):
        parts.append(Partition("esp", ESP, size=recipe.disk.esp_bytes // SECTOR))
    parts.append(Partition("root", LINUX))
    if not seed:
        return Layout(parts, root_uuid=str(uuid.uuid4()), esp_id=uuid.uuid4().hex[:8].upper())
    for p in parts:
        p.uuid = seed.uuid(f"partition/{p.name}")
    return Layout(parts, root_uuid=seed.uuid("filesystem/root"), esp_id=seed.fat_id(), disk_id=seed.uuid("disk"))


def link_identical_files(rootfs: Path, distro: Distribution, log: Optional[Path] = None) -> None:
    """One inode for the files under /usr that are the same in content, mode, owner, time and extended
    attributes (util-linux `hardlink`): packages built from one source ship the same changelogs and NEWS files,
    already compressed, 1455 files and 9.65 MiB of debian-12-xfce. Every path keeps its bytes and metadata. Only
    /usr, where files change by being replaced (package managers unpack beside and rename, which ends the
    link): in /etc a user's edit in place, and in /boot grub-install's copy over /usr/lib/grub's modules, would
    write through to the other names. The folders a cache being made records (fonts) are left alone, and the
    times of the folders hardlink changes are put back, so the image stays bit-identical."""
    exe = shutil.which("hardlink")
    if not exe:
        runner.note(log, "hardlink (util-linux) is not installed: identical files under /usr stay copies")
        return
    t0 = time.monotonic()
    usr = rootfs / "usr"
    times = {}
    for folder, _, _ in os.walk(usr):
        st = os.lstat(folder)
        times[folder] = (st.st_atime_ns, st.st_mtime_ns)
    skip = [f"^{re.escape(str(rootfs / rel))}/" for cache in distro.regenerated_caches.values()
            for rel in cache.inputs if rel.startswith("usr/")]
    try:
        out = runner.run([exe, "--respect-xattrs", *[a for r in skip for a in ("--exclude", r)], usr],
                         capture=True)
    except runner.CommandError as e:     # another hardlink (the one before util-linux's) has other options
        runner.note(log, f"hardlink failed, identical files under /usr stay copies: {e}")
        return
    finally:
        for folder, (atime, mtime) in times.items():
            if os.lstat(folder).st_mtime_ns != mtime:
                os.utime(folder, ns=(atime, mtime), follow_symlinks=False)
    linked = re.search(r"Linked:\s*(\d+)", out)
    saved = re.search(r"Saved:\s*([\d.]+ \w+)", out)
    runner.note(log, f"identical files under /usr linked (hardlink): {linked.group(1) if linked else '?'} files, "
                     f"{saved.group(1) if saved else '?'} saved, in {time.monotonic() - t0:.2f} s")


def prepare_tree(recipe: Recipe, rootfs: Path, layout: Layout, distro: Distribution,
                 log: Optional[Path] = None, seed: Optional[Seed] = None, tree_key: Optional[str] = None) -> str:
    """Boot configuration inside the tree: fstab, /etc/default/grub, /boot/grub/grub.cfg and GRUB's modules."""
    kver = distro.kernel_version(rootfs)
    layout.initrd = ensure_initrd(distro, rootfs, kver, log, seed,
                                  initrd_key(recipe, distro, rootfs, kver, tree_key, seed))
    fstab = [f"UUID={layout.root_uuid} / ext4 errors=remount-ro 0 1"]
    if layout.get("esp"):
        (rootfs / "boot/efi").mkdir(parents=True, exist_ok=True)
        fstab.append(f"UUID={layout.esp_id[:4]}-{layout.esp_id[4:]} /boot/efi vfat umask=0077,nofail 0 2")
    (rootfs / "etc/fstab").write_text("# written by diskimages\n" + "\n".join(fstab) + "\n")
    (rootfs / "etc/default").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/default/grub").write_text(
        "# written by diskimages (used if update-grub is ever run inside the image)\n"
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_TIMEOUT_STYLE=hidden\n"
        f"GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo {distro.grub_distributor}`\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="{recipe.kernel_cmdline}"\nGRUB_CMDLINE_LINUX="{SERIAL_CONSOLE}"\n'
        f'GRUB_TERMINAL_INPUT="{grub_terminal_input(recipe)}"\nGRUB_TERMINAL_OUTPUT="console serial"\n'
        'GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"\n')
    grub_dir = rootfs / "boot/grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    for target in boot_targets(recipe, distro):
        src = rootfs / distro.grub_lib.lstrip("/") / target.platform
        if src.is_dir():
            dst = grub_dir / target.platform
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir()
            for f in src.iterdir():
                if f.suffix in (".mod", ".lst"):
                    shutil.copy(f, dst / f.name)
    (grub_dir / "grub.cfg").write_text(grub_cfg(recipe, layout, kver, rootfs, distro))
    return kver


def boot_targets(recipe: Recipe, distro: Distribution):
    """The boot loader images the recipe's firmware setting asks for, on the recipe's architecture."""
    wanted = {"bios": {"bios"}, "uefi": {"uefi"}, "both": {"bios", "uefi"}}[recipe.disk.firmware]
    targets = [t for t in distro.boot_targets(recipe.architecture) if t.firmware in wanted]
    missing = wanted - {t.firmware for t in targets}
    if missing:
        raise Failure(f"{distro.pretty_name} on {recipe.architecture} has no {' or '.join(sorted(missing))} "
                           "boot loader")
    return targets


def make_grub_images(recipe: Recipe, rootfs: Path, layout: Layout, outdir: Path, distro: Distribution,
                     log: Optional[Path] = None) -> dict[str, Path]:
    """Run the image's own grub-mkimage (plain chroot, no mounts needed); returns {"uefi"|"bios"|"boot": path}."""
    work_rel = "var/tmp/diskimages-grub"
    work = rootfs / work_rel
    work.mkdir(parents=True, exist_ok=True)
    early = f"search --no-floppy --fs-uuid --set=root {layout.root_uuid}\nset prefix=($root)/boot/grub\n"
    (work / "early.cfg").write_text(early)
    out = {}
    lib = distro.grub_lib.rstrip("/")
    try:
        for t in boot_targets(recipe, distro):
            if not (rootfs / lib.lstrip("/") / t.platform).is_dir():
                raise Failure(f"the image has no GRUB {t.platform} modules ({lib}/{t.platform}): install "
                                   f"{' / '.join(distro.bootloader_packages(recipe.architecture))} in it")
            runner.run(["chroot", rootfs, distro.grub_mkimage, "-O", t.platform, "-d", f"{lib}/{t.platform}",
                        "-c", f"/{work_rel}/early.cfg", "-p", "/boot/grub", "-o", f"/{work_rel}/{t.image}",
                        *t.modules, *GRUB_MODULES], log=log)
            shutil.move(work / t.image, outdir / t.image)
            out[t.firmware] = outdir / t.image
            if t.firmware == "bios":
                shutil.copy(rootfs / lib.lstrip("/") / t.platform / "boot.img", outdir / "boot.img")
                out["boot"] = outdir / "boot.img"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def read_partitions(raw: Path) -> list[dict]:
    """The partition table of a raw disk file (sfdisk's JSON entries: start, size, type, ...)."""
    r = subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failure(f"no partition table on {Path(raw).name}")
    return json.loads(r.stdout)["partitiontable"]["partitions"]


def root_partition_offset(raw: Path) -> int:
    """Byte offset of the (largest) Linux partition of a raw disk file."""
    linux = [p for p in read_partitions(raw) if p["type"].upper() in LINUX_TYPES]
    if not linux:
        raise Failure(f"no Linux root partition on {Path(raw).name}")
    return int(max(linux, key=lambda p: p["size"])["start"]) * SECTOR


def partition(raw: Path, size: int, layout: Layout, log: Optional[Path] = None) -> None:
    with open(raw, "wb") as f:
        f.truncate(size)
    lines = ["label: gpt"] + ([f"label-id: {layout.disk_id}"] if layout.disk_id else [])
    for i, p in enumerate(layout.partitions):
        start = "start=2048, " if i == 0 else ""
        sz = f"size={p.size}, " if p.size else ""
        guid = f", uuid={p.uuid}" if p.uuid else ""
        lines.append(f"{start}{sz}type={p.type}, name={p.name}{guid}")
    runner.run(["sfdisk", "-q", raw], stdin="\n".join(lines) + "\n", log=log)
    for p, t in zip(layout.partitions, read_partitions(raw)):
        p.start, p.size = int(t["start"]), int(t["size"])


def embed_grub_bios(raw: Path, core_img: Path, boot_img: Path, part: Partition) -> None:
    """Loop-free grub-bios-setup for a GPT image file (GRUB 2.06/2.12 layout):
    boot.img @0x5c = first sector of core.img; @0x66 the drive check becomes NOPs;
    core.img @0x1f4 = sector of its first block list (core start + 1)."""
    core = bytearray(core_img.read_bytes())
    boot = bytearray(boot_img.read_bytes())
    if len(boot) != SECTOR:
        raise Failure(f"{boot_img} is {len(boot)} bytes, expected 512")
    sectors = (len(core) + SECTOR - 1) // SECTOR
    if sectors > part.size:
        raise Failure(f"GRUB core.img needs {sectors} sectors; the BIOS boot partition has {part.size}")
    start_blk, blk_len, _ = struct.unpack_from("<QHH", core, 0x1F4)
    if start_blk != 2 or blk_len != sectors - 1:
        raise Failure(f"unexpected core.img block list ({start_blk}, {blk_len}): unknown GRUB layout")
    struct.pack_into("<Q", core, 0x1F4, part.start + 1)
    struct.pack_into("<Q", boot, 0x5C, part.start)
    boot[0x64] = 0xFF
    boot[0x66:0x68] = b"\x90\x90"
    with open(raw, "r+b") as f:
        f.write(boot[:0x1B8])  # boot code only: disk signature, protective MBR and 0x55AA stay
        f.seek(part.offset)
        f.write(core)


def assemble(recipe: Recipe, rootfs: Path, raw: Path, work: Path, log: Optional[Path] = None,
             seed: Optional[Seed] = None, tree_key: Optional[str] = None) -> Layout:
    """Write a bootable raw disk image of `rootfs` to `raw` (created sparse). `seed`: bit-identical for the same
    tree and seed (see reproducible.py). `tree_key`: the key of the tree's package phase (the initramfs made
    from the same inputs is reused; None: made and not kept)."""
    distro, _ = distros.for_recipe(recipe)
    layout = plan_layout(recipe, seed)
    when = seed.env() if seed else {}
    # the pool lives until the disk is made: fc-cache's closing sleep overlaps mkfs (`caches_written`), and the
    # linking of identical files overlaps the wait for fc-cache and the partitioning
    with ThreadPoolExecutor(max_workers=2) as pool:
        caches = start_regenerating_caches(pool, rootfs, distro, seed)
        prepare_tree(recipe, rootfs, layout, distro, log, seed, tree_key)
        images = make_grub_images(recipe, rootfs, layout, work, distro, log)
        if seed:
            # the folders the caches are being written to are clamped once they are done
            done = reproducible.normalize_tree(rootfs, seed.epoch, distro.volatile_files,
                                               skip=tuple(folder for folder, _, _ in caches),
                                               volatile_dirs=distro.volatile_dirs)
            runner.note(log, f"tree normalised: {done['removed']} volatile files removed, {done['clamped']} file "
                             f"times clamped to SOURCE_DATE_EPOCH={seed.epoch}")
        linking = pool.submit(link_identical_files, rootfs, distro, log)
        moved = reproducible.keep_caches_fresh(rootfs, distro.fresh_caches)
        if moved:
            runner.note(log, f"{moved} cache inputs made older than their caches "
                             f"({', '.join(distro.fresh_caches)})")
        partition(raw, recipe.disk.size_bytes, layout, log)
        caches_written(caches, rootfs, seed)
        linking.result()
        root = layout.get("root")
        ext = f"offset={root.offset}" + (f",hash_seed={seed.uuid('filesystem/root/hash-seed')}" if seed else "")
        runner.run(["mkfs.ext4", "-F", "-q", "-L", "rootfs", "-U", layout.root_uuid, "-E", ext,
                    "-d", rootfs, raw, f"{root.size * SECTOR // 1024}k"], log=log,
                   env={"E2FSPROGS_FAKE_TIME": str(seed.epoch)} if seed else None)
        if seed:
            reproducible.pin_inode_times(f"{raw}?offset={root.offset}", seed.epoch, work, log)
        esp = layout.get("esp")
        if esp:
            # --invariant: the volume label's time is a constant (mkfs.fat ignores SOURCE_DATE_EPOCH for it). It
            # also sets the volume id to 1234-ABCD, so it must come before -i: mkfs.fat applies its options in
            # order, and fstab mounts /boot/efi by this id
            runner.run(["mkfs.fat", "-F", "32", "-s", "1", "-n", "ESP", *(["--invariant"] if seed else []),
                        "-i", layout.esp_id, "--offset", str(esp.start), raw, str(esp.size * SECTOR // 1024)],
                       log=log, env=when or None)
            target = f"{raw}@@{esp.offset}"
            env = {"MTOOLS_SKIP_CHECK": "1", **when}
            if seed:
                os.utime(images["uefi"], (seed.epoch, seed.epoch))
            runner.run(["mmd", "-i", target, "::/EFI", "::/EFI/BOOT"], env=env, log=log)
            runner.run(["mcopy", "-m", "-i", target, images["uefi"], f"::/EFI/BOOT/{images['uefi'].name}"],
                       env=env, log=log)
        bios = layout.get("bios")
        if bios:
            embed_grub_bios(raw, images["bios"], images["boot"], bios)
        finish_regenerating_caches(caches, log)
    return layout


def convert(raw: Path, out: Path, fmt: str, compression: str, log: Optional[Path] = None,
            cluster_size: str = "64K", level: int = 4) -> str:
    """raw -> final format, written to `out` (the caller renames it into place); returns what made it."""
    if fmt == "raw":
        os.replace(raw, out)
        return "the raw disk as it is"
    if compression == "zstd":
        import time
        t0 = time.monotonic()
        qcow2.write(raw, out, cluster_size=int(cluster_size[:-1]) << (10 if cluster_size[-1] == "K" else 20),
                    level=level)
        how = f"diskimages' qcow2 writer (zstd level {level} on {os.cpu_count()} threads, clusters in disk order)"
        runner.note(log, f"{how}: {out.stat().st_size >> 20} MiB in {time.monotonic() - t0:.2f} s")
        return how
    cmd = ["qemu-img", "convert", "-O", "qcow2", "-o", f"cluster_size={cluster_size}"]
    if compression != "none":
        cmd += ["-c", "-o", f"compression_type={compression}"]
    runner.run([*cmd, raw, out], log=log)
    return "qemu-img convert"


def raw_disk_info(raw: Path, distro: Distribution) -> DiskInfo:
    """Read what the record needs from a raw disk another tool made (debugfs, no mounts)."""
    off = root_partition_offset(raw)
    target = f"{raw}?offset={off}"

    def dbg(req: str) -> str:
        return subprocess.run(["debugfs", "-R", req, target], capture_output=True).stdout.decode(errors="replace")

    stats = dbg("stats")
    uuid = re.search(r"Filesystem UUID:\s*(\S+)", stats).group(1)
    blocks = int(re.search(r"Block count:\s*(\d+)", stats).group(1))
    free = int(re.search(r"Free blocks:\s*(\d+)", stats).group(1))
    bsize = int(re.search(r"Block size:\s*(\d+)", stats).group(1))
    try:
        packages = distro.count_packages_in_db(dbg(f"cat {distro.package_db}"))
    except NotImplementedError:
        packages = None        # a database debugfs cannot read as text (rpm's SQLite, pacman's folders)
    boot = dbg("ls -p /boot")
    kernels = [f.split("/")[5].removeprefix("vmlinuz-") for f in boot.splitlines()
               if f.count("/") >= 6 and f.split("/")[5].startswith("vmlinuz-")]
    return DiskInfo(root_uuid=uuid, kernel=sorted(kernels)[-1] if kernels else "",
                    packages=packages, rootfs_bytes=(blocks - free) * bsize)


def extract(raw: Path, paths: list[str], dest: Path) -> None:
    """Copy files and folders out of a raw disk's root file system into `dest` (same paths below it), with one
    debugfs run and no mount; paths the image lacks are left out."""
    import tempfile
    target = f"{raw}?offset={root_partition_offset(raw)}"
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", dir=dest) as cmds:
        for p in paths:
            if not p.startswith("/") or '"' in p or "\n" in p:
                raise InputError(f"not an absolute image path: {p!r}")
            parent = dest / p.lstrip("/").rsplit("/", 1)[0] if "/" in p.lstrip("/") else dest
            parent.mkdir(parents=True, exist_ok=True)
            cmds.write(f'rdump "{p}" "{parent}"\n')
        cmds.flush()
        subprocess.run(["debugfs", "-f", cmds.name, target], capture_output=True)
