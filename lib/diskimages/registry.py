"""An OCI registry client: oras-py's `Registry`, subclassed to fix what oras-py 0.2.43 gets wrong for disk images.

Fixes (each has a test in tests/test_publish.py):
  * push streams the file (one PUT with a file object, or PATCH chunks above `chunk_threshold`) instead of
    reading it whole into memory (oras: a 1 GiB file -> 1 GB RSS);
  * pull verifies the sha256 of every blob while writing, writes to a temporary name and renames only when the
    digest matches, and resumes an interrupted download with an HTTP Range request (oras: no verification);
  * on 401 it asks the token service for a token of the scope the registry names, and refreshes an expired token
    during a long upload (oras: re-sends its cached, too narrow token);
  * failures are immediate and clear: connection refused, 401/403 and 404 are not retried (oras: 3+5+11+29+83 s
    of retries before giving up);
  * manifests are sent with their own media type (artifact manifests with `artifactType`, OCI indexes).
Credentials come from the environment or a docker config file, never from arguments that end up in notebooks.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urljoin, urlparse

import oras.container
import oras.provider
import requests
from .errors import Failure, InputError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json"])
CHUNK = 8 << 20
MAX_MANIFEST = 4 << 20              # the registry's own limit for manifests


class RegistryError(Failure):
    """A registry operation failed; the message is one line that says what and why."""


class BadReference(RegistryError, InputError):
    """A registry reference that is not one (bad input: the command exits 2)."""


@dataclass(frozen=True)
class Ref:
    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @classmethod
    def parse(cls, ref: str) -> "Ref":
        m = re.match(r"^(?P<reg>[^/]+)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>[\w][\w.-]{0,127}))?"
                     r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$", ref)
        if not m or not ("." in m["reg"] or ":" in m["reg"] or m["reg"] == "localhost"):
            raise BadReference(f"{printable(ref)[:200]!r} is not a reference (expected HOST[:PORT]/REPOSITORY[:TAG][@sha256:...], "
                                "e.g. ghcr.io/owner/image:tag)")
        return cls(m["reg"], m["repo"], m["tag"], m["digest"])

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") + (
            f"@{self.digest}" if self.digest else "")


def is_loopback(host: str) -> bool:
    h = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return h in ("localhost", "[::1]") or h.startswith("127.")


def _host_key(host: str) -> str:
    """A registry as written by a user (`ghcr.io`, `https://ghcr.io/`, `HOST:PORT`) -> `host[:port]`, lower case."""
    h = host.strip().lower()
    h = re.sub(r"^[a-z]+://", "", h)
    return h.split("/", 1)[0]


def env_registry() -> Optional[str]:
    """The one registry the environment's credentials belong to (DISKIMAGES_REGISTRY), if named."""
    host = os.environ.get("DISKIMAGES_REGISTRY", "").strip()
    return _host_key(host) if host else None


def credentials_for(registry: str) -> Optional[tuple[str, str]]:
    """(user, secret) for `registry`, or None (anonymous). Credentials go only to the host they belong to:
    DISKIMAGES_REGISTRY_USER/_PASSWORD (or _TOKEN) only when DISKIMAGES_REGISTRY names this registry, else the
    docker config file's answer for this registry ($DOCKER_CONFIG/config.json, ~/.docker/config.json): its
    credential helper (credHelpers), its own `auths` entry, or the default helper (credsStore)."""
    user = os.environ.get("DISKIMAGES_REGISTRY_USER")
    secret = os.environ.get("DISKIMAGES_REGISTRY_PASSWORD") or os.environ.get("DISKIMAGES_REGISTRY_TOKEN")
    if user and secret and env_registry() == _host_key(registry):
        return user, secret
    cfg_path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
        auths = cfg.get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    helpers = cfg.get("credHelpers") if isinstance(cfg.get("credHelpers"), dict) else {}
    helper = next((h for k, h in helpers.items() if _host_key(k) == _host_key(registry)), None)
    if helper:
        return _from_helper(helper, registry)
    for key, entry in auths.items() if isinstance(auths, dict) else ():
        if _host_key(key) == _host_key(registry) and isinstance(entry, dict) and entry.get("auth"):
            try:
                u, _, p = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            return u, p
    store = cfg.get("credsStore")
    return _from_helper(store, registry) if store else None


