"""``promote(thing_id)``: a thing of an actor's store becomes an actor of its own.

The new actor is ``S.<$type>(<$id>)``: the kind named by the thing's ``$type``, the id
derived from its ``$id`` (so calls to the thing's address reach it). The three commits
and why a crash at any point leaves exactly one owner are in ``dotdo.storage.promotion``; this
module runs them, and settles a pending promotion the first time the new actor is
activated afterwards, by asking the parent (``promotion_status``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dotdo.storage import promotion as store
from dotdo.storage.database import ActorDatabase
from dotdo.storage.errors import DatabaseLocked, InvalidInput

from dotdo.runtime.core.activation import Activation
from dotdo.runtime.core.errors import ActorNotFound
from dotdo.runtime.core.ids import ActorId, id_from_name

if TYPE_CHECKING:
    from dotdo.runtime.supervisor import Supervisor


class PromotionService:
    """Promotion for one supervisor (``Supervisor.promotion``)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor
        supervisor.lifecycle.register("promote", self._promote)
        supervisor.lifecycle.register("promotion_status", self._status)

    async def _promote(self, activation: Activation, thing_id: str) -> dict[str, Any]:
        if not isinstance(thing_id, str):
            raise InvalidInput(f"promote takes a thing's $id (text), got {type(thing_id).__name__}")
        sup = self._sup
        db = activation.db
        bundle = store.export(db, thing_id)
        namespace = bundle["thing"][1]
        try:
            sup.registry.kind(namespace)
        except ActorNotFound:
            raise InvalidInput(
                f"the thing {thing_id!r} has $type {namespace!r}, which is not an actor kind of this server"
            ) from None
        target = id_from_name(namespace, thing_id)
        if target == activation.id:
            raise InvalidInput("a thing cannot be promoted onto the actor that holds it")
        await sup.lifecycle.release(target)
        config = sup.config
        with ActorDatabase.open(config.data_dir, target.address, config.storage, name=thing_id) as new:
            store.adopt(new, bundle, activation.id.address)
        sup.lifecycle.step("promote.copied")
        store.decide(db, thing_id, target.address)
        db.commit()  # the decision
        sup.lifecycle.step("promote.decided")
        try:
            with ActorDatabase.open(config.data_dir, target.address, config.storage, name=thing_id) as new:
                store.finish(new)
        except DatabaseLocked:
            pass  # activated meanwhile: its activation settles the mark
        return {"namespace": namespace, "id": target.hex, "name": thing_id}

    async def _status(self, activation: Activation, thing_id: str, namespace: str, hex: str) -> bool:
        return store.promoted(activation.db, thing_id) == (namespace, hex)

    async def settle(self, activation: Activation) -> None:
        """Finish or abandon the pending promotion of a new activation (see the module)."""
        db = activation.db
        mark = store.pending(db.meta())
        if mark is None:
            return
        parent_ns, parent_hex = mark["parent"]
        parent = ActorId(parent_ns, parent_hex)
        made = await self._sup.lifecycle.admin(
            parent, "promotion_status", thing_id=mark["thing"], namespace=activation.id.namespace, hex=activation.id.hex
        )
        if made:
            store.finish(db)
        else:
            store.abandon(db)
        db.forget_features()
