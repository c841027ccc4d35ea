"""papermill runs notebooks/build.ipynb headless on the minimal recipe; the executed notebook holds the
measurement table and the boot check."""
import json
import shutil

import papermill as pm
import pytest
from nb_support import outputs

from diskimages.paths import notebooks_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.build, pytest.mark.boot]


def test_build_notebook_runs_headless(tmp_path):
    out_nb = tmp_path / "build.out.ipynb"
    pm.execute_notebook(str(notebooks_dir() / "build.ipynb"), str(out_nb), cwd=str(tmp_path),
                        parameters={"recipe": "debian-12-minimal", "tool": "mmdebstrap",
                                    "output_dir": str(tmp_path / "out"), "boot_test": True},
                        progress_bar=False)
    nb = json.loads(out_nb.read_text())
    text = "\n".join(outputs(nb))
    for column in ("build s", "bootstrap s", "compress s", "packages", "file MB", "sha256"):
        assert column in text, column
    assert "debian-12-minimal.mmdebstrap.qcow2" in text
    assert "passed" in text and "login prompt after" in text
    images = [o for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the boot screenshot is shown"
    rec = json.loads((tmp_path / "out/debian-12-minimal.mmdebstrap.json").read_text())
    assert rec["boot"]["passed"] is True
    if CHROMIUM:
        _docs_build_page_is_this_run(tmp_path, out_nb)


def _docs_build_page_is_this_run(tmp_path, out_nb):
    """`make docs` over this build's results shows this executed notebook as the build page, its progress bar
    drawn offline by the widget manager served with the site."""
    from test_docs import rendered_widgets

    from diskimages.docs import build_site
    (tmp_path / "out/notebooks").mkdir()
    shutil.copy(out_nb, tmp_path / "out/notebooks/debian-12-minimal.mmdebstrap.ipynb")
    index = build_site(tmp_path / "site", tmp_path / "out")
    page = (index.parent / "build.html").read_text()
    assert "debian-12-minimal.mmdebstrap.qcow2" in page and "login prompt after" in page
    assert "executed: debian-12-minimal.mmdebstrap" in index.read_text()
    assert any("widget-hprogress" in w for w in rendered_widgets(index.parent / "build.html"))
