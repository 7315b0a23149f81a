"""``dotdo.S``: stubs through the supervisor of the current turn, or the one entered last."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from dotdo import DO, ActorNotFound, DotdoError, S, Supervisor
from dotdo.ambient import AmbientS

NO_SUPERVISOR = "S has no supervisor here"


class Account(DO):
    async def deposit(self, amount: int) -> int:
        balance = (self.storage.get("balance") or 0) + amount
        self.storage.put("balance", balance)
        return balance

    async def balance(self) -> int:
        return self.storage.get("balance") or 0

    async def where(self) -> str:
        return self.env["where"]

    async def forward(self, other: str, amount: int) -> int:
        # The module-level S, used from inside a turn.
        return await S.Account(other).deposit(amount)

    async def where_via_s(self, other: str) -> str:
        return await S["Account"](other).where()


async def test_s_outside_trio_is_a_clear_error() -> None:
    def outside() -> None:
        with pytest.raises(DotdoError, match=NO_SUPERVISOR):
            S.Account  # noqa: B018
        with pytest.raises(DotdoError, match="use the S returned by connect"):
            S["Account"]

    await trio.to_thread.run_sync(outside)  # a thread: no trio run there


def test_s_without_a_running_trio_is_a_clear_error() -> None:
    with pytest.raises(DotdoError, match=NO_SUPERVISOR):
        S.Account  # noqa: B018


async def test_s_in_trio_without_a_supervisor_is_a_clear_error() -> None:
    with pytest.raises(DotdoError, match=NO_SUPERVISOR):
        S.Account  # noqa: B018


async def test_s_in_the_task_that_entered_the_supervisor(tmp_path: Path) -> None:
    async with Supervisor([Account], tmp_path) as sup:
        assert await S.Account("a").deposit(5) == 5
        assert await S["Account"]("a").balance() == 5
        assert await sup.S.Account("a").balance() == 5
        with pytest.raises(ActorNotFound, match="no actor kind 'Nope'"):
            S.Nope  # noqa: B018
    with pytest.raises(DotdoError, match=NO_SUPERVISOR):
        S.Account  # noqa: B018  (the supervisor is gone)


async def test_s_in_other_tasks_under_a_supervisor(tmp_path: Path) -> None:
    results: list[int] = []

    async def deposit(amount: int) -> None:
        results.append(await S.Account("shared").deposit(amount))

    async with trio.open_nursery() as outer:  # opened before the supervisor
        async with Supervisor([Account], tmp_path) as sup:
            async with trio.open_nursery() as nursery:
                for amount in (1, 2, 3):
                    nursery.start_soon(deposit, amount)
            outer.start_soon(deposit, 10)
            await trio.testing.wait_all_tasks_blocked()
            assert await sup.S.Account("shared").balance() == 16
    assert sorted(results)[-1] == 16 and len(results) == 4


async def test_s_inside_an_actor_uses_the_supervisor_running_the_turn(tmp_path: Path) -> None:
    async with (
        Supervisor([Account], tmp_path / "one", env={"where": "one"}) as one,
        Supervisor([Account], tmp_path / "two", env={"where": "two"}) as two,
    ):
        # Outside a turn, S is the supervisor entered last.
        assert await S.Account("x").where() == "two"
        # Inside a turn of `one`, S is `one`, though `two` was entered later.
        assert await one.S.Account("a").where_via_s("b") == "one"
        assert await one.S.Account("a").forward("b", 7) == 7
        assert await one.S.Account("b").balance() == 7
        assert await two.S.Account("b").balance() == 0


async def test_leaving_a_nested_supervisor_restores_the_outer_one(tmp_path: Path) -> None:
    async with Supervisor([Account], tmp_path / "outer", env={"where": "outer"}):
        async with Supervisor([Account], tmp_path / "inner", env={"where": "inner"}):
            assert await S.Account("x").where() == "inner"
        assert await S.Account("x").where() == "outer"


def test_private_names_and_repr() -> None:
    with pytest.raises(AttributeError):
        S._anything  # noqa: B018
    assert isinstance(S, AmbientS)
    assert repr(S) == "<S: stubs through the current supervisor>"


class Renamed(DO):
    namespace = "Accounts2"

    async def hello(self) -> str:
        return f"hello from {self.id.namespace}"


async def test_get_is_the_stub_of_a_class_s_actor(tmp_path: Path) -> None:
    async with Supervisor([Account, Renamed], tmp_path) as sup:
        assert await S.get(Account, "a").deposit(3) == 3
        assert await sup.S.get(Account, "a").balance() == 3  # the same actor as S.Account("a")
        assert S.get(Account, "a").id == S.Account("a").id
        assert await S.get(Renamed, "x").hello() == "hello from Accounts2"  # its namespace, not its name

        class Unserved(DO):
            pass

        with pytest.raises(ActorNotFound, match="no actor kind 'Unserved'"):
            S.get(Unserved, "a")
