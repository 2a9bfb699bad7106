"""Progress reporting for long work. Library functions take a `progress` callable and stay quiet by
default; the command line passes `bar`, which draws a tqdm bar on a terminal and nothing elsewhere."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    def __call__(self, iterable: Iterable[T], *, total: int | None = ..., desc: str = ...) -> Iterable[T]: ...


def quiet(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    yield from iterable


def bar(iterable: Iterable[T], *, total: int | None = None, desc: str = "", **kwargs: Any) -> Iterable[T]:
    from tqdm import tqdm

    # disable=None: tqdm draws only when stderr is a terminal, so services and CI logs stay clean.
    return tqdm(
        iterable, total=total, desc=desc, disable=None, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs
    )
