"""Pull against a hostile registry on 127.0.0.1: oversized, truncated and stalled blobs, unsafe titles, planted
links, escape sequences in error bodies, endless tag lists, redirect loops and malformed manifests. Each ends
in one line naming the registry and what went wrong, nothing written past a declared size, nothing replaced."""
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diskimages import publish
from diskimages.registry import RegistryClient, RegistryError

BLOB = os.urandom(1 << 20)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
ESC = "\x1b[2J\x1b[31m"


def manifest(title="disk.qcow2", size=len(BLOB), digest=DIGEST, **extra):
    layer = {"mediaType": "application/x-qemu-disk", "digest": digest, "size": size,
             "annotations": {"org.opencontainers.image.title": title}}
    if size is None:
        del layer["size"]
    return json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                  "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest()},
                       "layers": [layer], **extra}).encode()


class HostileRegistry:
    """Serves /v2/x/img: `manifest` bytes, and the blob the way `blob_mode` says."""

    def __init__(self, manifest_bytes=None, blob_mode="ok"):
        self.manifest = manifest_bytes if manifest_bytes is not None else manifest()
        self.blob_mode = blob_mode
        reg = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                p = self.path
                if p == "/v2/":
                    return self._send(200, b"{}")
                if "/manifests/" in p:
                    if p.endswith("/missing"):
                        return self._send(404, json.dumps({"errors": [{"message": ESC + "gone"}]}).encode(),
                                          [("Content-Type", "application/json")])
                    return self._send(200, reg.manifest,
                                      [("Content-Type", "application/vnd.oci.image.manifest.v1+json")])
                if "/tags/list" in p:
                    return self._send(200, b'{"name": "x/img", "tags": ["v1"]}',
                                      [("Link", f'<{p}>; rel="next"')])
                if "/blobs/" in p:
                    mode = reg.blob_mode
                    if mode == "ok":
                        return self._send(200, BLOB)
                    if mode == "huge":                       # 50 MiB for a 1 MiB layer
                        self.send_response(200)
                        self.send_header("Content-Length", str(50 << 20))
                        self.end_headers()
                        try:
                            for _ in range(50):
                                self.wfile.write(BLOB)
                        except OSError:
                            pass
                        return
                    if mode == "truncated":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(BLOB)))
                        self.end_headers()
                        self.wfile.write(BLOB[:1000])
                        self.close_connection = True
                        return
                    if mode == "stall":
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(BLOB)))
                        self.end_headers()
                        self.wfile.write(BLOB[:1000])
                        self.wfile.flush()
                        time.sleep(6)
                        return
                    if mode == "slow":                       # 64 KiB every 0.2 s
                        self.send_response(200)
                        self.send_header("Content-Length", str(len(BLOB)))
                        self.end_headers()
                        try:
                            for i in range(0, len(BLOB), 1 << 16):
                                self.wfile.write(BLOB[i:i + (1 << 16)])
                                self.wfile.flush()
                                time.sleep(0.2)
                        except OSError:
                            pass
                        return
                    if mode == "loop":
                        return self._send(307, b"", [("Location", p)])
                    if mode == "relative":
                        return self._send(307, b"", [("Location", "/storage/blob-data")])
                return self._send(404, b"{}")

            do_HEAD = do_GET

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def no_creds(monkeypatch, tmp_path):
    for k in ("DISKIMAGES_REGISTRY_USER", "DISKIMAGES_REGISTRY_PASSWORD", "DISKIMAGES_REGISTRY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "diskimages", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_a_good_pull_works(tmp_path):
    with HostileRegistry() as reg:
        res = publish.pull(f"{reg.host}/x/img:v1", tmp_path, progress=False)
    assert res.files == [tmp_path / "disk.qcow2"] and (tmp_path / "disk.qcow2").read_bytes() == BLOB


def test_a_blob_longer_than_declared_is_cut_off_at_its_size(tmp_path):
    with HostileRegistry(blob_mode="huge") as reg:
        with pytest.raises(RegistryError, match=r"longer than the 1048576 bytes its manifest declares"):
            publish.pull(f"{reg.host}/x/img:v1", tmp_path, progress=False)
    assert not (tmp_path / "disk.qcow2").exists()
    assert all(p.stat().st_size <= len(BLOB) for p in tmp_path.iterdir())


@pytest.mark.parametrize("title", [".bashrc", "../evil", "a/b", ESC + "x", "x\nmore", "img.partial", ""])
def test_unsafe_titles_are_refused(tmp_path, title):
    (tmp_path / ".bashrc").write_text("mine\n")
    with HostileRegistry(manifest(title=title)) as reg:
        p = cli("pull", f"{reg.host}/x/img:v1", str(tmp_path))
    assert p.returncode == 1 and p.stderr.count("\n") == 1, p.stderr
    assert f"error: {reg.host}: {reg.host}/x/img:v1: layer sha256:" in p.stderr and "unsafe title" in p.stderr
    assert "\x1b" not in p.stderr
    assert (tmp_path / ".bashrc").read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == [".bashrc"]


def test_an_existing_file_is_replaced_only_with_force(tmp_path):
    (tmp_path / "disk.qcow2").write_text("my own disk")
    with HostileRegistry() as reg:
        p = cli("pull", f"{reg.host}/x/img:v1", str(tmp_path))
        assert p.returncode == 1 and "exists with other content: not replaced (use --force)" in p.stderr
        assert (tmp_path / "disk.qcow2").read_text() == "my own disk"
        assert cli("pull", f"{reg.host}/x/img:v1", str(tmp_path), "--force").returncode == 0
    assert (tmp_path / "disk.qcow2").read_bytes() == BLOB


def test_a_planted_partial_link_is_not_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_text("do not touch")
    out = tmp_path / "out"
    out.mkdir()
    (out / "disk.qcow2.partial").symlink_to(target)
    with HostileRegistry() as reg:
        with pytest.raises(RegistryError, match="disk.qcow2.partial: cannot be written"):
            publish.pull(f"{reg.host}/x/img:v1", out, progress=False)
    assert target.read_text() == "do not touch"


def test_escape_sequences_in_error_bodies_are_not_printed(tmp_path):
    with HostileRegistry() as reg:
        p = cli("pull", f"{reg.host}/x/img:missing", str(tmp_path))
    assert p.returncode == 1 and "not found" in p.stderr and "gone" in p.stderr and "\x1b" not in p.stderr


def test_a_self_linking_tag_list_ends(tmp_path):
    with HostileRegistry() as reg:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="the tag list does not end \\(a page links to itself\\)"):
            RegistryClient(reg.host).list_tags(publish.Ref.parse(f"{reg.host}/x/img"))
        assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("mode,words", [("truncated", "broke off after"),
                                        ("stall", "broke off after"),
                                        ("loop", "too many redirects (a redirect loop)")])
