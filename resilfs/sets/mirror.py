"""The mirror strategy: every member holds the set's bytes at the same offsets.

Reads take each byte from one current member (long reads spread over the mirrors in
contiguous blocks, short ones rotate); writes go to every member current for the stripe.
The caller holds the stripes' locks for writes. Failures: a member that fails is marked
failed by the core; the caller plans again (reads) or records the missed stripes (writes).
"""
from typing import TYPE_CHECKING

from .core import MemberPlan
from .membership import FAILED

if TYPE_CHECKING:
    from .core import SetCore


class Mirror:
    def __init__(self, core: "SetCore"):
        self.core = core
        self._rotor = 0

    async def read(self, offset: int, view: memoryview, stripes: range) -> bool:
        """Read each byte from one current member; False if a member failed."""
        s = self.core
        plan = MemberPlan()
        self._rotor += 1
        first, count = stripes.start, len(stripes)
        for st in stripes:
            usable = s.usable(st)
            # a long read spreads over the mirrors in contiguous blocks; short ones rotate
            pick = (st - first) * len(usable) // count if count > 1 else self._rotor
            index = usable[pick % len(usable)]
            lo = max(offset, st * s.stripe_size)
            hi = min(offset + view.nbytes, (st + 1) * s.stripe_size)
            plan.add(index, s.members[index].handle, lo, lo - offset, hi - lo)
        return not await s.transfer(plan.ranges(view), write=False)

    async def write(self, offset: int, view: memoryview, stripes: range,
                    sequential: bool) -> set[int]:
        """Write every current member (in member order if ``sequential``); return the
        members that failed."""
        s = self.core
        plan = MemberPlan()
        end = offset + view.nbytes
        for i, member in enumerate(s.members):
            if member.state == FAILED:
                continue
            for st in stripes:
                if member.usable(st):
                    lo = max(offset, st * s.stripe_size)
                    hi = min(end, (st + 1) * s.stripe_size)
                    plan.add(i, member.handle, lo, lo - offset, hi - lo)
        return await s.transfer(plan.ranges(view), write=True, sequential=sequential)
