"""The resiliency set: a byte range kept on regions of distinct appliances by a codec.

Member ``i`` holds chunk ``i`` of every stripe at region offset ``stripe * chunk_size``
(members 0..K-1 data, K..K+M-1 coding; for mirror:N every member holds the same bytes).
See docs/sets.md for the on-appliance layout, the observer protocol and the invariants.

Failure handling, in one place: any TransportError from a member marks that member failed
(``_fail``). Reads then reconstruct from the others; writes go to the members that are
still usable for the stripe and add the stripe to every other member's ``dirty`` set, which
is stored in the membership record before the write returns. When fewer than K members
hold a stripe the caller gets SetUnavailable, never wrong data.

Cancellation: a cancelled read changes nothing. A cancelled write may have reached some
members; its write intent is left open, so the stripes are resynced at the next open.
"""
import logging
import math
import time
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

import trio

from ..codec import Codec, make_codec
from ..codec.geometry import map_range, stripes_in_range
from ..scheme import Scheme
from ..transport.base import ApplianceClient, ApplianceUnavailable, RegionHandle, TransportError
from ..transport.shm import ShmClient
from . import direct
from . import membership as records
from .errors import NoPlacement, SetError, SetUnavailable
from .forward import forward_write
from .intents import IntentTracker
from .locks import StripeLocks
from .membership import FAILED, OK, REBUILDING, Member, Membership
from .pool import AppliancePool
from .scratch import scratch
from .status import DEGRADED, HEALTHY, UNAVAILABLE, RebuildProgress, SetStatus
from .status import REBUILDING as STATE_REBUILDING
from .stripewrite import plan_coded_write

if TYPE_CHECKING:
    from .repair import ScrubReport

log = logging.getLogger(__name__)

WRITE_MODES = ("parallel", "sequential", "forward")
# Encode/decode at least this many bytes in a worker thread. Measured (bench_sets.py): the
# thread hop costs ~65 us, an ec:4+2 encode ~7 us per 64 KiB, so below ~2 MiB the hop
# costs more than the math it moves off the loop (which then blocks it < 0.3 ms).
THREAD_MIN = 2 << 20

Ranges = list[tuple[RegionHandle, int, object]]


class _Progress:
    """Mutable rebuild progress of one member (see RebuildProgress for the snapshot)."""

    def __init__(self, total: int):
        self.total = total
        self.done = 0
        self.started = trio.current_time()


