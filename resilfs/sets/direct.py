"""Direct access to shm members: copy, encode and decode in the members' own mappings.

Over shm a member's region is mapped in this process (``ShmClient.view``), so a set need
not go through intermediate buffers: member writes and reads are GIL-free copies
(``copy_parallel``), full-stripe encodes write the coding chunks straight into the coding
members' regions, degraded reads decode from the survivors' regions into the caller's
buffer, and rebuild copies or decodes from the survivors' regions into the target's.
Encodes and decodes whose codec has a kernel (``Codec.kernel``: ISA-L) run as products of
``copy_parallel``, beside the copies, and every step may share its pieces with the helper
thread (two vCPUs at once, when that is faster: see ``HELPER_MIN``).

Used only when every member a step touches is connected over shm and the step moves at
least ``DIRECT_MIN`` bytes; otherwise the ordinary transfer path runs. Failures as on the
ordinary path: a member whose view cannot be had (freed region, dead appliance) is marked
failed by the set, and bytes read through views count only if ``check_live`` passes
after the copy or decode (a region freed meanwhile → that member is marked failed).
Everything runs on the loop thread (and the helper), as the ordinary inline shm copies
do: a decode reading more than ``STEP_MAX`` bytes is cut into steps with checkpoints
between, so other tasks still run every few milliseconds. Cancellation: only the view
lookups and those checkpoints await; a step itself is not interruptible, and the helper
is done with it when ``copy_parallel`` returns, so no view is written after a step.
"""
from typing import TYPE_CHECKING

from ..copy import copy_parallel
from ..transport.base import RegionHandle, TransportError
from ..transport.shm import ShmClient, checkpoint
from .membership import FAILED, OK

if TYPE_CHECKING:
    from .resiliency import Ranges, ResiliencySet

DIRECT_MIN = 256 << 10  # bytes a step must move to take the direct path
# largest full-stripe write (set bytes) that takes the direct path
FULL_STRIPES_MAX = 4 << 20
# most bytes one uninterrupted piece of a degraded read's or a rebuild run's decode reads:
# a default rebuild run of ec:4+2 (4 MiB of member, 16 MiB read, 1-4 ms here) is one
# piece; larger ones run in steps with checkpoints between (run_products). Measured:
# 1 MiB-output steps cost the ec:4+2 rebuild 15-30% of its rate.
STEP_MAX = 16 << 20
PIECE_ALIGN = 64 << 10  # steps cut products at multiples of this
# Steps moving at least this many bytes may share their copies, encodes and decodes with
# copy_parallel's helper thread, which times both ways per label (the kind of step) and
# keeps the helper unless alone runs clearly faster now (the helper pays when the other
# vCPU is idle, and costs when it is busy).
HELPER_MIN = 256 << 10


def shm_clients(s: "ResiliencySet", indices) -> dict[int, ShmClient] | None:
    """The shm clients of members ``indices``, or None unless every one is connected by shm."""
    clients = {}
    for i in indices:
        client = s.pool.connected(s.members[i].appliance)
        if not isinstance(client, ShmClient):
            return None
        clients[i] = client
    return clients


async def views(s: "ResiliencySet", clients: dict[int, ShmClient],
                wanted: "dict[int, list[tuple[RegionHandle, int, int]]]", writable: bool,
                failed: set[int]) -> dict[int, list[memoryview]]:
    """Views of each member's (handle, offset, length) ranges; members whose views cannot
    be had are added to ``failed`` (and marked failed) instead. A checkpoint (see
    shm.checkpoint); regions not mapped yet are mapped first."""
    await checkpoint()
    out: dict[int, list[memoryview]] = {}
    for index, ranges in wanted.items():
        client = clients[index]
        try:
            got = []
            for h, o, n in ranges:
                v = client.mapped_view(h, o, n, writable)
                got.append(v if v is not None else await client.view(h, o, n, writable))
            out[index] = got
        except TransportError as e:
            failed.add(index)
            await s._fail(index, e, client)
    return out


async def check_live(s: "ResiliencySet", clients: dict[int, ShmClient], used,
                     failed: set[int]) -> None:
    """After reading through views: members whose region went away are marked failed."""
    for index in used:
        if index in failed:
            continue
        try:
            clients[index].check_live(s.members[index].handle)
        except TransportError as e:
            failed.add(index)
            await s._fail(index, e, clients[index])


