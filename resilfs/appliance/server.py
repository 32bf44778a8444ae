"""The appliance's network side: accepts connections and serves protocol frames.

Listens on tcp and on an abstract Unix socket named after the tcp port (the shm transport,
see ``protocol.shm_socket_name``). One trio task per connection reads frames in order and
answers each before reading the next; clients pipeline, so many requests are in flight on a
connection at once. Bulk data moves between the socket and region mappings without Python
copies. A connection waiting for its next bytes while no other task is runnable blocks in
poll() on its socket and trio's epoll fd (``protocol_io.IdleWait``), not in trio's
scheduler: other connections, signals (a graceful SIGTERM) and deadlines end that wait.

Slots: a connection holds a pre-authentication slot of its peer's address until it
authenticates (within AUTH_TIMEOUT, or it is closed); an address holds at most
MAX_PREAUTH_PER_PEER of them, so that idle or slow connections from elsewhere never lock
out the cluster's own clients.

A refused operation gets an error reply and the connection goes on. A frame that breaks the
framing (wrong version, oversized, a failed authentication) gets an error reply and the
connection is closed. Nothing a client sends can stop the appliance or touch another
client's connection. Cancelling ``serve()`` closes every connection.
"""
import array
import errno
import logging
import os
import select
import socket
import time

import trio

from .. import auth
from ..codec import xor_into
from ..protocol import (
    APPLY_PREFIX,
    DATA_PREFIX,
    FORWARD_PREFIX,
    HEADER_SIZE,
    MAX_CONTROL,
    MAX_DATA,
    MAX_NAME,
    MAX_RECORD,
    OP_NAMES,
    RANGE,
    REGION_DESC,
    REGION_REF,
    REPLY,
    STAT_REPLY,
    U32,
    U64,
    ApplianceError,
    AuthenticationFailed,
    ForwardFailed,
    Op,
    ProtocolViolation,
    Reader,
    Unsupported,
    Writer,
    pack_extents,
    pack_header,
    shm_socket_name,
    status_of,
    unpack_extents,
    unpack_ranges,
    unpack_targets,
)
from ..protocol_io import ConnectionClosed, FrameReader, close_socket, nonblocking, send_buffers
from .peers import PEER_TIMEOUT, Forwarder, fold
from .store import STATUS_SLOTS, check_range

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 5.0  # seconds a new connection has to authenticate
MAX_CONNECTIONS = 1024  # open connections, authenticated or not
#: connections not yet authenticated, per peer address (host; "unix" for the Unix socket)
#: and in all: idle or slow intruders use up their own address's slots, not the clients'
MAX_PREAUTH_PER_PEER = 16
MAX_PREAUTH = 256
FRAMES_PER_CHECKPOINT = 16  # frames served without blocking before yielding to others
CLONE_STEP = 8 << 20  # bytes a clone copies between checkpoints (~0.5 ms)


