"""Resiliency sets over real appliance processes, killed for real (SIGKILL).

Every test checks acknowledged data byte for byte (sha256 of the whole set against a shadow
copy updated only after each write returned) while degraded and after rebuild, and ends
with a scrub that must find nothing.
"""
import hashlib
import os
import random
import signal

import pytest
import trio

from resilfs.sets import AppliancePool, RebuildWorker, ResiliencySet, SetUnavailable, list_sets
from resilfs.sets import membership as set_records
from resilfs.sets.errors import SetConflict
from resilfs.sets.membership import Membership, record_name
from resilfs.transport import connect
from resilfs.transport.base import NoSuchRegion
from tests import appliances
from tests.fault.conftest import kill_writer_while_writing

KiB, MiB = 1 << 10, 1 << 20
SIZE = 4 * MiB
CHUNK = 16 * KiB
CLUSTER = 8  # ec:4+2 needs 6, plus spares for replacements
HANG_GUARD = 120  # seconds: ends a test that would otherwise hang; never a speed check


cluster = appliances.module_cluster(CLUSTER, capacity="256M", persist=True)  # fixtures
open_pool = appliances.open_pool  # a fixture
kill = appliances.kill


def set_id(request) -> str:
    return hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


class Shadow:
    """What the set must contain: updated only after a write was acknowledged."""

    def __init__(self, size: int):
        self.data = bytearray(size)

    def apply(self, offset: int, data: bytes) -> None:
        self.data[offset:offset + len(data)] = data

    async def check(self, s: ResiliencySet) -> None:
        buf = bytearray(len(self.data))
        await s.read_into(0, buf)
        assert hashlib.sha256(buf).hexdigest() == hashlib.sha256(self.data).hexdigest()


async def filled_set(pool: AppliancePool, scheme: str, request) -> tuple[ResiliencySet, Shadow]:
    """A new set of ``scheme`` for this test, written whole with random data, and its shadow."""
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK)
    shadow = Shadow(SIZE)
    data = os.urandom(SIZE)
    await s.write(0, data)
    shadow.apply(0, data)
    return s, shadow


async def writer(s: ResiliencySet, shadow: Shadow, lane: int, lanes: int, stop: trio.Event,
                 seed: int, count: list) -> None:
    """Random writes (partial and full stripes) to 4 KiB blocks b with b % lanes == lane."""
    rng = random.Random(seed)
    blocks = s.size // (4 * KiB)
    while not stop.is_set():
        first = rng.randrange(lane, blocks, lanes)
        n = rng.choice([1, 1, 3, 17]) if lanes == 1 else 1
        n = min(n, blocks - first)
        offset = first * 4 * KiB + rng.choice([0, 0, 100])
        length = n * 4 * KiB - (offset % (4 * KiB))
        data = rng.randbytes(length)
        await s.write(offset, data)
        shadow.apply(offset, data)
        count[0] += 1


async def rebuild_until_healthy(s: ResiliencySet, timeout: float = 30, **options) -> None:
    worker = RebuildWorker(replace_after=options.pop("replace_after", 0.3), **options)
    worker.watch(s)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(timeout):
            while s.status().state != "healthy":
                await trio.sleep(0.02)
        worker.stop()


async def wait_for(predicate, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


SCHEMES = ["mirror:2", "mirror:3", "parity:4+1", "ec:4+2"]


@pytest.mark.parametrize("mode", ["parallel", "sequential", "forward", "shm"])
@pytest.mark.parametrize("scheme", SCHEMES)
async def test_kill_during_writes(cluster, open_pool, apps, request, scheme, mode):
    """SIGKILL a member's appliance while 4 writers run: nothing acknowledged is lost.

    Mode "shm" is parallel writes over the shm transport (the others use tcp)."""
    pool = await open_pool(cluster, "shm" if mode == "shm" else "tcp")
    mode = "parallel" if mode == "shm" else mode
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", set_id(request),
                                   write_mode=mode, chunk_size=CHUNK)
    shadow = Shadow(SIZE)
    await s.write(0, b"\1" * SIZE)
    shadow.apply(0, b"\1" * SIZE)
    count = [0]
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for lane in range(4):
                nursery.start_soon(writer, s, shadow, lane, 4, stop, lane, count)
            await wait_for(lambda: count[0] >= 40)
            await kill(cluster, s.members[1].appliance)
            before = count[0]
            await wait_for(lambda: count[0] >= before + 80)
            stop.set()
    assert s.status().state == "degraded" and s.status().failed == (1,)
    await shadow.check(s)
    await rebuild_until_healthy(s)
    await shadow.check(s)
    report = await s.scrub()
    assert report.mismatched == [] and report.unchecked == []
    assert report.stripes_checked == s.stripes
    await s.close()


