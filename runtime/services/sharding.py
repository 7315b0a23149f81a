"""Sharded actors: ``shard(n, key)`` splits an actor's data over ``n`` shard actors and
makes its address a router; store queries fan out and merge.

**The router.** After ``shard``, the actor's own database keeps its configuration
(``_dotdo_meta`` key ``shards``) and no data. A call to the router's address:

- to a method with a parameter named like the key (``customer`` for ``key="customer"``,
  ``id`` for ``$id``) goes to the one shard that holds that key's rows;
- to any other method goes to every shard in turn, and returns the list of their
  results, in shard order;
- over HTTP (``fetch``) goes to the shard named by the query parameter of the key
  (``?customer=bob``), which is required.

Lifecycle operations, events and alarms addressed to the router run on the router
itself. ``query`` (``LifecycleService.admin(target, "query", ...)``) answers store
queries on any actor; on a router it asks every shard and merges (``dotdo.storage.fanout``).

**Moving data, crash-safe.** Shard copies are written first, each complete and
committed, marked with the router and a generation; then one commit of the router
deletes its rows and records the configuration: that commit is the decision. A crash
before it leaves the actor serving all its data as before (and copies nobody routes to,
overwritten by the next attempt); after it, the router serves from the shards.
Unsharding gathers every shard's rows into the router's transaction and removes the
configuration in the same commit; the old shard files are deleted after it (their ids
are kept in ``shards.retired`` until they are). Resharding is unshard then shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from dotdo.storage import backup
from dotdo.storage import sharding as store
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput
from dotdo.storage.fanout import merge_list, merge_scored
from dotdo.storage.things_model import check_page

from dotdo.runtime.core import values
from dotdo.runtime.core.activation import Activation
from dotdo.runtime.core.calls import Call
from dotdo.runtime.core.ids import ActorId, id_from_name

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

_MISSING = object()
QUERIES = ("list", "count", "find_one", "get", "search", "nearest")


@dataclasses.dataclass(frozen=True, slots=True)
class Router:
    """The configuration of a sharded actor."""

    n: int
    key: str
    generation: int
    ids: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def column(self) -> str:
        return store.column_of(self.key)

    def shard(self, namespace: str, index: int) -> ActorId:
        return ActorId(namespace, self.ids[index], self.names[index])

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "key": self.key, "generation": self.generation, "ids": list(self.ids), "names": list(self.names)}


def router_of(meta: dict[str, Any]) -> Router | None:
    """The router configuration in a database's ``meta()``, or None when it is not
    sharded."""
    raw = meta.get("shards")
    if not isinstance(raw, str):
        return None
    fields = json.loads(raw)
    return Router(fields["n"], fields["key"], fields["generation"], tuple(fields["ids"]), tuple(fields["names"]))


class Traffic:
    """Calls a router is passing to its shards now, and whether it is moving data
    (then new ones wait, and the move waits for those under way)."""

    __slots__ = ("inflight", "drained", "moving")

    def __init__(self) -> None:
        self.inflight = 0
        self.drained: trio.Event | None = None
        self.moving: trio.Event | None = None


class ShardService:
    """Sharding for one supervisor (``Supervisor.sharding``)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._signatures: dict[Callable[..., Any], inspect.Signature] = {}
        self._traffic: dict[tuple[str, str], Traffic] = {}
        self._routed: dict[str, frozenset[Callable[..., Any]]] = {}  # by namespace
        self._routers: dict[Activation, Router] = {}  # the activations that are routers
        supervisor.lifecycle.register("shard", self._shard)
        supervisor.lifecycle.register("query", self._query)
        supervisor.hooks.activated.append(self._activated)
        supervisor.hooks.closed.append(self._closed)

    def _activated(self, activation: Activation) -> None:
        router = router_of(activation.db.meta())
        if router is not None:
            self._set(activation, router)

    def _closed(self, activation: Activation) -> None:
        self._routers.pop(activation, None)

    def _set(self, activation: Activation, router: Router | None) -> None:
        """Make ``activation`` a router of ``router`` (None: an actor of its own again)."""
        if router is None:
            self._routers.pop(activation, None)
            activation.divert = None
        else:
            self._routers[activation] = router
            activation.divert = self

    def router(self, activation: Activation) -> Router | None:
        """The configuration of ``activation`` if it is a router."""
        return self._routers.get(activation)

    # -- routing -----------------------------------------------------------------------

    def takes(self, activation: Activation, fn: Callable[..., Any]) -> bool:
        """Whether a call of ``fn`` on the router ``activation`` goes to its shards (the
        turn core asks: this service is the router's ``divert``)."""
        kind = activation.kind
        routed = self._routed.get(kind.namespace)
        if routed is None:
            functions = {spec.function for spec in kind.methods.values()}
            if kind.fetch is not None:
                functions.add(kind.fetch)
            routed = self._routed[kind.namespace] = frozenset(functions)
        return fn in routed

    async def call(self, activation: Activation, call: Call) -> Any:
        """Run a call made to a router on the shard its key names, or on every shard."""
        traffic = self._traffic_of(activation)
        while traffic.moving is not None:
            await traffic.moving.wait()
        router = self._routers.get(activation)
        if router is None:  # unsharded meanwhile: the actor serves itself
            return await self._sup.turns.run(activation.id, call)
        traffic.inflight += 1
        try:
            return await self._to_shards(activation, router, call)
        finally:
            traffic.inflight -= 1
            if not traffic.inflight and traffic.drained is not None:
                traffic.drained.set()

    def _traffic_of(self, activation: Activation) -> Traffic:
        key = (activation.id.namespace, activation.id.hex)
        traffic = self._traffic.get(key)
        if traffic is None:
            traffic = self._traffic[key] = Traffic()
        return traffic

    @contextlib.asynccontextmanager
    async def _moving(self, activation: Activation) -> AsyncIterator[None]:
        """Hold new routed calls and wait for those under way, while data moves."""
        traffic = self._traffic_of(activation)
        traffic.moving = moving = trio.Event()
        try:
            while traffic.inflight:
                traffic.drained = trio.Event()
                await traffic.drained.wait()
            yield
        finally:
            traffic.moving = traffic.drained = None
            moving.set()

    async def _to_shards(self, activation: Activation, router: Router, call: Call) -> Any:
        namespace = activation.id.namespace
        fn, args, kwargs = call.fn, call.args, call.kwargs
        if fn is activation.kind.fetch:
            value = args[0].query_params.get(router.column)
            if value is None:
                raise InvalidInput(f"{activation.label} is sharded by {router.key!r}: add ?{router.column}=... to the URL")
            shard = router.shard(namespace, store.shard_of_value(value, router.n))
            if self._sup.locate(shard) is not None:
                raise InvalidInput(f"HTTP to a sharded actor reaches shards of this worker only; call {shard} directly")
            return await self._sup.turns.run(shard, call)
        value = self._key_value(fn, args, kwargs, router.column)
        if value is not _MISSING:
            shard = router.shard(namespace, store.shard_of_value(value, router.n))
            return await self._one(shard, call)
        each = call if call.convert is None else call._replace(convert=self._sup.copy)
        results = [await self._one(router.shard(namespace, i), each) for i in range(router.n)]
        return values.pack(results) if call.convert is values.pack else results

    def _key_value(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], column: str) -> Any:
        signature = self._signatures.get(fn)
        if signature is None:
            signature = self._signatures[fn] = inspect.signature(fn)
        if column not in signature.parameters:
            return _MISSING
        return signature.bind_partial(None, *args, **kwargs).arguments.get(column, _MISSING)

    async def _one(self, shard: ActorId, call: Call) -> Any:
        sup = self._sup
        owner = sup.locate(shard)
        if owner is None:
            return await sup.turns.run(shard, call)
        payload = values.pack([list(call.args), call.kwargs])
        timeout = max(call.deadline - trio.current_time(), 0.001)
        packed = await sup.relay.call(owner, shard, [(call.fn.__name__, payload)], timeout, call.chain, call.path)
        return packed if call.convert is values.pack else values.unpack(packed, sup.ref)

    # -- shard, unshard, reshard -------------------------------------------------------

    async def _shard(self, activation: Activation, n: int, key: str = "$id") -> dict[str, Any]:
        n = store.check_count(n)
        key = store.check_key(key)
        async with self._moving(activation):
            return await self._reshard(activation, n, key)

    async def _reshard(self, activation: Activation, n: int, key: str) -> dict[str, Any]:
        db = activation.db
        await self._retire(activation)
        router = self._routers.get(activation)
        moved = 0
        if router is not None:
            if router.n == n and router.key == key:
                return {"sharded": router.as_dict(), "moved": 0}
            moved = await self._unshard(activation, router)
        elif n == 1:
            raise InvalidInput(f"{activation.label} is not sharded: shard() takes n of 2 or more")
        if n == 1:
            return {"sharded": None, "moved": moved}
        store.check_splittable(db, key, n)
        generation = int(db.meta().get("shards.generation") or 0) + 1
        label = activation.id.name or activation.id.hex
        namespace = activation.id.namespace
        names = tuple(f"{label}#shard{generation}.{i}" for i in range(n))
        shards = [id_from_name(namespace, name) for name in names]
        marker = f"{activation.id.hex}:{generation}"
        sup = self._sup
        sizes = []
        for shard in shards:
            await sup.lifecycle.release(shard)
        for index, shard in enumerate(shards):
            sizes.append(
                store.write_shard(
                    db, sup.config.data_dir, shard.address, name=shard.name, options=db.options,
                    key=key, n=n, index=index, marker=marker,
                )
            )
            sup.lifecycle.step(f"shard.copied.{index}")
        router = Router(n, key, generation, tuple(s.hex for s in shards), names)
        store.become_router(db, json.dumps(router.as_dict()), generation)
        db.commit()  # the decision
        self._set(activation, router)
        sup.subscriptions.changed(activation)
        sup.lifecycle.step("shard.decided")
        return {"sharded": router.as_dict(), "moved": moved, "bytes": sizes}

    async def _unshard(self, activation: Activation, router: Router) -> int:
        """Gather every shard's rows into the router, in one commit with dropping the
        configuration; then delete the shards."""
        sup = self._sup
        db = activation.db
        shards = [router.shard(activation.id.namespace, i) for i in range(router.n)]
        for shard in shards:
            await sup.lifecycle.release(shard)
        with contextlib.ExitStack() as stack:
            sources = [
                stack.enter_context(ActorDatabase.open(sup.config.data_dir, s.address, sup.config.storage, name=s.name))
                for s in shards
            ]
            moved = store.gather(db, sources)
        sup.lifecycle.step("unshard.gathered")
        store.set_meta(db, {"shards": None, "shards.retired": json.dumps([[s.hex, s.name] for s in shards])})
        db.commit()  # the decision
        self._set(activation, None)
        sup.lifecycle.step("unshard.decided")
        await self._retire(activation)
        return moved

    async def _retire(self, activation: Activation) -> None:
        """Delete the files of shards a committed unshard left behind."""
        db = activation.db
        raw = db.meta().get("shards.retired")
        if not isinstance(raw, str):
            return
        sup = self._sup
        for hex_id, name in json.loads(raw):
            shard = ActorId(activation.id.namespace, hex_id, name)
            await sup.lifecycle.release(shard)
            backup.remove(shard.address.path(sup.config.data_dir))
            sup.alarms.forget(shard)
            sup.subscriptions.forget(shard)
        store.set_meta(db, {"shards.retired": None})
        db.commit()

    # -- queries -----------------------------------------------------------------------

    async def _query(self, activation: Activation, op: str, **arguments: Any) -> Any:
        if op not in QUERIES:
            raise InvalidInput(f"query op is one of {', '.join(QUERIES)}, got {op!r}")
        router = self._routers.get(activation)
        if router is None:
            return _local(activation.db, op, arguments)
        namespace = activation.id.namespace
        admin = self._sup.lifecycle.admin
        if op in ("list", "find_one"):  # find_one is the first of a list
            single = op == "find_one"
            limit = 1 if single else arguments.pop("limit", 100)
            offset = 0 if single else arguments.pop("offset", 0)
            check_page(limit, offset)
            parts = [
                await admin(router.shard(namespace, i), "query", op="list", limit=limit + offset, offset=0, **arguments)
                for i in range(router.n)
            ]
            merged = merge_list(parts, arguments.get("order_by"), limit, offset)
            return (merged[0] if merged else None) if single else merged
        answers = [await admin(router.shard(namespace, i), "query", op=op, **arguments) for i in range(router.n)]
        if op == "count":
            return sum(answers)
        if op == "get":
            return next((a for a in answers if a is not None), None)
        return merge_scored(answers, arguments.get("limit" if op == "search" else "k", 10))


def _local(db: ActorDatabase, op: str, arguments: dict[str, Any]) -> Any:
    things = db.things
    try:
        result = getattr(things, op)(**arguments)
    except TypeError as exc:
        raise InvalidInput(f"query {op}: {exc}") from None
    if op in ("search", "nearest"):
        return [[thing.as_dict(), score] for thing, score in result]
    if op == "count":
        return result
    if isinstance(result, list):
        return [thing.as_dict() for thing in result]
    return None if result is None else result.as_dict()

