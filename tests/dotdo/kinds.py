"""Actor kinds shared by the dotdo tests."""

from __future__ import annotations

import datetime as dt
import time

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


class Spinner(DO):
    """Computes without awaiting: past the CPU limit, or past its call's deadline."""

    async def spin(self, seconds: float) -> str:
        self.storage.put("spun", True)
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
        return "done"

    async def block(self, seconds: float) -> str:
        self.storage.put("blocked", True)
        time.sleep(seconds)
        return "done"

    async def wrote(self) -> dict[str, bool]:
        return {"spun": bool(self.storage.get("spun")), "blocked": bool(self.storage.get("blocked"))}
