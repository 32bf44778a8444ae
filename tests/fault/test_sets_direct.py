"""The shm direct paths (resilfs/sets/direct.py) against the ordinary copy path.

Two sets of the same scheme on disjoint appliances, one reached over shm (direct paths:
copies, encodes and decodes in the members' mappings) and one over tcp (buffers), get the
same writes: full and partial stripes, large and small, healthy and degraded (a member's
appliance SIGKILLed), then a rebuild onto a spare. Their members must hold the same bytes
at every step, and the direct paths must actually have run.
"""
import hashlib
import random

import pytest
import trio

from resilfs.sets import RebuildWorker, ResiliencySet, direct
from tests import appliances
from tests.fault.conftest import kill_writer_while_writing

KiB, MiB = 1 << 10, 1 << 20
SIZE = 8 * MiB
CHUNK = 64 * KiB
SIDE = 7  # appliances per side: ec:4+2 needs 6, plus a spare for the replacement


cluster = appliances.module_cluster(2 * SIDE, capacity="128M", persist=True)  # fixtures
open_pool = appliances.open_pool  # a fixture
kill = appliances.kill


@pytest.fixture
def used(monkeypatch):
    """How often each direct path ran to completion (returned neither None nor False)."""
    counts: dict[str, int] = {}
    for name in ("transfer", "write_mirror", "write_full_stripes", "read_degraded",
                 "rebuild"):
        original = getattr(direct, name)

        async def counted(*args, _original=original, _name=name, **kwargs):
            result = await _original(*args, **kwargs)
            if result is not None and result is not False:
                counts[_name] = counts.get(_name, 0) + 1
            return result

        monkeypatch.setattr(direct, name, counted)
    return counts


def side(cluster, index: int) -> list[str]:
    """The addresses of one side of the cluster (0 or 1)."""
    return [a.address for a in cluster.appliances[index * SIDE:(index + 1) * SIDE]]


async def member_bytes(s: ResiliencySet, index: int) -> bytes:
    member = s.members[index]
    client = await s.pool.client(member.appliance)
    buf = bytearray(member.size)
    await client.read_into(member.handle, 0, buf)
    return bytes(buf)


async def assert_same_members(a: ResiliencySet, b: ResiliencySet, skip=()) -> None:
    for i in range(a.width):
        if i not in skip:
            assert await member_bytes(a, i) == await member_bytes(b, i), f"member {i}"