class ResiliencySet:
    """Read and write a byte range of ``size`` bytes kept by the set's members.

    Build one with ``await ResiliencySet.create(...)`` or ``await ResiliencySet.open(...)``;
    many sets share one AppliancePool and one RebuildWorker. Not thread-safe: use from the
    trio loop that owns the pool.
    """

    def __init__(self, pool: AppliancePool, membership: Membership, codec: Codec,
                 generations: dict[str, int], *, write_mode: str = "parallel",
                 intent_granule: int | None = None, thread_min: int = THREAD_MIN):
        if write_mode not in WRITE_MODES:
            raise SetError(f"unknown write mode {write_mode!r}; use {', '.join(WRITE_MODES)}")
        if codec.scheme != membership.scheme or codec.chunk_size != membership.chunk_size:
            raise SetError(f"codec {codec.scheme}/{codec.chunk_size} does not match set "
                           f"{membership.scheme}/{membership.chunk_size}")
        self.pool = pool
        self.membership = membership
        self.codec = codec
        self.write_mode = write_mode
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
        self.intents = IntentTracker(self.stripe_size, self._intent_begin, self._intent_end,
                                     granule=intent_granule)
        self.last_activity = -math.inf  # trio clock of the last foreground read or write
        self.progress: dict[int, _Progress] = {}
        self._version = 0  # bumped by every change to the membership
        self._saved_version = 0
        self._persist_lock = trio.Lock()
        self._listeners: list[Callable[[ResiliencySet], None]] = []
        self._rotor = 0
        self.resynced_stripes = 0  # stripes the last open resynced for unfinished writes
        self.rebuilt_bytes = 0  # bytes written to rebuilding members, ever
        self._closed = False
        self._destroyed = False  # records deleted: nothing may store the record again

    # -- construction -------------------------------------------------------------------

    @classmethod
    async def create(cls, pool: AppliancePool, scheme: Scheme | str, codec: Codec | None,
                     size: int, owner: str, set_id: str, *, write_mode: str = "parallel",
                     appliances: list[str] | None = None, chunk_size: int = 64 * 1024,
                     **options) -> "ResiliencySet":
        """Allocate one region on each of ``scheme.width`` distinct live appliances.

        ``codec`` None makes the default codec with ``chunk_size``; ``appliances`` limits
        and orders the candidates (default: the pool's, rotated by the set id to spread
        sets). Raises NoPlacement when not enough appliances can take a region (regions
        already allocated are freed), SetConflict when the set exists.
        """
        scheme = scheme if isinstance(scheme, Scheme) else Scheme.parse(scheme)
        if codec is None:
            codec = make_codec(scheme, chunk_size)
        if size < 1:
            raise SetError(f"set size must be positive, got {size}")
        if codec.scheme != scheme or write_mode not in WRITE_MODES:
            raise SetError(f"codec {codec.scheme} for a {scheme} set, or unknown write mode "
                           f"{write_mode!r}")
        stripe_size = scheme.data_chunks * codec.chunk_size
        region_size = math.ceil(size / stripe_size) * codec.chunk_size
        candidates = list(appliances) if appliances is not None else list(pool.addresses)
        if appliances is None and candidates:
            start = zlib.crc32(f"{owner}/{set_id}".encode()) % len(candidates)
            candidates = candidates[start:] + candidates[:start]
            candidates.sort(key=lambda a: not pool.is_up(a))
        members = await _allocate(pool, candidates, scheme.width, region_size, owner)
        # epochs start at the clock, so a leftover record of a deleted set is always older
        membership = Membership(owner, set_id, scheme, codec.backend, codec.chunk_size, size,
                                members, epoch=time.time_ns() // 1000)
        s = cls(pool, membership, codec, {m.appliance: 0 for m in members},
                write_mode=write_mode, **options)
        try:
            s._version += 1
            await s._persist()
        except BaseException:
            with trio.CancelScope(shield=True):
                await _free(pool, members)
            raise
        log.info("created set %s/%s: %s, %d bytes on %s", owner, set_id, scheme, size,
                 ", ".join(m.appliance for m in members))
        return s

    @classmethod
    async def open(cls, pool: AppliancePool, owner: str, set_id: str, *,
                   codec: Codec | None = None, write_mode: str = "parallel",
                   **options) -> "ResiliencySet":
        """Open an existing set: read its membership, then resync what a crash left behind.

        Members whose appliance does not answer are marked failed. Stripes named by write
        intents that never ended (a writer died mid multi-write) are made consistent
        (mirrors agree, coding matches data) before this returns. Raises SetNotFound,
        SetConflict, or SetUnavailable when too few members answer.
        """
        membership, generations = await records.load(pool, owner, set_id)
        if codec is None:
            codec = make_codec(membership.scheme, membership.chunk_size, membership.backend)
        s = cls(pool, membership, codec, generations, write_mode=write_mode, **options)
        for i, member in enumerate(membership.members):
            pool.add(member.appliance)  # a member the cluster list does not name yet
            if member.state != FAILED and not pool.is_up(member.appliance):
                try:
                    await pool.client(member.appliance)
                except TransportError:
                    s._mark_failed(i, "did not answer at open")
        if s.lost > s.scheme.tolerance:
            raise SetUnavailable(f"set {set_id!r}: {s.lost} of {s.width} members lost, "
                                 f"{s.scheme} tolerates {s.scheme.tolerance}")
        from .repair import resync_pending  # repair builds on this module
        await resync_pending(s)
        await s._persist()
        return s

    async def close(self) -> None:
        """End the open write intents and store the membership. Leaves the pool open."""
        if self._closed:
            return
        self._closed = True
        await self.intents.end_idle(everything=True)
        await self._persist()

    async def destroy(self) -> None:
        """Delete the set: its records, then its regions (best effort on dead appliances).

        After this the set object must not be used. Appliances that are down keep their
        region and a stale record until they are wiped.
        """
        self._closed = self._destroyed = True
        name = records.record_name(self.set_id)
        await self._each_live(lambda c: c.record_delete(self.owner, name), "record delete")
        await records.delete(self.pool, self.owner, self.set_id, self.pool.up())  # witnesses
        await _free(self.pool, [m for m in self.members if m.state != FAILED])

    # -- membership state ---------------------------------------------------------------

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

    def add_listener(self, callback: Callable[["ResiliencySet"], None]) -> None:
        """Call ``callback(set)`` whenever a member fails (the rebuild worker wakes up)."""
        self._listeners.append(callback)

    def changed(self) -> None:
        """Note a change to the membership that ``_persist`` must store."""
        self._version += 1

    def swap_member(self, index: int, member: Member) -> None:
        """Put ``member`` in the place of member ``index`` (a snapshot's split: a placeholder
        for the region it takes); the record is stored by the next ``_persist``. A failed
        ``member`` wakes the listeners (the rebuild worker) at once, as a failure does."""
        self.members[index] = member
        self.changed()
        if member.state == FAILED:
            for callback in self._listeners:
                callback(self)

    def _mark_failed(self, index: int, reason: str) -> None:
        member = self.members[index]
        if member.state == FAILED:
            return
        log.warning("set %s: member %d on %s failed: %s", self.set_id, index,
                    member.appliance, reason)
        member.state = FAILED
        member.failed_at = trio.current_time()
        self.progress.pop(index, None)
        self.changed()
        for callback in self._listeners:
            callback(self)

    async def notice_down_members(self) -> None:
        """Mark failed every ok member whose appliance the pool no longer holds, and store
        the record if that changed it (SetUnavailable if no member takes it)."""
        down = [i for i, m in enumerate(self.members)
                if m.state == OK and not self.pool.is_up(m.appliance)]
        for index in down:
            self._mark_failed(index, "appliance down")
        if down:
            await self._persist()

    @property
    def closed(self) -> bool:
        """Closed or destroyed: no more I/O, and background work on it should stop."""
        return self._closed

    async def _fail(self, index: int, error: Exception, client: ApplianceClient | None) -> None:
        """Mark member ``index`` failed. Only an unreachable appliance is dropped from the
        pool: one that refused (a freed region, a wrong key) answered, and its connection
        stays for the other sets that use it."""
        self._mark_failed(index, str(error) or type(error).__name__)
        if isinstance(error, ApplianceUnavailable):
            await self.pool.mark_failed(self.members[index].appliance, client)

    def usable(self, stripe: int) -> list[int]:
        """Members whose copy of ``stripe`` is current."""
        return [i for i, m in enumerate(self.members) if m.usable(stripe)]

    def _require(self, stripes: range) -> None:
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

    async def _persist(self) -> None:
        """Store the membership on every non-failed member before returning.

        Concurrent callers share one write. Members that fail meanwhile are marked failed
        and the record written again. Raises SetUnavailable if no member took it, and
        SetConflict if another client changed it. Does nothing once the set is destroyed.
        """
        if self._destroyed:
            return
        wanted = self._version
        async with self._persist_lock:
            while self._saved_version < wanted:
                version = self._version
                self.membership.epoch += 1
                targets = [m.appliance for m in self.members if m.state != FAILED]
                witnesses = [a for a in self.pool.up() if a not in targets]
                failed = await records.save(self.pool, self.membership, self._generations,
                                            targets, witnesses)
                for i, m in enumerate(self.members):
                    if m.appliance in failed:
                        self._mark_failed(i, "could not store the set record")
                if len(failed) == len(targets):
                    raise SetUnavailable(f"set {self.set_id!r}: no member took the record")
                if not failed:
                    self._saved_version = version

    # -- observer (claim 19) ----------------------------------------------------------

    async def _each_live(self, call: Callable, what: str) -> int:
        """``await call(client)`` on every non-failed member concurrently; count successes."""
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
                await self._fail(index, e, client)

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(self.members):
                if m.state != FAILED:
                    nursery.start_soon(one, i, m)
        return done

    async def _intent_begin(self, intent_id: int, extents: list[tuple[int, int]]) -> None:
        n = await self._each_live(
            lambda c: c.intent_begin(self.owner, self.set_id, intent_id, extents), "intent begin")
        if n == 0:
            raise SetUnavailable(f"set {self.set_id!r}: no member can record a write intent")
        if self._version != self._saved_version:
            await self._persist()

    async def _intent_end(self, intent_ids: list[int]) -> None:
        await self._each_live(
            lambda c: c.intent_end(self.owner, self.set_id, intent_ids), "intent end")

    # -- status -----------------------------------------------------------------------

    def status(self) -> SetStatus:
        """A snapshot of health, failed members and rebuild progress (no I/O)."""
        failed = tuple(i for i, m in enumerate(self.members) if m.state == FAILED)
        rebuilding = tuple(i for i, m in enumerate(self.members) if m.state == REBUILDING)
        if len(failed) > self.scheme.tolerance:
            state = UNAVAILABLE
        elif rebuilding:
            state = STATE_REBUILDING
        elif failed:
            state = DEGRADED
        else:
            state = HEALTHY
        now = trio.current_time()
        progress = tuple(
            RebuildProgress.measure(i, self.members[i].appliance, p.done, p.total,
                                    now - p.started)
            for i, p in sorted(self.progress.items()))
        return SetStatus(self.set_id, str(self.scheme), self.size, state,
                         tuple(m.appliance for m in self.members), failed, rebuilding,
                         progress, self.intents.open_count)

    async def scrub(self, repair: bool = False) -> "ScrubReport":
        """Check every stripe (mirrors agree, coding matches data); see repair.scrub."""
        from .repair import scrub
        return await scrub(self, repair)

    # -- helpers ----------------------------------------------------------------------

    def _start_io(self, offset: int, buffer) -> tuple[memoryview, range]:
        """The byte view of a read or write buffer and the stripes it touches (empty for
        no bytes); SetError if the set is closed or the range is outside it."""
        view = _flat(buffer)
        self._check_range(offset, view.nbytes)
        if view.nbytes:
            self.last_activity = trio.current_time()
        return view, stripes_in_range(offset, view.nbytes, self.k, self.chunk_size)

    def _check_range(self, offset: int, length: int) -> None:
        if self._closed:
            raise SetError(f"set {self.set_id!r} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SetError(f"range {offset}+{length} is outside set {self.set_id!r} of "
                           f"{self.size} bytes")

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

    async def transfer(self, plan: dict[int, Ranges], write: bool,
                       sequential: bool = False) -> set[int]:
        """Read or write each member's ranges; return the members that failed (now marked).

        ``plan`` maps member numbers to (handle, offset, buffer) ranges. Members run
        concurrently unless ``sequential``.
        """
        if not sequential and plan:
            total = sum(memoryview(b).nbytes for ranges in plan.values() for _, _, b in ranges)
            if total >= direct.DIRECT_MIN:
                clients = direct.shm_clients(self, plan)
                if clients is not None:  # every member mapped here: copy them all at once
                    return await direct.transfer(self, plan, write, clients)
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
                await self._fail(index, e, client)

        if sequential or len(plan) == 1:
            for index, ranges in sorted(plan.items()):
                await one(index, ranges)
            return failed
        # A shm copy is done by this process as soon as it is issued: running it as a task
        # would only add scheduling (~25 us a member) without overlapping anything.
        inline = [i for i in plan if isinstance(
            self.pool.connected(self.members[i].appliance), ShmClient)]
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

    # -- reads ------------------------------------------------------------------------

    async def read_into(self, offset: int, buffer) -> None:
        """Fill ``buffer`` with the set's bytes at ``offset``, reconstructing lost chunks.

        Raises SetError for a range outside the set and SetUnavailable when a stripe has
        fewer than K current members. Members that fail meanwhile are marked failed and
        the read is retried from the others.
        """
        view, stripes = self._start_io(offset, buffer)
        if not stripes:
            return
        while True:
            self._require(stripes)
            if self.mirror or all(m.state == OK and not m.dirty for m in self.members):
                if await self._read_direct(offset, view, stripes):
                    return
                continue
            # decoding needs a stable stripe: hold it against writes and rebuild
            async with self.locks.hold(stripes):
                self._require(stripes)
                if await self._read_degraded(offset, view, stripes):
                    return

    async def _read_direct(self, offset: int, view: memoryview, stripes: range) -> bool:
        """Read each byte from one member holding it; False if a member failed."""
        plan = _Plan()
        if self.mirror:
            self._rotor += 1
            first, count = stripes.start, len(stripes)
            for s in stripes:
                usable = self.usable(s)
                # a long read spreads over the mirrors in contiguous blocks; short ones rotate
                pick = (s - first) * len(usable) // count if count > 1 else self._rotor
                index = usable[pick % len(usable)]
                lo = max(offset, s * self.stripe_size)
                hi = min(offset + view.nbytes, (s + 1) * self.stripe_size)
                plan.add(index, self.members[index].handle, lo, lo - offset, hi - lo)
        else:
            for s, c, a, n, at in self._pieces(offset, view.nbytes):
                plan.add(c, self.members[c].handle, s * self.chunk_size + a, at, n)
        return not await self.transfer(plan.ranges(view), write=False)

    def _pieces(self, offset: int, length: int) -> list:
        """(stripe, data chunk, offset in chunk, length, offset in buffer) of a range."""
        return map_range(offset, length, self.k, self.chunk_size)

    async def _read_degraded(self, offset: int, view: memoryview, stripes: range) -> bool:
        """Read current data chunks directly and decode the others; False if a member failed.

        A decode source that the read fetches anyway (the same bytes of a current data
        chunk) is taken from the caller's buffer instead of being read twice.
        """
        done = await direct.read_degraded(self, offset, view)
        if done is not None:
            return done
        plan: dict[int, Ranges] = {}
        pieces = list(self._pieces(offset, view.nbytes))
        direct_ = {}
        for s, c, a, n, at in pieces:
            member = self.members[c]
            if member.usable(s):
                plan.setdefault(c, []).append((member.handle, s * self.chunk_size + a,
                                               view[at:at + n]))
                direct_[(s, c)] = (a, n, at)
        decodes = []  # (chunk, length, codec input {member: buffer}, output view)
        taken = []
        for s, c, a, n, at in pieces:
            if (s, c) in direct_:
                continue
            sources = self.codec.minimum_to_decode({c}, set(self.usable(s)))
            inputs = {}
            for i in sources:
                if direct_.get((s, i), (None,))[:2] == (a, n):
                    inputs[i] = view[direct_[(s, i)][2]:direct_[(s, i)][2] + n]
                else:
                    inputs[i] = scratch.take(n)
                    taken.append(inputs[i])
                    plan.setdefault(i, []).append((self.members[i].handle,
                                                   s * self.chunk_size + a, inputs[i]))
            decodes.append((c, n, inputs, view[at:at + n]))
        try:
            if await self.transfer(plan, write=False):
                return False

            def decode_all():
                for c, n, inputs, out in decodes:
                    self.codec_for(n).decode(inputs, [c], {c: out})

            await self.compute(sum(d[1] for d in decodes) * self.k, decode_all)
        finally:
            scratch.give(*taken)
        return True

    # -- writes -----------------------------------------------------------------------

    async def write(self, offset: int, data) -> None:
        """Write ``data`` at ``offset``; return once every live member has it (claim 4).

        Writes to the same stripe are serialized, to different stripes concurrent; a
        stripe under rebuild is waited for (claim 5). Members that fail are marked failed
        and the stripes they missed recorded; raises SetUnavailable when a stripe would
        be left on fewer than K members, SetError for a range outside the set.
        """
        view, stripes = self._start_io(offset, data)
        if not stripes:
            return
        await self.locks.acquire(stripes)
        try:
            self._require(stripes)
            token = await self.intents.enter(stripes)
            # on error or cancellation the intent stays open: resync at the next open
            await self._write_locked(offset, view, stripes)
            self.intents.leave(token)
        finally:
            self.locks.release(stripes)
        await self.intents.end_idle()

    async def _write_locked(self, offset: int, view: memoryview, stripes: range) -> None:
        while True:
            self._require(stripes)
            if self.write_mode == "forward":
                failed = await forward_write(self, offset, view, stripes)
            elif self.mirror:
                failed = await self._write_mirror(offset, view, stripes)
            else:
                failed = await self._write_coded(offset, view, stripes)
            if failed is not None:
                break
        # failed members, and those the write path says missed it, lack these stripes:
        # remember, before the ack. (A member that failed during this write counts even if
        # it was reattached meanwhile; a rebuilding member got every stripe it is current
        # for, and the others are already dirty.)
        for i, member in enumerate(self.members):
            if member.state == FAILED or i in failed:
                missed = [s for s in stripes if s not in member.dirty]
                if missed:
                    member.dirty.update(missed)
                    self.changed()
        self._require(stripes)
        if self._version != self._saved_version:
            await self._persist()

    async def _write_mirror(self, offset: int, view: memoryview,
                            stripes: range) -> set[int] | None:
        """Write every current member; return the members that failed, or None (nothing
        written) if a member failed before the copies."""
        if self.write_mode == "parallel":
            clients = direct.healthy_clients(self, view.nbytes)
            if clients is not None:
                return await direct.write_mirror(self, offset, view, clients)
        plan = _Plan()
        end = offset + view.nbytes
        for i, member in enumerate(self.members):
            if member.state == FAILED:
                continue
            for s in stripes:
                if member.usable(s):
                    lo = max(offset, s * self.stripe_size)
                    hi = min(end, (s + 1) * self.stripe_size)
                    plan.add(i, member.handle, lo, lo - offset, hi - lo)
        return await self.transfer(plan.ranges(view), write=True,
                                   sequential=self.write_mode == "sequential")

    async def _write_coded(self, offset: int, view: memoryview,
                           stripes: range) -> set[int] | None:
        """Full stripes: encode. Partial: parity delta, or read-modify-write when degraded.

        Returns the members that failed, or None (nothing written) if a member failed
        while old contents were read.
        """
        if self.write_mode == "parallel":
            clients = direct.full_stripes_apply(self, offset, view.nbytes, stripes)
            if clients is not None:
                return await direct.write_full_stripes(self, offset, view, stripes, clients)
        planned = await plan_coded_write(self, offset, view, stripes)
        if planned is None:
            return None
        plan, buffers = planned
        try:
            return await self.transfer(plan, write=True,
                                       sequential=self.write_mode == "sequential")
        finally:
            scratch.give(*buffers)


@lru_cache(maxsize=64)
def _codec(cls, scheme: Scheme, length: int) -> Codec:
    return cls(scheme, length)


def _flat(buffer) -> memoryview:
    view = memoryview(buffer)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


class _Plan:
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


async def _allocate(pool: AppliancePool, candidates: list[str], width: int, size: int,
                    owner: str) -> list[Member]:
    """One region on each of ``width`` distinct appliances from ``candidates``, in order."""
    members: list[Member] = []
    for address in candidates:
        if len(members) == width:
            break
        if any(m.appliance == address for m in members):
            continue
        client = None
        try:
            client = await pool.client(address)
            handle = await client.alloc(size, owner)
        except TransportError as e:
            log.warning("cannot allocate %d bytes on %s: %s", size, address, e)
            if client is not None and isinstance(e, ApplianceUnavailable):
                await pool.mark_failed(address, client)
            continue
        members.append(Member(address, handle.region_id, handle.key, handle.size))
    if len(members) < width:
        with trio.CancelScope(shield=True):
            await _free(pool, members)
        raise NoPlacement(f"need {width} distinct appliances with {size} bytes free, "
                          f"found {len(members)} among {len(candidates)}")
    return members


async def _free(pool: AppliancePool, members: list[Member]) -> None:
    """Free members' regions, best effort (a dead appliance keeps its region)."""
    for m in members:
        try:
            client = await pool.client(m.appliance)
            await client.free(m.handle)
        except TransportError as e:
            log.warning("could not free region %d on %s: %s", m.region_id, m.appliance, e)
