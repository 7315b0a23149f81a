"""What importing a layer loads: nothing of the layers above it, and no server.

tests/test_layout.py reads the imports each module writes; this runs them, so that an
import reached through a third party, a package's ``__init__`` or a lazy name counts too.
Each check imports in a fresh interpreter, in a folder holding nothing importable.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from tests.sources import modules

_LOADED = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(tmp_path: pathlib.Path, *names: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``names``."""
    done = subprocess.run(
        [sys.executable, "-c", _LOADED, *names], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def within(loaded: set[str], banned: tuple[str, ...]) -> list[str]:
    """The names among ``banned`` that are loaded, as packages or modules of them."""
    return [name for name in banned if any(m == name or m.startswith(name + ".") for m in loaded)]


@pytest.mark.parametrize("package", ["dotdo.storage", "dotdo.actors", "dotdo.runtime"])
def test_a_layers_package_imports_nothing(tmp_path: pathlib.Path, package: str) -> None:
    loaded = loaded_by(tmp_path, package)
    assert {m for m in loaded if m.startswith("dotdo")} == {"dotdo", package}
    assert within(loaded, ("apsw", "trio", "msgpack")) == []


def test_storage_options_needs_no_database(tmp_path: pathlib.Path) -> None:
    assert within(loaded_by(tmp_path, "dotdo.storage.options"), ("apsw", "sqlite_vec", "dotdo.storage.database")) == []


def test_the_stores_every_actor_uses_come_with_the_database(tmp_path: pathlib.Path) -> None:
    """Importing a module opens a file: one first imported in a turn would fail there
    when the process is out of file descriptors (a 500 instead of the 503 it gets)."""
    stores = {"kv", "sql", "alarms", "things", "workflow", "branches", "merge", "history"}
    assert {f"dotdo.storage.{store}" for store in stores} <= loaded_by(tmp_path, "dotdo.storage.database")


def test_storage_loads_no_layer_above_and_no_io_framework(tmp_path: pathlib.Path) -> None:
    loaded = loaded_by(tmp_path, *(name for name, _ in modules("dotdo.storage")))
    banned = ("trio", "starlette", "hypercorn", "httpx", "dotdo.runtime", "dotdo.actors", "dotdo.http", "dotdo.server")
    assert within(loaded, banned) == []


def test_runtime_loads_no_server(tmp_path: pathlib.Path) -> None:
    loaded = loaded_by(tmp_path, *(name for name, _ in modules("dotdo.runtime")))
    # httpx is allowed: the cluster's etcd client speaks etcd's JSON gateway with it.
    banned = ("starlette", "hypercorn", "dotdo.actors", "dotdo.http", "dotdo.server", "dotdo.cli")
    assert within(loaded, banned) == []
