"""The coded strategy (parity, erasure codes): data chunks on members 0..K-1, coding after.

Reads of a whole set take each byte from its data member; degraded reads read the current
data chunks and decode the others (under the stripes' locks, which the caller holds).
Writes: full stripes are encoded; a partial stripe whose touched data chunks are current
uses the parity delta; otherwise read-modify-write (``stripewrite``). Failures: a member
that fails is marked failed by the core; the caller plans again.
"""
from typing import TYPE_CHECKING

from .core import MemberPlan
from .scratch import scratch
from .stripewrite import plan_coded_write

if TYPE_CHECKING:
    from .core import Ranges, SetCore


class Coded:
    def __init__(self, core: "SetCore"):
        self.core = core

    async def read(self, offset: int, view: memoryview) -> bool:
        """Read each byte from its data member (every one current); False if one failed."""
        s = self.core
        plan = MemberPlan()
        for st, c, a, n, at in s.pieces(offset, view.nbytes):
            plan.add(c, s.members[c].handle, st * s.chunk_size + a, at, n)
        return not await s.transfer(plan.ranges(view), write=False)

    async def read_degraded(self, offset: int, view: memoryview) -> bool:
        """Read current data chunks directly and decode the others; False if a member
        failed. The caller holds the stripes' locks.

        A decode source that the read fetches anyway (the same bytes of a current data
        chunk) is taken from the caller's buffer instead of being read twice.
        """
        s = self.core
        plan: dict[int, Ranges] = {}
        pieces = list(s.pieces(offset, view.nbytes))
        direct = {}
        for st, c, a, n, at in pieces:
            member = s.members[c]
            if member.usable(st):
                plan.setdefault(c, []).append((member.handle, st * s.chunk_size + a,
                                               view[at:at + n]))
                direct[(st, c)] = (a, n, at)
        decodes = []  # (chunk, length, codec input {member: buffer}, output view)
        taken = []
        for st, c, a, n, at in pieces:
            if (st, c) in direct:
                continue
            sources = s.codec.minimum_to_decode({c}, set(s.usable(st)))
            inputs = {}
            for i in sources:
                if direct.get((st, i), (None,))[:2] == (a, n):
                    inputs[i] = view[direct[(st, i)][2]:direct[(st, i)][2] + n]
                else:
                    inputs[i] = scratch.take(n)
                    taken.append(inputs[i])
                    plan.setdefault(i, []).append((s.members[i].handle,
                                                   st * s.chunk_size + a, inputs[i]))
            decodes.append((c, n, inputs, view[at:at + n]))
        try:
            if await s.transfer(plan, write=False):
                return False

            def decode_all():
                for c, n, inputs, out in decodes:
                    s.codec_for(n).decode(inputs, [c], {c: out})

            await s.compute(sum(d[1] for d in decodes) * s.k, decode_all)
        finally:
            scratch.give(*taken)
        return True

    async def write(self, offset: int, view: memoryview, stripes: range,
                    sequential: bool) -> set[int] | None:
        """Full stripes: encode. Partial: parity delta, or read-modify-write when degraded.

        Returns the members that failed, or None (nothing written) if a member failed
        while old contents were read. The caller holds the stripes' locks.
        """
        s = self.core
        planned = await plan_coded_write(s, offset, view, stripes)
        if planned is None:
            return None
        plan, buffers = planned
        try:
            return await s.transfer(plan, write=True, sequential=sequential)
        finally:
            scratch.give(*buffers)
