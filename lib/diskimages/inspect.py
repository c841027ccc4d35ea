"""Read files from a built image without booting or mounting it: the image is converted to a temporary raw
file and its root ext4 is read with debugfs at the partition's offset (works on every host, no loop devices).
Also: what differs between two images (`why_images_differ`)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from . import reaper
from .disk import root_partition_offset


class ImageReader:
    """`with ImageReader(image) as r: r.read("/etc/fstab"); r.listdir("/etc/ssh")`"""

    def __init__(self, image: Path | str):
        self.image = Path(image)

    def __enter__(self) -> "ImageReader":
        self._tmp = reaper.temp_dir("diskimages-inspect-")
        self.tmp = self._tmp.__enter__()
        try:
            self.raw = self.tmp / "disk.raw"
            subprocess.run(["qemu-img", "convert", "-O", "raw", str(self.image), str(self.raw)], check=True,
                           capture_output=True)
            self.offset = root_partition_offset(self.raw)
        except BaseException:
            self._tmp.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.__exit__(None, None, None)

    def debugfs(self, request: str) -> str:
        r = subprocess.run(["debugfs", "-R", request, f"{self.raw}?offset={self.offset}"], capture_output=True)
        return r.stdout.decode(errors="replace")

    def read(self, path: str) -> str:
        return self.debugfs(f"cat {path}")

    def exists(self, path: str) -> bool:
        r = subprocess.run(["debugfs", "-R", f"stat {path}", f"{self.raw}?offset={self.offset}"],
                           capture_output=True, text=True)
        return "Inode:" in r.stdout

    def listdir(self, path: str) -> list[str]:
        out = self.debugfs(f"ls -p {path}")
        return [f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6 and f.split("/")[5] not in (".", "..")]

    def partition_table(self) -> str:
        """sfdisk's dump of the partition table (identifiers included), without the file's own name."""
        out = subprocess.run(["sfdisk", "-d", str(self.raw)], capture_output=True, text=True).stdout
        return "\n".join(line.replace(str(self.raw), "disk") for line in out.splitlines() if
                         not line.startswith("device:"))

    def superblock(self) -> str:
        return subprocess.run(["dumpe2fs", "-h", f"{self.raw}?offset={self.offset}"], capture_output=True,
                              text=True).stdout

    def dump_tree(self, dest: Path) -> Path:
        """The root file system's files, with their modes and times, copied into `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debugfs", "-R", f"rdump / {dest}", f"{self.raw}?offset={self.offset}"],
                       capture_output=True)
        import os
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in (*dirnames, *filenames):      # rdump gives links the time of the dump: not the image's
                p = os.path.join(dirpath, n)
                if os.path.islink(p):
                    os.utime(p, (0, 0), follow_symlinks=False)
        return dest


def why_images_differ(a: Path, b: Path, lines: int = 40) -> str:
    """What differs between two disk images, cut to `lines`: the partition tables, the root file systems'
    superblocks, then diffoscope on the two root trees."""
    import difflib
    from .reproducible import explain_difference
    with ImageReader(a) as ra, ImageReader(b) as rb:
        for what, fa, fb in (("partition table", ra.partition_table, rb.partition_table),
                             ("root file system superblock", ra.superblock, rb.superblock)):
            x, y = fa(), fb()
            if x != y:
                diff = [d for d in difflib.unified_diff(x.splitlines(), y.splitlines(), a.name, b.name, n=0,
                                                        lineterm="")]
                return f"{what} differs:\n" + "\n".join(diff[:lines])
        report = explain_difference(ra.dump_tree(ra.tmp / "tree"), rb.dump_tree(rb.tmp / "tree"), lines=lines)
    return "root trees differ (diffoscope):\n" + report
