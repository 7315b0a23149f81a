"""The settings of a supervisor, and the figures it reports."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotdo.storage.options import StorageOptions

from dotdo.runtime.transport.descriptors import MIN_ACTIVE, descriptor_budget


def default_max_active() -> int:
    """The active-actor cap of a supervisor not given one: what the open-file limit
    leaves for actors in a serving process with the default settings
    (``dotdo.runtime.transport.descriptors``), and never fewer than ``MIN_ACTIVE``."""
    return max(MIN_ACTIVE, descriptor_budget().max_active)


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Settings of one supervisor.

    Attributes:
        data_dir: Where actor databases live.
        storage: Durability and cache settings for every database.
        idle_timeout: Seconds without a call after which an actor is passivated.
        max_active: Active actors kept at most; past it the least recently used idle
            one is passivated. Defaults to what the open-file limit allows.
        call_timeout: Default deadline of a call entering from outside, in seconds.
        cpu_limit: CPU seconds one turn may use; a turn past it is stopped inside its
            code and rolled back (``dotdo.runtime.core.cpu``). None: no limit.
        max_mailbox: Calls that may wait for one actor's turn; more get ``Overloaded``.
        shutdown_grace: Seconds ``close`` lets running calls finish before cancelling.
        env: Configuration values actors read as ``self.env``.
        alarm_retry_initial: Seconds before the first retry of a failed alarm; each
            retry waits twice as long as the one before (plus jitter).
        alarm_max_retries: Retries of a failed alarm before it is abandoned.
        alarm_concurrency: Alarms delivered at once.
        clock: Wall-clock time in epoch seconds, for alarms (tests pass one that follows
            trio's clock, so a ``MockClock`` drives alarms too).
        event_max_attempts: Tries of an event delivery before it goes to the dead
            letters (``send(retry=...)`` overrides it).
        event_retry_initial: Seconds before the first retry of a delivery (doubling).
        event_retry_max: The longest wait between two tries of a delivery.
        step_lease: Seconds after a durable step starts (or last checked in) at which
            it is resumed if its process died; a live step is checked again then.
        step_max_attempts: Tries of a ``do`` step (``do(retry=...)`` overrides it).
        step_retry_initial: Seconds before the first retry of a step (doubling).
        step_retry_max: The longest wait between two tries of a step.
        compact_retention: Seconds of events and finished actions ``compact`` keeps
            as they are; older ones are folded into summary rows.
        max_ws_message: Bytes of a WebSocket message at most, either way.
    """

    data_dir: Path
    storage: StorageOptions = field(default_factory=StorageOptions)
    idle_timeout: float = 120.0
    max_active: int = field(default_factory=default_max_active)
    call_timeout: float = 30.0
    cpu_limit: float | None = 30.0
    max_mailbox: int = 1000
    shutdown_grace: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)
    alarm_retry_initial: float = 2.0
    alarm_max_retries: int = 6
    alarm_concurrency: int = 16
    clock: Callable[[], float] = time.time
    event_max_attempts: int = 5
    event_retry_initial: float = 1.0
    event_retry_max: float = 60.0
    step_lease: float = 60.0
    step_max_attempts: int = 3
    step_retry_initial: float = 0.5
    step_retry_max: float = 30.0
    compact_retention: float = 7 * 86400.0
    max_ws_message: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    """A snapshot of the supervisor."""

    active: int
    busy: int
    waiting_calls: int
    calls_in_flight: int
    activations: int
    passivations: int
