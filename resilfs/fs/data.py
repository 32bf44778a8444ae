"""File data: file byte ranges -> extents -> byte ranges of resiliency sets.

Reads fill one buffer straight from the backing (holes are zeroed, nothing is copied
twice) and return a memoryview of it. Writes pass slices of the caller's buffer to
``Backing.write_behind``, which may keep them in a cache and return before the sets have
them (``resilfs.fs.writebehind``); only the first and last page of a newly mapped range
are copied, to pad them with zeros, so that every page a file maps has been fully written
(reused space needs no scrubbing). New extents are mapped only after their data is
written, and a MAP record becomes durable only after that data is on the sets
(``flush_mapped``, run by ``Journal.before_append``: ordered data): a reader never sees
another file's old bytes, and a crash leaves the space free. ``flush`` makes a file's
data, or all data, durable (fsync). Truncate's zeroing is written through.

Encoding, decoding and large copies happen in the set layer's worker threads; this module
does no CPU work beyond slicing. Errors of the backing come out as DataUnavailable (EIO
for that file only); cancellation of a write leaves the range as an interrupted write
would, and gives reserved space back. A range whose deferred writes were lost is mapped to
LOST and answers LostData (EIO) from then on (``lost_writes``), never other bytes.

Space: a write that finds no room commits the journal (releasing freed space) before it
adds a set (``_grow``); ``fallocate`` maps, punches and zeroes ranges; the memory of
punched and freed space goes back to the appliances (``Backing.discard``,
``run_discards``).
"""
import errno
import logging
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager

import trio

from ..errors import ResilfsError
from .allocator import OutOfSpace
from .errors import DataUnavailable, LostData, refuse
from .extents import LOST, PAGE, page_down, page_up
from .intervals import Intervals
from .journal_records import Op
from .metadata import Metadata, now_ns

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # FUSE never sends more; larger reads get a fresh buffer
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_MODES = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
DISCARD_INTERVAL = 1.0  # seconds between rounds of giving freed memory back
#: below this many free bytes, files opened for writing bypass the kernel's writeback cache
#: (see ``nearly_full``)
NEARLY_FULL = 16 << 20
DEFAULT_SET_SIZE = 256 << 20


class Backing(ABC):
    """Where file data lives: resiliency sets, numbered by the metadata's SET records.

    Every method raises DataUnavailable when the set cannot serve (lost beyond its
    tolerance, unreachable) and never returns wrong data.
    """

    @abstractmethod
    async def create_set(self, set_id: int, size: int) -> None:
        """Create set ``set_id`` of ``size`` bytes (zero-filled) on the appliances."""

    @abstractmethod
    async def read_into(self, set_id: int, offset: int, buffer) -> None:
        """Fill ``buffer`` with the set's bytes at ``offset``."""

    @abstractmethod
    async def write(self, set_id: int, offset: int, data) -> None:
        """Write ``data`` at ``offset``; return once the set acknowledged it (durable)."""

    async def write_behind(self, writes) -> None:
        """Write each ``(set_id, offset, data)`` of ``writes`` into space of the caller's
        (mapped by its file, or reserved for it). This writes through; a cache may instead
        keep the data and return before the sets have it (``flush`` makes it durable)."""
        await run_all(self.write, writes)

    async def flush(self, ranges=None) -> None:
        """Make what ``write_behind`` kept for ``ranges`` (``(set_id, offset, length)``
        triples; None: everything) durable. Raises DataUnavailable if some of it was lost.
        Nothing to do here: ``write_behind`` wrote through."""
        return

    async def discard(self, set_id: int, offset: int, length: int) -> None:
        """Free space: its bytes need not be kept, and the appliances may take the memory
        back (its bytes then read zeros). Best effort: nothing to do here; never raises
        for a set that cannot do it."""
        return

    @asynccontextmanager
    async def writing_through(self):
        """Inside, ``write_behind`` writes through and nothing it kept is left unwritten
        (flushed on entry; DataUnavailable if that lost data): the sets alone hold every
        write, so quiescing them stops every write. Here, always so."""
        yield

    @abstractmethod
    async def free_bytes(self) -> int:
        """Bytes of file data the appliances can still give to new sets (after redundancy)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close every open set (ending write intents); the data is kept."""


