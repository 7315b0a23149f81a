"""Running a process out of file descriptors, for the tests of what happens then (Linux)."""

from __future__ import annotations

import errno
import gc
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

HEADROOM = 64
"""Descriptors above the highest one open that ``exhausted`` lets the process reach."""


@contextmanager
def exhausted(free: int = 0) -> Iterator[None]:
    """Inside the block this process can open ``free`` more descriptors, no more.

    The soft open-file limit is lowered to just above the highest descriptor open (so
    that filling it takes a few dozen opens, not the whole limit) and the rest is taken
    by descriptors of /dev/null; both are undone when the block ends.
    """
    gc.collect()  # a collected cycle closing a socket mid-test would give one back
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + 1 + HEADROOM), hard))
    held: list[int] = []
    try:
        held = _fill()
        if len(held) < free:
            raise AssertionError(f"only {len(held)} descriptors could be opened, not {free}")
        for _ in range(free):
            os.close(held.pop())
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def free_descriptors() -> int:
    """How many more descriptors this process can open now (it opens them to see, then
    closes them again)."""
    held = _fill()
    for fd in held:
        os.close(fd)
    return len(held)


def _fill() -> list[int]:
    """Open /dev/null until the process may open nothing more; the descriptors."""
    held: list[int] = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            for fd in held:
                os.close(fd)
            raise
    return held
