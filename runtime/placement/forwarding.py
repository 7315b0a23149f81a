"""Calls that cross a process: those that arrive over the transport, and those this
worker passes on to the worker that owns the actor.

With several workers each owns a hash partition of addresses (``Peers.owner``). A call
for an actor another worker owns is forwarded to it (``forward``), chain and all, under
this side's deadline too, so that a worker that stops answering costs a ``CallTimeout``,
not a hang. ``call_from_peer`` is the other end: a call that arrived from a client or
another worker, with its arguments still packed and its result packed for the reply.
A pipeline goes on wherever the reference its last step returned lives
(``continue_pipeline``): here, on another worker, or through a remote connection.

These are functions of the supervisor (they read its state) rather than methods, so that
its parts live in modules of their own at no cost per call; ``Supervisor`` binds the
public ones (``call_from_peer``, ``fetch_remote``) as its methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from dotdo.storage.errors import DotdoError

from dotdo.runtime.core import turns, values
from dotdo.runtime.transport import wire
from dotdo.runtime.core.context import turn_of
from dotdo.runtime.core.errors import CallTimeout, SupervisorClosed, Unavailable
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.stubs import ActorStub

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

T = TypeVar("T")

FORWARD_MARGIN = 1.0
"""Seconds a call forwarded to another worker is given past its deadline to report
back (its own turn ends at the deadline) before this side gives up on it."""


async def call_from_peer(
    sup: Supervisor,
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
    if sup._closing:
        raise SupervisorClosed("the supervisor is shutting down")
    method, payload = steps[0]
    if method[:1] == "$" and trusted and len(steps) == 1:
        sup.registry.kind(target.namespace)
        owner = sup._owner(target)
        if owner is not None:
            return await forward(sup, owner, target, steps, timeout, chain, path, raw=True)  # type: ignore[no-any-return]
        fn = sup.events.run_system
        chain = chain or sup._new_chain()
        return await turns.entry(sup, target, chain, path, timeout, fn, (method, payload), {}, None, scope)  # type: ignore[no-any-return]
    spec = sup.registry.method(target.namespace, method)
    owner = sup._owner(target)
    if owner is not None:  # a client reached the wrong worker: pass it on, chain and all
        return await forward(sup, owner, target, steps, timeout or spec.timeout, chain, path, raw=True)  # type: ignore[no-any-return]
    args, kwargs = sup._unpack_args(payload)
    bound_args, bound_kwargs = spec.bind(args, kwargs)
    last = len(steps) == 1
    result = await turns.entry(
        sup,
        target,
        chain or sup._new_chain(),
        path,
        timeout or spec.timeout,
        spec.function,
        bound_args,
        bound_kwargs,
        values.pack if last else sup._copy,
        scope,
    )
    if last:
        return result  # type: ignore[no-any-return]
    return values.pack(await continue_pipeline(sup, result, steps, 1, timeout))


async def continue_pipeline(sup: Supervisor, result: Any, steps: list[tuple[str, bytes]], start: int, timeout: float | None) -> Any:
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
        if caller is not sup:
            return await caller.call_pipeline(result.id, steps[index:], timeout)
        owner = sup._owner(result.id)
        if owner is not None:  # the rest of the chain goes to the owner in one message
            return await forward(sup, owner, result.id, steps[index:], timeout)
        result = await sup.call_packed(result.id, method, payload, timeout)
    return result


def check_owned(sup: Supervisor, target: ActorId) -> None:
    """Refuse a call that only this worker can serve (HTTP, the runtime's own turns)
    when another worker owns ``target``."""
    owner = sup._owner(target)
    if owner is not None:
        raise Unavailable(f"{target} is served by worker {owner}, not this one")


async def forward(
    sup: Supervisor,
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
    peers = sup.peers
    assert peers is not None
    packed = await _remote(sup, owner, target, timeout, lambda s: peers.call_raw(owner, target, steps, s, chain, path))
    return packed if raw else values.unpack(packed, sup.ref)


async def fetch_remote(
    sup: Supervisor, owner: int, target: ActorId, request: wire.HttpRequest, timeout: float | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Hand an HTTP request to the worker that owns ``target`` (``owner_of``);
    returns its (status, headers, body)."""
    peers = sup.peers
    if peers is None:
        raise Unavailable("this supervisor has no other workers")
    return await _remote(sup, owner, target, timeout, lambda s: peers.fetch(owner, target, request, s))


async def _remote(sup: Supervisor, owner: int, target: ActorId, timeout: float | None, send: Callable[[float], Awaitable[T]]) -> T:
    """``send(seconds)`` to another worker, under this side's deadline too, so that a
    worker that stops answering costs a ``CallTimeout``, not a hang."""
    if sup._closing and turn_of(sup) is None:
        raise SupervisorClosed("the supervisor is shutting down")
    seconds = sup.config.call_timeout if timeout is None else timeout
    remaining = trio.current_effective_deadline() - trio.current_time()
    seconds = max(min(seconds, remaining), 0.001)
    with trio.move_on_after(seconds + FORWARD_MARGIN):
        return await send(seconds)
    raise CallTimeout(f"call to {target} on worker {owner} did not finish within {seconds:g} s")
