"""What an actor instance is given: id, storage, sql, env, S; on_start; repr."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dotdo.actors.workflow import Workflow
from dotdo import DO, ActorError, ActorNotFound, Supervisor, id_from_name, new_unique_id


class Probe(DO):
    """Reports what it was given."""

    def __init__(self) -> None:
        # The runtime sets id, storage, sql, env and S before __init__ runs.
        self.built_for = str(self.id)
        self.calls = 0

    async def identity(self) -> dict[str, Any]:
        return {"namespace": self.id.namespace, "hex": self.id.hex, "name": self.id.name}

    async def built(self) -> str:
        return self.built_for

    async def count_calls(self) -> int:
        self.calls += 1  # plain attributes live as long as the activation
        return self.calls

    async def put(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    async def get(self, key: str) -> Any:
        return self.storage.get(key)

    async def keys(self) -> list[str]:
        return list(self.storage.list())

    async def add_row(self, text: str) -> int:
        self.sql.exec("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, text TEXT)")
        self.sql.exec("INSERT INTO notes(text) VALUES (?)", text)
        return self.sql.exec("SELECT count(*) AS n FROM notes").one()["n"]

    async def rows(self) -> list[str]:
        return [row["text"] for row in self.sql.exec("SELECT text FROM notes ORDER BY id").fetchall()]

    async def env_value(self, key: str) -> str | None:
        return self.env.get(key)

    async def write_env(self) -> None:
        self.env["x"] = "y"  # type: ignore[index]

    async def call_other(self, name: str) -> str:
        return await self.S.Other(name).hello(self.id.name or "")

    async def call_by_item(self, name: str) -> str:
        return await self.S["Other"](name).hello("item")

    async def call_unknown(self) -> None:
        self.S.Nope  # noqa: B018

    async def s_repr(self) -> str:
        return repr(self.S)

    async def s_is_workflow(self) -> bool:
        return isinstance(self.S, Workflow)

    async def s_private(self) -> str:
        try:
            self.S._ctx_anything  # noqa: B018
        except AttributeError:
            return "AttributeError"
        return "no error"

    async def me(self) -> str:
        return repr(self)


class Other(DO):
    async def hello(self, who: str) -> str:
        return f"hello {who} from {self.id.name}"


class Starter(DO):
    """Counts its starts in storage; on_start runs as a turn before any call."""

    async def on_start(self) -> None:
        self.storage.put("starts", (self.storage.get("starts") or 0) + 1)
        self.sql.exec("CREATE TABLE IF NOT EXISTS log(x)")
        self.ready = True

    async def starts(self) -> int:
        return self.storage.get("starts")

    async def is_ready(self) -> bool:
        return self.ready

    async def slow_starts(self) -> int:
        await trio.sleep(0.01)
        return self.storage.get("starts")


class Renamed(DO):
    namespace = "Shop"

    async def where(self) -> str:
        return self.id.namespace


KINDS = (Probe, Other, Starter, Renamed)


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(KINDS, tmp_path, env={"region": "eu"}) as supervisor:
        yield supervisor


async def test_id_by_name(sup: Supervisor) -> None:
    expected = id_from_name("Probe", "alice")
    assert await sup.S.Probe("alice").identity() == {
        "namespace": "Probe",
        "hex": expected.hex,
        "name": "alice",
    }


async def test_id_by_hex_has_no_name_and_reaches_the_same_actor(sup: Supervisor) -> None:
    unique = new_unique_id("Probe")
    assert await sup.S.Probe(unique.hex).identity() == {"namespace": "Probe", "hex": unique.hex, "name": None}
    named = id_from_name("Probe", "bob")
    await sup.S.Probe("bob").put("k", "v")
    assert await sup.S.Probe(named.hex).get("k") == "v"


async def test_id_is_set_before_init(sup: Supervisor) -> None:
    assert await sup.S.Probe("carol").built() == "Probe/carol"


async def test_instance_attributes_live_for_one_activation(sup: Supervisor) -> None:
    probe = sup.S.Probe("a")
    assert [await probe.count_calls() for _ in range(3)] == [1, 2, 3]
    assert sup.passivate(probe.id)
    assert await probe.count_calls() == 1  # a new instance after passivation


async def test_storage_is_private_and_survives_passivation(sup: Supervisor) -> None:
    a, b = sup.S.Probe("a"), sup.S.Probe("b")
    await a.put("k", {"nested": [1, 2]})
    await b.put("other", 1)
    assert sup.passivate(a.id)
    assert await a.get("k") == {"nested": [1, 2]}
    assert await a.keys() == ["k"]
    assert await b.keys() == ["other"]


async def test_sql_is_private_and_survives_passivation(sup: Supervisor) -> None:
    a = sup.S.Probe("a")
    assert await a.add_row("one") == 1
    assert await a.add_row("two") == 2
    assert sup.passivate(a.id)
    assert await a.rows() == ["one", "two"]
    assert await sup.S.Probe("b").add_row("mine") == 1


async def test_env_is_the_servers_configuration_and_read_only(sup: Supervisor) -> None:
    probe = sup.S.Probe("a")
    assert await probe.env_value("region") == "eu"
    assert await probe.env_value("missing") is None
    with pytest.raises(ActorError) as info:
        await probe.write_env()
    assert info.value.remote_type == "TypeError"
    assert await probe.env_value("x") is None


async def test_env_is_a_copy_of_the_mapping_given(tmp_path: Path) -> None:
    env = {"k": "before"}
    async with Supervisor(KINDS, tmp_path, env=env) as sup:
        env["k"] = "after"
        assert await sup.S.Probe("a").env_value("k") == "before"


async def test_s_reaches_other_actors(sup: Supervisor) -> None:
    probe = sup.S.Probe("alice")
    assert await probe.call_other("bob") == "hello alice from bob"
    assert await probe.call_by_item("carol") == "hello item from carol"
    assert await probe.s_is_workflow()
    assert await probe.s_repr() == "<S of Probe/alice>"
    assert await probe.s_private() == "AttributeError"
    with pytest.raises(ActorNotFound, match="no actor kind 'Nope'"):
        await probe.call_unknown()


async def test_on_start_runs_once_per_activation_before_any_call(sup: Supervisor) -> None:
    starter = sup.S.Starter("s")
    results: list[int] = []

    async def call() -> None:
        results.append(await starter.slow_starts())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(call)
    assert results == [1] * 5
    assert await starter.is_ready()
    assert await starter.starts() == 1
    assert sup.passivate(starter.id)
    assert await starter.starts() == 2  # a new activation runs on_start again
    assert await starter.starts() == 2


async def test_on_start_writes_are_committed(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as sup:
        assert await sup.S.Starter("s").starts() == 1
    async with Supervisor(KINDS, tmp_path) as sup:
        assert await sup.S.Starter("s").starts() == 2


async def test_a_namespace_set_on_the_class(sup: Supervisor) -> None:
    assert "Shop" in sup.registry and "Renamed" not in sup.registry
    assert await sup.S.Shop("x").where() == "Shop"


async def test_repr_names_the_address(sup: Supervisor) -> None:
    assert await sup.S.Probe("alice").me() == "<Probe Probe/alice>"
    assert repr(Probe.__new__(Probe)) == "<Probe (unbound)>"