def _from_helper(helper: str, registry: str) -> Optional[tuple[str, str]]:
    """Ask a docker credential helper (`docker-credential-NAME get`) for this registry's credentials."""
    if not isinstance(helper, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", helper):
        return None
    try:
        out = subprocess.run([f"docker-credential-{helper}", "get"], input=registry, capture_output=True,
                             text=True, timeout=30)
        data = json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    user, secret = data.get("Username"), data.get("Secret")
    return (user, secret) if isinstance(user, str) and isinstance(secret, str) and secret else None


def _missing_credentials_hint(registry: str) -> str:
    if os.environ.get("DISKIMAGES_REGISTRY_USER") and env_registry() != _host_key(registry):
        named = env_registry() or "no registry"
        return (f"DISKIMAGES_REGISTRY_USER is set for {named}, not {registry}: set DISKIMAGES_REGISTRY={registry} "
                "to use it here")
    return ("set DISKIMAGES_REGISTRY, DISKIMAGES_REGISTRY_USER and DISKIMAGES_REGISTRY_PASSWORD (or log in with "
            "docker/podman/oras)")


def token_hosts(registry: str) -> set[str]:
    """The hosts whose token service may see this registry's credentials: its own, plus those the user allows
    in DISKIMAGES_REGISTRY_AUTH_HOSTS (comma-separated; e.g. a registry whose tokens come from another host)."""
    extra = {urlparse("//" + _host_key(h)).hostname or "" for h in os.environ.get("DISKIMAGES_REGISTRY_AUTH_HOSTS", "").split(",")
             if h.strip()}
    return {urlparse("//" + _host_key(registry)).hostname or ""} | extra


def _is_regular(fd: int) -> bool:
    import stat
    return stat.S_ISREG(os.fstat(fd).st_mode)


def printable(text: str) -> str:
    """A registry's text with control characters (terminal escapes) taken out, to print safely."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f]", "?", str(text))


class _Challenge:
    def __init__(self, header: str):
        scheme, _, rest = header.partition(" ")
        self.scheme = scheme.lower()
        self.params = dict(re.findall(r'(\w+)="([^"]*)"', rest))


class RegistryClient(oras.provider.Registry):
    """oras-py's Registry with streaming, verified, resumable, fail-fast transfers (see the module doc)."""

    def __init__(self, registry: str, plain_http: Optional[bool] = None, timeout: float = 30.0,
                 chunk_threshold: int = 4 << 30, chunk_size: int = 256 << 20):
        if plain_http is None:
            plain_http = is_loopback(registry)
        super().__init__(hostname=registry, insecure=plain_http)
        self.registry = registry
        self.timeout = timeout
        self.chunk_threshold, self.chunk_size = chunk_threshold, chunk_size
        self._creds = credentials_for(registry)
        self._auth: dict[str, str] = {}   # scope -> Authorization header value
        self._basic: Optional[str] = None
        self.base = f"{'http' if plain_http else 'https'}://{registry}"

    # -- requests with authentication and clear failures
    def _scope_key(self, url: str) -> str:
        m = re.search(r"/v2/(.+?)/(?:blobs|manifests|tags)/", url)
        return m.group(1) if m else ""

    def do_request(self, url: str, method: str = "GET", data=None, headers: Optional[dict] = None, json=None,
                   stream: bool = False, allow_redirects: bool = True) -> requests.Response:
        headers = dict(headers or {})
        key = self._scope_key(url)
        for attempt in range(3):
            if key in self._auth:
                headers["Authorization"] = self._auth[key]
            elif self._basic:
                headers["Authorization"] = self._basic
            if attempt and hasattr(data, "seek"):
                data.seek(0)
            try:
                r = self.session.request(method, url, data=data, json=json, headers=headers, stream=stream,
                                         timeout=self.timeout, allow_redirects=allow_redirects,
                                         verify=self._tls_verify)
            except requests.ConnectionError as e:
                reason = "connection refused" if "refused" in str(e).lower() else str(e).split("\n")[0][:200]
                raise RegistryError(f"cannot reach {self.registry}: {reason}") from None
            except requests.Timeout:
                raise RegistryError(f"{self.registry} did not answer within {self.timeout:.0f} s") from None
            except requests.TooManyRedirects:
                raise RegistryError(f"{self.registry}: {method} {printable(urlparse(url).path)[:120]}: "
                                    "too many redirects (a redirect loop)") from None
            except requests.RequestException as e:
                raise RegistryError(f"{self.registry}: {printable(str(e)).splitlines()[0][:200]}") from None
            if r.status_code == 401 and attempt < 2:
                self._authenticate(r, key)
                continue
            if r.status_code in (502, 503, 504) and attempt < 2:
                time.sleep(1 + attempt)
                continue
            return r
        return r

    def _authenticate(self, r: requests.Response, key: str) -> None:
        ch = _Challenge(r.headers.get("WWW-Authenticate", ""))
        if ch.scheme == "basic":
            if not self._creds:
                raise RegistryError(f"{self.registry} needs a user name and password: "
                                    f"{_missing_credentials_hint(self.registry)}")
            self._basic = "Basic " + base64.b64encode(":".join(self._creds).encode()).decode()
            return
        if ch.scheme != "bearer" or "realm" not in ch.params:
            raise RegistryError(f"{self.registry} answered 401 without a usable challenge")
        params = {k: ch.params[k] for k in ("service", "scope") if k in ch.params}
        realm = urlparse(ch.params["realm"])
        if realm.scheme not in ("https", "http") or not realm.hostname:
            raise RegistryError(f"{self.registry} named a token service that is not a URL: "
                                f"{printable(ch.params['realm'])!r} (allowed: an https URL)")
        if realm.scheme == "http" and not is_loopback(realm.netloc):
            raise RegistryError(f"{self.registry} sent its token service as plain http ({realm.netloc}): refused "
                                "(allowed: https, or http on a loopback address)")
        trusted = realm.hostname.lower() in token_hosts(self.registry)
        auth = requests.auth.HTTPBasicAuth(*self._creds) if self._creds and trusted else None
        try:
            # no redirects: a redirect could carry the credentials to a host they do not belong to
            t = self.session.get(ch.params["realm"], params=params, auth=auth, timeout=self.timeout,
                                 verify=self._tls_verify, allow_redirects=False)
        except requests.RequestException as e:
            raise RegistryError(f"the token service {realm.netloc} failed: {printable(str(e))[:200]}") from None
        if t.status_code != 200:
            why = ""
            if self._creds and not trusted:
                why = (f"; the credentials for {self.registry} were not sent to {realm.hostname} (allow it with "
                       f"DISKIMAGES_REGISTRY_AUTH_HOSTS={realm.hostname})")
            raise RegistryError(f"the token service refused {'the credentials' if auth else 'an anonymous token'} "
                                f"for {printable(params.get('scope', 'this registry'))} (HTTP {t.status_code}){why}")
        body = t.json()
        self._auth[key] = "Bearer " + (body.get("token") or body.get("access_token"))

    def check(self, r: requests.Response, what: str, ok=(200, 201, 202, 204)) -> requests.Response:
        if r.status_code in ok:
            return r
        try:
            errs = "; ".join(str(e.get("message", "")) for e in r.json().get("errors", []))
        except (ValueError, AttributeError, TypeError):
            errs = r.text[:200]
        errs = printable(errs)[:300]
        if r.status_code in (401, 403):
            hint = "" if self._creds else " (no credentials: set DISKIMAGES_REGISTRY_USER/DISKIMAGES_REGISTRY_PASSWORD)"
            raise RegistryError(f"{what}: access denied by {self.registry} (HTTP {r.status_code}){hint}: {errs}")
        if r.status_code == 404:
            raise RegistryError(f"{what}: not found on {self.registry}: {errs or 'HTTP 404'}")
        raise RegistryError(f"{what}: HTTP {r.status_code} from {self.registry}: {errs}")

    def curl_command(self, ref: Ref, url: str) -> str:
        """A curl command that downloads `url` the way this client was let in; secrets stay in variables,
        only an anonymous (public, short-lived) token is written out."""
        auth = self._auth.get(ref.repository, "")
        if auth.startswith("Bearer ") and not self._creds:
            return f"curl -fLo disk -H 'Authorization: {auth}' '{url}'   # anonymous token, short-lived"
        if self._creds or self._basic or auth:
            return f"curl -fLo disk -u \"$DISKIMAGES_REGISTRY_USER:$DISKIMAGES_REGISTRY_PASSWORD\" '{url}'"
        return f"curl -fLo disk '{url}'"

    # -- blobs
    def blob_url(self, ref: Ref, digest: str) -> str:
        return f"{self.base}/v2/{ref.repository}/blobs/{digest}"

    def has_blob(self, ref: Ref, digest: str) -> bool:
        return self.do_request(self.blob_url(ref, digest), "HEAD").status_code == 200

    def _start_upload(self, ref: Ref, mount_from: Optional[str] = None, digest: Optional[str] = None) -> requests.Response:
        url = f"{self.base}/v2/{ref.repository}/blobs/uploads/"
        if mount_from:
            url += f"?mount={digest}&from={mount_from}"
        return self.check(self.do_request(url, "POST", headers={"Content-Length": "0"}), f"start upload to {ref}")

    def _location(self, r: requests.Response) -> str:
        loc = r.headers.get("Location", "")
        if not loc:
            raise RegistryError(f"{self.registry} gave no upload location")
        return loc if loc.startswith("http") else self.base + loc

    def push_blob(self, ref: Ref, path: Path, digest: str, size: int,
                  progress: Optional[Callable[[int], None]] = None) -> None:
        """Upload a file as a blob with flat memory (see push_stream); skipped when the registry has it."""
        if self.has_blob(ref, digest):
            if progress:
                progress(size)
            return
        with open(path, "rb") as f:
            self.push_stream(ref, f, digest, size, progress, what=f"upload {path.name}")

    def push_stream(self, ref: Ref, f, digest: str, size: int, progress: Optional[Callable[[int], None]] = None,
                    what: str = "upload blob") -> None:
        """Upload from a readable object with flat memory: one streamed PUT up to `chunk_threshold` bytes,
        PATCH chunks of `chunk_size` above it (some registries refuse single requests of ~20 GB and more)."""
        loc = self._location(self._start_upload(ref))
        try:
            self._upload(loc, f, digest, size, progress, what)
        except BaseException:
            # cancel the upload session (best effort: distribution refuses once data was written to it, and
            # its upload purging removes such sessions later); the blob never becomes visible either way
            try:
                auth = self._auth.get(ref.repository) or self._basic
                self.session.delete(loc, headers={"Authorization": auth} if auth else {}, timeout=10,
                                    verify=self._tls_verify)
            except requests.RequestException:
                pass
            raise

    def _upload(self, loc: str, f, digest: str, size: int, progress, what: str) -> None:
        sep = "&" if "?" in loc else "?"
        if size <= self.chunk_threshold:
            body = _ProgressReader(f, progress, size)
            r = self.do_request(f"{loc}{sep}digest={digest}", "PUT", data=body,
                                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
            self.check(r, what)
            return
        start = 0
        while start < size:
            n = min(self.chunk_size, size - start)
            end = start + n - 1
            r = self.check(self.do_request(loc, "PATCH", data=_ProgressReader(f, progress, n), headers={
                "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}",
                "Content-Length": str(n)}), what)
            loc = self._location(r)
            start = end + 1
        sep = "&" if "?" in loc else "?"
        self.check(self.do_request(f"{loc}{sep}digest={digest}", "PUT", headers={"Content-Length": "0"}),
                   f"finish {what}")

    def push_bytes(self, ref: Ref, data: bytes, digest: str) -> None:
        if self.has_blob(ref, digest):
            return
        loc = self._location(self._start_upload(ref))
        sep = "&" if "?" in loc else "?"
        self.check(self.do_request(f"{loc}{sep}digest={digest}", "PUT", data=data, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))}), "upload blob")

    def pull_blob(self, ref: Ref, digest: str, size: int, dest: Path,
                  progress: Optional[Callable[[int], None]] = None) -> Path:
        """Download a blob to `dest`, verifying its sha256 while writing and reading no byte past its declared
        size; resumes from `dest.partial` (a regular file, never followed through a link)."""
        part = dest.with_name(dest.name + ".partial")
        h = hashlib.sha256()
        have = 0
        try:
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RegistryError(f"{part}: cannot be written ({e.strerror}: a link or not a regular file?)") from None
        with os.fdopen(fd, "r+b") as f:
            if not _is_regular(f.fileno()):
                raise RegistryError(f"{part} is not a regular file: refused")
            while b := f.read(CHUNK):
                h.update(b)
                have += len(b)
            if have > size:                     # not the same blob: start again
                f.seek(0)
                f.truncate()
                have, h = 0, hashlib.sha256()
            if progress and have:
                progress(have)
            if have < size:
                headers = {"Range": f"bytes={have}-"} if have else {}
                r = self.do_request(self.blob_url(ref, digest), "GET", headers=headers, stream=True)
                self.check(r, f"download {digest[:19]}", ok=(200, 206))
                if have and r.status_code == 200:     # the server ignored the range: start again
                    f.seek(0)
                    f.truncate()
                    have, h = 0, hashlib.sha256()
                try:
                    for chunk in r.iter_content(CHUNK):
                        if have + len(chunk) > size:
                            f.truncate(0)
                            raise RegistryError(f"{self.registry}: {ref}: blob {digest[:19]} is longer than the "
                                                f"{size} bytes its manifest declares: refused, nothing kept")
                        f.write(chunk)
                        h.update(chunk)
                        have += len(chunk)
                        if progress:
                            progress(len(chunk))
                except requests.RequestException as e:
                    raise RegistryError(f"{self.registry}: {ref}: the download of {digest[:19]} broke off after "
                                        f"{have} of {size} bytes ({printable(str(e)).splitlines()[0][:120]}); "
                                        f"run pull again to resume from {part.name}") from None
                finally:
                    r.close()
        got = "sha256:" + h.hexdigest()
        if got != digest or have != size:
            part.unlink(missing_ok=True)
            raise RegistryError(f"{self.registry}: {ref}: {dest.name}: the downloaded blob does not match its "
                                f"digest (expected {digest}, got {got}; {have} of {size} bytes): removed")
        os.replace(part, dest)
        return dest

    # -- manifests and tags
    def get_manifest_raw(self, ref: Ref) -> tuple[bytes, str, str]:
        """(raw bytes, media type, digest) of the manifest a reference names."""
        r = self.check(self.do_request(f"{self.base}/v2/{ref.repository}/manifests/{ref.reference}", "GET",
                                       headers={"Accept": MANIFEST_ACCEPT}), f"get manifest {ref}")
        raw = r.content
        if len(raw) > MAX_MANIFEST:
            raise RegistryError(f"{self.registry}: {ref}: the manifest is larger than {MAX_MANIFEST >> 20} MiB")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest and digest != ref.digest:
            raise RegistryError(f"{self.registry}: {ref}: the manifest does not match the digest asked for ({digest})")
        return raw, printable(r.headers.get("Content-Type", "").split(";")[0]), digest

    def put_manifest(self, ref: Ref, raw: bytes, media_type: str, reference: Optional[str] = None) -> str:
        reference = reference or ref.reference
        r = self.do_request(f"{self.base}/v2/{ref.repository}/manifests/{reference}", "PUT", data=raw,
                            headers={"Content-Type": media_type})
        self.check(r, f"put manifest {ref.repository}:{reference}")
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def list_tags(self, ref: Ref, max_pages: int = 100) -> list[str]:
        """Every tag, following `Link: rel="next"` within this registry, at most `max_pages` pages."""
        tags: list[str] = []
        url: Optional[str] = f"{self.base}/v2/{ref.repository}/tags/list?n=1000"
        seen = set()
        while url:
            if url in seen or len(seen) >= max_pages:
                raise RegistryError(f"{self.registry}: {ref.repository}: the tag list does not end "
                                    f"({'a page links to itself' if url in seen else f'more than {max_pages} pages'})")
            seen.add(url)
            r = self.check(self.do_request(url, "GET"), f"list tags of {ref.repository}")
            try:
                page = r.json().get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{self.registry}: {ref.repository}: the tag list is not a JSON object") from None
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{self.registry}: {ref.repository}: the tag list is not a list of names")
            tags += [t for t in page if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", t)]
            m = re.search(r'<([^>]+)>;\s*rel="next"', r.headers.get("Link", ""))
            url = urljoin(url, m.group(1)) if m else None
            if url and urlparse(url).netloc != urlparse(self.base).netloc:
                raise RegistryError(f"{self.registry}: {ref.repository}: the tag list continues on another host: "
                                    "refused")
        return tags


class _ProgressReader:
    """What requests streams a request body from: at most `size` bytes of `f` from where it stands, read in
    large blocks, with progress; seekable back to its start when `f` is (a file), so a request re-sent after
    a 401 sends the same bytes again. Memory stays at one block whatever the size."""

    def __init__(self, f, progress, size: int):
        self.f, self.progress, self.size, self.left = f, progress, size, size
        self.start = f.tell() if hasattr(f, "seekable") and f.seekable() else None

    def __len__(self) -> int:
        return self.left

    def read(self, n: int = -1) -> bytes:
        want = min(self.left, max(n, CHUNK) if n and n > 0 else CHUNK)
        b = self.f.read(want) if want else b""
        self.left -= len(b)
        if b and self.progress:
            self.progress(len(b))
        return b

    def seek(self, *a):
        if self.start is None:
            raise RegistryError("cannot re-send a streamed upload after the registry asked to authenticate")
        self.left = self.size
        return self.f.seek(self.start)
