"""Where things live: the recipes folder, the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent.parent  # lib/diskimages -> repo root (editable install from a checkout)


def _shipped(name: str) -> Path:
    """A folder shipped with the project: the checkout's own (an editable install), else the copy an installed
    wheel put under share/diskimages/ (found through the installed files, wherever the prefix is)."""
    if (REPO_DIR / name).is_dir() and (REPO_DIR / "pyproject.toml").is_file():
        return REPO_DIR / name
    from importlib import metadata
    # the distribution installed where this very package is (not another copy earlier on sys.path)
    dist = next(iter(metadata.distributions(name="diskimages", path=[str(PACKAGE_DIR.parent)])), None)
    if dist is None:
        return REPO_DIR / name
    marker = f"share/diskimages/{name}/"
    for f in dist.files or []:
        text = str(f).replace("\\", "/")
        if marker in text:
            path = Path(dist.locate_file(f)).resolve()
            return Path(str(path)[:str(path).index(marker.rstrip("/")) + len(marker) - 1])
    return REPO_DIR / name


def recipes_dir() -> Path:
    return Path(os.environ.get("DISKIMAGES_RECIPES") or _shipped("recipes"))


def notebooks_dir() -> Path:
    return _shipped("notebooks")


def cache_dir(*parts: str) -> Path:
    base = Path(os.environ.get("DISKIMAGES_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                             Path.home() / ".cache") / "diskimages")
    p = base.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def venv_share() -> Path:
    """Where scripts/setup.sh puts checkers unpacked from distribution packages (inside the Python environment,
    never on the host)."""
    import sys
    return Path(sys.prefix) / "share" / "diskimages-tools"


def widget_assets() -> "Path | None":
    """The Jupyter widget manager (html-manager's embed-amd.js) and require.js that scripts/setup.sh fetched from
    npm into the Python environment; None when they are not there (the docs site then loads them from a CDN)."""
    import sys
    web = Path(sys.prefix) / "node" / "web"
    ok = (web / "html-manager" / "dist" / "embed-amd.js").is_file() and (web / "requirejs" / "require.js").is_file()
    return web if ok else None
