"""Where a build's root tree lives: in memory when the whole disk fits there, else in the work folder; the
choice follows DISKIMAGES_SCRATCH, and a bad value or a tree that cannot fit in memory is one line naming the
variable and what is allowed."""
import pytest

from diskimages import scratch
from diskimages.errors import InputError

GiB = 1 << 30


def test_auto_uses_memory_when_the_disk_fits_and_says_why_not_otherwise(monkeypatch):
    monkeypatch.delenv(scratch.ENV, raising=False)
    if scratch.memory_unusable(1 * GiB) is None:        # this host: /dev/shm is a tmpfs with room
        assert scratch.choose(1 * GiB) == (scratch.MEMORY, "memory (/dev/shm, a tmpfs)")
    base, why = scratch.choose(1 << 50)                 # a 1 PiB disk fits nowhere in memory
    assert base is None and why.startswith("disk (the work folder): /dev/shm") and "the disk may need" in why


def test_disk_and_memory_are_chosen_by_the_variable(monkeypatch):
    monkeypatch.setenv(scratch.ENV, "disk")
    assert scratch.choose(1 * GiB) == (None, "disk (the work folder; DISKIMAGES_SCRATCH=disk)")
    monkeypatch.setenv(scratch.ENV, "memory")
    with pytest.raises(InputError, match=r"^DISKIMAGES_SCRATCH=memory: .*the disk may need 1048576\.0 GiB"):
        scratch.choose(1 << 50)


def test_a_bad_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(scratch.ENV, "ram\x1b[2J")
    with pytest.raises(InputError) as e:
        scratch.choose(GiB)
    assert e.value.exit_code == 2
    assert str(e.value) == r"DISKIMAGES_SCRATCH='ram\x1b[2J' is not allowed (allowed: auto, memory, disk)"


def test_only_a_tmpfs_that_may_run_programs_is_used(tmp_path):
    assert scratch.memory_unusable(GiB, tmp_path) == f"{tmp_path} is not a tmpfs"


def test_the_raw_disk_goes_to_memory_only_beside_a_tree_there_when_both_fit():
    assert scratch.choose_disk(GiB, None) == (None, "")           # a tree in the work folder: the disk too
    if scratch.memory_unusable(2 * GiB) is None:
        assert scratch.choose_disk(GiB, scratch.MEMORY) == (scratch.MEMORY, "; the raw disk too")
    base, why = scratch.choose_disk(1 << 49, scratch.MEMORY)      # the tree may fit, the two together do not
    assert base is None and why.startswith("; the raw disk in the work folder: /dev/shm")
    assert "the tree and the raw disk may need 1048576.0 GiB" in why
