"""The CPU-time limit of a turn.

Turns run in the caller's task on one thread: a turn that computes without awaiting
holds every actor of its process, and its deadline cannot stop it (a cancel scope acts
only where the code awaits). Durable Objects stop a request past its CPU limit; dotdo
does the same by sampling. While a supervisor runs, the process's profiling timer
(``ITIMER_PROF``, CPU time of the process) fires every ``tick`` seconds of CPU; the
signal handler runs in the main thread between two bytecodes of whatever runs, and
charges the tick to the turn running then (the current turn is a context variable, so
it is the turn of the task that was interrupted). A turn charged ``limit`` seconds is
stopped there: ``TurnStopped`` is raised into its own code (not an ``Exception``: an
``except Exception`` cannot keep it going), the turn core rolls it back, ends the
activation, and the caller gets ``CpuLimitExceeded``.

Nothing is measured per turn: a call pays for two more attributes of its ``Turn`` and
nothing else. The charge is a sample, right to about a tick. One C call (a single SQL
statement) is not interrupted: the handler runs when it returns; such a statement is
bounded by ``StorageOptions.sql_time_limit`` instead. The timer is the process's: the
watch entered last is the one in force, and leaving it restores the one before. Watches
may be left in any order (several supervisors in one process, stopped one by one): one
left while another entered after it still runs takes itself out of the chain, so that
the watches still running keep the timer and the last one left restores what was
there before the first. It works only in the main thread (where Python runs signal
handlers); elsewhere there is no limit.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from types import FrameType
from typing import Any

import trio

from dotdo.runtime.core.context import current_turn
from dotdo.runtime.core.errors import CpuLimitExceeded, TurnStopped

log = logging.getLogger("dotdo.runtime")

MAX_TICK = 0.1
"""Seconds of CPU between two samples at most (a tenth of the limit when that is less)."""


class CpuWatch:
    """Stops turns that use more than ``limit`` seconds of CPU (None or infinite: no
    limit). ``with CpuWatch(limit):`` while turns run."""

    def __init__(self, limit: float | None) -> None:
        self.limit = None if limit is None or math.isinf(limit) or limit <= 0 else float(limit)
        self.tick = 0.0 if self.limit is None else min(MAX_TICK, self.limit / 10)
        self._previous: tuple[Any, tuple[float, float]] | None = None

    def __enter__(self) -> CpuWatch:
        if self.limit is None:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("turns run outside the main thread: no CPU-time limit (signals reach the main thread only)")
            return self
        handler = signal.signal(signal.SIGPROF, self._sample)
        signal.siginterrupt(signal.SIGPROF, False)  # system calls resume after a sample, as if none came
        timer = signal.setitimer(signal.ITIMER_PROF, self.tick, self.tick)
        self._previous = (handler, timer)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is None:
            return
        previous, self._previous = self._previous, None
        current = signal.getsignal(signal.SIGPROF)
        if current != self._sample:
            # A watch entered after this one still runs: the one that came right after
            # this one now comes after what came before this one.
            later = getattr(current, "__self__", None)
            while isinstance(later, CpuWatch) and later._previous is not None:
                before = later._previous[0]
                if before == self._sample:
                    later._previous = previous
                    return
                later = getattr(before, "__self__", None)
            return  # not in the chain (someone else set the handler): leave it be
        handler, (delay, interval) = previous
        signal.setitimer(signal.ITIMER_PROF, delay, interval)
        signal.signal(signal.SIGPROF, handler)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        turn = current_turn.get()
        if turn is None:
            return
        turn.cpu += self.tick
        limit = self.limit
        if limit is None or turn.cpu < limit:
            return
        if trio.lowlevel.currently_ki_protected():
            return  # inside trio's own bookkeeping: stop the turn at the next tick instead
        stopped = turn.stopped
        if stopped is None:
            error = CpuLimitExceeded(
                f"{turn.activation.label} used more than {limit:g} s of CPU in one turn (--cpu-limit); "
                "the turn was stopped and rolled back",
                address=(turn.activation.id.namespace, turn.activation.id.hex),
            )
            stopped = turn.stopped = TurnStopped(error)
        raise TurnStopped(stopped.error)  # again at every tick, if the actor's code caught it
