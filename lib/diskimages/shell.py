"""Small helpers for writing POSIX shell text: quoting, and a here-document that writes a file."""
from __future__ import annotations

import os
import shlex


def q(s: object) -> str:
    return shlex.quote(str(s))


def write_file(path: str, text: str, mode: str = "0644") -> str:
    """Shell lines that write `text` to `path` (parent folders made) with `mode`."""
    return (f"mkdir -p {q(os.path.dirname(path))}\n"
            f"cat > {q(path)} <<'DISKIMAGES_EOF'\n{text.rstrip()}\nDISKIMAGES_EOF\n"
            f"chmod {mode} {q(path)}\n")
