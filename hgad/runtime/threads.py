"""Which thread starts torch's parallel work on the CPU, and why the agent loads its model on a passing one.

torch's CPU kernels run on GNU OpenMP (the libgomp in PyPI's wheels). libgomp keeps a pool of worker
threads for every thread that has started parallel work, for as long as that thread lives; once its pools
together hold more threads than the machine has cores, it makes every pool's workers sleep after each kernel
instead of spinning for the next one (100 spins instead of 300,000), and each of the model's few hundred
kernels per frame then waits for a sleeping worker to be woken. A process that loads its model on the main
thread (reading the weights, the backend's checks on golden frames) and runs it on a pipeline thread has two
pools: on two cores the demo's model then took about 900 context switches per frame where it took none on
the thread that loaded it. libgomp frees a thread's pool when the thread ends, so work done through
`on_passing_thread` leaves the pipeline's pool the only one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_passing_thread(fn: Callable[[], T], name: str) -> T:
    """fn() on a thread that ends when it returns: its result, or its exception raised here."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # handed to the caller, which decides what it means
            error.append(exc)

    # Daemon: an interrupt while it works stops the caller's wait, and the process need not wait for it.
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
