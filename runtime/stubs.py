"""Stubs: ``S.Customer("alice").notify("hi")`` and its pipelined form.

A stub is bound to a *caller*: the in-process supervisor, or a remote connection. Each
step resolves early where it can: an unknown namespace or method fails where it is
written (with the list of what exists), and arguments that cannot travel fail when the
call is made, not when it is awaited::

    S.Customer                 -> NamespaceStub  (ActorNotFound if unknown)
    S.Customer("alice")        -> ActorStub      (a name, a 64-hex id, or an ActorId)
    .notify                    -> bound method   (MethodNotAllowed if not callable)
    .notify("hi")              -> PendingCall    (arguments encoded now)
    await ...                  -> the result

A ``PendingCall`` is also a pipeline: ``S.Customer("alice").orders().latest()`` sends
both steps at once; each runs on the actor the previous step returned.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Protocol, TypeVar, cast

from dotdo.runtime.core import values
from dotdo.runtime.core.ids import ActorId, id_from_name, id_from_string, new_unique_id, resolve


T = TypeVar("T")


class Caller(Protocol):
    """What stubs send through (the supervisor in-process, a connection remotely)."""

    def check_method(self, namespace: str, method: str) -> object:
        """Raise if ``method`` cannot be called on ``namespace`` (where that is known)."""

    def check_namespace(self, namespace: str) -> object:
        """Raise if ``namespace`` is unknown (where that is known)."""

    async def call_packed(self, target: ActorId, method: str, payload: bytes, timeout: float | None = None) -> Any:
        """Run one call whose arguments are ``values.pack([args, kwargs])``."""

    async def call_pipeline(self, target: ActorId, steps: list[tuple[str, bytes]], timeout: float | None = None) -> Any:
        """Run a chain of calls, each on the actor the previous one returned."""


class Namespaces:
    """``S``: attribute access gives the stub of a namespace (``S.Customer``)."""

    __slots__ = ("_caller", "_cache")

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._cache: dict[str, NamespaceStub] = {}

    def __getattr__(self, namespace: str) -> NamespaceStub:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return self[namespace]

    def __getitem__(self, namespace: str) -> NamespaceStub:
        stub = self._cache.get(namespace)
        if stub is None:
            self._caller.check_namespace(namespace)
            stub = self._cache[namespace] = NamespaceStub(self._caller, namespace)
        return stub

    def get(self, kind: type[T], name_or_id: str | ActorId) -> T:
        """The stub of one actor of ``kind`` (its class), typed as the class, so that a
        type checker holds each call to the class's signatures:
        ``await S.get(Customer, "alice").notify("hi")``. At run time it is
        ``S.Customer("alice")``; a pipeline (``S.Customer("a").orders().latest()``) is
        written that way, untyped. A kind whose namespace is ``get`` is ``S["get"]``."""
        return cast(T, self[namespace_of(kind)](name_or_id))

    def __repr__(self) -> str:
        return f"<S via {self._caller!r}>"


def namespace_of(kind: type) -> str:
    """The namespace of an actor class (what its ``__dotdo_kind__`` says, else its
    name)."""
    describe = getattr(kind, "__dotdo_kind__", None)
    return describe().namespace if describe is not None else kind.__name__  # type: ignore[no-any-return]


# Ids derived from names are cached per namespace stub (hashing costs microseconds).
_ID_CACHE_SIZE = 4096


class NamespaceStub:
    """The actors of one namespace: call it with a name or id to get an actor stub."""

    __slots__ = ("_caller", "namespace", "_ids")

    def __init__(self, caller: Caller, namespace: str) -> None:
        self._caller = caller
        self.namespace = namespace
        self._ids: dict[str, ActorId] = {}

    def __call__(self, name_or_id: str | ActorId) -> ActorStub:
        """The stub of one actor: a name, a 64-hex id of this namespace, or an ``ActorId``."""
        if isinstance(name_or_id, ActorId):
            if name_or_id.namespace != self.namespace:
                from dotdo.storage.errors import InvalidId

                raise InvalidId(f"{name_or_id} is an id of {name_or_id.namespace}, not {self.namespace}")
            return ActorStub(self._caller, name_or_id)
        ids = self._ids
        actor_id = ids.get(name_or_id)  # type: ignore[call-overload]
        if actor_id is None:
            if not isinstance(name_or_id, str):
                from dotdo.storage.errors import InvalidId

                raise InvalidId(f"an actor is named by a string or an ActorId, not {type(name_or_id).__name__}")
            actor_id = resolve(self.namespace, name_or_id)
            if len(ids) >= _ID_CACHE_SIZE:
                ids.clear()
            ids[name_or_id] = actor_id
        return ActorStub(self._caller, actor_id)

    def get(self, actor_id: ActorId) -> ActorStub:
        """The stub of the actor with this id."""
        return self(actor_id)

    def id_from_name(self, name: str) -> ActorId:
        """The id derived from ``name`` (always the same for the same name)."""
        return id_from_name(self.namespace, name)

    def id_from_string(self, hex_id: str) -> ActorId:
        """Parse a 64-hex id of this namespace (``InvalidId`` otherwise)."""
        return id_from_string(self.namespace, hex_id)

    def new_unique_id(self) -> ActorId:
        """A fresh random id."""
        return new_unique_id(self.namespace)

    def __repr__(self) -> str:
        return f"<NamespaceStub {self.namespace}>"


class ActorStub:
    """One actor, seen from a caller. Method access returns callables; private names
    (``_x``) are never forwarded."""

    __slots__ = ("_caller", "id")

    def __init__(self, caller: Caller, actor_id: ActorId) -> None:
        self._caller = caller
        self.id = actor_id

    def __getattr__(self, method: str) -> MethodStub:
        if method.startswith("_"):
            raise AttributeError(method)
        self._caller.check_method(self.id.namespace, method)
        return MethodStub(self._caller, self.id, method, ())

    def __dotdo_ref__(self) -> ActorId:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorStub) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<ActorStub {self.id}>"


class MethodStub:
    """A method of an actor, seen from a caller: call it for a ``PendingCall``."""

    __slots__ = ("_caller", "_target", "_name", "_steps")

    def __init__(self, caller: Caller, target: ActorId, name: str, steps: tuple[tuple[str, bytes], ...]) -> None:
        self._caller = caller
        self._target = target
        self._name = name
        self._steps = steps

    def __call__(self, *args: Any, **kwargs: Any) -> PendingCall:
        payload = values.pack([args, kwargs])
        return PendingCall(self._caller, self._target, (*self._steps, (self._name, payload)))

    def __repr__(self) -> str:
        return f"<method {self._target}.{self._name}>"


class PendingCall(Coroutine[Any, Any, Any]):
    """A call (or a pipeline of calls) not yet sent. Await it (once) for the result, or
    hand the method to a nursery (``nursery.start_soon(stub.method, arg)``). Access a
    method on it to pipeline a call on the actor it will return."""

    __slots__ = ("_caller", "_target", "_steps", "_running")

    def __init__(self, caller: Caller, target: ActorId, steps: tuple[tuple[str, bytes], ...]) -> None:
        self._caller = caller
        self._target = target
        self._steps = steps
        self._running: Generator[Any, None, Any] | None = None

    def _run(self) -> Generator[Any, None, Any]:
        if self._running is not None:
            raise RuntimeError(f"{self!r} was already awaited; make the call again")
        steps = self._steps
        if len(steps) == 1:
            method, payload = steps[0]
            running = self._caller.call_packed(self._target, method, payload).__await__()
        else:
            running = self._caller.call_pipeline(self._target, list(steps)).__await__()
        self._running = running
        return running

    def __await__(self) -> Generator[Any, None, Any]:
        return self._run()

    def send(self, value: Any) -> Any:
        running = self._running if self._running is not None else self._run()
        return running.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        running = self._running if self._running is not None else self._run()
        if val is None and tb is None:
            return running.throw(typ)
        return running.throw(typ, val, tb)

    def close(self) -> None:
        if self._running is not None:
            self._running.close()

    def __getattr__(self, method: str) -> MethodStub:
        if method.startswith("_"):
            raise AttributeError(method)
        return MethodStub(self._caller, self._target, method, self._steps)

    def __repr__(self) -> str:
        chain = ".".join(f"{m}()" for m, _ in self._steps)
        return f"<PendingCall {self._target}.{chain}>"


def caller_of(stub: ActorStub) -> Caller:
    """What ``stub``'s calls go through (a supervisor, or a connection). A function, not
    an attribute: every attribute of a stub names one of its actor's methods."""
    return stub._caller


def method_parts(method: MethodStub) -> tuple[Caller, ActorId, str]:
    """What a method stub calls: through which caller, on which actor, which method."""
    return method._caller, method._target, method._name
