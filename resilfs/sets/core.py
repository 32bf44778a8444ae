"""The set core: what every way of writing and repairing a resiliency set shares.

Like md's core (``md.c``) beside its personalities, ``SetCore`` owns the member table and
its failure marking (``mark_failed``, the one way a member becomes failed), the stored set
record (``persist``), the write intents on the members, the stripe plan (``pieces``,
``usable``, ``require``), transfers to and from members (``transfer``), codec helpers and
rebuild progress. The strategies (``mirror``, ``coded``, ``forward``, ``mapped``,
``resync``, ``scrub``) take a core and use only this public surface; they never import
each other. ``ResiliencySet`` (resiliency.py) is the facade that picks them.

Member ``i`` holds chunk ``i`` of every stripe at region offset ``stripe * chunk_size``
(members 0..K-1 data, K..K+M-1 coding; for mirror:N every member holds the same bytes).

Failures: any TransportError from a member marks that member failed; only an unreachable
appliance is dropped from the pool. Not thread-safe: use from the trio loop of the pool.
"""
import logging
import math
from collections.abc import Callable
from functools import lru_cache

import trio

from ..codec import Codec
from ..codec.geometry import map_range
from ..scheme import Scheme
from ..transport.base import ApplianceClient, ApplianceUnavailable, RegionHandle, TransportError
from . import mapview
from . import membership as set_records
from .errors import SetError, SetUnavailable
from .intents import IntentTracker
from .locks import StripeLocks
from .membership import FAILED, OK, Member, Membership
from .pool import AppliancePool

log = logging.getLogger(__name__)

# Encode/decode at least this many bytes in a worker thread. Measured (bench_sets.py): the
# thread hop costs ~65 us, an ec:4+2 encode ~7 us per 64 KiB, so below ~2 MiB the hop
# costs more than the math it moves off the loop (which then blocks it < 0.3 ms).
THREAD_MIN = 2 << 20
DIRECT_MIN = 256 << 10  # bytes a transfer must move to go through mapped views
RUN_BYTES = 4 << 20  # member bytes one scrub/resync/rebuild step handles at most

Ranges = list[tuple[RegionHandle, int, object]]


