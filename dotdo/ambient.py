"""``S`` at module level: stubs through the supervisor of the current context.

Inside a turn, ``S`` is the supervisor running that turn. Outside one, it is the
supervisor most recently entered in this trio run (``async with Supervisor(...)``).
With several supervisors in one run, use ``supervisor.S`` explicitly.
"""

from __future__ import annotations

from typing import TypeVar

from dotdo.actors.subscribe import On, on
from dotdo.runtime.core.context import current_supervisor, current_turn
from dotdo.runtime.core.ids import ActorId
from dotdo.runtime.stubs import NamespaceStub
from dotdo.storage.errors import DotdoError

T = TypeVar("T")


def _supervisor() -> object:
    turn = current_turn.get()
    if turn is not None:
        return turn.supervisor
    try:
        supervisor = current_supervisor.get(None)
    except RuntimeError:  # not inside trio.run
        supervisor = None
    if supervisor is None:
        raise DotdoError(
            "S has no supervisor here: call it inside an actor, inside "
            "`async with Supervisor(...)`, or use the S returned by connect()"
        )
    return supervisor


class AmbientS:
    """``S.Customer("alice")``: stubs through the current supervisor."""

    __slots__ = ()

    @property
    def on(self) -> On:
        """Subscriptions: ``@S.on.Customer.created`` (see ``dotdo.actors.subscribe``)."""
        return on

    def __getattr__(self, namespace: str) -> NamespaceStub:
        if namespace.startswith("_"):
            raise AttributeError(namespace)
        return _supervisor().S[namespace]  # type: ignore[attr-defined, no-any-return]

    def __getitem__(self, namespace: str) -> NamespaceStub:
        return _supervisor().S[namespace]  # type: ignore[attr-defined, no-any-return]

    def get(self, kind: type[T], name_or_id: str | ActorId) -> T:
        """The stub of one actor of ``kind``, typed as the class (``Namespaces.get``):
        ``await S.get(Customer, "alice").notify("hi")``, checked by a type checker."""
        return _supervisor().S.get(kind, name_or_id)  # type: ignore[attr-defined, no-any-return]

    def __repr__(self) -> str:
        return "<S: stubs through the current supervisor>"


S = AmbientS()
