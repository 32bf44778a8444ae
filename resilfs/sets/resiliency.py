"""The resiliency set: a byte range kept on regions of distinct appliances by a codec.

``ResiliencySet`` is the facade over the set core (``core.SetCore``: members, record,
intents, plan, transfers) that picks a strategy for each step: ``mirror`` or ``coded``
reads and writes, ``forward`` writes in forward mode, the ``mapped`` paths when the
members' regions are mapped in this process, ``resync`` at open and for rebuild runs,
``scrub``. See docs/sets.md for the on-appliance layout, the observer protocol and the
invariants.

Failure handling: any TransportError from a member marks that member failed. Reads then
reconstruct from the others; writes go to the members that are still usable for the
stripe and add the stripe to every other member's ``dirty`` set, which is stored in the
membership record before the write returns. When fewer than K members hold a stripe the
caller gets SetUnavailable, never wrong data. Every public method raises set errors only
(SetError and its subclasses; transport failures are turned into them).

Cancellation: a cancelled read changes nothing. A cancelled write may have reached some
members; its write intent is left open, so the stripes are resynced at the next open.
"""
import logging
import math
import time
import zlib

import trio

from ..codec import Codec, make_codec
from ..codec.geometry import stripes_in_range
from ..scheme import Scheme
from ..transport.base import ApplianceUnavailable, TransportError
from . import mapped, resync
from . import membership as set_records
from .coded import Coded
from .core import THREAD_MIN, SetCore
from .errors import NoPlacement, SetError, SetUnavailable, from_transport, set_error
from .forward import Forward
from .membership import FAILED, OK, REBUILDING, Member, Membership
from .mirror import Mirror
from .pool import AppliancePool
from .scrub import scrub
from .status import DEGRADED, HEALTHY, UNAVAILABLE, RebuildProgress, ScrubReport, SetStatus
from .status import REBUILDING as STATE_REBUILDING

log = logging.getLogger(__name__)

WRITE_MODES = ("parallel", "sequential", "forward")


