"""Credentials go only to the registry they belong to: hostile registries on 127.0.0.1 (and a token service on
127.0.0.2) record every Authorization header they are sent."""
import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from diskimages import publish
from diskimages.registry import RegistryError, credentials_for

USER, SECRET = "alice", "s3cret-registry-pw"


class Hostile:
    """A fake registry on `addr` that answers every request 401 with the given challenge (`{token}` is the
    URL of its own token endpoint), and a token endpoint that records what it was sent."""

    def __init__(self, challenge: str, addr: str = "127.0.0.1"):
        self.seen: list[tuple[str, str]] = []          # (path, Authorization header)
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hostile.seen.append((self.path, self.headers.get("Authorization", "")))
                if self.path.startswith("/token"):
                    body = json.dumps({"token": "stolen-nothing"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(401)
                self.send_header("WWW-Authenticate", challenge.format(token=hostile.token_url))
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_HEAD = do_GET

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer((addr, 0), Handler)
        self.host = f"{addr}:{self.server.server_address[1]}"
        self.token_url = f"http://{self.host}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def authorizations(self) -> list[str]:
        return [a for _, a in self.seen if a]


@pytest.fixture
def env_creds(monkeypatch, tmp_path):
    for k in ("DISKIMAGES_REGISTRY", "DISKIMAGES_REGISTRY_AUTH_HOSTS", "DISKIMAGES_REGISTRY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.setenv("DISKIMAGES_REGISTRY_USER", USER)
    monkeypatch.setenv("DISKIMAGES_REGISTRY_PASSWORD", SECRET)
    return monkeypatch


def test_environment_credentials_belong_to_the_registry_they_name(env_creds, tmp_path):
    assert credentials_for("ghcr.io") is None                    # named for no registry: used for none
    env_creds.setenv("DISKIMAGES_REGISTRY", "https://ghcr.io/")
    assert credentials_for("ghcr.io") == (USER, SECRET)
    assert credentials_for("quay.io") is None and credentials_for("ghcr.io.evil.example") is None
    cfg = tmp_path / "docker"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"auths": {"https://quay.io": {
        "auth": base64.b64encode(b"bob:quay-pw").decode()}}}))
    env_creds.setenv("DOCKER_CONFIG", str(cfg))
    # mirror ghcr.io -> quay.io: each side gets its own credentials
    assert credentials_for("quay.io") == ("bob", "quay-pw") and credentials_for("ghcr.io") == (USER, SECRET)


def test_basic_challenge_from_another_registry_gets_no_credentials(env_creds, tmp_path):
    env_creds.setenv("DISKIMAGES_REGISTRY", "ghcr.io")
    h = Hostile('Basic realm="give me your password"')
    try:
        with pytest.raises(RegistryError) as e:
            publish.pull(f"{h.host}/x/img:v1", tmp_path / "out", progress=False)
        assert f"DISKIMAGES_REGISTRY_USER is set for ghcr.io, not {h.host}" in str(e.value)
        assert h.seen and not h.authorizations()
    finally:
        h.close()


def test_bearer_realm_on_another_host_gets_no_credentials(env_creds, tmp_path):
    token_service = Hostile("Basic", addr="127.0.0.2")         # another host; records what it is sent
    registry = Hostile(f'Bearer realm="http://{token_service.host}/token",service="x",scope="repository:x/img:pull"')
    env_creds.setenv("DISKIMAGES_REGISTRY", registry.host)      # the credentials are the registry's own
    try:
        with pytest.raises(RegistryError):
            publish.pull(f"{registry.host}/x/img:v1", tmp_path / "out", progress=False)
        assert [p for p, _ in token_service.seen if p.startswith("/token")]   # it asked for an anonymous token
        assert not token_service.authorizations()
        assert not [a for a in registry.authorizations() if not a.startswith("Bearer ")]   # only its own token
        # allowed by the user: the token service gets them
        env_creds.setenv("DISKIMAGES_REGISTRY_AUTH_HOSTS", "127.0.0.2")
        with pytest.raises(RegistryError):
            publish.pull(f"{registry.host}/x/img:v1", tmp_path / "out2", progress=False)
        sent = token_service.authorizations()
        assert sent and base64.b64decode(sent[-1].split()[1]).decode() == f"{USER}:{SECRET}"
    finally:
        registry.close()
        token_service.close()


def test_plain_http_realm_off_loopback_is_refused_before_any_request(env_creds, tmp_path):
    # 203.0.113.0/24 is reserved for documentation: nothing is sent there, the realm is refused first
    registry = Hostile('Bearer realm="http://203.0.113.7/token",service="x"')
    env_creds.setenv("DISKIMAGES_REGISTRY", registry.host)
    try:
        with pytest.raises(RegistryError, match=r"sent its token service as plain http \(203.0.113.7\): refused "
                                                r"\(allowed: https, or http on a loopback address\)"):
            publish.pull(f"{registry.host}/x/img:v1", tmp_path / "out", progress=False)
        assert not registry.authorizations()
    finally:
        registry.close()


def test_docker_credential_helpers_answer_for_their_registry_only(env_creds, tmp_path):
    env_creds.delenv("DISKIMAGES_REGISTRY_USER")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    # a helper answers for the registry it is asked about (the host on stdin)
    helper.write_text('#!/bin/sh\nread host\nprintf \'{"ServerURL":"%s","Username":"helper-user","Secret":"%s-pw"}\' '
                      '"$host" "$host"\n')
    helper.chmod(0o755)
    env_creds.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = tmp_path / "docker"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credHelpers": {"registry.example": "fake"}}))
    env_creds.setenv("DOCKER_CONFIG", str(cfg))
    assert credentials_for("registry.example") == ("helper-user", "registry.example-pw")
    assert credentials_for("other.example") is None
    (cfg / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    assert credentials_for("other.example") == ("helper-user", "other.example-pw")
