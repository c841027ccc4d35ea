"""The documentation site: the notebooks executed (by papermill) and rendered to HTML (nbconvert), with a
landing page that explains the cookbook and links every page.

`build_site(out, results)` executes:
  * compare.ipynb over the records in `results` (nothing is built: build_missing False);
  * explore.ipynb (the widgets, and how the default tool carries out the recipe);
  * build.ipynb: the executed copies found under `results/notebooks/` (what compare or CI ran), else — with
    `build_recipe` set and root — a fresh build of that (small) recipe, else the notebook unexecuted;
  * publish.ipynb against the embedded registry with an image from `results`, when there is one.
"""
from __future__ import annotations

import html
import shutil
import sys
from pathlib import Path
from typing import Optional

from . import reaper
from .paths import notebooks_dir, widget_assets
from .errors import InputError

PAGES = [
    ("compare", "Compare", "one recipe, every tool, measured side by side: times, sizes, boot, screenshots"),
    ("build", "Build", "one recipe with one tool: the tool's native configuration, the build, the boot check"),
    ("publish", "Publish", "push an image as an OCI artifact, list tags, pull it back verified, get a URL"),
    ("explore", "Explore", "edit a recipe with widgets, validate live, build, boot and publish (JupyterLab)"),
]


STATIC = "_static"


def _copy_widget_assets(out: Path) -> Optional[str]:
    """Put the widget manager and require.js beside the pages, so saved widget state (the explorer's controls,
    the build's progress bars) renders without a network; None when setup.sh could not fetch them."""
    web = widget_assets()
    if web is None:
        return None
    dest = out / STATIC
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "html-manager").mkdir(parents=True)
    shutil.copy(web / "requirejs" / "require.js", dest / "require.js")
    # the bundle and the icon fonts it points to (relative to itself); not the source maps or other builds
    for f in (web / "html-manager" / "dist").iterdir():
        if f.name == "embed-amd.js" or f.suffix in (".woff", ".woff2", ".ttf", ".eot", ".svg"):
            shutil.copy(f, dest / "html-manager" / f.name)
    return f"{STATIC}/html-manager/embed-amd.js"


def _html(nb_path: Path, out: Path, widgets_url: Optional[str] = None) -> None:
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name="lab")
    if widgets_url:
        exporter.require_js_url = f"{STATIC}/require.js"
        exporter.widget_renderer_url = widgets_url
    body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
    out.write_text(body)


def _records(results: Path):
    """The build records the site is made from; none is an error that names the folder (a site of empty
    tables would look like a result)."""
    from . import compare
    df = compare.load(results) if results.is_dir() else None
    if df is None or df.empty:
        raise InputError(f"{results}: no build records (allowed: a folder of NAME.TOOL.json records, as "
                         "compare.ipynb or bench/compare.py write them); no site was written")
    return df


def headline(df, results: Path) -> str:
    """The landing page's opening: per recipe, the fastest and the smallest tool (with the ratio to the next),
    the fastest tool's desktop screenshot, and when and on what host the records were made."""
    import base64
    import pandas as pd
    built = df[df["status"] == "built"]
    rows, shots = [], []
    for recipe in dict.fromkeys(built["recipe"]):
        sub = built[built["recipe"] == recipe].sort_values("total_wall_s")
        fast = sub.iloc[0]
        nxt = f" (next: {html.escape(sub.iloc[1]['tool'])}, {sub.iloc[1]['total_wall_s'] / fast['total_wall_s']:.2f}× " \
            "as long)" if len(sub) > 1 else ""
        small = sub.sort_values("file_bytes").iloc[0]
        rows.append(f"<tr><td><code>{html.escape(recipe)}</code></td><td><b>{html.escape(fast['tool'])}</b> "
                    f"{fast['total_wall_s']:.1f} s{nxt}</td><td><b>{html.escape(small['tool'])}</b> "
                    f"{small['file_bytes'] / 2**20:.0f} MiB</td><td>{len(sub)}</td></tr>")
        stem = str(fast["image"]).rsplit(".", 1)[0]
        png = sorted(results.glob(f"{stem}.*.png"))
        if png:
            b64 = base64.b64encode(png[-1].read_bytes()).decode()
            shots.append(f"<figure><img width='480' alt='{html.escape(stem)} desktop' "
                         f"src='data:image/png;base64,{b64}'/><figcaption>{html.escape(recipe)} built by "
                         f"{html.escape(fast['tool'])}, as the boot check saw it</figcaption></figure>")
    started = sorted(str(x)[:10] for x in built.get("started", []) if isinstance(x, str))
    cols = ["host_cpus", "host_machine", "host_kernel"]
    hosts = {f"{cpus} CPUs, {machine}, Linux {kernel}" for cpus, machine, kernel in
             built.reindex(columns=cols).itertuples(index=False) if not pd.isna(machine)}
    when = f"{started[0]} to {started[-1]}" if started and started[0] != started[-1] else (started or ["?"])[0]
    return (f"<section id='headline'><h2>Measured</h2><table><tr><th>recipe</th><th>fastest build</th>"
            f"<th>smallest image</th><th>tools</th></tr>{''.join(rows)}</table>{''.join(shots)}"
            f"<p><small>Records of {html.escape(when)} on {html.escape('; '.join(sorted(hosts)) or 'an unknown host')}"
            "</small></p></section>")


