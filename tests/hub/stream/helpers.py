"""What the stream tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import OperationalError

WAIT = 10.0  # generous: only reached when something is broken


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT) -> None:
    """Poll ``check`` (plain or async) until it holds."""

    async def poll() -> None:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def db_down() -> OperationalError:
    """What a handler raises while the database refuses connections."""
    return OperationalError("UPDATE outbox", {}, ConnectionRefusedError("connection refused"))
