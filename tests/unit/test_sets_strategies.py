"""Each set strategy on its own, over a set core on in-memory appliances (tests/unit's
``Fake`` clients of test_sets_model: the ApplianceClient interface in memory, ``down``
makes every call fail like a dead appliance). The strategies are called directly with the
core; the facade's choice among them is what tests/fault checks over real appliances.
"""
import trio
import trio.testing

from resilfs.sets import AppliancePool, ResiliencySet, consistency, mapped, resync
from resilfs.sets.coded import Coded
from resilfs.sets.forward import Forward
from resilfs.sets.membership import FAILED, REBUILDING
from resilfs.sets.mirror import Mirror
from resilfs.sets.scrub import scrub
from resilfs.transport.base import ForwardFailed
from tests.unit.test_sets_model import Fake

CHUNK = 1024
SIZE = 16 * 1024


class SlowPeers(Fake):
    """A fake whose forwarded changes never reach the appliances in ``unreached`` (as if
    they did not answer in time), though those still answer the client."""

    unreached: set[str] = set()

    async def forward_write(self, region, offset, data, targets):
        reached = [t for t in targets if t.region.appliance not in self.unreached]
        await super().forward_write(region, offset, data, reached)
        if len(reached) < len(targets):
            raise ForwardFailed("a target did not answer in time")


async def make(scheme: str, mode: str = "parallel", cls=Fake):
    fakes: dict[str, Fake] = {}
    fakes.update({f"fake:{i}": cls(f"fake:{i}", fakes) for i in range(6)})

    async def connect(address):
        return fakes[address]

    pool = await AppliancePool.create(list(fakes), connect, retry_interval=0)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "unit", "s", chunk_size=CHUNK,
                                   appliances=list(fakes), write_mode=mode)
    return s, fakes


def region(s, fakes, index: int) -> bytearray:
    m = s.members[index]
    return fakes[m.appliance].regions_[m.region_id]


async def written(s, data: bytes, offset: int = 0) -> None:
    """Write through the facade (intents, locks) to set up a state."""
    await s.write(offset, data)


async def test_mirror_writes_current_members_and_reads_any():
    s, fakes = await make("mirror:3")
    data = bytes(range(256)) * (SIZE // 256)
    view = memoryview(data)
    stripes = range(s.stripes)
    failed = await Mirror(s).write(0, view, stripes, sequential=True)
    assert failed == set() and all(region(s, fakes, i) == data for i in range(3))
    fakes[s.members[1].appliance].down = True
    failed = await Mirror(s).write(0, memoryview(b"x" * CHUNK), range(1), sequential=False)
    assert failed == {1} and s.members[1].state == FAILED
    buf = bytearray(SIZE)
    assert await Mirror(s).read(0, memoryview(buf), stripes)
    assert buf[:CHUNK] == b"x" * CHUNK and buf[CHUNK:] == data[CHUNK:]


async def test_coded_writes_keep_the_coding_and_degraded_reads_decode():
    s, fakes = await make("ec:3+2")
    data = bytes((7 * i) % 251 for i in range(SIZE))
    stripes = range(s.stripes)
    assert await Coded(s).write(0, memoryview(data), stripes, sequential=False) == set()
    partial = b"p" * 1500  # a delta write across two data chunks of stripe 1
    at = s.stripe_size + 700
    await Coded(s).write(at, memoryview(partial), range(1, 2), sequential=True)
    expected = bytearray(data)
    expected[at:at + len(partial)] = partial
    async with s.locks.hold(stripes):
        assert (await consistency.compare(s, stripes)).fixes == {}
    await s.mark_failed(0, "test")
    await s.mark_failed(4, "test")
    buf = bytearray(SIZE)
    async with s.locks.hold(stripes):
        assert await Coded(s).read_degraded(0, memoryview(buf))
    assert buf == expected


async def test_forward_applies_only_with_every_data_chunk_current():
    s, fakes = await make("ec:3+2", "forward")
    forward = Forward(s)
    assert forward.applies(range(2))
    await s.mark_failed(2, "test")  # a data chunk the write need not touch
    assert not forward.applies(range(2))  # after a ForwardFailed nothing could be checked


async def test_forward_fences_the_target_it_did_not_reach():
    """ForwardFailed: the coding member that missed the change is marked failed (and
    resynced after its return), not rewritten in place: a late change could land on it."""
    s, fakes = await make("ec:3+2", "forward", SlowPeers)
    await written(s, bytes(SIZE))
    SlowPeers.unreached = {s.members[4].appliance}
    async with s.locks.hold(range(1)):
        missed = await Forward(s).write(100, memoryview(b"n" * 200), range(1),
                                        sequential=False)
    assert missed == set()
    SlowPeers.unreached = set()
    assert s.members[4].state == FAILED and s.members[3].state != FAILED
    s.members[4].dirty.add(0)  # as the facade records for a failed member
    assert await resync.reattach(s, 4) == "reattached"
    assert await resync.rebuild_run(s, 4, range(s.stripes)) == CHUNK
    async with s.locks.hold(range(s.stripes)):
        assert (await consistency.compare(s, range(s.stripes))).fixes == {}


async def test_mapped_paths_need_the_capability():
    """Fakes map nothing: every mapped step answers None (the ordinary path runs)."""
    s, _ = await make("ec:3+2")
    assert s.mapped(range(s.width)) is None
    assert mapped.healthy_clients(s, 1 << 20) is None
    assert await mapped.read_degraded(s, 0, memoryview(bytearray(SIZE))) is None
    assert await mapped.rebuild(s, 0, [1, 2, 3], 0, SIZE) is None


async def test_resync_reattach_waits_for_writes_in_flight():
    """A member cannot turn from failed to rebuilding while a stripe is held by a write:
    the write must first put its stripes in the member's dirty set."""
    s, fakes = await make("mirror:2")
    fakes[s.members[1].appliance].down = True
    await written(s, b"a" * CHUNK)
    assert s.members[1].state == FAILED
    fakes[s.members[1].appliance].down = False
    await s.locks.acquire(range(3, 4))  # a write to stripe 3 in flight
    async with trio.open_nursery() as nursery:
        nursery.start_soon(resync.reattach, s, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert s.members[1].state == FAILED
        s.members[1].dirty.add(3)  # what the write records before it lets go
        s.locks.release(range(3, 4))
    assert s.members[1].state == REBUILDING and s.members[1].dirty == {0, 3}


async def test_resync_rebuild_run_restores_a_member():
    s, fakes = await make("parity:3+1")
    data = bytes((3 * i) % 256 for i in range(SIZE))
    await written(s, data)
    lost = bytes(region(s, fakes, 1))
    region(s, fakes, 1)[:] = bytes(len(lost))
    await s.mark_failed(1, "test")
    s.members[1].dirty.update(range(s.stripes))
    assert await resync.reattach(s, 1) == "reattached"
    assert await resync.rebuild_run(s, 1, range(s.stripes)) == s.stripes * CHUNK
    assert resync.finished(s, 1) and bytes(region(s, fakes, 1)) == lost


async def test_scrub_reports_and_repairs_a_corrupted_coding_chunk():
    s, fakes = await make("ec:3+2")
    await written(s, bytes(range(256)) * (SIZE // 256))
    region(s, fakes, 3)[2 * CHUNK + 5] ^= 0xFF
    report = await scrub(s)
    assert report.mismatched == [2] and report.stripes_checked == s.stripes
    assert (await scrub(s, repair=True)).mismatched == [2]
    assert (await scrub(s)).mismatched == []
