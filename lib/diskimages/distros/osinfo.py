"""What the host's osinfo database (libosinfo's osinfo-db, which virt-install reads) says about a release: its
installer media and install trees. This project names no download host: installer ISOs, install trees and the
probes of a distribution's servers come from this database (or from a parameter), read at run time."""
from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

#: where osinfo-db installs its files (OSINFO_SYSTEM_DIR overrides, as libosinfo does)
DIRS = ("/usr/share/osinfo", "/usr/local/share/osinfo", "/etc/osinfo")


@dataclass(frozen=True)
class Media:
    url: str
    arch: str
    live: bool
    variants: tuple[str, ...]
    kernel: Optional[str] = None          # path of the kernel inside the ISO
    initrd: Optional[str] = None


@dataclass(frozen=True)
class OsEntry:
    short_ids: tuple[str, ...]
    version: str
    media: tuple[Media, ...]
    trees: tuple[tuple[str, str], ...]     # (arch, url)


def _dirs() -> list[Path]:
    env = os.environ.get("OSINFO_SYSTEM_DIR")
    return [Path(d) for d in ([env] if env else DIRS)]


@lru_cache(maxsize=None)
def entries(vendor_dir: str) -> tuple[OsEntry, ...]:
    """Every OS of one vendor folder (e.g. "ubuntu.com"), as the installed database describes it."""
    out = []
    for base in _dirs():
        for f in sorted((base / "os" / vendor_dir).glob("*.xml")) if (base / "os" / vendor_dir).is_dir() else ():
            try:
                root = ET.parse(f).getroot()
            except (ET.ParseError, OSError):
                continue
            for os_el in root.iter("os"):
                media = []
                for m in os_el.findall("media"):
                    url = (m.findtext("url") or "").strip()
                    if not url:
                        continue
                    media.append(Media(url, m.get("arch", ""), m.get("live") == "true",
                                       tuple(v.get("id", "") for v in m.findall("variant")),
                                       (m.findtext("kernel") or "").strip() or None,
                                       (m.findtext("initrd") or "").strip() or None))
                trees = tuple((t.get("arch", ""), (t.findtext("url") or "").strip())
                              for t in os_el.findall("tree") if (t.findtext("url") or "").strip())
                out.append(OsEntry(tuple(s.text.strip() for s in os_el.findall("short-id") if s.text),
                                   (os_el.findtext("version") or "").strip(), tuple(media), trees))
    return tuple(out)


def find(vendor_dir: str, short_id: str) -> Optional[OsEntry]:
    return next((e for e in entries(vendor_dir) if short_id in e.short_ids), None)


def newest(vendor_dir: str, pattern: str) -> Optional[OsEntry]:
    """The entry with the highest version among those whose short id matches `pattern` (a regex)."""
    found = [e for e in entries(vendor_dir) if any(re.fullmatch(pattern, s) for s in e.short_ids)]

    def key(e: OsEntry):
        return [int(x) if x.isdigit() else 0 for x in re.split(r"[.-]", e.version)]
    return max(found, key=key) if found else None


def base_url(url: str) -> str:
    """scheme://host/ of a URL (what a reachability probe asks)."""
    m = re.match(r"^([a-z]+://[^/]+)", url)
    return m.group(1) + "/" if m else url
