"""Prometheus metrics of a mount daemon (``resilfs mount --metrics HOST:PORT``).

``MetricsServer.start`` binds the HTTP address first thing in ``mount`` (so a taken
address fails the mount before anything is touched: MetricsUnavailable) and serves
``/metrics`` from prometheus-client's daemon threads until the process exits; scrapes
before ``attach`` see no resilfs metrics. ``MountMetrics.collect`` runs in a scrape
thread: it asks the mount's trio thread for a snapshot (``trio.from_thread.run_sync``), so
it never reads the mount's structures while they change, and yields nothing once trio has
finished (the daemon is unmounting). The snapshot's costs (a set status per open set) are
paid per scrape; per FUSE request only ``resilfs.fs.latency`` counters are updated.

Metric names (all ``resilfs_mount_*``; histograms in seconds):

* ``fuse_request_seconds{op}`` (histogram; its ``_count`` is the number of requests),
  ``fuse_requests_total{op}``, ``fuse_errors_total{op}`` (requests answered with an
  error; ENOENT of a lookup is an ordinary answer);
* ``read_bytes_total``, ``written_bytes_total``: file data through read(2)/write(2);
* ``cache_bytes``, ``cache_dirty_bytes``, ``cache_limit_bytes``, ``cache_lost_blocks``,
  ``cache_flush_seconds`` (histogram: one block written back): the write-behind cache;
* ``sets{state}``: data sets healthy / degraded / rebuilding / unavailable / not_open;
  ``rebuild_done_bytes``, ``rebuild_total_bytes``, ``rebuild_members``: rebuilds running;
* ``appliance_up{appliance}``; ``journal_commit_seconds`` (histogram: one batch appended),
  ``journal_queued_records``; ``read_only`` (1 after data loss beyond tolerance).
"""
import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..errors import ResilfsError
from .latency import BOUNDS_NS

SET_STATES = ("healthy", "degraded", "rebuilding", "unavailable", "not_open")
PREFIX = "resilfs_mount_"


class MetricsUnavailable(ResilfsError):
    """The metrics address cannot be served (in use, not this host's, no permission)."""


