"""The rdma transport: RDMA READ/WRITE into appliance regions over RC queue pairs (pyverbs).

Set-up, over the ordinary tcp control connection (which also carries every control op):
the client opens the first RDMA device, creates a protection domain, a completion queue, one
RC queue pair and a registered staging buffer, and sends ``RDMA_CONNECT`` with its QP
number, PSN, LID and GID; the appliance creates its own RC QP for this connection, moves it
to RTR/RTS against the client's and answers with its own parameters; the client does the
same. Per region, ``RDMA_REGION(region id, region key)`` makes the appliance check the key,
register the region's mapping as a memory region (once; remote read/write access) and
answer with its address, its rkey and its size. The 64-bit region key is the capability that
buys the rkey: the hardware assigns rkeys (32 bits), so the key cannot be the rkey itself.

Data operations are one-sided: RDMA WRITE from / RDMA READ into the staging buffer (one
memory copy to or from the caller's buffer), checked against the size the appliance gave.
FREE deregisters the region's memory region before the region goes away, so the hardware
refuses any later access with the old rkey: the failed completion puts the QP in the error
state; the client then drops its cached rkeys, sets up a new QP and reports what LOOKUP says
(NoSuchRegion after a free). A completion that does not arrive within the timeout fails the
connection with ApplianceUnavailable.

pyverbs comes from Debian's python3-pyverbs; it is imported from
/usr/lib/python3/dist-packages (appended to sys.path, last) only by this module. Without an
RDMA device ``unavailable_reason()`` says so and connect() refuses the transport. This
machine has no RDMA device, so this module has been written from the pyverbs documentation
and rdma-core's own tests, and is exercised only by the conformance suite on hardware.
"""
import ctypes
import logging
import random
import sys

import trio

from ..protocol import REGION_REF, Op, Reader, Writer, split_address
from .base import ApplianceUnavailable, NoSuchRegion, OutOfBounds, RegionHandle
from .ranges import byte_view, check_range
from .sockets import finite_timeout
from .tcp import TcpClient

log = logging.getLogger(__name__)

DIST_PACKAGES = "/usr/lib/python3/dist-packages"
STAGING = 4 * 1024 * 1024  # bytes of the client's registered staging buffer
PORT = 1
GID_INDEX = 0
CQ_DEPTH = 64

_verbs = None
_reason: str | None = None


def _load() -> None:
    """Import pyverbs once and find a device; remember why not, if not."""
    global _verbs, _reason
    if _verbs is not None or _reason is not None:
        return
    if DIST_PACKAGES not in sys.path:
        sys.path.append(DIST_PACKAGES)
    try:
        import pyverbs.device as device
        import pyverbs.enums as enums
        from pyverbs.addr import GID, AHAttr, GlobalRoute
        from pyverbs.cq import CQ
        from pyverbs.mr import MR
        from pyverbs.pd import PD
        from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
        from pyverbs.wr import SGE, SendWR
    except ImportError as e:
        _reason = f"pyverbs is not installed ({e}); install python3-pyverbs"
        return
    try:
        devices = device.get_device_list()
    except Exception as e:  # pyverbs raises PyverbsRDMAError when the kernel has no RDMA
        devices, _reason = [], f"no RDMA device ({e})"
    if not devices:
        _reason = _reason or "no RDMA device"
        return
    _verbs = dict(device=device, e=enums, GID=GID, AHAttr=AHAttr, GlobalRoute=GlobalRoute,
                  CQ=CQ, MR=MR, PD=PD, QP=QP, QPAttr=QPAttr, QPCap=QPCap,
                  QPInitAttr=QPInitAttr, SGE=SGE, SendWR=SendWR,
                  name=devices[0].name.decode())


def unavailable_reason() -> str | None:
    """Why RDMA cannot be used here (no pyverbs, no device), or None."""
    _load()
    return _reason


