"""The journal store on the appliances: the product's default (see ``JournalStore``).

Metadata is mirrored as appliance records (small durable values with compare-and-set) on
up to ``COPIES`` appliances of the cluster, under the filesystem's owner name. The
on-appliance format, version ``FORMAT``:

* ``fs-super``: ``SUPER_MAGIC``, the crc32 of the rest, then JSON ``{"format", "epoch",
  "generation", "parts", "size", "crc"}``: the format version, the epoch of the client that
  wrote it, and the checkpoint of generation G (its parts, byte size and crc32). Later
  format versions keep this framing and the ``format`` key, so that an older resilfs can
  tell that it must refuse them (``FormatTooNew``).
* ``fs-ckpt-G-I``: part I of the checkpoint of generation G, and
* ``fs-log-G-N``: the N-th record of generation G's log, one part of one batch. Both carry
  a ``_PART`` header: magic, the stamp (epoch, sequence) of the write they belong to, the
  part's index and the number of parts, the crc32 of the whole batch or checkpoint, and
  the crc32 of the record itself. Batches larger than ``PART`` bytes span several records.

What makes a crash or a torn copy safe:

* A record whose magic or crc32 is wrong is a damaged copy: it is ignored.
* Every client that opens the store writes under a new epoch, larger than any it found
  (``_settle``, before its first write); a failed superblock switch moves to another one.
  Loading takes the superblock with the highest (epoch, generation) whose checkpoint is
  complete, so a superblock that reached only some copies before a crash loses to one that
  a later client wrote to enough copies.
* The log is read batch by batch from record 0: at each record number, the complete batch
  (all its parts with one stamp, crc32 right) with the highest stamp not below the
  previous batch's; the log ends where there is none. A retry of a failed append rewrites
  the same numbers with a higher stamp, so it wins over what the failed attempt left.
* An append or a checkpoint part is durable when ``min(2, copies)`` appliances stored all
  of it; loading needs that many answering, so it sees every durable record. While the
  mount's journal worker runs, an append returns at that point and the other copy
  finishes in the worker's nursery (``finish_copies_in``). Before its first write, a
  client copies what it loaded to every answering copy that lacks it (a batch that only
  one copy had becomes durable before anything is appended after it) and deletes records
  that belong to no loaded state.

A checkpoint writes generation G+1's parts everywhere, then moves ``fs-super`` to G+1
(the switch), then deletes generation G. TransportError from too many copies becomes
JournalUnavailable. Format 1 (before the version: a bare JSON superblock, unstamped
records) is loaded as it was and rewritten in this format before the first write.
"""
import itertools
import json
import logging
import struct
import zlib
from dataclasses import dataclass

import trio

from ..errors import ResilfsError
from ..transport.base import RecordConflict, TransportError
from .errors import DataUnavailable
from .journal import JournalStore
from .journal_records import CorruptRecord

log = logging.getLogger(__name__)

FORMAT = 2  # the on-appliance format version this code writes and reads
COPIES = 3
PART = 200 * 1024  # bytes of batch or checkpoint per record (records hold up to 256 KiB)
SUPER = "fs-super"
SUPER_MAGIC = b"RSFSSUPR"
PART_MAGIC = b"RSFJ"
_CRC = struct.Struct("<I")
_PART = struct.Struct("<4sQQIIII")  # magic, epoch, sequence, index, count, total crc, crc
_IN_FLIGHT = 32  # record reads or writes per copy at a time
STORE_ATTEMPTS = 8  # read-and-put rounds a record store tries before it gives up


class JournalUnavailable(DataUnavailable):
    """Too few appliances answered to store or load the metadata journal (the request
    fails with EIO and the mount turns read-only, like lost data)."""


class FormatTooNew(ResilfsError):
    """The appliances hold metadata in a format newer than this resilfs knows."""


