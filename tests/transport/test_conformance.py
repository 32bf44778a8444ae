"""One conformance suite for every transport: tcp, shm and rdma run the same tests.

rdma skips with the reason connect() gives when this machine has no RDMA device.
"""
import os

import pytest
import trio

from resilfs.transport import TRANSPORTS, UnknownTransport, connect, unavailable_reason
from resilfs.transport.base import (
    ApplianceUnavailable,
    NoSpace,
    NoSuchRegion,
    OutOfBounds,
    ProtocolViolation,
    RecordConflict,
    WrongRegionKey,
)
from tests import appliances

MiB = 1 << 20
CAPACITY = 1 << 30


cluster = appliances.module_cluster(1, capacity=str(CAPACITY))  # a fixture


@pytest.fixture
def shared_appliance(cluster):
    """(launcher, appliance): one appliance that the module's tests share."""
    return cluster, cluster.appliances[0]


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    reason = unavailable_reason(request.param)
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    return request.param


@pytest.fixture
async def client(transport, shared_appliance):
    launcher, app = shared_appliance
    async with await connect(app.address, transport=transport, secret=launcher.secret) as client:
        yield client


@pytest.fixture
async def tcp_client(shared_appliance):
    launcher, app = shared_appliance
    async with await connect(app.address, secret=launcher.secret) as client:
        yield client


@pytest.fixture
async def region(client):
    region = await client.alloc(MiB, "conformance")
    yield region
    try:
        await client.free(region)
    except (NoSuchRegion, ApplianceUnavailable):
        pass


async def test_read_after_write(client, region):
    data = os.urandom(10000)
    await client.write(region, 12345, data)
    assert bytes(await client.read(region, 12345, len(data))) == data
    buffer = bytearray(100)
    await client.read_into(region, 12340, buffer)
    assert buffer == bytes(5) + data[:95]
    assert bytes(await client.read(region, 0, 16)) == bytes(16)  # regions start zeroed
    await client.write(region, 12345, memoryview(b"XY"))
    assert bytes(await client.read(region, 12344, 4)) == b"\0XY" + data[2:3]


async def test_bounds_refused_and_nothing_changed(client, region):
    await client.write(region, MiB - 4, b"tail")
    for offset, length in [(MiB - 3, 4), (MiB, 1), (-1, 2), (2 * MiB, 0)]:
        with pytest.raises(OutOfBounds):
            await client.write(region, offset, b"x" * length)
        with pytest.raises(OutOfBounds):
            await client.read(region, offset, length)
    assert bytes(await client.read(region, MiB - 4, 4)) == b"tail"
    await client.write(region, MiB, b"")  # an empty range at the end is in bounds
    assert bytes(await client.read(region, MiB, 0)) == b""


async def test_bounds_checked_by_the_appliance(tcp_client):
    """A handle that lies about its size does not get past the appliance."""
    region = await tcp_client.alloc(4096, "conformance")
    liar = type(region)(region.appliance, region.region_id, 1 << 40, region.key)
    with pytest.raises(OutOfBounds):
        await tcp_client.write(liar, 4096, b"x")
    with pytest.raises(OutOfBounds):
        await tcp_client.read(liar, 4000, 200)
    await tcp_client.free(region)


async def test_wrong_key_refused(client, region):
    await client.write(region, 0, b"secret")  # the right key first (shm maps the region)
    wrong = type(region)(region.appliance, region.region_id, region.size, region.key ^ 1)
    with pytest.raises(WrongRegionKey):
        await client.read(wrong, 0, 6)
    with pytest.raises(WrongRegionKey):
        await client.write(wrong, 0, b"stolen")
    with pytest.raises(WrongRegionKey):
        await client.readv([(wrong, 0, bytearray(6))])
    with pytest.raises(WrongRegionKey):
        await client.writev([(region, 10, b"ok"), (wrong, 0, b"stolen")])
    for call in (client.clone, client.free):
        with pytest.raises(WrongRegionKey):
            await call(wrong)
    with pytest.raises(WrongRegionKey):
        await client.lookup(region.region_id, region.key ^ 1)
    assert bytes(await client.read(region, 0, 12)) == b"secret" + bytes(6)


async def test_many_concurrent_ops(client, region):
    pieces = {i: os.urandom(1 + i * 37 % 4000) for i in range(200)}

    async def write_then_read(i):
        offset = i * 4096
        await client.write(region, offset, pieces[i])
        assert bytes(await client.read(region, offset, len(pieces[i]))) == pieces[i]

    async with trio.open_nursery() as nursery:
        for i in pieces:
            nursery.start_soon(write_then_read, i)
    buffer = bytearray(200 * 4096)
    await client.read_into(region, 0, buffer)
    for i, piece in pieces.items():
        assert buffer[i * 4096:i * 4096 + len(piece)] == piece


