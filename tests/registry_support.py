"""Test support: registries on 127.0.0.1 with random ports (anonymous, htpasswd, token auth, redirecting blobs),
a small token server issuing JWTs signed with a throwaway key, and a static file server."""
from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

USER, PASSWORD = "alice", "s3cret-registry-pw"


def write_htpasswd(path: Path) -> Path:
    path.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()}\n")
    return path


class TokenServer:
    """GET /token?service=..&scope=repository:NAME:pull,push -> a JWT; anonymous callers get pull only."""

    def __init__(self, cert_path: Path, ttl: int = 300, issuer: str = "diskimages-test", service: str = "registry"):
        self.issuer, self.service, self.ttl = issuer, service, ttl
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "diskimages test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.cert_path = cert_path
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                u = urlparse(self.path)
                q = parse_qs(u.query)
                a = self.headers.get("Authorization", "")
                authed = False
                if a.startswith("Basic "):
                    authed = base64.b64decode(a[6:]).decode() == f"{USER}:{PASSWORD}"
                    if not authed:
                        self.send_response(401)
                        self.end_headers()
                        return
                access = []
                for sc in " ".join(q.get("scope", [])).split():
                    typ, _, rest = sc.partition(":")
                    nm, _, acts = rest.rpartition(":")
                    want = [x for x in acts.split(",") if x]
                    access.append({"type": typ, "name": nm, "actions": want if authed else
                                   [x for x in want if x == "pull"]})
                server.requests.append({"scope": q.get("scope"), "authed": authed})
                t = int(time.time())
                claims = {"iss": server.issuer, "sub": USER if authed else "", "aud": q.get("service", [""])[0],
                          "exp": t + server.ttl, "nbf": t - 10, "iat": t, "jti": uuid.uuid4().hex, "access": access}
                key = server.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
                tok = jwt.encode(claims, key, algorithm="RS256", headers={"x5c": server.x5c})
                body = json.dumps({"token": tok, "expires_in": server.ttl}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def registry_auth(self) -> dict:
        return {"realm": self.url, "service": self.service, "issuer": self.issuer,
                "rootcertbundle": str(self.cert_path)}

    def close(self):
        self.httpd.shutdown()


class StaticServer:
    """`python -m http.server` over a folder on 127.0.0.1 (what a redirecting registry points blob GETs at)."""

    def __init__(self, directory: Path):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port),
                                      "--directory", str(directory)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"
        import requests
        for _ in range(100):
            try:
                requests.get(self.url, timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)

    def close(self):
        self.proc.terminate()
        self.proc.wait()
