"""At mount: free the regions and set records that nothing of the filesystem references.

A crash leaves them behind: a snapshot create that died after storing its snapshot set's
record and before its journal commit (the split-off region is then named only by a record
of a set the journal never heard of), a snapshot delete that died between its commit and
freeing the sets, a data set created but never journaled, a replaced member whose appliance
was down when the set tried to free it.

Kept: every region named by the newest record of a set the journal knows (data sets and
snapshot sets), whatever the state of that member. Freed: every other region of the
filesystem's owner whose key some record on the appliances names (an appliance frees a
region only with its key; a region no record ever named stays, and is counted in the log).
Deleted: every set record of a set the journal does not know. Repaired: every copy of a
known set's record that holds an older epoch than the newest copy (a save cut short by a
crash left it behind; a set nothing opens again, such as a snapshot's, would keep it, and
losing the appliances of the newest copies would then bring the older state back) is
overwritten with the newest.

Safe because it runs before the mount serves a request or starts background work, so
nothing of this mount is allocating or moving a region between records (one mount per
filesystem at a time, as the journal assumes), and because it does nothing at all unless
every appliance of the cluster answered and every set the journal knows has a readable
record naming only appliances of the cluster. A TransportError while freeing stops it; what
was freed stays freed (each step is safe on its own). Cancellation likewise.
"""
import logging
from dataclasses import dataclass

import trio

from ..sets.membership import RECORD_PREFIX, Membership
from ..sets.pool import AppliancePool
from ..transport.base import RegionHandle, RegionInfo, TransportError
from .backing import set_name
from .state import State

log = logging.getLogger(__name__)

CONCURRENT_GETS = 32  # record reads in flight per appliance


@dataclass
class SweepReport:
    regions_freed: int = 0
    bytes_freed: int = 0
    records_deleted: int = 0
    records_repaired: int = 0  # copies at an older epoch given the newest
    unknown_keys: int = 0  # unreferenced regions that no record names: left allocated
    skipped: str | None = None  # why nothing was done


class _Skip(Exception):
    """The sweep cannot tell what is referenced: do nothing."""


def known_sets(state: State) -> set[str]:
    """The set ids the journal references: data sets and snapshot sets."""
    return {set_name(i) for i in (*state.allocator.set_sizes(), *state.snapsets)}


async def sweep(pool: AppliancePool, owner: str, known: set[str]) -> SweepReport:
    """Free what no set in ``known`` references (see the module docstring)."""
    report = SweepReport()
    try:
        regions, copies = await _survey(pool, owner)
        referenced = _referenced(copies, known, set(pool.addresses))
    except _Skip as exc:
        report.skipped = str(exc)
        log.info("leak sweep skipped: %s", exc)
        return report
    keys = {(m.appliance, m.region_id): m.key for found in copies.values()
            for _, record, _ in found for m in record.members if m.region_id}
    try:
        for address, infos in regions.items():
            client = await pool.client(address)
            for info in infos:
                if (address, info.region_id) in referenced:
                    continue
                key = keys.get((address, info.region_id))
                if key is None:
                    report.unknown_keys += 1
                    continue
                await client.free(RegionHandle(address, info.region_id, info.size, key))
                report.regions_freed += 1
                report.bytes_freed += info.size
        for set_id, found in sorted(copies.items()):
            if set_id in known:
                continue
            for address, _, _ in found:
                await (await pool.client(address)).record_delete(owner,
                                                                 RECORD_PREFIX + set_id)
                report.records_deleted += 1
        for set_id in sorted(known):
            report.records_repaired += await _repair(pool, owner, set_id, copies[set_id])
    except TransportError as exc:  # RecordConflict included: another writer, stop
        log.warning("leak sweep stopped: %s", exc)
    if (report.regions_freed or report.records_deleted or report.unknown_keys
            or report.records_repaired):
        log.info("leak sweep: freed %d regions (%d bytes), deleted %d set records, "
                 "repaired %d record copies at an older epoch; %d unreferenced regions "
                 "have no known key and stay", report.regions_freed, report.bytes_freed,
                 report.records_deleted, report.records_repaired, report.unknown_keys)
    return report


async def _repair(pool: AppliancePool, owner: str, set_id: str, found) -> int:
    """Overwrite each copy of the set's record that is older than the newest with the
    newest; the number of copies written. Raises TransportError (RecordConflict if a copy
    changed since it was read)."""
    newest = max(found, key=lambda copy: copy[1].epoch)
    value = newest[1].to_bytes()
    repaired = 0
    for address, record, generation in found:
        if record.epoch < newest[1].epoch:
            log.info("set %s: the record on %s is at epoch %d; writing the newest (%d)",
                     set_id, address, record.epoch, newest[1].epoch)
            await (await pool.client(address)).record_put(owner, RECORD_PREFIX + set_id,
                                                          value, generation)
            repaired += 1
    return repaired


async def _survey(pool: AppliancePool, owner: str):
    """Every appliance's regions of ``owner`` and every readable copy of every set record:
    ({address: [RegionInfo]}, {set id: [(address, Membership, generation)]}). _Skip if
    one fails."""
    regions: dict[str, list[RegionInfo]] = {}
    copies: dict[str, list[tuple[str, Membership, int]]] = {}
    failures: list[str] = []

    async def read(client, address: str, name: str, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            got = await client.record_get(owner, name)
        if got is None:
            return
        try:
            record = Membership.from_bytes(got[1])
        except ValueError as exc:
            log.warning("leak sweep: ignoring record %s on %s: %s", name, address, exc)
            return
        copies.setdefault(name[len(RECORD_PREFIX):], []).append((address, record, got[0]))

    async def one(address: str) -> None:
        try:
            client = await pool.client(address)
            regions[address] = await client.regions(owner)
            names = [n for n in await client.record_list(owner) if n.startswith(RECORD_PREFIX)]
            limiter = trio.CapacityLimiter(CONCURRENT_GETS)
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(read, client, address, name, limiter)
        except TransportError as exc:
            failures.append(f"appliance {address}: {exc}")

    async with trio.open_nursery() as nursery:
        for address in pool.addresses:
            nursery.start_soon(one, address)
    if failures:
        raise _Skip("; ".join(sorted(failures)))
    return regions, copies


def _referenced(copies, known: set[str], cluster: set[str]) -> set[tuple[str, int]]:
    """(appliance, region id) of every member of the newest record of each known set."""
    referenced = set()
    for set_id in sorted(known):
        found = copies.get(set_id)
        if not found:
            raise _Skip(f"set {set_id} has no readable record")
        newest = max((record for _, record, _ in found), key=lambda r: r.epoch)
        for m in newest.members:
            if m.appliance not in cluster:
                raise _Skip(f"set {set_id} has a member on {m.appliance}, which is not in "
                            f"the cluster file")
            if m.region_id:
                referenced.add((m.appliance, m.region_id))
    return referenced
