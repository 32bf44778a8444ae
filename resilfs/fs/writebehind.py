"""Write-behind: small writes of file data wait in memory and reach the sets later, in
whole blocks (a page cache inside the daemon, as S3QL's block cache).

What is cached. Each set's bytes are cut into blocks of ``block_size`` bytes (a multiple of
the data stripe: a whole block is a full-stripe write). ``write_behind`` (FileData's
writes, into space the file maps or has reserved) writes the whole blocks a write covers
through (already full-stripe writes) and copies the rest, a write shorter than a block or
the partial blocks at either end of a longer one, into its blocks, and returns; so a run
of writes that do not fall on block boundaries (the kernel's writeback) still reaches the
set as full-stripe writes. A write through (``write``; also truncate's zeroing) updates
the bytes of the blocks it touches that are cached, so that a later flush never writes
older bytes over it (space freed by one file and reused by another). The journal makes a
MAP record durable only after the data it maps (``FileData.flush_mapped``), so a crash
still leaves space whose data never reached the sets free.

Reads. ``read_into`` reads the set and lays the cached bytes over what it read; a range
the cache holds entirely is not read from the set. The blocks are looked up when the read
starts and their bytes copied when it ends: a block leaves the cache only after its bytes
are on the set, so a read never returns bytes older than a write that completed before it
started.

Flushing a block. If the cache holds all of its bytes: one write of the whole block. If
only a few ranges are dirty: those ranges. Otherwise the block is read from the set, the
cached bytes laid over it and the whole block written; the cache then holds all of it, so
its next flush reads nothing. The flusher (``run``, in the mount's nursery) flushes blocks
that have been dirty for ``age`` seconds, and the oldest ones whenever dirty blocks take
more than half of ``limit`` bytes; writers wait (``write_behind`` returns later) while the
cache holds more than ``limit`` bytes and no clean block can be dropped. Clean blocks stay
for merges and reads until memory is needed or ``CLEAN_KEEP`` seconds passed. ``flush``
writes a file's ranges or everything at once (fsync, fsyncdir, scrub, journal commits for
the blocks their MAP records map, unmount: ``aclose`` flushes before it closes the sets).
Inside ``writing_through()`` (a snapshot being taken) everything cached is flushed and
every write goes through, so that quiescing the sets stops every write.

Locks. Flushing a block and writing through it hold the block's lock (a ``StripeLocks`` per
set, one lock per block index, taken in ascending order), so a flush never writes bytes it
read before a write through landed. Deferred writes and reads take no lock; a deferred
write copies all its data before its first await.

Failures. A flush that fails beyond the set's tolerance (DataUnavailable; any other error
is logged with its traceback and treated alike) loses the block's dirty bytes, as the
kernel drops pages whose writeback failed, and tells ``on_lost`` which set bytes they were
(the file ranges mapping them then read as EIO, never as what the set held before: see
``FileData.lost_writes``). The loss is remembered for the mount's lifetime:
``flush`` of ranges that touch a lost block raises DataUnavailable (fsync answers EIO), and
later writes into that set go through, so that they fail at once. Failures
within tolerance are invisible, as without the cache (the set degrades). Cancellation of a
flush puts its bytes back as dirty; nothing is lost and the cache stays consistent at
every await.
"""
import logging
import math
from collections.abc import Callable
from contextlib import asynccontextmanager
from time import perf_counter_ns

import trio

from ..sets.locks import StripeLocks
from .data import Backing, run_all
from .errors import DataUnavailable
from .intervals import Intervals
from .latency import Latency

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 128 << 20  # bytes of cached blocks (mount option --cache-size)
DEFAULT_AGE = 0.5  # seconds a block stays dirty before the flusher writes it
CLEAN_KEEP = 5.0  # seconds a clean block stays cached for reads and merges
MIN_BLOCK = 64 << 10  # mirror sets (a page is their stripe) use blocks of at least this
FLUSH_PARALLEL = 8  # blocks written at once
SPARSE_RANGES = 2  # at most this many dirty ranges in less than half a block: written
# as they are (partial-stripe updates); more are merged into a whole-block write


def block_size_for(stripe_size: int) -> int:
    """The cache's block size for sets of ``stripe_size``: whole stripes, >= MIN_BLOCK."""
    return stripe_size * max(1, math.ceil(MIN_BLOCK / stripe_size))