class Verbs:
    """One opened RDMA device: context, protection domain, port and GID."""

    def __init__(self):
        _load()
        if _verbs is None:
            raise ApplianceUnavailable(f"rdma: {_reason}")
        self.v = _verbs
        self.e = _verbs["e"]
        self.ctx = _verbs["device"].Context(name=_verbs["name"])
        self.pd = _verbs["PD"](self.ctx)
        self.port_attr = self.ctx.query_port(PORT)
        self.gid = self.ctx.query_gid(PORT, GID_INDEX).gid

    def queue_pair(self):
        """(cq, qp, psn): a new RC QP in INIT state allowing remote read and write."""
        v, e = self.v, self.e
        cq = v["CQ"](self.ctx, CQ_DEPTH, None, None, 0)
        init = v["QPInitAttr"](qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq,
                               cap=v["QPCap"](max_send_wr=CQ_DEPTH, max_recv_wr=1))
        attr = v["QPAttr"](port_num=PORT)
        attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ
                                | e.IBV_ACCESS_REMOTE_WRITE)
        return cq, v["QP"](self.pd, init, attr), random.getrandbits(24)

    def endpoint(self, qp, psn: int) -> bytes:
        """This side's connection parameters, as sent in RDMA_CONNECT."""
        return Writer().u32(qp.qp_num).u32(psn).u32(self.port_attr.lid).str(self.gid).build()

    def connect(self, qp, psn: int, remote: Reader) -> None:
        """Move ``qp`` to RTS against the remote endpoint (same settings as ibv_rc_pingpong)."""
        v, e = self.v, self.e
        qpn, rpsn, lid, gid_text = remote.u32(), remote.u32(), remote.u32(), remote.str()
        gid = v["GID"]()
        gid.gid = gid_text
        attr = v["QPAttr"](port_num=PORT)
        attr.path_mtu = e.IBV_MTU_1024
        attr.dest_qp_num = qpn
        attr.rq_psn = rpsn
        attr.sq_psn = psn
        attr.max_dest_rd_atomic = 1
        attr.max_rd_atomic = 1
        attr.min_rnr_timer = 12
        attr.timeout = 14
        attr.retry_cnt = 7
        attr.rnr_retry = 7
        attr.qp_access_flags = (e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ
                                | e.IBV_ACCESS_REMOTE_WRITE)
        gr = v["GlobalRoute"](dgid=gid, sgid_index=GID_INDEX)
        attr.ah_attr = v["AHAttr"](port_num=PORT, is_global=1, gr=gr, dlid=lid)
        qp.to_rts(attr)

    def register(self, buffer, length: int):
        """(mr, anchor): ``buffer`` (writable, e.g. an mmap) registered for remote access.

        Keep ``anchor`` alive as long as the MR; it pins the buffer's address.
        """
        e = self.e
        anchor = ctypes.c_char.from_buffer(buffer)
        access = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ | e.IBV_ACCESS_REMOTE_WRITE
        return self.v["MR"](self.pd, length, access, address=ctypes.addressof(anchor)), anchor


class RdmaResponder:
    """The appliance side: one QP per client connection, one MR per region asked for."""

    def __init__(self):
        self.verbs = Verbs()
        self._mrs: dict[int, tuple] = {}  # region id -> (mr, anchor)

    def accept(self, remote: Reader):
        """A QP connected to the client's endpoint; returns (qp resources, reply payload)."""
        cq, qp, psn = self.verbs.queue_pair()
        self.verbs.connect(qp, psn, remote)
        return (cq, qp), self.verbs.endpoint(qp, psn)

    def region(self, region) -> bytes:
        """Register the region (once) and describe it: u64 address, u32 rkey, u64 size."""
        entry = self._mrs.get(region.region_id)
        if entry is None:
            entry = self._mrs[region.region_id] = self.verbs.register(region.map, region.size)
        mr = entry[0]
        return Writer().u64(mr.buf).u32(mr.rkey).u64(region.size).build()

    def forget(self, region_id: int) -> None:
        """Deregister before the region is freed: later RDMA with its rkey fails."""
        entry = self._mrs.pop(region_id, None)
        if entry is not None:
            entry[0].close()

    @staticmethod
    def close(resources) -> None:
        cq, qp = resources
        qp.close()
        cq.close()


