"""Lifecycle operations on whole actors: clone, branches, compact, bookmarks and restore,
promote, shard.

Each operation runs as a turn of the actor it acts on, so it is serialised with the
actor's own calls: no call sees it half done, and calls that arrive meanwhile wait at
the gate (``holds the actor's turns while it copies``). The turn commits what came
before it first; the storage layer (``dotdo.storage.lifecycle``, ``branches``, ``history``,
``promotion``, ``sharding``) then does the work, each step all or nothing.

Three ways in, one implementation (``LifecycleService.run``):

- inside the actor: ``await self.S.clone("copy")`` and the like (``dotdo.actors.workflow``),
  in the current turn;
- administration: ``await supervisor.lifecycle.clone(actor_id, "copy")``: a system
  call (``$admin``) that becomes a turn on whichever worker owns the actor;
- ``POST /_admin/actors/{namespace}/{id}/{operation}`` and ``dotdo <operation> ...``,
  which use the second.

Operations that replace the actor's data under it (``checkout``, ``restore``) reload the
actor when the turn ends: a new instance, ``on_start`` again, alarms and subscriptions
read again from the new data.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dotdo.storage import lifecycle as store
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import InvalidInput

from dotdo.runtime.core import values
from dotdo.runtime.core.activation import Activation, ActivationState
from dotdo.runtime.core.context import ActorContext
from dotdo.runtime.core.errors import ProtocolError
from dotdo.runtime.core.ids import ActorId, resolve
from dotdo.runtime.services.workflow import activation_of_turn, fields

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor

log = logging.getLogger("dotdo.lifecycle")

ADMIN_METHOD = "$admin"

Operation = Callable[..., Awaitable[Any]]


class LifecycleService:
    """The lifecycle operations of one supervisor (``Supervisor.lifecycle``)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        self._operations: dict[str, Operation] = {
            "clone": self._clone,
            "compact": self._compact,
            "branch": self._branch,
            "checkout": self._checkout,
            "merge": self._merge,
            "branches": self._branches,
            "delete_branch": self._delete_branch,
            "diff": self._diff,
            "bookmark": self._bookmark,
            "restore": self._restore,
            "history": self._history,
            "release": self._release,
        }
        self.fault: Callable[[str], None] | None = None  # tests: fail between the steps of an operation

    @property
    def operations(self) -> list[str]:
        """The operation names ``run`` and the admin route take."""
        return sorted(self._operations)

    def register(self, name: str, operation: Operation) -> None:
        """Add an operation (``dotdo.runtime.services.promotion`` and ``dotdo.runtime.services.sharding`` do)."""
        self._operations[name] = operation

    def step(self, name: str) -> None:
        """A point between two commits of an operation, where tests inject a crash."""
        if self.fault is not None:
            self.fault(name)

    async def release(self, target: ActorId) -> None:
        """Make sure no activation holds ``target``'s file, on whichever worker owns it,
        so an operation can open it directly.

        Raises:
            InvalidInput: It is in the middle of a turn here.
        """
        sup = self._sup
        if sup.owner_of(target) is not None:
            await self.admin(target, "release")
        elif sup.activation_of(target) is not None and not sup.passivate(target):
            raise InvalidInput(f"{target} is busy; try again")

    async def _release(self, activation: Activation) -> dict[str, Any]:
        activation.reload = "release"  # closed when this turn ends
        return {"released": activation.label}

    # -- administration: a turn on the actor, wherever it lives -----------------------

    async def admin(self, target: ActorId, operation: str, timeout: float | None = None, **arguments: Any) -> Any:
        """Run ``operation`` on ``target`` as a turn of its own, on the worker that owns
        it; returns the operation's JSON-friendly result.

        Raises:
            InvalidInput: An unknown operation or bad arguments; nothing changed.
        """
        return await self.request(target, operation, arguments, timeout)

    async def request(self, target: ActorId, operation: str, arguments: dict[str, Any], timeout: float | None = None) -> Any:
        """``admin`` with the operation's arguments as one mapping (from outside, such as
        an HTTP body): none of them can be taken for ``admin``'s own parameters."""
        self._check(operation)
        payload = values.pack([operation, arguments])
        packed = await self._sup.system_call(target, ADMIN_METHOD, payload, timeout=timeout)
        return values.unpack(packed, self._sup.ref)

    async def run_admin(self, instance: Any, payload: bytes) -> bytes:
        """The ``$admin`` system call's turn."""
        del instance
        operation, arguments = fields(payload, 2)
        if not isinstance(operation, str) or not isinstance(arguments, dict):
            raise ProtocolError("an $admin payload is [operation, {arguments}]")
        result = await self.run(activation_of_turn(), operation, arguments)
        return values.pack(result)

    async def run(self, activation: Activation, operation: str, arguments: dict[str, Any]) -> Any:
        """Run ``operation`` inside the current turn of ``activation``: its writes so far
        are committed first."""
        function = self._check(operation)
        try:
            inspect.signature(function).bind(activation, **arguments)
        except TypeError as exc:
            raise InvalidInput(f"{operation}: {exc}") from None
        activation.db.commit()
        return await function(activation, **arguments)

    def _check(self, operation: str) -> Operation:
        function = self._operations.get(operation)
        if function is None:
            raise InvalidInput(f"unknown lifecycle operation {operation!r}; known: {', '.join(self.operations)}")
        return function

    # -- reloading an actor whose data was replaced ------------------------------------

    def reload(self, activation: Activation) -> None:
        """After the turn that replaced the actor's data: a fresh instance over the new
        data, ``on_start`` before its next call, and the indexes brought in line."""
        sup = self._sup
        reason, activation.reload = activation.reload, None
        if reason == "release":
            sup.release(activation)
            return
        db = activation.db
        db.forget_features()
        activation.instance = activation.kind.create(ActorContext(activation.id, db, sup.env, sup))
        activation.started = activation.kind.on_start is None
        activation.state = ActivationState.ACTIVE if activation.started else ActivationState.STARTING
        activation.indexed = None
        activation.subscribed = None
        if activation.kind.subscriptions:
            sup.subscriptions.declare(activation)
        sup.subscriptions.sync(activation)
        sup.alarms.sync(activation)

    # -- clone -------------------------------------------------------------------------

    async def _clone(self, activation: Activation, new_id: str, alarms: bool = True) -> dict[str, Any]:
        sup = self._sup
        if activation.router is not None:
            raise InvalidInput(f"{activation.label} is sharded: its data is in its shards; unshard it to clone it")
        target = self._peer_id(activation, new_id, "clone")
        await self.release(target)
        db = activation.db
        report = store.clone_into(
            db, sup.config.data_dir, target.address, name=target.name, alarms=bool(alarms), options=db.options
        )
        self._reindex(target)
        return {**_plain(report), "id": target.hex, "name": target.name}

    def _peer_id(self, activation: Activation, text: object, what: str) -> ActorId:
        if isinstance(text, ActorId):
            target = text
        elif isinstance(text, str):
            target = resolve(activation.id.namespace, text)
        else:
            raise InvalidInput(f"{what} takes the new actor's name or id as text, got {type(text).__name__}")
        if target == activation.id:
            raise InvalidInput(f"an actor cannot {what} onto itself")
        return target

    def _reindex(self, target: ActorId) -> None:
        """Tell the shared indexes about an actor written without an activation."""
        sup = self._sup
        if sup.activation_of(target) is not None:
            return
        with ActorDatabase.open(sup.config.data_dir, target.address, sup.config.storage, name=target.name) as db:
            sup.alarms.reindex(target, db)
            sup.subscriptions.reindex(target, db)

    # -- compact -----------------------------------------------------------------------

    async def _compact(self, activation: Activation, retention: float | None = None) -> dict[str, Any]:
        sup = self._sup
        keep = sup.config.compact_retention if retention is None else _seconds(retention, "retention")
        report = store.compact(activation.db, before=sup.config.clock() - keep)
        return {**_plain(report), "retention": keep}

    # -- branches ----------------------------------------------------------------------

    async def _branch(self, activation: Activation, name: str) -> dict[str, Any]:
        return _plain(activation.db.branches.create(name))

    async def _checkout(self, activation: Activation, name: str) -> dict[str, Any]:
        db = activation.db
        db.branches.checkout(name)
        activation.reload = "reload"
        return {"branch": db.branches.current()}

    async def _merge(self, activation: Activation, source: str, policy: str = "fail") -> dict[str, Any]:
        report = activation.db.branches.merge(source, policy=policy)
        activation.db.commit()
        activation.reload = "reload"  # rows changed under the instance
        return _plain(report)

    async def _branches(self, activation: Activation) -> list[dict[str, Any]]:
        return [_plain(info) for info in activation.db.branches.list()]

    async def _delete_branch(self, activation: Activation, name: str) -> dict[str, Any]:
        activation.db.branches.delete(name)
        return {"deleted": name}

    async def _diff(self, activation: Activation, a: str, b: str | None = None) -> dict[str, Any]:
        branches = activation.db.branches
        return {"from": a, "to": b or branches.current(), "tables": branches.diff(a, b or branches.current())}

    # -- bookmarks and restore ---------------------------------------------------------

    async def _bookmark(self, activation: Activation, at: float | None = None) -> dict[str, Any]:
        history = activation.db.history
        bookmark = history.bookmark() if at is None else history.bookmark_at(_seconds(at, "at"))
        return {"bookmark": bookmark}

    async def _restore(self, activation: Activation, bookmark: str) -> dict[str, Any]:
        if not isinstance(bookmark, str):
            raise InvalidInput(f"restore takes a bookmark (text), got {type(bookmark).__name__}")
        undo = activation.db.history.restore(bookmark)
        activation.reload = "reload"
        return {"restored": bookmark, "undo": undo}

    async def _history(self, activation: Activation) -> dict[str, Any]:
        return _plain(activation.db.history.info())


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput(f"{what} is a number of seconds, 0 or more, got {value!r}")
    return float(value)


def _plain(report: Any) -> Any:
    """A report dataclass as a dict of plain values (for HTTP, the CLI and the wire)."""
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(report).items()}
    if isinstance(report, dict):
        return {str(k): _plain(v) for k, v in report.items()}
    if isinstance(report, list | tuple):
        return [_plain(v) for v in report]
    return report
