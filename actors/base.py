"""The ``DO`` base class: what a user subclasses to define an actor kind."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from dotdo.runtime.core.kinds import KindSpec
from dotdo.runtime.core.turns import abort_turn

from dotdo.actors.methods import public_methods
from dotdo.actors.storage import Storage
from dotdo.actors.subscribe import declared
from dotdo.actors.workflow import Workflow

if TYPE_CHECKING:
    from dotdo.runtime.core.context import ActorContext
    from dotdo.runtime.core.ids import ActorId
    from dotdo.runtime.services.websockets import WebSocket
    from dotdo.storage.sql import SqlStore


class DO:
    """A Durable Object: one instance per id, one turn at a time, its own database.

    Subclass it and write ``async def`` methods; every public one can be called through a
    stub (``S.Counter("a").increment()``) or over HTTP. Optional hooks:

    - ``async def on_start(self)``: runs once per activation, before any call (a turn).
    - ``async def fetch(self, request)``: handles HTTP under ``/{namespace}/{id}/...``;
      gets a starlette ``Request``, returns a starlette ``Response``.
    - ``async def alarm(self, info)`` (or ``alarm(self)``): runs when the alarm set with
      ``set_alarm`` fires; ``info`` is an ``AlarmInfo`` (``scheduled_time``,
      ``retry_count``, ``is_retry``). Raising retries it with backoff.

    The runtime sets these before ``__init__`` runs (which takes no arguments):

    Attributes:
        id: This actor's ``ActorId`` (``id.name`` is the name it was reached by, if any).
        storage: The key-value API (``get``, ``put``, ``delete``, ``list``,
            ``delete_all``, ``transaction()``), over the actor's database;
            ``delete_all`` deletes everything the actor stored, SQL tables and alarm
            included (``Storage.delete_all``).
        sql: The SQL API (``sql.exec(query, *bindings)``), over the same database.
        env: The server's configuration values (read-only mapping).
        S: Stubs to other actors (``self.S.Customer("alice")``).

    Class attributes:
        namespace: Where actors of this kind live; defaults to the class name.
    """

    namespace: ClassVar[str | None] = None

    id: ActorId
    storage: Storage
    sql: SqlStore
    env: Mapping[str, str]
    S: Workflow

    def __init__(self) -> None:
        """Set up plain attributes here; do storage work in ``on_start``."""

    @classmethod
    def __dotdo_kind__(cls) -> KindSpec:
        """Describe this class to the runtime (computed once per class)."""
        cached = cls.__dict__.get("_dotdo_spec")
        if cached is not None:
            return cached
        if cls is DO:
            raise TypeError("DO itself is not an actor kind: subclass it")
        namespace = cls.__dict__.get("namespace") or cls.__name__
        methods, hidden = public_methods(cls, DO)
        spec = KindSpec(
            namespace=namespace,
            create=cls._dotdo_create,
            methods=methods,
            fetch=_hook(cls, "fetch"),
            on_start=_hook(cls, "on_start"),
            alarm=_hook(cls, "alarm"),
            hidden=hidden,
            cls=cls,
            subscriptions=declared(cls),
        )
        cls._dotdo_spec = spec
        return spec

    @classmethod
    def _dotdo_create(cls, ctx: ActorContext) -> DO:
        self = cls.__new__(cls)
        self.id = ctx.id
        self.storage = Storage(ctx)
        self.sql = ctx.db.sql
        self.env = ctx.env
        self.S = Workflow(ctx)
        self._dotdo_ctx = ctx
        self.__init__()  # type: ignore[misc]
        return self

    # -- the alarm -------------------------------------------------------------------

    def set_alarm(self, when: dt.datetime | dt.timedelta | float) -> dt.datetime:
        """Set this actor's one alarm, replacing any; ``alarm(info)`` runs then.

        ``when`` is a timezone-aware datetime, a timedelta from now, or epoch seconds; a
        time in the past fires as soon as possible. Written in this turn's commit: if the
        turn fails, the alarm stays as it was. Returns the time, in UTC.
        """
        ctx = self._dotdo_ctx
        return ctx.supervisor.alarms.set_alarm(ctx, when)

    def get_alarm(self) -> dt.datetime | None:
        """When the alarm will run next (UTC), or None when unset or while ``alarm`` runs."""
        ctx = self._dotdo_ctx
        return ctx.supervisor.alarms.get_alarm(ctx)

    def delete_alarm(self) -> bool:
        """Delete the alarm; inside ``alarm`` it also stops retries. Whether one was set."""
        ctx = self._dotdo_ctx
        return ctx.supervisor.alarms.delete_alarm(ctx)

    # -- WebSockets (dotdo.runtime.services.websockets) ----------------------------------

    def accept_websocket(self, ws: WebSocket, tags: Iterable[str] = ()) -> WebSocket:
        """Accept the WebSocket of an upgrade request to this actor (``request.websocket``
        in ``fetch``), with up to 10 ``tags`` (1 to 256 characters each). The socket
        then lives in the server: this actor may be passivated while it stays open
        (hibernation), and each message wakes it for a turn of ``websocket_message``.
        Returns the socket."""
        self._dotdo_ctx.supervisor.websockets.accept(self._dotdo_ctx.id, ws, tags)
        return ws

    def get_websockets(self, tag: str | None = None) -> list[WebSocket]:
        """This actor's open WebSockets (with ``tag`` among their tags, when given)."""
        return self._dotdo_ctx.supervisor.websockets.sockets(self._dotdo_ctx.id, tag)

    def get_tags(self, ws: WebSocket) -> tuple[str, ...]:
        """The tags ``ws`` was accepted with."""
        return ws.tags

    def set_websocket_auto_response(self, request: str | None = None, response: str | None = None) -> None:
        """Answer a message equal to ``request`` with ``response`` in the server, without
        waking this actor (each 1 to 2,048 characters); no arguments: stop. It lasts as
        long as the server, across hibernation."""
        self._dotdo_ctx.supervisor.websockets.set_auto_response(self._dotdo_ctx.id, request, response)

    def get_websocket_auto_response(self) -> tuple[str, str] | None:
        """The auto-response's (request, response), or None."""
        return self._dotdo_ctx.supervisor.websockets.auto_response(self._dotdo_ctx.id)

    def get_websocket_auto_response_timestamp(self, ws: WebSocket) -> dt.datetime | None:
        """When the server last answered ``ws`` with the auto-response (UTC), or None."""
        at = ws.auto_response_at
        return None if at is None else dt.datetime.fromtimestamp(at, dt.timezone.utc)

    # -- ending the activation ----------------------------------------------------------

    def abort(self, reason: str = "aborted") -> NoReturn:
        """Stop this turn and reset the actor, like Durable Objects' ``ctx.abort()``: the
        turn is rolled back, the activation ends (calls waiting for it are told to
        retry), the caller gets ``Aborted`` with ``reason``, and the next call gets a
        fresh instance (``on_start`` again). Raises into this turn's own code something
        an ``except Exception`` does not catch; even caught, the turn does not commit."""
        abort_turn(self, str(reason))

    def __repr__(self) -> str:
        actor_id = getattr(self, "id", None)
        return f"<{type(self).__name__} {actor_id if actor_id is not None else '(unbound)'}>"


def _hook(cls: type, name: str) -> Any:
    fn = getattr(cls, name, None)
    if fn is None or getattr(DO, name, None) is fn:
        return None
    import inspect

    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{cls.__qualname__}.{name} must be an async method")
    return fn
