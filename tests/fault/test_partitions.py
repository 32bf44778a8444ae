"""Network partitions over tcp: appliances in private network namespaces
(scripts/netns_appliances.py), cut off the network and joined again. Needs root and ``ip``.

Found by the soak (issue 13): an ec:4+2 set in forward mode fell below K current members
with only one fault injected, and parity:2+1 and ec:4+2 sets had mismatched stripes after a
partition healed.
"""
import subprocess
import time

import pytest
import trio

from resilfs.transport.base import ApplianceUnavailable
from resilfs.transport.tcp import TcpClient
from scripts import netns_appliances
from scripts.faultschedule import Harness
from scripts.netns_appliances import NetnsAppliances

pytestmark = pytest.mark.skipif(not netns_appliances.available(),
                                reason="network partitions need root and ip netns")


def test_appliances_in_network_namespaces_reach_each_other():
    """Forwarded writes go from appliance to appliance. Before, each namespace had a /30 to
    the host and no route beyond: every forwarded write failed ("Network is unreachable"),
    the coding members were marked failed at every write, and one injected fault then left
    an ec:4+2 set with 3 current members of 6 ("cannot rebuild member 3: only members
    [0, 1, 2] are current", "set not healthy after 90 s")."""
    h = Harness("ec:4+2", "forward", partition=True).start()
    try:
        for k in range(4):
            h.write("f0", k * 70000, 65536, 1 + k)
        h.fsync("f0")
        log = h.mount_log(lines=10000)
        assert "did not reach it" not in log, log
        assert all(s["state"] == "healthy" and not s["failed"] for s in h.status()["sets"])
        h.check()
    finally:
        h.close()


def _queued(ip: str) -> int:
    """Bytes this host's kernel still holds to send on TCP connections to ``ip``."""
    out = subprocess.run(["ss", "-tnH", "dst", ip], capture_output=True, text=True,
                         check=True).stdout
    return sum(int(line.split()[2]) for line in out.splitlines() if line.strip())


async def test_a_write_given_up_during_a_partition_is_not_applied_after_it_heals(tmp_path):
    """A write sent while the appliance is cut off gets no answer; the client gives the
    connection up (ApplianceUnavailable) and its set marks the member failed, writes on
    without it, and resyncs it once it is back. Before, the client closed the socket
    gracefully: the kernel kept the unsent write and delivered it once the partition
    healed (retransmission backs off, so seconds later: after the member was resynced and
    written again), and the appliance applied it over newer bytes. That was the soak's
    scrub mismatch after a partition heal (parity:2+1 and ec:4+2 over tcp: a coding
    member holding coding of old data). Now the connection is reset: nothing is sent
    after the client gave up."""
    launcher = NetnsAppliances(str(tmp_path))
    try:
        app, = launcher.start(1, capacity="16M", persist=False)
        ip = app.ns_ip
        client = await TcpClient.create(app.address, secret=launcher.secret, timeout=1.0)
        region = await client.alloc(1 << 20, "partition-test")
        launcher.cut(app)
        with pytest.raises(ApplianceUnavailable):
            await client.write(region, 0, b"\x01" * 4096)
        await client.aclose()
        launcher.heal(app)
        # until this host's kernel holds nothing more for the appliance: it gave the
        # write up at once (fixed), or delivered it after the heal (the defect)
        deadline = time.monotonic() + 60
        while _queued(ip):
            assert time.monotonic() < deadline, "the write stayed queued for 60 s"
            await trio.sleep(0.05)
        fresh = await TcpClient.create(app.address, secret=launcher.secret, timeout=5.0)
        try:
            buf = bytearray(4096)
            await fresh.read_into(region, 0, buf)
            assert bytes(buf) == bytes(4096), "a write given up was applied after the heal"
        finally:
            await fresh.aclose()
    finally:
        launcher.close()
