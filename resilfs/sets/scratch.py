"""Reusable scratch buffers for the hot paths (rebuild, coded writes, degraded reads).

A fresh large bytearray costs page faults on first touch (here ~1 GB/s, slower than the
copies it holds); taking a buffer back from this cache costs nothing. Buffers come back
with stale contents: callers overwrite every byte they use. Small buffers are not kept
(cheap to allocate), and the cache holds at most ``limit`` bytes, so odd sizes cannot make
it grow without bound. Not thread-safe: take and give on the trio loop (worker threads may
fill a taken buffer).
"""
MIN_SIZE = 64 << 10  # smaller buffers are allocated fresh every time
LIMIT = 128 << 20  # bytes the cache holds at most


class Scratch:
    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self.held = 0
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        if not free:
            return bytearray(size)
        self.held -= size
        buf = free.pop()
        if not free:
            del self._free[size]
        return buf

    def give(self, *buffers: bytearray) -> None:
        """Return buffers no one uses any more (no view of them may be in use)."""
        for buf in buffers:
            size = len(buf)
            if size >= MIN_SIZE and self.held + size <= self.limit:
                self._free.setdefault(size, []).append(buf)
                self.held += size


scratch = Scratch()
