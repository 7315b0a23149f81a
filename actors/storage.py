"""``self.storage``: the key-value API of an actor's database, whose ``delete_all`` goes
through the runtime.

``delete_all`` deletes the actor's alarm and schedules with everything else
(``dotdo.storage.deletion``); the supervisor's alarm index must then follow, at the
turn's end, which only the runtime can see to. So this one method is the alarm
service's (``AlarmService.delete_all``); the rest is ``KVStore`` as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dotdo.storage.kv import KVStore

if TYPE_CHECKING:
    from dotdo.runtime.core.context import ActorContext
    from dotdo.storage.deletion import Deleted


class Storage(KVStore):
    """The actor's ``self.storage``."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx.db)
        self._ctx = ctx

    def delete_all(self) -> int:
        """Delete everything the actor stored, in this turn's commit: every key, every
        table of its SQL (dropped), its things, its alarm and its schedules. If the turn
        fails, everything is back. Kept: what was sent and what other actors are owed
        (see ``dotdo.storage.deletion``). Returns how many keys there were.

        Raises:
            DotdoError: Called outside one of the actor's own turns (in ``__init__``,
                say: use ``on_start``).
        """
        ctx = self._ctx
        deleted: Deleted = ctx.supervisor.alarms.delete_all(ctx)
        return deleted.keys
