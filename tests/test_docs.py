"""The rendered documentation: `make docs` executes the notebooks over recorded results (real records and
boot screenshots of the debian-12-xfce builds on this machine kind, in tests/data/records) and renders the
HTML site; a real headless Chromium opens the landing page and the compare page."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from diskimages.docs import build_site

RECORDS = Path(__file__).parent / "data" / "records"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(not CHROMIUM, reason="chromium is not installed (scripts/setup.sh installs it)")


def _chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    results = tmp / "results"
    shutil.copytree(RECORDS, results)
    # a small image so the publish page runs end to end against the embedded registry
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(results / "tiny.qcow2"), "64M"], check=True)
    return build_site(tmp / "site", results)


def test_site_has_a_landing_page_linking_every_notebook(site):
    d = site.parent
    for page in ("index", "compare", "build", "publish", "explore"):
        assert (d / f"{page}.html").is_file(), page
    dom = _chromium("--dump-dom", site.as_uri()).stdout
    assert "disk-images cookbook" in dom
    for page in ("compare", "build", "publish", "explore"):
        assert f'href="{page}.html"' in dom
    assert "mkosi" in dom and "debos" in dom and "mmdebstrap" in dom      # the tools table


def test_compare_page_shows_tables_plots_and_screenshots_in_chromium(site, tmp_path):
    page = site.parent / "compare.html"
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    assert dom.count("<table") >= 3                                        # per recipe, ratios, pairs
    for tool in ("mmdebstrap", "mkosi", "debos"):
        assert tool in dom
    assert len(re.findall(r'src="data:image/png;base64', dom)) >= 4       # the bar charts + 3 screenshots
    shot = tmp_path / "compare.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    from PIL import Image
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    assert len(img.getcolors(1 << 20)) > 200                               # a rendered page, not a blank one


def test_publish_page_was_executed_against_the_embedded_registry(site):
    text = (site.parent / "publish.html").read_text()
    assert "tiny.qcow2" in text and "sha256:" in text
