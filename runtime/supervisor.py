"""The supervisor: hosts actor kinds, takes calls, and owns what runs them.

A ``Supervisor`` is the one owner of a worker's actors: their activation table, the
calls in flight, the services (alarms, events, steps, lifecycle, sharding...) and the
nursery its background tasks (the idle sweep, the alarm scheduler) run in, which
``async with`` bounds. It tracks every call that entered from outside, so that closing
can drain them (up to ``shutdown_grace``), then cancel what is left and close every
database. Several supervisors may live in one process.

It is the thin face over parts that each own their state and are wired through their
constructors::

    core.table          the activation table: activating, eviction, passivation
    core.turns          the call path: a call runs as one turn, in the caller's task
    core.calls          the call record, and the calls in flight (drained at close)
    core.hooks          where the services plug into the core
    placement.locator   where an address runs: asked once by every entry point below
    placement.forwarding  calls relayed to the owner of their address
    services.*          alarms, subscriptions, events, steps, lifecycle, sharding, promotion,
                        WebSockets
    config              its settings (``SupervisorConfig``) and figures

Invariants kept by them: one activation per address (the table, and the exclusive lock
on the database file behind it); nothing leaves a turn before its writes are committed;
a turn that raises rolls back to its last output point and the actor keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from dotdo.storage.directory import ActorDirectory
from dotdo.storage.errors import DotdoError

from dotdo.runtime.config import SupervisorConfig, SupervisorStats
from dotdo.runtime.core import values
from dotdo.runtime.core.activation import Activation, ActivationState, ActivationStats, AfterTurn, PassivationReason
from dotdo.runtime.core.calls import CallsInFlight, Convert
from dotdo.runtime.core.context import current_supervisor
from dotdo.runtime.core.cpu import CpuWatch
from dotdo.runtime.core.errors import CallTimeout, Moved, SupervisorClosed, Unavailable
from dotdo.runtime.core.hooks import Hooks
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.kinds import KindSpec, MethodSpec, Registry, method_error
from dotdo.runtime.core.table import ActivationTable
from dotdo.runtime.core.turns import Turns
from dotdo.runtime.placement.forwarding import HttpReply, Here, Relay
from dotdo.runtime.placement.locator import MOVING, Locator, Owner, WorkerLocator
from dotdo.runtime.services.alarms import AlarmService
from dotdo.runtime.services.events import EventService
from dotdo.runtime.services.lifecycle import LifecycleService
from dotdo.runtime.services.promotion import PromotionService
from dotdo.runtime.services.sharding import ShardService
from dotdo.runtime.services.steps import StepService
from dotdo.runtime.services.subscriptions import SubscriptionService
from dotdo.runtime.services.websocket_relay import METHODS as WS_METHODS
from dotdo.runtime.services.websockets import WebSockets
from dotdo.runtime.stubs import ActorStub, Namespaces, caller_of
from dotdo.runtime.transport import wire
from dotdo.runtime.transport.peers import Peers

T = TypeVar("T")

__all__ = ["Convert", "Supervisor"]

_NO_ARGS = values.pack([(), {}])

WireFetch = Callable[[ActorId, wire.HttpRequest, float | None], Awaitable[HttpReply]]
NodeCalls = Callable[[str, bytes], Awaitable[bytes]]
NODE_METHODS = "$node."
"""The prefix of the system methods that address a node, not an actor (their target is
ignored): only trusted connections (other workers, other nodes) may call them."""


class Supervisor:
    """Hosts actor kinds; ``async with Supervisor(...) as sup:`` to run one.

    Several supervisors may run in one process (each on its own data directory).

    Args:
        kinds: Actor classes (or their ``KindSpec``).
        data_dir: Where their databases live.
        peers: The other workers of a server (``dotdo serve --workers N``): addresses are
            split between them (a ``WorkerLocator``).
        locator: Where addresses run, when it is neither this process alone nor a
            split between workers (the default: everything here).
        settings: ``SupervisorConfig`` fields.
    """

    def __init__(
        self,
        kinds: Iterable[type | KindSpec],
        data_dir: Path | str,
        *,
        peers: Peers | None = None,
        locator: Locator | None = None,
        **settings: Any,
    ) -> None:
        if peers is not None and locator is not None:
            raise DotdoError("give a Supervisor peers or a locator, not both")
        self.registry = Registry(kinds)
        config = SupervisorConfig(data_dir=Path(data_dir), **settings)
        if config.storage.clock is time.time and config.clock is not time.time:
            # One clock for alarms and history (tests drive both with a MockClock).
            config = dataclasses.replace(config, storage=dataclasses.replace(config.storage, clock=config.clock))
        self.config = config
        self.env: Mapping[str, str] = MappingProxyType(dict(self.config.env))
        self.locator = locator if locator is not None else Locator() if peers is None else WorkerLocator(peers)
        self.calls = CallsInFlight()
        self.hooks = Hooks()
        self.table = ActivationTable(
            self.registry,
            data_dir=config.data_dir,
            storage=config.storage,
            max_active=config.max_active,
            idle_timeout=config.idle_timeout,
            env=self.env,
            owner=self,
            calls=self.calls,
            hooks=self.hooks,
        )
        self.turns = Turns(self.table, self.calls, self.hooks, call_timeout=config.call_timeout, max_mailbox=config.max_mailbox)
        self.relay = Relay(self.locator, Here(self), self.calls, config.call_timeout, self.turns.current)
        self.wire_fetch: WireFetch | None = None  # runs a fetch frame here (set by the server)
        # Runs a cluster's node-to-node operations ("$node." system methods; set by the node).
        self.node_calls: NodeCalls | None = None
        self.cpu = CpuWatch(config.cpu_limit)
        self.S = Namespaces(self)
        # The services, in the order their hooks run: sharding decides whether an actor
        # routes to shards before subscriptions declare its handlers.
        self.alarms = AlarmService(self)
        self.lifecycle = LifecycleService(self)
        self.sharding = ShardService(self)
        self.promotion = PromotionService(self)
        self.subscriptions = SubscriptionService(self)
        self.events = EventService(self)
        self.steps = StepService(self)
        self.websockets = WebSockets(self, config.max_ws_message, config.clock)
        self._nursery: trio.Nursery | None = None
        self._previous: Supervisor | None = None
        self._copy = functools.partial(values.copy, make_ref=self.ref)

    # -- lifetime --------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        if self._nursery is not None or self.calls.closing:
            raise DotdoError("a Supervisor can be entered once")
        if not self.config.storage.read_only:
            self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.alarms.open()
        try:
            self.subscriptions.open()
            if not self.config.storage.read_only:
                self.table.directory = ActorDirectory.open(self.config.data_dir, self.config.storage.durability)
        except BaseException:
            self.subscriptions.close()
            self.alarms.close()
            raise
        self.cpu.__enter__()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        await self._nursery.start(self.table.sweep_idle)
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
        if self.calls.closing:
            return
        try:
            await self.calls.drain(self.config.shutdown_grace)
        finally:
            # Even when close itself is cancelled: every database is closed.
            self.table.close_all()
            self.cpu.__exit__(None, None, None)
            self.alarms.close()
            self.subscriptions.close()
            if self.table.directory is not None:
                self.table.directory.close()
            await self.locator.aclose()

    @property
    def closing(self) -> bool:
        """Whether ``close`` has begun (no new calls are taken)."""
        return self.calls.closing

    # -- calls: each entry point asks the locator once --------------------------------

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
            CallTimeout, DeadlockError, Overloaded, Unavailable: See ``runtime.core.errors``.
        """
        spec = self.registry.method(target.namespace, method)
        bound_args, bound_kwargs = spec.bind(tuple(args), dict(kwargs or {}))
        timeout = timeout or spec.timeout
        owner = self.locator.locate(target)
        if owner is None:
            try:
                return await self.turns.route(target, spec.function, bound_args, bound_kwargs, self._copy, timeout)
            except Moved:
                owner = MOVING
        payload = values.pack([list(args), dict(kwargs or {})])
        return await self._relayed(owner, target, [(method, payload)], timeout)

    async def call_packed(self, target: ActorId, method: str, payload: bytes, timeout: float | None = None) -> Any:
        """``call`` with arguments encoded by ``values.pack([args, kwargs])`` (stubs)."""
        spec = self.registry.method(target.namespace, method)
        timeout = timeout or spec.timeout
        owner = self.locator.locate(target)
        if owner is None:
            try:
                return await self._route_packed(target, spec, payload, timeout)
            except Moved:
                owner = MOVING
        return await self._relayed(owner, target, [(method, payload)], timeout)

    def _route_packed(self, target: ActorId, spec: MethodSpec, payload: bytes, timeout: float | None) -> Awaitable[Any]:
        """The turn of a packed call here (a plain function: no frame of its own)."""
        args, kwargs = self.unpack_args(payload)
        bound_args, bound_kwargs = spec.bind(args, kwargs)
        return self.turns.route(target, spec.function, bound_args, bound_kwargs, self._copy, timeout)

    async def call_pipeline(self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None = None) -> Any:
        """Evaluate a pipelined chain of calls: each step runs on the actor the previous
        step returned (a reference), the last step's result is returned."""
        return await self.continue_pipeline(self.ref(target), steps, 0, timeout)

    async def continue_pipeline(self, result: Any, steps: list[tuple[str, bytes]], start: int, timeout: float | None) -> Any:
        """Run ``steps[start:]``, the first on the actor ``result`` refers to. A reference
        bound to another caller (a connection to another process) takes the rest of
        the chain in one message, as does one whose actor runs elsewhere."""
        for index in range(start, len(steps)):
            method, payload = steps[index]
            if not isinstance(result, ActorStub):
                raise DotdoError(
                    f"pipeline step {index} ({steps[index - 1][0]}) returned a "
                    f"{type(result).__name__}, not an actor reference: cannot call .{method}() on it"
                )
            caller = caller_of(result)
            if caller is not self:
                return await caller.call_pipeline(result.id, steps[index:], timeout)
            target = result.id
            owner = self.locator.locate(target)
            if owner is None:
                spec = self.registry.method(target.namespace, method)
                try:
                    result = await self._route_packed(target, spec, payload, timeout or spec.timeout)
                    continue
                except Moved:
                    owner = MOVING
            # The rest of the chain goes to the owner in one message.
            return await self._relayed(owner, target, steps[index:], timeout)
        return result

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
        if self.calls.closing:
            raise SupervisorClosed("the supervisor is shutting down")
        method, payload = steps[0]
        system = method[:1] == "$" and trusted and len(steps) == 1
        if system and method.startswith(NODE_METHODS):
            return await self._node_call(method, payload, timeout, scope)
        if system and method.startswith(WS_METHODS):
            with scope if scope is not None else trio.CancelScope():
                return await self.websocket_call(target, method, payload, timeout=timeout)
            raise CallTimeout(f"{method} on {target} was cancelled")
        if system:
            self.registry.kind(target.namespace)
            seconds = timeout
        else:
            spec = self.registry.method(target.namespace, method)
            seconds = timeout or spec.timeout
        owner = self.locator.locate(target)
        if owner is None:
            try:
                chain = chain or self.calls.new_chain()
                if system:
                    call = self.turns.call(self.events.run_system, (method, payload), {}, None, seconds, chain, path)
                    return await self.turns.entry(target, call, scope)  # type: ignore[no-any-return]
                args, kwargs = self.unpack_args(payload)
                bound_args, bound_kwargs = spec.bind(args, kwargs)
                last = len(steps) == 1
                convert = values.pack if last else self._copy
                call = self.turns.call(spec.function, bound_args, bound_kwargs, convert, seconds, chain, path)
                result = await self.turns.entry(target, call, scope)
            except Moved:
                owner = MOVING
            else:
                if last:
                    return result  # type: ignore[no-any-return]
                return values.pack(await self.continue_pipeline(result, steps, 1, timeout))
        # A client reached the wrong worker, or the address moved: pass it on, chain and all.
        return await self.relay.call(owner, target, steps, seconds, chain, path)

    async def _node_call(self, method: str, payload: bytes, timeout: float | None, scope: trio.CancelScope | None) -> bytes:
        handler = self.node_calls
        if handler is None:
            raise Unavailable(f"{method} is a cluster node's operation, and this process is not a cluster node")
        with scope if scope is not None else trio.CancelScope() as cancel:
            cancel.deadline = trio.current_time() + (timeout or self.config.call_timeout)
            return await handler(method, payload)
        raise CallTimeout(f"{method} did not finish in time")

    async def system_call(self, target: ActorId, method: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """Run one of the runtime's own operations on ``target`` (an event delivery, a
        subscription, a lifecycle operation: ``runtime.services.events``) as a turn, on
        whichever process owns it; its result packed."""
        owner = self.locator.locate(target)
        if owner is None:
            self.registry.kind(target.namespace)
            try:
                return await self.turns.route(target, self.events.run_system, (method, payload), {}, None, timeout)  # type: ignore[no-any-return]
            except Moved:
                owner = MOVING
        return await self.relay.call(owner, target, [(method, payload)], timeout)

    async def websocket_call(self, target: ActorId, method: str, payload: bytes, *, timeout: float | None = None) -> bytes:
        """One of the WebSocket relay's calls (``runtime.services.websocket_relay``),
        run by the hub of whichever process owns ``target`` (not as a turn: the hub
        runs the actor's turns itself); its result packed."""
        owner = self.locator.locate(target)
        if owner is None:
            self.registry.kind(target.namespace)
            return await self.websockets.relay.serve(method, target, payload)
        return await self.relay.call(owner, target, [(method, payload)], timeout)

    async def fetch(self, target: ActorId, request: Any, *, timeout: float | None = None, located: bool = False) -> Any:
        """Hand an HTTP request to the actor's ``fetch`` here and return its response.
        The HTTP side asks ``locate`` first (and says so with ``located``): an actor that
        runs elsewhere gets the request through ``relay.fetch``, as it is.

        Raises:
            MethodNotAllowed: The kind has no ``fetch``.
            Unavailable: ``target`` runs elsewhere (``Moved``: it was placed elsewhere
                while the request waited).
        """
        kind = self.registry.kind(target.namespace)
        if kind.fetch is None:
            raise method_error(kind, "fetch")
        if not located:
            owner = self.locator.locate(target)
            if owner is not None:
                raise Unavailable(f"{target} is served by {owner.label}, not this process")
        return await self.turns.route(target, kind.fetch, (request,), {}, None, timeout)

    async def run_turn(
        self, target: ActorId, fn: Callable[[Any], Awaitable[T]], *, timeout: float | None = None
    ) -> T:
        """Run ``fn(instance)`` as a turn of its own on ``target`` (a new call chain), for
        the runtime's own work on an actor (alarms, administration), which runs only
        where the actor does.

        Raises:
            Unavailable: ``target`` runs elsewhere.
        """
        if self.calls.closing:
            raise SupervisorClosed("the supervisor is shutting down")
        owner = self.locator.locate(target)
        if owner is not None:
            raise Unavailable(f"{target} is served by {owner.label}, not this process")
        return await self.turns.entry(target, self.turns.call(fn, (), {}, None, timeout, self.calls.new_chain()))  # type: ignore[no-any-return]

    async def _relayed(self, owner: Owner, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None) -> Any:
        """A call relayed to ``owner``, its result decoded (references bound here). The
        link commits the calling turn first and joins its chain."""
        return values.unpack(await self.relay.call(owner, target, steps, timeout), self.ref)

    def locate(self, target: ActorId) -> Owner | None:
        """Where ``target`` runs: None here, else the owner to relay to (``relay``)."""
        return self.locator.locate(target)

    def check_namespace(self, namespace: str) -> KindSpec:
        """Resolve a namespace for a stub (``ActorNotFound`` lists the known ones)."""
        return self.registry.kind(namespace)

    def check_method(self, namespace: str, method: str) -> MethodSpec:
        """Resolve a method for a stub, so a wrong name fails where it is written."""
        return self.registry.method(namespace, method)

    def unpack_args(self, payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Call arguments encoded by ``values.pack([args, kwargs])``, references bound
        here.

        Raises:
            InvalidValue: The payload is not ``[args, kwargs]`` with text keyword names.
        """
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

    def copy(self, value: Any) -> Any:
        """``value`` as a call to another actor here receives it (a deep copy,
        references bound here)."""
        return self._copy(value)

    def ref(self, actor_id: ActorId) -> ActorStub:
        """A stub of ``actor_id`` through this supervisor."""
        return ActorStub(self, actor_id)

    # -- activations -----------------------------------------------------------------

    def passivate(self, target: ActorId) -> bool:
        """Passivate one actor now if it is active and idle; returns whether it was."""
        activation = self.table.get(target)
        if activation is None:
            return False
        return self.table.passivate(activation, PassivationReason.REQUESTED)

    def release(self, activation: Activation) -> None:
        """Close an activation, now if it is idle, else once its current turn ends (a
        lifecycle operation needs its file); calls waiting for it are told to retry."""
        if activation.gate.idle:
            self.table.close(activation, PassivationReason.REQUESTED, ActivationState.CLOSED)
        else:
            activation.after = AfterTurn.RELEASE

    def moved(self, target: ActorId) -> None:
        """``target`` is no longer placed here (the locator moved it): its activation is
        closed now if idle, else once its turn ends; calls waiting for it go to its new
        owner."""
        activation = self.table.get(target)
        if activation is None:
            return
        if activation.gate.idle:
            self.table.close(activation, PassivationReason.MOVED, ActivationState.MOVED)
        else:
            activation.after = AfterTurn.MOVED

    def activation_of(self, target: ActorId) -> Activation | None:
        """The activation of ``target``, if it has one now."""
        return self.table.get(target)

    def is_active(self, target: ActorId) -> bool:
        """Whether ``target`` has an activation now."""
        return target in self.table

    # -- introspection ---------------------------------------------------------------

    def activations(self) -> list[ActivationStats]:
        """A snapshot of every active actor, least recently used first."""
        return [a.stats() for a in self.table]

    def statistics(self) -> SupervisorStats:
        """Counters for metrics."""
        acts = list(self.table)
        return SupervisorStats(
            active=len(acts),
            busy=sum(1 for a in acts if a.gate.owner is not None),
            waiting_calls=sum(a.gate.waiting for a in acts),
            calls_in_flight=len(self.calls),
            activations=self.table.activations,
            passivations=self.table.passivations,
        )

    def __repr__(self) -> str:
        return f"<Supervisor {self.config.data_dir} kinds={list(self.registry.namespaces)} active={len(self.table)}>"
