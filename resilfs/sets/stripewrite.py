"""The per-stripe arithmetic of a write to a parity or erasure-coded set.

Full stripes are encoded. A partial stripe whose touched data chunks are current updates
the coding chunks from the change (the parity delta: read old data and old coding of the
touched bytes only). A partial stripe with a touched data chunk lost is read, decoded,
patched and re-encoded whole (read-modify-write). The caller holds the stripes' locks.
"""
from typing import TYPE_CHECKING

from .scratch import scratch

if TYPE_CHECKING:
    from .core import Ranges, SetCore


def _add(plan: "dict[int, Ranges]", index: int, s: "SetCore", offset: int, buf) -> None:
    plan.setdefault(index, []).append((s.members[index].handle, offset, buf))


async def plan_coded_write(s: "SetCore", offset: int, view: memoryview,
                           stripes: range) -> "tuple[dict[int, Ranges], list] | None":
    """The member writes that store ``view`` at ``offset`` (reading what a partial stripe
    needs and computing the coding), and the scratch buffers to give back once they are
    written; None if a member failed during the reads (it is marked failed; plan again)."""
    k, m, cs, ss = s.k, s.scheme.coding_chunks, s.chunk_size, s.stripe_size
    end = offset + view.nbytes
    full = [st for st in stripes if st * ss >= offset and (st + 1) * ss <= end]
    partial = [st for st in stripes if not (st * ss >= offset and (st + 1) * ss <= end)]

    # -- partial stripes: read what the change needs ------------------------------------
    reads: dict = {}
    jobs = []
    for st in partial:
        lo = max(offset, st * ss) - st * ss
        hi = min(end, (st + 1) * ss) - st * ss
        usable = s.usable(st)
        touched = range(lo // cs, (hi - 1) // cs + 1)
        if all(c in usable for c in touched):
            spans = {c: (max(lo, c * cs) - c * cs, min(hi, (c + 1) * cs) - c * cs)
                     for c in touched}
            first = min(a for a, _ in spans.values())
            last = max(b for _, b in spans.values())
            old = {c: bytearray(b - a) for c, (a, b) in spans.items()}
            coding = [bytearray(last - first) for _ in range(m)]
            for c, (a, _) in spans.items():
                _add(reads, c, s, st * cs + a, old[c])
            for j in range(m):
                if (k + j) in usable:
                    _add(reads, k + j, s, st * cs + first, coding[j])
            jobs.append(("delta", st, lo, spans, first, old, coding, usable))
        else:
            sources = s.codec.minimum_to_decode(set(range(k)), set(usable))
            bufs = {i: bytearray(cs) for i in sources}
            for i, buf in bufs.items():
                _add(reads, i, s, st * cs, buf)
            jobs.append(("rmw", st, lo, hi, bufs, usable))
    if reads and await s.transfer(reads, write=False):
        return None

    # -- compute: encode full stripes, apply deltas, rebuild partial stripes ------------
    coding_full = [scratch.take(len(full) * cs) for _ in range(m)]
    rmw_out = {}

    def compute():
        for p, st in enumerate(full):
            at = st * ss - offset
            s.codec.encode([view[at + c * cs:at + (c + 1) * cs] for c in range(k)],
                           out=[memoryview(b)[p * cs:(p + 1) * cs] for b in coding_full])
        for job in jobs:
            if job[0] == "delta":
                _, st, lo, spans, first, old, coding, _ = job
                for c, (a, b) in spans.items():
                    at = st * ss + c * cs + a - offset
                    s.codec.update(c, old[c], view[at:at + b - a],
                                   [memoryview(x)[a - first:b - first] for x in coding])
            else:
                _, st, lo, hi, bufs, _ = job
                data = s.codec.decode(bufs, range(k))
                stripe = bytearray(ss)
                for c in range(k):
                    stripe[c * cs:(c + 1) * cs] = data[c]
                at = st * ss + lo - offset
                memoryview(stripe)[lo:hi] = view[at:at + hi - lo]
                chunks = [memoryview(stripe)[c * cs:(c + 1) * cs] for c in range(k)]
                rmw_out[st] = chunks + s.codec.encode(chunks)

    await s.compute((len(full) + len(partial)) * ss, compute)

    # -- the member writes ----------------------------------------------------------------
    plan: dict = {}
    for i in range(k):
        for st in full:
            if s.members[i].usable(st):
                at = st * ss - offset + i * cs
                _add(plan, i, s, st * cs, view[at:at + cs])
    for i in range(k, k + m):
        current = [p for p, st in enumerate(full) if s.members[i].usable(st)]
        if current and len(current) == len(full):
            _add(plan, i, s, full[0] * cs, coding_full[i - k])
            continue
        for p in current:
            _add(plan, i, s, full[p] * cs, memoryview(coding_full[i - k])[p * cs:(p + 1) * cs])
    for job in jobs:
        if job[0] == "delta":
            _, st, lo, spans, first, old, coding, usable = job
            for c, (a, b) in spans.items():
                at = st * ss + c * cs + a - offset
                _add(plan, c, s, st * cs + a, view[at:at + b - a])
            for j in range(m):
                if (k + j) in usable:
                    _add(plan, k + j, s, st * cs + first, coding[j])
        else:
            _, st, lo, hi, bufs, usable = job
            for i in usable:
                _add(plan, i, s, st * cs, rmw_out[st][i])
    return plan, coding_full
