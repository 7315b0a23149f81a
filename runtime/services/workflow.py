"""What events, subscriptions and steps share: the retry policy, event paths, and the
checks every workflow call makes (inside the actor's own turn, on its own methods)."""

from __future__ import annotations

import datetime as dt
import inspect
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import tenacity

from dotdo.storage.errors import DotdoError, InvalidInput
from dotdo.storage.outbox import RetryPolicy
from dotdo.storage.subscriptions import WILDCARD

from dotdo.runtime.core.context import current_turn, turn_of
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.supervisor import Supervisor

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


@dataclass(frozen=True, slots=True)
class Retry:
    """How a delivery (``send``) or a step (``do``) is retried.

    Attributes:
        attempts: Tries in all, the first included (1: no retry).
        initial: Seconds before the first retry; each retry waits twice the one before,
            plus up to half of ``initial`` of jitter.
        max_wait: The longest wait between two tries.
    """

    attempts: int = 5
    initial: float = 1.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool) or not 1 <= self.attempts <= 1000:
            raise InvalidInput(f"Retry.attempts is a whole number from 1 to 1000, got {self.attempts!r}")
        for field_name in ("initial", "max_wait"):
            value = getattr(self, field_name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 86400 or math.isnan(value):
                raise InvalidInput(f"Retry.{field_name} is seconds from 0 to 86400, got {value!r}")

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.attempts, float(self.initial), float(self.max_wait))


def backoff(policy: RetryPolicy, attempts_so_far: int) -> float:
    """Seconds before the next try of ``policy`` after ``attempts_so_far`` failures."""
    wait = tenacity.wait_exponential_jitter(
        multiplier=policy.initial, max=policy.max_wait, exp_base=2, jitter=policy.initial / 2
    )
    state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = attempts_so_far
    return float(wait(state))


def parse_path(path: object, *, wildcards: bool = False) -> tuple[str, str]:
    """``"Noun.verb"`` as (noun, verb); with ``wildcards`` either part may be ``*``.

    Raises:
        InvalidInput: Not two names joined by a dot.
    """
    if isinstance(path, str):
        noun, dot, verb = path.partition(".")
        if dot and all(_NAME.fullmatch(part) or (wildcards and part == WILDCARD) for part in (noun, verb)):
            return noun, verb
    allowed = " (either may be *)" if wildcards else ""
    raise InvalidInput(f"an event path is Noun.verb: two names joined by a dot{allowed}, got {path!r}")


def seconds(value: object, what: str) -> float:
    if isinstance(value, dt.timedelta):
        value = value.totalseconds()
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 10 * 365 * 86400:
        raise InvalidInput(f"{what} is seconds (or a timedelta) from 0 to ten years, got {value!r}")
    return float(value)


def check_priority(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -1000 <= value <= 1000:
        raise InvalidInput(f"a priority is a whole number from -1000 to 1000, got {value!r}")
    return value


def optional_id(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InvalidInput(f"{what} is text of 1 to 200 characters, got {value!r}")
    return value


def own_turn(supervisor: Supervisor, actor: ActorId, what: str) -> Activation:
    """The activation of ``actor`` if this task runs one of its turns.

    Raises:
        DotdoError: Called elsewhere.
    """
    turn = turn_of(supervisor)
    if turn is None or turn.activation.id != actor or turn.activation.instance is None:
        raise DotdoError(f"{what} of {actor} can only be used inside one of its own turns")
    return turn.activation


def method_of(activation: Activation, handler: object, what: str) -> str:
    """The name of ``handler``: a method of the actor (bound) or its name.

    Raises:
        InvalidInput: Not an async method of the actor's class.
    """
    if isinstance(handler, str):
        name = handler
    else:
        name = getattr(handler, "__name__", None)
        if getattr(handler, "__self__", None) is not activation.instance or not isinstance(name, str):
            raise InvalidInput(f"{what} runs a method of this actor (self.method or its name), got {handler!r}")
    fn = getattr(type(activation.instance), name, None)
    if fn is None or not inspect.iscoroutinefunction(fn):
        raise InvalidInput(f"{activation.kind.namespace}.{name} is not an async method: {what} cannot run it")
    return name


def check_timeout(value: object) -> float:
    """Seconds, more than 0 (``InvalidInput`` otherwise)."""
    amount = seconds(value, "a timeout")
    if amount <= 0:
        raise InvalidInput(f"a timeout is more than 0 seconds, got {value!r}")
    return amount


def fields(payload: bytes, count: int) -> list[Any]:
    try:
        fields = msgpack.unpackb(payload)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a system call's payload is not msgpack: {exc}") from None
    if not isinstance(fields, list) or len(fields) != count:
        raise ProtocolError(f"a system call's payload must be a list of {count}")
    return fields


def activation_of_turn() -> Activation:
    turn = current_turn.get()
    assert turn is not None
    return turn.activation

