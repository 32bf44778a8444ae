"""Sets of byte offsets kept as sorted, disjoint half-open ranges (pure logic, no I/O).

The write-behind cache (``resilfs.fs.writebehind``) uses them for the bytes of a block that
it holds and for those not yet written to the sets. Adjacent and overlapping ranges merge,
so a block written page by page ends as one range.
"""
from bisect import bisect_left, bisect_right


class Intervals:
    """Byte offsets as ranges ``[start, stop)``, stored flat: ``[start0, stop0, start1, …]``."""

    __slots__ = ("_bounds",)

    def __init__(self, ranges=()):
        self._bounds: list[int] = []
        for start, stop in ranges:
            self.add(start, stop)

    def add(self, start: int, stop: int) -> None:
        """Include ``[start, stop)`` (nothing for an empty range)."""
        if start >= stop:
            return
        b = self._bounds
        i = bisect_left(b, start)  # odd: start lies in (or right after) range (i-1)//2
        j = bisect_right(b, stop)  # odd: stop lies in (or right before) range (j-1)//2
        b[i:j] = ([start] if i % 2 == 0 else []) + ([stop] if j % 2 == 0 else [])

    def update(self, other: "Intervals") -> None:
        """Include every range of ``other``."""
        for start, stop in other:
            self.add(start, stop)

    def covers(self, start: int, stop: int) -> bool:
        """Whether every offset of ``[start, stop)`` is included (True for an empty range)."""
        if start >= stop:
            return True
        b = self._bounds
        i = bisect_right(b, start)
        return i % 2 == 1 and b[i] >= stop

    def within(self, start: int, stop: int):
        """The included ranges clipped to ``[start, stop)``, in order."""
        b = self._bounds
        i = bisect_right(b, start)
        i -= i % 2  # the range that may contain start, or the first one after it
        while i < len(b) and b[i] < stop:
            lo, hi = max(b[i], start), min(b[i + 1], stop)
            if lo < hi:
                yield lo, hi
            i += 2

    def gaps(self, start: int, stop: int):
        """The offsets of ``[start, stop)`` not included, as ranges in order."""
        pos = start
        for lo, hi in self.within(start, stop):
            if pos < lo:
                yield pos, lo
            pos = hi
        if pos < stop:
            yield pos, stop

    def total(self) -> int:
        """How many offsets are included."""
        b = self._bounds
        return sum(b[1::2]) - sum(b[0::2])

    def __len__(self) -> int:
        """The number of ranges."""
        return len(self._bounds) // 2

    def __bool__(self) -> bool:
        return bool(self._bounds)

    def __iter__(self):
        b = self._bounds
        return iter(zip(b[0::2], b[1::2], strict=True))

    def __repr__(self) -> str:
        return f"Intervals({list(self)})"
