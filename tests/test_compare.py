"""The comparison: pairs and the CI matrix, records reused, a real failed build as a row, the compare notebook."""
import json
import shutil
import subprocess
import sys

import pytest

from diskimages import compare


def test_matrix_lists_buildable_pairs_from_recipes_and_tools():
    out = subprocess.run([sys.executable, "-m", "diskimages", "matrix"], capture_output=True, text=True, check=True)
    m = json.loads(out.stdout)
    assert {"recipe": "debian-12-xfce", "tool": "mmdebstrap"} in m["include"]
    assert {"recipe": "debian-13-xfce", "tool": "mmdebstrap"} in m["include"]
    assert {"recipe": "debian-12-minimal", "tool": "mmdebstrap"} in m["include"]
    # never a job that can only fail: oz refuses these releases; the cloud bases are helpers, not images
    assert not [j for j in m["include"] if j["tool"] == "oz" or j["recipe"].endswith("cloud-base")]


def test_pairs_say_why_a_tool_cannot_build_a_recipe(tmp_path):
    gentoo = tmp_path / "gentoo-xfce.yaml"
    gentoo.write_text("name: gentoo-xfce\ndistro: gentoo\nrelease: '23'\ndesktop: xfce\n")
    df = compare.pairs([str(gentoo), "debian-12-minimal", "fedora-45-xfce"], ["mmdebstrap"])
    row = df[df.recipe == str(gentoo)].iloc[0]
    assert not row.buildable and row.reason.startswith(f"{gentoo}: distro: 'gentoo' is not allowed (allowed: arch")
    fedora = df[df.recipe == "fedora-45-xfce"].iloc[0]
    assert not fedora.buildable and fedora.reason == "mmdebstrap installs apt distributions; Fedora uses dnf"
    assert df[df.recipe == "debian-12-minimal"].iloc[0].buildable
    oz = compare.pairs(["debian-13-xfce"], ["oz"], check_installed=False).iloc[0]
    assert not oz.buildable and "Debian 13" in oz.reason


@pytest.mark.build
def test_compare_reuses_records_and_shows_failures_as_rows(minimal_build, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    for f in (minimal_build.record_path, minimal_build.image):
        shutil.copy(f, out / f.name)
    reused = compare.run_pair("debian-12-minimal", "mmdebstrap", out)
    assert reused["sha256"] == minimal_build.record["sha256"]          # reused, not rebuilt
    # a build that fails: no mirror answers on this port (refused before any work, naming the mirror)
    failed = compare.run_pair("debian-12-gnome", "mmdebstrap", out, mirror="http://127.0.0.1:9/debian",
                              boot_test=False)
    assert failed["status"] == "failed" and "its mirror (parameter) does not answer" in failed["reason"]
    assert "127.0.0.1:9" in failed["reason"]
    df = compare.load(out)
    t = compare.table(df)
    assert set(t["recipe"]) == {"debian-12-minimal", "debian-12-gnome"}
    assert t.loc[t.recipe == "debian-12-gnome", "reason"].iloc[0] == failed["reason"]
    r = compare.ratios(t)
    assert r.loc[r.recipe == "debian-12-minimal", "build s"].iloc[0] == 1.0
    assert (out / "notebooks" / "debian-12-gnome.mmdebstrap.ipynb").is_file()
    assert not list(out.glob("debian-12-gnome.mmdebstrap.qcow2"))


def test_package_differences_say_what_each_tool_adds_or_lacks(tmp_path):
    """Two images of one recipe whose manifests differ: the table lists only the packages not in both, with
    each tool's version, and the summary counts them per tool."""
    import json
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_file
    from diskimages import distros, manifest
    d = distros.get("debian")
    common = [{"name": "bash", "version": "5.2", "architecture": "amd64", "source": "bash", "license": "GPL-3+"}]
    extra = {"mmdebstrap": [], "virt-install": [{"name": "cloud-init", "version": "24.1", "architecture": "all",
                                                 "source": "cloud-init", "license": None}]}
    for tool, pkgs in extra.items():
        doc = manifest.document(common + pkgs, d, d.default(), image_name=f"r.{tool}.qcow2", creators=["test"])
        write_document_to_file(doc, str(tmp_path / f"r.{tool}.spdx.json"))
        (tmp_path / f"r.{tool}.json").write_text(json.dumps(
            {"kind": "diskimages.build", "recipe": "r", "tool": tool, "manifest": f"r.{tool}.spdx.json",
             "phases": {}, "total_wall_s": 1}))
    df = compare.load(tmp_path)
    diff = compare.package_differences(df, tmp_path, "r")
    assert list(diff.index) == ["cloud-init"] and diff.loc["cloud-init"].to_dict() == {"mmdebstrap": "",
                                                                                      "virt-install": "24.1"}
    summary = compare.package_summary(diff)
    assert summary.loc["virt-install", "has, others lack"] == 1 and summary.loc["mmdebstrap", "lacks"] == 1


def test_pairs_with_records_lead_the_table_then_missing_then_refused(tmp_path):
    """Over records collected from elsewhere (CI jobs), nothing is built, and the reader sees the recorded pairs
    first, not a screenful of refusals."""
    from pathlib import Path
    records = Path(__file__).parent / "data" / "records"
    df = compare.run(["arch-xfce", "debian-12-xfce"], ["mkosi", "debos", "mmdebstrap", "virt-install"], records,
                     build_missing=False, progress=False)
    assert list(df.outcome[:3]) == ["reused record"] * 3
    assert sorted(df.tool[:3]) == ["debos", "mkosi", "mmdebstrap"]
    ranks = [0 if o == "reused record" else 1 if o == "no record" else 2 for o in df.outcome]
    assert ranks == sorted(ranks) and ranks[-1] == 2 and len(df) == 8
