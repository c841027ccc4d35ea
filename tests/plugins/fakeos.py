"""A distribution and a tool defined outside lib/: proof that adding either is one module.

`FakeOS` is a distribution with one release and a console desktop; `FakeDisk` is a disk tool that writes a
tiny sparse disk (no real OS: it exercises the orchestration, not a boot)."""
from __future__ import annotations

from pathlib import Path

from diskimages.disk import DiskInfo
from diskimages.distros import DesktopSpec, Distribution, Release
from diskimages.tools import BuildState, DiskTool


class FakeOS(Distribution):
    name = "fakeos"
    pretty_name = "FakeOS"
    releases = (Release("one", "1"), Release("two", "2", "2001-01-01"))
    default_release = "one"
    architectures = {"amd64": None}
    desktops = {"none": DesktopSpec(("fake-base",), None, None, min_disk_gib=1)}
    package_manager = "fakepkg"


class FakeDisk(DiskTool):
    name = "fakedisk"
    program = "true"
    package_managers = ("fakepkg",)
    description = "writes a tiny sparse disk"

    def version(self):
        return "1.0"

    def render(self, state: BuildState) -> dict[str, str]:
        return {"fakedisk.conf": f"release={state.release.codename}\npackages="
                                 f"{','.join(state.distro.packages_for(state.recipe))}\n"}

    def build_disk(self, state: BuildState, raw: Path) -> DiskInfo:
        with open(raw, "wb") as f:
            f.truncate(state.recipe.disk.size_bytes)
            f.seek(1 << 20)
            f.write(b"fakedisk " + state.release.codename.encode())
        return DiskInfo(root_uuid="00000000-0000-0000-0000-000000000000", kernel="0-fake", packages=1,
                        rootfs_bytes=4096)