@dataclass(frozen=True)
class Super:
    """The contents of ``fs-super``: which checkpoint is current, written in which epoch."""

    epoch: int
    generation: int
    parts: int
    size: int
    crc: int

    def encode(self) -> bytes:
        body = json.dumps({"format": FORMAT, "epoch": self.epoch, "generation": self.generation,
                           "parts": self.parts, "size": self.size, "crc": self.crc}).encode()
        return SUPER_MAGIC + _CRC.pack(zlib.crc32(body)) + body

    @classmethod
    def decode(cls, value: bytes) -> "Super | None":
        """The superblock in ``value``; None if it is damaged (or not a superblock);
        FormatTooNew if it is whole and of a newer format."""
        head = len(SUPER_MAGIC) + _CRC.size
        if not value.startswith(SUPER_MAGIC) or len(value) < head:
            return None
        body = value[head:]
        if _CRC.unpack_from(value, len(SUPER_MAGIC))[0] != zlib.crc32(body):
            return None
        try:
            doc = json.loads(body)
            if doc["format"] > FORMAT:
                raise FormatTooNew(f"the metadata on the appliances is in format "
                                   f"{doc['format']}; this resilfs reads format {FORMAT} "
                                   f"(upgrade resilfs to mount it)")
            return cls(doc["epoch"], doc["generation"], doc["parts"], doc["size"], doc["crc"])
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Part:
    """One log record or checkpoint part: a slice of a batch or checkpoint, stamped."""

    stamp: tuple[int, int]  # (epoch, sequence) of the write
    index: int
    count: int
    total_crc: int  # of the whole batch or checkpoint
    payload: bytes

    def encode(self) -> bytes:
        head = _PART.pack(PART_MAGIC, *self.stamp, self.index, self.count, self.total_crc, 0)
        crc = zlib.crc32(self.payload, zlib.crc32(head[:-_CRC.size]))
        return head[:-_CRC.size] + _CRC.pack(crc) + self.payload

    @classmethod
    def decode(cls, value: bytes) -> "Part | None":
        """The part in ``value``; None if it is damaged or torn."""
        if len(value) < _PART.size or not value.startswith(PART_MAGIC):
            return None
        _, epoch, seq, index, count, total_crc, crc = _PART.unpack_from(value)
        payload = value[_PART.size:]
        if zlib.crc32(payload, zlib.crc32(value[:_PART.size - _CRC.size])) != crc:
            return None
        return cls((epoch, seq), index, count, total_crc, payload)


def _split(data: bytes, stamp, prefix_name, first: int = 0) -> dict[str, bytes]:
    """``data`` as encoded parts: {record name: value}; names from ``prefix_name(n)``."""
    pieces = [data[i:i + PART] for i in range(0, len(data), PART)] or [b""]
    crc = zlib.crc32(data)
    return {prefix_name(first + k): Part(stamp, k, len(pieces), crc, piece).encode()
            for k, piece in enumerate(pieces)}


