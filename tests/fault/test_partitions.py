"""Network partitions over tcp: appliances in private network namespaces
(scripts/netns_appliances.py), cut off the network and joined again. Needs root and ``ip``.

Found by the soak (issue 13): an ec:4+2 set in forward mode fell below K current members
with only one fault injected, and parity:2+1 and ec:4+2 sets had mismatched stripes after a
partition healed.
"""
import pytest

from scripts import netns_appliances
from scripts.faultschedule import Harness

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
