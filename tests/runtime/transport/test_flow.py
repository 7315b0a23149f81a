"""Byte budgets (``dotdo.runtime.transport.flow``): what fits goes at once, the rest waits in order."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dotdo.runtime.transport.flow import ByteBudget


async def test_what_fits_is_taken_at_once_and_the_rest_waits_in_order() -> None:
    budget = ByteBudget(100)
    await budget.take(60)
    order: list[int] = []

    async def take(size: int) -> None:
        await budget.take(size)
        order.append(size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 50)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 10)  # would fit, but waits behind the larger one
        await trio.testing.wait_all_tasks_blocked()
        assert order == [] and budget.used == 60
        budget.give(60)
    assert sorted(order) == [10, 50] and budget.used == 60


async def test_a_request_larger_than_the_budget_goes_alone() -> None:
    budget = ByteBudget(100)
    await budget.take(500)  # nothing in flight: admitted
    assert budget.used == 500
    with trio.move_on_after(0.05) as scope:
        await budget.take(1)
    assert scope.cancelled_caught and budget.used == 500
    budget.give(500)
    await budget.take(1)
    assert budget.used == 1


async def test_a_cancelled_wait_takes_nothing_and_holds_up_no_one() -> None:
    budget = ByteBudget(100)
    await budget.take(90)
    got: list[int] = []
    big = trio.CancelScope()

    async def take(size: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await budget.take(size)
            got.append(size)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, 50, big)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, 5)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # behind the 50
        big.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == [5] and budget.used == 95  # the cancelled one took nothing


async def test_borrowed_bytes_hold_up_later_takes() -> None:
    budget = ByteBudget(100)
    budget.borrow(100)
    with trio.move_on_after(0.05) as scope:
        await budget.take(1)
    assert scope.cancelled_caught
    budget.give(100)
    await budget.take(100)


async def test_no_limit_only_counts() -> None:
    budget = ByteBudget(None)
    await budget.take(10**9)
    await budget.take(10**9)
    assert budget.used == 2 * 10**9


def test_a_budget_is_at_least_one_byte() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        ByteBudget(0)
