"""Resiliency sets against a model, over in-memory appliances (no processes): random writes,
member failures, returns, rebuild steps and degraded reads, checked byte for byte.

The fakes implement the ApplianceClient interface in memory; ``down`` makes every call
raise ApplianceUnavailable, like a dead appliance. Hypothesis drives the sequences.
"""
import itertools

import numpy as np
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilfs.appliance.peers import fold
from resilfs.scheme import Scheme
from resilfs.sets import AppliancePool, ResiliencySet, SetUnavailable
from resilfs.sets.membership import FAILED
from resilfs.sets.repair import finished, reattach, rebuild_run
from resilfs.transport.base import (
    ApplianceClient,
    ApplianceError,
    ApplianceUnavailable,
    ForwardFailed,
    NoSuchRegion,
    RecordConflict,
    RegionHandle,
)

CHUNK = 1024
SIZE = 16 * 1024


class Fake(ApplianceClient):
    def __init__(self, address: str, peers: dict):
        self.address = address
        self.peers = peers
        self.down = False
        self.regions_: dict[int, bytearray] = {}
        self.records: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.intents: dict[tuple[str, str], dict[int, list]] = {}
        self._ids = itertools.count(1)

    async def _check(self):
        await trio.lowlevel.checkpoint()
        if self.down:
            raise ApplianceUnavailable(f"{self.address} is down")

    def _region(self, region: RegionHandle) -> bytearray:
        if region.region_id not in self.regions_:
            raise NoSuchRegion(str(region.region_id))
        return self.regions_[region.region_id]

    async def alloc(self, size, owner):
        await self._check()
        region_id = next(self._ids)
        self.regions_[region_id] = bytearray(size)
        return RegionHandle(self.address, region_id, size, region_id * 7)

    async def free(self, region):
        await self._check()
        self.regions_.pop(region.region_id, None)

    async def clone(self, region):
        raise ApplianceError("not faked")

    async def regions(self, owner=None):
        raise ApplianceError("not faked")

    async def lookup(self, region_id, key):
        await self._check()
        if region_id not in self.regions_:
            raise NoSuchRegion(str(region_id))
        return RegionHandle(self.address, region_id, len(self.regions_[region_id]), key)

    async def stat(self):
        raise ApplianceError("not faked")

    async def read_into(self, region, offset, buffer):
        await self._check()
        view = memoryview(buffer).cast("B")
        view[:] = self._region(region)[offset:offset + len(view)]

    async def write(self, region, offset, data):
        await self._check()
        view = memoryview(data).cast("B")
        self._region(region)[offset:offset + len(view)] = view

    async def readv(self, ranges):
        for region, offset, buf in ranges:
            await self.read_into(region, offset, buf)

    async def writev(self, ranges):
        for region, offset, buf in ranges:
            await self.write(region, offset, buf)

    async def record_get(self, owner, name):
        await self._check()
        return self.records.get((owner, name))

    async def record_put(self, owner, name, value, expected_generation):
        await self._check()
        generation = self.records.get((owner, name), (0, b""))[0]
        if generation != expected_generation:
            raise RecordConflict("generation")
        self.records[(owner, name)] = (generation + 1, bytes(value))
        return generation + 1

    async def record_list(self, owner):
        await self._check()
        return [n for o, n in self.records if o == owner]

    async def record_delete(self, owner, name):
        await self._check()
        self.records.pop((owner, name), None)

    async def intent_begin(self, owner, set_id, intent_id, extents):
        await self._check()
        self.intents.setdefault((owner, set_id), {})[intent_id] = list(extents)

    async def intent_end(self, owner, set_id, intent_ids):
        await self._check()
        for i in intent_ids:
            self.intents.get((owner, set_id), {}).pop(i, None)

    async def intent_pending(self, owner, set_id):
        await self._check()
        return sorted(self.intents.get((owner, set_id), {}).items())

    async def forward_write(self, region, offset, data, targets):
        """Write here, then fold the new bytes (coefficient 0) or the delta into each
        target, as an appliance does; ForwardFailed if a target is down."""
        await self._check()
        new = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8).copy()
        mine = self._region(region)
        delta = np.frombuffer(mine, dtype=np.uint8)[offset:offset + len(new)] ^ new
        mine[offset:offset + len(new)] = new.tobytes()
        failed = []
        for target in targets:
            peer = self.peers[target.region.appliance]
            if peer.down:
                failed.append(target.region.appliance)
                continue
            view = memoryview(peer._region(target.region))[offset:offset + len(new)]
            fold(view, new if target.coefficient == 0 else delta, target.coefficient)
        if failed:
            raise ForwardFailed(f"targets {failed} failed")

    async def apply_delta(self, region, offset, delta, coefficient):
        raise ApplianceError("not faked")

    async def aclose(self):
        pass


ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 5000),
              st.integers(0, 255)),
    st.tuples(st.just("fail"), st.integers(0, 5)),
    st.tuples(st.just("return"), st.integers(0, 5)),
    st.tuples(st.just("rebuild"), st.integers(0, 5), st.integers(0, 15)),
    st.tuples(st.just("read"), st.integers(0, SIZE - 1), st.integers(1, 5000)),
), min_size=10, max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=st.sampled_from(["mirror:2", "mirror:3", "parity:3+1", "ec:3+2"]), ops=ops,
       mode=st.sampled_from(["parallel", "sequential", "forward"]))
