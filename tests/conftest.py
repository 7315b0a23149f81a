from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.etcd_server import EtcdServer, etcd_server


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    """A real etcd of its own for the test (``tests/etcd_server.py``)."""
    async with etcd_server(tmp_path) as server:
        yield server
