"""A file's segment map: which byte ranges of the file live where in which set.

An extent maps ``[file_offset, file_offset + length)`` of a file onto
``[set_offset, set_offset + length)`` of resiliency set ``set_id``. Extents are page
aligned, never overlap, and are kept sorted; an extent that continues the previous one in
both the file and the set is merged into it, so a file written sequentially from fresh
space is one extent per set. Unmapped ranges are holes and read as zeros.

Set id ``LOST`` (0, never a real set) marks a range whose data never reached its set (a
write-behind flush lost beyond the set's tolerance): it reads as EIO, never as the bytes
the set space held before.
"""
from bisect import bisect_right
from collections.abc import Iterator

PAGE = 4096
LOST = 0  # the set id of ranges whose data was lost (see the module docstring)


def page_down(offset: int) -> int:
    return offset - offset % PAGE


def page_up(offset: int) -> int:
    return -(-offset // PAGE) * PAGE


class ExtentMap:
    """The sorted extents of one file. Pure data: no I/O, no allocation."""

    __slots__ = ("_starts", "_extents", "lost_bytes")

    def __init__(self):
        self._starts: list[int] = []
        self._extents: list[list[int]] = []  # [file_offset, length, set_id, set_offset]
        self.lost_bytes = 0  # bytes mapped to LOST

    def __len__(self) -> int:
        return len(self._extents)

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        return (tuple(e) for e in self._extents)

    @property
    def mapped_bytes(self) -> int:
        return sum(e[1] for e in self._extents)

    def add(self, file_offset: int, length: int, set_id: int, set_offset: int) -> None:
        """Map a range that is currently a hole; raises ValueError if it overlaps an extent."""
        i = bisect_right(self._starts, file_offset)
        end = file_offset + length
        if i > 0:
            prev = self._extents[i - 1]
            if prev[0] + prev[1] > file_offset:
                raise ValueError(f"extent at {file_offset} overlaps one at {prev[0]}")
        if i < len(self._extents) and self._extents[i][0] < end:
            raise ValueError(f"extent at {file_offset} overlaps one at {self._extents[i][0]}")
        if set_id == LOST:
            self.lost_bytes += length
        if i > 0:
            prev = self._extents[i - 1]
            if (prev[0] + prev[1] == file_offset and prev[2] == set_id
                    and prev[3] + prev[1] == set_offset):
                prev[1] += length
                self._merge_next(i - 1)
                return
        self._starts.insert(i, file_offset)
        self._extents.insert(i, [file_offset, length, set_id, set_offset])
        self._merge_next(i)

    def _merge_next(self, i: int) -> None:
        if i + 1 >= len(self._extents):
            return
        cur, nxt = self._extents[i], self._extents[i + 1]
        if cur[0] + cur[1] == nxt[0] and cur[2] == nxt[2] and cur[3] + cur[1] == nxt[3]:
            cur[1] += nxt[1]
            del self._starts[i + 1]
            del self._extents[i + 1]

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, int | None, int]]:
        """Cover ``[start, end)`` with ``(file_offset, length, set_id, set_offset)``.

        Holes come out with ``set_id`` None, in file order, with no gaps between pieces.
        """
        pos = start
        i = max(bisect_right(self._starts, start) - 1, 0)
        while pos < end and i < len(self._extents):
            f, n, s, o = self._extents[i]
            i += 1
            if f + n <= pos:
                continue
            if f >= end:
                break
            if f > pos:
                yield pos, f - pos, None, 0
                pos = f
            stop = min(f + n, end)
            yield pos, stop - pos, s, o + (pos - f)
            pos = stop
        if pos < end:
            yield pos, end - pos, None, 0

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The page-aligned holes ``(offset, length)`` inside ``[start, end)`` (rounded out)."""
        return [(f, n) for f, n, s, _ in self.pieces(page_down(start), page_up(end)) if s is None]

    def before(self, offset: int) -> tuple[int, int, int, int] | None:
        """The last extent starting at or before ``offset`` (an allocation hint), or None."""
        i = bisect_right(self._starts, offset) - 1
        return tuple(self._extents[i]) if i >= 0 else None

    def cut(self, keep: int) -> list[tuple[int, int, int]]:
        """Unmap everything at or after page-aligned ``keep``; return the freed set ranges."""
        return self.punch(keep, None)

    def punch(self, start: int, end: int | None) -> list[tuple[int, int, int]]:
        """Unmap the page-aligned range ``[start, end)`` (None: to the end of the file);
        return the freed ``(set_id, set_offset, length)`` ranges in file order."""
        freed = []
        i = max(bisect_right(self._starts, start) - 1, 0)
        kept_starts, kept = self._starts[:i], self._extents[:i]
        for e in self._extents[i:]:
            f, n, s, o = e
            if f + n <= start or (end is not None and f >= end):
                kept_starts.append(f)
                kept.append(e)
                continue
            lo, hi = max(f, start), f + n if end is None else min(f + n, end)
            freed.append((s, o + lo - f, hi - lo))
            if s == LOST:
                self.lost_bytes -= hi - lo
            if f < lo:
                kept_starts.append(f)
                kept.append([f, lo - f, s, o])
            if hi < f + n:
                kept_starts.append(hi)
                kept.append([hi, f + n - hi, s, o + hi - f])
        self._starts, self._extents = kept_starts, kept
        return freed