class MetricsServer:
    """The HTTP endpoint; ``attach`` gives it the mount's metrics."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    @classmethod
    def start(cls, host: str, port: int) -> "MetricsServer":
        registry = CollectorRegistry()
        try:
            start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise MetricsUnavailable(f"cannot serve metrics on {host}:{port}: "
                                     f"{exc.strerror or exc}") from None
        return cls(registry)

    def attach(self, metrics: "MountMetrics") -> None:
        self.registry.register(metrics)


class MountMetrics:
    """A prometheus-client collector over one mount's counters and status.

    Built on the mount's trio thread (it keeps that run's token); every argument is read
    there only, through ``snapshot``."""

    def __init__(self, operations, journal, backing, cache=None):
        self.operations = operations  # .requests (latency.Requests), .failsafe.read_only
        self.journal = journal  # .commit_latency, .queued
        self.backing = backing  # .pool, .sets()
        self.cache = cache  # .statistics(), .limit, .flush_latency; None: no cache
        self._set_sizes = lambda: journal.state.allocator.set_sizes()
        self._token = trio.lowlevel.current_trio_token()

    def snapshot(self) -> dict:
        """Everything ``collect`` reports, copied (call on the mount's trio thread)."""
        states = dict.fromkeys(SET_STATES, 0)
        rebuild = [0, 0, 0]
        opened = self.backing.sets()
        for set_id in self._set_sizes():
            s = opened.get(set_id)
            if s is None:
                states["not_open"] += 1
                continue
            st = s.status()
            states[st.state] = states.get(st.state, 0) + 1
            for p in st.progress:
                rebuild[0] += p.done
                rebuild[1] += p.total
                rebuild[2] += 1
        pool = self.backing.pool
        snap = {"requests": self.operations.requests.snapshot(), "sets": states,
                "rebuild": rebuild, "read_only": self.operations.failsafe.read_only,
                "appliances": {a: pool.is_up(a) for a in pool.addresses},
                "journal_commit": self.journal.commit_latency.snapshot(),
                "journal_queued": self.journal.queued, "cache": None}
        if self.cache is not None:
            snap["cache"] = dict(self.cache.statistics(), limit=self.cache.limit,
                                 flush=self.cache.flush_latency.snapshot())
        return snap

    def collect(self):
        """prometheus-client's collector protocol; runs in a scrape thread."""
        try:
            snap = trio.from_thread.run_sync(self.snapshot, trio_token=self._token)
        except trio.RunFinishedError:
            return
        ops = snap["requests"]["ops"]
        latency = HistogramMetricFamily(PREFIX + "fuse_request_seconds",
                                        "FUSE requests by operation: time to answer",
                                        labels=["op"])
        counts = CounterMetricFamily(PREFIX + "fuse_requests", "FUSE requests by operation",
                                     labels=["op"])
        errors = CounterMetricFamily(PREFIX + "fuse_errors",
                                     "FUSE requests answered with an error, by operation",
                                     labels=["op"])
        for op, (buckets, sum_ns, failed) in sorted(ops.items()):
            latency.add_metric([op], _buckets(buckets), sum_ns / 1e9)
            counts.add_metric([op], sum(buckets))
            errors.add_metric([op], failed)
        yield from (latency, counts, errors)
        yield CounterMetricFamily(PREFIX + "read_bytes", "File bytes returned by reads",
                                  value=snap["requests"]["read_bytes"])
        yield CounterMetricFamily(PREFIX + "written_bytes", "File bytes taken by writes",
                                  value=snap["requests"]["written_bytes"])
        sets = GaugeMetricFamily(PREFIX + "sets", "Data sets by state", labels=["state"])
        for state, n in snap["sets"].items():
            sets.add_metric([state], n)
        yield sets
        done, total, members = snap["rebuild"]
        yield GaugeMetricFamily(PREFIX + "rebuild_done_bytes",
                                "Bytes rebuilt so far by the rebuilds running", value=done)
        yield GaugeMetricFamily(PREFIX + "rebuild_total_bytes",
                                "Bytes the rebuilds running will write", value=total)
        yield GaugeMetricFamily(PREFIX + "rebuild_members", "Members being rebuilt",
                                value=members)
        up = GaugeMetricFamily(PREFIX + "appliance_up", "Appliance reachable (1) or not (0)",
                               labels=["appliance"])
        for address, is_up in snap["appliances"].items():
            up.add_metric([address], int(is_up))
        yield up
        yield _histogram(PREFIX + "journal_commit_seconds",
                         "Metadata journal commits: time to append one batch",
                         snap["journal_commit"])
        yield GaugeMetricFamily(PREFIX + "journal_queued_records",
                                "Metadata records waiting for the next commit",
                                value=snap["journal_queued"])
        yield GaugeMetricFamily(PREFIX + "read_only",
                                "1 once data was lost beyond tolerance (read-only)",
                                value=int(snap["read_only"]))
        cache = snap["cache"]
        if cache is not None:
            yield GaugeMetricFamily(PREFIX + "cache_bytes", "Write-behind cache: bytes held",
                                    value=cache["cached_bytes"])
            yield GaugeMetricFamily(PREFIX + "cache_dirty_bytes",
                                    "Write-behind cache: bytes of blocks not yet written "
                                    "back", value=cache["dirty_block_bytes"])
            yield GaugeMetricFamily(PREFIX + "cache_limit_bytes",
                                    "Write-behind cache: bytes it may hold",
                                    value=cache["limit"])
            yield GaugeMetricFamily(PREFIX + "cache_lost_blocks",
                                    "Write-behind cache: blocks whose writes were lost",
                                    value=cache["lost_blocks"])
            yield _histogram(PREFIX + "cache_flush_seconds",
                             "Write-behind cache: time to write back one block",
                             cache["flush"])


def _buckets(counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts -> Prometheus' cumulative (le, count) pairs, +Inf last."""
    out, running = [], 0
    for bound, n in zip(BOUNDS_NS, counts[:-1], strict=True):
        running += n
        out.append((repr(bound / 1e9), running))
    out.append(("+Inf", running + counts[-1]))
    return out


def _histogram(name: str, doc: str, snapshot: tuple[list[int], int]) -> HistogramMetricFamily:
    buckets, sum_ns = snapshot
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], _buckets(buckets), sum_ns / 1e9)
    return family