def test_broken_transfers_end_in_one_line(tmp_path, mode, words):
    with HostileRegistry(blob_mode=mode) as reg:
        if mode == "stall":
            c = RegistryClient(reg.host, timeout=2)
            with pytest.raises(RegistryError, match=words):
                publish.pull(f"{reg.host}/x/img:v1", tmp_path, progress=False, client=c)
            return
        p = cli("pull", f"{reg.host}/x/img:v1", str(tmp_path))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {reg.host}") and words in p.stderr
    assert not (tmp_path / "disk.qcow2").exists()


@pytest.mark.parametrize("body,words", [(b"[1, 2]", "the manifest is not a JSON object"),
                                        (b"<html>", "the manifest is not JSON"),
                                        (manifest(size=None), "has no usable size"),
                                        (manifest(digest="sha256:../../etc"), "without a sha256 digest")])
def test_malformed_manifests_end_in_one_line(tmp_path, body, words):
    with HostileRegistry(body) as reg:
        p = cli("pull", f"{reg.host}/x/img:v1", str(tmp_path))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"error: {reg.host}: {reg.host}/x/img:v1: ") and words in p.stderr


def test_blob_url_resolves_a_relative_location(tmp_path):
    with HostileRegistry(blob_mode="relative") as reg:
        u = publish.blob_url(f"{reg.host}/x/img:v1")
    assert u.direct and u.url == f"http://{reg.host}/storage/blob-data"
