"""Per-stripe exclusion: writes, rebuild and resync of one stripe run one at a time.

Writes to different stripes proceed concurrently; a write to a stripe being rebuilt waits
for that stripe (claim 5). Stripes are always taken in ascending order, so two holders of
overlapping ranges cannot deadlock.

``hold_all`` takes every stripe at once in O(1) (a snapshot's quiesce, claim 10): new
acquirers that hold nothing yet wait for it; holders already in, and acquirers that hold
part of their range, finish first (it waits until no stripe is held).
"""
from contextlib import asynccontextmanager

import trio


class StripeLocks:
    def __init__(self):
        self._held: dict[int, trio.Event] = {}
        self._all: trio.Event | None = None  # set while someone holds every stripe

    def locked(self, stripe: int) -> bool:
        return stripe in self._held

    async def acquire(self, stripes: range) -> None:
        """Take every stripe of ``stripes`` (ascending). On cancellation, nothing stays held."""
        taken = []
        try:
            for s in stripes:
                while True:
                    if not taken and self._all is not None:
                        await self._all.wait()
                    elif (event := self._held.get(s)) is not None:
                        await event.wait()
                    else:
                        break
                self._held[s] = trio.Event()
                taken.append(s)
        except BaseException:
            self.release(taken)
            raise

    def release(self, stripes) -> None:
        for s in stripes:
            self._held.pop(s).set()

    @asynccontextmanager
    async def hold_all(self):
        """Hold every stripe: wait for other whole holders, block new acquirers, drain
        the holders in. On cancellation, nothing stays held."""
        while self._all is not None:
            await self._all.wait()
        mine = self._all = trio.Event()
        try:
            while self._held:
                await next(iter(self._held.values())).wait()
            yield
        finally:
            self._all = None
            mine.set()

    @asynccontextmanager
    async def hold(self, stripes: range):
        await self.acquire(stripes)
        try:
            yield
        finally:
            self.release(stripes)