class ApplianceJournalStore(JournalStore):
    """Journal batches and checkpoints as records on the first ``COPIES`` appliances."""

    def __init__(self, pool, owner: str, copies: int = COPIES):
        self.pool = pool
        self.owner = owner
        self.format_version = FORMAT  # of what the appliances hold (1 until rewritten)
        self.addresses = pool.addresses[:copies]
        self.needed = min(2, len(self.addresses))
        self._super = Super(0, 0, 0, 0, 0)  # the current superblock (epoch: as loaded)
        self._epoch = 1  # of this client's writes
        self._seq = 0
        self._next = 0  # number of the next log record
        self._settled = False  # loaded state copied everywhere, superblock in our epoch
        self._chosen: dict[str, bytes] = {}  # the records the loaded state is made of
        self._holders: dict[str, set[str]] = {}  # which copies hold them as chosen
        self._garbage: dict[str, set[str]] = {}  # per copy: records of no loaded state
        self._upgrade = None  # (generation, checkpoint, batches) loaded from format 1
        self._late: trio.Nursery | None = None  # see finish_copies_in

    def finish_copies_in(self, nursery: trio.Nursery | None) -> None:
        """Appends return once ``needed`` copies stored them; the others finish in
        ``nursery`` (None: appends wait for every copy)."""
        self._late = nursery

    # -- helpers ----------------------------------------------------------------------
    async def _on_all(self, call, what: str, *, quorum: bool = False) -> dict:
        """Run ``call(client)`` on every copy; return {address: result} of the ones that
        answered. JournalUnavailable when fewer than ``needed`` answered. With ``quorum``
        and a background nursery (``finish_copies_in``), return as soon as ``needed``
        answered; the other copies finish in that nursery."""
        results = {}
        left = len(self.addresses)
        enough = trio.Event()

        async def one(address):
            nonlocal left
            try:
                client = await self.pool.client(address)
                results[address] = await call(client)
            except TransportError as exc:
                log.warning("journal copy on %s: %s failed: %s", address, what, exc)
                if not isinstance(exc, RecordConflict):
                    await self.pool.mark_failed(address)
            finally:
                left -= 1
                if left == 0 or len(results) >= self.needed:
                    enough.set()

        if quorum and self._late is not None:
            for address in self.addresses:
                self._late.start_soon(one, address)
            await enough.wait()
            results = dict(results)  # what answered so far
        else:
            async with trio.open_nursery() as nursery:
                for address in self.addresses:
                    nursery.start_soon(one, address)
        if len(results) < self.needed:
            raise JournalUnavailable(f"metadata journal: {what} reached {len(results)} of "
                                     f"{len(self.addresses)} appliances, {self.needed} needed")
        return results

    def _log_name(self, generation: int, number: int) -> str:
        return f"fs-log-{generation}-{number}"

    def _stamp(self) -> tuple[int, int]:
        self._seq += 1
        return self._epoch, self._seq

    async def _put_all(self, client, values: dict[str, bytes]) -> None:
        """Store every record of ``values`` on one copy, concurrently; the first
        TransportError is raised after the others finished."""
        if len(values) == 1:
            (name, value), = values.items()
            await _store(client, self.owner, name, value)
            return
        errors = []
        limiter = trio.CapacityLimiter(_IN_FLIGHT)

        async def one(name, value):
            async with limiter:
                try:
                    await _store(client, self.owner, name, value)
                except TransportError as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for name, value in values.items():
                nursery.start_soon(one, name, value)
        if errors:
            raise errors[0]

    async def _fill(self, missing: dict[str, dict[str, bytes]]) -> None:
        """Write ``missing[address]`` to each copy; JournalUnavailable unless every loaded
        record is then on ``needed`` copies."""
        filled = set()

        async def one(address):
            try:
                await self._put_all(await self.pool.client(address), missing[address])
                filled.add(address)
            except TransportError as exc:
                log.warning("journal copy on %s: filling in failed: %s", address, exc)
                if not isinstance(exc, RecordConflict):
                    await self.pool.mark_failed(address)

        async with trio.open_nursery() as nursery:
            for address in missing:
                nursery.start_soon(one, address)
        for name in self._chosen:
            holders = self._holders.get(name, set()) | {
                a for a in filled if name in missing[a]}
            if len(holders) < self.needed:
                raise JournalUnavailable(f"metadata journal: record {name} reached "
                                         f"{len(holders)} appliances, {self.needed} needed")
        for address in filled:  # a retry after a later failure need not write them again
            for name in missing[address]:
                self._holders.setdefault(name, set()).add(address)

    async def _delete(self, garbage: dict[str, set[str]]) -> None:
        """Delete ``garbage[address]`` from each copy, best effort (logged)."""
        async def one(address, names):
            try:
                client = await self.pool.client(address)
                for name in sorted(names):
                    await client.record_delete(self.owner, name)
            except TransportError as exc:
                log.warning("journal copy on %s: deleting old records failed: %s", address, exc)

        async with trio.open_nursery() as nursery:
            for address, names in garbage.items():
                if names:
                    nursery.start_soon(one, address, names)

    # -- loading ------------------------------------------------------------------------
    async def load(self) -> tuple[bytes | None, list[bytes]]:
        """See the module docstring; writes nothing (``_settle`` does, before the first
        write). CorruptRecord if superblocks exist but no checkpoint they name is whole."""
        names = await self._on_all(lambda c: c.record_list(self.owner), "listing")
        supers = await self._on_all(lambda c: c.record_get(self.owner, SUPER), "superblock")
        copies = {a: set(names[a]) for a in names if a in supers}
        if len(copies) < self.needed:
            raise JournalUnavailable(f"metadata journal: {len(copies)} appliances answered, "
                                     f"{self.needed} needed")
        found, old = {}, []
        for address, got in supers.items():
            if got is None:
                continue
            sup = Super.decode(got[1])
            if sup is not None:
                found[address] = sup
            elif (generation := _format1_generation(got[1])) is not None:
                old.append(generation)
            else:
                log.warning("journal copy on %s: damaged superblock ignored", address)
        self._upgrade = None
        self.format_version = FORMAT
        if old and not found:
            names = sorted({n for ns in copies.values() for n in ns
                            if n.startswith(("fs-log-", "fs-ckpt-"))})
            return self._load_format1(copies, await self._read_all(copies, names), max(old))
        self._chosen, self._holders = {}, {}
        blob = None
        for sup in sorted(set(found.values()), key=lambda s: (s.epoch, s.generation),
                          reverse=True):
            blob = await self._read_checkpoint(copies, sup)
            if blob is not None:
                self._super = sup
                break
            log.warning("metadata checkpoint %d (epoch %d) is incomplete on every copy; "
                        "trying an older superblock", sup.generation, sup.epoch)
        else:
            if found:
                raise CorruptRecord("no superblock on the appliances names a whole checkpoint")
            self._super = Super(0, 0, 0, 0, 0)
        prefix = f"fs-log-{self._super.generation}-"
        raw = await self._read_all(copies, sorted({n for ns in copies.values() for n in ns
                                                   if n.startswith(prefix)}))
        stamps = [p.stamp[0] for vs in raw.values() for v in vs.values()
                  if (p := Part.decode(v)) is not None]
        self._epoch = max([s.epoch for s in found.values()] + stamps, default=0) + 1
        self._seq = 0
        batches = self._read_log(raw)
        for name, value in self._chosen.items():
            if name.startswith(prefix):
                self._holders[name] = {a for a, v in raw[name].items() if v == value}
        self._garbage = {a: {n for n in ns if n.startswith(("fs-log-", "fs-ckpt-"))
                             and n not in self._chosen} for a, ns in copies.items()}
        self._settled = False
        return (blob if self._super.parts else None), batches

    async def _read_checkpoint(self, copies, sup: Super) -> bytes | None:
        """The checkpoint ``sup`` names, from whichever copies hold each part whole; None
        if a part is whole nowhere. Notes the parts in ``_chosen`` and ``_holders``."""
        pieces, chosen, holders = [], {}, {}
        for index in range(sup.parts):
            name = f"fs-ckpt-{sup.generation}-{index}"
            versions = (await self._read_all(copies, [name])).get(name, {})
            for value in versions.values():
                part = Part.decode(value)
                if (part is not None and part.index == index and part.count == sup.parts
                        and part.total_crc == sup.crc):
                    chosen[name] = value
                    holders[name] = {a for a, v in versions.items() if v == value}
                    pieces.append(part.payload)
                    break
            else:
                return None
        blob = b"".join(pieces)
        if len(blob) != sup.size or zlib.crc32(blob) != sup.crc:
            return None
        self._chosen.update(chosen)
        self._holders.update(holders)
        return blob

    async def _read_all(self, copies: dict[str, set], names) -> dict[str, dict[str, bytes]]:
        """{name: {address: value}} of every copy of every record in ``names``."""
        raw: dict[str, dict[str, bytes]] = {}
        limiter = trio.CapacityLimiter(_IN_FLIGHT)

        async def one(address, name):
            async with limiter:
                try:
                    found = await (await self.pool.client(address)).record_get(self.owner, name)
                except TransportError as exc:
                    log.warning("journal copy on %s: reading %s failed: %s", address, name, exc)
                    return
            if found is not None:
                raw.setdefault(name, {})[address] = found[1]

        async with trio.open_nursery() as nursery:
            for name in names:
                for address, held in copies.items():
                    if name in held and name != SUPER:
                        nursery.start_soon(one, address, name)
        return raw

    def _batch(self, raw, number: int, first: Part) -> bytes | None:
        """The batch whose first part ``first`` is log record ``number``: its parts, all
        with ``first``'s stamp, from any copy; None unless all are there and the whole has
        the crc they name. The records used go into ``_chosen``."""
        values, pieces = {}, []
        for k in range(first.count):
            name = self._log_name(self._super.generation, number + k)
            for value in raw.get(name, {}).values():
                part = Part.decode(value)
                if (part is not None and part.index == k and part.count == first.count
                        and part.total_crc == first.total_crc and part.stamp == first.stamp):
                    values[name] = value
                    pieces.append(part.payload)
                    break
            else:
                return None
        data = b"".join(pieces)
        if zlib.crc32(data) != first.total_crc:
            return None
        self._chosen.update(values)
        return data

    def _read_log(self, raw) -> list[bytes]:
        """The batches of the current generation's log (see the module docstring)."""
        batches, number, last = [], 0, (0, 0)
        while True:
            starts = {}
            for value in raw.get(self._log_name(self._super.generation, number), {}).values():
                part = Part.decode(value)
                if part is not None and part.index == 0 and part.stamp >= last:
                    starts[part.stamp] = part
            for stamp in sorted(starts, reverse=True):
                part = starts[stamp]
                batch = self._batch(raw, number, part)
                if batch is not None:
                    batches.append(batch)
                    number += part.count
                    last = stamp
                    break
            else:
                break
        self._next = number
        return batches

    def _load_format1(self, copies, raw, generation: int):
        """Format 1 (before the format had a version): a JSON superblock, bare checkpoint
        parts, log records of a flag byte ("ends a batch") and data, any copy as good as
        another. Loaded as it was; ``_settle`` rewrites it in this format."""
        self.format_version = 1
        parts = []
        for i in itertools.count():
            name = f"fs-ckpt-{generation}-{i}"
            if name not in raw:
                break
            parts.append(next(iter(raw[name].values())))
        blob = b"".join(parts) if parts else None
        batches, current = [], []
        for number in itertools.count():
            values = raw.get(self._log_name(generation, number))
            if not values:
                break
            value = next(iter(values.values()))
            current.append(value[1:])
            if value[0] == 1:
                batches.append(b"".join(current))
                current = []
        self._upgrade = (generation + 1, blob, batches)
        self._epoch = 1
        self._super = Super(0, generation, 0, 0, 0)
        self._chosen, self._holders = {}, {}
        self._garbage = {a: {n for n in ns if n.startswith(("fs-log-", "fs-ckpt-"))}
                         for a, ns in copies.items()}
        self._settled = False
        log.info("metadata in format 1 (generation %d): it is rewritten in format %d before "
                 "the first change", generation, FORMAT)
        return blob, batches

    async def _rewrite(self) -> set[str]:
        """Write format 1's loaded checkpoint and batches as generation G+1 of this format
        (to ``needed`` copies at least); return the names written."""
        generation, blob, batches = self._upgrade
        values, sup = {}, Super(self._epoch, generation, 0, 0, 0)
        if blob is not None:
            values = _split(blob, self._stamp(), lambda i: f"fs-ckpt-{generation}-{i}")
            sup = Super(self._epoch, generation, len(values), len(blob), zlib.crc32(blob))
        number = 0
        for batch in batches:
            log_values = _split(batch, self._stamp(),
                                lambda n: self._log_name(generation, n), number)
            number += len(log_values)
            values.update(log_values)
        await self._on_all(lambda c: self._put_all(c, values),
                           f"rewriting the metadata as generation {generation}")
        self._super, self._next, self._upgrade = sup, number, None
        return set(values)

    async def _settle(self) -> None:
        """Before the first write after ``load``: copy the loaded records to the copies
        that lack them (each must end on ``needed`` copies), write the superblock in this
        client's epoch, delete what belongs to no loaded state (best effort)."""
        if self._settled:
            return
        if self._upgrade is not None:
            written = await self._rewrite()
            for names in self._garbage.values():
                names -= written
        missing: dict[str, dict[str, bytes]] = {}
        for name, value in self._chosen.items():
            for address in self.addresses:
                if address not in self._holders.get(name, ()):
                    missing.setdefault(address, {})[name] = value
        await self._fill(missing)
        sup = Super(self._epoch, self._super.generation, self._super.parts, self._super.size,
                    self._super.crc)
        await self._on_all(lambda c: _store(c, self.owner, SUPER, sup.encode()), "superblock")
        self._super = sup
        self._settled = True
        self.format_version = FORMAT
        self._chosen, self._holders = {}, {}
        garbage, self._garbage = self._garbage, {}
        await self._delete(garbage)

    async def append(self, batch: bytes) -> None:
        """Numbers advance only when the whole batch is stored: a retry after a failure
        reuses them with a higher stamp, which wins over what the failed attempt left."""
        await self._settle()
        values = _split(batch, self._stamp(),
                        lambda n: self._log_name(self._super.generation, n), self._next)
        await self._on_all(lambda c: self._put_all(c, values), f"append {next(iter(values))}",
                           quorum=True)
        self._next += len(values)

    async def write_checkpoint(self, blob: bytes) -> None:
        await self._settle()
        old, new = self._super.generation, self._super.generation + 1
        parts = _split(blob, self._stamp(), lambda i: f"fs-ckpt-{new}-{i}")
        await self._on_all(lambda c: self._put_all(c, parts), f"checkpoint {new}")
        sup = Super(self._epoch, new, len(parts), len(blob), zlib.crc32(blob))
        try:
            await self._on_all(lambda c: _store(c, self.owner, SUPER, sup.encode()),
                               "superblock")
        except BaseException:
            # some copies may hold the new superblock: a newer epoch must outrank it
            # before anything else is written (the next write settles again)
            self._epoch += 1
            self._settled = False
            raise
        self._super, self._next = sup, 0
        try:
            await self._on_all(lambda c: self._drop(c, old), "dropping old records")
        except JournalUnavailable as exc:  # the next load finds them and deletes them
            log.warning("old metadata records stay for now: %s", exc)

    async def _drop(self, client, generation: int) -> None:
        prefixes = (f"fs-log-{generation}-", f"fs-ckpt-{generation}-")
        for name in await client.record_list(self.owner):
            if name.startswith(prefixes):
                await client.record_delete(self.owner, name)

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to the mount."""


def _format1_generation(value: bytes) -> int | None:
    """The generation a format-1 superblock (bare JSON) names; None if it is not one."""
    try:
        doc = json.loads(value)
        return doc["generation"] if "format" not in doc else None
    except (ValueError, KeyError, TypeError):
        return None


async def _store(client, owner: str, name: str, value: bytes) -> None:
    """Store a record whatever it holds now: create it, or replace what is there.

    Another writer that changes the record between our read and our put makes the put
    conflict, and we read again; after ``STORE_ATTEMPTS`` conflicts in a row RecordConflict
    is raised (the copy counts as failed for this write, like an appliance that did not
    answer) instead of retrying for as long as the other writer goes on."""
    try:
        await client.record_put(owner, name, value, 0)
        return
    except RecordConflict:
        pass
    for _ in range(STORE_ATTEMPTS):
        found = await client.record_get(owner, name)
        try:
            await client.record_put(owner, name, value, found[0] if found else 0)
            return
        except RecordConflict:
            continue
    raise RecordConflict(f"record {owner}/{name} changed under every one of "
                         f"{STORE_ATTEMPTS} writes in a row (another client writes it)")
