"""The CI pipelines run on a fresh runner: an Ubuntu 24.04 root (GitHub's `ubuntu-24.04` runner) and a Debian 12
root (the `debian:bookworm` image GitLab's jobs name), made by mmdebstrap from the mirror, the repository copied
in, and the workflow's own steps executed in order with the variables the CI service sets: GitHub's planning job
and its comparing job over build artifacts, GitLab's plan job and the comparing job of the child pipeline it
generates. (The build jobs themselves are proven by the build tests on this host; here they would repeat the
same build inside the root.)"""
import json
import shutil
import subprocess
import time

import pytest
import yaml

from runner_support import (REPO_DIR, RUNNER_UID, Expressions, checkout, make_root, run_github_job,
                            run_in_root)

pytestmark = pytest.mark.build          # root, mmdebstrap, the mirror and PyPI; minutes, not seconds

RECORDS = REPO_DIR / "tests" / "data" / "records"
WORKFLOW = REPO_DIR / ".github" / "workflows" / "images.yml"


def _records_as_artifacts(dest, uid=RUNNER_UID):
    """What the build jobs upload, merged into one folder as download-artifact does."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in RECORDS.iterdir():
        shutil.copy(f, dest / f.name)
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(dest)], check=True)


def _say(log, what, t0):
    with open(log, "a") as f:
        f.write(f"\n### {what}: {time.monotonic() - t0:.0f} s\n")


def test_github_workflow_plans_and_compares_on_a_fresh_ubuntu_runner(tmp_path):
    log = tmp_path / "runner.log"
    t0 = time.monotonic()
    root = make_root(tmp_path / "root", "ubuntu-24.04-xubuntu", log)
    _say(log, "root made", t0)
    wf = yaml.safe_load(WORKFLOW.read_text())
    jobs = wf["jobs"]
    ws = "/home/runner/work/disk-images/disk-images"
    values = {"github.event_name": "push", "github.ref": "refs/heads/main", "github.actor": "example",
              "github.repository_owner": "Example-Owner", "github.run_number": "1", "github.workspace": ws}
    uploaded = {}
    uses = {"actions/checkout": lambda w: checkout(root, ws),
            "actions/upload-artifact": lambda w: uploaded.update({w["name"]: w["path"]})}
    out = run_github_job(jobs["matrix"], root, ws, Expressions(values), log, uses)
    _say(log, "planning job", t0)
    matrix = json.loads(out["matrix"])
    pairs = {(j["recipe"], j["tool"]) for j in matrix["include"]}
    tools = {t for _, t in pairs}
    assert ("debian-13-minimal", "mmdebstrap") in pairs, sorted(pairs)
    assert "packer" not in tools                   # not in Ubuntu's archive: its jobs could never pass
    assert not [r for r, _ in pairs if r.endswith("cloud-base")]      # helper recipes are built for the VM tools
    assert (root / ws.lstrip("/") / ".venv/bin/python").is_file()

    # the comparing job: a fresh checkout, the build jobs' artifacts, the executed comparison uploaded
    ws2 = "/home/runner/work/compare/disk-images"
    uses = {"actions/checkout": lambda w: checkout(root, ws2),
            "actions/download-artifact": lambda w: _records_as_artifacts(root / ws2.lstrip("/") / w["path"]),
            "actions/upload-artifact": lambda w: uploaded.update({w["name"]: w["path"]})}
    run_github_job(jobs["compare"], root, ws2, Expressions(values), log, uses)
    _say(log, "comparing job", t0)
    results = root / ws2.lstrip("/") / uploaded["comparison"]
    page = (results / "compare.html").read_text()
    for tool in ("mmdebstrap", "mkosi", "debos"):
        assert tool in page
    nb = json.loads((results / "compare.ipynb").read_text())
    assert not nb["metadata"]["papermill"]["exception"]
    assert sum("<table" in "".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"]
               for o in c.get("outputs", [])) >= 2


def test_gitlab_plan_and_its_child_comparison_run_on_a_fresh_debian_image(tmp_path):
    log = tmp_path / "runner.log"
    parent = yaml.safe_load((REPO_DIR / ".gitlab-ci.yml").read_text())
    root = make_root(tmp_path / "root", f"debian-{parent['plan']['image'].split(':')[1] == 'bookworm' and 12 or 13}"
                     "-minimal", log)
    ws = "/builds/group/disk-images"
    checkout(root, ws)
    subprocess.run(["chown", "-R", "0:0", str(root / ws.lstrip("/"))], check=True)    # GitLab's jobs run as root
    env = {"CI": "true", "GITLAB_CI": "true", "CI_PROJECT_DIR": ws, "CI_REGISTRY": "registry.example",
           "CI_REGISTRY_IMAGE": "registry.example/group/disk-images", "CI_SERVER_HOST": "gitlab.example"}
    status = run_in_root(root, "\n".join(parent["plan"]["script"]), cwd=ws, env=env, log=log, user="root")
    assert status == 0, log.read_text()[-3000:]
    child = yaml.safe_load((root / ws.lstrip("/") / parent["plan"]["artifacts"]["paths"][0]).read_text())
    builds = [n for n in child if n.startswith("build ")]
    assert "build debian-13-minimal mmdebstrap" in builds and child["compare"]["needs"]
    # the child's comparing job over its build jobs' artifacts (build/), in a fresh checkout
    ws2 = "/builds/group/compare"
    checkout(root, ws2)
    _records_as_artifacts(root / ws2.lstrip("/") / "build", uid=0)
    subprocess.run(["chown", "-R", "0:0", str(root / ws2.lstrip("/"))], check=True)
    status = run_in_root(root, "\n".join(child["compare"]["script"]), cwd=ws2, env=env, log=log, user="root")
    assert status == 0, log.read_text()[-3000:]
    assert "mkosi" in (root / ws2.lstrip("/") / "build/compare.html").read_text()
