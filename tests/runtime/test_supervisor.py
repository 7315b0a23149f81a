"""The supervisor as a whole: what is refused before a call runs, values that travel,
pipelines, ids, shutdown and introspection (the call path is tested in ``test_turns.py``,
the activation table in ``core/test_table.py``)."""

from pathlib import Path

import pytest
import trio
import trio.testing

from dotdo import (
    DotdoError,
    InvalidArguments,
    InvalidId,
    InvalidValue,
    MethodNotAllowed,
    SupervisorClosed,
)
from dotdo.runtime.core.activation import ActivationState
from dotdo.runtime.supervisor import Supervisor
from tests.runtime.kinds import KINDS, Box


async def test_state_survives_a_supervisor_restart(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as first:
        await first.S.Box("a").put("k", "v")
    async with Supervisor(KINDS, tmp_path) as second:
        assert await second.S.Box("a").get("k") == "v"


async def test_private_lifecycle_sync_and_unknown_methods_are_refused(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    for name, reason in [
        ("sync_method", "only async"),
        ("fetch", "lifecycle"),
        ("on_start", "lifecycle"),
        ("alarm", "lifecycle"),
        ("nope", "no such public method"),
    ]:
        with pytest.raises(MethodNotAllowed, match=reason):
            getattr(box, name)
        with pytest.raises(MethodNotAllowed, match=reason):
            await sup.call(box.id, name)
    with pytest.raises(AttributeError):
        box._private  # noqa: B018
    with pytest.raises(MethodNotAllowed, match="private"):
        await sup.call(box.id, "_private")
    with pytest.raises(MethodNotAllowed, match="callable methods: .*echo"):
        await sup.call(box.id, "__init__")
    assert not sup.is_active(box.id)


async def test_bad_arguments_are_refused_before_the_turn(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(InvalidArguments, match="argument 'key'"):
        await box.get(42)
    with pytest.raises(InvalidArguments, match="Missing required argument"):
        await sup.call(box.id, "put", ("only-key",))
    with pytest.raises(InvalidArguments):
        await sup.call(box.id, "echo", (1,), {"extra": 2})
    assert not sup.is_active(box.id)


async def test_arguments_that_cannot_travel_fail_at_the_call_site(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(InvalidValue, match="type set"):
        box.echo({1, 2})  # not even awaited
    with pytest.raises(InvalidValue, match="type object"):
        box.echo(object())


async def test_arguments_and_results_are_copies(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    mine = {"list": [1]}
    returned = await box.echo(mine)
    assert returned == mine and returned is not mine
    assert await box.echo(b"\x00bytes") == b"\x00bytes"
    assert await box.echo((1, 2)) == [1, 2]


async def test_actor_references_travel_as_stubs(sup: Supervisor) -> None:
    ref = await sup.S.Box("a").returns_ref("b")
    assert ref == sup.S.Box("b")
    await ref.put("k", "via ref")
    assert await sup.S.Box("a").call_other("Box", "b", "get", "k") == "via ref"
    assert await sup.S.Box("a").echo(sup.S.Box("c")) == sup.S.Box("c")


async def test_pipelined_calls_in_process(sup: Supervisor) -> None:
    await sup.S.Box("b").put("k", "end of pipeline")
    assert await sup.S.Box("a").returns_ref("b").get("k") == "end of pipeline"
    with pytest.raises(DotdoError, match="not an actor reference"):
        await sup.S.Box("a").echo(1).get("k")


async def test_ids_by_name_hex_and_id(sup: Supervisor) -> None:
    by_name = sup.S.Box("alice")
    by_hex = sup.S.Box(by_name.id.hex)
    by_id = sup.S.Box.get(by_name.id)
    assert by_name == by_hex == by_id
    await by_name.put("k", 1)
    assert await by_hex.get("k") == 1
    with pytest.raises(InvalidId):
        sup.S.Box(sup.S.Flaky("x").id)
    with pytest.raises(InvalidId):
        sup.S.Box("")
    with pytest.raises(InvalidId):
        sup.S.Box(5)  # type: ignore[arg-type]


async def test_shutdown_lets_running_calls_finish(tmp_path: Path) -> None:
    sup = Supervisor(KINDS, tmp_path, shutdown_grace=5)
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        async with sup:
            async def call() -> None:
                results.append(await sup.S.Box("a").sleep(0.05))

            nursery.start_soon(call)
            await trio.sleep(0.01)
        assert results == ["slept"]
        with pytest.raises(SupervisorClosed):
            await sup.S.Box("a").echo(1)


async def test_shutdown_cancels_calls_past_the_grace_period(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    sup = Supervisor(KINDS, tmp_path, shutdown_grace=1)
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await sup.S.Box("a").sleep(100)
        except DotdoError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        async with sup:
            nursery.start_soon(call)
            await trio.sleep(0.1)
    assert len(errors) == 1 and isinstance(errors[0], SupervisorClosed)
    assert sup.activations() == []


async def test_several_supervisors_in_one_test(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path / "one") as one, Supervisor(KINDS, tmp_path / "two") as two:
        await one.S.Box("a").put("k", "one")
        await two.S.Box("a").put("k", "two")
        assert await one.S.Box("a").get("k") == "one"
        assert await two.S.Box("a").get("k") == "two"


async def test_a_supervisor_is_entered_once(tmp_path: Path) -> None:
    sup = Supervisor(KINDS, tmp_path)
    async with sup:
        pass
    with pytest.raises(DotdoError, match="entered once"):
        async with sup:
            pass


async def test_statistics_and_repr(sup: Supervisor) -> None:
    await sup.S.Box("a").echo(1)
    stats = sup.statistics()
    assert stats.active == 1 and stats.busy == 0 and stats.calls_in_flight == 0
    [activation] = sup.activations()
    assert activation.state is ActivationState.ACTIVE and activation.turns == 1
    assert "Box/a" in repr(sup.activation_of(sup.S.Box("a").id))
    assert "kinds=['Box', 'Flaky', 'Prober']" in repr(sup)


def test_duplicate_namespaces_are_refused(tmp_path: Path) -> None:
    class Other(Box):
        namespace = "Box"

    with pytest.raises(DotdoError, match="two actor kinds use the namespace 'Box'"):
        Supervisor([Box, Other], tmp_path)
