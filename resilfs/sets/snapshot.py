"""Snapshots of resiliency sets (claims 9, 10, 18, 20): split a member off, or clone members.

A snapshot of a set is a new set, named by the caller, whose regions hold the source set's
bytes as they were at one instant. Two ways, neither moves set data through the client:

* **split** (a healthy mirror set): one member region is taken out of the set and becomes
  the snapshot's data. A replacement region, allocated beforehand on an appliance not in
  the set, takes its place as a ``rebuilding`` member with every stripe dirty; the
  ``RebuildWorker`` restores the lost redundancy in the background. The snapshot set is a
  ``mirror:N`` set of that one region plus ``N-1`` placeholder members (failed, no region),
  which the worker fills in the same way once the snapshot set is opened.
* **clone** (parity/ec sets, and mirror sets that are not fully healthy): each live member's
  appliance copies its region locally (the appliance's CLONE op); the snapshot set has the
  source's scheme, the clones as members, and the source members' states and dirty stripes,
  so it keeps the redundancy the source had.

Use: ``prepare`` (allocates what a split needs: NoPlacement changes nothing), then, with
the caller holding every stripe lock of the set (``quiesce``: claim 10, no write is in
flight on it), ``take``; then ``save`` stores the snapshot set's membership record. Until
``save``, ``undo`` puts everything back. Callers quiesce several sets at once (a directory
snapshot) by entering their ``quiesce`` in ascending order.
"""
import logging
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ..transport.base import ApplianceUnavailable, NoSpace, RegionHandle, TransportError
from . import membership as records
from .errors import NoPlacement, SetError, SetUnavailable
from .membership import FAILED, OK, REBUILDING, Member, Membership
from .resiliency import ResiliencySet, _Progress

log = logging.getLogger(__name__)

SPLIT, CLONE = "split", "clone"


@dataclass(eq=False)
class SetSnapshot:
    """One set's snapshot in progress (see the module docstring for the steps)."""

    source: ResiliencySet
    set_id: str  # the snapshot set's id
    replacement: RegionHandle | None = None  # allocated by ``prepare`` for a split
    method: str | None = None  # SPLIT or CLONE once taken
    membership: Membership | None = None
    _detached: tuple[int, Member] | None = None
    _clones: list[RegionHandle] = field(default_factory=list)


def _splittable(s: ResiliencySet) -> int | None:
    """The member a split would take (the last), or None if the set is not fully healthy."""
    if s.mirror and all(m.state == OK and not m.dirty for m in s.members):
        return len(s.members) - 1
    return None


@asynccontextmanager
async def quiesce(s: ResiliencySet):
    """Hold every stripe of ``s``: in-flight writes drain, new ones wait (claim 10)."""
    async with s.locks.hold_all():
        yield


async def settle(s: ResiliencySet, timeout: float) -> None:
    """Wait, up to ``timeout`` seconds, while a mirror set rebuilds with no member failed
    (after an earlier snapshot): a split then takes the place of a clone, which copies
    the whole region inside the appliances (and keeps them busy meanwhile)."""
    if not s.mirror:
        return
    with trio.move_on_after(timeout):
        while (any(m.state == REBUILDING for m in s.members)
               and not any(m.state == FAILED for m in s.members)):
            await trio.sleep(0.05)


async def prepare(s: ResiliencySet, set_id: str) -> SetSnapshot:
    """Allocate what the snapshot will need; NoPlacement (nothing allocated) if no room."""
    snap = SetSnapshot(s, set_id)
    if _splittable(s) is None:
        return snap
    in_set = {m.appliance for m in s.members}
    candidates = [a for a in s.pool.up() if a not in in_set]
    if candidates:
        start = zlib.crc32(f"{s.owner}/{set_id}".encode()) % len(candidates)
        candidates = candidates[start:] + candidates[:start]
    size = s.members[-1].size
    for address in candidates:
        try:
            client = await s.pool.client(address)
            snap.replacement = await client.alloc(size, s.owner)
            return snap
        except TransportError as e:
            log.info("no replacement region for %s on %s: %s", s.set_id, address, e)
    raise NoPlacement(f"set {s.set_id!r}: no appliance outside the set has {size} bytes "
                      f"free for the region that replaces the snapshot's")


async def take(snap: SetSnapshot) -> None:
    """Take the snapshot; the caller holds every stripe lock of the source (``quiesce``).

    Raises NoPlacement (a clone found no room), SetUnavailable or SetError; then nothing
    changed except what ``undo`` reverts.
    """
    s = snap.source
    if _splittable(s) is not None and snap.replacement is not None:
        await _probe(s)  # a member on a dead appliance the set has not noticed yet
        index = _splittable(s)
        if index is not None and await _split(snap, index):
            return
    await _free_quietly(s, snap.replacement)
    snap.replacement = None
    await _clone(snap)


async def _probe(s: ResiliencySet) -> None:
    """Ask every live member's appliance for its region; mark the silent ones failed."""
    async def one(i: int, m: Member) -> None:
        client = None
        try:
            client = await s.pool.client(m.appliance)
            await client.lookup(m.region_id, m.key)
        except TransportError as e:
            await s._fail(i, e, client)

    async with trio.open_nursery() as nursery:
        for i, m in enumerate(s.members):
            if m.state != FAILED:
                nursery.start_soon(one, i, m)


