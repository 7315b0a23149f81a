"""The supervisor: routes calls to activations, runs turns, passivates idle actors.

Turns run in the caller's task: a call finds (or builds) the activation, waits at its
turn gate, runs the handler between ``begin_turn`` and ``commit``/``rollback``, and
leaves the gate. No task per actor and no queue hop, so an in-process call costs a few
microseconds. The supervisor owns its background tasks (the idle sweep, later alarms)
in a nursery that ``async with`` bounds, and tracks every call that entered from
outside so that closing can drain them, then cancel what is left.

Invariants kept here: one activation per address (the table, and the exclusive lock on
the database file behind it); nothing leaves a turn before its writes are committed
(``commit`` before a reply, and before any call the turn makes); a turn that raises
rolls back to its last output point and the actor keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import resource
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import trio

from storage.database import ActorDatabase
from storage.errors import DotdoError, StorageError
from storage.options import StorageOptions
from storage.promotion import pending as pending_promotion

from runtime import values, wire
from runtime.alarms import AlarmService
from runtime.events import EventService
from runtime.lifecycle import LifecycleService
from runtime.promotion import PromotionService
from runtime.sharding import ShardService, router_of
from runtime.steps import StepService
from runtime.subscriptions import SubscriptionService
from runtime.activation import Activation, ActivationState, ActivationStats, PassivationReason
from runtime.context import ActorContext, Turn, current_supervisor, current_turn, turn_of
from runtime.errors import ActorError, CallTimeout, SupervisorClosed, Unavailable
from runtime.gate import WaitGraph
from runtime.ids import ActorId
from runtime.kinds import KindSpec, MethodSpec, Registry, method_error
from runtime.peers import Peers
from runtime.stubs import ActorStub, Namespaces

log = logging.getLogger("dotdo.runtime")

T = TypeVar("T")

Convert = Callable[[Any], Any] | None
"""What a turn does to its result before it ends (``values.copy`` for an in-process
caller, ``values.pack`` for the transport; None: nothing)."""

_NO_ARGS = values.pack([(), {}])

FORWARD_MARGIN = 1.0
"""Seconds a call forwarded to another worker is given past its deadline to report
back (its own turn ends at the deadline) before this side gives up on it."""


def default_max_active() -> int:
    """The active-actor cap that fits the open-file limit (3 descriptors per actor, with
    room left for sockets)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(16, (soft - 512) // 3)


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
    """

    data_dir: Path
    storage: StorageOptions = field(default_factory=StorageOptions)
    idle_timeout: float = 120.0
    max_active: int = field(default_factory=default_max_active)
    call_timeout: float = 30.0
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


@dataclass(frozen=True, slots=True)
class SupervisorStats:
    """A snapshot of the supervisor."""

    active: int
    busy: int
    waiting_calls: int
    calls_in_flight: int
    activations: int
    passivations: int


class Supervisor:
    """Hosts actor kinds; ``async with Supervisor(...) as sup:`` to run one.

    Several supervisors may run in one process (each on its own data directory).
    """

    def __init__(
        self, kinds: Iterable[type | KindSpec], data_dir: Path | str, *, peers: Peers | None = None, **settings: Any
    ) -> None:
        self.registry = Registry(kinds)
        self.peers = peers
        config = SupervisorConfig(data_dir=Path(data_dir), **settings)
        if config.storage.clock is time.time and config.clock is not time.time:
            # One clock for alarms and history (tests drive both with a MockClock).
            config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, clock=config.clock))
        self.config = config
        self.env: Mapping[str, str] = MappingProxyType(dict(self.config.env))
        self.S = Namespaces(self)
        self.alarms = AlarmService(self)
        self.subscriptions = SubscriptionService(self)
        self.events = EventService(self)
        self.steps = StepService(self)
        self.lifecycle = LifecycleService(self)
        self.sharding = ShardService(self)
        self.promotion = PromotionService(self)
        self._active: OrderedDict[tuple[str, str], Activation] = OrderedDict()
        self._graph = WaitGraph()
        self._entries: set[trio.CancelScope] = set()
        self._drained = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._previous: Supervisor | None = None
        self._activations = 0
        self._passivations = 0
        # Call chain ids: a random prefix per supervisor and a sequence number, cheaper
        # than fresh random bytes per call and as unique.
        self._chain_prefix = secrets.token_hex(8) + "-"
        self._chain_seq = itertools.count(1)
        self._copy = functools.partial(values.copy, make_ref=self.ref)

    # -- lifetime --------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        if self._nursery is not None or self._closing:
            raise DotdoError("a Supervisor can be entered once")
        if not self.config.storage.read_only:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.alarms.open()
        try:
            self.subscriptions.open()
        except BaseException:
            self.alarms.close()
            raise
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        await self._nursery.start(self._sweep_idle)
        await self._nursery.start(self.alarms.run)
        self._previous = current_supervisor.get(None)
        current_supervisor.set(self)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            await self.close()
        finally:
            if current_supervisor.get(None) is self:
                if self._previous is None:
                    current_supervisor.set(None)  # type: ignore[arg-type]
                else:
                    current_supervisor.set(self._previous)
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            suppressed = await self._nursery_cm.__aexit__(*exc_info)
        return suppressed

    @property
    def nursery(self) -> trio.Nursery:
        """The nursery owning this supervisor's background tasks."""
        if self._nursery is None:
            raise SupervisorClosed("the supervisor is not running (use `async with`)")
        return self._nursery

    async def close(self) -> None:
        """Stop taking calls, let running ones finish (up to the grace period), cancel
        the rest, and close every database. Idempotent."""
        if self._closing:
            return
        self._closing = True
        try:
            if self._entries:
                with trio.move_on_after(self.config.shutdown_grace):
                    await self._drained.wait()
        finally:
            # Even when close itself is cancelled: cancel what still runs, give it a
            # moment to roll back, and close every database.
            for scope in list(self._entries):
                scope.cancel()
            if self._entries:
                with trio.CancelScope(shield=True) as shielded:
                    shielded.deadline = trio.current_time() + 5
                    await self._drained.wait()
            for activation in list(self._active.values()):
                self._passivate(activation, PassivationReason.SHUTDOWN)
            self.alarms.close()
            self.subscriptions.close()
            if self.peers is not None:
                await self.peers.aclose()

    @property
    def closing(self) -> bool:
        """Whether ``close`` has begun (no new calls are taken)."""
        return self._closing

    # -- calls -----------------------------------------------------------------------

    async def call(
        self,
        target: ActorId,
        method: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call a public method of an actor and return its (copied) result.

        From inside a turn the call joins that turn's chain and deadline, and the
        turn's writes are committed first (the output gate).

        Raises:
            ActorNotFound, MethodNotAllowed, InvalidArguments: Refused before running.
            ActorError: The method raised; its turn was rolled back.
            CallTimeout, DeadlockError, Overloaded, Unavailable: See ``runtime.errors``.
        """
        spec = self.registry.method(target.namespace, method)
        bound_args, bound_kwargs = spec.bind(tuple(args), dict(kwargs or {}))
        owner = self._owner(target)
        if owner is not None:
            payload = values.pack([list(args), dict(kwargs or {})])
            return await self._forward(owner, target, [(method, payload)], timeout or spec.timeout)
        return await self._route(target, spec.function, bound_args, bound_kwargs, self._copy, timeout or spec.timeout)

    async def call_packed(self, target: ActorId, method: str, payload: bytes, timeout: float | None = None) -> Any:
        """``call`` with arguments encoded by ``values.pack([args, kwargs])`` (stubs)."""
        spec = self.registry.method(target.namespace, method)
        owner = self._owner(target)
        if owner is not None:
            return await self._forward(owner, target, [(method, payload)], timeout or spec.timeout)
        args, kwargs = self._unpack_args(payload)
        bound_args, bound_kwargs = spec.bind(args, kwargs)
        return await self._route(target, spec.function, bound_args, bound_kwargs, self._copy, timeout or spec.timeout)

    async def call_pipeline(self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None = None) -> Any:
        """Evaluate a pipelined chain of calls: each step runs on the actor the previous
        step returned (a reference), the last step's result is returned."""
        owner = self._owner(target)
        if owner is not None:
            return await self._forward(owner, target, steps, timeout)
        method, payload = steps[0]
        result = await self.call_packed(target, method, payload, timeout)
        return await self._continue_pipeline(result, steps, 1, timeout)

    async def call_from_peer(
        self,
        target: ActorId,
        steps: list[tuple[str, bytes]],
        *,
        timeout: float | None,
        chain: str | None = None,
        path: tuple[str, ...] = (),
        scope: trio.CancelScope | None = None,
        trusted: bool = False,
    ) -> bytes:
        """A call that arrived over the transport, its result packed for the reply:
        ``steps`` as in ``call_pipeline``, the first one joining the caller's ``chain``
        (so that a call coming back along it is admitted, not deadlocked) under the
        caller's remaining ``timeout``. Cancelling ``scope`` cancels the call.
        ``trusted`` connections (other workers) may also make system calls."""
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        method, payload = steps[0]
        if method[:1] == "$" and trusted and len(steps) == 1:
            self.registry.kind(target.namespace)
            owner = self._owner(target)
            if owner is not None:
                return await self._forward(owner, target, steps, timeout, chain, path, raw=True)  # type: ignore[no-any-return]
            fn = self.events.run_system
            chain = chain or self._new_chain()
            return await self._entry(target, chain, path, timeout, fn, (method, payload), {}, None, scope)  # type: ignore[no-any-return]
        spec = self.registry.method(target.namespace, method)
        owner = self._owner(target)
        if owner is not None:  # a client reached the wrong worker: pass it on, chain and all
            return await self._forward(owner, target, steps, timeout or spec.timeout, chain, path, raw=True)  # type: ignore[no-any-return]
        args, kwargs = self._unpack_args(payload)
        bound_args, bound_kwargs = spec.bind(args, kwargs)
        last = len(steps) == 1
        result = await self._entry(
            target,
            chain or self._new_chain(),
            path,
            timeout or spec.timeout,
            spec.function,
            bound_args,
            bound_kwargs,
            values.pack if last else self._copy,
            scope,
        )
        if last:
            return result  # type: ignore[no-any-return]
        return values.pack(await self._continue_pipeline(result, steps, 1, timeout))

    async def _continue_pipeline(self, result: Any, steps: list[tuple[str, bytes]], start: int, timeout: float | None) -> Any:
        """Run ``steps[start:]``, the first on the actor ``result`` refers to. A reference
        bound to another caller (a connection to another process) takes the rest of
        the chain in one message."""
        for index in range(start, len(steps)):
            method, payload = steps[index]
            if not isinstance(result, ActorStub):
                raise DotdoError(
                    f"pipeline step {index} ({steps[index - 1][0]}) returned a "
                    f"{type(result).__name__}, not an actor reference: cannot call .{method}() on it"
                )
            caller = result._caller
            if caller is not self:
                return await caller.call_pipeline(result.id, steps[index:], timeout)
            owner = self._owner(result.id)
            if owner is not None:  # the rest of the chain goes to the owner in one message
                return await self._forward(owner, result.id, steps[index:], timeout)
            result = await self.call_packed(result.id, method, payload, timeout)
        return result

    async def fetch(self, target: ActorId, request: Any, *, timeout: float | None = None) -> Any:
        """Hand an HTTP request to the actor's ``fetch`` and return its response.

        Raises:
            MethodNotAllowed: The kind has no ``fetch``.
        """
        kind = self.registry.kind(target.namespace)
        if kind.fetch is None:
            raise method_error(kind, "fetch")
        self._check_owned(target)
        return await self._route(target, kind.fetch, (request,), {}, None, timeout)

    async def run_turn(
        self, target: ActorId, fn: Callable[[Any], Awaitable[T]], *, timeout: float | None = None
    ) -> T:
        """Run ``fn(instance)`` as a turn of its own on ``target`` (a new call chain), for
        the runtime's own work on an actor (alarms, administration)."""
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        self._check_owned(target)
        return await self._entry(target, self._new_chain(), (), timeout, fn, (), {}, None)

    def check_namespace(self, namespace: str) -> KindSpec:
        """Resolve a namespace for a stub (``ActorNotFound`` lists the known ones)."""
        return self.registry.kind(namespace)

    def check_method(self, namespace: str, method: str) -> MethodSpec:
        """Resolve a method for a stub, so a wrong name fails where it is written."""
        return self.registry.method(namespace, method)

    def _unpack_args(self, payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if payload == _NO_ARGS:  # the most common payload, decoded without msgpack
            return (), {}
        decoded = values.unpack(payload, self.ref)
        if (
            not isinstance(decoded, list)
            or len(decoded) != 2
            or not isinstance(decoded[0], list)
            or not isinstance(decoded[1], dict)
            or not all(isinstance(key, str) for key in decoded[1])
        ):
            raise values.InvalidValue("call arguments must be encoded as [args, kwargs], keyword names as text")
        return tuple(decoded[0]), decoded[1]

    def ref(self, actor_id: ActorId) -> ActorStub:
        """A stub of ``actor_id`` through this supervisor."""
        return ActorStub(self, actor_id)

    async def system_call(self, target: ActorId, method: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """Run one of the runtime's own operations on ``target`` (an event delivery, a
        subscription: ``runtime.events``) as a turn, on whichever worker owns it."""
        owner = self._owner(target)
        if owner is not None:
            return await self._forward(owner, target, [(method, payload)], timeout, raw=True)  # type: ignore[no-any-return]
        self.registry.kind(target.namespace)
        return await self._route(target, self.events.run_system, (method, payload), {}, None, timeout)  # type: ignore[no-any-return]

    def _new_chain(self) -> str:
        return self._chain_prefix + str(next(self._chain_seq))

    # -- other workers ---------------------------------------------------------------

    def owner_of(self, target: ActorId) -> int | None:
        """The worker that owns ``target`` when it is another one (None: this one, or
        no other workers)."""
        return self._owner(target)

    def _owner(self, target: ActorId) -> int | None:
        peers = self.peers
        return None if peers is None else peers.owner(target)

    def _check_owned(self, target: ActorId) -> None:
        owner = self._owner(target)
        if owner is not None:
            raise Unavailable(f"{target} is served by worker {owner}, not this one")

    async def _forward(
        self,
        owner: int,
        target: ActorId,
        steps: list[tuple[str, bytes]],
        timeout: float | None,
        chain: str | None = None,
        path: tuple[str, ...] = (),
        *,
        raw: bool = False,
    ) -> Any:
        """Run a call on the worker that owns ``target``: the result, or with ``raw`` the
        result still packed."""
        peers = self.peers
        assert peers is not None
        packed = await self._remote(owner, target, timeout, lambda s: peers.call_raw(owner, target, steps, s, chain, path))
        return packed if raw else values.unpack(packed, self.ref)

    async def fetch_remote(self, owner: int, target: ActorId, request: wire.HttpRequest, timeout: float | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Hand an HTTP request to the worker that owns ``target`` (``owner_of``);
        returns its (status, headers, body)."""
        peers = self.peers
        if peers is None:
            raise Unavailable("this supervisor has no other workers")
        return await self._remote(owner, target, timeout, lambda s: peers.fetch(owner, target, request, s))  # type: ignore[no-any-return]

    async def _remote(self, owner: int, target: ActorId, timeout: float | None, send: Callable[[float], Awaitable[T]]) -> T:
        """``send(seconds)`` to another worker, under this side's deadline too, so that a
        worker that stops answering costs a ``CallTimeout``, not a hang."""
        if self._closing and turn_of(self) is None:
            raise SupervisorClosed("the supervisor is shutting down")
        seconds = self.config.call_timeout if timeout is None else timeout
        remaining = trio.current_effective_deadline() - trio.current_time()
        seconds = max(min(seconds, remaining), 0.001)
        with trio.move_on_after(seconds + FORWARD_MARGIN):
            return await send(seconds)
        raise CallTimeout(f"call to {target} on worker {owner} did not finish within {seconds:g} s")

    def _route(
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
        turn = turn_of(self)
        if turn is not None:
            # The output gate: the calling turn's writes are durable before we leave it.
            turn.activation.db.commit()
            if timeout is None or trio.current_time() + timeout >= turn.deadline:
                return self._run(target, turn.chain, turn.path, turn.deadline, fn, args, kwargs, convert)
            return self._entry(target, turn.chain, turn.path, timeout, fn, args, kwargs, convert)
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        return self._entry(target, self._new_chain(), (), timeout, fn, args, kwargs, convert)

    async def _entry(
        self,
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
        seconds = self.config.call_timeout if timeout is None else timeout
        deadline = trio.current_time() + seconds
        if scope is None:
            scope = trio.CancelScope(deadline=deadline)
        else:
            scope.deadline = deadline
        self._entries.add(scope)
        try:
            with scope:
                return await self._run(target, chain, path, deadline, fn, args, kwargs, convert)
        finally:
            self._entries.discard(scope)
            if self._closing and not self._entries:
                self._drained.set()
        if self._closing:
            raise SupervisorClosed("the call was cancelled because the supervisor is shutting down")
        raise CallTimeout(f"call to {target} did not finish within {seconds:g} s; its turn was rolled back")

    async def _run(
        self,
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
        activation = self._activation(target)
        if activation.router is not None and self.sharding.routes(activation, fn):
            return await self.sharding.call(activation, chain, path, deadline, fn, args, kwargs, convert)
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
            await gate.enter(chain, deadline, self.config.max_mailbox)
        if activation.router is not None and self.sharding.routes(activation, fn):
            gate.exit()  # it was sharded while this call waited
            return await self.sharding.call(activation, chain, path, deadline, fn, args, kwargs, convert)
        try:
            if activation.state is not ActivationState.ACTIVE:
                await self._ready(activation, chain, path, deadline)
            db = activation.db
            db.begin_turn()
            token = current_turn.set(Turn(activation, chain, (*path, activation.label), deadline))
            try:
                result = await fn(activation.instance, *args, **kwargs)
                if convert is not None:
                    result = convert(result)
                db.commit()
            except BaseException as exc:
                self._abort(activation, exc)
                _raise_public(exc, activation)
            finally:
                self._end_turn(activation, token)
            return result
        finally:
            gate.exit()
            activation.turns += 1
            activation.last_used = trio.current_time()

    def _end_turn(self, activation: Activation, token: Any) -> None:
        """Leave a turn (after its commit or rollback); once the outermost turn of the
        actor ends, bring the alarm index in step if the turn changed alarms."""
        current_turn.reset(token)
        db = activation.db
        db.end_turn()
        if activation.wake_dirty and not db.in_turn:
            self.alarms.sync(activation)
        if activation.subscriptions_dirty and not db.in_turn:
            self.subscriptions.sync(activation)
        if activation.reload and not db.in_turn:
            self.lifecycle.reload(activation)

    def _abort(self, activation: Activation, exc: BaseException) -> None:
        """Roll back a failed turn; log what the actor's own code raised."""
        try:
            activation.db.rollback()
        except StorageError:
            log.exception("rollback failed for %s", activation.label)
        if isinstance(exc, Exception) and not isinstance(exc, DotdoError):
            log.warning("%s raised %s: %s", activation.label, type(exc).__name__, exc, exc_info=exc)

    async def _ready(self, activation: Activation, chain: str, path: tuple[str, ...], deadline: float) -> None:
        """Finish starting an activation (run ``on_start``), or report why it cannot serve."""
        state = activation.state
        if state is ActivationState.STARTING:
            if activation.started:  # a reentrant call while on_start runs
                return
            activation.started = True
            if activation.promotion_pending:
                try:
                    await self.promotion.settle(activation)
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
                self._abort(activation, exc)
                failure = exc
            finally:
                self._end_turn(activation, token)
            if failure is None:
                activation.state = ActivationState.ACTIVE
                return
            activation.failure = _public(failure, activation)
            self._close_activation(activation, PassivationReason.START_FAILED, ActivationState.FAILED)
            _raise_public(failure, activation)
        elif state is ActivationState.FAILED:
            failure = activation.failure
            if isinstance(failure, ActorError):
                raise ActorError(failure.remote_type, f"on_start failed: {failure.message}", address=failure.address)
            raise Unavailable(f"{activation.label} failed to start: {failure}")
        elif state is ActivationState.CLOSED:
            raise Unavailable(f"{activation.label} was closed while the call waited; retry")

    # -- activations -----------------------------------------------------------------

    def _activation(self, target: ActorId) -> Activation:
        key = (target.namespace, target.hex)
        active = self._active
        activation = active.get(key)
        if activation is not None:
            active.move_to_end(key)
            return activation
        if self._closing and not self._entries:
            raise SupervisorClosed("the supervisor is shutting down")
        kind = self.registry.kind(target.namespace)
        now = trio.current_time()
        db = ActorDatabase.open(self.config.data_dir, target.address, self.config.storage, name=target.name)
        activation = Activation(target, kind, db, self, self._graph, now)
        try:
            meta = db.meta()
            activation.router = router_of(meta)
            if pending_promotion(meta) is not None:
                activation.promotion_pending = True
                activation.started = False
            activation.instance = kind.create(ActorContext(target, db, self.env, self))
            if kind.subscriptions and activation.router is None and not self.config.storage.read_only:
                self.subscriptions.declare(activation)
        except BaseException as exc:
            db.close()
            _raise_public(exc, activation)
        if activation.started:
            activation.state = ActivationState.ACTIVE
        excess = len(active) + 1 - self.config.max_active
        if excess > 0:
            self._evict(excess)
        active[key] = activation
        self._activations += 1
        return activation

    def _evict(self, count: int) -> None:
        """Passivate up to ``count`` idle actors, least recently used first (busy ones
        are passed over; the walk stops as soon as enough are found)."""
        victims: list[Activation] = []
        for activation in self._active.values():
            if activation.gate.idle and activation.state is not ActivationState.STARTING:
                victims.append(activation)
                if len(victims) >= count:
                    break
        for activation in victims:
            self._passivate(activation, PassivationReason.CAPACITY)

    def _passivate(self, activation: Activation, reason: PassivationReason) -> bool:
        """Close an idle activation. Never in the middle of a turn: a busy one is skipped
        (except at shutdown, after running calls were drained or cancelled)."""
        if not activation.gate.idle and reason is not PassivationReason.SHUTDOWN:
            return False
        self._close_activation(activation, reason, ActivationState.CLOSED)
        return True

    def _close_activation(self, activation: Activation, reason: PassivationReason, state: ActivationState) -> None:
        key = (activation.id.namespace, activation.id.hex)
        if self._active.get(key) is activation:
            del self._active[key]
        activation.state = state
        self._passivations += 1
        try:
            activation.db.close()
        except StorageError:
            log.exception("closing %s (%s) failed", activation.label, reason.value)
        log.debug("passivated %s (%s)", activation.label, reason.value)

    def passivate(self, target: ActorId) -> bool:
        """Passivate one actor now if it is active and idle; returns whether it was."""
        activation = self._active.get((target.namespace, target.hex))
        if activation is None:
            return False
        return self._passivate(activation, PassivationReason.REQUESTED)

    def release(self, activation: Activation) -> None:
        """Close an activation at the end of its turn (a lifecycle operation needs its
        file); calls waiting for it are told to retry."""
        self._close_activation(activation, PassivationReason.REQUESTED, ActivationState.CLOSED)

    def activation_of(self, target: ActorId) -> Activation | None:
        """The activation of ``target``, if it has one now."""
        return self._active.get((target.namespace, target.hex))

    def is_active(self, target: ActorId) -> bool:
        """Whether ``target`` has an activation now."""
        return (target.namespace, target.hex) in self._active

    async def _sweep_idle(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        timeout = self.config.idle_timeout
        interval = min(max(timeout / 4, 0.01), 10.0)
        task_status.started()
        if math.isinf(timeout):
            return
        while True:
            await trio.sleep(interval)
            cutoff = trio.current_time() - timeout
            closed = 0
            for activation in list(self._active.values()):
                if activation.last_used > cutoff:
                    break
                if activation.state is ActivationState.ACTIVE and self._passivate(activation, PassivationReason.IDLE):
                    closed += 1
                    if closed % 100 == 0:
                        await trio.sleep(0)

    # -- introspection ---------------------------------------------------------------

    def activations(self) -> list[ActivationStats]:
        """A snapshot of every active actor, least recently used first."""
        return [a.stats() for a in self._active.values()]

    def statistics(self) -> SupervisorStats:
        """Counters for metrics."""
        acts = self._active.values()
        return SupervisorStats(
            active=len(self._active),
            busy=sum(1 for a in acts if a.gate.owner is not None),
            waiting_calls=sum(a.gate.waiting for a in acts),
            calls_in_flight=len(self._entries),
            activations=self._activations,
            passivations=self._passivations,
        )

    def __repr__(self) -> str:
        return f"<Supervisor {self.config.data_dir} kinds={list(self.registry.namespaces)} active={len(self._active)}>"


def _raise_public(exc: BaseException, activation: Activation) -> NoReturn:
    """Raise what the caller of a failed turn sees (see ``_public``), chained to ``exc``."""
    error = _public(exc, activation)
    if error is exc:
        raise exc
    raise error from exc


def _public(exc: BaseException, activation: Activation) -> BaseException:
    """What the caller sees: dotdo errors and cancellation as they are, anything the
    actor's code raised as an ``ActorError`` naming its type."""
    if isinstance(exc, DotdoError) or not isinstance(exc, Exception):
        return exc
    return ActorError(type(exc).__name__, str(exc), address=(activation.id.namespace, activation.id.hex))
