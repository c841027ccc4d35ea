import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Builds and boots need root and the host tools; elsewhere they are skipped with the reason."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("needs root")
    for prog in ("mmdebstrap", "qemu-system-x86_64", "qemu-img", "mkfs.fat", "mcopy", "sfdisk", "debugfs"):
        if not shutil.which(prog):
            reasons.append(f"{prog} not installed (scripts/setup.sh)")
    skip = pytest.mark.skip(reason="; ".join(reasons)) if reasons else None
    for item in items:
        if "build" in item.keywords or "boot" in item.keywords:
            if skip:
                item.add_marker(skip)
        else:
            # the fast lane (`pytest -m fast`): no image is built and nothing boots
            item.add_marker(pytest.mark.fast)


def _drop_kept(*kinds: str):
    """Every kept by-product of these kinds (the tree cache's `KEY.initrd`, `KEY.modindex` entries) removed: the
    next build makes its own."""
    from diskimages.paths import cache_dir
    for kind in kinds:
        for kept in cache_dir("trees").glob(f"*.{kind}*"):
            kept.unlink()


@pytest.fixture
def no_kept_initramfs():
    """The test's builds make their initramfs instead of copying one kept by an earlier build."""
    _drop_kept("initrd")


@pytest.fixture(scope="session")
def minimal_build(tmp_path_factory):
    """One real mmdebstrap build of debian-12-minimal shared by the tests that inspect and boot it. Kept
    initramfs images and module indexes are dropped first: this build makes its own (the tests count and
    inspect them, and a later build of the same packages reuses them)."""
    from diskimages.build import build
    _drop_kept("initrd", "modindex")
    out = tmp_path_factory.mktemp("minimal")
    return build("debian-12-minimal", "mmdebstrap", out, progress=False)
