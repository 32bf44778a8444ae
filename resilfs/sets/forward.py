"""The ``forward`` write mode (claims 6-8): the client writes one member, the cluster the rest.

Mirror: the client sends the bytes to the first member current for every stripe of the
range with ``forward_write``; that member's appliance writes them and copies them to the
other current members itself (coefficient 0: verbatim). Parity/ec: each touched piece of a
data chunk goes to its data member's appliance, which writes it and folds the change
(old ^ new) into every current coding member, times that member's coefficient from the
codec's coding matrix (XOR for parity, GF(2^8) multiply-accumulate for Reed-Solomon).
A write whose touched data chunks are not all current, or whose codec has a zero
coefficient, is written the ``parallel`` way instead.

The caller holds the stripes' locks and write intents. Failures: a forwarding appliance
that fails (error or timeout) is marked failed and the write planned again (None; the retry
picks another member or writes from the client, which is correct whatever the partial
forward left: full stripes are re-encoded, partial ones read-modify-written with the new
bytes patched in). ``ForwardFailed`` (its own region written, some target not) makes the
client recompute the coding of the range from the data and rewrite every current member.
Members that were not current for the whole range are returned, to have the stripes marked
dirty.
"""
from typing import TYPE_CHECKING

import trio

from ..transport.base import ForwardFailed, ForwardTarget, TransportError
from .membership import FAILED

if TYPE_CHECKING:
    from .resiliency import ResiliencySet


async def forward_write(s: "ResiliencySet", offset: int, view: memoryview,
                        stripes: range) -> set[int] | None:
    """Write ``view`` at ``offset`` in forward mode; the members that missed it, or None."""
    current = [i for i, m in enumerate(s.members) if all(m.usable(st) for st in stripes)]
    calls = []  # (forwarding member, member offset, bytes, targets)
    if s.mirror:
        if not current:
            return await s._write_mirror(offset, view, stripes)
        targets = [ForwardTarget(s.members[i].handle, 0) for i in current[1:]]
        calls.append((current[0], offset, view, targets))
    else:
        k, matrix = s.k, s.codec.coding_matrix
        coding = [j for j in current if j >= k]
        pieces = list(s._pieces(offset, view.nbytes))
        # every data chunk current, not only the touched ones: after ForwardFailed the
        # coding is recomputed from the data, which needs all of it
        if any(c not in current for c in range(k)) or \
                any(matrix[j - k][c] == 0 for j in coding for c in range(k)):
            return await s._write_coded(offset, view, stripes)
        for st, c, a, n, at in pieces:
            targets = [ForwardTarget(s.members[j].handle, matrix[j - k][c]) for j in coding]
            calls.append((c, st * s.chunk_size + a, view[at:at + n], targets))
    forwarders_failed = False
    partial = False

    async def forward(index: int, member_offset: int, data, targets) -> None:
        nonlocal forwarders_failed, partial
        client = None
        try:
            client = await s.pool.client(s.members[index].appliance)
            await client.forward_write(s.members[index].handle, member_offset, data, targets)
        except ForwardFailed:
            partial = True
        except TransportError as e:
            forwarders_failed = True
            await s._fail(index, e, client)

    if s.write_mode == "sequential" or len(calls) == 1:
        for call in calls:
            await forward(*call)
    else:
        async with trio.open_nursery() as nursery:
            for call in calls:
                nursery.start_soon(forward, *call)
    if forwarders_failed:
        return None
    if partial:
        from .repair import ScrubReport, check_run_locked  # repair builds on the set
        await check_run_locked(s, stripes, True, ScrubReport())
    return {i for i, m in enumerate(s.members) if m.state != FAILED and i not in current}
