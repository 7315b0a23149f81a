from pathlib import Path

import pytest
import trio
import trio.testing

from dotdo import (
    ActorError,
    CallTimeout,
    DeadlockError,
    DotdoError,
    InvalidArguments,
    InvalidId,
    InvalidValue,
    MethodNotAllowed,
    Overloaded,
    SupervisorClosed,
)
from runtime.activation import ActivationState
from runtime.supervisor import Supervisor
from tests.runtime.kinds import KINDS, Box, Flaky


async def test_first_call_activates_and_later_calls_reuse_the_instance(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    assert not sup.is_active(box.id)
    await box.put("k", 1)
    assert sup.is_active(box.id)
    instance = sup._active[("Box", box.id.hex)].instance
    await box.get("k")
    assert sup._active[("Box", box.id.hex)].instance is instance
    assert sup.statistics().activations == 1


async def test_state_survives_passivation(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    await box.put("k", {"v": [1, 2]})
    assert sup.passivate(box.id)
    assert not sup.is_active(box.id)
    assert await box.get("k") == {"v": [1, 2]}
    assert sup.statistics().activations == 2


async def test_state_survives_a_supervisor_restart(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path) as first:
        await first.S.Box("a").put("k", "v")
    async with Supervisor(KINDS, tmp_path) as second:
        assert await second.S.Box("a").get("k") == "v"


async def test_turns_are_one_at_a_time(sup: Supervisor) -> None:
    box = sup.S.Box("counter")
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(box.increment_slowly)
    assert await box.get("n") == 50


async def test_turns_run_in_arrival_order(sup: Supervisor) -> None:
    box = sup.S.Box("order")
    order = []

    async def caller(i: int) -> None:
        await box.echo(i)
        order.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.sleep, 0.05)
        await trio.sleep(0.01)  # the gate is now held; the rest queue
        for i in range(10):
            nursery.start_soon(caller, i)
            await trio.sleep(0.001)
    assert order == list(range(10))


async def test_a_raising_handler_rolls_back_and_the_actor_keeps_serving(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(ActorError) as info:
        await box.put_then_fail("k", 1)
    assert info.value.remote_type == "ValueError"
    assert "boom after writing" in str(info.value)
    assert await box.get("k") is None
    await box.put("k", 2)
    assert await box.get("k") == 2


async def test_writes_are_committed_before_an_outgoing_call(sup: Supervisor) -> None:
    # The callee looks at the caller's database while the caller's turn waits for it.
    assert await sup.S.Box("a").put_and_call("k", 1, "Prober", "p", "uncommitted_of", "a") is False


async def test_writes_before_an_outgoing_call_survive_a_later_failure(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(ActorError, match="failed after the call"):
        await box.put_call_then_fail("k", 1, "b")
    assert await box.get("k") == 1  # committed at the output point
    assert await box.get("k.after") is None  # written after it, rolled back


async def test_a_callback_sees_the_write(sup: Supervisor) -> None:
    # A writes, calls B, B calls back A (same chain: admitted) and reads the write.
    result = await sup.S.Box("a").put_and_call("k", "seen", "Box", "b", "call_other", "Box", "a", "get", "k")
    assert result == "seen"


async def test_reentrancy_a_b_a(sup: Supervisor) -> None:
    value = await sup.S.Box("a").call_other("Box", "b", "call_other", "Box", "a", "echo", 7)
    assert value == 7


async def test_a_true_deadlock_is_reported(sup: Supervisor) -> None:
    # a and b each start a turn (two chains), then each calls the other: a cycle.
    a, b = sup.S.Box("a"), sup.S.Box("b")
    errors: list[BaseException] = []

    async def call(me: object, other: str) -> None:
        try:
            await me.call_other("Box", other, "echo", 1)  # type: ignore[attr-defined]
        except DotdoError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, a, "b")
        nursery.start_soon(call, b, "a")
    assert len(errors) == 1  # one chain is refused; the other then completes
    error = errors[0]
    assert isinstance(error, DeadlockError)
    assert "Box/a" in str(error) and "Box/b" in str(error)
    assert set(error.chain) == {"Box/a", "Box/b"}


async def test_a_busy_actor_makes_waiting_callers_time_out(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, call_timeout=1.0) as sup:
        box = sup.S.Box("busy")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.call, box.id, "sleep", (0.9,))
            await trio.sleep(0.1)
            with pytest.raises(CallTimeout, match="waited until its deadline") as info:
                await sup.call(box.id, "echo", (1,), timeout=0.5)
            assert not isinstance(info.value, DeadlockError)


async def test_a_handler_past_its_deadline_is_cancelled_and_rolled_back(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, call_timeout=1.0) as sup:
        box = sup.S.Box("slow")
        with pytest.raises(CallTimeout, match="within 1 s"):
            await box.sleep(5)
        with pytest.raises(CallTimeout, match="within 0.5 s"):
            await box.quick(2)  # @rpc(timeout=0.5)
        assert await box.quick(0.1) == "done"
        assert await box.echo("still serving") == "still serving"


async def test_overload_refuses_quickly(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, max_mailbox=3) as sup:
        box = sup.S.Box("hot")
        results: list[object] = []

        async def call() -> None:
            try:
                results.append(await box.echo(1))
            except Overloaded as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(box.sleep, 1)
            await trio.sleep(0.1)
            for _ in range(5):
                nursery.start_soon(call)
        assert results.count(1) == 3
        assert sum(isinstance(r, Overloaded) for r in results) == 2


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


async def test_an_unsendable_result_is_an_error_and_rolls_back(sup: Supervisor) -> None:
    box = sup.S.Box("a")
    with pytest.raises(InvalidValue, match="type set"):
        await box.returns_unsendable()
    assert await box.get("written") is None


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


async def test_idle_actors_are_passivated(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, idle_timeout=10) as sup:
        a, b = sup.S.Box("a"), sup.S.Box("b")
        await a.put("k", 1)
        await b.put("k", 2)
        await trio.sleep(6)
        await b.get("k")
        await trio.sleep(8)
        assert not sup.is_active(a.id)
        assert sup.is_active(b.id)
        await trio.sleep(10)
        assert not sup.is_active(b.id)
        assert await a.get("k") == 1 and await b.get("k") == 2


async def test_the_active_cap_passivates_the_least_recently_used(tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, max_active=3) as sup:
        stubs = [sup.S.Box(f"b{i}") for i in range(5)]
        for i, stub in enumerate(stubs):
            await stub.put("i", i)
        await stubs[2].get("i")
        await stubs[0].get("i")  # reactivated: evicts the least recently used
        active = {a.address for a in sup.activations()}
        assert len(active) == 3
        assert active == {"Box/b4", "Box/b2", "Box/b0"}
        for i, stub in enumerate(stubs):
            assert await stub.get("i") == i


async def test_a_busy_actor_is_never_passivated(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with Supervisor(KINDS, tmp_path, max_active=1, idle_timeout=1) as sup:
        slow = sup.S.Box("slow")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow.sleep, 5)
            await trio.sleep(0.1)
            await sup.S.Box("other").put("k", 1)  # over the cap, but slow is mid-turn
            await trio.sleep(3)  # past the idle timeout, still mid-turn
            assert sup.is_active(slow.id)
            assert not sup.passivate(slow.id)
        assert sup.is_active(slow.id) or await slow.echo(1) == 1


async def test_on_start_runs_once_per_activation_as_a_turn(tmp_path: Path) -> None:
    Flaky.starts = 0
    async with Supervisor(KINDS, tmp_path) as sup:
        flaky = sup.S.Flaky("f")
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(flaky.ping)
        assert Flaky.starts == 1
        sup.passivate(flaky.id)
        assert await flaky.ping() == "pong"
        assert Flaky.starts == 2


async def test_a_failing_on_start_fails_the_queued_calls_and_is_retried_later(tmp_path: Path) -> None:
    Flaky.starts = 0
    async with Supervisor(KINDS, tmp_path, env={"flaky": "fail"}) as sup:
        flaky = sup.S.Flaky("f")
        errors: list[BaseException] = []

        async def ping() -> None:
            try:
                await flaky.ping()
            except ActorError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(ping)
        assert len(errors) == 3
        assert all("cannot start" in str(e) for e in errors)
        assert Flaky.starts == 1
        assert not sup.is_active(flaky.id)
        with pytest.raises(ActorError):
            await flaky.ping()
        assert Flaky.starts == 2
    async with Supervisor(KINDS, tmp_path) as sup:
        assert await sup.S.Flaky("f").ping() == "pong"


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
    assert "Box/a" in repr(sup._active[("Box", sup.S.Box("a").id.hex)])
    assert "kinds=['Box', 'Flaky', 'Prober']" in repr(sup)


def test_duplicate_namespaces_are_refused(tmp_path: Path) -> None:
    class Other(Box):
        namespace = "Box"

    with pytest.raises(DotdoError, match="two actor kinds use the namespace 'Box'"):
        Supervisor([Box, Other], tmp_path)
