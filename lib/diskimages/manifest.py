"""The package manifest (SBOM) of a finished image, as SPDX 2.3 JSON written with spdx-tools and validated by it.

It is read from the disk itself (debugfs, no mount), through the distribution layer: the package database
(whatever each distribution module names) and, where a distribution keeps licences outside it,
each package's licence file. So every tool's image gets one, whatever made it. Each package carries its name,
version, architecture, source package, a purl, and its declared licence as an SPDX expression where the package
declares one machine-readably (NOASSERTION otherwise, with the distribution's own words in the comment)."""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Optional

from . import disk
from .distros import Distribution, Release
from .errors import Failure

SPDX_MEDIA_TYPE = "application/spdx+json"


def read_packages(raw: Path, distro: Distribution) -> list[dict]:
    """The installed packages of a raw disk, as the distribution's manifest reader gives them."""
    with tempfile.TemporaryDirectory(prefix="diskimages-manifest-", dir=raw.parent) as tmp:
        root = Path(tmp)
        disk.extract(raw, list(distro.manifest_paths), root)
        first = distro.manifest(root)
        licences = distro.license_paths(first)
        if licences:
            disk.extract(raw, sorted(licences.values()), root)
            first = distro.manifest(root)
        return first


def _spdx_id(i: int, name: str) -> str:
    return f"SPDXRef-Package-{i}-" + re.sub(r"[^A-Za-z0-9.-]", "-", name)[:100]


def purl(distro: Distribution, release: Release, pkg: dict) -> str:
    from urllib.parse import quote
    q = f"arch={quote(pkg['architecture'])}&distro={quote(distro.name)}-{quote(release.version)}"
    if pkg.get("source") and pkg["source"] != pkg["name"]:
        q += f"&upstream={quote(pkg['source'])}"
    return f"pkg:{distro.purl_type}/{distro.name}/{quote(pkg['name'])}@{quote(pkg['version'])}?{q}"


def document(packages: list[dict], distro: Distribution, release: Release, *, image_name: str,
             creators: list[str]):
    """The SPDX 2.3 document: the image as the described package, containing every installed package."""
    from spdx_tools.common.spdx_licensing import spdx_licensing
    from spdx_tools.spdx.model import (Actor, ActorType, CreationInfo, Document, ExternalPackageRef,
                                       ExternalPackageRefCategory, Package, PackagePurpose, Relationship,
                                       RelationshipType, SpdxNoAssertion)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    info = CreationInfo("SPDX-2.3", "SPDXRef-DOCUMENT", image_name, f"urn:uuid:{uuid.uuid4()}",
                        [Actor(ActorType.TOOL, c) for c in creators], created)
    image = Package("SPDXRef-Image", image_name, SpdxNoAssertion(), files_analyzed=False,
                    primary_package_purpose=PackagePurpose.OPERATING_SYSTEM,
                    description=f"{distro.pretty_name} {release.version} disk image")
    pkgs, rels = [image], [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-Image")]
    for i, p in enumerate(packages):
        spdx = distro.spdx_license(p.get("license"))
        declared = SpdxNoAssertion()
        if spdx and not spdx_licensing.validate(spdx).errors:
            declared = spdx_licensing.parse(spdx)
        comment = None if not isinstance(declared, SpdxNoAssertion) or not p.get("license") else \
            f"declared by the package as: {p['license'][:200]}"
        sid = _spdx_id(i, p["name"])
        pkgs.append(Package(sid, p["name"], SpdxNoAssertion(), version=p["version"], files_analyzed=False,
                            license_declared=declared, license_concluded=SpdxNoAssertion(),
                            copyright_text=SpdxNoAssertion(), license_comment=comment,
                            source_info=f"source package {p['source']}" if p.get("source") else None,
                            comment=f"architecture {p['architecture']}" if p.get("architecture") else None,
                            external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER,
                                                                    "purl", purl(distro, release, p))]))
        rels.append(Relationship("SPDXRef-Image", RelationshipType.CONTAINS, sid))
    return Document(info, packages=pkgs, relationships=rels)


def write(raw: Path, distro: Distribution, release: Release, dest: Path, *, image_name: str,
          creators: list[str]) -> dict:
    """Read the manifest from `raw`, validate it as SPDX 2.3 and write it to `dest` (under a temporary name
    until complete). Returns what the build record says about it."""
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_file
    packages = read_packages(raw, distro)
    doc = document(packages, distro, release, image_name=image_name, creators=creators)
    problems = validate_full_spdx_document(doc)
    if problems:
        raise Failure(f"the SPDX manifest of {image_name} does not validate: {problems[0].validation_message}")
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        write_document_to_file(doc, str(partial), validate=False)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    declared = sum(1 for p in doc.packages[1:] if not type(p.license_declared).__name__ == "SpdxNoAssertion")
    return {"manifest": dest.name, "manifest_packages": len(packages), "manifest_licenses_declared": declared}


def load(path: Path) -> "list[dict]":
    """The packages of a written manifest: [{name, version, architecture, purl, license}]."""
    doc = json.loads(Path(path).read_text())
    rows = []
    for p in doc.get("packages", []):
        if p.get("SPDXID") == "SPDXRef-Image":
            continue
        ref = next((r.get("referenceLocator") for r in p.get("externalRefs", []) if r.get("referenceType") == "purl"),
                   "")
        arch = re.search(r"[?&]arch=([^&]+)", ref or "")
        rows.append({"name": p.get("name"), "version": p.get("versionInfo"),
                     "architecture": arch.group(1) if arch else "", "license": p.get("licenseDeclared"),
                     "purl": ref})
    return rows
