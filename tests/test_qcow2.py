"""diskimages' own compressed qcow2 writer against qemu: `qemu-img check` finds no error, `qemu-img compare`
finds the same content as the raw disk, qemu reports zstd clusters, and two writes give the same bytes."""
import hashlib
import os
import subprocess

import pytest

from diskimages import qcow2


def _raw(path, size):
    """A sparse disk with what a root file system has: random data, text, a partial last cluster, holes,
    a cluster of zeros that is allocated, and data that does not compress."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(os.urandom(200_000))                       # incompressible: stored uncompressed
        f.seek(5 << 20)
        f.write(b"hello world " * 100_000)
        f.seek((9 << 20) + 123)
        f.write(os.urandom(70_000) + b"x" * 70_000)       # across cluster boundaries, not aligned
        f.seek(20 << 20)
        f.write(bytes(1 << 20))                            # written zeros: left out like a hole
        f.seek(size - 10)
        f.write(b"0123456789")


@pytest.mark.parametrize("cluster", [65536, 2 << 20])
def test_qemu_reads_the_written_image_as_the_raw_disk(tmp_path, cluster):
    raw, out = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    _raw(raw, (48 << 20) + 4096)                           # not a whole number of clusters
    qcow2.write(raw, out, cluster_size=cluster)
    check = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found on the image." in check.stdout, check.stdout
    assert "compressed clusters" in check.stdout
    cmp = subprocess.run(["qemu-img", "compare", str(raw), str(out)], capture_output=True, text=True)
    assert cmp.returncode == 0 and "Images are identical." in cmp.stdout, cmp.stdout + cmp.stderr
    info = subprocess.run(["qemu-img", "info", str(out)], capture_output=True, text=True).stdout
    assert "compression type: zstd" in info and f"cluster_size: {cluster}" in info
    # the text compressed, the holes and zeros left out: the metadata clusters and the random data remain
    assert out.stat().st_size < 6 * cluster + (1 << 20)


def test_clusters_that_do_not_compress_cost_no_padding(tmp_path):
    """Incompressible clusters alternating with compressible ones: each must start at a cluster boundary,
    and placed in disk order each would leave padding behind the compressed data before it. Written after
    the compressed clusters, the file is the compressed bytes plus whole clusters and metadata, and qemu
    still reads the disk exactly."""
    raw, out = tmp_path / "disk.raw", tmp_path / "disk.qcow2"
    c = 65536
    with open(raw, "wb") as f:
        f.truncate(16 << 20)
        for i in range(40):
            f.seek(2 * i * c)
            f.write(os.urandom(c) + b"text " * (c // 5))
    qcow2.write(raw, out, cluster_size=c)
    cmp = subprocess.run(["qemu-img", "compare", str(raw), str(out)], capture_output=True, text=True)
    assert cmp.returncode == 0 and "Images are identical." in cmp.stdout, cmp.stdout + cmp.stderr
    assert subprocess.run(["qemu-img", "check", "-q", str(out)]).returncode == 0
    # 40 stored clusters, 40 compressed ones of a few hundred bytes, header, L1, L2 and refcounts: with
    # padding in disk order it would be 40 clusters more
    assert out.stat().st_size <= (40 + 1 + 6) * c, out.stat().st_size


def test_the_same_disk_gives_the_same_bytes_with_any_number_of_threads(tmp_path):
    raw = tmp_path / "disk.raw"
    _raw(raw, 32 << 20)
    digests = set()
    for n, threads in enumerate((1, 2, 4)):
        out = tmp_path / f"{n}.qcow2"
        qcow2.write(raw, out, threads=threads)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_an_empty_disk_is_a_valid_image(tmp_path):
    raw, out = tmp_path / "empty.raw", tmp_path / "empty.qcow2"
    raw.write_bytes(b"")
    os.truncate(raw, 8 << 20)
    qcow2.write(raw, out)
    assert subprocess.run(["qemu-img", "check", "-q", str(out)]).returncode == 0
    assert subprocess.run(["qemu-img", "compare", "-q", str(raw), str(out)]).returncode == 0


def test_convert_writes_zstd_qcow2_itself_at_the_recipes_level_and_zlib_with_qemu_img(tmp_path):
    """The build's conversion: zstd through this writer (a higher level gives a smaller image), zlib through
    qemu-img convert; each says what made it."""
    from diskimages import disk
    raw = tmp_path / "disk.raw"
    _raw(raw, 16 << 20)
    with open(raw, "r+b") as f:                            # 3 MB of text that a higher level packs tighter
        f.seek(11 << 20)
        f.write(" ".join(f"word{i * 7919 % 10007}" for i in range(300_000)).encode())
    sizes = {}
    for level in (1, 9):
        out = tmp_path / f"{level}.qcow2"
        assert disk.convert(raw, out, "qcow2", "zstd", level=level).startswith(
            f"diskimages' qcow2 writer (zstd level {level}")
        assert subprocess.run(["qemu-img", "compare", "-q", str(raw), str(out)]).returncode == 0
        sizes[level] = out.stat().st_size
    assert sizes[9] < sizes[1]
    assert disk.convert(raw, tmp_path / "z.qcow2", "qcow2", "zlib") == "qemu-img convert"
    assert subprocess.run(["qemu-img", "compare", "-q", str(raw), str(tmp_path / "z.qcow2")]).returncode == 0


def test_a_level_outside_zstds_or_without_zstd_is_refused_naming_the_field(tmp_path, capsys):
    import yaml
    from pathlib import Path

    from diskimages.cli import main
    base = yaml.safe_load((Path(__file__).parent.parent / "recipes" / "debian-13-minimal.yaml").read_text())
    base.pop("files", None)
    base.pop("scripts", None)
    for output, says in (({"level": 20}, "output.level: Input should be less than or equal to 19"),
                         ({"compression": "zlib", "level": 9},
                          "level 9 is for zstd only (allowed with compression zlib: no level)")):
        p = tmp_path / "r.yaml"
        p.write_text(yaml.safe_dump({**base, "output": output}))
        assert main(["validate", str(p)]) == 2
        err = capsys.readouterr().err
        assert f"{p}: " in err and says in err, err
