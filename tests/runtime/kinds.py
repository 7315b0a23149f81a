"""Actor kinds used by the runtime tests."""

from __future__ import annotations

from typing import Any

import trio

from dotdo import DO, rpc


class Box(DO):
    """Holds values; can misbehave on request."""

    async def put(self, key: str, value: Any) -> None:
        self.storage.put(key, value)

    async def get(self, key: str) -> Any:
        return self.storage.get(key)

    async def put_then_fail(self, key: str, value: Any) -> None:
        self.storage.put(key, value)
        raise ValueError("boom after writing")

    async def increment_slowly(self) -> int:
        value = (self.storage.get("n") or 0) + 1
        await trio.sleep(0.001)  # another turn would interleave here if turns overlapped
        self.storage.put("n", value)
        return value

    async def sleep(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "slept"

    async def call_other(self, namespace: str, name: str, method: str, *args: Any) -> Any:
        return await getattr(self.S[namespace](name), method)(*args)

    async def put_and_call(self, key: str, value: Any, namespace: str, name: str, method: str, *args: Any) -> Any:
        self.storage.put(key, value)
        return await getattr(self.S[namespace](name), method)(*args)

    async def put_call_then_fail(self, key: str, value: Any, other: str) -> None:
        self.storage.put(key, value)
        await self.S.Box(other).get("x")
        self.storage.put(key + ".after", value)
        raise RuntimeError("failed after the call")

    async def returns_unsendable(self) -> Any:
        self.storage.put("written", True)
        return {1, 2, 3}

    async def returns_ref(self, name: str) -> Any:
        return self.S.Box(name)

    async def echo(self, value: Any) -> Any:
        return value

    @rpc(timeout=0.5)
    async def quick(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "done"

    def sync_method(self) -> int:
        return 1

    async def _private(self) -> int:
        return 1


class Prober(DO):
    """Looks at another actor's database from inside a call (output gate test)."""

    async def uncommitted_of(self, name: str) -> bool:
        sup = self.S._ctx.supervisor  # type: ignore[attr-defined]
        activation = sup.activation_of(sup.S.Box(name).id)
        return activation.db.has_uncommitted


class Flaky(DO):
    """on_start fails until told otherwise (through env)."""

    starts = 0

    async def on_start(self) -> None:
        type(self).starts += 1
        self.storage.put("started", True)
        if self.env.get("flaky") == "fail":
            raise RuntimeError("cannot start")

    async def ping(self) -> str:
        return "pong"


KINDS = (Box, Prober, Flaky)
