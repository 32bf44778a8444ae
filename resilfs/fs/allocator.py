"""The extent allocator: carves file extents out of fixed-size resiliency sets.

Sets are the unit the layer below creates (each a region on several appliances); files
are packed into them page by page, so a small file takes a page and not a region.

Space moves through three states. ``reserve`` takes free space for a write in progress;
the journal's MAP record then marks it used (``mark_used``), or ``cancel`` gives it back
if the write failed. ``free`` (truncate, delete) does not make space reusable at once: it
is quarantined until the journal batch recording the free is durable (``seal`` /
``release``), so that a crash can never bring back a deleted file whose pages were
already reused by another file. Every page handed out is fully written (data and zero
padding) before it is mapped, so reused space needs no zeroing.
"""
from bisect import bisect_right, insort

from ..errors import ResilfsError


class OutOfSpace(ResilfsError):
    """No set has room for the request: a new set must be added first."""


class _SetSpace:
    __slots__ = ("size", "starts", "free", "total")

    def __init__(self, size: int):
        self.size = size
        self.starts = [0]          # sorted starts of free ranges
        self.free = {0: size}      # start -> length
        self.total = size          # sum of the free lengths

    def free_bytes(self) -> int:
        return self.total

    def take(self, offset: int, length: int) -> None:
        """Remove ``[offset, offset+length)`` from free space; ValueError if not all free."""
        i = bisect_right(self.starts, offset) - 1
        if i < 0:
            raise ValueError(f"range at {offset} is not free")
        start = self.starts[i]
        have = self.free[start]
        if start + have < offset + length:
            raise ValueError(f"range {offset}+{length} is not free")
        del self.free[start]
        del self.starts[i]
        if offset > start:
            self.free[start] = offset - start
            insort(self.starts, start)
        tail = start + have - (offset + length)
        if tail:
            self.free[offset + length] = tail
            insort(self.starts, offset + length)
        self.total -= length

    def give(self, offset: int, length: int) -> None:
        """Return a range to free space, merging with neighbours."""
        added = length
        i = bisect_right(self.starts, offset)
        if i > 0:
            prev = self.starts[i - 1]
            if prev + self.free[prev] > offset:
                raise ValueError(f"range at {offset} is already free")
            if prev + self.free[prev] == offset:
                offset, length = prev, self.free.pop(prev) + length
                del self.starts[i - 1]
                i -= 1
        if i < len(self.starts):
            nxt = self.starts[i]
            if offset + length > nxt:
                raise ValueError(f"range at {offset} overlaps free space at {nxt}")
            if offset + length == nxt:
                length += self.free.pop(nxt)
                del self.starts[i]
        self.free[offset] = length
        self.starts.insert(i, offset)
        self.total += added


