from collections.abc import Iterator
from pathlib import Path

import pytest

from dotdo.storage.address import Address
from dotdo.storage.database import ActorDatabase


@pytest.fixture
def db(tmp_path: Path) -> Iterator[ActorDatabase]:
    database = ActorDatabase.open(tmp_path, Address("Test", "one"))
    yield database
    database.close()