def test_sets_match_the_model(scheme, ops, mode):
    trio.run(_run, scheme, ops, mode)


async def _run(scheme, ops, mode):
    fakes: dict[str, Fake] = {}
    fakes.update({f"fake:{i}": Fake(f"fake:{i}", fakes) for i in range(6)})

    async def connect(address):
        if fakes[address].down:
            raise ApplianceUnavailable(address)
        return fakes[address]

    pool = await AppliancePool.create(list(fakes), connect, retry_interval=0)
    s = await ResiliencySet.create(pool, scheme, None, SIZE, "model", "s", chunk_size=CHUNK,
                                   appliances=list(fakes)[:Scheme.parse(scheme).width],
                                   write_mode=mode)
    model = bytearray(SIZE)
    for op in ops:
        kind = op[0]
        if kind == "write":
            _, offset, length, byte = op
            length = min(length, SIZE - offset)
            data = bytes([byte]) * length
            try:
                await s.write(offset, data)
            except SetUnavailable:
                assert s.lost > s.scheme.tolerance or _some_stripe_lost(s)
                return  # beyond tolerance: the write's range is undefined from here
            model[offset:offset + length] = data
        elif kind == "fail" and op[1] < s.width:
            fakes[s.members[op[1]].appliance].down = True
        elif kind == "return" and op[1] < s.width:
            fakes[s.members[op[1]].appliance].down = False
            if s.members[op[1]].state == FAILED:
                await reattach(s, op[1])
        elif kind == "rebuild" and op[1] < s.width:
            first = op[2] * s.stripes // 16
            try:
                await rebuild_run(s, op[1], range(first, min(s.stripes, first + 3)))
            except SetUnavailable:
                pass
            finished(s, op[1])
        elif kind == "read":
            _, offset, length = op
            length = min(length, SIZE - offset)
            buf = bytearray(length)
            try:
                await s.read_into(offset, buf)
            except SetUnavailable:
                assert _some_stripe_lost(s)
                continue
            assert buf == model[offset:offset + length]
    # bring everyone back, rebuild fully, and check everything
    for fake in fakes.values():
        fake.down = False
    for i in range(s.width):
        if s.members[i].state == FAILED:
            await reattach(s, i)
    try:
        for i in range(s.width):
            await rebuild_run(s, i, range(s.stripes))
            finished(s, i)
    except SetUnavailable:
        return  # lost beyond tolerance at some point: nothing more to check
    buf = bytearray(SIZE)
    await s.read_into(0, buf)
    assert buf == model
    report = await s.scrub()
    assert report.mismatched == [] and report.unchecked == []
    assert s.status().state == "healthy"


def _some_stripe_lost(s) -> bool:
    return any(len(s.usable(st)) < s.k for st in range(s.stripes))
