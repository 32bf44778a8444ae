"""The metadata journal: records batched into durable appends, checkpoints, compaction.

``Journal.record(r)`` encodes a record, applies it to the live state and queues it; a record
that cannot be encoded is refused there (``Unrecordable``, EOVERFLOW) and changes nothing,
so no batch can fail to encode later and block the commits after it. ``commit`` appends
the queued records as one batch to a ``JournalStore`` and returns when the store says it
is durable. What a crash loses is the records queued since the last commit: fsync and
unmount commit. While commits fail (the store is unreachable), records stay queued up to
``MAX_BACKLOG``; beyond that ``check_room`` refuses new changes (``JournalBacklog``, EIO).
``checkpoint`` writes the whole state as records and lets the store drop the batches it
covers, so mounting (``Journal.load``: checkpoint, then later batches,
through the one ``State.apply``) stays bounded.

Invariant: the state is encoded for a checkpoint only when no record is queued, with no
await between that check and the encoding; otherwise a record applied to the state would
also be replayed from a later batch.
"""
import errno
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from time import perf_counter_ns

import trio

from . import journal_records
from .errors import FsError
from .journal_records import CorruptRecord, Op
from .latency import Latency
from .state import State

log = logging.getLogger(__name__)

#: magic and version that start every checkpoint blob
CHECKPOINT_MAGIC = b"RSFSCKP1"


class Unrecordable(FsError):
    """A change holds a value that the journal's records cannot store (refused: nothing
    changed). The operations check their fields first; this is the last line."""

    errno = errno.EOVERFLOW


class JournalBacklog(FsError):
    """Too many changes wait for a commit that keeps failing: new changes are refused until
    a commit succeeds again (the message says why the last one failed)."""

    errno = errno.EIO


def encode_checkpoint(state: State) -> bytes:
    """The whole state as a checkpoint blob (see ``State.checkpoint_records``)."""
    return CHECKPOINT_MAGIC + journal_records.encode(state.checkpoint_records())


class JournalStore(ABC):
    """Where batches and checkpoints live. Implementations: ``DirJournalStore`` (a local
    directory, a developer option) and the appliance-backed store (see docs/filesystem.md).

    A method that raises changed nothing a later ``load`` would see, except ``append``,
    which may or may not have stored the batch (as an interrupted write). Cancellation
    leaves the same two outcomes.
    """

    #: the version of the format the store keeps its records in (None: not versioned)
    format_version: int | None = None

    @abstractmethod
    async def load(self) -> tuple[bytes | None, list[bytes]]:
        """The newest checkpoint blob (None before the first) and the batches appended after it."""

    @abstractmethod
    async def append(self, batch: bytes) -> None:
        """Store one batch after the previous ones; durable when this returns."""

    @abstractmethod
    async def write_checkpoint(self, blob: bytes) -> None:
        """Replace the checkpoint with ``blob``, which covers every batch appended so far;
        those batches are dropped. Atomic: a crash leaves the old or the new pair."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the store holds open."""

    @abstractmethod
    def finish_copies_in(self, nursery: trio.Nursery | None) -> None:
        """Where a store that keeps several copies may finish, in the background, the
        copies an append did not wait for (None: appends wait for every copy again)."""