class _Buffers:
    """Read buffers by size class, reused to avoid page faults on fresh memory.

    Invariant: a buffer goes back to the pool right before ``read`` returns a view of it;
    pyfuse3 copies that view into the reply with no await in between, so no other read
    can take the buffer before the reply is sent.
    """

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        cls = PAGE
        while cls < size:
            cls *= 2
        free = self._free.get(cls)
        return free.pop() if free else bytearray(cls)

    def give(self, buffer: bytearray) -> None:
        free = self._free.setdefault(len(buffer), [])
        if len(free) < self.keep and len(buffer) <= MAX_REQUEST:
            free.append(buffer)


class FileData:
    """Reads, writes and truncates the data of regular files."""

    def __init__(self, metadata: Metadata, backing: Backing, set_size: int = DEFAULT_SET_SIZE,
                 stripe_size: int = PAGE):
        self.metadata = metadata
        self.backing = backing
        self.set_size = set_size
        # holes of at least a stripe are placed at set offsets congruent to their file
        # offsets modulo the stripe, so stripe-aligned file writes are full-stripe writes
        self.stripe_size = stripe_size
        self._buffers = _Buffers()
        self._zeros = bytes(MAX_REQUEST)
        self._allocating: dict[int, list] = {}  # ino -> [(start, stop, done event)]
        self._grow_lock = trio.Lock()
        #: set id -> set bytes (whole pages) whose deferred writes were lost in this mount
        self._lost: dict[int, Intervals] = {}
        self._discarding: trio.Event | None = None  # set when a round of discards ends
        self._discard_scope = trio.CancelScope()

    @property
    def lost(self) -> bool:
        """Whether deferred writes were lost in this mount (the mount turns read-only)."""
        return bool(self._lost)

    # -- reads ---------------------------------------------------------------------
    async def read(self, ino: int, offset: int, size: int) -> memoryview:
        """Up to ``size`` bytes at ``offset`` (fewer at the end of the file)."""
        node = self.metadata.inode(ino)
        end = min(offset + size, node.size)
        if end <= offset:
            return memoryview(b"")
        length = end - offset
        buffer = self._buffers.take(length) if length <= MAX_REQUEST else bytearray(length)
        view = memoryview(buffer)[:length]
        reads = []
        for f, n, set_id, o in node.extents.pieces(offset, end):
            part = view[f - offset:f - offset + n]
            if set_id is None:
                part[:] = self._zeros[:n] if n <= MAX_REQUEST else bytes(n)
            elif set_id == LOST:
                self._buffers.give(buffer)
                raise LostData(f"inode {ino}: the data at {f} was lost (a failed flush)")
            else:
                reads.append((set_id, o, part))
        try:
            await run_all(self.backing.read_into, reads)
        except BaseException:
            self._buffers.give(buffer)
            raise
        self._buffers.give(buffer)  # see _Buffers: the reply copies it before any await
        return view

    # -- writes --------------------------------------------------------------------
    async def write(self, ino: int, offset: int, data) -> int:
        """Write ``data`` at ``offset``, mapping holes it covers; return its length.

        Writes into holes run concurrently unless their page ranges overlap; one that
        overlaps an allocating write in flight waits for it and looks again.
        """
        node = self.metadata.inode(ino)
        view = memoryview(data).cast("B")
        if not view:
            return 0
        await self._store(node, offset, view)
        self.metadata.written(ino, offset + len(view))
        return len(view)

    async def _store(self, node, offset: int, view: memoryview) -> None:
        """Write ``view`` at ``offset`` of the file, mapping the holes it covers (the size
        is the caller's business)."""
        end = offset + len(view)
        while node.extents.gaps(offset, end):
            busy = self._overlapping(node.ino, page_down(offset), page_up(end))
            if busy is not None:
                await busy.wait()
            elif await self._write_allocating(node, offset, view):
                break
        else:  # no holes (left): the range is mapped
            await self.backing.write_behind(self._mapped_writes(node, offset, view))

    def _mapped_writes(self, node, offset, view):
        writes = []
        for f, n, set_id, o in node.extents.pieces(offset, offset + len(view)):
            if set_id == LOST:
                raise LostData(f"inode {node.ino}: the data at {f} was lost (a failed flush)")
            writes.append((set_id, o, view[f - offset:f - offset + n]))
        return writes

    def _overlapping(self, ino: int, start: int, stop: int) -> trio.Event | None:
        for lo, hi, done in self._allocating.get(ino, ()):
            if lo < stop and start < hi:
                return done
        return None

    async def _write_allocating(self, node, offset: int, view: memoryview) -> bool:
        """Reserve space for the holes, write everything, then map the holes.

        Returns False (nothing done) if a set had to be added first: the caller looks
        again. Invariant: no await between computing the holes and registering the range
        in ``_allocating``, so two writers never map the same hole.
        """
        allocator = self.metadata.state.allocator
        end = offset + len(view)
        start, stop = page_down(offset), page_up(end)
        writes, maps, reserved = [], [], []
        try:
            for f, n, set_id, o in node.extents.pieces(start, stop):
                if set_id == LOST:
                    raise LostData(f"inode {node.ino}: the data at {f} was lost (a failed "
                                   f"flush)")
                if set_id is not None:
                    lo, hi = max(f, offset), min(f + n, end)
                    if lo < hi:
                        writes.append((set_id, o + lo - f, view[lo - offset:hi - offset]))
                    continue
                pieces = allocator.reserve(n, *self._placement(node, f, n))
                reserved.extend(pieces)
                maps.append((f, pieces))
                pos = f
                for set_id, o, length in pieces:
                    writes.append((set_id, o, self._padded(view, offset, pos, length)))
                    pos += length
        except OutOfSpace:
            allocator.cancel(reserved)
            await self._grow(sum(n for _, n in node.extents.gaps(offset, end)))
            return False
        except LostData:
            allocator.cancel(reserved)
            raise
        entry = (start, stop, trio.Event())
        self._allocating.setdefault(node.ino, []).append(entry)
        try:
            await self.backing.write_behind(writes)
            if self.metadata.state.inodes.get(node.ino) is node:
                for f, pieces in maps:
                    self.metadata.map(node.ino, f, pieces)
                if self._lost and self._mark_lost_in(node):
                    log.error("inode %d: a write was lost while it waited for room; it "
                              "reads as EIO", node.ino)
            else:
                allocator.cancel(reserved)  # deleted meanwhile
        except BaseException:
            allocator.cancel(reserved)
            raise
        finally:
            entries = self._allocating[node.ino]
            entries.remove(entry)
            if not entries:
                del self._allocating[node.ino]
            entry[2].set()
        return True

    def _padded(self, view: memoryview, offset: int, pos: int, length: int):
        """The bytes of file range ``[pos, pos+length)``: the write's data, zeros around it."""
        lo, hi = max(pos, offset), min(pos + length, offset + len(view))
        if lo == pos and hi == pos + length:
            return view[lo - offset:hi - offset]
        out = bytearray(length)
        if lo < hi:
            out[lo - pos:hi - pos] = view[lo - offset:hi - offset]
        return out

    def _placement(self, node, file_offset: int, length: int):
        """(hint, align) for a hole: right after the preceding extent if that is free,
        and stripe-aligned if the hole spans a stripe."""
        before = node.extents.before(file_offset)
        hint = (before[2], before[3] + file_offset - before[0]) if before else None
        align = None
        if self.stripe_size > PAGE and length >= self.stripe_size:
            align = (self.stripe_size, file_offset % self.stripe_size)
        return hint, align

    async def _grow(self, length: int) -> None:
        """Make room for ``length`` bytes: commit the journal if that releases space freed
        meanwhile (rm, truncate: quarantined until their records are durable), else add a
        set (one at a time: concurrent writers wait for the same one). NoSpace if the
        appliances cannot hold another set; a failed commit is logged and a set added."""
        async with self._grow_lock:
            allocator = self.metadata.state.allocator
            if allocator.free_bytes() >= length:
                return
            if self._discarding is not None:  # freed space held while its memory goes back
                await self._discarding.wait()
                if allocator.free_bytes() >= length:
                    return
            if allocator.quarantined_bytes():
                try:
                    await self.metadata.journal.commit()  # also waits for one in flight
                except ResilfsError as exc:
                    log.warning("could not commit to release freed space: %s", exc)
                if allocator.free_bytes() >= length:
                    return
            set_id = self.metadata.state.next_set_id
            size = max(self.set_size, page_up(length))
            log.info("adding data set %d of %d bytes", set_id, size)
            await self.backing.create_set(set_id, size)
            self.metadata.add_set(set_id, size)

    async def capacity(self) -> tuple[int, int]:
        """(total, free) bytes of file data: the sets' space plus what new sets could add;
        space freed but not yet committed counts as free (a write commits to use it)."""
        more = await self.backing.free_bytes()
        allocator = self.metadata.state.allocator
        free = allocator.free_bytes() + allocator.quarantined_bytes()  # free at next commit
        return allocator.total_bytes() + more, free + more

    async def nearly_full(self) -> bool:
        """Whether less than NEARLY_FULL bytes are free. The kernel's writeback cache takes
        write(2) data before the daemon sees it and reports a failed writeback only at
        fsync and close; a file opened for writing now should write through the kernel
        (direct I/O), so that write(2) itself gets ENOSPC once its data cannot be stored."""
        allocator = self.metadata.state.allocator
        if allocator.free_bytes() >= NEARLY_FULL:  # the common case: no appliance asked
            return False
        return (await self.capacity())[1] < NEARLY_FULL

    def check_lost(self, ino: int) -> None:
        """LostData if a range of file ``ino`` lost its data (see ``lost_writes``)."""
        node = self.metadata.inode(ino)
        if node.extents is not None and node.extents.lost_bytes:
            lost = next((f for f, _, set_id, _ in node.extents if set_id == LOST), None)
            if lost is not None:
                raise LostData(f"inode {ino}: the data at {lost} was lost (a failed flush)")

    # -- memory of freed space -----------------------------------------------------
    async def run_discards(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Give the appliance memory of freed space back (deleted files, truncated tails),
        until ``stop_discards``. Every DISCARD_INTERVAL seconds the space the journal
        released since is held reserved (the parts still free), discarded
        (``Backing.discard``: whole stripes of healthy sets; errors are logged there) and
        freed again; a writer that needs room meanwhile waits for the round (``_grow``).
        Cancellation frees what the round held."""
        allocator = self.metadata.state.allocator
        with self._discard_scope:
            allocator.take_released()  # from now on
            task_status.started()
            while True:
                await trio.sleep(DISCARD_INTERVAL)
                held = allocator.hold(r for r in allocator.take_released() if r[0] != LOST)
                if not held:
                    continue
                self._discarding = trio.Event()
                try:
                    for set_id, offset, length in held:
                        await self.backing.discard(set_id, offset, length)
                finally:
                    allocator.cancel(held)
                    self._discarding.set()
                    self._discarding = None

    def stop_discards(self) -> None:
        """End ``run_discards``."""
        self._discard_scope.cancel()

    # -- truncate ------------------------------------------------------------------
    async def truncate(self, ino: int, size: int) -> None:
        """Set the size; zero the rest of the last page so growing later reads zeros."""
        node = self.metadata.inode(ino)
        if node.extents is not None and size < node.size and size % PAGE:
            tail = min(page_up(size), node.size) - size
            writes = [(set_id, o, self._zeros[:n])
                      for _, n, set_id, o in node.extents.pieces(size, size + tail)
                      if set_id is not None and set_id != LOST]
            await run_all(self.backing.write, writes)
        self.metadata.setattr(ino, size=size)

    # -- fallocate -----------------------------------------------------------------
    async def fallocate(self, ino: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) as tmpfs has it. Mode 0 maps zero-filled space for the holes of
        the range and grows the size to its end; with FALLOC_FL_KEEP_SIZE the size stays.
        FALLOC_FL_PUNCH_HOLE (with KEEP_SIZE) unmaps the whole pages of the range, whose
        space is free at once and whose appliance memory goes back (``Backing.discard``),
        and zeroes the rest of it. FALLOC_FL_ZERO_RANGE zeroes the
        range and maps its holes. Refused, changing nothing: EOPNOTSUPP for other modes,
        EINVAL for a bad range or a file that is not regular, ENOSPC when the holes to map
        do not fit (checked first). A failure of the sets later (EIO) may leave part done.
        """
        node = self.metadata.inode(ino)
        if node.extents is None or offset < 0 or length <= 0:
            raise refuse(errno.EINVAL, "fallocate needs a regular file and a range")
        if mode & ~FALLOC_MODES:
            raise refuse(errno.EOPNOTSUPP, f"fallocate mode {mode:#x} is not supported")
        punch = bool(mode & FALLOC_FL_PUNCH_HOLE)
        if punch and (not mode & FALLOC_FL_KEEP_SIZE or mode & FALLOC_FL_ZERO_RANGE):
            raise refuse(errno.EOPNOTSUPP, "punching a hole needs KEEP_SIZE alone")
        end = offset + length
        if punch:
            start, stop = page_up(offset), page_down(end)
            # the memory first, while the file still maps the range: once its space is
            # free, a write of another file could land there before a discard
            for set_id, o, n in [(s, o, n) for _, n, s, o in node.extents.pieces(start, stop)
                                 if s is not None and s != LOST] if start < stop else []:
                await self.backing.discard(set_id, o, n)
            node = self.metadata.inode(ino)
            if start < stop and any(s is not None for _, _, s, _ in
                                    node.extents.pieces(start, stop)):
                self.metadata.punch(ino, start, stop - start)
            edges = [(offset, min(start, end)), (max(stop, offset), end)] if start < stop \
                else [(offset, end)]
            for lo, hi in edges:
                await self._zero_mapped(node, lo, hi)
            self.metadata.setattr(ino, mtime=now_ns())
            return
        holes = node.extents.gaps(offset, end)
        if sum(n for _, n in holes) > (await self.capacity())[1]:
            raise refuse(errno.ENOSPC, f"no room to allocate {length} bytes")
        if mode & FALLOC_FL_ZERO_RANGE:
            await self._zero_mapped(node, offset, end)
        for f, n in holes:
            for pos in range(f, f + n, MAX_REQUEST):
                await self._store(node, pos, memoryview(self._zeros)[:min(MAX_REQUEST,
                                                                          f + n - pos)])
        if not mode & FALLOC_FL_KEEP_SIZE and end > node.size:
            self.metadata.setattr(ino, size=end)
        elif mode & FALLOC_FL_ZERO_RANGE:
            self.metadata.setattr(ino, mtime=now_ns())

    async def _zero_mapped(self, node, start: int, end: int) -> None:
        """Write zeros over the mapped bytes of ``[start, end)`` (holes read zeros already;
        lost ranges stay lost)."""
        writes = []
        for _f, n, set_id, o in node.extents.pieces(start, end):
            if set_id is not None and set_id != LOST:
                for pos in range(0, n, MAX_REQUEST):
                    writes.append((set_id, o + pos, self._zeros[:min(MAX_REQUEST, n - pos)]))
        if writes:
            await self.backing.write_behind(writes)

    # -- durability ----------------------------------------------------------------
    async def flush(self, ino: int | None = None) -> None:
        """Make the data of file ``ino`` (None: of every file) durable on the sets.

        Raises DataUnavailable if writes the backing deferred there were lost.
        """
        if ino is None:
            await self.backing.flush()
            return
        node = self.metadata.inode(ino)
        if node.extents is not None:
            await self.backing.flush([(set_id, o, n) for _, n, set_id, o in node.extents
                                      if set_id != LOST])
            self.check_lost(ino)

    def writing_through(self):
        """See ``Backing.writing_through`` (snapshots are taken inside it)."""
        return self.backing.writing_through()

    async def flush_mapped(self, batch) -> None:
        """Make the data that the MAP records among journal records ``batch`` map durable
        (before the batch is: ``Journal.before_append``). Data lost meanwhile (``lost``)
        is mapped to LOST in ``batch`` itself (the records are replaced in place), so that
        no durable record ever maps set space that lacks the file's data; the live state
        got the same change from ``lost``, in this batch or a later one."""
        maps = [r for r in batch if r[0] == Op.MAP and r[4] != LOST]
        if maps:
            try:
                await self.backing.flush([(r[4], r[5], r[3]) for r in maps])
            except DataUnavailable as exc:
                log.error("journal batch maps data that was lost: %s", exc)
        if self._lost:
            batch[:] = [piece for record in batch for piece in self._split_lost(record)]

    def _split_lost(self, record):
        """``record``, or for a MAP record of lost set bytes the MAP records that map
        those bytes to LOST and the rest as they were."""
        if record[0] != Op.MAP or record[4] not in self._lost:
            return [record]
        op, ino, f, n, set_id, o = record
        lost = self._lost[set_id]
        if not any(True for _ in lost.within(o, o + n)):
            return [record]
        out, pos = [], o
        for lo, hi in lost.within(o, o + n):
            if pos < lo:
                out.append((op, ino, f + pos - o, lo - pos, set_id, pos))
            out.append((op, ino, f + lo - o, hi - lo, LOST, f + lo - o))
            pos = hi
        if pos < o + n:
            out.append((op, ino, f + pos - o, o + n - pos, set_id, pos))
        return out

    def lost_writes(self, set_id: int, ranges) -> None:
        """Deferred writes to ``(offset, length)`` ranges of set ``set_id`` were lost (the
        write-behind cache calls this, with no await, when a flush fails): every file range
        mapping those bytes (whole pages) reads as EIO from now on, and the mount turns
        read-only (``lost``). Never awaits."""
        lost = self._lost.setdefault(set_id, Intervals())
        for offset, length in ranges:
            lost.add(page_down(offset), page_up(offset + length))
        files = [node.ino for node in list(self.metadata.state.inodes.values())
                 if node.extents is not None and self._mark_lost_in(node)]
        log.error("data set %d: %d bytes of deferred writes lost; what they wrote in inodes "
                  "%s reads as EIO", set_id, sum(n for _, n in ranges), files)

    def _mark_lost_in(self, node) -> int:
        """Map to LOST the ranges of ``node`` whose set bytes are in ``_lost``; return how
        many bytes."""
        found = []
        for f, n, set_id, o in node.extents:
            lost = self._lost.get(set_id)
            if lost is not None:
                found.extend((f + lo - o, hi - lo) for lo, hi in lost.within(o, o + n))
        for f, n in found:
            self.metadata.mark_lost(node.ino, f, n)
        return sum(n for _, n in found)


async def run_all(call, jobs) -> None:
    """Run ``call(*job)`` for every job, concurrently when there are several."""
    if len(jobs) == 1:
        await call(*jobs[0])
    elif jobs:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(call, *job)
