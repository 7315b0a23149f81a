"""Actor kinds shared by the dotdo tests."""

from __future__ import annotations

import datetime as dt

from dotdo import DO


class Waker(DO):
    """Sets its alarm and a schedule, for the admin listing."""

    async def wake_in(self, seconds: float) -> str:
        return self.set_alarm(dt.timedelta(seconds=seconds)).isoformat()

    async def daily(self) -> str:
        return self.S.every("daily at 6am", self.report).next_run.isoformat()

    async def report(self) -> None:
        pass

    async def alarm(self) -> None:
        pass
