"""Steps: ``self.S.try_`` (one attempt) and ``self.S.do`` (durable, retried, resumed).

A step is a method of the actor run with one argument, recorded in the actions log
(``dotdo.storage.steps``). ``do`` records the step as running and commits that *before*
the method runs; the method's own writes and the record of its completion then commit
together. So, whatever happens:

- a completed step is never run again: asking for it (same name and key) returns its
  recorded output;
- a step cut short (the server died, or its turn was cancelled) is resumed: the alarm
  index holds a wake-up for the actor at the step's lease (``step_lease`` seconds after
  it started), and a supervisor starting up wakes every actor with unfinished steps at
  once: a step last recorded before the supervisor started cannot still be running (an
  actor is active in one process at a time);
- a failed try is rolled back (its writes vanish), recorded, and retried after a
  backoff (tenacity's exponential wait with jitter) inside the same turn, up to the
  policy's attempts; the last failure is recorded and raised.

Writes the method makes are exactly-once (they commit with the completion). Calls it
makes to other actors are at least once: a resumed step makes them again.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from dotdo.storage.alarms import PendingItem
from dotdo.storage.errors import DotdoError, InvalidInput
from dotdo.storage.outbox import RetryPolicy
from dotdo.storage.steps import STEPS_ITEM, ActionRow

from dotdo.runtime.core import values
from dotdo.runtime.core.errors import CallTimeout
from dotdo.runtime.services.workflow import Retry, activation_of_turn, backoff, method_of, own_turn
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.core.activation import Activation
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.steps")


class StepService:
    """The steps of one supervisor. Created by it."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        config = supervisor.config
        self.lease = config.step_lease
        self.started = 0.0  # when the supervisor started: steps recorded before are orphans
        self.default_retry = Retry(config.step_max_attempts, config.step_retry_initial, config.step_retry_max)
        self._live: dict[Activation, set[int]] = {}  # the actions of the durable steps running now

    async def do(
        self,
        actor: ActorId,
        step: object,
        data: Any = None,
        *,
        key: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run a durable step (see ``Workflow.do``)."""
        activation = own_turn(self._sup, actor, "do")
        name = method_of(activation, step, "do")
        identity = name if key is None else f"{name}#{_key(key)}"
        if retry is not None and not isinstance(retry, Retry):
            raise InvalidInput(f"retry is a dotdo.Retry, got {type(retry).__name__}")
        timeout = _timeout(timeout)
        db = activation.db
        workflow = db.workflow
        row = workflow.step(identity)
        if row is not None and row.status == "completed":
            return values.unpack(row.output or values.pack(None), self._sup.ref)
        policy = (retry or self.default_retry).policy
        packed = values.pack(data)
        now = self._sup.alarms.now()
        resume_at = now + self.lease
        self._sup.alarms.lower(activation, PendingItem(STEPS_ITEM, "steps", None, resume_at, 0))
        action = workflow.start(
            verb=name,
            actor=activation.label,
            durability="do",
            data=packed,
            now=now,
            step=identity,
            policy=msgpack.packb([policy.attempts, policy.initial, policy.max_wait, timeout]),
            resume_at=resume_at,
        )
        db.commit()  # recorded as running before it runs
        tried = 0 if row is None else row.attempts
        return await self._run(activation, action, name, packed, policy, timeout, tried)

    async def try_(self, actor: ActorId, step: object, data: Any = None, *, timeout: float | None = None) -> Any:
        """Run a step once (see ``Workflow.try_``)."""
        activation = own_turn(self._sup, actor, "try_")
        name = method_of(activation, step, "try_")
        timeout = _timeout(timeout)
        db = activation.db
        packed = values.pack(data)
        action = db.workflow.start(verb=name, actor=activation.label, durability="try", data=packed, now=self._sup.alarms.now())
        db.commit()
        return await self._run(activation, action, name, packed, RetryPolicy(1, 0.0, 0.0), timeout, 0)

    async def _run(
        self,
        activation: Activation,
        action: int,
        name: str,
        packed: bytes,
        policy: RetryPolicy,
        timeout: float | None,
        tried: int,
    ) -> Any:
        """Try the step until it succeeds or the policy gives up; inside a turn whose
        last commit recorded the step as running."""
        db = activation.db
        workflow = db.workflow
        instance = activation.instance
        method = getattr(type(instance), name)
        ref = self._sup.ref
        clock = self._sup.alarms.now
        live = self._live.setdefault(activation, set())
        live.add(action)
        try:
            while True:
                try:
                    with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
                        result = await method(instance, values.unpack(packed, ref))
                    output = values.pack(result)
                except Exception as exc:
                    db.rollback()
                    tried += 1
                    error = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, trio.TooSlowError):
                        error = f"TimeoutError: the step did not finish within {timeout:g} s"
                    if tried >= policy.attempts:
                        workflow.finish(action, error=error, now=clock())
                        db.commit()
                        if isinstance(exc, trio.TooSlowError):
                            raise CallTimeout(f"the step {name} did not finish within {timeout:g} s") from None
                        raise
                    wait = backoff(policy, tried)
                    now = clock()
                    workflow.attempt_failed(action, error, now, now + wait + self.lease)
                    db.commit()
                    log.info("step %s of %s failed (%s), try %d in %.2f s", name, activation.label, error, tried + 1, wait)
                    await trio.sleep(wait)
                    continue
                workflow.finish(action, output=output, now=clock())
                db.commit()  # the step's writes and its completion, together
                return values.unpack(output, ref)
        finally:
            live.discard(action)
            if not live:
                self._live.pop(activation, None)

    # -- resuming (driven by the alarm service) --------------------------------------

    async def resume_due(self, target: ActorId) -> None:
        """Resume ``target``'s steps that were cut short, each in a turn of its own."""
        sup = self._sup
        rows = await sup.run_turn(target, self._due)
        for row in rows:
            try:
                await sup.run_turn(target, lambda instance, row=row: self._resume(row), timeout=self._budget(row))
            except DotdoError as exc:
                log.warning("resumed step %s of %s failed: %s", row.verb, target, exc)
            except Exception as exc:  # the step's own error, recorded as failed
                log.warning("resumed step %s of %s raised %s: %s", row.verb, target, type(exc).__name__, exc)

    async def _due(self, instance: Any) -> list[ActionRow]:
        activation = activation_of_turn()
        workflow = activation.db.workflow
        now = self._sup.alarms.now()
        rows = []
        for row in workflow.resumable(now, self.started):
            if row.id in self._live.get(activation, ()):
                workflow.extend(row.id, now + self.lease)  # still running: look again later
            else:
                rows.append(row)
        return rows

    async def _resume(self, row: ActionRow) -> Any:
        activation = activation_of_turn()
        workflow = activation.db.workflow
        current = workflow.step(row.step) if row.step is not None else None
        if current is None or current.status not in ("running", "retrying") or current.id in self._live.get(activation, ()):
            return None
        attempts, initial, max_wait, timeout = msgpack.unpackb(current.policy) if current.policy else (1, 0.0, 0.0, None)
        now = self._sup.alarms.now()
        workflow.start(
            verb=current.verb, actor=activation.label, durability="do", data=current.input or values.pack(None),
            now=now, step=current.step, policy=current.policy, resume_at=now + self.lease,
        )
        activation.db.commit()
        log.info("resuming step %s of %s (after %d tries)", current.step, activation.label, current.attempts)
        policy = RetryPolicy(attempts, initial, max_wait)
        return await self._run(activation, current.id, current.verb, current.input or values.pack(None), policy, timeout, current.attempts)

    def _budget(self, row: ActionRow) -> float | None:
        """The resume turn's deadline: room for every remaining try and wait."""
        if not row.policy:
            return None
        attempts, initial, max_wait, timeout = msgpack.unpackb(row.policy)
        per_try = timeout if timeout is not None else self._sup.config.call_timeout
        return max(attempts - row.attempts, 1) * (per_try + max_wait) + 5.0


def _key(key: object) -> str:
    if not isinstance(key, str | int) or isinstance(key, bool) or not 0 < len(str(key)) <= 200:
        raise InvalidInput(f"a step key is text or a number, 1 to 200 characters, got {key!r}")
    return str(key)


def _timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 86400:
        raise InvalidInput(f"a step timeout is seconds, more than 0 and at most 86400, got {timeout!r}")
    return float(timeout)
