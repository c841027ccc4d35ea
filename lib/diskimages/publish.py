"""Publishing disk images as OCI artifacts: push, pull, download URL, mirror, tags.

An image is pushed as an OCI image manifest with `artifactType: application/vnd.diskimages.image.v1`, the empty
`{}` config, the disk as a layer (`application/x-qemu-disk` for qcow2) named by an
`org.opencontainers.image.title` annotation, and the build's measurement record as a second, small layer.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from urllib.parse import urljoin, urlparse

from .registry import OCI_INDEX, OCI_MANIFEST, Ref, RegistryClient, RegistryError, printable
from .errors import InputError

ARTIFACT_TYPE = "application/vnd.diskimages.image.v1"
DISK_MEDIA_TYPES = {"qcow2": "application/x-qemu-disk", "raw": "application/octet-stream"}
RECORD_MEDIA_TYPE = "application/vnd.diskimages.build-record.v1+json"
SPDX_MEDIA_TYPE = "application/spdx+json"          # the image's package manifest (SBOM), beside the disk
#: the download format (push --download-format raw.zst): the raw disk in one zstd frame stream (RFC 8878)
DOWNLOAD_MEDIA_TYPE = "application/zstd"
DOWNLOAD_FORMATS = ("raw.zst",)
EMPTY_CONFIG = {"mediaType": "application/vnd.oci.empty.v1+json",
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2}
ANNOTATION_PREFIX = "io.github.diskimages."


def _progress_bar(total: int, desc: str, enabled: bool):
    from .progress import tqdm_class
    bar = tqdm_class()(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)
    return bar


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(8 << 20):
            h.update(b)
    return "sha256:" + h.hexdigest()


def _source_and_revision() -> tuple[Optional[str], Optional[str]]:
    if os.environ.get("GITHUB_REPOSITORY"):
        return (f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}",
                os.environ.get("GITHUB_SHA"))
    if os.environ.get("CI_PROJECT_URL"):
        return os.environ["CI_PROJECT_URL"], os.environ.get("CI_COMMIT_SHA")
    here = Path(__file__).resolve().parent

    def git(*args):
        r = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True)
        return r.stdout.strip() or None if r.returncode == 0 else None
    return git("config", "--get", "remote.origin.url"), git("rev-parse", "HEAD")


@dataclass
class PushResult:
    ref: str
    digest: str
    manifest: dict
    seconds: float
    bytes: int

    @property
    def pinned(self) -> str:
        r = Ref.parse(self.ref)
        return f"{r.registry}/{r.repository}@{self.digest}"


def download_file(image: Path | str, *, level: int = 19, log: Optional[Path] = None) -> Path:
    """The download format of an image, beside it: NAME.raw.zst, the raw disk compressed by zstd at `level` (1-19)
    with long-distance matching over a 128 MiB window, so a plain `zstd -d` unpacks it (as a sparse file).
    The qcow2 stays the working format. Made once: an existing one newer than the image is reused."""
    from . import reaper, runner
    image = Path(image)
    if not isinstance(level, int) or not 1 <= level <= 19:
        raise InputError(f"zstd level {level!r} is not allowed (allowed: 1 to 19)")
    out = image.with_name(image.name.rsplit(".", 1)[0] + ".raw.zst")
    if out.is_file() and out.stat().st_mtime_ns >= image.stat().st_mtime_ns:
        return out
    raw = out.with_name(f".{out.name}-{os.getpid()}.raw.partial")
    partial = out.with_name(f".{out.name}-{os.getpid()}.partial")
    with reaper.temp_files(raw, partial, what="unfinished download file"):
        src = image
        if image.suffix != ".raw":
            runner.run(["qemu-img", "convert", "-O", "raw", image, raw], log=log)
            src = raw
        runner.run(["zstd", "-q", "-f", "-T0", f"-{level}", "--long=27", src, "-o", partial], log=log)
        os.replace(partial, out)
    return out


def build_manifest(image: Path, digest: str, size: int, record: Optional[dict], record_blob: Optional[tuple],
                   title: Optional[str] = None, description: Optional[str] = None,
                   sbom_blob: Optional[tuple] = None, download_blob: Optional[tuple] = None) -> dict:
    fmt = "qcow2" if image.suffix == ".qcow2" else "raw"
    layers = [{"mediaType": DISK_MEDIA_TYPES[fmt], "digest": digest, "size": size,
               "annotations": {"org.opencontainers.image.title": image.name}}]
    if record_blob:
        rdigest, rsize = record_blob
        layers.append({"mediaType": RECORD_MEDIA_TYPE, "digest": rdigest, "size": rsize,
                       "annotations": {"org.opencontainers.image.title": image.with_suffix(".json").name}})
    if sbom_blob:
        sdigest, ssize, sname = sbom_blob
        layers.append({"mediaType": SPDX_MEDIA_TYPE, "digest": sdigest, "size": ssize,
                       "annotations": {"org.opencontainers.image.title": sname}})
    if download_blob:
        ddigest, dsize, dname = download_blob
        layers.append({"mediaType": DOWNLOAD_MEDIA_TYPE, "digest": ddigest, "size": dsize,
                       "annotations": {"org.opencontainers.image.title": dname}})
    source, revision = _source_and_revision()
    ann = {"org.opencontainers.image.created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "org.opencontainers.image.title": title or image.name}
    if description or (record and record.get("recipe")):
        ann["org.opencontainers.image.description"] = description or f"{record['recipe']} disk image"
    if source:
        ann["org.opencontainers.image.source"] = source
    if revision:
        ann["org.opencontainers.image.revision"] = revision
    if record:
        ours = {"recipe": record.get("recipe"), "tool": record.get("tool"), "tool-version": record.get("tool_version"),
                "virtual-size": record.get("virtual_bytes"), "compressed-size": record.get("file_bytes"),
                "build-seconds": record.get("total_wall_s"), "format": record.get("format"),
                "firmware": record.get("firmware"), "desktop": record.get("desktop"),
                "content-key": record.get("content_key")}
        ann.update({ANNOTATION_PREFIX + k: str(v) for k, v in ours.items() if v is not None})
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE, "config": EMPTY_CONFIG,
            "layers": layers, "annotations": ann}


def push(image: Path | str, ref: str, *, record: Optional[dict] = None, extra_tags: tuple[str, ...] = (),
         plain_http: Optional[bool] = None, progress: bool = True, client: Optional[RegistryClient] = None,
         download_format: Optional[str] = None, zstd_level: int = 19) -> PushResult:
    """Push a disk image (and its build record, by default the JSON beside it) as an OCI artifact.
    `download_format` "raw.zst" adds the download format (`download_file`) as one more layer."""
    import time
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"no image at {image}")
    r = Ref.parse(ref)
    if r.digest:
        raise RegistryError(f"push to a tag, not a digest: {ref}")
    if record is None and image.with_suffix(".json").is_file():
        record = json.loads(image.with_suffix(".json").read_text())
    c = client or RegistryClient(r.registry, plain_http)
    t0 = time.monotonic()
    size = image.stat().st_size
    digest = (record or {}).get("sha256") if (record or {}).get("file_bytes") == size else None
    digest = digest or file_digest(image)
    bar = _progress_bar(size, f"push {image.name}", progress)
    try:
        c.push_bytes(r, b"{}", EMPTY_CONFIG["digest"])
        c.push_blob(r, image, digest, size, progress=bar.update)
    finally:
        bar.close()
    record_blob = None
    if record:
        raw = json.dumps(record, indent=1, sort_keys=True).encode()
        rdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
        c.push_bytes(r, raw, rdigest)
        record_blob = (rdigest, len(raw))
    sbom_blob = None
    name = str((record or {}).get("manifest") or "")
    sbom = image.with_name(name) if SAFE_TITLE.fullmatch(name) else None
    if sbom and sbom.is_file():
        data = sbom.read_bytes()
        sdigest = "sha256:" + hashlib.sha256(data).hexdigest()
        c.push_bytes(r, data, sdigest)
        sbom_blob = (sdigest, len(data), sbom.name)
    download_blob = None
    if download_format:
        if download_format not in DOWNLOAD_FORMATS:
            raise InputError(f"download format {download_format!r} is not allowed "
                             f"(allowed: {', '.join(DOWNLOAD_FORMATS)})")
        dl = download_file(image, level=zstd_level)
        dsize = dl.stat().st_size
        ddigest = file_digest(dl)
        bar = _progress_bar(dsize, f"push {dl.name}", progress)
        try:
            c.push_blob(r, dl, ddigest, dsize, progress=bar.update)
        finally:
            bar.close()
        download_blob = (ddigest, dsize, dl.name)
    manifest = build_manifest(image, digest, size, record, record_blob, sbom_blob=sbom_blob,
                              download_blob=download_blob)
    raw_manifest = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    mdigest = c.put_manifest(r, raw_manifest, OCI_MANIFEST)
    key_tag = content_key_tag((record or {}).get("content_key"))
    for tag in extra_tags + ((key_tag,) if key_tag else ()):
        c.put_manifest(r, raw_manifest, OCI_MANIFEST, reference=tag)
    return PushResult(str(r), mdigest, manifest, round(time.monotonic() - t0, 2),
                      size + (download_blob[1] if download_blob else 0))


def content_key_tag(key: Optional[str]) -> Optional[str]:
    """The tag every push adds for an image's content key ("ck-" and 40 hex digits), so `build --reuse-from`
    finds the image in one request; None without a key."""
    if not isinstance(key, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", key):
        return None
    return "ck-" + key[7:47]


def fetch_by_content_key(repo: str, key: str, names: dict[str, Path], *, plain_http: Optional[bool] = None,
                         progress: bool = True) -> Optional[tuple[str, dict]]:
    """The image published in `repo` (HOST/REPO) with content key `key`: its layers pulled and verified, then
    moved to `names` ({layer title: destination}; the disk's title must be among them). Returns (pinned
    reference, its record) or None when `repo` has no image with that key. The registry's answer is checked:
    the record must be a JSON object that names the same key and the disk's digest and size, and no title
    outside `names` is written anywhere."""
    tag = content_key_tag(key)
    if tag is None:
        return None
    r = Ref.parse(f"{repo}:{tag}")
    c = RegistryClient(r.registry, plain_http)
    where = f"{c.registry}: {r}"
    resp = c.do_request(f"{c.base}/v2/{r.repository}/manifests/{tag}", "HEAD",
                        headers={"Accept": OCI_MANIFEST})
    if resp.status_code == 404:
        return None
    m, mdigest = _artifact_manifest(c, r)
    ann = m.get("annotations") if isinstance(m.get("annotations"), dict) else {}
    if ann.get(ANNOTATION_PREFIX + "content-key") != key:
        raise RegistryError(f"{where}: the image tagged {tag} names content key "
                            f"{_shown(ann.get(ANNOTATION_PREFIX + 'content-key'), 80)!r}, not {key[:19]}...")
    titles = [layer_file_name(layer, where) for layer in m["layers"]]
    wanted = [t for t in titles if t in names]
    disk = disk_layer(m)
    disk_title = layer_file_name(disk, where)
    if disk_title not in names:
        raise RegistryError(f"{where}: its disk is titled {disk_title!r}, not one of {', '.join(sorted(names))}")
    records = [layer for layer, t in zip(m["layers"], titles) if t in names and t.endswith(".json")
               and t != disk_title and layer.get("mediaType") == RECORD_MEDIA_TYPE]
    if len(records) != 1 or records[0]["size"] > MAX_RECORD:
        raise RegistryError(f"{where}: the image tagged {tag} has no build record of at most "
                            f"{MAX_RECORD >> 20} MiB titled as one of {', '.join(sorted(names))}")
    from . import reaper
    with reaper.temp_dir(".reuse-", where=next(iter(names.values())).parent) as tmp:
        got = pull(f"{r.registry}/{r.repository}@{mdigest}", tmp, plain_http=plain_http, progress=progress,
                   client=c, titles=set(wanted))
        files = {f.name: f for f in got.files}
        try:
            record = json.loads(files[layer_file_name(records[0], where)].read_text())
        except (ValueError, OSError):
            record = None
        if not isinstance(record, dict) or record.get("content_key") != key or \
                record.get("sha256") != disk["digest"] or record.get("file_bytes") != disk["size"]:
            raise RegistryError(f"{where}: its build record does not describe its disk with content key "
                                f"{key[:19]}... (a record naming the key, the disk's sha256 and size is needed)")
        for title, f in files.items():
            os.replace(f, names[title])
    return f"{r.registry}/{r.repository}@{mdigest}", record


DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_RECORD = 16 << 20          # a build record is a few KiB: a registry announcing more is not read
MAX_LAYER = 4 << 40
SAFE_TITLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,200}")


def _descriptor(d, where: str) -> dict:
    """A content descriptor from a registry: a digest we can verify and a size we can bound."""
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str) or not DIGEST_RE.fullmatch(d["digest"]):
        raise RegistryError(f"{where}: a descriptor without a sha256 digest")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_LAYER:
        raise RegistryError(f"{where}: {d['digest'][:19]} has no usable size (allowed: 0 to 4 TiB)")
    return d


def _parse_manifest(raw: bytes, where: str) -> dict:
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{where}: the manifest is not JSON") from None
    if not isinstance(m, dict):
        raise RegistryError(f"{where}: the manifest is not a JSON object")
    for key in ("layers", "manifests"):
        if key in m:
            if not isinstance(m[key], list):
                raise RegistryError(f"{where}: the manifest's {key} is not a list")
            for d in m[key]:
                _descriptor(d, where)
    return m


def _artifact_manifest(c: RegistryClient, r: Ref) -> tuple[dict, str]:
    where = f"{c.registry}: {r}"
    raw, mtype, digest = c.get_manifest_raw(r)
    m = _parse_manifest(raw, where)
    if mtype == OCI_INDEX or "manifests" in m:
        picks = [d for d in m.get("manifests", []) if d.get("artifactType") == ARTIFACT_TYPE] or m.get("manifests", [])
        if not picks:
            raise RegistryError(f"{where}: an empty index")
        sub = Ref(r.registry, r.repository, digest=picks[0]["digest"])
        raw, mtype, digest = c.get_manifest_raw(sub)
        m = _parse_manifest(raw, where)
    if "layers" not in m:
        raise RegistryError(f"{where}: the manifest has no layers")
    return m, digest


def disk_layer(manifest: dict) -> dict:
    layers = manifest.get("layers") or []
    disks = [l for l in layers if l.get("mediaType") in DISK_MEDIA_TYPES.values()] or layers
    if not disks:
        raise RegistryError("the artifact has no layers")
    return max(disks, key=lambda l: l.get("size", 0))


@dataclass
class PullResult:
    ref: str
    digest: str
    files: list[Path] = field(default_factory=list)


def layer_file_name(layer: dict, where: str) -> str:
    """The file a layer is written to: its title when that is a plain, safe file name (no dot-file, no
    separator, no control character), else refused."""
    annotations = layer.get("annotations") if isinstance(layer.get("annotations"), dict) else {}
    title = annotations.get("org.opencontainers.image.title")
    if title is None:
        return layer["digest"].replace(":", "-")
    if not isinstance(title, str) or not SAFE_TITLE.fullmatch(title) or title.endswith(".partial"):
        shown = printable(str(title))[:60]
        raise RegistryError(f"{where}: layer {layer['digest'][:19]} has an unsafe title {shown!r} (allowed: a plain "
                            "file name of letters, digits and ._+-, not starting with a dot)")
    return title


def pull(ref: str, directory: Path | str, *, plain_http: Optional[bool] = None, progress: bool = True,
         client: Optional[RegistryClient] = None, force: bool = False,
         titles: Optional[set[str]] = None) -> PullResult:
    """Download every layer of an artifact (or those titled in `titles`) into `directory` under its title, each
    verified against its digest (written to NAME.partial and renamed when it matches; an interrupted pull
    resumes from the .partial). An existing file of another content is replaced only with `force`."""
    r = Ref.parse(ref)
    c = client or RegistryClient(r.registry, plain_http)
    where = f"{c.registry}: {r}"
    m, mdigest = _artifact_manifest(c, r)
    out = Path(directory)
    names = [layer_file_name(layer, where) for layer in m["layers"]]
    if len(set(names)) != len(names):
        raise RegistryError(f"{where}: two layers have the same title")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for layer, name in zip(m["layers"], names):
        if titles is not None and name not in titles:
            continue
        dest = out / name
        if os.path.lexists(dest):
            if dest.is_file() and not dest.is_symlink() and dest.stat().st_size == layer["size"] \
                    and file_digest(dest) == layer["digest"]:
                files.append(dest)
                continue
            if not force:
                raise RegistryError(f"{where}: {dest} exists with other content: not replaced (use --force)")
        bar = _progress_bar(layer["size"], f"pull {name}", progress)
        try:
            files.append(c.pull_blob(r, layer["digest"], layer["size"], dest, progress=bar.update))
        finally:
            bar.close()
    return PullResult(str(r), mdigest, files)


@dataclass
class BlobURL:
    ref: str
    digest: str
    size: int
    status: int
    url: str
    direct: bool             # True: a plain URL anyone can GET (object storage); False: the registry serves it
    curl: str

    def explain(self) -> str:
        if self.direct:
            return (f"{self.url}\n(HTTP {self.status} from the registry: a time-limited download URL; "
                    f"{self.size} bytes, {self.digest})")
        return (f"{self.url}\n(the registry serves the blob itself, HTTP {self.status}: there is no separate "
                f"download URL; this works:)\n{self.curl}")


def blob_url(ref: str, *, plain_http: Optional[bool] = None, client: Optional[RegistryClient] = None) -> BlobURL:
    """The download URL of an artifact's disk layer: the registry's redirect target when it answers 307
    (object storage), else the blob URL itself and a curl command that fetches it."""
    r = Ref.parse(ref)
    c = client or RegistryClient(r.registry, plain_http)
    m, _ = _artifact_manifest(c, r)
    layer = disk_layer(m)
    url = c.blob_url(r, layer["digest"])
    resp = c.do_request(url, "GET", stream=True, allow_redirects=False)
    resp.close()
    if resp.status_code in (301, 302, 303, 307, 308):
        loc = urljoin(url, resp.headers.get("Location", ""))
        if urlparse(loc).scheme not in ("http", "https") or not urlparse(loc).netloc or any(
                ord(ch) < 33 or ch in "'\"" for ch in loc):
            raise RegistryError(f"{c.registry}: {r}: the registry redirected to {printable(loc)[:120]!r}, which is "
                                "not a download URL (allowed: an http(s) URL)")
        return BlobURL(str(r), layer["digest"], layer["size"], resp.status_code, loc, True, f"curl -fLo disk '{loc}'")
    c.check(resp, f"get blob {layer['digest'][:19]}", ok=(200,))
    curl = c.curl_command(r, url)
    return BlobURL(str(r), layer["digest"], layer["size"], resp.status_code, url, False, curl)


def mirror(src: str, dst: str, *, plain_http: Optional[bool] = None, progress: bool = True) -> str:
    """Copy an artifact to another repository/registry, blobs streamed (or mounted on the same registry);
    the manifest is copied byte for byte, so the digest stays the same. Returns that digest."""
    s, d = Ref.parse(src), Ref.parse(dst)
    cs = RegistryClient(s.registry, plain_http)
    cd = cs if d.registry == s.registry else RegistryClient(d.registry, plain_http)
    raw, mtype, digest = cs.get_manifest_raw(s)
    m = json.loads(raw)
    if "manifests" in m:
        raise RegistryError("mirroring an index: mirror each of its manifests first (not supported in one step)")
    blobs = [m["config"], *m.get("layers", [])]
    for b in blobs:
        if cd.has_blob(d, b["digest"]):
            continue
        if cd is cs:
            r = cd._start_upload(d, mount_from=s.repository, digest=b["digest"])
            if r.status_code == 201:
                continue
            cd.do_request(cd._location(r), "DELETE")
        resp = cs.do_request(cs.blob_url(s, b["digest"]), "GET", stream=True)
        cs.check(resp, f"read blob {b['digest'][:19]}")
        bar = _progress_bar(b["size"], f"mirror {b['digest'][7:19]}", progress and b["size"] > 1 << 20)
        try:
            cd.push_stream(d, resp.raw, b["digest"], b["size"], progress=bar.update)
        finally:
            bar.close()
            resp.close()
    tag = d.tag or s.tag or digest
    got = cd.put_manifest(d, raw, mtype or m.get("mediaType", OCI_MANIFEST), reference=tag if not d.digest else digest)
    if got != digest:
        raise RegistryError(f"mirrored manifest digest {got} differs from the source's {digest}")
    return digest


def _shown(value, limit: int = 80):
    """A value a registry sent, safe to print: control characters out, cut to `limit` characters."""
    return None if value is None else printable(str(value))[:limit]


def tags(repo: str, *, plain_http: Optional[bool] = None):
    """The tags of a repository with their artifact annotations, as a pandas DataFrame."""
    import pandas as pd
    r = Ref.parse(repo)
    c = RegistryClient(r.registry, plain_http)
    rows = []
    for tag in sorted(c.list_tags(r)):
        try:
            m, digest = _artifact_manifest(c, Ref(r.registry, r.repository, tag))
        except RegistryError as e:
            rows.append({"tag": tag, "error": printable(str(e))})
            continue
        ann = m.get("annotations") or {}
        layer = disk_layer(m) if m.get("layers") else {}
        if not isinstance(ann, dict):
            ann = {}
        rows.append({"tag": tag, "digest": digest[:19], "artifactType": _shown(m.get("artifactType")),
                     "created": _shown(ann.get("org.opencontainers.image.created")),
                     "recipe": _shown(ann.get(ANNOTATION_PREFIX + "recipe")),
                     "tool": _shown(ann.get(ANNOTATION_PREFIX + "tool")),
                     "file": _shown((layer.get("annotations") or {}).get("org.opencontainers.image.title")),
                     "MB": round(layer.get("size", 0) / (1 << 20), 1),
                     "build s": _shown(ann.get(ANNOTATION_PREFIX + "build-seconds"))})
    return pd.DataFrame(rows)


STORAGE_OPTIONS = [
    # service, max size of one file, retention, content digest, access, anonymous download, mirroring
    ("GitHub Actions artifacts", "10 GB per artifact (zip)", "90 days max", "no (zip)", "GitHub API/UI",
     "no (login required)", "no"),
    ("GitLab job artifacts", "instance limit (often 100 MB-1 GB)", "expire_in, default 30 days", "no",
     "GitLab API/UI", "if the project is public", "no"),
    ("GitLab generic packages", "5 GB (gitlab.com)", "unlimited", "sha256 stored", "HTTPS + token",
     "if the project is public", "no"),
    ("GitHub releases", "2 GiB per asset", "unlimited", "sha256 shown (2025+)", "plain HTTPS", "yes", "no"),
    ("GitHub/GitLab Pages", "1 GB site", "unlimited", "no", "plain HTTPS", "yes", "no"),
    ("Git repository", "100 MB per file (GitHub)", "unlimited", "git object hash", "git clone", "if public",
     "git mirror"),
    ("Git LFS", "2-5 GB per file, bandwidth quota", "unlimited", "sha256 (LFS oid)", "git lfs / HTTPS",
     "if public", "lfs fetch + push"),
    ("Container registry (OCI)", "no fixed limit (layers of 10+ GB work)", "unlimited", "sha256 (content addressed)",
     "OCI clients, HTTPS", "yes (public packages/repos)", "yes (oras/skopeo copy, digest kept)"),
    ("S3 / object storage", "5 TB per object", "your policy", "ETag/checksums", "HTTPS, presigned URLs",
     "if the bucket allows", "rclone/aws s3 sync"),
]


def storage_table():
    import pandas as pd
    return pd.DataFrame(STORAGE_OPTIONS, columns=["service", "max size", "retention", "digest", "access",
                                                  "anonymous download", "mirroring"]).set_index("service")


def is_embedded(ref: str) -> bool:
    """A reference without a registry host (e.g. `diskimages/debian-12-xfce:latest`) means the embedded one."""
    first = ref.split("/", 1)[0]
    return "/" not in ref or not ("." in first or ":" in first or first == "localhost")


class registry_for:
    """`with registry_for(ref, storage) as full_ref:` starts the embedded registry (storage under the output
    folder) for references without a host, and stops it afterwards; other references pass through."""

    def __init__(self, ref: str, storage: Path | str = "build/registry"):
        self.ref, self.storage, self.local = ref, Path(storage), None

    def __enter__(self) -> str:
        if not is_embedded(self.ref):
            return self.ref
        from .localregistry import LocalRegistry
        self.local = LocalRegistry(self.storage).__enter__()
        return f"{self.local.host}/{self.ref}"

    def __exit__(self, *exc) -> None:
        if self.local:
            self.local.__exit__(*exc)
            self.local = None

    start = __enter__          # for notebooks, where a `with` cannot span cells

    def stop(self) -> None:
        self.__exit__(None, None, None)
