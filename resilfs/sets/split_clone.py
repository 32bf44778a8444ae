"""Snapshots of resiliency sets (claims 9, 10, 18, 20): split a member off, or clone members.

A snapshot of a set is a new set, named by the caller, whose regions hold the source set's
bytes as they were at one instant. Two ways, neither moves set data through the client:

* **split** (a healthy mirror set of three or more copies): the last member region is taken
  out of the set and becomes the snapshot's data. A placeholder (a failed member with no
  region) takes its place, so the source set is short of one member (and still has two
  copies); the set tells the ``RebuildWorker`` at once, which allocates a replacement and
  rebuilds it in the background. The snapshot set is a ``mirror:N`` set of that one region
  plus ``N-1`` placeholders, which the worker fills in the same way once it watches the
  snapshot set (the snapshot's own redundancy comes then).
* **clone** (parity/ec sets, mirror sets of two copies, whose live data a split would
  leave on one copy until the rebuild ends, and mirror sets that are not fully healthy):
  each live member's
  appliance copies its region locally (the appliance's CLONE op); the snapshot set has the
  source's scheme, the clones as members, and the source members' states and dirty stripes,
  so it keeps the redundancy the source had. Its record is stored at once, before the
  caller's commit, so that a crash in between leaves nothing the next mount's sweep cannot
  free.

Use, for all the sets of one snapshot together, with every stripe lock of every set held
(``quiesce``: claim 10, no write in flight; several sets are quiesced in ascending order):
``prepare`` checks them against a ``Survey`` of the appliances (one STAT each, whatever the
number of sets, taken beforehand; members on silent appliances are marked failed, so those
sets are cloned; NoPlacement if the split sets could not be rebuilt for lack of room),
then ``take`` each set. Taking a split changes nothing yet (no I/O). The caller makes the
snapshot durable by journaling each snapshot set's ``membership`` record (one commit for
all sets), then ``detach`` changes the split sources in memory (before the stripes are
released, so the rebuild worker has nothing to do while the call runs), and afterwards,
in the background, ``store`` writes the source's and the snapshot set's records to the
appliances. A crash in between is repaired at the next mount by ``recover``, from the
journaled record, before any set is opened. Until the caller journals, ``undo`` reverts.
"""
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import trio

from ..codec import make_codec
from ..transport.base import ApplianceUnavailable, NoSpace, RegionHandle, TransportError
from . import membership as set_records
from .errors import NoPlacement, SetError, SetNotFound, SetUnavailable
from .membership import FAILED, OK, REBUILDING, Member, Membership
from .pool import AppliancePool
from .resiliency import ResiliencySet

log = logging.getLogger(__name__)

SPLIT, CLONE = "split", "clone"
SPLIT_MIN_COPIES = 3  # a mirror set is split only if two copies of its live data stay


@dataclass(eq=False)
class SetSnapshot:
    """One set's snapshot in progress (see the module docstring for the steps)."""

    source: ResiliencySet
    set_id: str  # the snapshot set's id
    method: str | None = None  # SPLIT or CLONE once taken
    membership: Membership | None = None  # the snapshot set's, once taken
    _detached: tuple[int, Member] | None = None
    _clones: list[RegionHandle] = field(default_factory=list)


def placeholder(member: Member) -> bool:
    """Whether ``member`` is a placeholder: failed, no region; the rebuild worker replaces
    it at once (its region is "lost")."""
    return member.state == FAILED and member.region_id == 0


def _placeholder(appliance: str, size: int, stripes: int | None) -> Member:
    """A placeholder in a live set (``stripes``: the set's count) misses every stripe, so
    writes have nothing to add to it; one in a snapshot set (None: never written) lists
    none, which keeps its record short (the replacement starts with every stripe dirty)."""
    return Member(appliance, 0, 0, size, FAILED, set(_all_stripes(stripes or 0)))


@lru_cache(maxsize=16)
def _all_stripes(stripes: int) -> frozenset[int]:
    return frozenset(range(stripes))  # copying it is ~7x faster than building it


def _splittable(s: ResiliencySet) -> int | None:
    """The member a split would take (the last), or None: the set is not fully healthy, or
    a split would leave its live data on a single copy (a mirror of two), which one
    appliance failure before the rebuild ends would lose. Such sets are cloned."""
    if (s.mirror and len(s.members) >= SPLIT_MIN_COPIES
            and all(m.state == OK and not m.dirty for m in s.members)):
        return len(s.members) - 1
    return None


@asynccontextmanager
async def quiesce(s: ResiliencySet):
    """Hold every stripe of ``s``: in-flight writes drain, new ones wait (claim 10)."""
    async with s.locks.hold_all():
        yield


