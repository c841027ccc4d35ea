"""The explorer's widget callbacks: live validation next to the field, the build request assembled from the
widgets' state, progress events shown in the widgets."""
from pathlib import Path

import json

import pytest
from nb_support import outputs

from diskimages.paths import notebooks_dir

from diskimages.explore import Explorer
from diskimages.recipe import RecipeError


@pytest.fixture
def ex(tmp_path):
    return Explorer("debian-13-xfce", "mmdebstrap", tmp_path)


def test_starts_valid_with_the_recipe_fields(ex):
    assert ex.validate() is not None and not ex.build_b.disabled
    assert ex.desktop_w.value == "xfce" and "firefox-esr" in ex.packages_w.value
    assert ex.users_w.value == "user" and ex.autologin_w.value == "user" and ex.size_w.value == "8G"


def test_bad_package_name_is_shown_next_to_packages(ex):
    ex.packages_w.value = "firefox-esr Bad_Name"
    assert "packages:" in ex.errors["packages"].value and "Bad_Name" in ex.errors["packages"].value
    assert ex.build_b.disabled
    ex.packages_w.value = "firefox-esr"
    assert ex.errors["packages"].value == "" and not ex.build_b.disabled


def test_autologin_must_be_one_of_the_users(ex):
    ex.autologin_w.value = "nobody"
    assert "nobody" in ex.errors["autologin"].value and "allowed: user" in ex.errors["autologin"].value
    with pytest.raises(RecipeError):
        ex.build_request()


def test_disk_size_errors_go_next_to_the_disk_field(ex):
    ex.size_w.value = "512M"
    assert "too small" in ex.errors["disk"].value


def test_build_request_is_assembled_from_the_widgets(ex, tmp_path):
    ex.tool_w.value = "debos"
    ex.desktop_w.value = "none"
    ex.autologin_w.value = ""
    ex.packages_w.value = "openssh-server, tree"
    ex.users_w.value = "user guest"
    ex.size_w.value = "4G"
    ex.compression_w.value = "zlib"
    req = ex.build_request()
    r = req["recipe"]
    assert req["tool"] == "debos" and Path(req["output_dir"]) == tmp_path and req["listener"] == ex.on_event
    assert r.desktop == "none" and r.packages == ["openssh-server", "tree"] and r.autologin is None
    assert [u.name for u in r.users] == ["user", "guest"]
    assert r.users[0].password_hash.startswith("$6$") and r.users[1].password_hash is None   # kept / new
    assert r.disk.size == "4G" and r.output.compression == "zlib"
    assert r.name == "debian-13-xfce" and r.files == "files/debian-desktop"   # the rest comes from the recipe


def test_switching_recipe_reloads_the_fields(ex):
    ex.recipe_w.value = "debian-12-minimal"
    assert ex.desktop_w.value == "none" and ex.size_w.value == "2G" and ex.autologin_w.value == ""
    # only the tools that build the recipe's release are offered (oz refuses Debian 12 and 13)
    assert "mmdebstrap" in ex.tool_w.options and "oz" not in ex.tool_w.options
    assert ex.tool_w.value == "mmdebstrap"


def test_progress_events_update_bar_and_log(ex):
    ex.on_event({"phase": "bootstrap", "done": 0, "total": 4, "line": ""})
    for i in range(20):
        ex.on_event({"phase": "bootstrap", "done": 0, "total": 4, "line": f"Unpacking pkg{i} ..."})
    ex.on_event({"phase": "customize", "done": 1, "total": 4, "line": ""})
    assert (ex.progress.max, ex.progress.value, ex.progress.description) == (4, 1, "customize")
    lines = ex.log.value.splitlines()
    assert len(lines) == 12 and lines[-1] == "Unpacking pkg19 ..."


def test_publish_needs_a_build_and_a_reference(ex):
    ex.publish()
    assert "build an image first" in ex.publish_out.value


def test_widget_tree_renders(ex):
    w = ex.widget()
    assert w.children and ex.build_b in w.children[0].children[-1].children


def test_explore_notebook_runs_headless(tmp_path):
    out_nb = tmp_path / "explore.out.ipynb"
    # papermill as users run it, in its own process: in the suite's process, after the other notebook tests, its
    # client once waited for good on a kernel that had started and sat idle
    import subprocess
    import sys
    subprocess.run([str(Path(sys.executable).parent / "papermill"), str(notebooks_dir() / "explore.ipynb"),
                    str(out_nb), "--cwd", str(tmp_path), "-p", "recipe", "debian-12-minimal", "-p", "tool", "mkosi",
                    "-p", "output_dir", str(tmp_path / "out"), "--no-progress-bar"], check=True, timeout=300,
                   capture_output=True)
    nb = json.loads(out_nb.read_text())
    widgets = [o for c in nb["cells"] for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the explorer's widget is displayed"
    text = "\n".join(outputs(nb))
    assert "mkosi.extra/" in text and "native" in text     # the coverage table for mkosi


def test_every_error_is_shown_at_once_next_to_its_field(ex):
    ex.packages_w.value = "bad!name"
    ex.size_w.value = "lots"
    assert "bad!name" in ex.errors["packages"].value and "not a size" in ex.errors["disk"].value
    assert ex.build_b.disabled


def test_the_coverage_table_follows_the_chosen_tool(ex):
    ex.tool_w.value = "mkosi"
    assert ex.coverage.set_index("field").loc["packages", "setting"] == "Packages="
    ex.tool_w.value = "debos"
    assert ex.coverage.set_index("field").loc["packages", "setting"] == "apt action"