async def test_large_requests_in_flight_with_cancelled_calls(client):
    """Many large writes and reads in flight at once (over tcp they leave back to back from
    one outbox); calls cancelled on the way change nothing for the others."""
    size = 16 * 512 * 1024
    region = await client.alloc(size, "conformance")
    pieces = {i: os.urandom(512 * 1024) for i in range(16)}
    cancelled = {3, 8, 13}
    try:
        async def write(i):
            with trio.CancelScope() as scope:
                if i in cancelled:
                    scope.cancel()
                await client.write(region, i * len(pieces[i]), pieces[i])

        async with trio.open_nursery() as nursery:
            for i in pieces:
                nursery.start_soon(write, i)

        async def check(i):
            back = bytearray(len(pieces[i]))
            await client.read_into(region, i * len(back), back)
            assert back == pieces[i]

        async with trio.open_nursery() as nursery:
            for i in pieces.keys() - cancelled:
                nursery.start_soon(check, i)
    finally:
        await client.free(region)


async def test_a_cancelled_write_never_sends_its_buffer_later(client):
    """A write cancelled while a large write ahead of it is being sent (over tcp its request
    waits in the outbox, or goes in the same batch): the buffer, changed once the call
    ended, never reaches the region, and the connection stays up. The range holds the old
    bytes or, if the write went out, its bytes as they were during the call."""
    region = await client.alloc(65 * MiB, "conformance")
    small = bytearray(b"\x11" * 4096)
    try:
        async def big():
            await client.write(region, MiB, os.urandom(MiB) * 64)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(big)
            await trio.sleep(0)  # the big write is being sent
            with trio.move_on_after(0.001):
                await client.write(region, 0, small)
            small[:] = b"\xee" * 4096  # the call is over: this must never be sent
        back = bytes(await client.read(region, 0, 4096))
        assert back in (bytes(4096), b"\x11" * 4096)
    finally:
        await client.free(region)


async def test_one_byte_ops(client):
    region = await client.alloc(1, "conformance")
    await client.write(region, 0, b"\xab")
    assert bytes(await client.read(region, 0, 1)) == b"\xab"
    with pytest.raises(OutOfBounds):
        await client.write(region, 1, b"\xab")
    await client.free(region)


