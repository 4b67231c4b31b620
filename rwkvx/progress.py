"""A tiny progress bar on stderr, with no dependencies.

    with ProgressBar(total=n_tokens, label="perplexity", unit="tok") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

It draws only when its stream is a terminal, unless force=True (or the environment
variable RWKVX_PROGRESS=1; RWKVX_PROGRESS=0 silences it even on a terminal), so
logs and pipes stay clean. Redraws are limited to one every MIN_REDRAW_SECONDS.
"""
from __future__ import annotations

import os
import sys
import time

MIN_REDRAW_SECONDS = 0.1
BAR_WIDTH = 30


class ProgressBar:
    """Progress of `total` units of work; `update(n)` adds n done units, `close()` ends the line."""

    def __init__(self, total: int, label: str = "", unit: str = "it", stream=None, force: bool | None = None):
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.enabled = _enabled(self.stream, force)
        self._start = time.perf_counter()
        self._last_draw = float("-inf")
        self._closed = False

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    @property
    def rate(self) -> float:
        """Units per second so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last_draw >= MIN_REDRAW_SECONDS:
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def render(self) -> str:
        """The bar as one line of text, e.g. `label [#######.....] 58% 580/1000 tok 812.3 tok/s ETA 1s`."""
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(round(fraction * BAR_WIDTH))
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        prefix = f"{self.label} " if self.label else ""
        return (f"{prefix}[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} "
                f"{self.done}/{self.total} {self.unit} {rate:.1f} {self.unit}/s ETA {eta:.0f}s")

    def _draw(self) -> None:
        # \r returns to the line start; \x1b[K clears what a longer previous line left behind.
        self.stream.write("\r" + self.render() + "\x1b[K")
        self.stream.flush()


def _enabled(stream, force: bool | None) -> bool:
    if force is not None:
        return bool(force)
    env = os.environ.get("RWKVX_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
