"""The resync strategy: making members current again (md's resync and recovery).

``resync_pending`` makes the stripes of unfinished writes consistent at open (observer
protocol); ``reattach`` takes a failed member's region back, ``replace`` puts a new region
in its place; ``rebuild_run`` copies or decodes one run of a rebuilding member's dirty
stripes from the others; ``finished`` makes a member with nothing dirty ok.

Each step holds the locks of the stripes it works on, so a write to one of them waits for
it (claim 5) and never interleaves with it; ``reattach`` holds every stripe for its state
change, so writes in flight finish first (see there). A member failing during a step is
marked failed (the step does nothing more and reports it); the caller may try again.
"""
import logging
from typing import TYPE_CHECKING

import trio

from ..transport.base import NoSuchRegion, TransportError, WrongRegionKey
from .consistency import check_run
from .errors import SetError, SetUnavailable
from .membership import FAILED, OK, REBUILDING, Member
from .scratch import scratch
from .status import ScrubReport
from .stripes import contiguous

if TYPE_CHECKING:
    from .core import SetCore

log = logging.getLogger(__name__)


async def resync_pending(s: "SetCore") -> int:
    """Resync the stripes of write intents that never ended (a writer died); return how many.

    Non-current members get those stripes marked dirty (they may have missed the write).
    The intents are ended on every live member afterwards.
    """
    ids, stripes = await s.pending_intents()
    if not ids:
        return 0
    report = ScrubReport(repaired=True)
    for run in contiguous(stripes, s.run_stripes()):
        async with s.locks.hold(run):
            await check_run(s, run, True, report)
    for member in s.members:
        if member.state != OK and not stripes <= member.dirty:
            member.dirty.update(stripes)
            s.changed()
    await s.persist()
    await s.end_intents(sorted(ids))
    log.info("set %s: resynced %d stripes of %d unfinished writes (%d mismatched)",
             s.set_id, len(stripes), len(ids), len(report.mismatched))
    if report.unchecked:  # the RAID write hole: see docs/sets.md
        log.error("set %s: %d stripes of unfinished writes could not be checked (a data "
                  "member is lost); a lost chunk of them may decode wrong: %s", s.set_id,
                  len(report.unchecked), report.unchecked[:16])
    return len(stripes)


async def rebuild_run(s: "SetCore", index: int, stripes: range, fast=None) -> int:
    """Rebuild the dirty stripes of ``stripes`` on member ``index``; return bytes written.

    Reconstructs from the other current members and writes the member; clears the
    stripes from its dirty set (stored lazily: a stale superset is safe). ``fast``, if
    given, is tried first: ``await fast(s, index, sources, base, length)`` answering
    True (done), False (a member failed) or None (does not apply; see mapped.rebuild).
    Returns 0 if nothing was to do or a member failed (marked failed). SetUnavailable if
    fewer than K members are current.
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
        done = None if fast is None else await fast(s, index, chosen, base, n)
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


def _rebuilt(s: "SetCore", index: int, run: range, n: int) -> int:
    """Account for a rebuilt run of member ``index``: clear its dirty bits, count bytes."""
    s.members[index].dirty.difference_update(run)
    s.rebuilt_bytes += n
    progress = s.progress.get(index)
    if progress is not None:
        progress.done += n
    return n


async def reattach(s: "SetCore", index: int) -> str:
    """Take a failed member back if its appliance answers and still holds the region.

    Returns "reattached" (now rebuilding: only its dirty stripes will be copied), "down"
    (appliance not reachable) or "lost" (the region is gone: replace the member).
    Writes in flight were planned without the member and add their stripes to its dirty
    set only while it is failed: the state changes with every stripe lock held (in-flight
    writes drain first, new ones wait), so its dirty set names every stripe it missed
    before it serves any (issue 16: a member returning mid-write served stale bytes).
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
    async with s.locks.hold_all():
        if member.state != FAILED or s.members[index] is not member:  # done meanwhile
            return "reattached"
        member.state = REBUILDING
        member.failed_at = None
        s.start_progress(index, len(member.dirty) * s.chunk_size)
        s.changed()
    log.info("set %s: member %d on %s is back, resyncing %d stripes", s.set_id, index,
             member.appliance, len(member.dirty))
    await s.persist()
    return "reattached"


async def replace(s: "SetCore", index: int, address: str) -> None:
    """Replace failed member ``index`` by a new region on ``address`` (full rebuild).

    Raises SetError if the allocation fails. The old region is freed if its appliance
    answers (best effort).
    """
    old = s.members[index]
    try:
        client = await s.pool.client(address)
        handle = await client.alloc(old.size, s.owner)
    except TransportError as e:
        raise SetError(f"set {s.set_id!r}: no replacement region on {address}: {e}") from e
    mapped = client.mapped()
    if mapped is not None:
        # populate the mapping now: the rebuild then writes without a page fault per 4 KiB
        try:
            await mapped.prefault(handle)
        except BaseException as e:
            with trio.CancelScope(shield=True), trio.move_on_after(s.pool.timeout):
                try:
                    await client.free(handle)
                except TransportError:
                    pass
            if isinstance(e, TransportError):
                raise SetError(f"set {s.set_id!r}: no replacement region on {address}: "
                               f"{e}") from e
            raise
    if s.members[index] is not old or old.state != FAILED:
        await _free(client, handle)  # the member came back meanwhile
        return
    s.put_member(index, Member(address, handle.region_id, handle.key, handle.size, REBUILDING,
                               set(range(s.stripes))))
    s.start_progress(index, s.stripes * s.chunk_size)
    log.info("set %s: member %d replaced by region %d on %s, rebuilding", s.set_id, index,
             handle.region_id, address)
    await s.persist()
    with trio.move_on_after(s.pool.timeout):
        try:
            old_client = await s.pool.client(old.appliance)
            await old_client.free(old.handle)
        except TransportError:
            pass  # its appliance is down: the region stays until that appliance is wiped


async def _free(client, handle) -> None:
    try:
        await client.free(handle)
    except TransportError as e:
        log.warning("could not free region %d on %s: %s", handle.region_id,
                    handle.appliance, e)


def finished(s: "SetCore", index: int) -> bool:
    """Mark a rebuilding member with nothing dirty as ok; True if it was done."""
    member = s.members[index]
    if member.state == REBUILDING and not member.dirty:
        member.state = OK
        s.changed()
        log.info("set %s: member %d on %s rebuilt", s.set_id, index, member.appliance)
        return True
    return False