async def test_64_mib_ops(client):
    size = 64 * MiB
    region = await client.alloc(size, "conformance")
    try:
        data = bytearray(os.urandom(MiB)) * 64
        await client.write(region, 0, data)
        back = bytearray(size)
        await client.read_into(region, 0, back)
        assert back == data
        back[:] = bytes(size)
        await client.readv([(region, 0, memoryview(back)[:size // 2]),
                            (region, size // 2, memoryview(back)[size // 2:])])
        assert back == data
    finally:
        await client.free(region)


async def test_vectored_ops(client, region):
    other = await client.alloc(8192, "conformance")
    try:
        await client.writev([(region, 100, b"first"), (other, 8000, b"second"),
                             (region, 0, b"zero")])
        a, b, c = bytearray(5), bytearray(6), bytearray(4)
        await client.readv([(region, 100, a), (other, 8000, b), (region, 0, c)])
        assert (a, b, c) == (b"first", b"second", b"zero")
        # all or error: one bad range refuses the whole request, nothing is written
        with pytest.raises(OutOfBounds):
            await client.writev([(region, 100, b"FIRST"), (other, 8190, b"toolong")])
        assert bytes(await client.read(region, 100, 5)) == b"first"
        await client.readv([])
        await client.writev([])
    finally:
        await client.free(other)


async def test_region_clone(client, region):
    await client.write(region, 1000, b"original")
    copy = await client.clone(region)
    assert (copy.size, copy.appliance) == (region.size, region.appliance)
    assert copy.region_id != region.region_id
    assert bytes(await client.read(copy, 1000, 8)) == b"original"
    await client.write(copy, 1000, b"changed!")
    assert bytes(await client.read(region, 1000, 8)) == b"original"
    infos = {info.region_id: info for info in await client.regions("conformance")}
    assert infos[copy.region_id].size == region.size
    await client.free(copy)


async def test_free_then_use_refused(client, tcp_client):
    region = await client.alloc(4096, "conformance")
    await client.write(region, 0, b"data")
    await client.free(region)
    with pytest.raises(NoSuchRegion):
        await client.read(region, 0, 4)
    with pytest.raises(NoSuchRegion):
        await client.write(region, 0, b"data")
    with pytest.raises(NoSuchRegion):
        await client.free(region)
    # freed by another client: refused too, even after this client used the region
    region = await client.alloc(4096, "conformance")
    await client.write(region, 0, b"data")
    await tcp_client.free(region)
    with pytest.raises(NoSuchRegion):
        await client.read(region, 0, 4)
    with pytest.raises(NoSuchRegion):
        await client.writev([(region, 0, b"data")])
    with pytest.raises(NoSuchRegion):
        await client.lookup(region.region_id, region.key)


async def test_mapped_view_is_the_region_or_none(client, tcp_client, transport):
    """Only shm maps regions here: its view reads and writes the region itself, once
    the region is mapped; every other transport answers None."""
    region = await client.alloc(4096, "conformance")
    assert client.mapped_view(region, 0, 4) is None  # nothing mapped yet
    await client.write(region, 0, b"data")
    view = client.mapped_view(region, 0, 4, writable=True)
    if transport != "shm":
        assert view is None
        await client.free(region)
        return
    assert bytes(view) == b"data" and client.mapped_view(region, 0, 4).readonly
    view[:] = b"DATA"
    assert await tcp_client.read(region, 0, 4) == b"DATA"
    with pytest.raises(OutOfBounds):
        client.mapped_view(region, 4000, 100)
    await tcp_client.free(region)
    with pytest.raises(NoSuchRegion):
        client.mapped_view(region, 0, 4)


async def test_alloc_lookup_stat(client):
    before = await client.stat()
    region = await client.alloc(3 * 4096, "fs-stat")
    after = await client.stat()
    assert after.used == before.used + 3 * 4096
    assert after.regions == before.regions + 1
    assert after.capacity == CAPACITY and after.appliance_id == before.appliance_id
    assert await client.lookup(region.region_id, region.key) == region
    assert [i.region_id for i in await client.regions("fs-stat")] == [region.region_id]
    assert all(i.owner == "fs-stat" for i in await client.regions("fs-stat"))
    await client.free(region)
    assert (await client.stat()).used == before.used


async def test_over_allocation_refused(client):
    before = await client.stat()
    with pytest.raises(NoSpace):
        await client.alloc(CAPACITY - before.used + 1, "conformance")
    with pytest.raises(ProtocolViolation):
        await client.alloc(0, "conformance")
    assert await client.stat() == before


async def test_records_compare_and_set(client):
    owner = f"fs-records-{id(client)}"
    assert await client.record_get(owner, "super") is None
    assert await client.record_put(owner, "super", b"v1", 0) == 1
    with pytest.raises(RecordConflict):
        await client.record_put(owner, "super", b"lost", 0)
    with pytest.raises(RecordConflict):
        await client.record_put(owner, "super", b"lost", 2)
    assert await client.record_put(owner, "super", b"v2", 1) == 2
    assert await client.record_get(owner, "super") == (2, b"v2")
    await client.record_put(owner, "members", b"\0" * 1000, 0)
    assert await client.record_list(owner) == ["members", "super"]
    await client.record_delete(owner, "super")
    await client.record_delete(owner, "super")  # no error when absent
    assert await client.record_get(owner, "super") is None
    assert await client.record_list(owner) == ["members"]
    await client.record_delete(owner, "members")


async def test_intents(client):
    owner = f"fs-intents-{id(client)}"
    await client.intent_begin(owner, "set-1", 1, [(0, 4096)])
    await client.intent_begin(owner, "set-1", 2, [(8192, 100), (1 << 40, 1)])
    await client.intent_begin(owner, "set-2", 1, [])
    await client.intent_end(owner, "set-1", [1, 99])
    assert await client.intent_pending(owner, "set-1") == [(2, [(8192, 100), (1 << 40, 1)])]
    assert await client.intent_pending(owner, "set-2") == [(1, [])]
    await client.intent_end(owner, "set-1", [2])
    await client.intent_end(owner, "set-2", [1])
    assert await client.intent_pending(owner, "set-1") == []


async def test_closed_client_fails_fast(shared_appliance, request):
    launcher, app = shared_appliance
    for transport in ("tcp", "shm"):
        client = await connect(app.address, transport=transport, secret=launcher.secret)
        region = await client.alloc(4096, "conformance")
        await client.free(region)
        await client.aclose()
        with trio.CancelScope() as scope:  # each call fails before it would wait
            scope.cancel()
            with pytest.raises(ApplianceUnavailable):
                await client.read(region, 0, 1)
            with pytest.raises(ApplianceUnavailable):
                await client.stat()
        assert not scope.cancelled_caught


async def test_unknown_transport(shared_appliance):
    launcher, app = shared_appliance
    with pytest.raises(UnknownTransport, match="unknown transport 'udp'"):
        await connect(app.address, transport="udp", secret=launcher.secret)
