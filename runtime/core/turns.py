"""The call path on this worker: a call runs as one turn of its actor, in the caller's task.

A call finds (or builds) the activation, waits at its turn gate, runs the handler
between ``begin_turn`` and ``commit``/``rollback``, and leaves the gate. No task per
actor and no queue hop, so an in-process call costs a few microseconds::

    route   the output gate (a calling turn commits first); joins the calling turn's
            chain and deadline, or starts a new chain
    entry   a call from outside: its own deadline and cancel scope, tracked so that
            ``Supervisor.close`` can drain it
    run     the turn itself: activation, gate, ``on_start`` if not run yet (``ready``),
            handler, commit or rollback (``abort``), the end of the turn (``end_turn``)

Invariants kept here: nothing leaves a turn before its writes are committed (``commit``
before a reply, and before any call the turn makes); a turn that raises rolls back to
its last output point and the actor keeps serving.

These are functions of the supervisor (they read its state: ``_entries``, ``_closing``)
rather than methods, so that its parts live in modules of their own at no cost per call.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage.errors import DotdoError, StorageError

from dotdo.runtime.core import catalog
from dotdo.runtime.core.activation import Activation, ActivationState, PassivationReason, public_error, raise_public
from dotdo.runtime.core.context import Turn, current_turn, turn_of
from dotdo.runtime.core.errors import ActorError, CallTimeout, SupervisorClosed, Unavailable
from dotdo.runtime.core.ids import ActorId

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Convert, Supervisor

log = logging.getLogger("dotdo.runtime")


def route(
    sup: Supervisor,
    target: ActorId,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    convert: Convert,
    timeout: float | None,
) -> Awaitable[Any]:
    """The call to await: checks and the output gate run now, the turn when awaited.
    (A plain function, not a coroutine: one frame less on every call's path.)"""
    turn = turn_of(sup)
    if turn is not None:
        # The output gate: the calling turn's writes are durable before we leave it.
        turn.activation.db.commit()
        if timeout is None or trio.current_time() + timeout >= turn.deadline:
            return run(sup, target, turn.chain, turn.path, turn.deadline, fn, args, kwargs, convert)
        return entry(sup, target, turn.chain, turn.path, timeout, fn, args, kwargs, convert)
    if sup._closing:
        raise SupervisorClosed("the supervisor is shutting down")
    return entry(sup, target, sup._new_chain(), (), timeout, fn, args, kwargs, convert)


async def entry(
    sup: Supervisor,
    target: ActorId,
    chain: str,
    path: tuple[str, ...],
    timeout: float | None,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    convert: Convert,
    scope: trio.CancelScope | None = None,
) -> Any:
    """Run a call under its own deadline (in ``scope`` when given: the transport's,
    which a cancel frame cancels), tracked so ``close`` can drain it."""
    seconds = sup.config.call_timeout if timeout is None else timeout
    deadline = trio.current_time() + seconds
    if scope is None:
        scope = trio.CancelScope(deadline=deadline)
    else:
        scope.deadline = deadline
    sup._entries.add(scope)
    try:
        with scope:
            return await run(sup, target, chain, path, deadline, fn, args, kwargs, convert)
    finally:
        sup._entries.discard(scope)
        if sup._closing and not sup._entries:
            sup._drained.set()
    if sup._closing:
        raise SupervisorClosed("the call was cancelled because the supervisor is shutting down")
    raise CallTimeout(f"call to {target} did not finish within {seconds:g} s; its turn was rolled back")


async def run(
    sup: Supervisor,
    target: ActorId,
    chain: str,
    path: tuple[str, ...],
    deadline: float,
    fn: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    convert: Convert,
) -> Any:
    """Run one turn of ``fn`` on the actor ``target``."""
    activation = catalog.activate(sup, target)
    if activation.router is not None and sup.sharding.routes(activation, fn):
        return await sup.sharding.call(activation, chain, path, deadline, fn, args, kwargs, convert)
    gate = activation.gate
    # Every call yields once, so that a loop of calls cannot starve the rest of the
    # server. It yields before taking the gate, not while holding it: otherwise every
    # call arriving meanwhile would queue (and pay for the wait) even when turns never
    # block. While it yields, the call counts as arriving: the activation is not idle,
    # so it is not passivated under the call, which sees how its start went.
    gate.arriving += 1
    try:
        await trio.lowlevel.cancel_shielded_checkpoint()
    finally:
        gate.arriving -= 1
    if not gate.try_enter(chain):
        await gate.enter(chain, deadline, sup.config.max_mailbox)
    if activation.router is not None and sup.sharding.routes(activation, fn):
        gate.exit()  # it was sharded while this call waited
        return await sup.sharding.call(activation, chain, path, deadline, fn, args, kwargs, convert)
    try:
        if activation.state is not ActivationState.ACTIVE:
            await ready(sup, activation, chain, path, deadline)
        db = activation.db
        db.begin_turn()
        token = current_turn.set(Turn(activation, chain, (*path, activation.label), deadline))
        try:
            result = await fn(activation.instance, *args, **kwargs)
            if convert is not None:
                result = convert(result)
            db.commit()
        except BaseException as exc:
            abort(activation, exc)
            raise_public(exc, activation)
        finally:
            end_turn(sup, activation, token)
        return result
    finally:
        gate.exit()
        activation.turns += 1
        activation.last_used = trio.current_time()


def end_turn(sup: Supervisor, activation: Activation, token: Any) -> None:
    """Leave a turn (after its commit or rollback); once the outermost turn of the
    actor ends, bring the alarm index in step if the turn changed alarms."""
    current_turn.reset(token)
    db = activation.db
    db.end_turn()
    if activation.wake_dirty and not db.in_turn:
        sup.alarms.sync(activation)
    if activation.subscriptions_dirty and not db.in_turn:
        sup.subscriptions.sync(activation)
    if activation.reload and not db.in_turn:
        sup.lifecycle.reload(activation)


def abort(activation: Activation, exc: BaseException) -> None:
    """Roll back a failed turn; log what the actor's own code raised."""
    try:
        activation.db.rollback()
    except StorageError:
        log.exception("rollback failed for %s", activation.label)
    if isinstance(exc, Exception) and not isinstance(exc, DotdoError):
        log.warning("%s raised %s: %s", activation.label, type(exc).__name__, exc, exc_info=exc)


async def ready(sup: Supervisor, activation: Activation, chain: str, path: tuple[str, ...], deadline: float) -> None:
    """Finish starting an activation (run ``on_start``), or report why it cannot serve."""
    state = activation.state
    if state is ActivationState.STARTING:
        if activation.started:  # a reentrant call while on_start runs
            return
        activation.started = True
        if activation.promotion_pending:
            try:
                await sup.promotion.settle(activation)
            except BaseException:
                activation.started = False  # the next call tries again
                raise
            activation.promotion_pending = False
        on_start = activation.kind.on_start
        if on_start is None:
            activation.state = ActivationState.ACTIVE
            return
        db = activation.db
        db.begin_turn()
        token = current_turn.set(Turn(activation, chain, (*path, activation.label), deadline))
        failure: BaseException | None = None
        try:
            await on_start(activation.instance)
            db.commit()
        except BaseException as exc:
            abort(activation, exc)
            failure = exc
        finally:
            end_turn(sup, activation, token)
        if failure is None:
            activation.state = ActivationState.ACTIVE
            return
        activation.failure = public_error(failure, activation)
        catalog.close_activation(sup, activation, PassivationReason.START_FAILED, ActivationState.FAILED)
        raise_public(failure, activation)
    elif state is ActivationState.FAILED:
        failure = activation.failure
        if isinstance(failure, ActorError):
            raise ActorError(failure.remote_type, f"on_start failed: {failure.message}", address=failure.address)
        raise Unavailable(f"{activation.label} failed to start: {failure}")
    elif state is ActivationState.CLOSED:
        raise Unavailable(f"{activation.label} was closed while the call waited; retry")
