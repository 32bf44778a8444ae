"""A journal store in a local directory: the ``--journal-dir`` developer option.

A real store (fsync'd files), used by tests and for development; the product keeps its
metadata on the appliances. Layout, for generation G: ``checkpoint-G`` (absent for G=0)
and ``journal-G``, a sequence of frames ``u32 length, u32 crc32, payload``. A checkpoint
creates ``journal-(G+1)`` empty, then ``checkpoint-(G+1)`` by rename, then deletes
generation G: a crash at any step leaves a consistent pair. A torn frame at the end of a
journal (crash during append) is ignored and cut off when the store is opened.
"""
import logging
import os
import re
import struct
import zlib

import trio

from .journal import JournalStore
from .journal_records import CorruptRecord

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_NAME = re.compile(r"^(checkpoint|journal)-(\d+)$")


class DirJournalStore(JournalStore):
    """Batches and checkpoints as fsync'd files in ``path`` (created if missing).

    OSError from the file system propagates; blocking file I/O runs in a worker thread,
    so cancellation abandons at most the append in progress (torn frame, ignored on load).
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self._generation = self._newest_generation()
        self._fd: int | None = None

    def _newest_generation(self) -> int:
        generations = [int(m.group(2)) for m in map(_NAME.match, os.listdir(self.path))
                       if m and m.group(1) == "checkpoint"]
        return max(generations, default=0)

    def _file(self, kind: str, generation: int | None = None) -> str:
        gen = self._generation if generation is None else generation
        return os.path.join(self.path, f"{kind}-{gen}")

    def is_empty(self) -> bool:
        """True if nothing was ever stored here (no checkpoint, empty or no journal)."""
        journal = self._file("journal")
        return self._generation == 0 and (not os.path.exists(journal)
                                          or os.path.getsize(journal) == 0)

    async def load(self) -> tuple[bytes | None, list[bytes]]:
        return await trio.to_thread.run_sync(self._load)

    def _load(self):
        blob = None
        if self._generation:
            with open(self._file("checkpoint"), "rb") as f:
                blob = f.read()
        batches, good = [], 0
        try:
            with open(self._file("journal"), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        while good + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, good)
            payload = data[good + _FRAME.size:good + _FRAME.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            batches.append(payload)
            good += _FRAME.size + length
        if good < len(data):
            if good + _FRAME.size + _FRAME.unpack_from(data, good)[0] < len(data):
                raise CorruptRecord(f"{self._file('journal')}: bad frame at byte {good}")
            log.warning("%s: ignoring a torn last frame (%d bytes)", self._file("journal"),
                        len(data) - good)
            with open(self._file("journal"), "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        return blob, batches

    def _journal_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._file("journal"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                               0o600)
        return self._fd

    async def append(self, batch: bytes) -> None:
        frame = _FRAME.pack(len(batch), zlib.crc32(batch)) + batch
        await trio.to_thread.run_sync(self._append, frame)

    def _append(self, frame: bytes) -> None:
        fd = self._journal_fd()
        view = memoryview(frame)
        while view:
            view = view[os.write(fd, view):]
        os.fdatasync(fd)

    async def write_checkpoint(self, blob: bytes) -> None:
        await trio.to_thread.run_sync(self._write_checkpoint, blob)

    def _write_checkpoint(self, blob: bytes) -> None:
        old, new = self._generation, self._generation + 1
        for kind, data in (("journal", b""), ("checkpoint", blob)):
            tmp = self._file(kind, new) + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self._file(kind, new))
        dirfd = os.open(self.path, os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._generation = new
        for kind in ("journal", "checkpoint"):
            try:
                os.unlink(self._file(kind, old))
            except FileNotFoundError:
                pass

    def finish_copies_in(self, nursery) -> None:
        """One copy: every append waits for it."""

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
