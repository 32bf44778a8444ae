"""Mount-side Prometheus metrics: scraped over HTTP from a real mount after real I/O."""
import mmap
import os
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fs.conftest import make_cluster
from tests.fs.mounting import run_cli

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """{(sample name, frozenset of labels): value} of http://127.0.0.1:PORT/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_requests_bytes_cache_and_sets(fs_cluster):
    port = free_port()
    fs_cluster.mount("--metrics", f"127.0.0.1:{port}", "--cache-size", "64M")
    before = scrape(port)
    assert value(before, "resilfs_mount_written_bytes_total") == 0
    path = os.path.join(fs_cluster.mountpoint, "f")
    data = os.urandom(3 << 20)
    with open(path, "wb") as f:
        for i in range(0, len(data), 4096):  # small writes: they wait in the cache
            f.write(data[i:i + 4096])
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:  # 4 KiB writes that reach the daemon one by one: they wait in its cache
        page = mmap.mmap(-1, 4096)
        page.write(b"y" * 4096)
        for offset in range(0, len(data), 256 << 10):
            assert os.pwrite(fd, page, offset) == 4096
            data = data[:offset] + b"y" * 4096 + data[offset + 4096:]
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        read = 0
        while True:
            chunk = os.pread(fd, 1 << 20, read)  # O_DIRECT: every read reaches the daemon
            if not chunk:
                break
            read += len(chunk)
    finally:
        os.close(fd)
    assert read == len(data)
    with open(path, "rb") as f:
        assert f.read() == data
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(fs_cluster.mountpoint, "missing"))
    after = scrape(port)

    assert value(after, "resilfs_mount_written_bytes_total") == len(data) + 12 * 4096
    # the O_DIRECT reads, and what of the buffered read the page cache did not hold
    assert value(after, "resilfs_mount_read_bytes_total") >= len(data)
    assert value(after, "resilfs_mount_cache_limit_bytes") == 64 << 20
    assert value(after, "resilfs_mount_cache_dirty_bytes") == 0  # fsync wrote them back
    for op in ("write", "read", "create", "fsync", "lookup"):
        count = value(after, "resilfs_mount_fuse_requests_total", op=op)
        assert count > value(before, "resilfs_mount_fuse_requests_total", op=op), op
        assert value(after, "resilfs_mount_fuse_request_seconds_count", op=op) == count
        assert value(after, "resilfs_mount_fuse_request_seconds_bucket", op=op,
                     le="+Inf") == count
        assert value(after, "resilfs_mount_fuse_request_seconds_sum", op=op) > 0
    assert value(after, "resilfs_mount_fuse_errors_total", op="lookup") >= 1
    assert value(after, "resilfs_mount_fuse_errors_total", op="write") == 0
    assert value(after, "resilfs_mount_cache_flush_seconds_count") > 0
    assert value(after, "resilfs_mount_journal_commit_seconds_count") > 0
    assert value(after, "resilfs_mount_sets", state="healthy") >= 1
    assert value(after, "resilfs_mount_sets", state="degraded") == 0
    assert value(after, "resilfs_mount_rebuild_members") == 0
    for app in fs_cluster.apps:
        assert value(after, "resilfs_mount_appliance_up", appliance=app.address) == 1
    assert value(after, "resilfs_mount_read_only") == 0


def test_metrics_show_a_dead_appliance_and_a_degraded_set(tmp_path):
    c = make_cluster(tmp_path, count=3, scheme="mirror:3")  # no spare: it stays degraded
    try:
        port = free_port()
        c.mount("--metrics", f"127.0.0.1:{port}")
        fd = os.open(os.path.join(c.mountpoint, "f"), os.O_RDWR | os.O_CREAT)
        try:
            os.pwrite(fd, os.urandom(1 << 20), 0)
            os.fsync(fd)
            assert value(scrape(port), "resilfs_mount_sets", state="healthy") == 1
            victim = c.apps[1]
            c.launcher.kill(victim)
            os.pwrite(fd, b"x" * 4096, 0)
            os.fsync(fd)  # the write reaches the set and finds the member gone
        finally:
            os.close(fd)
        samples = scrape(port)
        assert value(samples, "resilfs_mount_appliance_up", appliance=victim.address) == 0
        assert value(samples, "resilfs_mount_appliance_up", appliance=c.apps[0].address) == 1
        assert value(samples, "resilfs_mount_sets", state="degraded") == 1
        assert value(samples, "resilfs_mount_sets", state="healthy") == 0
    finally:
        c.close()
        c.launcher.close()


def test_metrics_address_in_use_refuses_the_mount(fs_cluster):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("mount", fs_cluster.cluster, fs_cluster.mountpoint, "--metrics",
                    f"127.0.0.1:{port}", "--log", os.path.join(fs_cluster.workdir, "m.log"))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("resilfs mount: cannot serve metrics on 127.0.0.1:"), \
        r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not os.path.ismount(fs_cluster.mountpoint)


def test_bad_metrics_address_is_refused(fs_cluster):
    r = run_cli("mount", fs_cluster.cluster, fs_cluster.mountpoint, "--metrics", "nonsense")
    assert r.returncode == 1 and "metrics address must be HOST:PORT" in r.stderr, r.stderr
    assert not os.path.ismount(fs_cluster.mountpoint)
