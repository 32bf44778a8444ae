"""The journal store on the appliances: the product's default (see ``JournalStore``).

Metadata is mirrored as appliance records (small durable values with compare-and-set) on
up to ``COPIES`` appliances of the cluster, under the filesystem's owner name:

* ``fs-super``: JSON ``{"generation": G, "parts": P}``: the current checkpoint generation.
* ``fs-ckpt-G-I``: part I (of P) of the checkpoint of generation G.
* ``fs-log-G-N``: the N-th journal record of generation G: one byte (1 if it ends a batch)
  then up to ``PART`` bytes of the batch. Batches larger than that span several records.

An append is durable when ``min(2, copies)`` appliances stored every record of it; the
others are tried too, and a copy that missed records is filled in from the others at the
next load. A checkpoint writes generation G+1's parts everywhere, then moves ``fs-super``
to G+1 (the switch), then deletes generation G: a crash leaves either generation whole.
Loading takes the newest generation any copy has and, for each record number, any copy
that holds it. TransportError from too many copies becomes JournalUnavailable.
"""
import json
import logging

import trio

from ..transport.base import RecordConflict, TransportError
from .errors import DataUnavailable
from .journal import JournalStore

log = logging.getLogger(__name__)

COPIES = 3
PART = 200 * 1024  # bytes of batch or checkpoint per record (records hold up to 256 KiB)
SUPER = "fs-super"


class JournalUnavailable(DataUnavailable):
    """Too few appliances answered to store or load the metadata journal (the request
    fails with EIO and the mount turns read-only, like lost data)."""


class ApplianceJournalStore(JournalStore):
    """Journal batches and checkpoints as records on the first ``COPIES`` appliances."""

    def __init__(self, pool, owner: str, copies: int = COPIES):
        self.pool = pool
        self.owner = owner
        self.addresses = pool.addresses[:copies]
        self.needed = min(2, len(self.addresses))
        self._generation = 0
        self._next = 0  # number of the next log record

    # -- helpers ----------------------------------------------------------------------
    async def _on_all(self, call, what: str) -> dict:
        """Run ``call(client)`` on every copy; return {address: result} of the ones that
        answered. JournalUnavailable when fewer than ``needed`` answered."""
        results = {}

        async def one(address):
            try:
                client = await self.pool.client(address)
                results[address] = await call(client)
            except TransportError as exc:
                log.warning("journal copy on %s: %s failed: %s", address, what, exc)
                if not isinstance(exc, RecordConflict):
                    await self.pool.mark_failed(address)

        async with trio.open_nursery() as nursery:
            for address in self.addresses:
                nursery.start_soon(one, address)
        if len(results) < self.needed:
            raise JournalUnavailable(f"metadata journal: {what} reached {len(results)} of "
                                     f"{len(self.addresses)} appliances, {self.needed} needed")
        return results

    def _log_name(self, generation: int, number: int) -> str:
        return f"fs-log-{generation}-{number}"

    # -- JournalStore -------------------------------------------------------------------
    async def load(self) -> tuple[bytes | None, list[bytes]]:
        names = await self._on_all(lambda c: c.record_list(self.owner), "listing")
        supers = await self._on_all(lambda c: c.record_get(self.owner, SUPER), "superblock")
        best = None
        for found in supers.values():
            if found is not None:
                info = json.loads(found[1])
                if best is None or info["generation"] > best["generation"]:
                    best = info
        if best is None:
            self._generation, self._next = 0, self._count_logs(names, 0)
            return None, await self._read_batches(names, 0)
        self._generation = best["generation"]
        parts = []
        for i in range(best["parts"]):
            parts.append(await self._read_any(names, f"fs-ckpt-{self._generation}-{i}"))
        self._next = self._count_logs(names, self._generation)
        return b"".join(parts), await self._read_batches(names, self._generation)

    def _count_logs(self, names: dict, generation: int) -> int:
        prefix = f"fs-log-{generation}-"
        numbers = {int(n[len(prefix):]) for ns in names.values() for n in ns
                   if n.startswith(prefix)}
        count = 0
        while count in numbers:
            count += 1
        return count

    async def _read_any(self, names: dict, name: str) -> bytes:
        for address, ns in names.items():
            if name in ns:
                try:
                    found = await (await self.pool.client(address)).record_get(self.owner, name)
                except TransportError as exc:
                    log.warning("journal copy on %s: reading %s failed: %s", address, name, exc)
                    continue
                if found is not None:
                    return found[1]
        raise JournalUnavailable(f"metadata record {name} is on no reachable appliance")

    async def _read_batches(self, names: dict, generation: int) -> list[bytes]:
        batches, current = [], []
        for number in range(self._count_logs(names, generation)):
            value = await self._read_any(names, self._log_name(generation, number))
            current.append(value[1:])
            if value[0] == 1:
                batches.append(b"".join(current))
                current = []
        if current:  # the next append replaces these records
            log.warning("ignoring an incomplete last journal batch (%d records)", len(current))
            self._next -= len(current)
        return batches

    async def append(self, batch: bytes) -> None:
        """Numbers advance only when the whole batch is stored: a retry after a failure
        reuses them, replacing whatever the failed attempt left on some copies."""
        parts = [batch[i:i + PART] for i in range(0, len(batch), PART)] or [b""]
        for k, part in enumerate(parts):
            name = self._log_name(self._generation, self._next + k)
            value = bytes([k == len(parts) - 1]) + part
            await self._on_all(lambda c, n=name, v=value: _create(c, self.owner, n, v),
                               f"append {name}")
        self._next += len(parts)

    async def write_checkpoint(self, blob: bytes) -> None:
        old, new = self._generation, self._generation + 1
        parts = [blob[i:i + PART] for i in range(0, len(blob), PART)] or [b""]
        for i, part in enumerate(parts):
            name = f"fs-ckpt-{new}-{i}"
            await self._on_all(lambda c, n=name, p=part: _put(c, self.owner, n, p),
                               f"checkpoint {name}")
        value = json.dumps({"generation": new, "parts": len(parts)}).encode()
        await self._on_all(lambda c: _put(c, self.owner, SUPER, value), "superblock")
        self._generation, self._next = new, 0
        await self._on_all(lambda c: self._drop(c, old), "dropping old records")

    async def _drop(self, client, generation: int) -> None:
        prefixes = (f"fs-log-{generation}-", f"fs-ckpt-{generation}-")
        for name in await client.record_list(self.owner):
            if name.startswith(prefixes):
                await client.record_delete(self.owner, name)

    async def aclose(self) -> None:
        """Nothing to release: the pool belongs to the mount."""


async def _put(client, owner: str, name: str, value: bytes) -> None:
    """Store a record whatever its current generation (compare-and-set, retried)."""
    while True:
        found = await client.record_get(owner, name)
        try:
            await client.record_put(owner, name, value, found[0] if found else 0)
            return
        except RecordConflict:
            continue


async def _create(client, owner: str, name: str, value: bytes) -> None:
    """Store a new record; replace one left by a failed earlier attempt."""
    try:
        await client.record_put(owner, name, value, 0)
    except RecordConflict:
        await _put(client, owner, name, value)
