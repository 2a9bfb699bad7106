"""A camera source's up or down, as operators see it: the camera's stats (up, down_since, last_error) and the
log lines that say so. A source that goes down or cannot be opened is a warning (one per backoff step while
the delay grows, then a reminder every REMIND_EVERY attempts, never a line per attempt); a source back, or a
recording at its end, is information; a fault of the camera thread is an error with its traceback."""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .camera import CameraStats

log = logging.getLogger("agent.camera")  # the camera's lines, under the name operators filter them by

# A source that stays unreachable at the longest backoff is reported again every this many attempts.
REMIND_EVERY = 10
END_OF_RECORDING = "end of recording"


def masked(source: str) -> str:
    """The source as it may be logged: a password in a URL becomes ***."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", source)


class SourceHealth:
    def __init__(self, name: str, kind: str, source: str, stats: CameraStats, reopen_max_s: float):
        self.name, self.kind, self.source = name, kind, source
        self.stats = stats
        self.reopen_max_s = reopen_max_s
        self.failed_opens = 0
        self.fault: str | None = None  # the last fault of the camera thread, if any

    def fields(self, **more) -> dict:
        return {"camera": self.name, "source": masked(self.source), **more}

    def down(self, why: str) -> None:
        if self.stats.up:
            # The end of a recording is how a run over files finishes, not something to act on.
            level = logging.INFO if why == END_OF_RECORDING else logging.WARNING
            log.log(level, "camera down", extra={"fields": self.fields(reason=why)})
        self._down(why)

    def open_failed(self, backoff: float) -> None:
        self.failed_opens += 1
        why = f"cannot open the {self.kind} source"
        n = self.failed_opens
        if n == 1 or backoff < self.reopen_max_s or n % REMIND_EVERY == 0:
            fields = self.fields(reason=why, attempts=n, retry_in_s=round(backoff, 1))
            log.warning("camera cannot be opened", extra={"fields": fields})
        self._down(f"{why}: {masked(self.source)}")

    def faulted(self, exc: Exception) -> None:
        """A fault of the camera thread (of our code or of a library under it): logged with its traceback."""
        why = self.fault = f"internal error: {type(exc).__name__}: {exc}"
        log.error("camera thread fault", exc_info=True, extra={"fields": self.fields(error=why)})
        self.down(why)

    def up(self) -> None:
        if not self.stats.up:
            log.info("camera up", extra={"fields": self.fields(kind=self.kind, after_failed_opens=self.failed_opens)})
        self.failed_opens = 0
        self.stats.up = True
        self.stats.down_since = None
        self.stats.last_error = ""

    def _down(self, why: str) -> None:
        self.stats.up = False
        self.stats.last_error = why
        if self.stats.down_since is None:
            self.stats.down_since = time.time()
