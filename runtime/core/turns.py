"""The call path on this worker: a call runs as one turn of its actor, in the caller's task.

A call finds (or builds) the activation, waits at its turn gate, runs the handler
between ``begin_turn`` and ``commit``/``rollback``, and leaves the gate. No task per
actor and no queue hop, so an in-process call costs a few microseconds::

    route   the output gate (a calling turn commits first); joins the calling turn's
            chain and deadline, or starts a new chain
    entry   a call from outside: its own deadline and cancel scope, tracked so that
            closing can drain it
    run     the turn itself: activation, gate, ``on_start`` if not run yet (``ready``),
            handler, commit or rollback (``abort``), the end of the turn (``end_turn``)

Invariants kept here: nothing leaves a turn before its writes are committed (``commit``
before a reply, and before any call the turn makes); a turn that raises rolls back to
its last output point and the actor keeps serving.

The core knows no service. What services add happens through ``dotdo.runtime.core.hooks``:
an activation's ``divert`` takes over its calls (a sharded router), its ``before_start``
runs before ``on_start`` (a promotion to settle), and once its outermost turn ends the
``turn_ended`` hooks run if it was marked, and its ``after`` is carried out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn

import trio

from dotdo.storage.errors import DotdoError, StorageError

from dotdo.runtime.core.activation import (
    Activation,
    ActivationState,
    AfterTurn,
    PassivationReason,
    public_error,
    raise_public,
)
from dotdo.runtime.core.calls import Call, CallsInFlight, Convert
from dotdo.runtime.core.context import Turn, current_turn
from dotdo.runtime.core.errors import Aborted, ActorError, CallTimeout, Moved, SupervisorClosed, TurnStopped, Unavailable
from dotdo.runtime.core.hooks import Hooks
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.table import ActivationTable

log = logging.getLogger("dotdo.runtime")


class Turns:
    """Runs calls as turns on the activations of ``table``.

    Args:
        table: The activation table.
        calls: The calls in flight (``entry`` adds to them).
        hooks: Run as turns end.
        call_timeout: The deadline of a call from outside that names none, in seconds.
        max_mailbox: Calls that may wait for one actor's turn.
    """

    def __init__(self, table: ActivationTable, calls: CallsInFlight, hooks: Hooks, *, call_timeout: float, max_mailbox: int) -> None:
        self.table = table
        self.calls = calls
        self.hooks = hooks
        self.call_timeout = call_timeout
        self.max_mailbox = max_mailbox

    def current(self) -> Turn | None:
        """The turn running in this task, if it runs on this table's actors."""
        turn = current_turn.get()
        if turn is not None and turn.activation.supervisor is self.table.owner:
            return turn
        return None

    def route(
        self,
        target: ActorId,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        convert: Convert,
        timeout: float | None,
    ) -> Awaitable[Any]:
        """The call to await: checks and the output gate run now, the turn when awaited.
        (A plain function, not a coroutine: one frame less on every call's path.)"""
        turn = self.current()
        if turn is not None:
            # The output gate: the calling turn's writes are durable before we leave it
            # (and, with an output hook, held where they must be: a cluster's replicas).
            turn.activation.db.commit()
            if timeout is None or trio.current_time() + timeout >= turn.deadline:
                pending = self.run(target, Call(fn, args, kwargs, convert, turn.chain, turn.path, turn.deadline))
            else:
                pending = self.entry(target, Call(fn, args, kwargs, convert, turn.chain, turn.path, trio.current_time() + timeout))
            output = turn.activation.output
            return pending if output is None else after_output(output, pending)
        calls = self.calls
        if calls.closing:
            raise SupervisorClosed("the supervisor is shutting down")
        seconds = self.call_timeout if timeout is None else timeout
        return self.entry(target, Call(fn, args, kwargs, convert, calls.new_chain(), (), trio.current_time() + seconds))

    def call(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        convert: Convert,
        timeout: float | None,
        chain: str,
        path: tuple[str, ...] = (),
    ) -> Call:
        """A call from outside, due ``timeout`` seconds from now (None: the default)."""
        seconds = self.call_timeout if timeout is None else timeout
        return Call(fn, args, kwargs, convert, chain, path, trio.current_time() + seconds)

    async def entry(self, target: ActorId, call: Call, scope: trio.CancelScope | None = None) -> Any:
        """Run a call from outside under its own deadline (in ``scope`` when given: the
        transport's, which a cancel frame cancels), tracked so that closing can drain it."""
        start = trio.current_time()
        if scope is None:
            scope = trio.CancelScope(deadline=call.deadline)
        else:
            scope.deadline = call.deadline
        calls = self.calls
        scopes = calls.scopes
        scopes.add(scope)
        try:
            with scope:
                return await self.run(target, call)
        finally:
            scopes.discard(scope)
            if calls.closing and not scopes:
                calls.drained()
        if calls.closing:
            raise SupervisorClosed("the call was cancelled because the supervisor is shutting down")
        seconds = round(call.deadline - start, 3)
        raise CallTimeout(f"call to {target} did not finish within {seconds:g} s; its turn was rolled back")

    async def run(self, target: ActorId, call: Call) -> Any:
        """Run one turn of ``call`` on the actor ``target``."""
        activation = self.table.activate(target)
        divert = activation.divert
        if divert is not None and divert.takes(activation, call.fn):
            return await divert.call(activation, call)
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
        chain = call.chain
        if not gate.try_enter(chain):
            await gate.enter(chain, call.deadline, self.max_mailbox)
        divert = activation.divert
        if divert is not None and divert.takes(activation, call.fn):
            gate.exit()  # it was diverted while this call waited
            return await divert.call(activation, call)
        try:
            held = None
            if activation.state is not ActivationState.ACTIVE:
                held = await self.ready(activation, call)
            db = activation.db
            db.begin_turn()
            turn = Turn(activation, chain, (*call.path, activation.label), call.deadline)
            turn.held = held  # what on_start sent goes out with this turn's commit
            token = current_turn.set(turn)
            try:
                result = await call.fn(activation.instance, *call.args, **call.kwargs)
                if turn.stopped is not None:  # stopped, and the actor's code caught it
                    raise turn.stopped
                if trio.current_time() >= call.deadline:
                    # It ran to the end without awaiting past its deadline (which only
                    # an await lets the deadline stop): too late to acknowledge.
                    raise CallTimeout(f"{activation.label} did not finish its turn before the call's deadline; it was rolled back")
                convert = call.convert
                if convert is not None:
                    result = convert(result)
                db.commit()
                output = activation.output
                if output is not None:
                    await output()  # the reply leaves once the commit is held where it must be
            except BaseException as exc:
                abort(activation, exc)
                raise_public(exc, activation)
            finally:
                self.end_turn(activation, token)
            if turn.held:
                turn.release()  # WebSocket messages it sent, now that its commit is out
            return result
        finally:
            gate.exit()
            activation.turns += 1
            activation.last_used = trio.current_time()

    def end_turn(self, activation: Activation, token: Any) -> None:
        """Leave a turn (after its commit or rollback); once the outermost turn of the
        actor ends, run the ``turn_ended`` hooks if it was marked, then carry out its
        ``after``."""
        current_turn.reset(token)
        db = activation.db
        db.end_turn()
        if not activation.marked and activation.after is None:
            return  # nothing to do: the common case, decided without asking the database
        if db.in_turn:
            return
        if activation.marked:
            activation.marked = False
            Hooks.run(self.hooks.turn_ended, activation)
        after = activation.after
        if after is not None:
            activation.after = None
            if after is AfterTurn.RELOAD:
                self.table.reload(activation)
            elif after is AfterTurn.RELEASE:
                self.table.close(activation, PassivationReason.REQUESTED, ActivationState.CLOSED)
            else:
                self.table.close(activation, PassivationReason.MOVED, ActivationState.MOVED)

    async def ready(self, activation: Activation, call: Call) -> list[Any] | None:
        """Finish starting an activation (what must run before ``on_start``, then
        ``on_start``), or report why it cannot serve; what ``on_start`` sent on
        WebSockets (it goes out with the commit of the call's turn)."""
        state = activation.state
        if state is ActivationState.STARTING:
            if activation.started:  # a reentrant call while on_start runs
                return None
            activation.started = True
            pending = activation.before_start
            while pending:
                try:
                    await pending[0](activation)
                except BaseException:
                    activation.started = False  # the next call tries again
                    raise
                del pending[0]
            on_start = activation.kind.on_start
            if on_start is None:
                activation.state = ActivationState.ACTIVE
                return None
            db = activation.db
            db.begin_turn()
            turn = Turn(activation, call.chain, (*call.path, activation.label), call.deadline)
            token = current_turn.set(turn)
            failure: BaseException | None = None
            try:
                await on_start(activation.instance)
                if turn.stopped is not None:
                    raise turn.stopped
                db.commit()
            except BaseException as exc:
                abort(activation, exc)
                failure = exc
            finally:
                self.end_turn(activation, token)
            if failure is None:
                activation.state = ActivationState.ACTIVE
                return turn.held
            activation.failure = public_error(failure, activation)
            self.table.close(activation, PassivationReason.START_FAILED, ActivationState.FAILED)
            raise_public(failure, activation)
        elif state is ActivationState.FAILED:
            failure = activation.failure
            if isinstance(failure, ActorError):
                raise ActorError(failure.remote_type, f"on_start failed: {failure.message}", address=failure.address)
            raise Unavailable(f"{activation.label} failed to start: {failure}")
        elif state is ActivationState.MOVED:
            raise Moved(f"{activation.label} was placed elsewhere while the call waited; retry", address=(activation.id.namespace, activation.id.hex))
        elif state is ActivationState.CLOSED:
            raise Unavailable(f"{activation.label} was closed while the call waited; retry")


