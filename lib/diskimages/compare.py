"""The comparison: recipes x tools, each pair built through notebooks/build.ipynb (papermill) or reused from its
record, all records in one pandas table, ratios to the best tool, charts and screenshots side by side.

Records are the JSON files `build()` writes (one per image); a pair that fails leaves a failure record with the
reason and the tail of its log, so failures are rows of the table, never silently dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from . import measure
from .paths import notebooks_dir
from . import distros
from .recipe import Recipe, RecipeError, list_recipe_names
from .tools import get_tool, load_checked, names as tool_names

LOWER_IS_BETTER = ["build s", "CPU s", "downloaded MB", "rootfs MB", "allocated MB", "file MB", "desktop s"]


def is_helper(recipe: Recipe) -> bool:
    """A helper recipe (a distribution's cloud base for the VM builders) is built for them, not compared."""
    d, rel = distros.for_recipe(recipe)
    return bool(d.cloud_base_recipe) and recipe.name == d.cloud_base_recipe.format(version=rel.version)


def pairs(recipes: Optional[Iterable[str]] = None, tools: Optional[Iterable[str]] = None, *,
          check_installed: bool = True):
    """Every recipe x tool pair with whether it can be built (here, with `check_installed`) and, if not, why.
    Helper recipes are left out unless named."""
    import pandas as pd
    rows = []
    tools = list(tools or tool_names())
    for rname in recipes or list_recipe_names():
        try:
            recipe = load_checked(rname)
        except RecipeError as e:
            rows += [{"recipe": rname, "tool": t, "buildable": False, "reason": str(e)} for t in tools]
            continue
        if not recipes and is_helper(recipe):
            continue
        for tname in tools:
            reason = get_tool(tname).cannot_build(recipe, installed=check_installed)
            rows.append({"recipe": recipe.name, "tool": tname, "buildable": reason is None, "reason": reason or ""})
    return pd.DataFrame(rows, columns=["recipe", "tool", "buildable", "reason"])


def matrix(recipes=None, tools=None) -> dict:
    """The CI job matrix (GitHub Actions `strategy.matrix` form) of the pairs that can succeed on a runner like
    this host (the matrix job runs on the build jobs' runner image): the tool supports the recipe, and the tool
    is installed or scripts/setup.sh can install a usable version of it here."""
    df = pairs(recipes, tools, check_installed=False)
    installable = {t: get_tool(t).installable_reason() is None for t in set(df.tool)}
    loaded = {}
    for given in recipes or list_recipe_names():
        try:
            r = load_checked(given)
            loaded[r.name] = r
        except RecipeError:
            pass
    return {"include": [{"recipe": r.recipe, "tool": r.tool} for r in df.itertuples()
                        if r.buildable and installable[r.tool]
                        and get_tool(r.tool).host_lacks(loaded[r.recipe]) is None]}


def gitlab_pipeline(recipes=None, tools=None) -> str:
    """A GitLab child pipeline (YAML): one job per buildable pair, then the comparison over their records.
    Builds need root and mount namespaces: a shell executor, or a Docker executor with `privileged = true`."""
    import yaml
    jobs: dict = {"stages": ["build", "compare"]}
    names = []
    for job in matrix(recipes, tools)["include"]:
        r, t = job["recipe"], job["tool"]
        name = f"build {r} {t}"
        names.append(name)
        jobs[name] = {
            "stage": "build", "image": "debian:bookworm", "timeout": "90m",
            # the image's packages kept between pipelines: a warm build downloads only what changed
            "variables": {"RECIPE": r, "TOOL": t, "DISKIMAGES_CACHE": "$CI_PROJECT_DIR/.diskimages-cache"},
            "cache": {"key": f"packages-{r}-{t}", "paths": [".diskimages-cache/packages/"]},
            "script": [
                "./scripts/setup.sh",
                "mkdir -p build/notebooks",
                # an image this project already published with the same content key is pulled, not built again;
                # the job's registry credentials go to the project's registry only
                "DISKIMAGES_REGISTRY=$CI_REGISTRY DISKIMAGES_REGISTRY_AUTH_HOSTS=$CI_SERVER_HOST "
                "DISKIMAGES_REGISTRY_USER=$CI_REGISTRY_USER DISKIMAGES_REGISTRY_PASSWORD=$CI_REGISTRY_PASSWORD "
                ".venv/bin/papermill notebooks/build.ipynb build/notebooks/$RECIPE.$TOOL.ipynb "
                "-p recipe $RECIPE -p tool $TOOL -p output_dir build -p reuse_from $CI_REGISTRY_IMAGE/$RECIPE",
                # the credentials go to the project's registry and to GitLab's token service only
                "DISKIMAGES_REGISTRY=$CI_REGISTRY DISKIMAGES_REGISTRY_AUTH_HOSTS=$CI_SERVER_HOST "
                "DISKIMAGES_REGISTRY_USER=$CI_REGISTRY_USER DISKIMAGES_REGISTRY_PASSWORD=$CI_REGISTRY_PASSWORD "
                ".venv/bin/python -m diskimages push build/$RECIPE.$TOOL.qcow2 $CI_REGISTRY_IMAGE/$RECIPE:$TOOL",
            ],
            "artifacts": {"when": "always", "paths": ["build/*.json", "build/*.log", "build/*.png",
                                                      "build/notebooks/"]},
        }
    jobs["compare"] = {
        "stage": "compare", "image": "debian:bookworm", "when": "always",
        "needs": [{"job": n, "artifacts": True} for n in names],
        "script": [
            "./scripts/setup.sh --python-only",
            ".venv/bin/papermill notebooks/compare.ipynb build/compare.ipynb -p output_dir build "
            "-p build_missing False",
            ".venv/bin/jupyter nbconvert --to html build/compare.ipynb",
        ],
        "artifacts": {"paths": ["build/"]},
    }
    return yaml.safe_dump(jobs, sort_keys=False, width=200)


def record_path(output_dir: Path, recipe: str, tool: str) -> Path:
    return Path(output_dir) / f"{recipe}.{tool}.json"


def run_pair(recipe: str, tool: str, output_dir: Path, *, rebuild: bool = False, boot_test: bool = True,
             mirror: str = "") -> dict:
    """Build one pair through build.ipynb (its executed copy lands in OUTPUT/notebooks/), or reuse its record."""
    import papermill as pm
    output_dir = Path(output_dir).resolve()
    rec = record_path(output_dir, recipe, tool)
    if rec.is_file() and not rebuild:
        data = json.loads(rec.read_text())
        if data.get("status") != "failed":
            return data
    nb_dir = output_dir / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebooks_dir() / "build.ipynb"), str(nb_dir / f"{recipe}.{tool}.ipynb"),
                            parameters={"recipe": recipe, "tool": tool, "output_dir": str(output_dir),
                                        "mirror": mirror, "boot_test": boot_test, "rebuild": rebuild},
                            progress_bar=False)
    except Exception as e:   # papermill raises PapermillExecutionError with the cell's error
        log = output_dir / f"{recipe}.{tool}.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.is_file() else []
        failure = {"kind": "diskimages.build", "status": "failed", "recipe": recipe, "tool": tool,
                   "reason": (getattr(e, "evalue", None) or str(e)).strip().splitlines()[-1][:500],
                   "log_tail": "\n".join(tail)}
        measure.write_record(failure, rec)
        return failure
    return json.loads(rec.read_text())


