from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dotdo.runtime.supervisor import Supervisor
from tests.runtime.kinds import KINDS


@pytest.fixture
async def sup(tmp_path: Path) -> AsyncIterator[Supervisor]:
    async with Supervisor(KINDS, tmp_path) as supervisor:
        yield supervisor