async def transfer(s: "ResiliencySet", plan: "dict[int, Ranges]", write: bool,
                   clients: dict[int, ShmClient]) -> set[int]:
    """``ResiliencySet.transfer`` over shm views: every member's copies at once."""
    failed: set[int] = set()
    wanted = {i: [(h, o, memoryview(b).nbytes) for h, o, b in ranges]
              for i, ranges in plan.items()}
    got = await views(s, clients, wanted, write, failed)
    pairs = []
    for index, vs in got.items():
        for (_, _, buf), v in zip(plan[index], vs, strict=True):
            pairs.append((v, buf) if write else (buf, v))
    copy_parallel(pairs, min_parallel=HELPER_MIN, label="write" if write else "read")
    if not write:
        await check_live(s, clients, got, failed)
    return failed


def healthy_clients(s: "ResiliencySet", length: int) -> dict[int, ShmClient] | None:
    """Every member's shm client if a write of ``length`` bytes takes a whole-set direct
    path: DIRECT_MIN bytes or more, every member current and connected by shm; else None."""
    if length < DIRECT_MIN or not all(m.state == OK and not m.dirty for m in s.members):
        return None
    return shm_clients(s, range(s.width))


async def write_mirror(s: "ResiliencySet", offset: int, view: memoryview,
                       clients: dict[int, ShmClient]) -> set[int] | None:
    """Write ``view`` at ``offset`` of every member of a mirror set whose members are all
    current (``healthy_clients``). Returns the failed members (none: copies into mapped
    memory do not fail), or None if a member's view could not be had (it is marked failed,
    nothing was written: plan again)."""
    failed: set[int] = set()
    got = await views(s, clients, {i: [(s.members[i].handle, offset, view.nbytes)]
                                   for i in range(s.width)}, True, failed)
    if failed:
        return None
    copy_parallel([(got[i][0], view) for i in range(s.width)], min_parallel=HELPER_MIN,
                  label="mirror write")
    return failed


def full_stripes_apply(s: "ResiliencySet", offset: int, length: int,
                       stripes: range) -> dict[int, ShmClient] | None:
    """The members' shm clients if ``write_full_stripes`` applies to this write, else None:
    whole stripes, DIRECT_MIN..FULL_STRIPES_MAX bytes, every member current and on shm."""
    if offset % s.stripe_size or length != len(stripes) * s.stripe_size \
            or length > FULL_STRIPES_MAX:
        return None
    return healthy_clients(s, length)


async def write_full_stripes(s: "ResiliencySet", offset: int, view: memoryview,
                             stripes: range, clients: dict[int, ShmClient]) -> set[int] | None:
    """Write whole stripes of a set whose members are all current (``full_stripes_apply``):
    the data chunks are copied into the data members' regions and the coding chunks
    encoded straight into the coding members' (with a kernel: shared with the helper
    thread; without: encoded on this thread, then copied).
    Returns the failed members, or None if a member's view could not be had (it is marked
    failed, nothing was written: plan again)."""
    k, cs, ss = s.k, s.chunk_size, s.stripe_size
    n = len(stripes)
    failed: set[int] = set()
    base = stripes.start * cs
    got = await views(s, clients, {i: [(s.members[i].handle, base, n * cs)]
                                   for i in range(s.width)}, True, failed)
    if failed:
        return None
    pairs = []
    for c in range(k):
        region = got[c][0]
        for p in range(n):
            at = p * ss + c * cs
            pairs.append((region[p * cs:(p + 1) * cs], view[at:at + cs]))
    coding = [got[i][0] for i in range(k, s.width)]
    kernel = s.codec.kernel(range(k), range(k, s.width))
    if kernel is not None:
        products = [(kernel, [view[p * ss + c * cs:p * ss + (c + 1) * cs] for c in range(k)],
                     [x[p * cs:(p + 1) * cs] for x in coding]) for p in range(n)]
        copy_parallel(pairs, products=products, min_parallel=HELPER_MIN,
                      label="full stripes")
        return failed
    codec = s.codec

    def encode() -> None:
        for p in range(n):
            at = p * ss
            codec.encode([view[at + c * cs:at + (c + 1) * cs] for c in range(k)],
                         out=[x[p * cs:(p + 1) * cs] for x in coding])

    copy_parallel(pairs, then=encode, min_parallel=HELPER_MIN, label="full stripes")
    return failed