def run(recipes=None, tools=None, output_dir: Path | str = "build/compare", *, rebuild: bool = False,
        boot_test: bool = True, mirror: str = "", progress: bool = True, build_missing: bool = True):
    """Build (or reuse) every buildable pair; returns the pairs table with each pair's outcome.
    `build_missing` False only reads the records already there (e.g. collected from CI jobs)."""
    from .progress import tqdm_class
    df = pairs(recipes, tools)
    outcomes = []
    todo = df[df.buildable]
    bar = tqdm_class()(total=len(todo), desc="pairs", disable=not progress)
    for row in df.itertuples():
        if not row.buildable:
            outcomes.append("skipped: " + row.reason)
            continue
        bar.set_postfix_str(f"{row.recipe} / {row.tool}")
        rec = record_path(Path(output_dir), row.recipe, row.tool)
        existed = rec.is_file()
        if not build_missing and not existed:
            outcomes.append("no record")
            bar.update(1)
            continue
        r = run_pair(row.recipe, row.tool, Path(output_dir), rebuild=rebuild, boot_test=boot_test, mirror=mirror)
        outcomes.append("failed: " + r["reason"] if r.get("status") == "failed" else
                        "built" if rebuild or not existed else "reused record")
        bar.update(1)
    bar.close()
    df["outcome"] = outcomes
    # what was built or recorded first, then the pairs with no record, then the refusals with their reasons
    rank = df["outcome"].map(lambda o: 2 if o.startswith("skipped") else 1 if o == "no record" else 0)
    return df.iloc[rank.argsort(kind="stable")].reset_index(drop=True)


def load(output_dir: Path | str):
    """Every record (built or failed) under `output_dir` as one DataFrame, one row per pair."""
    import pandas as pd
    df = measure.load_records(output_dir)
    if df.empty:
        return df
    if "status" not in df:
        df["status"] = "built"
    df["status"] = df["status"].fillna("built")
    if "boot_desktop_s" in df or "boot_login_s" in df:
        df["desktop s"] = df.get("boot_desktop_s", pd.Series(index=df.index, dtype=float)).fillna(
            df.get("boot_login_s", pd.Series(index=df.index, dtype=float)))
    return df


