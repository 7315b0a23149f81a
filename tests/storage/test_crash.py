"""Kill a writer with SIGKILL and check what survives (durability ``normal``)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase

ADDRESS = Address("Crash", "victim")

_CHILD = """
import sys
from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase

db = ActorDatabase.open(sys.argv[1], Address("Crash", "victim"))
mode = sys.argv[2]
if mode == "committed":
    i = 0
    while True:
        with db.turn():
            db.kv.put(f"k{i:06d}", i)
            db.sql.exec("CREATE TABLE IF NOT EXISTS log(i)")
            db.sql.exec("INSERT INTO log VALUES (?)", i)
        print(i, flush=True)  # reported only after the commit returned
        i += 1
else:
    db.kv.put("before", 1)
    db.begin_turn()
    for i in range(2000):
        db.kv.put(f"turn{i}", "x" * 500)   # enough to spill pages into the WAL
    db.sql.exec("CREATE TABLE half(x); INSERT INTO half VALUES (1)")
    print("in-turn", flush=True)
    sys.stdin.read()  # wait to be killed
"""


def _spawn(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )


@pytest.mark.parametrize("after", [1, 57, 400])
def test_a_reported_commit_survives_sigkill(tmp_path: Path, after: int) -> None:
    child = _spawn(tmp_path, "committed")
    assert child.stdout is not None
    try:
        for _ in range(after):
            last = int(child.stdout.readline())
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
        if child.stdin:
            child.stdin.close()
    with ActorDatabase.open(tmp_path, ADDRESS) as db:
        assert db.kv.get(f"k{last:06d}") == last
        stored = db.kv.list(prefix="k")
        # Every key up to the last reported one is there, in order, with its SQL twin.
        assert list(stored)[: last + 1] == [f"k{i:06d}" for i in range(last + 1)]
        logged = db.sql.exec("SELECT count(*) AS n FROM log").one()["n"]
        assert logged == len(stored)
        assert db.sql.exec("PRAGMA integrity_check").one() == {"integrity_check": "ok"}


def test_an_uncommitted_turn_leaves_nothing_after_sigkill(tmp_path: Path) -> None:
    child = _spawn(tmp_path, "uncommitted")
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "in-turn"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        child.stdout.close()
        if child.stdin:
            child.stdin.close()
    with ActorDatabase.open(tmp_path, ADDRESS) as db:
        assert db.kv.list() == {"before": 1}
        assert not db.connection.table_exists(None, "half")
        assert db.sql.exec("PRAGMA integrity_check").one() == {"integrity_check": "ok"}
