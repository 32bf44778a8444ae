"""A member that comes back while writes are in flight (issue 16, defect 2).

Real appliances, killed and restarted for real. The race is made deterministic with gates:
the test's connect function hands the pool real clients whose ``write``/``writev`` to one
appliance first wait for a trio Event (the bytes then go to the appliance as usual), and
whose ``lookup`` (reattach's question "is my region still there?") reports when it has
returned. Nothing of the set is replaced: every set step runs as in production.
"""
import os

import pytest
import trio

from resilfs.sets import AppliancePool, ResiliencySet
from resilfs.sets.resync import reattach
from resilfs.transport import connect
from tests.fault import test_sets_faults
from tests.fault.test_sets_faults import CHUNK, SIZE, Shadow, kill, rebuild_until_healthy, set_id

cluster = test_sets_faults.cluster  # fixture


class Gates:
    """Per-appliance gates on the real clients the pool opens."""

    def __init__(self, secret: bytes):
        self.secret = secret
        self.hold: dict[str, trio.Event] = {}  # address -> writes wait for this event
        self.arrived = trio.Event()  # a held write reached its gate
        self.looked_up = trio.Event()  # a lookup returned

    async def connect(self, address: str):
        client = await connect(address, secret=self.secret, timeout=1.0)
        for name in ("write", "writev"):
            method = getattr(client, name)

            async def gated(*args, _method=method, _address=address):
                gate = self.hold.get(_address)
                if gate is not None:
                    self.arrived.set()
                    await gate.wait()
                return await _method(*args)
            setattr(client, name, gated)
        lookup = client.lookup

        async def reporting_lookup(*args):
            handle = await lookup(*args)
            self.looked_up.set()  # the caller runs on to its next checkpoint first
            return handle
        client.lookup = reporting_lookup
        return client


@pytest.mark.parametrize("scheme", ["mirror:2", "parity:2+1"])
async def test_member_back_during_a_write_gets_that_stripe_resynced(cluster, apps, request,
                                                                    scheme):
    """The last member (a copy, or the parity) is failed and its appliance restarted
    (region kept). A write to stripe 5 is planned without it and held between its member
    writes; the member reattaches now. Once the write is done, stripe 5 must be resynced on
    that member before it serves it: after the rebuild, with member 0 gone, reads (which
    then need the returned member) must give the new bytes."""
    gates = Gates(cluster.secret)
    pool = await AppliancePool.create([a.address for a in cluster.appliances], gates.connect,
                                      retry_interval=0.1)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK)
    shadow = Shadow(SIZE)
    data = os.urandom(SIZE)
    await s.write(0, data)
    shadow.apply(0, data)
    back = s.members[-1]
    app = next(a for a in cluster.appliances if a.address == back.appliance)
    await kill(cluster, back.appliance)
    piece = os.urandom(3000)
    await s.write(100, piece)  # stripe 0: the member is noticed failed, stripe 0 dirty
    shadow.apply(100, piece)
    assert s.status().failed == (s.width - 1,) and 5 not in back.dirty
    await trio.to_thread.run_sync(cluster.restart, app)

    held = s.members[0].appliance
    gates.hold[held] = trio.Event()
    offset = 5 * s.stripe_size
    piece = os.urandom(s.chunk_size)  # data chunk 0 of stripe 5 (coded: a delta write)
    outcome: dict[str, str] = {}

    async def do_reattach():
        outcome["reattach"] = await reattach(s, s.width - 1)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.write, offset, piece)
            await gates.arrived.wait()  # planned without the member, writing member 0 now
            nursery.start_soon(do_reattach)
            await gates.looked_up.wait()  # reattach found the region and ran on
            gates.hold.pop(held).set()
    shadow.apply(offset, piece)
    assert outcome["reattach"] == "reattached"
    await rebuild_until_healthy(s, replace_after=60)
    assert s.members[-1] is back  # the same region came back
    await kill(cluster, s.members[0].appliance)
    await shadow.check(s)
    await pool.aclose()
