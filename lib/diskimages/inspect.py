"""Read files from a built image without booting or mounting it: the image is converted to a temporary raw
file and its root ext4 is read with debugfs at the partition's offset (works on every host, no loop devices)."""
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
