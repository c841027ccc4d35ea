"""Publishing through real OCI registries on 127.0.0.1 (Debian's docker-registry, started per test): push,
pull, download URL, mirror, tags; anonymous, basic and token auth; each oras-py defect the client fixes."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from diskimages import publish
from diskimages.localregistry import LocalRegistry
from diskimages.registry import Ref, RegistryClient, RegistryError

from registry_support import PASSWORD, USER, StaticServer, TokenServer, write_htpasswd

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry not installed")


@pytest.fixture
def image(tmp_path):
    """A small qcow2 with its build record beside it."""
    img = tmp_path / "img" / "demo.mmdebstrap.qcow2"
    img.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), "64M"], check=True)
    with open(img, "ab") as f:
        f.write(os.urandom(3 << 20))          # some content, so digests mean something
    rec = {"kind": "diskimages.build", "recipe": "demo", "tool": "mmdebstrap", "tool_version": "1.3.5",
           "virtual_bytes": 64 << 20, "file_bytes": img.stat().st_size, "total_wall_s": 12.5, "format": "qcow2",
           "manifest": "demo.mmdebstrap.spdx.json", "content_key": "sha256:" + "ab" * 32}
    img.with_suffix(".json").write_text(json.dumps(rec))
    img.with_name("demo.mmdebstrap.spdx.json").write_text('{"spdxVersion": "SPDX-2.3", "packages": []}')
    return img


@pytest.fixture
def registry(tmp_path):
    with LocalRegistry(tmp_path / "storage") as reg:
        yield reg


@pytest.fixture
def no_creds(monkeypatch, tmp_path):
    for k in ("DISKIMAGES_REGISTRY_USER", "DISKIMAGES_REGISTRY_PASSWORD", "DISKIMAGES_REGISTRY_TOKEN",
              "DISKIMAGES_REGISTRY", "DISKIMAGES_REGISTRY_AUTH_HOSTS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


@pytest.fixture
def creds(monkeypatch, no_creds):
    monkeypatch.setenv("DISKIMAGES_REGISTRY_USER", USER)
    monkeypatch.setenv("DISKIMAGES_REGISTRY_PASSWORD", PASSWORD)


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def blob_file(storage: Path, digest: str) -> Path:
    h = digest.split(":")[1]
    return storage / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data"


def test_push_pull_roundtrip_with_annotations(registry, image, tmp_path, no_creds):
    ref = f"{registry.host}/diskimages/demo:v1"
    res = publish.push(image, ref, extra_tags=("latest",), progress=False)
    m = res.manifest
    assert m["artifactType"] == "application/vnd.diskimages.image.v1"
    assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    disk = m["layers"][0]
    assert disk["mediaType"] == "application/x-qemu-disk" and disk["digest"] == sha(image)
    assert disk["annotations"]["org.opencontainers.image.title"] == image.name
    ann = m["annotations"]
    assert ann["io.github.diskimages.recipe"] == "demo" and ann["io.github.diskimages.build-seconds"] == "12.5"
    assert ann["io.github.diskimages.content-key"] == "sha256:" + "ab" * 32
    assert "org.opencontainers.image.created" in ann and "org.opencontainers.image.revision" in ann

    sbom = m["layers"][2]          # the package manifest travels with the image, as its own layer
    assert sbom["mediaType"] == "application/spdx+json" and sbom["digest"] == sha(image.with_name(
        "demo.mmdebstrap.spdx.json")) and sbom["annotations"]["org.opencontainers.image.title"] == \
        "demo.mmdebstrap.spdx.json"

    # by tag and by digest
    for r in (f"{registry.host}/diskimages/demo:latest", res.pinned):
        out = publish.pull(r, tmp_path / "out", progress=False)
        assert out.digest == res.digest
        assert sha(tmp_path / "out" / image.name) == sha(image)
        assert sha(tmp_path / "out" / "demo.mmdebstrap.spdx.json") == sbom["digest"]
        assert json.loads((tmp_path / "out" / "demo.mmdebstrap.json").read_text())["recipe"] == "demo"
    df = publish.tags(f"{registry.host}/diskimages/demo")
    # every push also tags the image by its content key (build --reuse-from finds it in one request)
    assert list(df["tag"]) == ["ck-" + "ab" * 20, "latest", "v1"] and set(df["recipe"]) == {"demo"}
    assert set(df["digest"]) == {res.digest[:19]}


def test_pull_of_a_corrupted_blob_fails_and_leaves_nothing(registry, image, tmp_path, no_creds):
    res = publish.push(image, f"{registry.host}/d/demo:v1", progress=False)
    data = blob_file(registry.storage, sha(image))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(RegistryError, match="does not match its digest"):
        publish.pull(res.pinned, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / image.name).exists()
    assert not list((tmp_path / "out").glob("*.partial"))


def test_interrupted_pull_resumes_with_a_range_request(registry, image, tmp_path, no_creds, monkeypatch):
    res = publish.push(image, f"{registry.host}/d/demo:v1", progress=False)
    out = tmp_path / "out"
    out.mkdir()
    half = image.stat().st_size // 2
    (out / (image.name + ".partial")).write_bytes(image.read_bytes()[:half])   # what an interrupted pull leaves
    seen = []
    orig = RegistryClient.do_request

    def spy(self, url, method="GET", *a, **kw):
        r = orig(self, url, method, *a, **kw)
        if "/blobs/" in url and method == "GET":
            seen.append(((kw.get("headers") or {}).get("Range"), r.status_code))
        return r
    monkeypatch.setattr(RegistryClient, "do_request", spy)
    publish.pull(res.ref, out, progress=False)
    assert (f"bytes={half}-", 206) in seen
    assert sha(out / image.name) == sha(image)


def test_blob_url_200_from_a_registry_that_serves_blobs(registry, image, no_creds):
    publish.push(image, f"{registry.host}/d/demo:v1", progress=False)
    u = publish.blob_url(f"{registry.host}/d/demo:v1")
    assert u.status == 200 and not u.direct and u.digest == sha(image)
    assert "serves the blob itself" in u.explain() and u.curl.startswith("curl -fLo disk")
    assert hashlib.sha256(requests.get(u.url, timeout=30).content).hexdigest() == sha(image)[7:]


def test_blob_url_307_from_a_registry_backed_by_other_storage(tmp_path, image, no_creds):
    storage = tmp_path / "storage"
    storage.mkdir()
    static = StaticServer(storage)
    try:
        with LocalRegistry(storage, redirect_base=static.url) as reg:
            publish.push(image, f"{reg.host}/d/demo:v1", progress=False)
            u = publish.blob_url(f"{reg.host}/d/demo:v1")
            assert u.status == 307 and u.direct and u.url.startswith(static.url)
            got = requests.get(u.url, timeout=30).content       # a plain GET, no registry protocol
            assert "sha256:" + hashlib.sha256(got).hexdigest() == sha(image)
            # and pulls still work through the redirect, verified
            publish.pull(f"{reg.host}/d/demo:v1", tmp_path / "out", progress=False)
            assert sha(tmp_path / "out" / image.name) == sha(image)
    finally:
        static.close()


def test_basic_auth_registry(tmp_path, image, no_creds, monkeypatch):
    with LocalRegistry(tmp_path / "storage", htpasswd=write_htpasswd(tmp_path / "htpasswd")) as reg:
        with pytest.raises(RegistryError, match="needs a user name and password: set DISKIMAGES_REGISTRY, "):
            publish.push(image, f"{reg.host}/d/demo:v1", progress=False)
        monkeypatch.setenv("DISKIMAGES_REGISTRY_USER", USER)
        monkeypatch.setenv("DISKIMAGES_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(RegistryError, match=f"DISKIMAGES_REGISTRY_USER is set for no registry, not {reg.host}"):
            publish.push(image, f"{reg.host}/d/demo:v1", progress=False)    # credentials bound to no host
        monkeypatch.setenv("DISKIMAGES_REGISTRY", reg.host)
        with pytest.raises(RegistryError, match="access denied"):
            publish.push(image, f"{reg.host}/d/demo:v1", progress=False)
        monkeypatch.setenv("DISKIMAGES_REGISTRY_PASSWORD", PASSWORD)
        res = publish.push(image, f"{reg.host}/d/demo:v1", progress=False)
        publish.pull(res.pinned, tmp_path / "out", progress=False)
        assert sha(tmp_path / "out" / image.name) == sha(image)


def test_credentials_from_a_docker_config_file(tmp_path, image, no_creds, monkeypatch):
    with LocalRegistry(tmp_path / "storage", htpasswd=write_htpasswd(tmp_path / "htpasswd")) as reg:
        cfg = tmp_path / "docker"
        cfg.mkdir()
        import base64
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (cfg / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
        assert publish.push(image, f"{reg.host}/d/demo:v1", progress=False).digest.startswith("sha256:")


def test_token_auth_registry_scopes_and_expiry(tmp_path, image, no_creds, monkeypatch):
    """oras-py re-sends its cached pull-scoped token when a push needs push scope; and tokens expire."""
    ts = TokenServer(tmp_path / "token.pem", ttl=2)
    try:
        with LocalRegistry(tmp_path / "storage", token=ts.registry_auth()) as reg:
            ref = f"{reg.host}/d/demo:v1"
            with pytest.raises(RegistryError, match="access denied"):
                publish.push(image, ref, progress=False)        # anonymous: pull only
            monkeypatch.setenv("DISKIMAGES_REGISTRY_USER", USER)
            monkeypatch.setenv("DISKIMAGES_REGISTRY_PASSWORD", PASSWORD)
            monkeypatch.setenv("DISKIMAGES_REGISTRY", reg.host)
            c = RegistryClient(reg.host)
            r = Ref.parse(ref)
            assert not c.has_blob(r, sha(image))                 # HEAD: a pull-scoped token is cached
            res = publish.push(image, ref, progress=False, client=c)   # POST needs push: a new token is asked for
            assert any("push" in (q["scope"] or [""])[0] for q in ts.requests if q["authed"])
            time.sleep(3)                                        # the cached token has expired
            out = publish.pull(ref, tmp_path / "out", progress=False, client=c)
            assert out.digest == res.digest and sha(tmp_path / "out" / image.name) == sha(image)
            monkeypatch.delenv("DISKIMAGES_REGISTRY_USER")
            monkeypatch.delenv("DISKIMAGES_REGISTRY_PASSWORD")
            u = publish.blob_url(ref)                            # anonymous token, as for a public image
            assert u.status == 200 and "Authorization: Bearer " in u.curl
    finally:
        ts.close()


def test_mirror_keeps_the_digest_between_registries_and_within_one(tmp_path, image, no_creds):
    with LocalRegistry(tmp_path / "a") as a, LocalRegistry(tmp_path / "b") as b:
        res = publish.push(image, f"{a.host}/d/demo:v1", progress=False)
        assert publish.mirror(f"{a.host}/d/demo:v1", f"{b.host}/mirror/demo:v1", progress=False) == res.digest
        assert publish.pull(f"{b.host}/mirror/demo:v1", tmp_path / "out", progress=False).digest == res.digest
        assert sha(tmp_path / "out" / image.name) == sha(image)
        assert publish.mirror(f"{a.host}/d/demo:v1", f"{a.host}/other/demo:v2", progress=False) == res.digest


def test_skopeo_reads_and_copies_what_we_push(tmp_path, image, no_creds):
    if not shutil.which("skopeo"):
        pytest.skip("skopeo not installed")
    with LocalRegistry(tmp_path / "a") as a, LocalRegistry(tmp_path / "b") as b:
        res = publish.push(image, f"{a.host}/d/demo:v1", progress=False)
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{a.host}/d/demo:v1"],
                             capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == res.digest
        assert json.loads(raw)["artifactType"] == "application/vnd.diskimages.image.v1"
        subprocess.run(["skopeo", "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
                        f"docker://{a.host}/d/demo:v1", f"docker://{b.host}/d/demo:v1"], check=True,
                       capture_output=True)
        out = publish.pull(f"{b.host}/d/demo:v1", tmp_path / "out", progress=False)
        assert out.digest == res.digest and sha(tmp_path / "out" / image.name) == sha(image)


def test_failures_are_fast_and_clear(registry, image, no_creds):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match=f"cannot reach 127.0.0.1:{dead}: connection refused"):
        publish.push(image, f"127.0.0.1:{dead}/d/demo:v1", progress=False)
    with pytest.raises(RegistryError, match="not found"):
        publish.pull(f"{registry.host}/d/nothing:v1", "/tmp/never", progress=False)
    assert time.monotonic() - t0 < 10
    with pytest.raises(RegistryError, match="is not a reference"):
        Ref.parse("no-registry-here")


@pytest.mark.parametrize("client", ["RegistryClient(host)", "RegistryClient(host, chunk_threshold=0, chunk_size=256 << 20)"],
                         ids=["streamed-put", "patch-chunks"])
def test_push_of_1_gib_keeps_memory_flat(registry, tmp_path, no_creds, client):
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20) * 16)                  # 1 GiB, not all zeros
    # VmHWM: the peak RSS of this process image (ru_maxrss would carry the forking parent's over exec)
    code = ("import sys, re; from diskimages import publish; from diskimages.registry import RegistryClient; "
            f"host = '{registry.host}'; "
            f"publish.push(sys.argv[1], host + '/d/big:v1', progress=False, client={client}); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, check=True)
    peak_mb = int(out.stdout.strip().splitlines()[-1]) / 1024
    assert peak_mb < 150, f"peak RSS {peak_mb:.0f} MB"
    assert blob_file(registry.storage, "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()).stat().st_size == 1 << 30


def test_chunked_upload_above_the_threshold(registry, image, no_creds):
    c = RegistryClient(registry.host, chunk_threshold=1 << 20, chunk_size=1 << 20)
    res = publish.push(image, f"{registry.host}/d/chunked:v1", progress=False, client=c)
    assert blob_file(registry.storage, sha(image)).read_bytes() == image.read_bytes()
    assert res.manifest["layers"][0]["size"] == image.stat().st_size


def test_cli_cycle_with_the_embedded_registry_and_no_secret_in_output(tmp_path, image, creds):
    storage = tmp_path / "reg"

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "diskimages", *a, "--storage", str(storage)],
                              capture_output=True, text=True, timeout=300)
    p = cli("push", str(image), "diskimages/demo:v1")
    assert p.returncode == 0, p.stderr
    assert "embedded registry" in p.stdout and "digest sha256:" in p.stdout
    t = cli("tags", "diskimages/demo")
    assert t.returncode == 0 and "v1" in t.stdout and "demo" in t.stdout
    u = cli("blob-url", "diskimages/demo:v1")
    assert u.returncode == 0 and "/v2/diskimages/demo/blobs/sha256:" in u.stdout
    q = cli("pull", "diskimages/demo:v1", str(tmp_path / "out"))
    assert q.returncode == 0 and sha(tmp_path / "out" / image.name) == sha(image)
    bad = cli("pull", "diskimages/demo:nope", str(tmp_path / "out2"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "not found" in bad.stderr
    for proc in (p, t, u, q, bad):
        assert PASSWORD not in proc.stdout + proc.stderr
    assert subprocess.run([sys.executable, "-m", "diskimages", "push", "--help"], capture_output=True).returncode == 0


def test_publish_notebook_runs_headless(tmp_path, image, no_creds):
    import papermill as pm
    from diskimages.paths import notebooks_dir
    out_nb = tmp_path / "publish.out.ipynb"
    pm.execute_notebook(str(notebooks_dir() / "publish.ipynb"), str(out_nb), cwd=str(tmp_path), progress_bar=False,
                        parameters={"image": str(image), "ref": "diskimages/demo:nb", "storage": str(tmp_path / "reg"),
                                    "pull_dir": str(tmp_path / "pulled")})
    text = out_nb.read_text()
    assert "io.github.diskimages.recipe" in text and "application/vnd.diskimages.image.v1" in text
    assert "Container registry (OCI)" in text and "serves the blob itself" in text
    assert sha(tmp_path / "pulled" / image.name) == sha(image)



def test_download_format_raw_zst_is_pushed_and_unpacks_to_the_same_disk(registry, tmp_path, no_creds, capsys):
    """`push --download-format raw.zst`: the raw disk, zstd with long-distance matching, as one more layer; a
    plain `zstd -d` of the pulled file gives the very disk the qcow2 holds; the qcow2 stays the disk layer."""
    from diskimages.cli import main as cli_main
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(2 << 20) + bytes(4 << 20) + b"diskimages" * 100000)
    img = tmp_path / "img" / "demo.mmdebstrap.qcow2"
    img.parent.mkdir()
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(img)], check=True)
    ref = f"{registry.host}/d/demo:v1"
    assert cli_main(["push", str(img), ref, "--download-format", "raw.zst", "--zstd-level", "3",
                     "--plain-http"]) == 0
    made = img.with_name("demo.mmdebstrap.raw.zst")
    assert made.is_file() and not [p for p in img.parent.iterdir() if p.name.endswith(".partial")]
    m = publish._artifact_manifest(RegistryClient(registry.host, True), Ref.parse(ref))[0]
    kinds = {layer["annotations"]["org.opencontainers.image.title"]: layer["mediaType"] for layer in m["layers"]}
    assert kinds == {img.name: "application/x-qemu-disk", made.name: "application/zstd"}
    assert publish.disk_layer(m)["digest"] == sha(img)
    out = publish.pull(ref, tmp_path / "out", progress=False)
    got = tmp_path / "out" / made.name
    assert got in out.files and sha(got) == sha(made)
    subprocess.run(["zstd", "-q", "-d", str(got), "-o", str(tmp_path / "unpacked.raw")], check=True)
    assert sha(tmp_path / "unpacked.raw") == sha(raw)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(["push", str(img), ref, "--download-format", "raw.zst", "--zstd-level", "25"])
    assert e.value.code == 2
    assert "argument --zstd-level: '25' is not allowed (allowed: 1 to 19)" in capsys.readouterr().err