async def settle(s: ResiliencySet, timeout: float) -> None:
    """Wait, up to ``timeout`` seconds, while a mirror set regains a member that an earlier
    snapshot split off (placeholder or rebuilding) and none has really failed: a split
    then takes the place of a clone, which copies the whole region inside the appliances
    (and keeps them busy meanwhile). Sets that are never split return at once."""
    if not s.mirror or len(s.members) < SPLIT_MIN_COPIES:
        return
    with trio.move_on_after(timeout):
        while (any(m.state == REBUILDING or placeholder(m) for m in s.members)
               and not any(m.state == FAILED and not placeholder(m) for m in s.members)):
            await trio.sleep(0.05)


class Survey:
    """The appliances as a snapshot finds them: the free bytes of each that answered a STAT
    (``refresh``; one request per appliance, whatever the number of sets)."""

    FRESH = 1.0  # seconds a survey stands for the appliances' liveness

    def __init__(self, pool: AppliancePool):
        self.pool = pool
        self.free: dict[str, int] = {}
        self.at = -math.inf  # trio clock of the last refresh

    async def refresh(self) -> None:
        """STAT every connected appliance concurrently; one that does not answer within
        the client's timeout (no deadline of its own: see ``AppliancePool.probe``) is
        dropped from the pool (``notice_down_members`` then fails the members on it).
        Never raises."""
        free: dict[str, int] = {}
        pool = self.pool

        async def one(address: str) -> None:
            client = None
            try:
                client = await pool.client(address)
                st = await client.stat()
                free[address] = max(st.capacity - st.used, 0)
            except TransportError as e:
                log.warning("appliance %s did not answer before a snapshot: %s", address, e)
                await pool.mark_failed(address, client)

        async with trio.open_nursery() as nursery:
            for address in pool.up():
                nursery.start_soon(one, address)
        self.free, self.at = free, trio.current_time()


async def prepare(sets: list[ResiliencySet], set_ids: list[str],
                  survey: Survey) -> list[SetSnapshot]:
    """One SetSnapshot per set; the caller holds every set's ``quiesce``.

    ``survey`` (refreshed here if older than ``Survey.FRESH``) says which appliances
    answer: members on the others are marked failed (stored at once), so a split never
    leaves a set whose other members are gone; those sets are cloned. Raises NoPlacement,
    having changed nothing else, if the answering appliances could not hold a replacement
    region for every set that will be split (checked, not reserved: a concurrent
    allocation may still take the room, and the set then stays short of a member until
    the rebuild worker finds some).
    """
    snaps = [SetSnapshot(s, set_id) for s, set_id in zip(sets, set_ids, strict=True)]
    if trio.current_time() - survey.at > Survey.FRESH:
        await survey.refresh()
    for s in sets:
        await s.notice_down_members()
    free = dict(survey.free)
    for s in sets:
        index = _splittable(s)
        if index is None:
            continue
        size = s.members[index].size
        staying = {m.appliance for i, m in enumerate(s.members) if i != index}
        room = [a for a in free if a not in staying and free[a] >= size]
        if not room:
            raise NoPlacement(f"set {s.set_id!r}: no appliance outside the set has {size} "
                              f"bytes free to rebuild the member a snapshot splits off")
        free[max(room, key=free.__getitem__)] -= size
    return snaps


async def take(snap: SetSnapshot) -> None:
    """Take the snapshot of a set checked by ``prepare``, under its ``quiesce``: a split
    (decided only: the source changes at ``detach``; no I/O) or a clone. Raises
    NoPlacement (a clone found no room), SetUnavailable or SetError; then what was done
    is what ``undo`` reverts."""
    s = snap.source
    index = _splittable(s)
    if index is None:
        await _clone(snap)
        return
    old = s.members[index]
    snap.membership = _membership(s, snap.set_id, [
        Member(old.appliance, old.region_id, old.key, old.size),
        *(_placeholder(old.appliance, old.size, None) for _ in s.members[1:])])
    snap._detached = (index, old)
    snap.method = SPLIT


def detach(snap: SetSnapshot) -> None:
    """Make a split happen in the source set (in memory): a placeholder takes the member's
    place. Call once the snapshot is journaled, before the stripes are released: from then
    on writes miss the region and the rebuild worker replaces the placeholder. Nothing to
    do for a clone."""
    if snap.method == SPLIT:
        s = snap.source
        index, old = snap._detached
        s.put_member(index, _placeholder(old.appliance, old.size, s.stripes))


