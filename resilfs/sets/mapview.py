"""Views of members' regions mapped in this process, for the set core and the mapped path.

A transport that maps regions here offers it as a capability (``ApplianceClient.mapped()``:
shm today, None for tcp and rdma). These helpers take views of members' ranges, copy
through them, and check afterwards that what was read is still live. They never mark a
member failed themselves: they return the members whose views failed with the error, and
the caller (the set core) marks them. Cancellation: only the view lookups await (one
checkpoint for many views); a copy, once started, completes.
"""
from ..copy import copy_parallel
from ..transport.base import MappedRegions, RegionHandle, TransportError

# Steps moving at least this many bytes may share their copies, encodes and decodes with
# copy_parallel's helper thread, which times both ways per label (the kind of step) and
# keeps the helper unless alone runs clearly faster now (the helper pays when the other
# vCPU is idle, and costs when it is busy).
HELPER_MIN = 256 << 10

Wanted = dict[int, list[tuple[RegionHandle, int, int]]]  # member -> (handle, offset, length)


def mapped_clients(pool, members, indices) -> dict[int, MappedRegions] | None:
    """The mapped-memory access of the current clients of ``members[i]`` for ``i`` in
    ``indices`` (``AppliancePool.mapped``), or None unless every one offers it. Never
    connects."""
    out = {}
    for index in indices:
        mapped = pool.mapped(members[index].appliance)
        if mapped is None:
            return None
        out[index] = mapped
    return out


async def views(mapped: dict[int, MappedRegions], wanted: Wanted, writable: bool,
                errors: dict[int, TransportError]) -> dict[int, list[memoryview]]:
    """Views of each member's ranges; a member whose views cannot be had goes into
    ``errors`` (with the error) instead. One checkpoint; regions not mapped yet are mapped
    first."""
    if wanted:
        await next(iter(mapped.values())).checkpoint()
    out: dict[int, list[memoryview]] = {}
    for index, ranges in wanted.items():
        client = mapped[index]
        try:
            got = []
            for h, o, n in ranges:
                v = client.mapped_view(h, o, n, writable)
                got.append(v if v is not None else await client.view(h, o, n, writable))
            out[index] = got
        except TransportError as e:
            errors[index] = e
    return out


def check_live(mapped: dict[int, MappedRegions], handles: dict[int, RegionHandle],
               errors: dict[int, TransportError]) -> None:
    """After reading through views: members whose region went away go into ``errors``."""
    for index, handle in handles.items():
        if index in errors:
            continue
        try:
            mapped[index].check_live(handle)
        except TransportError as e:
            errors[index] = e


async def transfer(mapped: dict[int, MappedRegions], plan, write: bool,
                   errors: dict[int, TransportError]) -> None:
    """A set transfer plan (member -> [(handle, offset, buffer)]) through views: every
    member's copies in one ``copy_parallel`` call. Members that failed go into ``errors``
    (a failed member's ranges are not copied; a read from it does not count)."""
    wanted = {i: [(h, o, memoryview(b).nbytes) for h, o, b in ranges]
              for i, ranges in plan.items()}
    got = await views(mapped, wanted, write, errors)
    pairs = []
    for index, vs in got.items():
        for (_, _, buf), v in zip(plan[index], vs, strict=True):
            pairs.append((v, buf) if write else (buf, v))
    copy_parallel(pairs, min_parallel=HELPER_MIN, label="write" if write else "read")
    if not write:
        for index in got:
            try:
                mapped[index].check_live(plan[index][0][0])
            except TransportError as e:
                errors[index] = e
