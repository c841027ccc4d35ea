"""A real OCI registry on 127.0.0.1: CNCF distribution (Debian's `docker-registry`), started and stopped by us.

The embedded default for publishing without an account (storage under the output folder), and the registry
the tests run against: anonymous, htpasswd (basic) or token auth, and optionally the `redirect` storage
middleware so that blob GETs answer 307 to another URL, as registries backed by object storage do.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

from . import reaper
from .errors import Failure


class LocalRegistry:
    """`with LocalRegistry(storage) as reg: reg.host` -> "127.0.0.1:PORT"."""

    def __init__(self, storage: Path | str, *, htpasswd: Optional[Path] = None, token: Optional[dict] = None,
                 redirect_base: Optional[str] = None, port: int = 0):
        self.storage = Path(storage).resolve()
        self.htpasswd, self.token, self.redirect_base, self.port = htpasswd, token, redirect_base, port
        self.proc: Optional[subprocess.Popen] = None
        self.host = ""
        self._tmp: Optional[Path] = None

    def config(self) -> dict:
        cfg: dict = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": os.urandom(16).hex()},
        }
        if self.htpasswd:
            cfg["auth"] = {"htpasswd": {"realm": "diskimages", "path": str(self.htpasswd)}}
        elif self.token:
            cfg["auth"] = {"token": self.token}
        if self.redirect_base:
            cfg["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.redirect_base}}]}
        return cfg

    def __enter__(self) -> "LocalRegistry":
        exe = shutil.which("docker-registry") or shutil.which("registry")
        if not exe:
            raise Failure("docker-registry is not installed (Debian package docker-registry)")
        reaper.reap(say=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="diskimages-registry-"))
        self._tracked = [reaper.track("path", path=str(self._tmp), what="registry configuration")]
        (self._tmp / "config.yml").write_text(yaml.safe_dump(self.config()))
        self.log_path = self._tmp / "registry.log"
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen([exe, "serve", str(self._tmp / "config.yml")], stdout=open(self.log_path, "wb"),
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     preexec_fn=reaper.die_with_parent)
        self._tracked.append(reaper.track_group(self.proc.pid, "docker-registry"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                self.host = f"127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                self.__exit__(None, None, None)
                raise Failure(f"docker-registry stopped at start: {text.strip()[-400:]}")
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise Failure("docker-registry did not start listening within 30 s")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        for key in getattr(self, "_tracked", []):
            reaper.untrack(key)
        self._tracked = []

    def serve_forever(self) -> None:
        with self:
            print(f"registry at {self.host} (storage {self.storage}); Ctrl-C stops it", flush=True)
            try:
                while self.proc.poll() is None:
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
