"""Where things live: the recipes folder, the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent.parent  # lib/diskimages -> repo root (editable install from a checkout)


def recipes_dir() -> Path:
    return Path(os.environ.get("DISKIMAGES_RECIPES") or REPO_DIR / "recipes")


def notebooks_dir() -> Path:
    return REPO_DIR / "notebooks"


def cache_dir(*parts: str) -> Path:
    base = Path(os.environ.get("DISKIMAGES_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                             Path.home() / ".cache") / "diskimages")
    p = base.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
