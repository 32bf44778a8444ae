"""The rdma transport's own logic, against a simulated verbs layer (this machine has no RDMA).

The simulation stands in for pyverbs inside one process: memory regions are (address,
length) registrations, an RDMA READ/WRITE is a memmove checked against the remote rkey,
a failed check completes with an error status and breaks the queue pair, as on hardware.
The appliance runs in the test's own trio loop, so "remote" addresses are in this process.
This checks RdmaClient and RdmaResponder (set-up, rkey exchange, key checks, revocation on
free, recovery after a failed completion); the real hardware path runs in the conformance
suite on machines with an RDMA device.
"""
import ctypes
import itertools
import os
import types

import pytest
import trio

from resilfs.appliance.intent_log import IntentLog
from resilfs.appliance.metrics import Metrics
from resilfs.appliance.record_store import RecordStore
from resilfs.appliance.server import Appliance
from resilfs.appliance.store import RegionStore
from resilfs.transport import rdma
from resilfs.transport.base import NoSuchRegion, OutOfBounds, WrongRegionKey
from resilfs.transport.tcp import TcpClient

SECRET = b"simulated-rdma-cluster-secret"
MR_TABLE: dict[int, tuple[int, int]] = {}  # rkey -> (address, length)
QP_TABLE: dict[int, "FakeQP"] = {}
_numbers = itertools.count(1)

E = types.SimpleNamespace(
    IBV_QPT_RC=2, IBV_ACCESS_LOCAL_WRITE=1, IBV_ACCESS_REMOTE_WRITE=2,
    IBV_ACCESS_REMOTE_READ=4, IBV_MTU_1024=3, IBV_WR_RDMA_WRITE=0, IBV_WR_RDMA_READ=4,
    IBV_SEND_SIGNALED=2, IBV_WC_SUCCESS=0, IBV_WC_REM_ACCESS_ERR=10)


class Bag:
    def __init__(self, *args, **kwargs):
        self.args = args
        self.__dict__.update(kwargs)


class FakeContext:
    def __init__(self, name):
        self.name = name

    def query_port(self, port):
        return Bag(lid=0)

    def query_gid(self, port, index):
        return Bag(gid="fe80:0000:0000:0000:0000:0000:0000:0001")


class FakeMR:
    def __init__(self, pd, length, access, address):
        self.buf, self.length = address, length
        self.lkey = self.rkey = next(_numbers)
        MR_TABLE[self.rkey] = (address, length)

    def close(self):
        MR_TABLE.pop(self.rkey, None)


class FakeCQ:
    def __init__(self, ctx, depth, context, channel, vector):
        self.completions = []

    def poll(self, num_entries=1):
        taken, self.completions = self.completions[:num_entries], self.completions[num_entries:]
        return len(taken), taken

    def close(self):
        pass


class FakeQP:
    def __init__(self, pd, init, attr):
        self.qp_num = next(_numbers)
        self.cq = init.scq
        self.peer = None
        self.broken = False
        QP_TABLE[self.qp_num] = self

    def to_rts(self, attr):
        self.peer = attr.dest_qp_num

    def post_send(self, wr):
        assert self.peer in QP_TABLE, "QP not connected"
        sge = wr.sg[0]
        address, length = MR_TABLE.get(wr.rkey, (0, -1))
        ok = (not self.broken and address <= wr.remote_addr
              and wr.remote_addr + sge.length <= address + length)
        if ok:
            if wr.opcode == E.IBV_WR_RDMA_WRITE:
                ctypes.memmove(wr.remote_addr, sge.addr, sge.length)
            else:
                ctypes.memmove(sge.addr, wr.remote_addr, sge.length)
        else:
            self.broken = True  # an RC QP goes to the error state
        self.cq.completions.append(Bag(status=E.IBV_WC_SUCCESS if ok
                                       else E.IBV_WC_REM_ACCESS_ERR, wr_id=wr.wr_id))

    def close(self):
        QP_TABLE.pop(self.qp_num, None)


class FakeSendWR(Bag):
    def set_wr_rdma(self, rkey, addr):
        self.rkey, self.remote_addr = rkey, addr


FAKE_VERBS = dict(
    device=types.SimpleNamespace(Context=FakeContext), e=E, GID=Bag, AHAttr=Bag,
    GlobalRoute=Bag, CQ=FakeCQ, MR=lambda pd, length, access, address: FakeMR(
        pd, length, access, address), PD=Bag, QP=FakeQP, QPAttr=Bag, QPCap=Bag,
    QPInitAttr=Bag, SGE=lambda addr, length, lkey: Bag(addr=addr, length=length, lkey=lkey),
    SendWR=FakeSendWR, name="sim0")


@pytest.fixture
async def appliance(monkeypatch, tmp_path):
    monkeypatch.setattr(rdma, "_verbs", FAKE_VERBS)
    monkeypatch.setattr(rdma, "_reason", None)
    store = RegionStore(1 << 30)
    app = Appliance(store=store, records=RecordStore(), intents=IntentLog(), secret=SECRET,
                    appliance_id="sim", metrics=Metrics(store), rdma=rdma.RdmaResponder())
    async with trio.open_nursery() as nursery:
        port = await nursery.start(app.serve, "127.0.0.1", 0)
        yield f"127.0.0.1:{port}"
        nursery.cancel_scope.cancel()
    store.close()


async def test_rdma_data_path(appliance):
    client = await rdma.RdmaClient.create(appliance, secret=SECRET, timeout=1.0)
    other = await TcpClient.create(appliance, secret=SECRET, timeout=1.0)
    try:
        region = await client.alloc(10 * (1 << 20), "fs")
        data = os.urandom(region.size)
        await client.write(region, 0, data)  # several staging-buffer rounds
        assert bytes(await other.read(region, 0, region.size)) == data  # really in the region
        await other.write(region, 100, b"from tcp")
        assert bytes(await client.read(region, 98, 12)) == data[98:100] + b"from tcp" + data[
            108:110]
        a, b = bytearray(3), bytearray(4)
        await client.writev([(region, 0, b"abc"), (region, 50, b"defg")])
        await client.readv([(region, 0, a), (region, 50, b)])
        assert (a, b) == (b"abc", b"defg")
        with pytest.raises(OutOfBounds):
            await client.read(region, region.size - 1, 2)
        liar = type(region)(region.appliance, region.region_id, region.size * 2, region.key)
        with pytest.raises(OutOfBounds):  # checked against the size the appliance gave
            await client.write(liar, region.size, b"x")
        wrong = type(region)(region.appliance, region.region_id, region.size, region.key ^ 1)
        with pytest.raises(WrongRegionKey):
            await client.read(wrong, 0, 1)

        await other.free(region)  # another client frees: the rkey is revoked
        with pytest.raises(NoSuchRegion):
            await client.read(region, 0, 10)
        fresh = await client.alloc(4096, "fs")  # and the client recovered its queue pair
        await client.write(fresh, 0, b"after")
        assert bytes(await client.read(fresh, 0, 5)) == b"after"
        await client.free(fresh)
        with pytest.raises(NoSuchRegion):
            await client.write(fresh, 0, b"x")
    finally:
        await client.aclose()
        await other.aclose()
