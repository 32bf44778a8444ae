"""Forwarded writes (claims 6-8): one appliance writes its region and updates the others."""
import os

import pytest

from resilfs.codec import gf_mad
from resilfs.transport import connect
from resilfs.transport.base import ForwardFailed, ForwardTarget, OutOfBounds, WrongRegionKey

SIZE = 1 << 16


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("transport", ["tcp", "shm"])
async def test_forward_write_mirror_xor_and_gf(launcher, appliances, transport):
    clients = [await connect(a.address, transport=transport, secret=launcher.secret)
               for a in appliances]
    try:
        data_region = await clients[0].alloc(SIZE, "fs")
        mirror = await clients[1].alloc(SIZE, "fs")
        parity = await clients[2].alloc(SIZE, "fs")
        coded = await clients[2].alloc(SIZE, "fs")
        old, p0, q0 = os.urandom(SIZE), os.urandom(SIZE), os.urandom(SIZE)
        await clients[0].write(data_region, 0, old)
        await clients[1].write(mirror, 0, old)
        await clients[2].write(parity, 0, p0)
        await clients[2].write(coded, 0, q0)

        new = os.urandom(1000)
        offset = 5000
        await clients[0].forward_write(data_region, offset, new, [
            ForwardTarget(mirror, 0), ForwardTarget(parity, 1), ForwardTarget(coded, 7)])

        delta = xor(old[offset:offset + 1000], new)
        expected_q = bytearray(q0)
        gf_mad(memoryview(expected_q)[offset:offset + 1000], 7, delta)
        assert bytes(await clients[0].read(data_region, offset, 1000)) == new
        assert bytes(await clients[1].read(mirror, 0, SIZE)) == old[:offset] + new + old[
            offset + 1000:]
        assert bytes(await clients[2].read(parity, offset, 1000)) == xor(
            p0[offset:offset + 1000], delta)
        assert bytes(await clients[2].read(parity, 0, offset)) == p0[:offset]
        assert bytes(await clients[2].read(coded, 0, SIZE)) == bytes(expected_q)
    finally:
        for client in clients:
            await client.aclose()


async def test_apply_delta_directly(launcher, appliance):
    async with await connect(appliance.address, secret=launcher.secret) as client:
        region = await client.alloc(16, "fs")
        await client.apply_delta(region, 0, b"\x01\x02", 0)
        await client.apply_delta(region, 0, b"\xff\xff", 1)
        assert bytes(await client.read(region, 0, 2)) == b"\xfe\xfd"
        with pytest.raises(OutOfBounds):
            await client.apply_delta(region, 15, b"xx", 1)
        with pytest.raises(ValueError):
            await client.apply_delta(region, 0, b"xx", 256)


async def test_failed_target_reported_local_write_kept(launcher, appliances):
    clients = [await connect(a.address, secret=launcher.secret) for a in appliances]
    try:
        data_region = await clients[0].alloc(SIZE, "fs")
        good = await clients[1].alloc(SIZE, "fs")
        gone = await clients[2].alloc(SIZE, "fs")
        wrong_key = ForwardTarget(type(good)(good.appliance, good.region_id, good.size,
                                             good.key ^ 1), 1)
        with pytest.raises(ForwardFailed, match="wrong key"):
            await clients[0].forward_write(data_region, 0, b"one", [wrong_key])
        launcher.kill(appliances[2])
        with pytest.raises(ForwardFailed, match=appliances[2].address):
            await clients[0].forward_write(data_region, 0, b"two", [
                ForwardTarget(good, 0), ForwardTarget(gone, 1)])
        assert bytes(await clients[0].read(data_region, 0, 3)) == b"two"
        assert bytes(await clients[1].read(good, 0, 3)) == b"two"
        with pytest.raises(WrongRegionKey):  # a refused local write forwards nothing
            await clients[0].forward_write(type(data_region)(
                data_region.appliance, data_region.region_id, SIZE, 1), 0, b"x",
                [ForwardTarget(good, 0)])
        assert bytes(await clients[1].read(good, 0, 3)) == b"two"
    finally:
        for client in clients[:2]:
            await client.aclose()