async def after_output(output: Callable[[], Awaitable[None]], pending: Coroutine[Any, Any, Any]) -> Any:
    """``pending`` (a call out of a turn), once the turn's ``output`` hook let its
    commit out."""
    try:
        await output()
    except BaseException:
        pending.close()  # never started: nothing left the turn
        raise
    return await pending


def abort_turn(instance: Any, reason: str) -> NoReturn:
    """Stop the turn running ``instance`` now (``DO.abort``): it is rolled back, its
    activation ends, and its caller gets ``Aborted(reason)``.

    Raises:
        TurnStopped: Always, into the actor's own code.
        DotdoError: No turn of ``instance`` runs in this task.
    """
    turn = current_turn.get()
    if turn is None or turn.activation.instance is not instance:
        raise DotdoError("abort() stops one of the actor's own turns: call it inside one")
    actor = turn.activation.id
    turn.stopped = TurnStopped(Aborted(reason, address=(actor.namespace, actor.hex)))
    raise turn.stopped


def abort(activation: Activation, exc: BaseException) -> None:
    """Roll back a failed turn; log what the actor's own code raised. A turn that was
    stopped (``TurnStopped``) ends its activation too: the next call gets a fresh
    instance."""
    try:
        activation.db.rollback()
    except StorageError:
        log.exception("rollback failed for %s", activation.label)
    if isinstance(exc, TurnStopped):
        activation.after = AfterTurn.RELEASE
        log.warning("%s: %s", activation.label, exc.error.public)
    if isinstance(exc, Exception) and not isinstance(exc, DotdoError):
        log.warning("%s raised %s: %s", activation.label, type(exc).__name__, exc, exc_info=exc)
