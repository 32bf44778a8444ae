"""Reusable scratch buffers for the hot paths (rebuild, coded writes, degraded reads).

A fresh large bytearray costs page faults on first touch (here ~1 GB/s, slower than the
copies it holds); taking a buffer back from this cache costs nothing. Buffers come back
with stale contents: callers overwrite every byte they use. Not thread-safe: take and give
on the trio loop (worker threads may fill a taken buffer).
"""
KEEP = 16  # buffers of one size kept at most


class Scratch:
    def __init__(self, keep: int = KEEP):
        self.keep = keep
        self._free: dict[int, list[bytearray]] = {}

    def take(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def give(self, *buffers: bytearray) -> None:
        """Return buffers no one uses any more (no view of them may be in use)."""
        for buf in buffers:
            free = self._free.setdefault(len(buf), [])
            if len(free) < self.keep:
                free.append(buf)


scratch = Scratch()
