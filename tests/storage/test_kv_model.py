"""A state machine drives random KV operations, turns and savepoints against a dict model."""

from pathlib import Path
import tempfile
from typing import Any

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase

keys = st.text(alphabet="a\x00é🙂", max_size=2)  # few keys, so bounds hit them
values = st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5) | st.binary(max_size=5) | st.lists(
    st.integers(0, 3), max_size=3
)


def _model_list(
    model: dict[str, Any],
    prefix: str | None,
    start: str | None,
    start_after: str | None,
    end: str | None,
    limit: int | None,
    reverse: bool,
) -> dict[str, Any]:
    items = sorted(model.items(), key=lambda kv: kv[0].encode(), reverse=reverse)
    out = {}
    for k, v in items:
        if prefix is not None and not k.startswith(prefix):
            continue
        b = k.encode()
        if start is not None and b < start.encode():
            continue
        if start_after is not None and b <= start_after.encode():
            continue
        if end is not None and b >= end.encode():
            continue
        out[k] = v
    if limit is not None:
        out = dict(list(out.items())[:limit])
    return out


class KVMachine(RuleBasedStateMachine):
    """The model is a list of dicts: committed state, then one layer per open turn/savepoint."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.db = ActorDatabase.open(Path(self.dir.name), Address("Model", "x"))
        self.committed: dict[str, Any] = {}
        self.current: dict[str, Any] = {}
        self.in_turn = False
        self.savepoints: list[tuple[Any, dict[str, Any]]] = []

    def teardown(self) -> None:
        for ctx, _ in reversed(self.savepoints):
            ctx.__exit__(None, None, None)
        self.db.close()
        self.dir.cleanup()

    @rule(key=keys, value=values)
    def put(self, key: str, value: Any) -> None:
        self.db.kv.put(key, value)
        self.current[key] = value
        self._autocommit()

    @rule(entries=st.dictionaries(keys, values, max_size=5))
    def put_many(self, entries: dict[str, Any]) -> None:
        self.db.kv.put(entries)
        self.current.update(entries)
        self._autocommit()

    @rule(key=keys)
    def delete(self, key: str) -> None:
        assert self.db.kv.delete(key) == (key in self.current)
        self.current.pop(key, None)
        self._autocommit()

    @rule(batch=st.lists(keys, max_size=5))
    def delete_many(self, batch: list[str]) -> None:
        expected = len({k for k in batch if k in self.current})
        assert self.db.kv.delete(batch) == expected
        for k in batch:
            self.current.pop(k, None)
        self._autocommit()

    @rule(batch=st.lists(keys, max_size=5))
    def get_many(self, batch: list[str]) -> None:
        expected = {k: self.current[k] for k in sorted(set(batch), key=str.encode) if k in self.current}
        got = self.db.kv.get(batch)
        assert got == expected and list(got) == list(expected)

    @rule(
        prefix=st.none() | keys,
        start=st.none() | keys,
        start_after=st.none() | keys,
        end=st.none() | keys,
        limit=st.none() | st.integers(1, 4),
        reverse=st.booleans(),
    )
    def list_(self, prefix: str | None, start: str | None, start_after: str | None, end: str | None, limit: int | None, reverse: bool) -> None:
        if start is not None and start_after is not None:
            start_after = None
        got = self.db.kv.list(prefix=prefix, start=start, start_after=start_after, end=end, limit=limit, reverse=reverse)
        expected = _model_list(self.current, prefix, start, start_after, end, limit, reverse)
        assert list(got.items()) == list(expected.items())

    @precondition(lambda self: not self.in_turn and not self.savepoints)
    @rule()
    def begin_turn(self) -> None:
        self.db.begin_turn()
        self.in_turn = True

    @precondition(lambda self: self.in_turn and not self.savepoints)
    @rule()
    def commit(self) -> None:
        self.db.commit()
        self.committed = dict(self.current)

    @precondition(lambda self: self.in_turn and not self.savepoints)
    @rule(commit=st.booleans())
    def end_turn(self, commit: bool) -> None:
        if commit:
            self.db.commit()
            self.committed = dict(self.current)
        else:
            self.db.rollback()
            self.current = dict(self.committed)
        self.db.end_turn()
        self.in_turn = False

    @precondition(lambda self: len(self.savepoints) < 3)
    @rule()
    def open_savepoint(self) -> None:
        ctx = self.db.transaction()
        ctx.__enter__()
        self.savepoints.append((ctx, dict(self.current)))

    @precondition(lambda self: bool(self.savepoints))
    @rule(fail=st.booleans())
    def close_savepoint(self, fail: bool) -> None:
        ctx, before = self.savepoints.pop()
        if fail:
            try:
                raise KeyError("rolled back")
            except KeyError as exc:
                try:
                    ctx.__exit__(KeyError, exc, exc.__traceback__)
                except KeyError:
                    pass
            self.current = before
        else:
            ctx.__exit__(None, None, None)
        self._autocommit()

    @invariant()
    def matches_model(self) -> None:
        assert self.db.kv.list() == dict(sorted(self.current.items(), key=lambda kv: kv[0].encode()))

    def _autocommit(self) -> None:
        if not self.in_turn and not self.savepoints:
            self.committed = dict(self.current)

    @precondition(lambda self: not self.in_turn and not self.savepoints)
    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = ActorDatabase.open(Path(self.dir.name), Address("Model", "x"))
        self.current = dict(self.committed)


KVMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestKVModel = KVMachine.TestCase
