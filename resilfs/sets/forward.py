"""The forward strategy (claims 6-8): the client writes one member, the cluster the rest.

Mirror: the client sends the bytes to the first member current for every stripe of the
range with ``forward_write``; that member's appliance writes them and copies them to the
other current members itself (coefficient 0: verbatim). Parity/ec: each touched piece of a
data chunk goes to its data member's appliance, which writes it and folds the change
(old ^ new) into every current coding member, times that member's coefficient from the
codec's coding matrix (XOR for parity, GF(2^8) multiply-accumulate for Reed-Solomon).
``applies`` says when: a coded set needs every data chunk of the stripes current (so that
the coding can be checked against the data after a failed forward) and no zero
coefficient; otherwise the facade writes the ``parallel`` way.

The caller holds the stripes' locks and write intents. Failures: a forwarding appliance
that fails (error or timeout) is marked failed and the write planned again (None; the retry
picks another member or writes from the client). ``ForwardFailed`` (its own region written,
some target not, or not in time): the run is compared (mirrors against the forwarder, coding
against the data) and every target that disagrees is marked failed, its stripes dirty, and
is resynced only after it returns. It is not rewritten in place: a target that did not
answer in time may still apply the forwarded change later (its appliance received it), which
would corrupt a rewrite. Members that were not current for the whole range are returned, to
have the stripes marked dirty.
"""
from typing import TYPE_CHECKING

import trio

from ..transport.base import ForwardFailed, ForwardTarget, TransportError
from . import consistency
from .membership import FAILED

if TYPE_CHECKING:
    from .core import SetCore


class Forward:
    def __init__(self, core: "SetCore"):
        self.core = core

    def _current(self, stripes: range) -> list[int]:
        return [i for i, m in enumerate(self.core.members)
                if all(m.usable(st) for st in stripes)]

    def applies(self, stripes: range) -> bool:
        """Whether a write to ``stripes`` can be forwarded now (see the module docstring)."""
        s = self.core
        current = self._current(stripes)
        if s.mirror:
            return bool(current)
        matrix = s.codec.coding_matrix
        return all(c in current for c in range(s.k)) and not any(
            matrix[j - s.k][c] == 0 for j in current if j >= s.k for c in range(s.k))

    async def write(self, offset: int, view: memoryview, stripes: range,
                    sequential: bool) -> set[int] | None:
        """Forward ``view`` at ``offset`` (``applies`` must hold); the members that missed
        it, or None (plan again)."""
        s = self.core
        current = self._current(stripes)
        calls = []  # (forwarding member, member offset, bytes, targets)
        if s.mirror:
            targets = [ForwardTarget(s.members[i].handle, 0) for i in current[1:]]
            calls.append((current[0], offset, view, targets))
        else:
            k, matrix = s.k, s.codec.coding_matrix
            coding = [j for j in current if j >= k]
            for st, c, a, n, at in s.pieces(offset, view.nbytes):
                targets = [ForwardTarget(s.members[j].handle, matrix[j - k][c])
                           for j in coding]
                calls.append((c, st * s.chunk_size + a, view[at:at + n], targets))
        forwarders_failed = False
        partial: list[ForwardFailed] = []

        async def forward(index: int, member_offset: int, data, targets) -> None:
            nonlocal forwarders_failed
            client = None
            try:
                client = await s.pool.client(s.members[index].appliance)
                await client.forward_write(s.members[index].handle, member_offset, data,
                                           targets)
            except ForwardFailed as e:
                partial.append(e)
            except TransportError as e:
                forwarders_failed = True
                await s.mark_failed(index, e, client)

        if sequential or len(calls) == 1:
            for call in calls:
                await forward(*call)
        else:
            async with trio.open_nursery() as nursery:
                for call in calls:
                    nursery.start_soon(forward, *call)
        if forwarders_failed:
            return None
        if partial and not await self._fence(stripes, current[0], partial[0]):
            return None
        return {i for i, m in enumerate(s.members) if m.state != FAILED and i not in current}

    async def _fence(self, stripes: range, forwarder: int, error: ForwardFailed) -> bool:
        """After ForwardFailed: mark failed every member whose bytes of ``stripes`` disagree
        (a target the change did not reach). False if that cannot be told (a data member,
        or a mirror's forwarder, failed meanwhile): plan again."""
        s = self.core
        found = await consistency.compare(s, stripes)
        if found is None or (s.mirror and found.live[:1] != [forwarder]):
            return False
        for index in found.fixes:
            await s.mark_failed(index, f"a forwarded write did not reach it: {error}")
        return True