class ResiliencySet(SetCore):
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
        super().__init__(pool, membership, codec, generations, intent_granule=intent_granule,
                         thread_min=thread_min)
        self.write_mode = write_mode
        self.last_activity = -math.inf  # trio clock of the last foreground read or write
        self.resynced_stripes = 0  # stripes the last open resynced for unfinished writes
        self._mirror = Mirror(self)
        self._coded = Coded(self)
        self._forward = Forward(self)
        self._closed = False

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
            s.changed()
            await s.persist()
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
        membership, generations = await set_records.load(pool, owner, set_id)
        if codec is None:
            codec = make_codec(membership.scheme, membership.chunk_size, membership.backend)
        s = cls(pool, membership, codec, generations, write_mode=write_mode, **options)
        for i, member in enumerate(membership.members):
            pool.add(member.appliance)  # a member the cluster list does not name yet
            if member.state != FAILED and not pool.is_up(member.appliance):
                try:
                    await pool.client(member.appliance)
                except TransportError:
                    await s.mark_failed(i, "did not answer at open")
        if s.lost > s.scheme.tolerance:
            raise SetUnavailable(f"set {set_id!r}: {s.lost} of {s.width} members lost, "
                                 f"{s.scheme} tolerates {s.scheme.tolerance}")
        with from_transport(f"set {set_id!r}"):
            s.resynced_stripes = await resync.resync_pending(s)
            await s.persist()
        return s

    async def close(self) -> None:
        """End the open write intents and store the membership. Leaves the pool open."""
        if self._closed:
            return
        self._closed = True
        with from_transport(f"set {self.set_id!r}"):
            await self.intents.end_idle(everything=True)
            await self.persist()

    async def destroy(self) -> None:
        """Delete the set: its records, then its regions (best effort on dead appliances).

        After this the set object must not be used. Appliances that are down keep their
        region and a stale record until they are wiped.
        """
        self._closed = self.destroyed = True
        name = set_records.record_name(self.set_id)
        with from_transport(f"set {self.set_id!r}"):
            await self.each_live(lambda c: c.record_delete(self.owner, name), "record delete")
            await set_records.delete(self.pool, self.owner, self.set_id, self.pool.up())
            await _free(self.pool, [m for m in self.members if m.state != FAILED])

    @property
    def closed(self) -> bool:
        """Closed or destroyed: no more I/O, and background work on it should stop."""
        return self._closed

    # -- status, scrub, rebuild -----------------------------------------------------------

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

    async def scrub(self, repair: bool = False) -> ScrubReport:
        """Check every stripe (mirrors agree, coding matches data); see scrub.scrub."""
        with from_transport(f"set {self.set_id!r}"):
            return await scrub(self, repair)

    async def rebuild_run(self, index: int, stripes: range) -> int:
        """One rebuild step of member ``index`` (resync.rebuild_run, in the members'
        mappings when they are mapped here); bytes written."""
        with from_transport(f"set {self.set_id!r}"):
            return await resync.rebuild_run(self, index, stripes, fast=mapped.rebuild)

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
        try:
            while True:
                self.require(stripes)
                if self.mirror:
                    if await self._mirror.read(offset, view, stripes):
                        return
                elif self.whole:
                    if await self._coded.read(offset, view):
                        return
                else:  # decoding needs a stable stripe: hold it against writes and rebuild
                    async with self.locks.hold(stripes):
                        self.require(stripes)
                        if await self._read_degraded(offset, view):
                            return
        except TransportError as e:
            raise set_error(f"set {self.set_id!r}", e) from e

    async def _read_degraded(self, offset: int, view: memoryview) -> bool:
        done = await mapped.read_degraded(self, offset, view)
        if done is not None:
            return done
        return await self._coded.read_degraded(offset, view)

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
        try:
            await self.locks.acquire(stripes)
            try:
                self.require(stripes)
                token = await self.intents.enter(stripes)
                # on error or cancellation the intent stays open: resync at the next open
                await self._write_locked(offset, view, stripes)
                self.intents.leave(token)
            finally:
                self.locks.release(stripes)
            await self.intents.end_idle()
        except TransportError as e:
            raise set_error(f"set {self.set_id!r}", e) from e

    async def discard(self, offset: int, length: int) -> bool:
        """Give back the appliance memory of the whole stripes in ``[offset, offset+length)``:
        every member's chunks of them read zeros from now on (zero parity matches zero
        data). Done only while every member is ok; returns False (nothing done) otherwise.
        Under the stripes' locks and a write intent, as a write: a member that fails
        meanwhile is marked failed with those stripes missed; a crash leaves them to the
        resync of the next open. Meant for ranges nobody reads (free space). Raises set
        errors only."""
        try:
            first = -(-offset // self.stripe_size)
            stripes = range(first, max((offset + length) // self.stripe_size, first))
            if not stripes or any(m.state != OK for m in self.members):
                return not stripes
            await self.locks.acquire(stripes)
            try:
                if any(m.state != OK for m in self.members):
                    return False
                token = await self.intents.enter(stripes)
                start, n = stripes.start * self.chunk_size, len(stripes) * self.chunk_size
                failed: set[int] = set()

                async def one(index: int, member: Member) -> None:
                    client = None
                    try:
                        client = await self.pool.client(member.appliance)
                        await client.discard(member.handle, start, n)
                    except TransportError as e:
                        await self.mark_failed(index, e, client)
                        failed.add(index)

                async with trio.open_nursery() as nursery:
                    for index, member in enumerate(self.members):
                        nursery.start_soon(one, index, member)
                self.intents.leave(token)
                for index in failed:
                    self.members[index].dirty.update(stripes)
                    self.changed()
                if self.unsaved:
                    await self.persist()
            finally:
                self.locks.release(stripes)
            await self.intents.end_idle()
            return not failed
        except TransportError as e:
            raise set_error(f"set {self.set_id!r}", e) from e

    async def _write_locked(self, offset: int, view: memoryview, stripes: range) -> None:
        while True:
            self.require(stripes)
            failed = await self._write_once(offset, view, stripes)
            if failed is not None:
                break
        # failed members, and those the write path says missed it, lack these stripes:
        # remember, before the ack. (A member that failed during this write counts even if
        # it was reattached meanwhile; a rebuilding member got every stripe it is current
        # for, and the others are already dirty. A member cannot return from failed while
        # the write holds its stripes: see resync.reattach.)
        for i, member in enumerate(self.members):
            if member.state == FAILED or i in failed:
                missed = [s for s in stripes if s not in member.dirty]
                if missed:
                    member.dirty.update(missed)
                    self.changed()
        self.require(stripes)
        if self.unsaved:
            await self.persist()

    async def _write_once(self, offset: int, view: memoryview,
                          stripes: range) -> set[int] | None:
        """One attempt by the strategy that fits: the members that missed the write, or
        None if it must be planned again (a member failed before anything was written)."""
        sequential = self.write_mode == "sequential"
        if self.write_mode == "forward" and self._forward.applies(stripes):
            return await self._forward.write(offset, view, stripes, sequential)
        if self.write_mode == "parallel":
            if self.mirror:
                clients = mapped.healthy_clients(self, view.nbytes)
                if clients is not None:
                    return await mapped.write_mirror(self, offset, view, clients)
            else:
                clients = mapped.full_stripes_apply(self, offset, view.nbytes, stripes)
                if clients is not None:
                    return await mapped.write_full_stripes(self, offset, view, stripes,
                                                           clients)
        if self.mirror:
            return await self._mirror.write(offset, view, stripes, sequential)
        return await self._coded.write(offset, view, stripes, sequential)

    # -- helpers ----------------------------------------------------------------------

    def _start_io(self, offset: int, buffer) -> tuple[memoryview, range]:
        """The byte view of a read or write buffer and the stripes it touches (empty for
        no bytes); SetError if the set is closed or the range is outside it."""
        view = _flat(buffer)
        if self._closed:
            raise SetError(f"set {self.set_id!r} is closed")
        if offset < 0 or offset + view.nbytes > self.size:
            raise SetError(f"range {offset}+{view.nbytes} is outside set {self.set_id!r} of "
                           f"{self.size} bytes")
        if view.nbytes:
            self.last_activity = trio.current_time()
        return view, stripes_in_range(offset, view.nbytes, self.k, self.chunk_size)


def _flat(buffer) -> memoryview:
    view = memoryview(buffer)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


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
