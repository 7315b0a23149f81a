"""A module that imports in the parent but fails in every worker (for the start-up
failure test of ``dotdo serve --workers``)."""

import os

from dotdo import DO

if os.environ.get("DOTDO_WORKER"):
    raise RuntimeError("this module refuses to load in a worker")


class Fragile(DO):
    async def get(self) -> int:
        return 1