class RdmaClient(TcpClient):
    """An ``ApplianceClient`` whose data operations are one-sided RDMA READ/WRITE."""

    @classmethod
    async def create(cls, address: str, *, secret: bytes, timeout: float) -> "RdmaClient":
        split_address(address)
        client = await super().create(address, secret=secret, timeout=finite_timeout(timeout))
        try:
            client._verbs = Verbs()
            client._staging = bytearray(STAGING)
            client._staging_mr, client._anchor = client._verbs.register(client._staging, STAGING)
            client._regions: dict[tuple[int, int], tuple[int, int, int]] = {}
            client._rdma_lock = trio.Lock()
            await client._connect_qp()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _connect_qp(self) -> None:
        self._cq, self._qp, psn = self._verbs.queue_pair()
        reply = await self._control(Op.RDMA_CONNECT, self._verbs.endpoint(self._qp, psn))
        self._verbs.connect(self._qp, psn, reply)

    async def _remote(self, region: RegionHandle) -> tuple[int, int, int]:
        ref = (region.region_id, region.key)
        found = self._regions.get(ref)
        if found is None:
            r = await self._control(Op.RDMA_REGION, REGION_REF.pack(*ref))
            found = self._regions[ref] = (r.u64(), r.u32(), r.u64())
        return found

    async def _transfer(self, opcode, region: RegionHandle, offset: int, length: int) -> None:
        """One RDMA op between the staging buffer and the region; waits for its completion."""
        addr, rkey, size = await self._remote(region)
        if offset + length > size:
            raise OutOfBounds(f"range {offset}+{length} is outside region {region.region_id} "
                              f"of {size} bytes")
        v, e = self._verbs.v, self._verbs.e
        sge = v["SGE"](self._staging_mr.buf, length, self._staging_mr.lkey)
        wr = v["SendWR"](wr_id=1, opcode=opcode, num_sge=1, sg=[sge],
                         send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(rkey=rkey, addr=addr + offset)
        self._qp.post_send(wr)
        deadline = trio.current_time() + self.timeout
        while True:
            count, completions = self._cq.poll(num_entries=1)
            if count:
                break
            if trio.current_time() > deadline:
                self._fail(f"no RDMA completion within {self.timeout} s")
                raise self._unavailable()
            await trio.sleep(0)
        if completions[0].status != e.IBV_WC_SUCCESS:
            # The QP is in the error state now: start over, then say what went wrong.
            self._regions.clear()
            self._qp.close()
            self._cq.close()
            await self._connect_qp()
            await self.lookup(region.region_id, region.key)  # raises NoSuchRegion etc.
            raise NoSuchRegion(f"RDMA access to region {region.region_id} failed "
                               f"(completion status {completions[0].status})")

    async def _copy(self, region: RegionHandle, offset: int, view: memoryview,
                    reading: bool) -> None:
        e = self._verbs.e
        staging = memoryview(self._staging)
        async with self._rdma_lock:  # one staging buffer, one op at a time
            for start in range(0, len(view), STAGING):
                piece = view[start:start + STAGING]
                if reading:
                    await self._transfer(e.IBV_WR_RDMA_READ, region, offset + start, len(piece))
                    piece[:] = staging[:len(piece)]
                else:
                    staging[:len(piece)] = piece
                    await self._transfer(e.IBV_WR_RDMA_WRITE, region, offset + start,
                                         len(piece))

    async def read_into(self, region: RegionHandle, offset: int, buffer) -> None:
        view = byte_view(buffer, writable=True)
        check_range(region, offset, len(view))
        await self._copy(region, offset, view, reading=True)

    async def write(self, region: RegionHandle, offset: int, data) -> None:
        view = byte_view(data)
        check_range(region, offset, len(view))
        await self._copy(region, offset, view, reading=False)

    async def readv(self, ranges) -> None:
        checked = [(region, offset, byte_view(buffer, writable=True))
                   for region, offset, buffer in ranges]
        for region, offset, view in checked:
            check_range(region, offset, len(view))
            await self._remote(region)
        for region, offset, view in checked:
            await self._copy(region, offset, view, reading=True)

    async def writev(self, ranges) -> None:
        checked = [(region, offset, byte_view(buffer)) for region, offset, buffer in ranges]
        for region, offset, view in checked:  # all or error: every range first
            check_range(region, offset, len(view))
            if offset + len(view) > (await self._remote(region))[2]:
                raise OutOfBounds(f"range {offset}+{len(view)} is outside region "
                                  f"{region.region_id}")
        for region, offset, view in checked:
            await self._copy(region, offset, view, reading=False)

    async def free(self, region: RegionHandle) -> None:
        await super().free(region)
        self._regions.pop((region.region_id, region.key), None)

    async def aclose(self) -> None:
        await super().aclose()
        for name in ("_qp", "_cq", "_staging_mr"):
            resource = getattr(self, name, None)
            if resource is not None:
                resource.close()
                setattr(self, name, None)
