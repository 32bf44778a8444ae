"""Forward mode when the set or a forward target is not whole (issue 16, defect 5).

Real appliances, killed and restarted for real (SIGKILL, restart with the persist dir).
"""
import functools
import os

import trio

from resilfs.sets import AppliancePool, ResiliencySet
from resilfs.transport import connect
from tests.fault import test_sets_faults
from tests.fault.test_sets_faults import CHUNK, SIZE, Shadow, kill, set_id

cluster = test_sets_faults.cluster  # fixture


async def fresh_connection(pool: AppliancePool, address: str) -> None:
    """Make the pool drop its (dead) connection to ``address`` and connect again, as it
    does by itself after a failed request; the set is not told."""
    await pool.probe()
    with trio.fail_after(10):
        while True:
            try:
                await pool.client(address)
                return
            except Exception:  # noqa: BLE001 - retry_interval not over yet
                await trio.sleep(0.02)


async def test_forward_in_a_degraded_coded_set_leaves_no_stale_coding(cluster, apps, request):
    """ec:2+2 in forward mode with data member 1 failed. Member 3's appliance restarts
    (region kept): the forwarding appliance's connection to it is gone, the client's is
    new. A write to data chunk 0 must not leave member 3's coding stale while the set
    still trusts it: once member 2 is gone too, chunk 1 is decoded from members 0 and 3
    and must read back as written before."""
    pool = await AppliancePool.create(
        [a.address for a in cluster.appliances],
        functools.partial(connect, transport="tcp", secret=cluster.secret, timeout=1.0),
        retry_interval=0.1)
    s = await ResiliencySet.create(pool, "ec:2+2", None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK, write_mode="forward")
    shadow = Shadow(SIZE)
    data = os.urandom(SIZE)
    await s.write(0, data)  # the data members' appliances now hold connections to 2 and 3
    shadow.apply(0, data)
    await kill(cluster, s.members[1].appliance)
    piece = os.urandom(500)
    await s.write(CHUNK + 10, piece)  # data chunk 1 of stripe 0: member 1 noticed failed
    shadow.apply(CHUNK + 10, piece)
    assert s.status().failed == (1,)
    coding = s.members[3].appliance
    app = next(a for a in cluster.appliances if a.address == coding)
    await kill(cluster, coding)
    await trio.to_thread.run_sync(cluster.restart, app)
    await fresh_connection(pool, coding)

    offset = 5 * s.stripe_size + 100  # inside data chunk 0 of stripe 5
    piece = os.urandom(1000)
    await s.write(offset, piece)
    shadow.apply(offset, piece)
    await kill(cluster, s.members[2].appliance)
    await shadow.check(s)  # chunk 1 decoded from members 0 and 3 where member 3 is current
    assert set(s.status().failed) >= {1, 2}
    await pool.aclose()
