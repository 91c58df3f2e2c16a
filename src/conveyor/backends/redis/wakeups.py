"""Wake-ups for event subscribers: a blocking read of the two event streams (state changes,
progress reports) past the newest entry already seen. Nothing is read from them here: a
subscriber reads its events by cursor once woken."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
import redis.asyncio as aredis

log = logging.getLogger("conveyor.redis")

_LONGEST_WAIT_S = 30.0


def _newest(found: list[Any]) -> str:
    return str(found[0][0]) if found else "0-0"


class StreamWake:
    """An asyncio subscriber's wake-up."""

    def __init__(self, url: str, options: dict[str, Any], *streams: str) -> None:
        self._client = aredis.Redis.from_url(url, **options)
        self._streams = streams
        self._seen: dict[str, str] | None = None

    async def _newest(self) -> dict[str, str]:
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xrevrange(stream, count=1)
        return {s: _newest(f) for s, f in zip(self._streams, await pipe.execute(), strict=True)}

    async def wait(self, timeout: float) -> None:
        try:
            if self._seen is None:
                self._seen = await self._newest()
            block = max(1, round(min(timeout, _LONGEST_WAIT_S) * 1000))
            if await self._client.xread(self._seen, count=1, block=block):
                self._seen = await self._newest()
        except redis.RedisError as exc:
            log.debug("conveyor.redis.subscribe_failed", exc_info=exc)
            self._seen = None
            await asyncio.sleep(timeout)

    async def close(self) -> None:
        await self._client.aclose()


class BlockingWake:
    """A blocking waiter's wake-up."""

    def __init__(self, url: str, options: dict[str, Any], *streams: str) -> None:
        self._client = redis.Redis.from_url(url, **options)
        self._streams = streams
        self._seen: dict[str, str] | None = None

    def _newest(self) -> dict[str, str]:
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xrevrange(stream, count=1)
        return {s: _newest(f) for s, f in zip(self._streams, pipe.execute(), strict=True)}

    def wait(self, timeout: float) -> None:
        try:
            if self._seen is None:
                self._seen = self._newest()
            block = max(1, round(min(timeout, _LONGEST_WAIT_S) * 1000))
            if self._client.xread(self._seen, count=1, block=block):  # type: ignore[arg-type]
                self._seen = self._newest()
        except redis.RedisError as exc:
            log.debug("conveyor.redis.subscribe_failed", exc_info=exc)
            self._seen = None
            time.sleep(timeout)

    def close(self) -> None:
        self._client.close()
