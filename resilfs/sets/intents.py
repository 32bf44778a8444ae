"""The client half of the observer protocol (claim 19): write intents on member appliances.

Before a multi-write touches a granule (a run of ``granule`` stripes) the set makes sure an
intent covering that granule is open on every live member: ``intent_begin`` sent to all of
them and acknowledged. Intents stay open while writes continue, like the bits of md's
write-intent bitmap, and are ended lazily, in batches: once no write is in flight in the
granule and it has been idle ``linger`` seconds, or when more than ``max_open`` are open,
or on ``flush()``. After a writer crash the next opener asks for pending intents and
resyncs exactly their stripes.

Invariant: a granule is removed from ``_open`` (no await between the idle check and the
removal) before its ``intent_end`` is sent, so a write arriving meanwhile opens a new intent.
"""
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

log = logging.getLogger(__name__)

# begin(intent_id, extents) / end(intent_ids): send to every live member; the set handles
# member failures inside them (a failed member is marked failed, the call still returns).
Begin = Callable[[int, list[tuple[int, int]]], Awaitable[None]]
End = Callable[[list[int]], Awaitable[None]]


@dataclass(eq=False)
class _Intent:
    intent_id: int
    inflight: int = 0
    idle_since: float = 0.0
    ready: trio.Event = field(default_factory=trio.Event)
    failed: BaseException | None = None


class IntentTracker:
    def __init__(self, stripe_size: int, begin: Begin, end: End, *, granule: int = 16,
                 linger: float = 0.5, max_open: int = 64):
        self._stripe_size = stripe_size
        self._begin, self._end = begin, end
        self.granule = granule
        self.linger = linger
        self.max_open = max_open
        self._open: dict[int, _Intent] = {}
        # no intent can be idle for ``linger`` before this trio time (see _take_idle)
        self._next_due = -float("inf")
        # ids unique across sessions: a returning member may still hold old pending ones
        self._ids = itertools.count(time.time_ns() // 1000)

    def granules(self, stripes: range) -> range:
        return range(stripes.start // self.granule, (stripes.stop - 1) // self.granule + 1)

    async def enter(self, stripes: range) -> list[_Intent]:
        """Make sure intents cover ``stripes``; return the token to pass to ``leave``.

        Raises whatever the begin call raised (the intent is then not counted as open).
        On cancellation the granules entered so far are left again.
        """
        entered: list[_Intent] = []
        try:
            for g in self.granules(stripes):
                intent = self._open.get(g)
                if intent is not None:
                    intent.inflight += 1
                    entered.append(intent)
                    if not intent.ready.is_set():  # its begin is still on the way
                        await intent.ready.wait()
                    if intent.failed is not None:
                        raise intent.failed
                    continue
                intent = self._open[g] = _Intent(next(self._ids), inflight=1)
                entered.append(intent)
                size = self.granule * self._stripe_size
                try:
                    await self._begin(intent.intent_id, [(g * size, size)])
                except BaseException as e:
                    intent.failed = e
                    if self._open.get(g) is intent:
                        del self._open[g]
                    raise
                finally:
                    intent.ready.set()
        except BaseException:
            self.leave(entered)
            raise
        return entered

    def leave(self, intents: list[_Intent]) -> None:
        """The writes under ``intents`` are acknowledged by every live member."""
        now = trio.current_time()
        for intent in intents:
            intent.inflight -= 1
            intent.idle_since = now

    def _take_idle(self, everything: bool) -> list[int]:
        """Remove and return the ids of intents to end now (no await inside)."""
        now = trio.current_time()
        if not everything and now < self._next_due and len(self._open) <= self.max_open:
            return []  # the common case after a write: nothing can be due yet
        idle = [(i.idle_since, g) for g, i in self._open.items()
                if i.inflight == 0 and i.ready.is_set()]
        if not everything:
            excess = len(self._open) - self.max_open
            idle.sort()
            idle = [(t, g) for n, (t, g) in enumerate(idle)
                    if n < excess or now - t >= self.linger]
        ids = [self._open.pop(g).intent_id for _, g in idle]
        # intents idle now are due at idle_since + linger; any other becomes idle later
        self._next_due = min([i.idle_since + self.linger for i in self._open.values()
                              if i.inflight == 0] + [now + self.linger])
        return ids

    async def end_idle(self, everything: bool = False) -> None:
        """End intents idle long enough (or all idle ones); errors are the end callback's."""
        ids = self._take_idle(everything)
        if ids:
            await self._end(ids)

    @property
    def open_count(self) -> int:
        return len(self._open)
