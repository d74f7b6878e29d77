"""Progress of long work: a bar on a terminal, a line every minute or 10 % in a batch log.

Under SLURM or ``nohup`` stderr is a file, where a bar's carriage returns pile up into one
unreadable line (or, disabled, leave the log silent for hours). There each update that crosses
a tenth of the work, or comes a minute after the last line, logs one line with the position,
the rate and the time left.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Protocol

from tqdm import tqdm

log = logging.getLogger("ctxq")

EVERY_SECONDS = 60.0
PARTS = 10          # a line at each tenth of the work


class Progress(Protocol):
    """What long loops call: ``update(n)`` after each piece of work, ``close()`` at the end."""

    def update(self, n: float = 1) -> object: ...

    def set_postfix(self, refresh: bool = True, **values: str) -> None: ...

    def close(self) -> None: ...


def progress(total: float, desc: str, unit: str, enabled: bool = True, initial: float = 0,
             unit_scale: float = 1.0) -> Progress:
    """A tqdm bar when stderr is a terminal, log lines otherwise, nothing when not ``enabled``."""
    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                    dynamic_ncols=True, disable=not enabled)
    return LogProgress(total, desc, unit, initial=initial, unit_scale=unit_scale)


class LogProgress:
    """Logs 'train: step 1200/5000 (24 %), 6.1 step/s, 10 min left' now and then."""

    def __init__(self, total: float, desc: str, unit: str, initial: float = 0,
                 unit_scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.scale, self.clock = unit_scale, clock
        self.start_at = self.done = initial
        self.started = self.last_time = clock()
        self.last_tenth = self._tenth(initial)
        self.postfix = ""

    def _tenth(self, done: float) -> int:
        """Which tenth of the work ``done`` is in."""
        return int(PARTS * done // self.total) if self.total else 0

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; log a line on a new tenth or after a minute of silence."""
        self.done += n
        now = self.clock()
        tenth = self._tenth(self.done)
        if tenth > self.last_tenth or now - self.last_time >= EVERY_SECONDS:
            self.last_tenth, self.last_time = tenth, now
            self._line(now)

    def set_postfix(self, refresh: bool = True, **values: str) -> None:
        """Values shown at the end of the next line, e.g. the loss."""
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to release; the caller's own summary line ends the work."""

    def _line(self, now: float) -> None:
        """Log where the work stands."""
        done, total = self.done * self.scale, self.total * self.scale
        rate = (self.done - self.start_at) * self.scale / max(now - self.started, 1e-9)
        left = (total - done) / rate if rate > 0 else float("inf")
        log.info("%s: %s %s/%s (%d %%), %.3g %s/s, %s left%s", self.desc, self.unit,
                 _number(done), _number(total), int(100 * done / total) if total else 100,
                 rate, self.unit, _duration(left), self.postfix)


def _number(x: float) -> str:
    """120 or 12.5"""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '3.2 h' or 'unknown'."""
    if seconds != seconds or seconds == float("inf"):
        return "unknown time"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