def package_differences(df, output_dir: Path | str, recipe: str):
    """For one recipe, the packages not every tool's image has: one row per package, one column per tool with
    the version it installed (empty where the image lacks it), read from each image's SPDX manifest. The VM
    builders' images carry cloud-init and their base's kernel, for example: this table says so."""
    import pandas as pd
    from . import manifest
    sub = df[(df["recipe"] == recipe) & (df["status"] == "built")] if len(df) else df
    versions: dict[str, dict[str, str]] = {}
    for row in sub.itertuples():
        name = getattr(row, "manifest", None)
        # a record may come from elsewhere (CI artifacts): its manifest must be a file beside it, nothing else
        ok = isinstance(name, str) and name and Path(name).name == name and not name.startswith(".")
        path = Path(output_dir) / name if ok else None
        if path is None or not path.is_file():
            continue
        versions[row.tool] = {p["name"]: p["version"] for p in manifest.load(path)}
    if len(versions) < 2:
        return pd.DataFrame()
    every = set.intersection(*(set(v) for v in versions.values()))
    names = sorted(set().union(*(set(v) for v in versions.values())) - every)
    table = pd.DataFrame({t: [v.get(n, "") for n in names] for t, v in sorted(versions.items())}, index=names)
    table.index.name = f"packages not in every {recipe} image ({len(every)} are in all)"
    return table


def package_summary(diff):
    """Per tool: how many of those packages its image adds (has where another lacks) and lacks."""
    import pandas as pd
    if diff.empty:
        return diff
    return pd.DataFrame({"has, others lack": (diff != "").sum(), "lacks": (diff == "").sum()})


def table(df, recipe: Optional[str] = None):
    """The comparison table (one row per tool) for one recipe, or all."""
    if df.empty:
        return df
    sub = df if recipe is None else df[df["recipe"] == recipe]
    built = measure.summary_table(sub[sub["status"] == "built"])
    if "desktop s" in sub:
        built["desktop s"] = sub.loc[sub["status"] == "built", "desktop s"].values
    if "boot_passed" in sub:
        built["boot ok"] = sub.loc[sub["status"] == "built", "boot_passed"].values
    failed = sub[sub["status"] == "failed"]
    if len(failed):
        import pandas as pd
        built = pd.concat([built, failed[["tool", "recipe", "reason"]]], ignore_index=True)
    return built


def ratios(t):
    """Each numeric column divided by the best (lowest) value among the tools for the same recipe:
    1.00 is the best tool for that recipe."""
    cols = [c for c in LOWER_IS_BETTER if c in t]
    out = t[["tool", "recipe"]].copy()
    for c in cols:
        values = t[c].astype(float).where(t[c].astype(float) > 0)
        best = values.groupby(t["recipe"]).transform("min")
        out[c] = (t[c].astype(float) / best).round(2)
    return out


def milestones(df, recipe: Optional[str] = None):
    """Seconds after power-on to each boot milestone (the boot check's), one row per built tool, in boot order."""
    import pandas as pd
    from .boot import MILESTONES
    if df.empty:
        return pd.DataFrame()
    sub = df[df["status"] == "built"] if recipe is None else df[(df["recipe"] == recipe) & (df["status"] == "built")]
    order = [m for m, _ in MILESTONES] + ["ip", "session", "desktop", "lease", "ssh"]
    cols = [f"boot_{m}_s" for m in order if f"boot_{m}_s" in sub and sub[f"boot_{m}_s"].notna().any()]
    out = sub[["tool", "recipe"] + cols].rename(columns={c: c[5:-2] for c in cols})
    return out.reset_index(drop=True)


def plot(t, recipe: str = ""):
    """Bar charts of build time and compressed size per tool."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for ax, col in zip(axes, ("build s", "file MB")):
        if col in t:
            ok = t.dropna(subset=[col])
            ax.bar(ok["tool"] + "\n" + ok["recipe"], ok[col], color="#4878a8")
            ax.set_title(f"{col} {recipe}".strip())
            ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def screenshots_html(df, output_dir: Path | str, width: int = 360) -> str:
    """The boot screenshots of the builds side by side (inline PNG)."""
    import base64
    cells = []
    for row in df[df["status"] == "built"].itertuples():
        stem = str(row.image).rsplit(".", 1)[0]
        shots = sorted(Path(output_dir).glob(f"{stem}.*.png"))
        if shots:
            b64 = base64.b64encode(shots[-1].read_bytes()).decode()
            cells.append(f"<figure style='display:inline-block;margin:4px'><img width='{width}' "
                         f"src='data:image/png;base64,{b64}'/><figcaption>{row.recipe} / {row.tool}</figcaption>"
                         "</figure>")
    return "".join(cells) or "<p>no screenshots</p>"