async def _clone(snap: SetSnapshot) -> None:
    """Clone every live member in its appliance, each over a connection of its own (the
    appliance serves a connection's requests in order: a clone on the pool's connection
    would hold up every other request to that appliance for its whole length). Each clone
    is in ``snap._clones`` as soon as it exists, so that ``undo`` frees it whatever happens
    next (a failure, a cancellation). A clone that never answered is the appliance's to
    free: it frees a copy whose client closed the connection (timed out, cancelled, died)."""
    s = snap.source
    snap.method = CLONE
    clones: dict[int, RegionHandle] = {}
    errors: list[Exception] = []

    async def one(i: int, m: Member) -> None:
        try:  # the set's other requests (and the pool's probes) never wait behind a clone
            async with s.pool.private(m.appliance) as client:
                clones[i] = await client.clone(m.handle)  # waits longer for a larger region
                snap._clones.append(clones[i])
        except ApplianceUnavailable as e:  # the member is gone: its clone too
            await s.mark_failed(i, e, None)
        except TransportError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for i, m in enumerate(s.members):
            if m.state != FAILED:
                nursery.start_soon(one, i, m)
    if not errors and any(len([i for i in clones if s.members[i].usable(st)]) < s.k
                          for st in range(s.stripes)):
        errors.append(SetUnavailable(f"fewer than {s.k} current members to clone"))
    if errors:
        await _free_all(s.pool, snap._clones)
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
            members.append(_placeholder(m.appliance, m.size, None))
    snap.membership = _membership(s, snap.set_id, members)
    # stored now, before the caller's journal commit: after a crash before that commit the
    # clones are named by the record of a set the journal never heard of, which the next
    # mount's leak sweep frees (an appliance frees a region only with its key)
    try:
        await _save(s.pool, snap.membership, {})
    except SetError:
        await _free_all(s.pool, snap._clones)
        snap._clones = []
        raise
    log.info("set %s: %d members cloned in their appliances as snapshot set %s", s.set_id,
             len(clones), snap.set_id)


def _membership(s: ResiliencySet, set_id: str, members: list[Member]) -> Membership:
    return Membership(s.owner, set_id, s.scheme, s.membership.backend, s.chunk_size, s.size,
                      members, epoch=time.time_ns() // 1000)


def snapshot_set(snap: SetSnapshot) -> ResiliencySet:
    """The snapshot set of a taken snapshot, ready for reads (no I/O; its record is
    written by ``store``)."""
    m = snap.membership
    return ResiliencySet(snap.source.pool, m, make_codec(m.scheme, m.chunk_size, m.backend), {})


async def undo(snap: SetSnapshot) -> None:
    """Revert ``take`` (before the caller journals the snapshot): a clone's record is
    deleted and its regions freed (best effort, errors logged; what is left, the next
    mount's sweep frees); a split was only decided."""
    snap._detached = None
    snap.method = None
    if snap._clones:
        pool = snap.source.pool
        with trio.CancelScope(shield=True):
            await set_records.delete(pool, snap.source.owner, snap.set_id, pool.up())
    await _free_all(snap.source.pool, snap._clones)
    snap._clones = []


async def store(source: ResiliencySet, snapset: ResiliencySet) -> None:
    """Write, after the journal commit, the source's membership (which no longer names a
    split-off region) and then the snapshot set's record (members and witnesses). In this
    order, so that a stored snapshot record means the source is stored too (``recover``
    relies on it). Raises SetUnavailable or SetConflict (retry later; ``recover`` at the
    next mount otherwise)."""
    await source.persist()
    snapset.changed()
    await snapset.persist()


async def recover(pool: AppliancePool, owner: str, set_id: str, source_id: str,
                  record: bytes) -> bool:
    """At mount, before any set is opened: store the snapshot set's journaled ``record``
    if a crash came before ``store`` did; False if it was there already.

    The source set's stored record then still names the split-off region: that member
    becomes a placeholder (stored first), so the source never writes into the snapshot.
    Raises SetNotFound (no record of the source), SetUnavailable (no appliance took a
    record), SetConflict; ValueError for a malformed ``record``.
    """
    snapshot = Membership.from_bytes(record)
    try:
        await set_records.load(pool, owner, set_id)
        return False
    except SetNotFound:
        pass
    source, generations = await set_records.load(pool, owner, source_id)
    taken = {(m.appliance, m.region_id) for m in snapshot.members if m.region_id}
    stripes = -(-source.size // (source.scheme.data_chunks * source.chunk_size))
    detached = [i for i, m in enumerate(source.members) if (m.appliance, m.region_id) in taken]
    for i in detached:
        source.members[i] = _placeholder(source.members[i].appliance,
                                         source.members[i].size, stripes)
    if detached:
        source.epoch += 1
        await _save(pool, source, generations)
    await _save(pool, snapshot, {})
    log.info("snapshot set %s: record stored from the journal (source %s: members %s "
             "released)", set_id, source_id, detached)
    return True


async def _save(pool: AppliancePool, m: Membership, generations: dict[str, int]) -> None:
    targets = [x.appliance for x in m.members if x.state != FAILED]
    failed = await set_records.save(pool, m, generations, targets,
                                [a for a in pool.up() if a not in targets])
    if targets and len(failed) == len(targets):
        raise SetUnavailable(f"set {m.set_id!r}: no member took its record")


async def _free_all(pool: AppliancePool, handles) -> None:
    for handle in handles:
        with trio.CancelScope(shield=True), trio.move_on_after(pool.timeout * 2):
            try:
                await (await pool.client(handle.appliance)).free(handle)
            except TransportError as e:
                log.warning("could not free region %d on %s: %s", handle.region_id,
                            handle.appliance, e)

