"""Counters cheap enough for every FUSE request: latency histograms and request counts.

The mount's hot paths record into plain Python objects (a list index, a ``bisect`` over a
tuple of ints, two integer additions: no lock, no label lookup by string);
``resilfs.fs.metrics`` turns a snapshot of them into Prometheus metrics when scraped.
Everything here is updated and read on the mount's trio thread only.
"""
from bisect import bisect_left

#: upper bounds of the histogram buckets in nanoseconds (Prometheus ``le``: value <= bound)
BOUNDS_NS = (10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
             5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000,
             500_000_000, 1_000_000_000, 2_500_000_000, 10_000_000_000)


class Latency:
    """A histogram of durations in nanoseconds over ``BOUNDS_NS`` (plus one bucket above)."""

    __slots__ = ("counts", "sum_ns")

    def __init__(self):
        self.counts = [0] * (len(BOUNDS_NS) + 1)
        self.sum_ns = 0

    def record(self, ns: int) -> None:
        self.counts[bisect_left(BOUNDS_NS, ns)] += 1
        self.sum_ns += ns

    def snapshot(self) -> tuple[list[int], int]:
        """(count per bucket, not cumulative; sum in nanoseconds)."""
        return list(self.counts), self.sum_ns


class Requests:
    """Per FUSE operation: a latency histogram (its count is the number of requests) and
    the requests answered with an error; bytes returned by reads and taken by writes.

    ``names[i]`` is the operation of slot ``i``; the handlers know their slot."""

    def __init__(self, names):
        self.names = tuple(names)
        self.latency = [Latency() for _ in self.names]
        self.errors = [0] * len(self.names)
        self.read_bytes = 0
        self.written_bytes = 0

    def snapshot(self) -> dict:
        return {"ops": {name: (*self.latency[i].snapshot(), self.errors[i])
                        for i, name in enumerate(self.names)},
                "read_bytes": self.read_bytes, "written_bytes": self.written_bytes}