async def test_ec_survives_two_kills_third_is_a_clear_error(cluster, open_pool, apps, request):
    pool = await open_pool(cluster)
    s, shadow = await filled_set(pool, "ec:4+2", request)
    for victim in (0, 4):
        await kill(cluster, s.members[victim].appliance)
        piece = os.urandom(100 * KiB)
        await s.write(12345 + victim * KiB, piece)
        shadow.apply(12345 + victim * KiB, piece)
        await shadow.check(s)
    assert s.status().failed == (0, 4)
    await kill(cluster, s.members[2].appliance)
    buf = bytearray(SIZE)
    with pytest.raises(SetUnavailable):
        await s.read_into(0, buf)
    with pytest.raises(SetUnavailable):
        await s.write(0, b"x" * 100)
    assert s.status().state == "unavailable"


@pytest.mark.parametrize("mode", ["parallel", "forward"])
async def test_rebuild_concurrent_with_writes_to_same_stripes(cluster, open_pool, apps, request,
                                                              mode):
    """A slow rebuild while writers hit every stripe: nothing lost, members agree after."""
    pool = await open_pool(cluster)
    s = await ResiliencySet.create(pool, "parity:4+1", None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK, write_mode=mode)
    shadow = Shadow(SIZE)
    data = os.urandom(SIZE)
    await s.write(0, data)
    shadow.apply(0, data)
    await kill(cluster, s.members[2].appliance)
    await s.write(0, data[:100])  # notices the failure
    count = [0]
    stop = trio.Event()
    worker = RebuildWorker(replace_after=0, rate_floor=4 * MiB, rate_ceiling=4 * MiB,
                           run_bytes=64 * KiB)
    worker.watch(s)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            for lane in range(3):
                nursery.start_soon(writer, s, shadow, lane, 3, stop, 10 + lane, count)
            await wait_for(lambda: s.status().state == "rebuilding")
            started = trio.current_time()
            progress = s.status().progress
            assert progress and progress[0].total == s.stripes * CHUNK
            await wait_for(lambda: s.status().state == "healthy", timeout=30)
            # the 4 MiB/s ceiling held: 1 MiB of member took at least ~1/4 s
            assert trio.current_time() - started >= 0.2
            stop.set()
            worker.stop()
    assert count[0] > 50
    await shadow.check(s)
    report = await s.scrub()
    assert report.mismatched == [] and report.stripes_checked == s.stripes


