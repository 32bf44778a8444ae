"""Do a run of stripes agree? The check shared by scrub, resync and forward writes.

Mirrors must equal the first current member; coding chunks must be what the data chunks
encode to. Needs every data chunk current (else the run is "unchecked"). The caller holds
the stripes' locks. Members failing while the run is read are marked failed (by the core)
and the run read again without them.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .status import ScrubReport

if TYPE_CHECKING:
    from .core import Ranges, SetCore


@dataclass
class Mismatches:
    """The members whose bytes of a run disagree with what they should hold: per member,
    the (handle, offset, right bytes) ranges that would fix it, and the stripes. ``live``:
    the members compared (a mirror's first one is the reference)."""

    live: list[int]
    fixes: "dict[int, Ranges]"
    stripes: set[int]


async def compare(s: "SetCore", stripes: range) -> Mismatches | None:
    """Read the current members of ``stripes`` and compare; None if a data chunk is not
    current for them (nothing to compare against)."""
    cs, k = s.chunk_size, s.k
    live, bufs = await s.read_run(stripes)
    if s.mirror:
        expected = {i: bufs[live[0]] for i in live[1:]} if live else {}
    elif all(c in live for c in range(k)):
        codec = s.codec_for(len(stripes) * cs)
        coding = await s.compute(len(stripes) * cs * k, codec.encode,
                                 [bufs[c] for c in range(k)])
        expected = {i: coding[i - k] for i in live if i >= k}
    else:
        return None
    found = Mismatches(live, {}, set())
    for i, want in expected.items():
        have = memoryview(bufs[i])
        want = memoryview(want)
        if have == want:
            continue
        for p, st in enumerate(stripes):
            part = slice(p * cs, (p + 1) * cs)
            if have[part] != want[part]:
                found.stripes.add(st)
                found.fixes.setdefault(i, []).append((s.members[i].handle, st * cs, want[part]))
    return found


async def check_run(s: "SetCore", stripes: range, repair: bool, report: ScrubReport) -> None:
    """Compare ``stripes`` (the caller holds their locks) and add to ``report``; with
    ``repair`` rewrite the members that disagree."""
    found = await compare(s, stripes)
    if found is None:
        report.unchecked.extend(stripes)
        return
    report.stripes_checked += len(stripes)
    report.mismatched.extend(sorted(found.stripes))
    if repair and found.fixes:
        await s.transfer(found.fixes, write=True)
