"""Progress reporting for long work. Library functions take a `progress` callable and stay quiet by
default; the command line passes `bar`: a tqdm bar on a terminal, a few plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, iterable: Iterable[T], *, total: int | None = ..., desc: str = ...) -> Iterable[T]: ...


def quiet(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    yield from iterable


def bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "", **kwargs: Any) -> Iterable[T]:
    if not sys.stderr.isatty():
        return _lines(iterable, total=total, desc=desc)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def _lines(
    iterable: Iterable[T], *, total: int | None, desc: str, every_s: float = 30.0, min_s: float = 10.0
) -> Iterator[T]:
    """Off a terminal (journald, CI, a pipe) a redrawn bar is noise: a line per tenth of the work at most
    every `min_s` seconds, one at least every `every_s`, and one when work that took `min_s` or more
    is done; work shorter than that prints nothing."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    start = last = time.monotonic()
    next_tenth = 1
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        tenth_reached = bool(total) and done * 10 >= next_tenth * total and now - last >= min_s
        finished = done == total and now - start >= min_s  # short work stays quiet
        if tenth_reached or finished or now - last >= every_s:
            if total:
                next_tenth = done * 10 // total + 1
            of = f"/{total} ({100 * done // total}%)" if total else ""
            print(f"{desc or 'progress'}: {done}{of}, {now - start:.0f} s", file=sys.stderr, flush=True)
            last = now