async def read_degraded(s: "ResiliencySet", offset: int, view: memoryview) -> bool | None:
    """A degraded read of a coded set over shm: current data chunks are copied into the
    caller's buffer and lost ones decoded from the survivors' regions straight into it.
    The caller holds the stripes' locks. Returns True when done, False if a member failed
    (marked failed; read again), None if the path does not apply (a member not on shm, or
    a short read)."""
    if view.nbytes < DIRECT_MIN:
        return None
    clients = shm_clients(s, [i for i, m in enumerate(s.members) if m.state != FAILED])
    if clients is None:
        return None
    cs = s.chunk_size
    slots: dict[tuple[int, int, int], int] = {}  # (member, offset, length) -> view number
    wanted: dict[int, list] = {}

    def want(i: int, at: int, n: int) -> tuple[int, int]:
        key = (i, at, n)
        if key not in slots:
            ranges = wanted.setdefault(i, [])
            slots[key] = len(ranges)
            ranges.append((s.members[i].handle, at, n))
        return i, slots[key]

    copies, decodes = [], []
    for st, c, a, n, at in s._pieces(offset, view.nbytes):
        if s.members[c].usable(st):
            copies.append((view[at:at + n], want(c, st * cs + a, n)))
        else:
            sources = s.codec.minimum_to_decode({c}, set(s.usable(st)))
            decodes.append((c, n, {i: want(i, st * cs + a, n) for i in sources},
                            view[at:at + n]))
    failed: set[int] = set()
    got = await views(s, clients, wanted, False, failed)
    if failed:
        return False
    pairs = [(dst, got[i][j]) for dst, (i, j) in copies]
    decoded = sum(d[1] for d in decodes)
    kernels = [s.codec.kernel(sorted(inputs), [c]) for c, _, inputs, _ in decodes]
    if all(kernel is not None for kernel in kernels):
        products = [(kernel, [got[m][j] for _, (m, j) in sorted(inputs.items())], [out])
                    for kernel, (_, _, inputs, out) in zip(kernels, decodes, strict=True)]
        await run_products(decoded * s.k, pairs, products, "degraded read")
    else:
        def decode_all() -> None:
            for c, n, inputs, out in decodes:
                s.codec_for(n).decode({i: got[m][j] for i, (m, j) in inputs.items()}, [c],
                                      {c: out})

        if decoded * s.k <= STEP_MAX:
            copy_parallel(pairs, then=decode_all, min_parallel=HELPER_MIN,
                          label="degraded read")
        else:
            copy_parallel(pairs, min_parallel=HELPER_MIN, label="degraded read")
            await s.compute(decoded * s.k, decode_all)
    await check_live(s, clients, got, failed)
    return not failed


async def run_products(nbytes: int, pairs: list, products: list, label: str) -> None:
    """``copy_parallel`` of copies and kernel products that read ``nbytes`` in all (the
    helper's choice learnt under ``label``), on this thread: in one call up to STEP_MAX,
    else in steps that read at most STEP_MAX bytes each, with a checkpoint between
    (``shm.checkpoint``). A worker thread would keep the loop free too, but its hop costs
    more than a step (and much more when the vCPUs are busy). Cancelled between steps:
    raises Cancelled with some outputs written and others not (callers redo the step)."""
    if nbytes <= STEP_MAX:
        copy_parallel(pairs, products=products, min_parallel=HELPER_MIN, label=label)
        return
    copy_parallel(pairs, min_parallel=HELPER_MIN, label=label)
    for tables, sources, outputs in products:
        length = memoryview(outputs[0]).nbytes
        step = max(STEP_MAX // len(sources) // PIECE_ALIGN * PIECE_ALIGN, PIECE_ALIGN)
        for lo in range(0, length, step):
            await checkpoint()
            part = slice(lo, lo + step)
            copy_parallel([], products=[(tables, [memoryview(x)[part] for x in sources],
                                         [memoryview(x)[part] for x in outputs])],
                          min_parallel=HELPER_MIN, label=label)


async def rebuild(s: "ResiliencySet", index: int, chosen: list[int], base: int,
                  n: int) -> bool | None:
    """Rebuild member ``index``'s bytes [base, base + n) from members ``chosen`` over shm:
    a mirror copies region to region (on this thread, like any shm copy); a coded set
    decodes from the sources' regions into the target's (``run_products``: in steps, for
    a large run). The caller holds the stripes' locks. Returns
    True when done, False if a member failed (marked failed), None if the path does not
    apply."""
    clients = shm_clients(s, [*chosen, index])
    if clients is None or n < DIRECT_MIN:
        return None
    failed: set[int] = set()
    got = await views(s, clients, {i: [(s.members[i].handle, base, n)] for i in chosen},
                      False, failed)
    target = await views(s, clients, {index: [(s.members[index].handle, base, n)]}, True,
                         failed)
    if failed:
        return False
    out = target[index][0]
    if s.mirror:
        copy_parallel([(out, got[chosen[0]][0])], min_parallel=HELPER_MIN,
                      label="rebuild copy")
    else:
        kernel = s.codec.kernel(chosen, [index])
        if kernel is not None:
            await run_products(n * s.k, [], [(kernel, [got[i][0] for i in chosen], [out])],
                               "rebuild decode")
        else:
            await s.compute(n * s.k, s.codec_for(n).decode,
                            {i: got[i][0] for i in chosen}, [index], {index: out})
    await check_live(s, clients, chosen, failed)
    return not failed