class _Block:
    """The cached bytes of one block of one set."""

    __slots__ = ("set_id", "index", "start", "data", "valid", "dirty", "since")

    def __init__(self, set_id: int, index: int, start: int, length: int):
        self.set_id, self.index, self.start = set_id, index, start
        self.data = bytearray(length)
        self.valid = Intervals()  # bytes of ``data`` that are current (the set's or newer)
        self.dirty = Intervals()  # current bytes the set lacks and no flush is writing
        self.since = 0.0  # when it became dirty (or clean)

    @property
    def key(self) -> tuple[int, int]:
        return self.set_id, self.index

    def whole(self) -> bool:
        return self.valid.covers(0, len(self.data))

    def copy_into(self, view: memoryview, offset: int) -> None:
        """Copy the current bytes that fall in ``view`` (set bytes from ``offset``) into it."""
        lo = max(offset, self.start) - self.start
        hi = min(offset + len(view), self.start + len(self.data)) - self.start
        data = memoryview(self.data)
        for a, b in self.valid.within(lo, hi):
            at = self.start + a - offset
            view[at:at + b - a] = data[a:b]


class WriteBehind(Backing):
    """A write-behind cache over ``inner`` (see the module docstring).

    ``set_size(set_id)`` gives a set's size (the last block of a set may be short).
    ``run()`` must be running while the cache is used: writers over the limit wait for it.
    ``on_lost(set_id, ranges)``, if set, is called (no await) with the ``(offset, length)``
    set ranges whose dirty bytes a failed flush lost (``FileData.lost_writes``).
    """

    def __init__(self, inner: Backing, block_size: int, set_size: Callable[[int], int], *,
                 limit: int = DEFAULT_LIMIT, age: float = DEFAULT_AGE):
        self.inner = inner
        self.block_size = block_size
        self.limit = limit
        self.age = age
        self._set_size = set_size
        self._sizes: dict[int, int] = {}
        self._blocks: dict[tuple[int, int], _Block] = {}
        self._dirty: dict[tuple[int, int], _Block] = {}  # oldest first
        self._clean: dict[tuple[int, int], _Block] = {}  # least recently cleaned first
        self._flushing: set[tuple[int, int]] = set()  # blocks being written back
        self._memory = 0  # bytes of all cached blocks
        self._dirty_memory = 0  # bytes of the blocks in _dirty
        self._locks: dict[int, StripeLocks] = {}  # set id -> the locks of its blocks
        self._lost: dict[int, set[int]] = {}  # set id -> blocks whose dirty bytes were lost
        self._failures = 0
        self._writing_through = 0  # callers inside writing_through()
        self.on_lost: Callable[[int, list[tuple[int, int]]], None] | None = None
        self._wake = trio.Event()  # for the flusher: a block became dirty, or pressure
        self._sleep: trio.CancelScope | None = None  # the flusher's sleep in ``_idle``
        self._room = trio.Event()  # for writers over the limit: a flush ended
        self._scope = trio.CancelScope()
        self.flush_latency = Latency()  # of each block written back (for the metrics)

    # -- Backing ----------------------------------------------------------------------
    async def create_set(self, set_id: int, size: int) -> None:
        await self.inner.create_set(set_id, size)
        self._sizes[set_id] = size

    async def free_bytes(self) -> int:
        return await self.inner.free_bytes()

    async def discard(self, set_id: int, offset: int, length: int) -> None:
        """Passed on: cached bytes of the range (free space) may still be flushed over the
        zeros later, which costs memory, not correctness."""
        await self.inner.discard(set_id, offset, length)

    async def read_into(self, set_id: int, offset: int, buffer) -> None:
        """The set's bytes with the cached ones laid over them."""
        view = memoryview(buffer).cast("B")
        if not self._blocks or not view:
            await self.inner.read_into(set_id, offset, view)
            return
        first, last = self._indexes(offset, len(view))
        blocks = [b for b in map(self._blocks.get, ((set_id, i) for i in range(first, last + 1)))
                  if b is not None]
        if not blocks:
            await self.inner.read_into(set_id, offset, view)
            return
        if len(blocks) < last - first + 1 or not all(
                b.valid.covers(max(offset, b.start) - b.start,
                               min(offset + len(view), b.start + len(b.data)) - b.start)
                for b in blocks):
            await self.inner.read_into(set_id, offset, view)
        for block in blocks:
            block.copy_into(view, offset)

    async def write(self, set_id: int, offset: int, data) -> None:
        """Write through to the set, then update the cached blocks it touches."""
        view = memoryview(data).cast("B")
        first, last = self._indexes(offset, len(view))
        keys = [(set_id, i) for i in range(first, last + 1)]
        async with self._hold(set_id, range(first, last + 1)):
            await self.inner.write(set_id, offset, view)
            for key in keys:
                block = self._blocks.get(key)
                if block is not None:
                    lo = max(offset, block.start)
                    hi = min(offset + len(view), block.start + len(block.data))
                    block.data[lo - block.start:hi - block.start] = view[lo - offset:hi - offset]
                    block.valid.add(lo - block.start, hi - block.start)

    async def write_behind(self, writes) -> None:
        """Write the whole blocks that the writes cover through; copy the rest (a write
        shorter than a block, the partial blocks at either end of a longer one) into the
        cache, all before any await, to be flushed with its neighbours' bytes as whole
        blocks; then wait while the cache is over its limit. Writes into a set that lost
        deferred writes go through (DataUnavailable at once)."""
        through = []
        bs = self.block_size
        for set_id, offset, data in writes:
            view = memoryview(data).cast("B")
            if set_id in self._lost or self._writing_through:
                through.append((set_id, offset, view))
                continue
            end = offset + len(view)
            lo, hi = -(-offset // bs) * bs, end // bs * bs  # the whole blocks: [lo, hi)
            if hi <= lo:
                self._absorb(set_id, offset, view)
                continue
            if offset < lo:
                self._absorb(set_id, offset, view[:lo - offset])
            through.append((set_id, lo, view[lo - offset:hi - offset]))
            if hi < end:
                self._absorb(set_id, hi, view[hi - offset:])
        if through:
            await run_all(self.write, through)
        await self._wait_for_room()

    async def flush(self, ranges=None) -> None:
        """Write the dirty blocks of ``ranges`` (None: all) and wait for flushes in flight.

        Writes through in flight are not waited for (they have not completed; a snapshot
        commits its journal batch while writes through wait for its quiesced sets). Raises
        DataUnavailable if a block of ``ranges`` lost its dirty bytes (now or earlier in
        this mount), or, for None, if a flush failed meanwhile. Cancellation leaves the
        blocks not yet written dirty.
        """
        failures = self._failures
        pending = set(self._dirty) | self._flushing
        await self._flush_keys(pending if ranges is None else self._within(pending, ranges))
        if ranges is None:
            if self._failures != failures:
                raise DataUnavailable(f"{self._failures - failures} deferred writes to the "
                                      f"data sets were lost")
            return
        lost = self._within({(s, i) for s, indexes in self._lost.items() for i in indexes},
                            ranges)
        if lost:
            set_id, index = min(lost)
            raise DataUnavailable(f"data set {set_id}: deferred writes at "
                                  f"{index * self.block_size} were lost")

    @asynccontextmanager
    async def writing_through(self):
        """See ``Backing.writing_through``: every write goes through inside; what was
        cached before is flushed on entry."""
        self._writing_through += 1
        try:
            await self.flush()
            yield
        finally:
            self._writing_through -= 1

    async def aclose(self) -> None:
        """Flush everything, then close the sets; a flush that fails is logged (those
        writes are lost) and the sets are closed all the same."""
        try:
            await self.flush()
        except DataUnavailable as exc:
            log.error("unmount: %s", exc)
        finally:
            await self.inner.aclose()

    # -- the flusher ------------------------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Flush aged blocks, and old ones under pressure, until ``stop()``."""
        with self._scope:
            task_status.started()
            while True:
                self._drop_clean(trio.current_time() - CLEAN_KEEP)
                keys = self._due()
                if keys:
                    await self._flush_keys(keys)
                else:
                    await self._idle()

    def stop(self) -> None:
        """End ``run``; flushes it started are cancelled and their bytes stay dirty."""
        self._scope.cancel()

    def statistics(self) -> dict:
        """A snapshot of the cache: bytes cached, bytes of dirty blocks, blocks lost."""
        return {"cached_bytes": self._memory, "dirty_block_bytes": self._dirty_memory,
                "lost_blocks": sum(len(b) for b in self._lost.values())}

    def _due(self) -> list[tuple[int, int]]:
        """Keys to flush now: dirty for ``age`` seconds, or the oldest under pressure."""
        now = trio.current_time()
        pressure = self._dirty_memory > self.limit // 2
        keys = []
        for key, block in self._dirty.items():
            if len(keys) == 2 * FLUSH_PARALLEL or (not pressure and block.since + self.age > now):
                break
            keys.append(key)
        return keys

    async def _idle(self) -> None:
        """Sleep until the oldest dirty block is due, a clean one expires, or a wake-up."""
        deadline = math.inf
        if self._dirty:
            deadline = next(iter(self._dirty.values())).since + self.age
        if self._clean:
            deadline = min(deadline, next(iter(self._clean.values())).since + CLEAN_KEEP)
        wake = self._wake
        with trio.move_on_at(deadline) as self._sleep:
            try:
                await wake.wait()
            finally:
                self._sleep = None
        if wake.is_set():
            self._wake = trio.Event()

    # -- cache bookkeeping ------------------------------------------------------------
    def _indexes(self, offset: int, length: int) -> tuple[int, int]:
        """First and last block index of a byte range (last < first if it is empty)."""
        return offset // self.block_size, (offset + length - 1) // self.block_size

    def _within(self, keys, ranges) -> set[tuple[int, int]]:
        """The keys among ``keys`` whose blocks overlap ``ranges`` ((set, offset, length))."""
        found: set[tuple[int, int]] = set()
        if not keys:
            return found
        for set_id, offset, length in ranges:
            first, last = self._indexes(offset, length)
            if last - first < len(keys):
                found.update(k for k in ((set_id, i) for i in range(first, last + 1))
                             if k in keys)
            else:
                found.update(k for k in keys if k[0] == set_id and first <= k[1] <= last)
        return found

    def _absorb(self, set_id: int, offset: int, data: memoryview) -> None:
        """Copy ``data`` into its blocks and mark it dirty (no await)."""
        end = offset + len(data)
        pos = offset
        while pos < end:
            index = pos // self.block_size
            block = self._blocks.get((set_id, index)) or self._add_block(set_id, index)
            lo = pos - block.start
            hi = min(end - block.start, len(block.data))
            block.data[lo:hi] = data[pos - offset:pos - offset + hi - lo]
            block.valid.add(lo, hi)
            if not block.dirty:
                self._mark_dirty(block)
            block.dirty.add(lo, hi)
            pos = block.start + hi

    def _add_block(self, set_id: int, index: int) -> _Block:
        size = self._sizes.get(set_id)
        if size is None:
            size = self._sizes[set_id] = self._set_size(set_id)
        start = index * self.block_size
        block = _Block(set_id, index, start, min(self.block_size, size - start))
        self._blocks[block.key] = block
        self._memory += len(block.data)
        return block

    def _mark_dirty(self, block: _Block) -> None:
        """Book ``block`` as dirty since now. The flusher is woken under pressure; for
        the first dirty block, a sleeping flusher's deadline is moved to when that block
        is due instead (no task switch per write: a write and fsync of a small change
        would wake it every time)."""
        self._clean.pop(block.key, None)
        block.since = trio.current_time()
        self._dirty[block.key] = block
        self._dirty_memory += len(block.data)
        if self._dirty_memory > self.limit // 2:
            self._wake.set()
        elif len(self._dirty) == 1:
            if self._sleep is not None:
                self._sleep.deadline = min(self._sleep.deadline, block.since + self.age)
            else:
                self._wake.set()

    def _take_dirty(self, block: _Block) -> Intervals:
        """Remove the block's dirty bytes from the books, for a flush; return them."""
        taken, block.dirty = block.dirty, Intervals()
        del self._dirty[block.key]
        self._dirty_memory -= len(block.data)
        return taken

    def _discard(self, block: _Block) -> None:
        """Forget a block (its dirty bytes, if any, are lost)."""
        if self._blocks.pop(block.key, None) is block:
            self._memory -= len(block.data)
        self._clean.pop(block.key, None)
        if self._dirty.pop(block.key, None) is not None:
            self._dirty_memory -= len(block.data)

    def _drop_clean(self, before: float) -> None:
        """Drop clean blocks that became clean before ``before``, and more while over the
        limit (least recently cleaned first)."""
        while self._clean:
            block = next(iter(self._clean.values()))
            if block.since >= before and self._memory <= self.limit:
                return
            self._discard(block)

    def _flush_ended(self) -> None:
        self._room.set()
        self._room = trio.Event()

    async def _wait_for_room(self) -> None:
        while True:
            self._drop_clean(-math.inf)
            if self._memory <= self.limit:
                return
            self._wake.set()
            await self._room.wait()

    # -- flushing ---------------------------------------------------------------------
    def _hold(self, set_id: int, indexes: range):
        """Hold the locks of blocks ``indexes`` of set ``set_id`` (``StripeLocks.hold``)."""
        return self._locks.setdefault(set_id, StripeLocks()).hold(indexes)

    async def _flush_keys(self, keys) -> None:
        """Flush the blocks of ``keys``, FLUSH_PARALLEL at a time; one block (an fsync of
        a small change) in this task, with no nursery or limiter."""
        if len(keys) == 1:
            key, = keys
            await self._flush_one(key)
            return
        limiter = trio.CapacityLimiter(FLUSH_PARALLEL)

        async def one(key):
            async with limiter:
                await self._flush_one(key)

        async with trio.open_nursery() as nursery:
            for key in sorted(keys):
                nursery.start_soon(one, key)

    async def _flush_one(self, key: tuple[int, int]) -> None:
        async with self._hold(key[0], range(key[1], key[1] + 1)):
            block = self._blocks.get(key)
            if block is not None and block.dirty:
                await self._write_back(block)

    async def _write_back(self, block: _Block) -> None:
        """Write the block's dirty bytes to its set (its lock held); see the module
        docstring for how, and for failure and cancellation."""
        taken = self._take_dirty(block)
        self._flushing.add(block.key)
        start = perf_counter_ns()
        try:
            merged = await self._store(block, taken)
            self.flush_latency.record(perf_counter_ns() - start)
        except Exception as exc:
            if isinstance(exc, DataUnavailable):
                log.error("data set %d: deferred writes at %d lost: %s", block.set_id,
                          block.start, exc)
            else:
                log.exception("data set %d: deferred writes at %d lost", block.set_id,
                              block.start)
            self._lost.setdefault(block.set_id, set()).add(block.index)
            self._failures += 1
            self._discard(block)
            if self.on_lost is not None:
                self.on_lost(block.set_id, [(block.start + lo, hi - lo) for lo, hi in taken])
            self._flush_ended()
            return
        except BaseException:
            if self._blocks.get(block.key) is block:
                if not block.dirty:
                    self._mark_dirty(block)
                block.dirty.update(taken)
            raise
        finally:
            self._flushing.discard(block.key)
        if merged is not None:  # the block read whole: the cache holds all of it now
            for lo, hi in list(block.valid.gaps(0, len(block.data))):
                block.data[lo:hi] = merged[lo:hi]
            block.valid.add(0, len(block.data))
        if not block.dirty and self._blocks.get(block.key) is block:
            block.since = trio.current_time()
            self._clean[block.key] = block
        self._flush_ended()

    async def _store(self, block: _Block, taken: Intervals) -> bytearray | None:
        """Write ``taken`` of the block to the set; return the block's bytes if it had to
        be read (and merged) first."""
        size = len(block.data)
        if block.whole():
            await self.inner.write(block.set_id, block.start, bytes(block.data))
            return None
        if len(taken) <= SPARSE_RANGES and 2 * taken.total() < size:
            data = memoryview(block.data)
            pieces = [(block.start + lo, bytes(data[lo:hi])) for lo, hi in taken]
            for offset, piece in pieces:
                await self.inner.write(block.set_id, offset, piece)
            return None
        merged = bytearray(size)
        await self.inner.read_into(block.set_id, block.start, merged)
        block.copy_into(memoryview(merged), block.start)  # no await: newest bytes win
        await self.inner.write(block.set_id, block.start, merged)
        return merged
