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


def test_landing_page_opens_with_the_headline_comparison(site):
    """Fastest and smallest tool per recipe from the records, the fastest tool's desktop screenshot, and the
    date and host of the records, before anything else on the page."""
    dom = _chromium("--dump-dom", site.as_uri()).stdout
    head = dom[dom.index("id=\"headline\""):dom.index("</section>")]
    assert dom.index('id="headline"') < dom.index('id="pages"')
    assert "<b>mkosi</b> 115.8 s (next: mmdebstrap, 1.09× as long)" in head       # tests/data/records
    assert "<b>mkosi</b> 557 MiB" in head
    assert 'src="data:image/png;base64,' in head and "debian-12-xfce built by mkosi" in head
    assert "Records of 2026-11-25 on 2 CPUs, x86_64, Linux" in head


# counts the tables whose right edge is past the window with no scrolling box around them (cut off)
_CLIPPED = """<script>window.addEventListener('load', () => {
  const cut = [...document.querySelectorAll('table')].filter(t => {
    if (t.getBoundingClientRect().right <= window.innerWidth) return false;
    for (let e = t.parentElement; e; e = e.parentElement)
      if (['auto', 'scroll'].includes(getComputedStyle(e).overflowX) && e.clientWidth <= window.innerWidth) return false;
    return true;
  });
  document.body.setAttribute('data-clipped', cut.length);
  document.body.setAttribute('data-tables', document.querySelectorAll('table').length);
  document.body.setAttribute('data-wide', [...document.querySelectorAll('table')].filter(
    t => t.getBoundingClientRect().width > window.innerWidth).length);
});</script>"""


def test_wide_tables_scroll_inside_the_page_instead_of_being_cut(site, tmp_path):
    for page in ("compare", "build"):
        probe = tmp_path / f"{page}.html"
        probe.write_text((site.parent / f"{page}.html").read_text().replace("</body>", _CLIPPED + "</body>"))
        dom = _chromium("--window-size=800,2000", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
        tables = int(re.search(r'data-tables="(\d+)"', dom).group(1))
        assert re.search(r'data-clipped="(\d+)"', dom).group(1) == "0", page
        assert page == "build" or tables >= 3
        if page == "compare":          # the measurement table is wider than the window: it scrolls, it is not cut
            assert int(re.search(r'data-wide="(\d+)"', dom).group(1)) >= 1


OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"     # no host name resolves: only the site's own files load


def rendered_widgets(page: Path) -> list:
    """The class lists of the widgets Chromium drew from the page's saved widget state, with no network."""
    dom = _chromium(OFFLINE, "--virtual-time-budget=15000", "--dump-dom", page.as_uri()).stdout
    return re.findall(r'class="lm-Widget[^"]*jupyter-widgets [^"]*"', dom)


def test_widgets_render_offline_from_the_manager_served_with_the_site(site):
    """The explorer's controls (dropdowns, text fields, buttons) are drawn from the saved widget state by the
    html-manager copied beside the pages, not one fetched from a CDN."""
    assert (site.parent / "_static" / "html-manager" / "embed-amd.js").is_file()
    assert 'src="_static/require.js"' in (site.parent / "explore.html").read_text()
    drawn = " ".join(rendered_widgets(site.parent / "explore.html"))
    for kind in ("widget-dropdown", "widget-text", "widget-button", "widget-hprogress"):
        assert kind in drawn, kind
    assert "widgets render offline" in _chromium("--dump-dom", site.as_uri()).stdout


def test_make_docs_without_records_says_so_and_exits_2(tmp_path, capsys):
    from diskimages.cli import main
    (tmp_path / "empty").mkdir()
    assert main(["docs", "--results", str(tmp_path / "empty"), "--output", str(tmp_path / "site")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'empty'}: no build records" in err and "no site was written" in err
    assert not (tmp_path / "site").exists()