def writes(rng: random.Random, stripe: int, count: int):
    """(offset, data): whole stripes, large unaligned spans, and small pieces."""
    for _ in range(count):
        kind = rng.choice(["full", "span", "small"])
        if kind == "full":
            n = rng.randint(1, max(1, (2 * MiB) // stripe))
            offset = rng.randrange(0, SIZE // stripe - n + 1) * stripe
            length = n * stripe
        elif kind == "span":
            length = rng.randint(256 * KiB, 2 * MiB)
            offset = rng.randrange(0, SIZE - length)
        else:
            length = rng.randint(1, 20 * KiB)
            offset = rng.randrange(0, SIZE - length)
        yield offset, rng.randbytes(length)


async def rebuild(s: ResiliencySet) -> None:
    worker = RebuildWorker(replace_after=0, rate_floor=None, rate_ceiling=None)
    worker.watch(s)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with trio.fail_after(30):
            while s.status().state != "healthy":
                await trio.sleep(0.01)
        worker.stop()


@pytest.mark.parametrize("scheme,step_max", [("mirror:2", None), ("mirror:3", None),
                                             ("parity:4+1", None), ("ec:4+2", None),
                                             ("ec:4+2", 256 * KiB)])
async def test_direct_paths_store_what_the_copy_path_stores(cluster, open_pool, apps, used,
                                                            monkeypatch, scheme, step_max):
    """``step_max``: decodes cut into many small steps (rebuild runs, large reads)."""
    if step_max is not None:
        monkeypatch.setattr(direct, "STEP_MAX", step_max)
    shm_pool = await open_pool(cluster, "shm", addresses=side(cluster, 0))
    tcp_pool = await open_pool(cluster, "tcp", addresses=side(cluster, 1))
    sets = [await ResiliencySet.create(pool, scheme, None, SIZE, "direct",
                                       f"{scheme}-{step_max}", chunk_size=CHUNK)
            for pool in (shm_pool, tcp_pool)]
    shadow = bytearray(SIZE)
    rng = random.Random(scheme)

    async def write_both(count: int) -> None:
        for offset, data in writes(rng, sets[0].stripe_size, count):
            for s in sets:
                await s.write(offset, data)
            shadow[offset:offset + len(data)] = data

    async def read_both() -> None:
        for s in sets:
            for offset, length in ((0, SIZE), (rng.randrange(SIZE // 2), 3 * MiB + 5)):
                buf = bytearray(length)
                await s.read_into(offset, buf)
                assert buf == shadow[offset:offset + length]

    await write_both(40)
    await assert_same_members(*sets)
    await read_both()

    victim = 0  # a data member: degraded reads decode it
    for s in sets:
        await kill(cluster, s.members[victim].appliance)
    await write_both(40)  # the first write to each set notices the failure
    assert [s.status().failed for s in sets] == [(victim,), (victim,)]
    assert sets[0].members[victim].dirty == sets[1].members[victim].dirty
    await assert_same_members(*sets, skip=[victim])
    await read_both()

    for s in sets:
        await rebuild(s)
    await assert_same_members(*sets)
    await read_both()
    for s in sets:
        report = await s.scrub()
        assert report.mismatched == [] and report.stripes_checked == s.stripes

    assert used.get("write_mirror" if sets[0].mirror else "write_full_stripes", 0) > 0
    assert used.get("transfer", 0) > 0 and used.get("rebuild", 0) > 0
    if not sets[0].mirror:
        assert used.get("read_degraded", 0) > 0
    for s in sets:
        await s.destroy()


WRITER = """
import functools, random, sys, trio
from resilfs.sets import AppliancePool, ResiliencySet
from resilfs.transport import connect

async def main(addresses, secret, set_id):
    pool = await AppliancePool.create(
        addresses, functools.partial(connect, transport="shm", secret=secret))
    s = await ResiliencySet.open(pool, "direct", set_id)
    rng = random.Random(1)
    n = 0
    while True:
        length = rng.choice([s.stripe_size * 4, 300000, 5000])
        offset = rng.randrange(0, (s.size - length) // s.stripe_size) * s.stripe_size
        await s.write(offset + rng.choice([0, 0, 777]), rng.randbytes(length))
        n += 1
        if n == 20:
            print("writing", flush=True)

addresses, secret, set_id = sys.argv[1].split(","), bytes.fromhex(sys.argv[2]), sys.argv[3]
trio.run(main, addresses, secret, set_id)
"""


@pytest.mark.parametrize("scheme", ["mirror:2", "ec:4+2"])
async def test_shm_writer_killed_mid_multiwrite_then_resync(cluster, open_pool, apps, scheme):
    """The direct paths keep the observer protocol: a writer killed while its copies and
    encodes go straight into the members leaves intents that the next open resyncs."""
    pool = await open_pool(cluster, "shm", addresses=side(cluster, 0))
    sid = "killed-" + hashlib.sha1(scheme.encode()).hexdigest()[:8]
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "direct", sid, chunk_size=CHUNK)
    await s.close()
    await kill_writer_while_writing(WRITER, ",".join(pool.addresses), cluster.secret.hex(),
                                    sid)
    s = await ResiliencySet.open(pool, "direct", sid)
    assert s.resynced_stripes > 0
    report = await s.scrub()
    assert report.mismatched == [] and report.stripes_checked == s.stripes
    await s.destroy()
