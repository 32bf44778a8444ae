"""Making members agree again: observer resync at open, scrub, and rebuild steps.

Each step holds the locks of the stripes it works on, so a write to one of them waits for
it (claim 5) and never interleaves with it. A member failing during a step is marked
failed (the step does nothing more and reports it); the caller may try again.
"""
import logging
from dataclasses import dataclass, field

import trio

from ..transport.base import NoSuchRegion, TransportError, WrongRegionKey
from ..transport.shm import ShmClient
from . import direct
from .errors import SetUnavailable
from .membership import FAILED, OK, REBUILDING, Member
from .resiliency import ResiliencySet, _Progress
from .scratch import scratch
from .stripes import contiguous

log = logging.getLogger(__name__)

RUN_BYTES = 4 << 20  # member bytes one scrub/resync/rebuild step handles at most


def run_stripes(s: ResiliencySet, run_bytes: int = RUN_BYTES) -> int:
    return max(1, run_bytes // s.chunk_size)


@dataclass
class ScrubReport:
    stripes_checked: int = 0
    mismatched: list[int] = field(default_factory=list)  # stripes whose members disagreed
    unchecked: list[int] = field(default_factory=list)  # stripes too degraded to check
    repaired: bool = False


async def check_run(s: ResiliencySet, stripes: range, repair: bool, report: ScrubReport) -> None:
    """Compare the current members of ``stripes``; with ``repair`` rewrite the odd ones.

    Mirrors are made equal to the first current member; coding chunks are recomputed from
    the data chunks. Stripes without all data chunks current are reported unchecked.
    """
    async with s.locks.hold(stripes):
        await check_run_locked(s, stripes, repair, report)


async def check_run_locked(s: ResiliencySet, stripes: range, repair: bool,
                           report: ScrubReport) -> None:
    """``check_run`` for a caller that holds the stripes' locks."""
    cs, k = s.chunk_size, s.k
    while True:
        live = [i for i, m in enumerate(s.members)
                if all(m.usable(st) for st in stripes)]
        bufs = {i: bytearray(len(stripes) * cs) for i in live}
        base = stripes.start * cs
        plan = {i: [(s.members[i].handle, base, buf)] for i, buf in bufs.items()}
        if not await s.transfer(plan, write=False):
            break
    if s.mirror:
        reference = live[0] if live else None
        expected = {i: bufs[reference] for i in live[1:]} if live else {}
    elif all(c in live for c in range(k)):
        codec = s.codec_for(len(stripes) * cs)
        coding = await s.compute(len(stripes) * cs * k, codec.encode,
                                 [bufs[c] for c in range(k)])
        expected = {i: coding[i - k] for i in live if i >= k}
    else:
        report.unchecked.extend(stripes)
        return
    report.stripes_checked += len(stripes)
    fixes: dict = {}
    bad: set[int] = set()
    for i, want in expected.items():
        have = memoryview(bufs[i])
        want = memoryview(want)
        if have == want:
            continue
        for p, st in enumerate(stripes):
            part = slice(p * cs, (p + 1) * cs)
            if have[part] != want[part]:
                bad.add(st)
                fixes.setdefault(i, []).append((s.members[i].handle, st * cs, want[part]))
    report.mismatched.extend(sorted(bad))
    if repair and fixes:
        await s.transfer(fixes, write=True)


async def scrub(s: ResiliencySet, repair: bool = False) -> ScrubReport:
    """Check every stripe of the set; with ``repair`` fix mismatches. Never raises for a
    mismatch (it is reported); members failing meanwhile are marked failed."""
    report = ScrubReport(repaired=repair)
    for run in contiguous(range(s.stripes), run_stripes(s)):
        await check_run(s, run, repair, report)
    if report.mismatched:
        log.warning("scrub of set %s: %d stripes mismatched%s", s.set_id,
                    len(report.mismatched), " (repaired)" if repair else "")
    return report


async def resync_pending(s: ResiliencySet) -> int:
    """Resync the stripes of write intents that never ended (a writer died); return how many.

    Non-current members get those stripes marked dirty (they may have missed the write).
    The intents are ended on every live member afterwards.
    """
    ids: set[int] = set()
    stripes: set[int] = set()

    async def ask(client) -> None:
        for intent_id, extents in await client.intent_pending(s.owner, s.set_id):
            ids.add(intent_id)
            for offset, length in extents:
                first = max(0, offset // s.stripe_size)
                stop = min(s.stripes, -(-(offset + length) // s.stripe_size))
                stripes.update(range(first, stop))

    await s._each_live(ask, "intent pending")
    if not ids:
        return 0
    report = ScrubReport(repaired=True)
    for run in contiguous(stripes, run_stripes(s)):
        await check_run(s, run, True, report)
    for member in s.members:
        if member.state != OK and not stripes <= member.dirty:
            member.dirty.update(stripes)
            s.changed()
    await s._persist()
    await s._intent_end(sorted(ids))
    s.resynced_stripes = len(stripes)
    log.info("set %s: resynced %d stripes of %d unfinished writes (%d mismatched)",
             s.set_id, len(stripes), len(ids), len(report.mismatched))
    return len(stripes)


async def rebuild_run(s: ResiliencySet, index: int, stripes: range) -> int:
    """Rebuild the dirty stripes of ``stripes`` on member ``index``; return bytes written.

    Reconstructs from the other current members and writes the member; clears the
    stripes from its dirty set (stored lazily: a stale superset is safe). Returns 0 if
    nothing was to do or a member failed (marked failed). SetUnavailable if fewer than
    K members are current.
    """
    cs = s.chunk_size
    async with s.locks.hold(stripes):
        member = s.members[index]
        if member.state != REBUILDING:
            return 0
        todo = [st for st in stripes if st in member.dirty]
        if not todo:
            return 0
        run = range(todo[0], todo[-1] + 1)
        sources = [i for i, m in enumerate(s.members)
                   if i != index and all(m.usable(st) for st in run)]
        if len(sources) < s.k:
            raise SetUnavailable(f"set {s.set_id!r}: cannot rebuild member {index}: only "
                                 f"members {sources} are current")
        chosen = sources[:1] if s.mirror else sorted(
            s.codec.minimum_to_decode({index}, set(sources)))
        n, base = len(run) * cs, run.start * cs
        done = await direct.rebuild(s, index, chosen, base, n)
        if done is not None:
            return _rebuilt(s, index, run, n) if done else 0
        bufs = {i: scratch.take(n) for i in chosen}
        out = bufs[chosen[0]] if s.mirror else scratch.take(n)
        try:
            if await s.transfer({i: [(s.members[i].handle, base, b)] for i, b in bufs.items()},
                                write=False):
                return 0
            if not s.mirror:
                await s.compute(n * s.k, s.codec_for(n).decode, bufs, [index], {index: out})
            if await s.transfer({index: [(member.handle, base, out)]}, write=True):
                return 0
        finally:
            scratch.give(*bufs.values(), *([] if s.mirror else [out]))
        return _rebuilt(s, index, run, n)


def _rebuilt(s: ResiliencySet, index: int, run: range, n: int) -> int:
    """Account for a rebuilt run of member ``index``: clear its dirty bits, count bytes."""
    s.members[index].dirty.difference_update(run)
    s.rebuilt_bytes += n
    progress = s.progress.get(index)
    if progress is not None:
        progress.done += n
    return n


async def reattach(s: ResiliencySet, index: int) -> str:
    """Take a failed member back if its appliance answers and still holds the region.

    Returns "reattached" (now rebuilding: only its dirty stripes will be copied), "down"
    (appliance not reachable) or "lost" (the region is gone: replace the member).
    """
    member = s.members[index]
    if member.state != FAILED:
        return "reattached"
    client = None
    try:
        client = await s.pool.client(member.appliance)
        await client.lookup(member.region_id, member.key)
    except (NoSuchRegion, WrongRegionKey):
        return "lost"
    except TransportError as e:
        log.debug("member %d of %s still down: %s", index, s.set_id, e)
        if client is not None:
            await s.pool.mark_failed(member.appliance, client)
        return "down"
    # Order against in-flight writes: they were planned without this member, and add
    # their stripes to its dirty set only while it is failed. Draining them first (no new
    # write starts meanwhile) makes the dirty set complete before the member serves reads.
    async with s.locks.hold_all():
        if member.state != FAILED:  # someone else did it meanwhile
            return "reattached"
        member.state = REBUILDING
        member.failed_at = None
        s.progress[index] = _Progress(len(member.dirty) * s.chunk_size)
        s.changed()
    log.info("set %s: member %d on %s is back, resyncing %d stripes", s.set_id, index,
             member.appliance, len(member.dirty))
    await s._persist()
    return "reattached"


async def replace(s: ResiliencySet, index: int, address: str) -> None:
    """Replace failed member ``index`` by a new region on ``address`` (full rebuild).

    Raises TransportError if the allocation fails. The old region is freed if its
    appliance answers (best effort).
    """
    old = s.members[index]
    client = await s.pool.client(address)
    handle = await client.alloc(old.size, s.owner)
    if isinstance(client, ShmClient):
        # populate the mapping now: the rebuild then writes without a page fault per 4 KiB
        try:
            await client.prefault(handle)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(s.pool.timeout):
                try:
                    await client.free(handle)
                except TransportError:
                    pass
            raise
    if s.members[index] is not old or old.state != FAILED:
        await client.free(handle)  # the member came back meanwhile
        return
    s.members[index] = Member(address, handle.region_id, handle.key, handle.size, REBUILDING,
                              set(range(s.stripes)))
    s.progress[index] = _Progress(s.stripes * s.chunk_size)
    s.changed()
    log.info("set %s: member %d replaced by region %d on %s, rebuilding", s.set_id, index,
             handle.region_id, address)
    await s._persist()
    with trio.move_on_after(s.pool.timeout):
        try:
            old_client = await s.pool.client(old.appliance)
            await old_client.free(old.handle)
        except TransportError:
            pass  # its appliance is down: the region stays until that appliance is wiped


def finished(s: ResiliencySet, index: int) -> bool:
    """Mark a rebuilding member with nothing dirty as ok; True if it was done."""
    member = s.members[index]
    if member.state == REBUILDING and not member.dirty:
        member.state = OK
        s.changed()
        log.info("set %s: member %d on %s rebuilt", s.set_id, index, member.appliance)
        return True
    return False


def needs_work(s: ResiliencySet) -> bool:
    return any(m.state != OK for m in s.members)

