"""Per-stripe exclusion: writes, rebuild and resync of one stripe run one at a time.

Writes to different stripes proceed concurrently; a write to a stripe being rebuilt waits
for that stripe (claim 5). Stripes are always taken in ascending order, so two holders of
overlapping ranges cannot deadlock.
"""
from contextlib import asynccontextmanager

import trio


class StripeLocks:
    def __init__(self):
        self._held: dict[int, trio.Event] = {}

    def locked(self, stripe: int) -> bool:
        return stripe in self._held

    async def acquire(self, stripes: range) -> None:
        """Take every stripe of ``stripes`` (ascending). On cancellation, nothing stays held."""
        taken = []
        try:
            for s in stripes:
                while (event := self._held.get(s)) is not None:
                    await event.wait()
                self._held[s] = trio.Event()
                taken.append(s)
        except BaseException:
            self.release(taken)
            raise

    def release(self, stripes) -> None:
        for s in stripes:
            self._held.pop(s).set()

    @asynccontextmanager
    async def hold(self, stripes: range):
        await self.acquire(stripes)
        try:
            yield
        finally:
            self.release(stripes)