class Appliance:
    """Serves one region store, record store and intent log to authenticated clients."""

    def __init__(self, *, store, records, intents, secret: bytes, appliance_id: str, metrics,
                 rdma=None, clone_rate: int | None = None):
        self.store = store
        self.clone_rate = clone_rate  # bytes/s a clone is copied at most; None: no limit
        self.forwarder = Forwarder(secret)
        self.rdma = rdma  # a transport.rdma.RdmaResponder when this host has RDMA
        self.records = records
        self.intents = intents
        self.secret = secret
        self.appliance_id = appliance_id
        self.metrics = metrics
        self.port = None
        self._connections = 0
        self._preauth: dict[str, int] = {}  # peer host -> connections not authenticated yet

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
        """Listen on ``host:port`` and its Unix socket; report the tcp port once listening.

        Raises OSError if either address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        tcp = trio.socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await tcp.bind((host, port))
        tcp.listen(128)
        self.port = tcp.getsockname()[1]
        unix = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await unix.bind(shm_socket_name(self.port))
        unix.listen(128)
        try:
            with tcp, unix:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._accept, tcp, nursery, False)
                    nursery.start_soon(self._accept, unix, nursery, True)
                    task_status.started(self.port)
        finally:
            with trio.CancelScope(shield=True):
                await self.forwarder.aclose()

    async def _accept(self, listener, nursery, local: bool) -> None:
        while True:
            try:
                sock, address = await listener.accept()
            except OSError as e:  # e.g. EMFILE: wait a little rather than spin
                log.error("accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            host = "unix" if local else address[0]
            peer = "unix" if local else f"{address[0]}:{address[1]}"
            refusal = self._refusal(host)
            if refusal:
                log.warning("refusing connection from %s: %s", peer, refusal)
                sock.close()
                continue
            if not local:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._preauth[host] = self._preauth.get(host, 0) + 1
            nursery.start_soon(Connection(self, nonblocking(sock), peer, local, host).run)

    def _refusal(self, host: str) -> str | None:
        """Why a new connection from ``host`` must be refused now, or None."""
        if self._connections >= MAX_CONNECTIONS:
            return f"{self._connections} connections open"
        if self._preauth.get(host, 0) >= MAX_PREAUTH_PER_PEER:
            return f"{MAX_PREAUTH_PER_PEER} connections from {host} not authenticated yet"
        if sum(self._preauth.values()) >= MAX_PREAUTH:
            return f"{MAX_PREAUTH} connections not authenticated yet"
        return None

    def authenticated(self, host: str) -> None:
        """A connection from ``host`` authenticated (or ended before): its slot is free."""
        left = self._preauth[host] - 1
        if left:
            self._preauth[host] = left
        else:
            del self._preauth[host]


class Connection:
    """One client connection: handshake, then frames until it closes or breaks framing."""

    def __init__(self, appliance: Appliance, sock, peer: str, local: bool, host: str):
        self.a = appliance
        self.sock = sock
        self.peer = peer
        self.host = host  # whose pre-authentication slot this connection holds until then
        self.local = local
        self.reader = FrameReader(sock)  # waits in poll() while trio idles
        self.ops = 0
        self.authenticated = False
        self.data_ops = {Op.READ: self._read, Op.WRITE: self._write, Op.READV: self._readv,
                         Op.WRITEV: self._writev, Op.FORWARD_WRITE: self._forward_write,
                         Op.APPLY_DELTA: self._apply_delta}
        self.control_ops = {
            Op.ALLOC: self._alloc, Op.FREE: self._free, Op.CLONE: self._clone,
            Op.LIST: self._list, Op.LOOKUP: self._lookup, Op.STAT: self._stat,
            Op.DISCARD: self._discard,
            Op.RECORD_GET: self._record_get, Op.RECORD_PUT: self._record_put,
            Op.RECORD_LIST: self._record_list, Op.RECORD_DELETE: self._record_delete,
            Op.INTENT_BEGIN: self._intent_begin, Op.INTENT_END: self._intent_end,
            Op.INTENT_PENDING: self._intent_pending,
        }
        if local:
            self.control_ops[Op.SHM_TABLE] = self._shm_table
            self.control_ops[Op.SHM_MAP] = self._shm_map
        elif appliance.rdma is not None:
            self.control_ops[Op.RDMA_CONNECT] = self._rdma_connect
            self.control_ops[Op.RDMA_REGION] = self._rdma_region
        self.rdma_resources = []

    async def run(self) -> None:
        self.a._connections += 1
        self.a.metrics.clients.inc()
        started = time.monotonic()
        reason = "closed by client"
        try:
            await self._handshake()
            self.authenticated = True
            self.a.authenticated(self.host)
            while True:
                for _ in range(FRAMES_PER_CHECKPOINT):
                    await self._serve_one()
                await trio.lowlevel.checkpoint()  # let other connections run
        except ConnectionClosed:
            pass
        except ApplianceError as e:
            reason = f"dropped: {e}"
        except OSError as e:
            reason = f"dropped: {e.strerror or e}"
        finally:
            close_socket(self.sock)
            if not self.authenticated:
                self.a.authenticated(self.host)
            for resources in self.rdma_resources:
                self.a.rdma.close(resources)
            self.a._connections -= 1
            self.a.metrics.clients.dec()
            log.info("connection %s (%s) %s after %.1f s and %d ops", self.peer,
                     "authenticated" if self.authenticated else "unauthenticated", reason,
                     time.monotonic() - started, self.ops)

    # -- framing -----------------------------------------------------------------
    async def _reply(self, op: int, request_id: int, payload=b"", fds=()) -> None:
        ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else ()
        await send_buffers(self.sock, [pack_header(len(payload), op | REPLY, request_id),
                                       payload], ancdata)

    async def _reply_error(self, op: int, request_id: int, error: ApplianceError) -> None:
        name = type(error).__name__
        log.warning("%s %s refused for %s: %s", OP_NAMES.get(op, f"op {op}"), name,
                    self.peer, error)
        self.a.metrics.error(name)
        message = str(error).encode()[:4096]
        await send_buffers(self.sock, [pack_header(len(message), op | REPLY, request_id,
                                                   status_of(error)), message])

    async def _handshake(self) -> None:
        nonce = auth.new_nonce()
        hello = Writer().raw(nonce).str(self.a.appliance_id).u64(self.a.port or 0).build()
        await send_buffers(self.sock, [pack_header(len(hello), Op.HELLO, 0), hello])
        with trio.move_on_after(AUTH_TIMEOUT) as scope:
            try:
                length, op, _status, request_id = await self.reader.read_header()
            except ProtocolViolation as e:
                await self._reply_error(Op.AUTH, 0, e)
                raise
            if op != Op.AUTH or length != auth.NONCE_SIZE + auth.MAC_SIZE:
                error = AuthenticationFailed("the first frame must authenticate")
                await self._reply_error(op, request_id, error)
                raise error
            payload = await self.reader.read_bytes(length)
        if scope.cancelled_caught:
            raise AuthenticationFailed(f"no authentication within {AUTH_TIMEOUT:.0f} s")
        client_nonce, mac = payload[:auth.NONCE_SIZE], payload[auth.NONCE_SIZE:]
        if not auth.verify(auth.client_proof(self.a.secret, nonce, client_nonce), mac):
            error = AuthenticationFailed("wrong cluster secret")
            await self._reply_error(Op.AUTH, request_id, error)
            raise error
        await self._reply(Op.AUTH, request_id, auth.appliance_proof(self.a.secret, nonce,
                                                                   client_nonce))

    async def _serve_one(self) -> None:
        try:
            length, op, _status, request_id = await self.reader.read_header()
        except ProtocolViolation as e:
            await self._reply_error(0, 0, e)
            raise
        self.ops += 1
        data_op = self.data_ops.get(op)
        if data_op is not None:
            await data_op(length, request_id)
            return
        if length > MAX_CONTROL:
            error = ProtocolViolation(f"{OP_NAMES.get(op, f'op {op}')} frame of {length} "
                                      f"bytes exceeds the limit {MAX_CONTROL}")
            await self._reply_error(op, request_id, error)
            raise error
        payload = await self.reader.read_bytes(length)
        handler = self.control_ops.get(op)
        try:
            if handler is None:
                raise Unsupported(f"operation {op} is not offered on this connection")
            reader = Reader(payload)
            result = await handler(reader)
            reader.end()
        except ApplianceError as e:
            await self._reply_error(op, request_id, e)
            return
        except OSError as e:  # e.g. the persist dir is full
            await self._reply_error(op, request_id, ApplianceError(f"appliance error: {e}"))
            return
        if isinstance(result, tuple):
            await self._reply(op, request_id, *result)
        else:
            await self._reply(op, request_id, result)
        self.a.metrics.op(OP_NAMES[op])

    async def _refuse_data(self, op: int, request_id: int, error, remaining: int) -> None:
        """Drain the rest of a refused data frame and answer with the error."""
        await self.reader.skip(remaining)
        await self._reply_error(op, request_id, error)

    # -- data --------------------------------------------------------------------
    async def _read(self, length: int, request_id: int) -> None:
        if length != RANGE.size:
            return await self._refuse_data(Op.READ, request_id,
                                           ProtocolViolation("malformed read"), length)
        region_id, key, offset, n = RANGE.unpack(await self.reader.read_bytes(length))
        try:
            if n > MAX_DATA:
                raise ProtocolViolation(f"read of {n} bytes exceeds the limit {MAX_DATA}")
            view = check_range(self.a.store.get(region_id, key), offset, n)
        except ApplianceError as e:
            return await self._reply_error(Op.READ, request_id, e)
        await send_buffers(self.sock, [pack_header(n, Op.READ | REPLY, request_id), view],
                           nbytes=HEADER_SIZE + n)
        self.a.metrics.op("read", n)

    async def _write(self, length: int, request_id: int) -> None:
        if length < DATA_PREFIX.size:
            return await self._refuse_data(Op.WRITE, request_id,
                                           ProtocolViolation("malformed write"), length)
        region_id, key, offset = DATA_PREFIX.unpack(
            await self.reader.read_bytes(DATA_PREFIX.size))
        n = length - DATA_PREFIX.size
        try:
            view = check_range(self.a.store.get(region_id, key), offset, n)
        except ApplianceError as e:
            return await self._refuse_data(Op.WRITE, request_id, e, n)
        await self.reader.read_into(view)
        await send_buffers(self.sock, [pack_header(0, Op.WRITE | REPLY, request_id)],
                           nbytes=HEADER_SIZE)
        self.a.metrics.op("write", n)

    def _check_ranges(self, ranges) -> list[memoryview]:
        total = sum(r[3] for r in ranges)
        if total > MAX_DATA:
            raise ProtocolViolation(f"vectored op of {total} bytes exceeds the limit {MAX_DATA}")
        return [check_range(self.a.store.get(region_id, key), offset, n)
                for region_id, key, offset, n in ranges]

    async def _readv(self, length: int, request_id: int) -> None:
        if length > MAX_CONTROL:
            return await self._refuse_data(Op.READV, request_id,
                                           ProtocolViolation("oversized readv"), length)
        try:
            reader = Reader(await self.reader.read_bytes(length))
            views = self._check_ranges(unpack_ranges(reader))
            reader.end()
        except ApplianceError as e:
            return await self._reply_error(Op.READV, request_id, e)
        total = sum(len(v) for v in views)
        await send_buffers(self.sock, [pack_header(total, Op.READV | REPLY, request_id), *views],
                           nbytes=HEADER_SIZE + total)
        self.a.metrics.op("readv", total)

    async def _writev(self, length: int, request_id: int) -> None:
        consumed = 0
        try:
            if length < U32.size:
                raise ProtocolViolation("malformed writev")
            count = U32.unpack(await self.reader.read_bytes(U32.size))[0]
            consumed = U32.size
            descriptors = U32.size + count * RANGE.size
            if descriptors > min(length, MAX_CONTROL):
                raise ProtocolViolation("malformed writev descriptors")
            reader = Reader(U32.pack(count) + await self.reader.read_bytes(descriptors - 4))
            consumed = descriptors
            ranges = unpack_ranges(reader)
            if sum(r[3] for r in ranges) != length - descriptors:
                raise ProtocolViolation("writev data length differs from its ranges")
            views = self._check_ranges(ranges)
        except ApplianceError as e:
            return await self._refuse_data(Op.WRITEV, request_id, e, length - consumed)
        for view in views:
            await self.reader.read_into(view)
        await send_buffers(self.sock, [pack_header(0, Op.WRITEV | REPLY, request_id)],
                           nbytes=HEADER_SIZE)
        self.a.metrics.op("writev", length - descriptors)

    async def _apply_delta(self, length: int, request_id: int) -> None:
        if length < APPLY_PREFIX.size:
            return await self._refuse_data(Op.APPLY_DELTA, request_id,
                                           ProtocolViolation("malformed apply_delta"), length)
        region_id, key, offset, coefficient = APPLY_PREFIX.unpack(
            await self.reader.read_bytes(APPLY_PREFIX.size))
        n = length - APPLY_PREFIX.size
        try:
            if coefficient > 255:
                raise ProtocolViolation(f"coefficient {coefficient} is not in GF(2^8)")
            view = check_range(self.a.store.get(region_id, key), offset, n)
        except ApplianceError as e:
            return await self._refuse_data(Op.APPLY_DELTA, request_id, e, n)
        if coefficient == 0:
            await self.reader.read_into(view)
        else:
            delta = bytearray(n)
            await self.reader.read_into(memoryview(delta))
            fold(view, delta, coefficient)
        await send_buffers(self.sock, [pack_header(0, Op.APPLY_DELTA | REPLY, request_id)],
                           nbytes=HEADER_SIZE)
        self.a.metrics.op("apply_delta", n)

    async def _forward_write(self, length: int, request_id: int) -> None:
        consumed = 0
        try:
            if length < FORWARD_PREFIX.size:
                raise ProtocolViolation("malformed forward_write")
            region_id, key, offset, targets_size = FORWARD_PREFIX.unpack(
                await self.reader.read_bytes(FORWARD_PREFIX.size))
            consumed = FORWARD_PREFIX.size
            if targets_size > min(MAX_CONTROL, length - consumed):
                raise ProtocolViolation("malformed forward_write targets")
            reader = Reader(await self.reader.read_bytes(targets_size))
            consumed += targets_size
            targets = unpack_targets(reader)
            reader.end()
            view = check_range(self.a.store.get(region_id, key), offset, length - consumed)
        except ApplianceError as e:
            return await self._refuse_data(Op.FORWARD_WRITE, request_id, e, length - consumed)
        old = bytearray(view) if any(t[3] for t in targets) else None
        await self.reader.read_into(view)
        # the forwards go out only while the client still waits for them (see peers.py): a
        # request read after its client closed the connection (this appliance was stopped
        # with the request in its socket buffer; the client gave up on it and may have
        # rebuilt the targets since) is written here but forwarded nowhere
        if self._client_gone():
            log.warning("forward_write from %s read after the client left: not forwarded",
                        self.peer)
            return
        deadline = trio.current_time() + PEER_TIMEOUT
        new = bytes(view)  # later writes to the region must not leak into the forwards
        if old is not None:
            xor_into(old, [new], accumulate=True)  # old ^ new: the delta
        failures = await self.a.forwarder.forward(targets, offset, new, old, deadline)
        self.a.metrics.op("forward_write", len(new))
        if failures:
            return await self._reply_error(Op.FORWARD_WRITE, request_id, ForwardFailed(
                "written here, not forwarded to " + "; ".join(failures)))
        await send_buffers(self.sock, [pack_header(0, Op.FORWARD_WRITE | REPLY, request_id)],
                           nbytes=HEADER_SIZE)

    # -- regions -------------------------------------------------------------------
    @staticmethod
    def _describe(region) -> bytes:
        return REGION_DESC.pack(region.region_id, region.key, region.size)

    async def _alloc(self, r: Reader):
        size, owner = r.u64(), r.str()
        region = self.a.store.alloc(size, owner)
        log.info("allocated region %d of %d bytes for %s (%s)", region.region_id, size, owner,
                 self.peer)
        return self._describe(region)

    async def _free(self, r: Reader):
        region_id, key = REGION_REF.unpack(r.raw(REGION_REF.size))
        self.a.store.get(region_id, key)  # check the key before anything changes
        if self.a.rdma is not None:
            self.a.rdma.forget(region_id)  # the hardware refuses the old rkey from now on
        region = self.a.store.free(region_id, key)
        log.info("freed region %d of %d bytes (%s)", region.region_id, region.size, self.peer)
        return b""

    async def _clone(self, r: Reader):
        """Copy a region into a new one, CLONE_STEP bytes at a time with a checkpoint between
        steps, so that a large clone does not stall every other client of this appliance
        (and no faster than ``clone_rate`` bytes/s if the appliance has one; never slower
        than CLONE_RATE_MIN, which the client's wait for the reply counts on). Only the
        source's data is copied: its holes (never written) read as zeros and stay holes in
        the copy, which then costs neither the time nor the memory.

        A source freed meanwhile (or a cancelled clone) frees the copy and fails the clone
        with NoSuchRegion (or the cancellation); the source is never modified. A client
        that closed the connection (it timed out, or died) can never learn the copy's key:
        the copy is freed and the connection ends (ConnectionClosed), checked at every
        step and once more before the reply.
        """
        region_id, key = REGION_REF.unpack(r.raw(REGION_REF.size))
        source = self.a.store.get(region_id, key)
        region = self.a.store.alloc(source.size, source.owner)
        began = trio.current_time()
        try:
            for start in range(0, source.size, CLONE_STEP):
                if self.a.clone_rate:  # no faster than the appliance's --clone-rate
                    await trio.sleep_until(began + start / self.a.clone_rate)
                else:
                    await trio.lowlevel.checkpoint()
                if self._client_gone():
                    raise ConnectionClosed(f"client gone while cloning region {region_id}")
                source = self.a.store.get(region_id, key)  # no await until the copy is done
                end = min(start + CLONE_STEP, source.size)
                for lo, hi in _data_ranges(source.fd, start, end):  # holes stay holes
                    region.view[lo:hi] = source.view[lo:hi]
            if self._client_gone():
                raise ConnectionClosed(f"client gone while cloning region {region_id}")
        except BaseException:
            self.a.store.free(region.region_id, region.key)
            raise
        log.info("cloned region %d into region %d (%d bytes, %s)", region_id,
                 region.region_id, region.size, self.peer)
        return self._describe(region)

    async def _discard(self, r: Reader):
        """The range reads zeros from now on; the whole pages inside it go back to the host
        (``RegionStore.discard``)."""
        region_id, key, offset, n = RANGE.unpack(r.raw(RANGE.size))
        region = self.a.store.get(region_id, key)
        check_range(region, offset, n)
        self.a.store.discard(region, offset, n)
        return b""

    def _client_gone(self) -> bool:
        """Whether the client closed its end or the connection broke, seen without reading
        (requests it pipelined may still wait unread): POLLRDHUP, POLLHUP or POLLERR."""
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLRDHUP)
        return bool(poller.poll(0))

    async def _list(self, r: Reader):
        owner = r.str() if r.u32() else None
        regions = self.a.store.list(owner)
        w = Writer().u32(len(regions))
        for region in regions:
            w.u64(region.region_id).u64(region.size).str(region.owner)
        return w.build()

    async def _lookup(self, r: Reader):
        region = self.a.store.get(*REGION_REF.unpack(r.raw(REGION_REF.size)))
        return self._describe(region)

    async def _stat(self, r: Reader):
        s = self.a.store
        return STAT_REPLY.pack(s.capacity, s.used, len(s)) + Writer().str(
            self.a.appliance_id).build()

    # -- records and intents -------------------------------------------------------
    async def _record_get(self, r: Reader):
        found = self.a.records.get(r.str(), r.str())
        if found is None:
            return U32.pack(0)
        return Writer().u32(1).u64(found[0]).bytes(found[1]).build()

    async def _record_put(self, r: Reader):
        owner, name, value, expected = r.str(), r.str(), r.bytes(MAX_RECORD), r.u64()
        return U64.pack(self.a.records.put(owner, name, value, expected))

    async def _record_list(self, r: Reader):
        names = self.a.records.list(r.str())
        w = Writer().u32(len(names))
        for name in names:
            w.str(name)
        return w.build()

    async def _record_delete(self, r: Reader):
        self.a.records.delete(r.str(), r.str())
        return b""

    async def _intent_begin(self, r: Reader):
        owner, set_id, intent_id = r.str(), r.str(MAX_NAME), r.u64()
        self.a.intents.begin(owner, set_id, intent_id, unpack_extents(r))
        return b""

    async def _intent_end(self, r: Reader):
        owner, set_id, count = r.str(), r.str(), r.u32()
        self.a.intents.end(owner, set_id, [r.u64() for _ in range(count)])
        return b""

    async def _intent_pending(self, r: Reader):
        pending = self.a.intents.pending(r.str(), r.str())
        w = Writer().u32(len(pending))
        for intent_id, extents in pending:
            w.u64(intent_id).raw(pack_extents(extents))
        return w.build()

    # -- shm (Unix socket only) ----------------------------------------------------
    async def _shm_table(self, r: Reader):
        return U64.pack(STATUS_SLOTS), [self.a.store.status_fd]

    async def _shm_map(self, r: Reader):
        region = self.a.store.get(*REGION_REF.unpack(r.raw(REGION_REF.size)))
        return U64.pack(region.size) + U64.pack(region.slot), [region.fd]

    # -- rdma (tcp only, on hosts with an RDMA device) -------------------------------
    async def _rdma_connect(self, r: Reader):
        resources, reply = self.a.rdma.accept(r)
        self.rdma_resources.append(resources)
        return reply

    async def _rdma_region(self, r: Reader):
        return self.a.rdma.region(self.a.store.get(*REGION_REF.unpack(r.raw(REGION_REF.size))))


def _data_ranges(fd: int, start: int, end: int):
    """The (lo, hi) parts of ``[start, end)`` of file ``fd`` that hold data, not holes
    (``SEEK_DATA``/``SEEK_HOLE``; a filesystem without holes reports all of it as data)."""
    pos = start
    while pos < end:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only holes from here to the end of the file
                return
            raise
        if pos >= end:
            return
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        yield pos, hole
        pos = hole
