"""Progress of long work: a tqdm bar over the phases (a widget in notebooks, a line on terminals), with the
tool's latest output line beside it; on a non-terminal (CI logs), one plain line per phase."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, Optional, Sequence


def tqdm_class():
    """The notebook widget bar inside Jupyter, the terminal bar elsewhere. (tqdm.auto would import IPython and
    ipywidgets in every process: ~80 MB of memory for nothing on the command line.)"""
    if "ipykernel" in sys.modules:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


class Progress:
    """`listener`, if given, is called with {"phase", "done", "total", "line"} on every phase change and tool
    output line (the explorer's widgets use it)."""

    def __init__(self, phases: Sequence[str], enabled: bool = True, title: str = "",
                 listener: Optional[Callable[[dict], None]] = None):
        self.listener = listener
        self.total, self.done = len(phases), 0
        self.title = title
        # on a terminal or in a notebook: a live bar; elsewhere (CI logs): one plain line per phase
        self.plain = enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules
        self.enabled = enabled and not self.plain
        self.bar = tqdm_class()(total=len(phases), desc=title, unit="phase", disable=not self.enabled,
                                file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} phases [{elapsed}] {postfix}")
        self._t0 = time.monotonic()
        self._last = 0.0
        self._phase = ""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._phase = name
        self.bar.set_postfix_str(name, refresh=True)
        if self.plain:
            print(f"{self.title}: phase {self.done + 1}/{self.total} {name} "
                  f"(at {time.monotonic() - self._t0:.0f} s)", file=sys.stderr, flush=True)
        self._tell("")
        yield
        self.bar.update(1)
        self.done += 1
        self._tell("")

    def _tell(self, line: str) -> None:
        if self.listener:
            self.listener({"phase": self._phase, "done": self.done, "total": self.total, "line": line})

    def line(self, text: str) -> None:
        self._tell(text)
        now = time.monotonic()
        if self.enabled and now - self._last > 0.5:
            self._last = now
            self.bar.set_postfix_str(f"{self._phase}: {text.strip()[:70]}", refresh=True)

    def close(self) -> None:
        self.bar.close()
        if self.plain:
            print(f"{self.title}: {self.done}/{self.total} phases done in {time.monotonic() - self._t0:.0f} s",
                  file=sys.stderr, flush=True)