@pytest.mark.parametrize("scheme", ["mirror:2", "ec:4+2"])
async def test_restarted_appliance_resyncs_only_missed_stripes(cluster, open_pool, apps, request,
                                                               scheme):
    pool = await open_pool(cluster)
    s, shadow = await filled_set(pool, scheme, request)
    victim = s.width - 1  # a coding member: every write changes it
    address = s.members[victim].appliance
    await kill(cluster, address)
    missed = set()
    for offset in (0, 5 * s.stripe_size + 7, SIZE - 3000):
        piece = os.urandom(2000)
        await s.write(offset, piece)
        shadow.apply(offset, piece)
        missed.update(range(offset // s.stripe_size, (offset + 1999) // s.stripe_size + 1))
    assert s.members[victim].dirty == missed
    app = next(a for a in cluster.appliances if a.address == address)
    await trio.to_thread.run_sync(cluster.restart, app)
    await rebuild_until_healthy(s, replace_after=60)
    assert s.members[victim].appliance == address  # same region, not a replacement
    assert s.rebuilt_bytes == len(missed) * CHUNK
    await shadow.check(s)
    assert (await s.scrub()).mismatched == []
    await s.close()
    # a fresh opener reads the stored membership: healthy again
    s2 = await ResiliencySet.open(pool, "fault", set_id(request))
    assert s2.status().state == "healthy"
    await shadow.check(s2)


WRITER = """
import functools, random, sys, trio
from resilfs.sets import AppliancePool, ResiliencySet
from resilfs.transport import connect
from resilfs.transport.base import NoSuchRegion

async def main(addresses, secret, set_id, mode):
    pool = await AppliancePool.create(addresses, functools.partial(connect, secret=secret))
    s = await ResiliencySet.open(pool, "fault", set_id, write_mode=mode)
    rng = random.Random(1)
    n = 0
    while True:
        offset = rng.randrange(0, s.size - 70000)
        await s.write(offset, rng.randbytes(rng.choice([100, 5000, 70000])))
        n += 1
        if n == 20:
            print("writing", flush=True)

addresses, secret, set_id = sys.argv[1].split(","), bytes.fromhex(sys.argv[2]), sys.argv[3]
trio.run(main, addresses, secret, set_id, sys.argv[4])
"""


@pytest.mark.parametrize("scheme,mode", [("mirror:3", "sequential"), ("ec:4+2", "sequential"),
                                         ("ec:4+2", "forward"), ("parity:4+1", "parallel")])
async def test_writer_killed_mid_multiwrite_then_resync(cluster, open_pool, apps, request, scheme,
                                                        mode):
    pool = await open_pool(cluster)
    sid = set_id(request)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", sid, chunk_size=CHUNK)
    await s.close()
    await kill_writer_while_writing(WRITER, ",".join(a.address for a in cluster.appliances),
                                    cluster.secret.hex(), sid, mode)
    s = await ResiliencySet.open(pool, "fault", sid)
    assert s.resynced_stripes > 0  # the observers named the unfinished multi-writes
    report = await s.scrub()
    assert report.mismatched == [] and report.stripes_checked == s.stripes
    await s.close()


async def test_hung_appliance_is_failed_after_the_timeout(cluster, open_pool, apps, request):
    """SIGSTOP (no answer, connection open): the write goes on once the client's timeout
    fails the member, then resync. No step is timed: if the timeout never fired the write
    would hang, and the guard would fail the test."""
    pool = await open_pool(cluster)
    s = await ResiliencySet.create(pool, "mirror:2", None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK)
    shadow = Shadow(SIZE)
    app = next(a for a in cluster.appliances if a.address == s.members[1].appliance)
    os.kill(app.pid, signal.SIGSTOP)
    try:
        with trio.fail_after(HANG_GUARD):
            piece = os.urandom(300 * KiB)
            await s.write(1000, piece)
            shadow.apply(1000, piece)
        assert s.status().failed == (1,)
        await shadow.check(s)
    finally:
        os.kill(app.pid, signal.SIGCONT)
    await rebuild_until_healthy(s, replace_after=60)
    assert s.members[1].appliance == app.address
    await shadow.check(s)
    assert (await s.scrub()).mismatched == []


async def test_stale_member_alone_is_not_trusted(cluster, open_pool, apps, request):
    """A member that missed writes comes back while the only current one dies: an opener
    must refuse (the witnesses hold the newer record), not serve the stale copy."""
    pool = await open_pool(cluster)
    sid = set_id(request)
    s = await ResiliencySet.create(pool, "mirror:2", None, SIZE, "fault", sid,
                                   chunk_size=CHUNK)
    await s.write(0, b"old" * 1000)
    stale = next(a for a in cluster.appliances if a.address == s.members[0].appliance)
    await kill(cluster, stale.address)
    await s.write(0, b"new" * 1000)
    assert s.status().failed == (0,)
    await pool.aclose()
    await trio.to_thread.run_sync(cluster.restart, stale)
    await kill(cluster, s.members[1].appliance)
    pool = await open_pool(cluster)
    with pytest.raises(SetUnavailable):
        await ResiliencySet.open(pool, "fault", sid)


@pytest.mark.parametrize("scheme", ["mirror:3", "parity:4+1", "ec:4+2"])
async def test_scrub_finds_and_repairs_a_corrupted_member(cluster, open_pool, apps, request,
                                                          scheme):
    pool = await open_pool(cluster)
    sid = set_id(request)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", sid, chunk_size=CHUNK)
    shadow = Shadow(SIZE)
    data = os.urandom(SIZE)
    await s.write(0, data)
    shadow.apply(0, data)
    victim = s.members[s.width - 1]  # a copy or a coding chunk: the data reads stay right
    client = await pool.client(victim.appliance)
    await client.write(victim.handle, 3 * CHUNK + 5, b"rot")
    report = await s.scrub()
    assert report.mismatched == [3] and not report.repaired
    report = await s.scrub(repair=True)
    assert report.mismatched == [3]
    assert (await s.scrub()).mismatched == []
    await shadow.check(s)
    assert sid in await list_sets(pool, "fault")
    await s.destroy()
    assert sid not in await list_sets(pool, "fault")
    with pytest.raises(NoSuchRegion):
        await client.lookup(victim.region_id, victim.key)


@pytest.mark.parametrize("scheme", ["mirror:3", "ec:4+2"])
async def test_forward_mode_lets_the_cluster_write_the_redundancy(cluster, open_pool, apps, request,
                                                                  scheme):
    """In forward mode the client sends bytes to one member (mirror) or the data members
    (ec) only; the appliances write the rest, and the members agree."""
    sent: dict[str, int] = {}

    async def counting_connect(address):
        client = await connect(address, secret=cluster.secret)
        for name in ("write", "writev", "forward_write"):
            method = getattr(client, name)

            async def counted(*args, _method=method, _address=address):
                sent[_address] = sent.get(_address, 0) + 1
                return await _method(*args)
            setattr(client, name, counted)
        return client

    pool = await open_pool(cluster, connect=counting_connect)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK, write_mode="forward")
    shadow = Shadow(SIZE)
    sent.clear()
    for offset, length in ((0, SIZE), (5000, 300), (s.stripe_size * 3 - 10, 50000)):
        data = os.urandom(length)
        await s.write(offset, data)
        shadow.apply(offset, data)
    redundancy = s.members[1:] if s.mirror else s.members[s.k:]
    assert not any(sent.get(m.appliance) for m in redundancy)
    await shadow.check(s)
    report = await s.scrub()
    assert report.mismatched == [] and report.stripes_checked == s.stripes


@pytest.mark.parametrize("scheme", ["mirror:3", "ec:4+2"])
async def test_torn_multiwrite_is_resynced_at_open(cluster, open_pool, apps, request, scheme):
    """A writer stops for good after some members took a write (here: the write to the
    last member hangs and the writer is abandoned). The members disagree; the next
    opener learns it from the observers and resyncs exactly those stripes."""
    hang: set[str] = set()

    async def hanging_connect(address):
        client = await connect(address, secret=cluster.secret)
        for name in ("write", "writev"):
            method = getattr(client, name)

            async def maybe_hang(*args, _method=method, _address=address):
                if _address in hang:
                    await trio.sleep_forever()
                return await _method(*args)
            setattr(client, name, maybe_hang)
        return client

    writer_pool = await AppliancePool.create([a.address for a in cluster.appliances],
                                             hanging_connect)
    sid = set_id(request)
    s = await ResiliencySet.create(writer_pool, scheme, None, SIZE, "fault", sid,
                                   chunk_size=CHUNK, write_mode="sequential", intent_granule=4)
    await s.write(0, b"\0" * SIZE)
    await s.intents.end_idle(everything=True)  # as after a while without writes
    hang.add(s.members[-1].appliance)
    torn = 7 * s.stripe_size
    with trio.move_on_after(0.3):  # the writer "dies" inside the multi-write
        await s.write(torn, os.urandom(s.stripe_size))
    pool = await open_pool(cluster)
    reader = ResiliencySet(pool, s.membership, s.codec, {})
    report = await reader.scrub()  # a reader that skips the resync sees the tear
    assert report.mismatched == [7]
    s2 = await ResiliencySet.open(pool, "fault", sid)
    assert s2.resynced_stripes == 4  # the open granule (stripes 4..7), nothing more
    report = await s2.scrub()
    assert report.mismatched == [] and report.stripes_checked == s2.stripes
    await s2.close()
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        await writer_pool.aclose()


async def test_lost_region_is_replaced_at_once(cluster, open_pool, apps, request):
    """An appliance that answers but lost the region (restarted without its memory, or the
    region freed) is not waited for: the member is replaced and rebuilt whole."""
    pool = await open_pool(cluster)
    s, shadow = await filled_set(pool, "parity:4+1", request)
    lost = s.members[4]
    await (await pool.client(lost.appliance)).free(lost.handle)
    await s.write(100, b"after")  # the parity member refuses: failed
    shadow.apply(100, b"after")
    assert s.status().failed == (4,)
    assert pool.is_up(lost.appliance)  # it answered: its connection stays for other sets
    await rebuild_until_healthy(s, replace_after=60, timeout=10)
    assert s.members[4].region_id != lost.region_id or s.members[4].appliance != lost.appliance
    assert s.rebuilt_bytes == s.stripes * CHUNK
    await shadow.check(s)
    assert (await s.scrub()).mismatched == []


async def test_idle_set_notices_a_killed_appliance(cluster, open_pool, apps, request):
    """An appliance killed while its set sees no I/O: the worker's probe marks the member
    failed within a few seconds, and redundancy is rebuilt onto a spare."""
    pool = await open_pool(cluster)
    s, shadow = await filled_set(pool, "mirror:2", request)
    victim = s.members[1].appliance
    worker = RebuildWorker(replace_after=0.3, probe_interval=0.2)
    worker.watch(s)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await wait_for(lambda: not s.status().open_intents, timeout=5)  # truly idle now
        await kill(cluster, victim)
        await wait_for(lambda: s.status().state != "healthy", timeout=5)
        await wait_for(lambda: s.status().state == "healthy", timeout=20)
        worker.stop()
    assert victim not in s.status().members
    await shadow.check(s)
    assert (await s.scrub()).mismatched == []


async def test_an_appliance_that_lost_its_record_copy_takes_it_again(cluster, open_pool, apps,
                                                                     request):
    """An appliance that lost its copy of the set's record (back without its memory between
    two saves): the next save, here after a member's appliance is killed under a write,
    stores the record there again; it is no conflict with another client, and the write
    goes on degraded."""
    pool = await open_pool(cluster)
    s, shadow = await filled_set(pool, "mirror:2", request)
    name = record_name(s.set_id)
    witness = next(a for a in pool.up() if a not in {m.appliance for m in s.members})
    await (await pool.client(witness)).record_delete(s.owner, name)
    await kill(cluster, s.members[1].appliance)
    await s.write(100, b"degraded")
    shadow.apply(100, b"degraded")
    assert s.status().failed == (1,)
    got = await (await pool.client(witness)).record_get(s.owner, name)
    assert got is not None and Membership.from_bytes(got[1]).members[1].state == "failed"
    await shadow.check(s)


async def test_a_record_another_client_saved_meanwhile_is_a_conflict(cluster, open_pool, apps,
                                                                     request):
    """Two clients save the set's record from the same epoch: the second one's save is
    refused (SetConflict) and leaves the first one's record in place."""
    pool = await open_pool(cluster)
    s = await ResiliencySet.create(pool, "mirror:2", None, SIZE, "fault", set_id(request),
                                   chunk_size=CHUNK)
    targets = [m.appliance for m in s.members]
    mine, my_generations = await set_records.load(pool, s.owner, s.set_id)
    theirs, their_generations = await set_records.load(pool, s.owner, s.set_id)
    mine.epoch += 1
    theirs.epoch += 1
    theirs.members[1].state = "failed"
    await set_records.save(pool, theirs, their_generations, targets)
    with pytest.raises(SetConflict):
        await set_records.save(pool, mine, my_generations, targets)
    stored, _ = await set_records.load(pool, s.owner, s.set_id)
    assert stored.members[1].state == "failed"
