"""The supervisor's pending-alarm index."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dotdo.storage.alarm_index import AlarmIndex
from dotdo.storage.alarms import PendingItem


@pytest.fixture
def index(tmp_path: Path) -> Iterator[AlarmIndex]:
    opened = AlarmIndex.open(tmp_path)
    yield opened
    opened.close()


def alarm(due: float) -> PendingItem:
    return PendingItem("", "alarm", None, due, 0)


def test_lower_never_moves_an_entry_later(index: AlarmIndex) -> None:
    index.lower("A", "h1", "one", alarm(100.0))
    index.lower("A", "h1", "one", alarm(200.0))
    assert [e.due for e in index.entries()] == [100.0]
    index.lower("A", "h1", "one", alarm(50.0))
    assert [e.due for e in index.entries()] == [50.0]


def test_replace_sets_exactly_what_the_actor_has(index: AlarmIndex) -> None:
    index.lower("A", "h1", "one", alarm(100.0))
    index.replace("A", "h1", "one", [alarm(300.0), PendingItem("s", "schedule", "hourly", 400.0, 0)])
    assert [(e.item, e.due, e.spec) for e in index.entries()] == [("", 300.0, None), ("s", 400.0, "hourly")]
    index.replace("A", "h1", "one", [])
    assert index.count() == 0


def test_due_filters_by_time_and_namespace_in_order(index: AlarmIndex) -> None:
    index.lower("A", "h1", None, alarm(30.0))
    index.lower("A", "h2", None, alarm(10.0))
    index.lower("B", "h3", None, alarm(20.0))
    index.lower("A", "h4", None, alarm(99.0))
    assert [e.hex for e in index.due(50.0, ["A", "B"], 10)] == ["h2", "h3", "h1"]
    assert [e.hex for e in index.due(50.0, ["A"], 10)] == ["h2", "h1"]
    assert [e.hex for e in index.due(50.0, ["A", "B"], 2)] == ["h2", "h3"]
    assert index.next_after(50.0, ["A"]) == 99.0
    assert index.next_after(99.0, ["A", "B"]) is None
    assert index.next_after(0.0, ["C"]) is None


def test_postpone_moves_only_earlier_entries(index: AlarmIndex) -> None:
    index.replace("A", "h1", None, [alarm(10.0), PendingItem("s", "schedule", "x", 500.0, 0)])
    index.postpone("A", "h1", 100.0)
    assert sorted(e.due for e in index.entries()) == [100.0, 500.0]


def test_entries_page_by_cursor(index: AlarmIndex) -> None:
    for i in range(5):
        index.lower("A", f"h{i}", None, alarm(float(i)))
    first = index.entries(limit=2)
    last = first[-1]
    rest = index.entries(limit=10, after=(last.namespace, last.hex, last.item))
    assert [e.hex for e in first + rest] == [f"h{i}" for i in range(5)]
    assert index.entries("B") == []


def test_the_index_survives_reopening(tmp_path: Path) -> None:
    with_index = AlarmIndex.open(tmp_path)
    with_index.lower("A", "h1", "name", alarm(5.0))
    with_index.close()
    again = AlarmIndex.open(tmp_path)
    try:
        assert [(e.hex, e.name, e.due) for e in again.entries()] == [("h1", "name", 5.0)]
    finally:
        again.close()
