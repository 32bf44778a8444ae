"""Prometheus metrics of one appliance: capacity, use, regions, ops, bytes, errors, clients.

The counters always run (cheap); ``serve()`` exposes them over HTTP in a daemon thread.
Failure to bind the metrics address raises OSError from ``serve()``.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class Metrics:
    def __init__(self, store):
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("resilfs_appliance_capacity_bytes", "Bytes this appliance lends at most",
              registry=r).set_function(lambda: store.capacity)
        Gauge("resilfs_appliance_used_bytes", "Bytes allocated to regions",
              registry=r).set_function(lambda: store.used)
        Gauge("resilfs_appliance_regions", "Regions allocated",
              registry=r).set_function(lambda: len(store))
        self.clients = Gauge("resilfs_appliance_connected_clients", "Open client connections",
                             registry=r)
        self._ops = Counter("resilfs_appliance_ops", "Operations served, by kind", ["kind"],
                            registry=r)
        self._bytes = Counter("resilfs_appliance_bytes", "Data bytes moved, by kind", ["kind"],
                              registry=r)
        self._errors = Counter("resilfs_appliance_errors", "Refused operations, by error",
                               ["error"], registry=r)
        self._children: dict = {}

    def _child(self, metric, label: str):
        child = self._children.get((metric, label))
        if child is None:
            child = self._children[(metric, label)] = metric.labels(label)
        return child

    def op(self, kind: str, nbytes: int = 0) -> None:
        self._child(self._ops, kind).inc()
        if nbytes:
            self._child(self._bytes, kind).inc(nbytes)

    def error(self, name: str) -> None:
        self._child(self._errors, name).inc()

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
