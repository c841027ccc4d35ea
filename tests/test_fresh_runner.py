"""The CI pipelines run on a fresh runner: an Ubuntu 24.04 root (GitHub's `ubuntu-24.04` runner) and a Debian 12
root (the `debian:bookworm` image GitLab's jobs name), made by mmdebstrap from the mirror, the repository copied
in, and the workflow's own steps executed in order with the variables the CI service sets: GitHub's planning job,
one build job of its matrix with the boot check and the push (to an embedded registry standing in for ghcr.io),
and the comparing job over that build job's artifacts; GitLab's plan job and the comparing job of the child
pipeline it generates."""
import contextlib
import json
import shutil
import subprocess
import time

import pytest
import yaml

from runner_support import (REPO_DIR, RUNNER_UID, Artifacts, Expressions, checkout, links, make_root, reap_root,
                            run_github_job, run_in_root)

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


def test_github_workflow_plans_builds_pushes_and_compares_on_a_fresh_ubuntu_runner(tmp_path, monkeypatch):
    """The planning job for real; one build job of its matrix (debian-13-minimal with mmdebstrap: the full
    set-up, the build and the boot check, TCG here) with its push to an embedded registry standing in for
    ghcr.io; the comparing job over that build job's uploaded artifacts."""
    from diskimages import measure
    from diskimages.localregistry import LocalRegistry
    from diskimages.registry import Ref, RegistryClient
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    log = tmp_path / "runner.log"
    t0 = time.monotonic()
    root = make_root(tmp_path / "root", "ubuntu-24.04-xubuntu", log)
    _say(log, "root made", t0)
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    values = {"github.event_name": "push", "github.ref": "refs/heads/main", "github.actor": "example",
              "github.repository_owner": "Example-Owner", "github.run_number": "7"}
    artifacts = Artifacts(tmp_path / "artifacts")

    def uses(ws):
        return {"actions/checkout": lambda w: checkout(root, ws),
                "actions/cache": lambda w: None,                      # a first run: nothing to restore
                "actions/upload-artifact": lambda w: artifacts.upload(root, ws, w),
                "actions/download-artifact": lambda w: artifacts.download(root, ws, w)}

    ws = "/home/runner/work/plan/disk-images"
    out = run_github_job(jobs["matrix"], root, ws, Expressions({**values, "github.workspace": ws}), log, uses(ws))
    _say(log, "planning job", t0)
    pairs = {(j["recipe"], j["tool"]) for j in json.loads(out["matrix"])["include"]}
    tools = {t for _, t in pairs}
    assert ("debian-13-minimal", "mmdebstrap") in pairs, sorted(pairs)
    assert "packer" not in tools                   # not in Ubuntu's archive: its jobs could never pass
    assert not [r for r, _ in pairs if r.endswith("cloud-base")]      # helper recipes are built for the VM tools

    before = links()
    with LocalRegistry(tmp_path / "registry") as reg, contextlib.ExitStack() as stack:
        stack.callback(reap_root, root, before)
        ws = "/home/runner/work/build/disk-images"
        ex = Expressions({**values, "github.workspace": ws, "matrix.recipe": "debian-13-minimal",
                          "matrix.tool": "mmdebstrap"})
        run_github_job(jobs["build"], root, ws, ex, log, uses(ws), rewrite=lambda t: t.replace("ghcr.io", reg.host))
        _say(log, "build job", t0)
        built = json.loads((artifacts.store / "results-debian-13-minimal.mmdebstrap" /
                            "debian-13-minimal.mmdebstrap.json").read_text())
        assert built["boot"]["passed"] is True, built["boot"]["reason"]
        assert (artifacts.store / "results-debian-13-minimal.mmdebstrap" / "notebooks" /
                "debian-13-minimal.mmdebstrap.ipynb").is_file()
        pushed = RegistryClient(reg.host).list_tags(Ref.parse(f"{reg.host}/example-owner/debian-13-minimal:x"))
        assert {"mmdebstrap", "mmdebstrap-7"} <= set(pushed), pushed
        image = root / ws.lstrip("/") / "build/debian-13-minimal.mmdebstrap.qcow2"
        assert measure.sha256_file(image) == built["sha256"]

    ws = "/home/runner/work/compare/disk-images"
    run_github_job(jobs["compare"], root, ws, Expressions({**values, "github.workspace": ws}), log, uses(ws))
    _say(log, "comparing job", t0)
    results = artifacts.store / "comparison"
    page = (results / "compare.html").read_text()
    assert "debian-13-minimal" in page and "mmdebstrap" in page
    nb = json.loads((results / "compare.ipynb").read_text())
    assert not nb["metadata"]["papermill"]["exception"]
    assert sum("<table" in "".join(o.get("data", {}).get("text/html", "")) for c in nb["cells"]
               for o in c.get("outputs", [])) >= 1
    print(log.read_text()[-600:])


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