def _execute(name: str, dest: Path, params: dict, cwd: Path) -> Path:
    import papermill as pm
    pm.execute_notebook(str(notebooks_dir() / f"{name}.ipynb"), str(dest), parameters=params, cwd=str(cwd),
                        progress_bar=False)
    return dest


def build_site(out: Path | str, results: Path | str, *, build_recipe: Optional[str] = None,
               tool: str = "mmdebstrap") -> Path:
    """Write the site to `out` (index.html + one page per notebook); returns the index page."""
    import os

    out, results = Path(out).resolve(), Path(results).resolve()
    records = _records(results)
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    with reaper.temp_dir("diskimages-docs-") as work:
        executed = {}
        executed["compare"] = _execute("compare", work / "compare.ipynb",
                                       {"recipes": [], "tools": [], "output_dir": str(results),
                                        "build_missing": False}, work)
        executed["explore"] = _execute("explore", work / "explore.ipynb", {"tool": tool}, work)
        ran = sorted((results / "notebooks").glob("*.ipynb")) if (results / "notebooks").is_dir() else []
        if ran:
            executed["build"] = ran[-1]
            status["build"] = f"executed: {ran[-1].stem}"
        elif build_recipe and os.geteuid() == 0:
            executed["build"] = _execute("build", work / "build.ipynb",
                                         {"recipe": build_recipe, "tool": tool,
                                          "output_dir": str(work / "build")}, work)
            status["build"] = f"executed: {build_recipe} with {tool}"
        else:
            executed["build"] = notebooks_dir() / "build.ipynb"
            status["build"] = "not executed (no build here)"
        images = sorted(results.glob("*.qcow2"), key=lambda p: p.stat().st_size)
        if images:
            executed["publish"] = _execute("publish", work / "publish.ipynb",
                                           {"image": str(images[0]), "ref": f"diskimages/{images[0].stem}:docs",
                                            "storage": str(work / "registry"), "pull_dir": str(work / "pulled")},
                                           work)
            status["publish"] = f"executed with {images[0].name} (embedded registry)"
        else:
            executed["publish"] = notebooks_dir() / "publish.ipynb"
            status["publish"] = "not executed (no image in the results)"
        status.setdefault("compare", f"executed over {results.name}")
        status.setdefault("explore", "executed (the widgets need a live kernel to act)")
        widgets_url = _copy_widget_assets(out)
        status["widgets"] = ("widgets render offline (the widget manager is served with the site)" if widgets_url
                             else "widgets load their manager from a CDN (scripts/setup.sh could not fetch it)")
        print(f"docs: {status['widgets']}", file=sys.stderr)
        for name, nb in executed.items():
            _html(nb, out / f"{name}.html", widgets_url)
            shutil.copy(nb, out / f"{name}.ipynb")
        index = out / "index.html"
        index.write_text(_landing(status, headline(records, results)))
        return index


def _landing(status: dict, measured: str = "") -> str:
    from . import load_recipe
    from .recipe import list_recipe_names
    from .tools import tool_table
    items = "".join(f"<li><a href='{n}.html'>{t}</a> — {html.escape(d)} <small>({html.escape(status.get(n, ''))})"
                    f"</small></li>" for n, t, d in PAGES)
    recipes = "".join(f"<li><code>{n}</code> — {html.escape(load_recipe(n).description)}</li>"
                      for n in list_recipe_names())
    tools = tool_table()[["tool", "produces", "version", "description"]].to_html(index=False, na_rep="not installed")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>disk-images cookbook</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}}
figure{{display:inline-block;margin:4px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em}}</style></head>
<body>
<h1>disk-images cookbook</h1>
<p>Ready-to-use <em>desktop</em> Linux disk images (qcow2) from one declarative recipe, built with any of the
well-known image tools, boot-tested, measured side by side, and published as OCI artifacts to container
registries, from which anyone can pull them or get a plain download URL.</p>
{measured}
<h2>The notebooks</h2><ul id="pages">{items}</ul>
<p><small id="widgets">{html.escape(status.get("widgets", ""))}</small></p>
<h2>Recipes</h2><ul>{recipes}</ul>
<h2>Build tools</h2>{tools}
<p>Run a notebook yourself: <code>papermill notebooks/build.ipynb out.ipynb -p recipe debian-13-xfce
-p tool mmdebstrap</code>, or open it in JupyterLab.</p>
</body></html>
"""