class Journal:
    """Records changes to a ``State`` and makes them durable in a ``JournalStore``."""

    #: commit on its own once this many records are queued
    MAX_QUEUED = 4096
    #: refuse new changes (``check_room``) while this many records wait for a commit
    MAX_BACKLOG = 1 << 16

    def __init__(self, store: JournalStore, state: State):
        self.store = store
        self.state = state
        self._queued: list[tuple] = []
        self._encoded: list[bytes] = []  # the queued records, encoded (one per record)
        self.last_failure: str | None = None  # why the last commit failed (None: it did not)
        self._commit_lock = trio.Lock()
        self._appended_bytes = 0  # batches since the last checkpoint
        self._checkpoint_bytes = 0
        self.commit_needed = trio.Event()
        #: awaited with the records of each batch before it is appended (the mount makes
        #: the file data that MAP records point at durable first: ordered data; it may
        #: replace records of the list in place, e.g. map data it found lost to LOST)
        self.before_append: Callable[[list[tuple]], Awaitable[None]] | None = None
        self.commit_latency = Latency()  # of each batch appended (for the mount's metrics)

    @classmethod
    async def load(cls, store: JournalStore) -> "Journal":
        """Rebuild the state from ``store``: CorruptRecord if the metadata is damaged."""
        state = State()
        blob, batches = await store.load()
        if blob is not None:
            if not blob.startswith(CHECKPOINT_MAGIC):
                raise CorruptRecord("checkpoint does not start with the resilfs magic")
            for record in journal_records.decode(memoryview(blob)[len(CHECKPOINT_MAGIC):]):
                state.apply(record)
            state.allocator.release(state.allocator.seal())
        for batch in batches:
            for record in journal_records.decode(batch):
                state.apply(record)
            # space freed in a durable batch was reusable by the next one, as when live
            state.allocator.release(state.allocator.seal())
        journal = cls(store, state)
        journal._checkpoint_bytes = len(blob or b"")
        journal._appended_bytes = sum(len(b) for b in batches)
        log.info("metadata loaded: checkpoint of %d bytes, %d batches of %d bytes, %d inodes",
                 journal._checkpoint_bytes, len(batches), journal._appended_bytes,
                 len(state.inodes))
        return journal

    @property
    def queued(self) -> int:
        return len(self._queued)

    def check_room(self) -> None:
        """JournalBacklog if ``MAX_BACKLOG`` records already wait for a commit (which can
        only happen while commits fail): the place to refuse a change before it starts."""
        if len(self._queued) >= self.MAX_BACKLOG:
            why = f" that fails: {self.last_failure}" if self.last_failure else ""
            raise JournalBacklog(f"{len(self._queued)} metadata changes wait for a "
                                 f"commit{why}")

    def record(self, record: tuple) -> None:
        """Encode ``record``, apply it to the state and queue it for the next commit.

        Unrecordable (nothing changed) if a field does not fit the record's layout.
        A WRITTEN record right after a WRITTEN record of the same inode replaces it (it
        says everything the earlier one said), so a stream of writes queues one record.
        """
        try:
            encoded = journal_records.encode_one(record)
        except CorruptRecord as exc:
            raise Unrecordable(str(exc)) from None
        self.state.apply(record)
        if (record[0] == Op.WRITTEN and self._queued and self._queued[-1][0] == Op.WRITTEN
                and self._queued[-1][1] == record[1]):
            self._queued[-1] = record
            self._encoded[-1] = encoded
        else:
            self._queued.append(record)
            self._encoded.append(encoded)
        if len(self._queued) >= self.MAX_QUEUED:
            self.commit_needed.set()

    async def commit(self) -> None:
        """Append the queued records; return when they are durable.

        Every queued record was encoded when it was recorded, so only the store (or the
        data flush before it) can fail a commit. On failure (store error, cancellation)
        the records are queued again in front of newer ones, so the next commit retries
        them; the space they freed stays quarantined; ``last_failure`` says why.
        """
        async with self._commit_lock:
            await self._commit_locked()

    async def _commit_locked(self) -> None:
        if not self._queued:
            return
        batch_records, self._queued = self._queued, []
        encoded, self._encoded = self._encoded, []
        sealed = self.state.allocator.seal()
        try:
            if self.before_append is not None:
                await self.before_append(batch_records)
            batch = b"".join(encoded)
            start = perf_counter_ns()
            await self.store.append(batch)
            self.commit_latency.record(perf_counter_ns() - start)
        except BaseException as exc:
            self._queued[:0] = batch_records
            self._encoded[:0] = encoded
            self.state.allocator.unseal(sealed)
            self.last_failure = f"{type(exc).__name__}: {exc}"
            raise
        self.last_failure = None
        self.state.allocator.release(sealed)
        self._appended_bytes += len(batch)

    def wants_checkpoint(self) -> bool:
        """Whether the batches since the last checkpoint outweigh it (compaction pays)."""
        return self._appended_bytes > max(1 << 20, 2 * self._checkpoint_bytes)

    async def checkpoint(self, attempts: int = 8) -> bool:
        """Write the state as a checkpoint; the store drops the batches it covers.

        Commits first; if records keep arriving during the commit, gives up after
        ``attempts`` commits and returns False (nothing changed). Store errors propagate.
        """
        async with self._commit_lock:
            for _ in range(attempts):
                await self._commit_locked()
                if not self._queued:  # no await between this check and the encoding
                    blob = encode_checkpoint(self.state)
                    break
            else:
                return False
            await self.store.write_checkpoint(blob)
            self._checkpoint_bytes = len(blob)
            self._appended_bytes = 0
        log.info("metadata checkpoint: %d bytes, %d inodes", len(blob), len(self.state.inodes))
        return True


class JournalWorker:
    """Background commits and compaction for a mount: ``run()`` in the mount's nursery,
    ``stop()`` to end it after a last commit.

    Commits every ``interval`` seconds (bounding what a daemon crash loses without fsync)
    and when the journal asks (too many queued records); checkpoints when the batches
    outweigh the checkpoint. A failed commit is logged and retried at the next tick; the
    records stay queued. Cancellation stops it between steps.
    """

    def __init__(self, journal: Journal, interval: float = 1.0):
        self.journal = journal
        self.interval = interval
        self._stopped = trio.Event()

    async def run(self) -> None:
        """The loop; it also hosts the copies that appends leave to finish in the
        background (``JournalStore.finish_copies_in``), and waits for them at the end."""
        store = self.journal.store
        async with trio.open_nursery() as late_copies:
            store.finish_copies_in(late_copies)
            try:
                while not self._stopped.is_set():
                    with trio.move_on_after(self.interval):
                        await self.journal.commit_needed.wait()
                    self.journal.commit_needed = trio.Event()
                    try:
                        await self.journal.commit()
                        if self.journal.wants_checkpoint():
                            await self.journal.checkpoint()
                    except Exception:
                        log.exception("metadata commit failed; records stay queued")
                await self.journal.commit()
            finally:
                store.finish_copies_in(None)

    def stop(self) -> None:
        self._stopped.set()
        self.journal.commit_needed.set()