class Progress:
    """Mutable rebuild progress of one member (see status.RebuildProgress for the snapshot)."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.started = trio.current_time()


class MemberPlan:
    """Per-member (handle, region offset, buffer offset, length) runs, merged when adjacent."""

    def __init__(self):
        self.runs: dict[int, list[list]] = {}

    def add(self, index: int, handle: RegionHandle, offset: int, at: int, n: int) -> None:
        runs = self.runs.setdefault(index, [])
        if runs:
            last = runs[-1]
            if last[1] + last[3] == offset and last[2] + last[3] == at:
                last[3] += n
                return
        runs.append([handle, offset, at, n])

    def ranges(self, view: memoryview) -> dict[int, Ranges]:
        return {i: [(h, o, view[at:at + n]) for h, o, at, n in runs]
                for i, runs in self.runs.items()}


class SetCore:
    """Members, record, intents, plan and transfers of one set (see the module docstring)."""

    def __init__(self, pool: AppliancePool, membership: Membership, codec: Codec,
                 generations: dict[str, int], *, intent_granule: int | None = None,
                 thread_min: int = THREAD_MIN):
        if codec.scheme != membership.scheme or codec.chunk_size != membership.chunk_size:
            raise SetError(f"codec {codec.scheme}/{codec.chunk_size} does not match set "
                           f"{membership.scheme}/{membership.chunk_size}")
        self.pool = pool
        self.membership = membership
        self.codec = codec
        self.thread_min = thread_min
        self._generations = generations
        self.scheme: Scheme = membership.scheme
        self.k = self.scheme.data_chunks
        self.width = self.scheme.width
        self.chunk_size = membership.chunk_size
        self.stripe_size = self.k * self.chunk_size
        self.stripes = math.ceil(membership.size / self.stripe_size)
        self.mirror = self.scheme.kind == "mirror"
        self.locks = StripeLocks()
        if intent_granule is None:  # about 8 MiB of set per write intent
            intent_granule = max(1, (8 << 20) // self.stripe_size)
        self.intents = IntentTracker(self.stripe_size, self.begin_intent, self.end_intents,
                                     granule=intent_granule)
        self.progress: dict[int, Progress] = {}
        self.rebuilt_bytes = 0  # bytes written to rebuilding members, ever
        self._version = 0  # bumped by every change to the membership
        self._saved_version = 0
        self._persist_lock = trio.Lock()
        self._listeners: list[Callable[[SetCore], None]] = []
        self.destroyed = False  # records deleted: nothing may store the record again

    # -- the member table -----------------------------------------------------------

    @property
    def owner(self) -> str:
        return self.membership.owner

    @property
    def set_id(self) -> str:
        return self.membership.set_id

    @property
    def size(self) -> int:
        return self.membership.size

    @property
    def members(self) -> list[Member]:
        return self.membership.members

    @property
    def lost(self) -> int:
        return sum(m.state == FAILED for m in self.members)

    @property
    def whole(self) -> bool:
        """Every member ok with nothing dirty (the common case: no per-stripe checks)."""
        return all(m.state == OK and not m.dirty for m in self.members)

    def usable(self, stripe: int) -> list[int]:
        """Members whose copy of ``stripe`` is current."""
        return [i for i, m in enumerate(self.members) if m.usable(stripe)]

    def require(self, stripes: range) -> None:
        """SetUnavailable unless every stripe has at least K current members."""
        if all(m.state == OK and not m.dirty for m in self.members):
            return
        for s in stripes:
            if len(self.usable(s)) < self.k:
                lost = [i for i, m in enumerate(self.members) if not m.usable(s)]
                raise SetUnavailable(
                    f"set {self.set_id!r}: stripe {s} is lost (members {lost} of "
                    f"{self.width} unavailable, {self.scheme} tolerates "
                    f"{self.scheme.tolerance})")

    def add_listener(self, callback: Callable[["SetCore"], None]) -> None:
        """Call ``callback(set)`` whenever a member fails (the rebuild worker wakes up)."""
        self._listeners.append(callback)

    def changed(self) -> None:
        """Note a change to the membership that ``persist`` must store."""
        self._version += 1

    @property
    def unsaved(self) -> bool:
        """Whether the membership changed since it was last stored."""
        return self._version != self._saved_version

    async def mark_failed(self, index: int, error: Exception | str,
                          client: ApplianceClient | None = None) -> None:
        """Mark member ``index`` failed (the record is stored by the next ``persist``).

        ``error`` says why. Only an unreachable appliance (ApplianceUnavailable) is dropped
        from the pool, through ``client``, the connection that failed: one that refused (a
        freed region, a wrong key) answered, and its connection stays for other sets.
        """
        member = self.members[index]
        if member.state != FAILED:
            log.warning("set %s: member %d on %s failed: %s", self.set_id, index,
                        member.appliance, str(error) or type(error).__name__)
            member.state = FAILED
            member.failed_at = trio.current_time()
            self.progress.pop(index, None)
            self.changed()
            for callback in self._listeners:
                callback(self)
        if isinstance(error, ApplianceUnavailable):
            await self.pool.mark_failed(member.appliance, client)

    async def notice_down_members(self) -> None:
        """Mark failed every ok member whose appliance the pool no longer holds, and store
        the record if that changed it (SetUnavailable if no member takes it)."""
        down = [i for i, m in enumerate(self.members)
                if m.state == OK and not self.pool.is_up(m.appliance)]
        for index in down:
            await self.mark_failed(index, "appliance down")
        if down:
            await self.persist()

    def put_member(self, index: int, member: Member) -> None:
        """Put ``member`` (another region) in place of member ``index``; stored by the next
        ``persist``. A failed ``member`` (a snapshot split's placeholder for the region it
        takes) wakes the listeners (the rebuild worker) at once, as a failure does."""
        self.members[index] = member
        self.changed()
        if member.state == FAILED:
            for callback in self._listeners:
                callback(self)

    def start_progress(self, index: int, total: int) -> None:
        """Rebuild progress of member ``index`` starts now, ``total`` bytes to go."""
        self.progress[index] = Progress(total)

    # -- the set record ---------------------------------------------------------------

    async def persist(self) -> None:
        """Store the membership on every non-failed member before returning.

        Concurrent callers share one write. Members that fail meanwhile are marked failed
        and the record written again. Raises SetUnavailable if no member took it, and
        SetConflict if another client changed it. Does nothing once the set is destroyed.
        """
        if self.destroyed:
            return
        wanted = self._version
        async with self._persist_lock:
            while self._saved_version < wanted:
                version = self._version
                self.membership.epoch += 1
                targets = [m.appliance for m in self.members if m.state != FAILED]
                witnesses = [a for a in self.pool.up() if a not in targets]
                failed = await set_records.save(self.pool, self.membership, self._generations,
                                            targets, witnesses)
                for i, m in enumerate(self.members):
                    if m.appliance in failed:
                        await self.mark_failed(i, "could not store the set record")
                if len(failed) == len(targets):
                    raise SetUnavailable(f"set {self.set_id!r}: no member took the record")
                if not failed:
                    self._saved_version = version

    # -- calls on every live member (observer, record delete) ---------------------------

    async def each_live(self, call: Callable, what: str) -> int:
        """``await call(client)`` on every non-failed member concurrently; count successes.
        Members that fail are marked failed."""
        done = 0

        async def one(index: int, member: Member) -> None:
            nonlocal done
            client = None
            try:
                client = await self.pool.client(member.appliance)
                await call(client)
                done += 1
            except TransportError as e:
                log.debug("%s on member %d: %s", what, index, e)
                await self.mark_failed(index, e, client)

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(self.members):
                if m.state != FAILED:
                    nursery.start_soon(one, i, m)
        return done

    async def begin_intent(self, intent_id: int, extents: list[tuple[int, int]]) -> None:
        """Record a write intent on every live member (claim 19); SetUnavailable if none
        took it."""
        n = await self.each_live(
            lambda c: c.intent_begin(self.owner, self.set_id, intent_id, extents), "intent begin")
        if n == 0:
            raise SetUnavailable(f"set {self.set_id!r}: no member can record a write intent")
        if self.unsaved:
            await self.persist()

    async def end_intents(self, intent_ids: list[int]) -> None:
        await self.each_live(
            lambda c: c.intent_end(self.owner, self.set_id, intent_ids), "intent end")

    async def pending_intents(self) -> tuple[set[int], set[int]]:
        """The ids of write intents the live members hold open, and their stripes."""
        ids: set[int] = set()
        stripes: set[int] = set()

        async def ask(client) -> None:
            for intent_id, extents in await client.intent_pending(self.owner, self.set_id):
                ids.add(intent_id)
                for offset, length in extents:
                    first = max(0, offset // self.stripe_size)
                    stop = min(self.stripes, -(-(offset + length) // self.stripe_size))
                    stripes.update(range(first, stop))

        await self.each_live(ask, "intent pending")
        return ids, stripes

    # -- the stripe plan and the codec ----------------------------------------------------

    def run_stripes(self, run_bytes: int = RUN_BYTES) -> int:
        """How many stripes one step of ``run_bytes`` member bytes covers (at least 1)."""
        return max(1, run_bytes // self.chunk_size)

    def pieces(self, offset: int, length: int) -> list:
        """(stripe, data chunk, offset in chunk, length, offset in buffer) of a range."""
        return map_range(offset, length, self.k, self.chunk_size)

    def codec_for(self, length: int) -> Codec:
        """A codec of this set's scheme and backend with chunks of ``length`` bytes.

        The codes are byte-position-wise, so the same byte range of every member (for
        example many consecutive stripes, or part of a chunk) codes like one chunk.
        """
        if length == self.chunk_size:
            return self.codec
        return _codec(type(self.codec), self.scheme, length)

    async def compute(self, nbytes: int, fn, *args):
        """``fn(*args)`` in a worker thread when it handles ``nbytes`` >= thread_min."""
        if nbytes >= self.thread_min:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    # -- transfers to members ---------------------------------------------------------------

    def mapped(self, indices) -> dict | None:
        """The mapped-memory access of members ``indices`` (``mapview.mapped_clients``), or
        None unless every one's connection offers it."""
        return mapview.mapped_clients(self.pool, self.members, indices)

    async def fail_all(self, errors: dict[int, TransportError], mapped: dict) -> None:
        """Mark failed the members whose mapped access raised ``errors``."""
        for index, error in errors.items():
            await self.mark_failed(index, error, mapped[index])

    async def transfer(self, plan: dict[int, Ranges], write: bool,
                       sequential: bool = False) -> set[int]:
        """Read or write each member's ranges; return the members that failed (now marked).

        ``plan`` maps member numbers to (handle, offset, buffer) ranges. Members run
        concurrently unless ``sequential``; when every member of a large plan is mapped
        here, all copies run at once through views (``mapview.transfer``).
        """
        if not sequential and plan:
            total = sum(memoryview(b).nbytes for ranges in plan.values() for _, _, b in ranges)
            if total >= DIRECT_MIN:
                mapped = self.mapped(plan)
                if mapped is not None:
                    errors: dict[int, TransportError] = {}
                    await mapview.transfer(mapped, plan, write, errors)
                    if errors:
                        await self.fail_all(errors, mapped)
                    return set(errors)
        failed: set[int] = set()

        async def one(index: int, ranges: Ranges) -> None:
            client = None
            try:
                client = await self.pool.client(self.members[index].appliance)
                if len(ranges) == 1:
                    handle, offset, buf = ranges[0]
                    if write:
                        await client.write(handle, offset, buf)
                    else:
                        await client.read_into(handle, offset, buf)
                elif write:
                    await client.writev(ranges)
                else:
                    await client.readv(ranges)
            except TransportError as e:
                failed.add(index)
                await self.mark_failed(index, e, client)

        if sequential or len(plan) == 1:
            for index, ranges in sorted(plan.items()):
                await one(index, ranges)
            return failed
        # A copy into mapped memory is done by this process as soon as it is issued: running
        # it as a task would only add scheduling (~25 us a member) without overlapping anything.
        members, pool = self.members, self.pool
        inline = [i for i in plan if pool.mapped(members[i].appliance) is not None]
        if len(inline) == len(plan):
            for index, ranges in plan.items():
                await one(index, ranges)
            return failed
        async with trio.open_nursery() as nursery:
            for index, ranges in plan.items():
                if index not in inline:
                    nursery.start_soon(one, index, ranges)
            for index in inline:
                await one(index, plan[index])
        return failed

    async def read_run(self, stripes: range) -> tuple[list[int], dict[int, bytearray]]:
        """Every member current for all of ``stripes``, and its bytes of them (read again
        without the members that fail meanwhile)."""
        cs = self.chunk_size
        while True:
            live = [i for i, m in enumerate(self.members)
                    if all(m.usable(st) for st in stripes)]
            bufs = {i: bytearray(len(stripes) * cs) for i in live}
            base = stripes.start * cs
            plan = {i: [(self.members[i].handle, base, buf)] for i, buf in bufs.items()}
            if not await self.transfer(plan, write=False):
                return live, bufs


@lru_cache(maxsize=64)
def _codec(cls, scheme: Scheme, length: int) -> Codec:
    return cls(scheme, length)
