"""The supervisor: hosts actor kinds, takes calls, and owns what runs them.

A ``Supervisor`` is the one owner of a worker's actors: their activation table, the
calls in flight, the services (alarms, events, steps, lifecycle, sharding...) and the
nursery its background tasks (the idle sweep, the alarm scheduler) run in, which
``async with`` bounds. It tracks every call that entered from outside, so that closing
can drain them (up to ``shutdown_grace``), then cancel what is left and close every
database. Several supervisors may live in one process.

Its parts live in modules of their own, as functions of the supervisor that read its
state (so that the split costs a call no extra layer)::

    dotdo.runtime.core.turns       the call path: a call runs as one turn, in the caller's task
    dotdo.runtime.core.catalog     the activation table: activating, eviction, passivation
    dotdo.runtime.placement.forwarding  calls that cross a process (other workers, the transport)
    dotdo.runtime.config      its settings (``SupervisorConfig``) and figures

Invariants kept by them: one activation per address (the table, and the exclusive lock
on the database file behind it); nothing leaves a turn before its writes are committed;
a turn that raises rolls back to its last output point and the actor keeps serving.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import trio

from dotdo.storage.errors import DotdoError

from dotdo.runtime.core import catalog, turns, values
from dotdo.runtime.placement import forwarding
from dotdo.runtime.core.activation import Activation, ActivationState, ActivationStats, PassivationReason
from dotdo.runtime.services.alarms import AlarmService
from dotdo.runtime.config import SupervisorConfig, SupervisorStats
from dotdo.runtime.core.context import current_supervisor
from dotdo.runtime.core.errors import SupervisorClosed
from dotdo.runtime.services.events import EventService
from dotdo.runtime.core.gate import WaitGraph
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.core.kinds import KindSpec, MethodSpec, Registry, method_error
from dotdo.runtime.services.lifecycle import LifecycleService
from dotdo.runtime.transport.peers import Peers
from dotdo.runtime.services.promotion import PromotionService
from dotdo.runtime.services.sharding import ShardService
from dotdo.runtime.services.steps import StepService
from dotdo.runtime.stubs import ActorStub, Namespaces
from dotdo.runtime.services.subscriptions import SubscriptionService

T = TypeVar("T")

Convert = Callable[[Any], Any] | None
"""What a turn does to its result before it ends (``values.copy`` for an in-process
caller, ``values.pack`` for the transport; None: nothing)."""

_NO_ARGS = values.pack([(), {}])


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
        # The activation table, least recently used first (dotdo.runtime.core.catalog).
        self._active: OrderedDict[tuple[str, str], Activation] = OrderedDict()
        self._graph = WaitGraph()
        # The calls that entered from outside (dotdo.runtime.core.turns.entry), for close to drain.
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
        await self._nursery.start(catalog.sweep_idle, self)
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
                catalog.passivate(self, activation, PassivationReason.SHUTDOWN)
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
            CallTimeout, DeadlockError, Overloaded, Unavailable: See ``dotdo.runtime.core.errors``.
        """
        spec = self.registry.method(target.namespace, method)
        bound_args, bound_kwargs = spec.bind(tuple(args), dict(kwargs or {}))
        owner = self._owner(target)
        if owner is not None:
            payload = values.pack([list(args), dict(kwargs or {})])
            return await forwarding.forward(self, owner, target, [(method, payload)], timeout or spec.timeout)
        return await turns.route(self, target, spec.function, bound_args, bound_kwargs, self._copy, timeout or spec.timeout)

    async def call_packed(self, target: ActorId, method: str, payload: bytes, timeout: float | None = None) -> Any:
        """``call`` with arguments encoded by ``values.pack([args, kwargs])`` (stubs)."""
        spec = self.registry.method(target.namespace, method)
        owner = self._owner(target)
        if owner is not None:
            return await forwarding.forward(self, owner, target, [(method, payload)], timeout or spec.timeout)
        args, kwargs = self._unpack_args(payload)
        bound_args, bound_kwargs = spec.bind(args, kwargs)
        return await turns.route(self, target, spec.function, bound_args, bound_kwargs, self._copy, timeout or spec.timeout)

    async def call_pipeline(self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None = None) -> Any:
        """Evaluate a pipelined chain of calls: each step runs on the actor the previous
        step returned (a reference), the last step's result is returned."""
        owner = self._owner(target)
        if owner is not None:
            return await forwarding.forward(self, owner, target, steps, timeout)
        method, payload = steps[0]
        result = await self.call_packed(target, method, payload, timeout)
        return await forwarding.continue_pipeline(self, result, steps, 1, timeout)

    # A call that arrived over the transport (beside what else crosses a process).
    call_from_peer = forwarding.call_from_peer

    async def fetch(self, target: ActorId, request: Any, *, timeout: float | None = None) -> Any:
        """Hand an HTTP request to the actor's ``fetch`` and return its response.

        Raises:
            MethodNotAllowed: The kind has no ``fetch``.
        """
        kind = self.registry.kind(target.namespace)
        if kind.fetch is None:
            raise method_error(kind, "fetch")
        forwarding.check_owned(self, target)
        return await turns.route(self, target, kind.fetch, (request,), {}, None, timeout)

    async def run_turn(
        self, target: ActorId, fn: Callable[[Any], Awaitable[T]], *, timeout: float | None = None
    ) -> T:
        """Run ``fn(instance)`` as a turn of its own on ``target`` (a new call chain), for
        the runtime's own work on an actor (alarms, administration)."""
        if self._closing:
            raise SupervisorClosed("the supervisor is shutting down")
        forwarding.check_owned(self, target)
        return await turns.entry(self, target, self._new_chain(), (), timeout, fn, (), {}, None)

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
        subscription: ``dotdo.runtime.services.events``) as a turn, on whichever worker owns it."""
        owner = self._owner(target)
        if owner is not None:
            return await forwarding.forward(self, owner, target, [(method, payload)], timeout, raw=True)  # type: ignore[no-any-return]
        self.registry.kind(target.namespace)
        return await turns.route(self, target, self.events.run_system, (method, payload), {}, None, timeout)  # type: ignore[no-any-return]

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

    fetch_remote = forwarding.fetch_remote

    # -- activations -----------------------------------------------------------------

    def passivate(self, target: ActorId) -> bool:
        """Passivate one actor now if it is active and idle; returns whether it was."""
        activation = self._active.get((target.namespace, target.hex))
        if activation is None:
            return False
        return catalog.passivate(self, activation, PassivationReason.REQUESTED)

    def release(self, activation: Activation) -> None:
        """Close an activation at the end of its turn (a lifecycle operation needs its
        file); calls waiting for it are told to retry."""
        catalog.close_activation(self, activation, PassivationReason.REQUESTED, ActivationState.CLOSED)

    def activation_of(self, target: ActorId) -> Activation | None:
        """The activation of ``target``, if it has one now."""
        return self._active.get((target.namespace, target.hex))

    def is_active(self, target: ActorId) -> bool:
        """Whether ``target`` has an activation now."""
        return (target.namespace, target.hex) in self._active

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

