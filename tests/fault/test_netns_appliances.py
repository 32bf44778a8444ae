"""The partitionable appliances of the fault schedule (scripts/netns_appliances.py) live in
a network namespace of their own but in the host's mount namespace: a private mount
namespace would hold a copy of every FUSE mount of the host, which then outlives its
umount, so the mount daemon never sees the end and never exits (unmounts of unrelated
mounts hung while a soak ran)."""
import os

import pytest

from scripts import netns_appliances
from tests.fs.conftest import make_cluster

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not netns_appliances.available(),
                                 reason="needs root, ip netns and nsenter")]


def test_a_partitionable_appliance_keeps_no_copy_of_the_hosts_mounts(tmp_path):
    c = make_cluster(tmp_path / "fs")
    netns = netns_appliances.NetnsAppliances(str(tmp_path / "netns"))
    try:
        m = c.mount()
        app = netns.start(1, capacity="16M")[0]
        assert os.readlink(f"/proc/{app.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert m.unmount() == 0, m.log_tail()  # the daemon ends with the mount
    finally:
        netns.close()
        c.close()
        c.launcher.close()
