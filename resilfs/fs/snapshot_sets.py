"""The sets of snapshots after the call: their records, then their redundancy.

A snapshot call journals each snapshot set's membership record (``SNAPSET_RECORD``, one
commit for all the sets) and returns once that commit is durable; the sets are served from
memory at once (``adopt``). The rest happens here, in the background, a set at a time and
under the snapshots' lock (no snapshot is created or deleted meanwhile):

1. ``resilfs.sets.split_clone.store``: the source set's record, which no longer names the
   split-off region, then the snapshot set's record, on the appliances.
2. Once the source set has regained the member the split took (or after ``SOURCE_WAIT``
   seconds), the snapshot set is handed to the rebuild worker, which replaces its
   placeholders and copies the split-off region onto them: the snapshot then has the
   source's redundancy. Live data first, the snapshot's copy after it, one rebuild at a
   time; nothing of it runs inside the snapshot call.

At mount, before any set is opened, ``recover`` does step 1 for what a crash left undone,
from the journal; ``run`` then opens every snapshot set (handing it to the rebuild worker):
one left without redundancy gets it, and all are watched for failures like data sets. A
delete first finishes step 1 for its sets (``store_now``): the source must stop naming a
region before the region is freed.

Failures: a record that cannot be stored is logged and tried again every ``RETRY``
seconds (and by the next mount's ``recover``); a set that cannot be opened is logged and
left for its next use. ``stop()`` cancels the worker between or inside steps; an
interrupted step is redone (each is idempotent).
"""
import logging
import math

import trio

from ..sets import ResiliencySet, SetError, list_sets, split_clone
from ..sets.membership import REBUILDING
from ..transport.base import TransportError
from .backing import SetBacking, set_name
from .errors import DataUnavailable
from .state import State

log = logging.getLogger(__name__)

SOURCE_WAIT = 60.0  # seconds a snapshot set waits for its source set to regain redundancy
POLL = 0.2  # seconds between looks at the source sets while a snapshot set waits
RETRY = 5.0  # seconds between attempts to store a record that could not be stored


class SnapshotSets:
    """Background work on snapshot sets (see the module docstring): ``run()`` in the mount's
    nursery, ``stop()`` at unmount; ``recover()`` at mount before any set is opened."""

    def __init__(self, backing: SetBacking, state: State, lock: trio.Lock):
        self.backing = backing
        self.state = state
        self.lock = lock  # the snapshots' lock
        self._unstored: dict[int, tuple[ResiliencySet, ResiliencySet]] = {}
        self._unwatched: dict[int, tuple[int | None, float]] = {}  # set -> (source, since)
        self._store_after = -math.inf  # trio clock: the next attempt of step 1
        self._wakeup = trio.Event()
        self._scope = trio.CancelScope()

    def adopt(self, set_id: int, source_id: int, source: ResiliencySet,
              snapset: ResiliencySet) -> None:
        """Serve snapshot set ``set_id`` (taken from set ``source_id``) from memory now;
        store its records, then give it redundancy, in the background."""
        self.backing.adopt(set_id, snapset)
        self._unstored[set_id] = (source, snapset)
        self._unwatched[set_id] = (source_id, trio.current_time())
        self._store_after = -math.inf
        self._wakeup.set()

    async def store_now(self, set_ids) -> None:
        """Step 1 for these sets, now; the caller holds the snapshots' lock. Failures are
        logged (the set stays queued)."""
        for set_id in set_ids:
            pair = self._unstored.get(set_id)
            if pair is None:
                continue
            try:
                await split_clone.store(*pair)
            except SetError as exc:
                log.warning("snapshot set %d: cannot store its record yet: %s", set_id, exc)
                continue
            del self._unstored[set_id]

    async def recover(self) -> None:
        """Store the records of snapshot sets that a crash kept off the appliances (see
        ``resilfs.sets.split_clone.recover``). Call at mount before any set is opened.
        Failures are logged; the next mount tries again."""
        if not self.state.snapset_records:
            return
        pool, owner = self.backing.pool, self.backing.owner
        present = set(await list_sets(pool, owner))
        for set_id, (source, record) in sorted(self.state.snapset_records.items()):
            if set_name(set_id) in present:
                continue
            try:
                await split_clone.recover(pool, owner, set_name(set_id), set_name(source), record)
            except (SetError, TransportError, ValueError) as exc:
                log.warning("snapshot set %d: cannot store its record from the journal: %s",
                            set_id, exc)

    async def run(self) -> None:
        with self._scope:
            now = trio.current_time()
            for set_id in sorted(self.state.snapsets):  # opened at mount
                self._unwatched.setdefault(set_id, (None, now))
            while True:
                self._wakeup = trio.Event()
                if self._unstored and trio.current_time() >= self._store_after:
                    for set_id in sorted(self._unstored):  # a snapshot call may come between
                        async with self.lock:
                            await self.store_now([set_id])
                    self._store_after = trio.current_time() + RETRY
                ready = [set_id for set_id, (source, since) in self._unwatched.items()
                         if set_id not in self._unstored
                         and self._source_settled(source, since)]
                for set_id in ready:
                    del self._unwatched[set_id]
                    await self._watch(set_id)
                if not ready:
                    wait = min(POLL if self._unwatched else math.inf,
                               self._store_after - trio.current_time() if self._unstored
                               else math.inf)
                    with trio.move_on_after(max(wait, 0)):
                        await self._wakeup.wait()

    def stop(self) -> None:
        self._scope.cancel()

    def _source_settled(self, source: int | None, since: float) -> bool:
        """Whether the source set no longer regains a split-off member (or waited enough)."""
        if source is None or trio.current_time() - since >= SOURCE_WAIT:
            return True
        s = self.backing.sets().get(source)
        return s is None or not any(m.state == REBUILDING or split_clone.placeholder(m)
                                    for m in s.members)

    async def _watch(self, set_id: int) -> None:
        """Hand snapshot set ``set_id`` to the rebuild worker, opening it if need be."""
        async with self.lock:
            if set_id not in self.state.snapsets:
                return  # its snapshot was deleted
            s = self.backing.sets().get(set_id)
            if s is not None:
                self.backing.watch(s)
                return
            try:
                await self.backing.get(set_id)
            except DataUnavailable as exc:
                log.warning("snapshot set %d: %s (its redundancy waits for its next use)",
                            set_id, exc)