async def _split(snap: SetSnapshot, index: int) -> bool:
    """Swap the replacement in for member ``index``; False (swapped back, replacement
    kept for ``take`` to free) if another member failed meanwhile: the split member would
    have been the only current copy."""
    s, new = snap.source, snap.replacement
    old = s.members[index]
    s.members[index] = Member(new.appliance, new.region_id, new.key, new.size, REBUILDING,
                              set(range(s.stripes)))
    s.progress[index] = _Progress(s.stripes * s.chunk_size)
    s.changed()
    snap._detached = (index, old)
    snap.method = SPLIT
    try:
        await s._persist()
    finally:
        others_ok = all(m.state == OK for i, m in enumerate(s.members) if i != index)
        if not others_ok:
            s.members[index] = old
            s.progress.pop(index, None)
            s.changed()
            snap._detached = None
            snap.method = None
            await s._persist()
    if not others_ok:
        log.warning("set %s: a member failed during the split; cloning instead", s.set_id)
        return False
    snap.replacement = None
    placeholders = [_placeholder(old.appliance, old.size, s.stripes)
                    for _ in range(len(s.members) - 1)]
    snap.membership = _membership(s, snap.set_id, [
        Member(old.appliance, old.region_id, old.key, old.size), *placeholders])
    log.info("set %s: member %d (region %d on %s) split off as snapshot set %s; region %d "
             "on %s replaces it", s.set_id, index, old.region_id, old.appliance, snap.set_id,
             new.region_id, new.appliance)
    return True


async def _clone(snap: SetSnapshot) -> None:
    s = snap.source
    snap.method = CLONE
    clones: dict[int, RegionHandle] = {}
    errors: list[Exception] = []

    async def one(i: int, m: Member) -> None:
        client = None
        try:
            client = await s.pool.client(m.appliance)
            clones[i] = await client.clone(m.handle)
        except ApplianceUnavailable as e:  # the member is gone: its clone too
            await s._fail(i, e, client)
        except TransportError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for i, m in enumerate(s.members):
            if m.state != FAILED:
                nursery.start_soon(one, i, m)
    snap._clones = list(clones.values())
    if not errors and any(len([i for i in clones if s.members[i].usable(st)]) < s.k
                          for st in range(s.stripes)):
        errors.append(SetUnavailable(f"fewer than {s.k} current members to clone"))
    if errors:
        await _free_all(s, snap._clones)
        snap._clones = []
        if any(isinstance(e, NoSpace) for e in errors):
            raise NoPlacement(f"set {s.set_id!r}: no room to clone a member: {errors[0]}")
        raise SetError(f"set {s.set_id!r}: cannot clone every live member: {errors[0]}")
    members = []
    for i, m in enumerate(s.members):
        if i in clones:
            c = clones[i]
            members.append(Member(m.appliance, c.region_id, c.key, c.size, m.state,
                                  set(m.dirty)))
        else:
            members.append(_placeholder(m.appliance, m.size, s.stripes))
    snap.membership = _membership(s, snap.set_id, members)
    log.info("set %s: %d members cloned in their appliances as snapshot set %s", s.set_id,
             len(clones), snap.set_id)


def _placeholder(appliance: str, size: int, stripes: int) -> Member:
    """A failed member with no region: the rebuild worker replaces it ("region lost")."""
    return Member(appliance, 0, 0, size, FAILED, set(range(stripes)))


def _membership(s: ResiliencySet, set_id: str, members: list[Member]) -> Membership:
    return Membership(s.owner, set_id, s.scheme, s.membership.backend, s.chunk_size, s.size,
                      members, epoch=time.time_ns() // 1000)


async def save(snap: SetSnapshot) -> None:
    """Store the snapshot set's membership record (members and witnesses, like a set's)."""
    pool, m = snap.source.pool, snap.membership
    targets = [x.appliance for x in m.members if x.state != FAILED]
    witnesses = [a for a in pool.up() if a not in targets]
    failed = await records.save(pool, m, {}, targets, witnesses)
    if len(failed) == len(targets):
        raise SetUnavailable(f"snapshot set {snap.set_id!r}: no member took its record")


async def undo(snap: SetSnapshot) -> None:
    """Revert ``prepare``/``take`` (before ``save``): the split member goes back, clones and
    the replacement are freed. Call with the stripes still held. Best effort on errors."""
    s = snap.source
    if snap._detached is not None:
        index, old = snap._detached
        new = s.members[index]
        s.members[index] = old
        s.progress.pop(index, None)
        s.changed()
        snap._detached = None
        try:
            await s._persist()
        except SetError as e:
            log.warning("set %s: restoring the split member: %s", s.set_id, e)
        await _free_quietly(s, new.handle)
    await _free_all(s, snap._clones)
    snap._clones = []
    await _free_quietly(s, snap.replacement)
    snap.replacement = None


async def _free_all(s: ResiliencySet, handles) -> None:
    for h in handles:
        await _free_quietly(s, h)


async def _free_quietly(s: ResiliencySet, handle: RegionHandle | None) -> None:
    if handle is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(s.pool.timeout * 2):
        try:
            await (await s.pool.client(handle.appliance)).free(handle)
        except TransportError as e:
            log.warning("could not free region %d on %s: %s", handle.region_id,
                        handle.appliance, e)