class Allocator:
    """Free space of every set. Pure bookkeeping: no I/O."""

    def __init__(self):
        self._sets: dict[int, _SetSpace] = {}
        self._reserved: set[tuple[int, int, int]] = set()
        self._quarantine: list[tuple[int, int, int]] = []
        self._sealed = 0  # bytes sealed and neither released nor unsealed yet
        self._quarantined = 0  # bytes in _quarantine
        #: ranges released since the last ``take_released`` (None: not kept)
        self._released: list[tuple[int, int, int]] | None = None

    # -- sets ------------------------------------------------------------------
    def add_set(self, set_id: int, size: int) -> None:
        self._sets[set_id] = _SetSpace(size)

    def set_sizes(self) -> dict[int, int]:
        return {set_id: space.size for set_id, space in self._sets.items()}

    def total_bytes(self) -> int:
        return sum(space.size for space in self._sets.values())

    def free_bytes(self) -> int:
        """Free space, counting quarantined and reserved space as used."""
        return sum(space.free_bytes() for space in self._sets.values())

    def quarantined_bytes(self) -> int:
        """Freed space waiting for its records to become durable (sealed or not)."""
        return self._sealed + self._quarantined

    # -- allocation ------------------------------------------------------------
    def reserve(self, length: int, hint=None, align: tuple[int, int] | None = None):
        """Reserve ``length`` bytes as ``(set_id, offset, length)`` pieces, contiguous if possible.

        ``hint`` (set id, offset) is tried first so that a growing file stays contiguous;
        then the first free range that holds the rest at an offset ``o`` with
        ``o % align[0] == align[1]`` (if ``align``: stripe alignment for coded sets); then
        any free range that holds it; then pieces of several ranges. Raises OutOfSpace,
        reserving nothing, when the sets cannot hold ``length`` bytes.
        """
        if self.free_bytes() < length:
            raise OutOfSpace(f"no room for {length} bytes")
        pieces = []
        if hint is not None and hint[0] in self._sets:
            space = self._sets[hint[0]]
            i = bisect_right(space.starts, hint[1]) - 1
            if i >= 0:
                avail = space.starts[i] + space.free[space.starts[i]] - hint[1]
                if avail > 0:
                    pieces.append(self._take(hint[0], hint[1], min(avail, length)))
                    length -= pieces[-1][2]
        if length:
            fit = (self._first_fit(length, align) if align else None) or self._first_fit(length)
            if fit is not None:
                pieces.append(self._take(fit[0], fit[1], length))
                length = 0
        while length:  # fragmented: the free-bytes check above guarantees this ends
            set_id, start, n = self._first_fit(1)
            pieces.append(self._take(set_id, start, min(n, length)))
            length -= pieces[-1][2]
        return pieces

    def _take(self, set_id: int, offset: int, length: int) -> tuple[int, int, int]:
        self._sets[set_id].take(offset, length)
        piece = (set_id, offset, length)
        self._reserved.add(piece)
        return piece

    def _first_fit(self, length: int, align: tuple[int, int] | None = None):
        """The first free place for ``length`` bytes (at ``align`` if given), as
        (set id, start, bytes free from start); None if there is none."""
        for set_id, space in self._sets.items():
            for start in space.starts:
                end = start + space.free[start]
                if align is not None:
                    modulus, residue = align
                    start += (residue - start) % modulus
                if end - start >= length:
                    return set_id, start, end - start
        return None

    def cancel(self, pieces) -> None:
        """Give back reserved pieces that will not be mapped (the write failed)."""
        for piece in pieces:
            self._reserved.discard(piece)
            self._sets[piece[0]].give(piece[1], piece[2])

    def mark_used(self, set_id: int, offset: int, length: int) -> None:
        """A MAP record: the range is now part of a file (reserved here, or free on replay)."""
        piece = (set_id, offset, length)
        if piece in self._reserved:
            self._reserved.remove(piece)
        else:
            self._sets[set_id].take(offset, length)

    # -- freeing -----------------------------------------------------------------
    def free(self, set_id: int, offset: int, length: int) -> None:
        """Quarantine a range that no file uses any more (see ``seal``)."""
        self._quarantine.append((set_id, offset, length))
        self._quarantined += length

    def seal(self) -> list[tuple[int, int, int]]:
        """Take the quarantine so far: release it once the records that freed it are durable."""
        sealed, self._quarantine = self._quarantine, []
        self._sealed += self._quarantined
        self._quarantined = 0
        return sealed

    def unseal(self, sealed) -> None:
        """Put sealed ranges back into quarantine (their records did not become durable)."""
        self._quarantine[:0] = sealed
        moved = sum(length for _, _, length in sealed)
        self._sealed -= moved
        self._quarantined += moved

    def release(self, sealed) -> None:
        """Make sealed ranges reusable."""
        for set_id, offset, length in sealed:
            self._sets[set_id].give(offset, length)
            self._sealed -= length
        if self._released is not None:
            self._released.extend(sealed)

    def take_released(self) -> list[tuple[int, int, int]]:
        """The ranges released since the last call (the first call starts keeping them)."""
        taken, self._released = self._released or [], []
        return taken

    def hold(self, ranges) -> list[tuple[int, int, int]]:
        """Reserve the parts of ``ranges`` that are free now; return them as pieces (give
        them back with ``cancel``)."""
        pieces = []
        for set_id, offset, length in ranges:
            space = self._sets.get(set_id)
            if space is None:
                continue
            end = offset + length
            i = max(bisect_right(space.starts, offset) - 1, 0)
            found = []
            while i < len(space.starts) and space.starts[i] < end:
                start = space.starts[i]
                lo, hi = max(start, offset), min(start + space.free[start], end)
                if lo < hi:
                    found.append((lo, hi - lo))
                i += 1
            pieces.extend(self._take(set_id, lo, n) for lo, n in found)
        return pieces

    def free_ranges(self) -> dict[int, list[tuple[int, int]]]:
        """Free ranges by set (quarantine not included): for comparisons in tests."""
        return {set_id: [(s, space.free[s]) for s in space.starts]
                for set_id, space in self._sets.items()}
