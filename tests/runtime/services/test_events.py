"""Durable events: send, subscriptions, delivery, de-duplication, retries, dead letters.

Real supervisors on a temporary directory, driven by trio's MockClock (the supervisor's
wall clock follows it), so backoffs and delays take no real time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from dotdo import DO, S, ActorError, DotdoError, Event, InvalidInput, InvalidValue, Retry, on
from dotdo.runtime.services.events import EventService
from dotdo.runtime.core.ids import id_from_name
from dotdo.runtime.supervisor import Supervisor
from dotdo.storage.database import ActorDatabase

T0 = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.timezone.utc).timestamp()


def wall() -> float:
    return T0 + trio.current_time()


FAST = {"clock": wall, "event_retry_initial": 0.1, "event_retry_max": 1.0, "event_max_attempts": 3}


class Customer(DO):
    async def create(self, name: str, fail: bool = False) -> int:
        self.storage.put("name", name)
        sent = self.S.send("Customer.created", {"name": name})
        if fail:
            raise ValueError("rolled back")
        return sent.subscribers

    async def emit(self, path: str, data: Any = None, priority: int = 0, delay: float | None = None) -> int:
        return self.S.send(path, data, priority=priority, delay=delay).subscribers

    async def emit_many(self, items: list[list[Any]]) -> None:
        for path, data, priority in items:
            self.S.send(path, data, priority=priority)

    async def emit_with_ids(self) -> str:
        return self.S.send("Customer.traced", None, trace_id="trace-1", correlation_id="corr-1").id

    async def bad(self, what: str) -> None:
        if what == "path":
            self.S.send("not a path")
        elif what == "wildcard":
            self.S.send("Customer.*")
        elif what == "priority":
            self.S.send("Customer.x", priority=5000)
        elif what == "delay":
            self.S.send("Customer.x", delay=-1)
        elif what == "data":
            self.S.send("Customer.x", {1, 2})
        elif what == "retry":
            self.S.send("Customer.x", retry=3)  # type: ignore[arg-type]

    async def logs(self) -> dict[str, Any]:
        return {
            "events": [(e.verb, e.trace_id, e.correlation_id) for e in self.S.events()],
            "actions": [(a.verb, a.durability, a.status) for a in self.S.actions()],
            "dead": [(d.path, d.method, d.attempts, d.error) for d in self.S.dead_letters()],
        }

    async def replay(self) -> int:
        return self.S.replay()


class Mailer(DO):
    """Listens to Customer.created from its class body; records what it handled."""

    @S.on.Customer.created
    async def welcome(self, event: Event) -> None:
        seen = self.storage.get("seen") or []
        seen.append(
            {
                "path": event.path,
                "data": event.data,
                "source": event.source.id.name,
                "attempt": event.attempt,
                "trace": event.trace_id,
            }
        )
        self.storage.put("seen", seen)

    async def seen(self) -> list[dict[str, Any]]:
        return self.storage.get("seen") or []


class Recorder(DO):
    """Subscribes at run time; records handled events in order; can be told to fail."""

    runs: int
    plan: dict[str, Any]

    def __init__(self) -> None:
        self.runs = 0  # in memory: counts rolled-back runs too
        self.plan = {"count": 0, "sleep": 0.0}  # in memory: a failing run rolls back storage

    async def listen(self, pattern: str, priority: int = 0, timeout: float | None = None) -> str:
        sub = self.S.on[pattern.split(".")[0]][pattern.split(".")[1]].with_(priority=priority, timeout=timeout)(self._record)
        return sub.pattern

    async def listen_then_fail(self, pattern: str) -> None:
        noun, verb = pattern.split(".")
        self.S.on[noun][verb](self._record)
        raise ValueError("no")

    async def stop(self, pattern: str) -> int:
        return self.S.off(pattern)

    async def fail_next(self, count: int, sleep: float = 0.0) -> None:
        self.plan = {"count": count, "sleep": sleep}

    async def _record(self, event: Event) -> None:
        self.runs += 1
        plan = self.plan
        if plan["sleep"]:
            await trio.sleep(plan["sleep"])
        if plan["count"] > 0:
            plan["count"] -= 1
            raise RuntimeError("handler failed")
        log = self.storage.get("log") or []
        log.append([event.path, event.data, event.attempt, wall()])
        self.storage.put("log", log)

    async def log(self) -> list[list[Any]]:
        return self.storage.get("log") or []

    async def count_runs(self) -> int:
        return self.runs

    async def subscriptions(self) -> list[str]:
        return [f"{s.pattern}:{s.method}" for s in self.S.subscriptions()]


class Auditor(DO):
    @on["*"].created
    async def any_created(self, event: Event) -> None:
        self._note("any.created", event)

    @on.Order["*"]
    async def order_anything(self, event: Event) -> None:
        self._note("Order.any", event)

    def _note(self, label: str, event: Event) -> None:
        notes = self.storage.get("notes") or []
        notes.append([label, event.path])
        self.storage.put("notes", notes)

    async def notes(self) -> list[list[str]]:
        return self.storage.get("notes") or []


class Relay(DO):
    """Handles an event by sending another: the trace id carries over."""

    @on.Customer.traced
    async def relay(self, event: Event) -> None:
        self.S.send("Relay.forwarded", {"from": event.id})


class Sink(DO):
    @on.Relay.forwarded
    async def sink(self, event: Event) -> None:
        self.storage.put("got", [event.trace_id, event.correlation_id])

    async def got(self) -> Any:
        return self.storage.get("got")


KINDS = [Customer, Mailer, Recorder, Auditor, Relay, Sink]


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    with trio.fail_after(timeout):
        while True:
            value = await check()
            if value:
                return value
            await trio.sleep(0.01)


async def wake(sup: Supervisor, actor: tuple[str, str]) -> None:
    """Activate an actor so its class-level subscriptions are registered."""
    await sup.run_turn(id_from_name(*actor), _noop)


async def test_a_sent_event_reaches_a_class_subscriber_once(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await wake(sup, ("Mailer", "m"))
        assert await sup.S.Customer("alice").create("alice") == 1
        seen = await eventually(sup.S.Mailer("m").seen)
        assert seen == [{"path": "Customer.created", "data": {"name": "alice"}, "source": "alice", "attempt": 1, "trace": seen[0]["trace"]}]
        await trio.sleep(5)
        assert len(await sup.S.Mailer("m").seen()) == 1
        logs = await sup.S.Customer("alice").logs()
        assert logs["events"][0][0] == "Customer.created"
        assert logs["actions"] == [["Customer.created", "send", "completed"]]


async def test_the_event_source_is_a_stub_of_the_sender(autojump_clock: MockClock, tmp_path: Path) -> None:
    class Echo(DO):
        @on.Customer.created
        async def back(self, event: Event) -> None:
            self.storage.put("name", await event.source.logs())

        async def name(self) -> Any:
            return self.storage.get("name")

    async with Supervisor([*KINDS, Echo], tmp_path, **FAST) as sup:
        await sup.S.Echo("e").name()
        await sup.S.Customer("bob").create("bob")
        logs = await eventually(sup.S.Echo("e").name)
        assert logs["events"][0][0] == "Customer.created"


async def test_nothing_is_sent_when_the_sending_turn_rolls_back(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await wake(sup, ("Mailer", "m"))
        with pytest.raises(ActorError):
            await sup.S.Customer("carol").create("carol", fail=True)
        await trio.sleep(10)
        assert await sup.S.Mailer("m").seen() == []
        assert (await sup.S.Customer("carol").logs())["events"] == []


async def test_an_event_committed_before_a_crash_is_delivered_after_restart(autojump_clock: MockClock, tmp_path: Path) -> None:
    with trio.CancelScope() as crash:
        async with Supervisor(KINDS, tmp_path, **FAST) as sup:
            await wake(sup, ("Mailer", "m"))
            await sup.S.Customer("dave").create("dave")
            crash.cancel()  # no checkpoint between the commit and here: nothing delivered
    customer = id_from_name("Customer", "dave")
    with ActorDatabase.open(tmp_path, customer.address) as db:
        assert db.workflow.queued() == 1
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        seen = await eventually(sup.S.Mailer("m").seen)
        await trio.sleep(5)
        assert [s["data"] for s in await sup.S.Mailer("m").seen()] == [{"name": "dave"}]
        assert seen[0]["attempt"] == 1


async def test_a_delivery_repeated_after_a_lost_acknowledgement_has_one_effect(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash = trio.CancelScope()

    async def settle_never(self: EventService, deliveries: Any, outcomes: Any) -> None:
        crash.cancel()  # the receiver committed; the sender dies before it records that
        await trio.sleep_forever()

    with crash:
        async with Supervisor(KINDS, tmp_path, **FAST) as sup:
            await wake(sup, ("Mailer", "m"))
            monkeypatch.setattr(EventService, "_settle", settle_never)
            await sup.S.Customer("erin").create("erin")
            await trio.sleep_forever()
    monkeypatch.undo()
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        customer = sup.S.Customer("erin")
        await eventually(lambda: _completed(customer))
        assert [s["data"] for s in await sup.S.Mailer("m").seen()] == [{"name": "erin"}]


async def _completed(customer: Any) -> bool:
    logs = await customer.logs()
    return bool(logs["actions"]) and logs["actions"][0][2] == "completed"


async def test_failed_deliveries_are_retried_then_dead_lettered_then_replayed(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        await recorder.listen("Customer.flaky")
        await recorder.fail_next(3)  # as many as the attempts: every try fails
        customer = sup.S.Customer("frank")
        started = wall()
        await customer.emit("Customer.flaky", 1)
        logs = await eventually(lambda: _dead(customer))
        assert await recorder.count_runs() == 3
        assert wall() - started >= 0.1 + 0.2  # backoff between the tries
        [(path, method, attempts, error)] = logs["dead"]
        assert (path, method, attempts) == ("Customer.flaky", "_record", 3)
        assert error == "RuntimeError: handler failed"
        assert logs["actions"] == [["Customer.flaky", "send", "failed"]]
        assert await recorder.log() == []
        assert await customer.replay() == 1
        log = await eventually(recorder.log)
        assert [entry[:3] for entry in log] == [["Customer.flaky", 1, 1]]  # fresh tries
        logs = await customer.logs()
        assert logs["dead"] == [] and logs["actions"] == [["Customer.flaky", "send", "completed"]]


async def _dead(customer: Any) -> Any:
    logs = await customer.logs()
    return logs if logs["dead"] else None


async def test_a_retry_succeeds_and_the_handler_sees_the_attempt(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        await recorder.listen("Customer.flaky")
        await recorder.fail_next(1)
        await sup.S.Customer("gina").emit("Customer.flaky", "x")
        log = await eventually(recorder.log)
        assert [entry[:3] for entry in log] == [["Customer.flaky", "x", 2]]


async def test_higher_priority_goes_first_and_delay_defers(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        for pattern in ("Task.low", "Task.high", "Task.later"):
            await recorder.listen(pattern)
        customer = sup.S.Customer("hal")
        start = wall()
        await customer.emit("Task.later", "later", 100, 5.0)
        await customer.emit_many([["Task.low", "low", 0], ["Task.low", "low2", 0], ["Task.high", "high", 10]])
        log = await eventually(lambda: _at_least(recorder, 4))
        assert [entry[1] for entry in log] == ["high", "low", "low2", "later"]
        assert log[3][3] - start >= 5.0
        assert log[2][3] - start < 5.0


async def _at_least(recorder: Any, count: int) -> Any:
    log = await recorder.log()
    return log if len(log) >= count else None


async def test_events_of_one_path_arrive_in_order_even_across_retries(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        await recorder.listen("Seq.step")
        await recorder.listen("Other.thing")
        await recorder.fail_next(1)  # the first event fails once, then goes through
        customer = sup.S.Customer("ivy")
        await customer.emit_many([["Seq.step", i, 0] for i in range(20)] + [["Other.thing", "x", 0]])
        log = await eventually(lambda: _at_least(recorder, 21))
        steps = [entry[1] for entry in log if entry[0] == "Seq.step"]
        assert steps == list(range(20))
        # The other path was not held back by the failing one.
        assert log[0][0] == "Other.thing"


async def test_wildcard_subscriptions(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await wake(sup, ("Auditor", "a"))
        customer = sup.S.Customer("jo")
        await customer.emit("Customer.created")
        await customer.emit("Order.created")
        await customer.emit("Order.shipped")
        await customer.emit("Customer.deleted")
        notes = await eventually(lambda: _notes(sup, 4))
        assert sorted(notes) == sorted(
            [["any.created", "Customer.created"], ["any.created", "Order.created"], ["Order.any", "Order.created"], ["Order.any", "Order.shipped"]]
        )


async def _notes(sup: Supervisor, count: int) -> Any:
    notes = await sup.S.Auditor("a").notes()
    return notes if len(notes) >= count else None


async def test_any_event_with_a_double_wildcard(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("all")
        await recorder.listen("*.*")
        await sup.S.Customer("kim").emit("Anything.happened", 7)
        assert (await eventually(recorder.log))[0][:2] == ["Anything.happened", 7]


async def test_subscribing_and_unsubscribing_at_run_time(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        customer = sup.S.Customer("lee")
        assert await customer.emit("Topic.news", 1) == 0  # nobody listens yet
        with pytest.raises(ActorError):
            await recorder.listen_then_fail("Topic.news")  # rolled back: not subscribed
        assert await recorder.subscriptions() == []
        assert await customer.emit("Topic.news", 2) == 0
        assert await recorder.listen("Topic.news") == "Topic.news"
        assert await recorder.subscriptions() == ["Topic.news:_record"]
        assert await customer.emit("Topic.news", 3) == 1
        await eventually(recorder.log)
        assert await recorder.stop("Topic.news") == 1
        assert await customer.emit("Topic.news", 4) == 0
        await trio.sleep(5)
        assert [entry[1] for entry in await recorder.log()] == [3]


async def test_subscribing_another_actor_through_its_stub(autojump_clock: MockClock, tmp_path: Path) -> None:
    class Board(DO):
        async def pin(self, event: Event) -> None:
            self.storage.put("pinned", event.data)

        async def pinned(self) -> Any:
            return self.storage.get("pinned")

    async with Supervisor([*KINDS, Board], tmp_path, **FAST) as sup:
        sub = await S.on.Notice.posted.with_(priority=3)(sup.S.Board("b").pin)
        assert (sub.pattern, sub.method, sub.priority) == ("Notice.posted", "pin", 3)
        await sup.S.Customer("mo").emit("Notice.posted", "hello")
        assert await eventually(sup.S.Board("b").pinned) == "hello"


async def test_an_unsubscribed_receiver_drops_a_delivery_already_queued(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        await recorder.listen("Late.news")
        await sup.S.Customer("ned").emit("Late.news", 1, 0, 5.0)  # delivered in 5 s
        await recorder.stop("Late.news")
        await trio.sleep(10)
        assert await recorder.log() == []
        assert (await sup.S.Customer("ned").logs())["actions"] == [["Late.news", "send", "completed"]]


async def test_a_handler_past_its_timeout_is_retried(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        recorder = sup.S.Recorder("r")
        await recorder.listen("Slow.job", timeout=1.0)
        await recorder.fail_next(0, sleep=2.0)
        await sup.S.Customer("ola").emit("Slow.job")
        logs = await eventually(lambda: _dead(sup.S.Customer("ola")))
        assert "CallTimeout" in logs["dead"][0][3]
        assert await recorder.log() == []


async def test_trace_and_correlation_ids_follow_the_cause(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await wake(sup, ("Sink", "s"))
        # Relay subscribes itself when activated: activate it through a delivery-less call.
        relay_id = id_from_name("Relay", "r")
        await sup.run_turn(relay_id, _noop)
        await sup.S.Customer("pat").emit_with_ids()
        assert await eventually(sup.S.Sink("s").got) == ["trace-1", "corr-1"]


async def _noop(instance: Any) -> None:
    return None


@pytest.mark.parametrize("what", ["path", "wildcard", "priority", "delay", "retry"])
async def test_bad_sends_are_refused_and_send_nothing(autojump_clock: MockClock, tmp_path: Path, what: str) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        with pytest.raises(InvalidInput):
            await sup.S.Customer("q").bad(what)
        assert (await sup.S.Customer("q").logs())["events"] == []


async def test_data_that_cannot_travel_is_refused(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        with pytest.raises(InvalidValue):
            await sup.S.Customer("q").bad("data")


async def test_send_outside_a_turn_and_bad_subscriptions(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with Supervisor(KINDS, tmp_path, **FAST) as sup:
        await sup.S.Customer("r").logs()
        instance = sup.activation_of(id_from_name("Customer", "r")).instance
        with pytest.raises(DotdoError, match="inside one of its own turns"):
            instance.S.send("Customer.created")
        with pytest.raises(InvalidInput):
            S.on.Customer.created(lambda event: None)
        with pytest.raises(InvalidInput):
            S.on["not valid"].created
        with pytest.raises(InvalidInput):
            Retry(attempts=0)


async def test_subscriptions_reach_senders_in_another_supervisor_on_the_same_directory(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # Two supervisors sharing the subscription index (as worker processes do): a
    # subscription made in one is seen by a sender in the other.
    async with Supervisor(KINDS, tmp_path / "shared", **FAST) as first:
        await first.S.Recorder("r").listen("Shared.thing")
        async with Supervisor(KINDS, tmp_path / "shared", **FAST) as second:
            assert [s.method for s in second.subscriptions.index.matching("Shared", "thing")] == ["_record"]
