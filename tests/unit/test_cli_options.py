"""Mount options (-o) as mount(8), mount.fuse3 and users give them; metrics buckets."""
import pytest

from resilfs.cli import options
from resilfs.fs import latency
from resilfs.fs.metrics import _buckets


def test_fstab_options_as_mount_fuse3_passes_them():
    parsed = options.parse("rw,allow_other,log=/var/log/r.log,noatime,dev,suid")
    assert parsed.fuse == ["rw", "allow_other", "noatime", "dev", "suid"]
    assert parsed.settings == {"log": "/var/log/r.log"}


def test_mount_only_options_are_dropped():
    parsed = options.parse("defaults,_netdev,auto,noauto,nofail,user,users,nouser,"
                           "x-systemd.requires=a.service,comment=systemd.automount,,ro")
    assert parsed.fuse == ["ro"] and parsed.settings == {}


def test_settings_and_several_o():
    parsed = options.parse_all(["metrics=127.0.0.1:9500", "cache_size=64M,write_mode=forward",
                                "allow_other,allow_other"])
    assert parsed.settings == {"metrics": "127.0.0.1:9500", "cache_size": "64M",
                               "write_mode": "forward"}
    assert parsed.fuse == ["allow_other"]


@pytest.mark.parametrize("text, named", [
    ("allow_other,bogus", "bogus"),
    ("max_write=131072", "max_write=131072"),  # libfuse refuses it (MEASURED.md)
    ("fsname=x", "fsname=x"),  # resilfs sets its own
    ("metrics=", "metrics="),
    ("cache_size", "cache_size"),
    ("allow_other=1", "allow_other=1"),
])
def test_unknown_options_are_refused_by_name(text, named):
    with pytest.raises(options.UsageError) as e:
        options.parse(text)
    assert f"unsupported mount option(s): {named} " in str(e.value)
    assert "\n" not in str(e.value)


def test_latency_buckets_are_inclusive_upper_bounds_and_cumulative():
    lat = latency.Latency()
    for ns in (1, 10_000, 10_001, 25_000, 20_000_000_000):
        lat.record(ns)
    counts, total = lat.snapshot()
    assert total == 1 + 10_000 + 10_001 + 25_000 + 20_000_000_000
    buckets = _buckets(counts)
    assert buckets[0] == (repr(10_000 / 1e9), 2)  # 1 ns and exactly 10 µs
    assert buckets[1] == (repr(25_000 / 1e9), 4)
    assert buckets[-2][1] == 4 and buckets[-1] == ("+Inf", 5)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
