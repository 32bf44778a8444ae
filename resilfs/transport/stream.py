"""A pipelined protocol client over one connected socket: the tcp transport, and the control
channel of the shm transport.

Requests carry ids; any number are in flight at once. A call queues its request in the
connection's outbox; the call that is sending sends it along with its own (large requests
leave back to back, see ``_send_outbox``). There is no background task: whoever
waits for a reply reads the socket ("the waiter reads"), receiving read data straight into
the callers' buffers and handing every other reply to its waiter, until its own reply is in;
then the next waiter takes over. A lone request thus costs one send and one receive with no
task switch. The reading waiter fails the connection when requests are pending and the
appliance sent nothing for ``timeout`` seconds, plus the allowance of the oldest pending
request, the one the appliance is serving (it serves a connection's requests in order): a
CLONE's grows with its region, ``size / CLONE_RATE_MIN``. From then on (and after EOF, a
socket error or a framing error) every call raises ``ApplianceUnavailable`` at once.

Cancelling a call abandons it: its reply is discarded when it comes. A cancelled call that
was receiving a frame finishes receiving that frame first (shielded, still bounded by the
timeout), so the framing survives; a read cancelled while its own reply is arriving may
still have written into the caller's buffer. A call cancelled while its request waits in
the outbox takes it out (never sent); one whose request is being sent (by itself or by
another call) returns once it is in the socket, so frames are never cut short and a
caller's buffer is never sent after its call ended.
"""
import logging
import os
import socket
import time
from collections.abc import Sequence

import trio

from .. import auth
from ..protocol import (
    APPLY_PREFIX,
    CLONE_RATE_MIN,
    DATA_PREFIX,
    FORWARD_PREFIX,
    HEADER_SIZE,
    MAX_CONTROL,
    MAX_DATA,
    MAX_NAME,
    MAX_RANGES,
    MAX_RECORD,
    RANGE,
    REGION_DESC,
    REGION_REF,
    REPLY,
    STAT_REPLY,
    U32,
    Op,
    Reader,
    Status,
    Writer,
    error_for,
    pack_extents,
    pack_header,
    pack_targets,
    unpack_extents,
)
from ..protocol_io import ConnectionClosed, FrameReader, close_socket, send_buffers
from .base import (
    ApplianceClient,
    ApplianceError,
    ApplianceStat,
    ApplianceUnavailable,
    AuthenticationFailed,
    ForwardTarget,
    ProtocolViolation,
    RegionHandle,
    RegionInfo,
)
from .ranges import byte_view, check_range

log = logging.getLogger(__name__)

PEEK_NOWAIT = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
FD_OPS = (Op.SHM_TABLE | REPLY, Op.SHM_MAP | REPLY)
GATHER_THRESHOLD = 256 * 1024  # request bytes from which a send first gathers the others


class _Pending:
    __slots__ = ("event", "status", "payload", "dest", "dest_len", "start", "allowance", "fd",
                 "waiting")

    def __init__(self, dest, dest_len, start, allowance=0.0):
        self.event = None  # a trio.Event while parked: set when the reply is in, or to hand
        # over the reading
        self.status = None  # the reply's status; stays None while waiting or if the link died
        self.payload = b""
        self.dest = dest
        self.dest_len = dest_len
        self.start = start  # time.perf_counter() when the call began
        self.allowance = allowance  # seconds the appliance may take beyond the timeout
        self.fd = None
        self.waiting = False  # parked on ``event`` (not sending, not reading)


def _batches(ranges, length_of):
    """Split ranges into groups of at most MAX_RANGES ranges and MAX_DATA bytes."""
    batch, total = [], 0
    for r in ranges:
        n = length_of(r)
        if batch and (len(batch) == MAX_RANGES or total + n > MAX_DATA):
            yield batch
            batch, total = [], 0
        batch.append(r)
        total += n
    if batch:
        yield batch


class StreamClient(ApplianceClient):
    """An authenticated, pipelined connection to one appliance over a trio socket.

    ``idle_wait``: when a call must wait for its reply and no other trio task is runnable,
    it waits in a blocking poll() on the socket and trio's epoll fd, bounded by the timeout
    and trio's next deadline, rather than parking in trio's scheduler, whose trip costs
    several times a loopback round trip here (``protocol_io.IdleWait``). Anything else for
    this trio loop (I/O, a deadline, a signal) ends that wait and the call parks as before.
    """

    idle_wait = True

    def __init__(self, address: str, sock, timeout: float, *, unix: bool = False):
        self.address = address
        self.appliance_id = ""
        self.timeout = timeout
        self._sock = sock
        self._fds: list[int] | None = [] if unix else None
        self._reader = FrameReader(sock, fds=self._fds, timeout=timeout,
                                   idle_wait=self.idle_wait)
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._sending = False  # a call is sending the outbox
        self._outbox: list = []  # buffers of requests not sent yet, in order
        self._outbox_bytes = 0
        self._batch: list = []  # the outbox buffers being sent now
        self._batch_sent = trio.Event()  # set once that batch is in the socket (or failed)
        self._reading = False  # a waiter is reading replies
        self._dead: str | None = None
        self._last_progress = 0.0  # time.perf_counter() of the last frame received

    # -- connection setup ----------------------------------------------------------
    async def _handshake(self, secret: bytes) -> None:
        """Authenticate both ways.

        Raises AuthenticationFailed, ProtocolViolation, or ApplianceUnavailable (no answer
        within the timeout, connection lost); the socket is closed on failure.
        """
        try:
            with trio.fail_after(self.timeout):
                length, op, _status, _rid = await self._reader.read_header()
                if op != Op.HELLO or length > MAX_CONTROL:
                    raise ProtocolViolation(f"{self.address} did not greet with a HELLO frame")
                hello = Reader(await self._reader.read_bytes(length))
                nonce = hello.raw(auth.NONCE_SIZE)
                self.appliance_id = hello.str()
                self.appliance_port = hello.u64()
                client_nonce = auth.new_nonce()
                proof = client_nonce + auth.client_proof(secret, nonce, client_nonce)
                await send_buffers(self._sock, [pack_header(len(proof), Op.AUTH, 1), proof])
                length, op, status, _rid = await self._reader.read_header()
                if length > MAX_CONTROL:
                    raise ProtocolViolation("oversized authentication reply")
                payload = await self._reader.read_bytes(length)
                if status:
                    raise error_for(status, payload.decode(errors="replace"))
                if not auth.verify(auth.appliance_proof(secret, nonce, client_nonce), payload):
                    raise AuthenticationFailed(
                        f"{self.address} does not hold the cluster secret")
        except trio.TooSlowError:
            close_socket(self._sock)
            raise ApplianceUnavailable(
                f"appliance {self.address} did not answer within {self.timeout} s") from None
        except (ConnectionClosed, OSError) as e:
            close_socket(self._sock)
            raise ApplianceUnavailable(f"appliance {self.address}: {e}") from None
        except BaseException:
            close_socket(self._sock)
            raise
        self._last_progress = time.perf_counter()

    async def _read_replies(self, mine: _Pending) -> None:
        """Read frames, completing every pending call, until ``mine`` is complete.

        Cancellation is honoured only between frames; on timeout or a broken connection the
        connection is failed (which completes ``mine`` too).
        """
        try:
            while mine.status is None and self._dead is None:
                if not self._reader.buffered() and not self._reader.fill_nowait():
                    oldest = next(iter(self._pending.values()), mine)
                    deadline = (max(oldest.start, self._last_progress) + self.timeout
                                + oldest.allowance)
                    left = deadline - time.perf_counter()
                    # trio idle: block in poll() right here (no scheduler trip, no timer
                    # shorter than the timeout); else, or if that was interrupted, park
                    if not (self._reader.wait_idle(left) and self._reader.fill_nowait()):
                        left = deadline - time.perf_counter()
                        with trio.move_on_after(max(left, 0.0)) as scope:
                            await self._reader.wait_data()
                        if scope.cancelled_caught:
                            self._fail(f"no answer within {self.timeout} s")
                            return
                frame = self._reader.frame_now()
                if frame is not None:
                    self._complete(*frame)
                else:
                    with trio.CancelScope(shield=True):
                        await self._read_frame()
                self._last_progress = time.perf_counter()
        except (ConnectionClosed, trio.ClosedResourceError):
            self._fail("connection closed")
        except trio.TooSlowError:
            self._fail(f"no answer within {self.timeout} s")
        except (OSError, ApplianceError) as e:
            self._fail(f"connection lost: {e}")

    def _complete(self, length: int, op: int, status: int, request_id: int, payload) -> None:
        """``_read_frame`` for a frame that was entirely buffered (``FrameReader.frame_now``):
        no awaits, no coroutines; ``payload`` is copied out before anything else is read."""
        pending = self._claim(length, op, status, request_id)
        if pending is None:
            return
        if status == Status.OK and pending.dest is not None:
            pos = 0
            for view in pending.dest:
                end = pos + len(view)
                view[:] = payload[pos:end]
                pos = end
        else:
            pending.payload = bytes(payload)
        self._finish(pending, op, status)

    async def _read_frame(self) -> None:
        length, op, status, request_id = await self._reader.read_header()
        pending = self._claim(length, op, status, request_id)
        if pending is None:
            await self._reader.skip(length)
            return
        if status == Status.OK and pending.dest is not None:
            for view in pending.dest:
                await self._reader.read_into(view)
        else:
            pending.payload = await self._reader.read_bytes(length)
        self._finish(pending, op, status)

    def _claim(self, length: int, op: int, status: int, request_id: int) -> _Pending | None:
        """The call a reply frame answers, with the frame's length checked; None if that call
        was abandoned (its passed file descriptor, if any, is closed; the caller skips the
        payload). ProtocolViolation for a length the call cannot take."""
        pending = self._pending.pop(request_id, None)
        if pending is None:  # abandoned by a cancelled caller
            if op in FD_OPS and status == Status.OK and self._fds:
                os.close(self._fds.pop(0))
            return None
        if status == Status.OK and pending.dest is not None:
            if length != pending.dest_len:
                raise ProtocolViolation(f"read reply of {length} bytes, "
                                        f"expected {pending.dest_len}")
        elif length > MAX_CONTROL:
            raise ProtocolViolation(f"oversized reply of {length} bytes")
        return pending

    def _finish(self, pending: _Pending, op: int, status: int) -> None:
        """Hand a call its reply's status (and passed file descriptor) and wake it."""
        if op in FD_OPS and status == Status.OK and pending.dest is None:
            if not self._fds:
                raise ProtocolViolation("reply without its file descriptor")
            pending.fd = self._fds.pop(0)
        pending.status = status
        if pending.event is not None:
            pending.event.set()

    def _hand_over(self) -> None:
        """Wake one waiting call so that it takes over reading."""
        for pending in self._pending.values():
            if pending.waiting:
                pending.event.set()
                return

    def _poll_closed(self) -> None:
        """Notice, without blocking, that an idle connection was closed by the appliance."""
        if self._dead is not None or self._reading or self._reader.buffered():
            return
        try:
            if self._sock.recv(1, PEEK_NOWAIT):
                return
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(f"connection lost: {e}")
            return
        self._fail("connection closed")

    def _fail(self, reason: str) -> None:
        """Mark the connection dead: every pending and later call raises ApplianceUnavailable."""
        if self._dead is None:
            self._dead = reason
            log.warning("appliance %s unavailable: %s", self.address, reason)
        # requests sent and not answered are given up: reset the connection so that the
        # kernel does not deliver them later (after a partition heals, the appliance would
        # apply a write its caller took as failed and has since rewritten or rebuilt)
        abort = bool(self._pending)
        for pending in self._pending.values():
            if pending.event is not None:
                pending.event.set()
        self._pending.clear()
        self._outbox, self._outbox_bytes, self._batch = [], 0, []
        close_socket(self._sock, abort=abort)
        for fd in self._fds or ():
            os.close(fd)
        if self._fds:
            self._fds.clear()

    def _unavailable(self) -> ApplianceUnavailable:
        return ApplianceUnavailable(f"appliance {self.address} unavailable: {self._dead}")

    async def aclose(self) -> None:
        """Close the connection; calls in flight raise ApplianceUnavailable."""
        if self._dead is None:
            self._dead = "closed by this client"
            self._fail(self._dead)
        await trio.lowlevel.checkpoint()

    # -- requests ------------------------------------------------------------------
    async def _call(self, op: int, parts: Sequence, dest=None, dest_len: int = 0,
                    allowance: float = 0.0) -> _Pending:
        """Send one request and wait for its reply; raise the error it carries.
        ``allowance``: seconds the appliance may take for it beyond the timeout."""
        if self._dead is not None:
            raise self._unavailable()
        request_id = self._next_id
        self._next_id += 1
        pending = _Pending(dest, dest_len, time.perf_counter(), allowance)
        self._pending[request_id] = pending
        length = sum(map(len, parts))
        header = pack_header(length, op, request_id)
        self._outbox.append(header)
        self._outbox.extend(parts)
        self._outbox_bytes += HEADER_SIZE + length
        try:
            if not self._sending:  # else the sending call sends this request too
                await self._send_outbox(gather=length >= GATHER_THRESHOLD)
            while pending.status is None and self._dead is None:
                if not self._reading:
                    self._reading = True
                    try:
                        await self._read_replies(pending)
                    finally:
                        self._reading = False
                        self._hand_over()
                else:
                    pending.event = trio.Event()
                    pending.waiting = True
                    try:
                        await pending.event.wait()
                    except BaseException:
                        # cancelled: it may have been handed the reading just now; pass it
                        # on, or the other waiters would wait for a reader forever
                        pending.waiting = False
                        if not self._reading:
                            self._hand_over()
                        raise
                    finally:
                        pending.waiting = False
        except BaseException:
            if pending.status is None and self._dead is None:
                await self._withdraw(header, len(parts), HEADER_SIZE + length)
            raise
        finally:
            self._pending.pop(request_id, None)
        if pending.status is None:
            raise self._unavailable()
        if pending.status != Status.OK:
            raise error_for(pending.status, pending.payload.decode(errors="replace"))
        return pending

    async def _send_outbox(self, gather: bool) -> None:
        """Send every queued request, including those queued while this one sends.

        ``gather``: first let every other runnable task queue its request (one trip through
        trio's scheduler, worth it for large requests only), so that large requests leave
        back to back: the appliance is still receiving the previous one when the next one
        starts, which makes the send cheaper (measured: see protocol_io's docstring).
        Shielded from cancellation, since the outbox holds other calls' requests too and a
        frame cut short would break the framing: a cancelled caller returns once what it is
        sending is in the socket (or the connection failed). Raises ApplianceUnavailable
        when the connection is lost or the appliance takes no byte for ``timeout`` seconds.
        """
        self._sending = True
        try:
            with trio.CancelScope(shield=True):  # others' requests too: see the docstring
                if gather:
                    await trio.lowlevel.checkpoint()
                while self._outbox and self._dead is None:
                    buffers, nbytes = self._outbox, self._outbox_bytes
                    self._outbox, self._outbox_bytes = [], 0
                    self._batch, self._batch_sent = buffers, trio.Event()
                    await send_buffers(self._sock, buffers, timeout=self.timeout,
                                       nbytes=nbytes)
                    self._batch = []
                    self._batch_sent.set()
        except trio.TooSlowError:
            self._fail(f"appliance took no data for {self.timeout} s")
            raise self._unavailable() from None
        except (OSError, trio.ClosedResourceError) as e:
            self._fail(f"connection lost: {e}")
            raise self._unavailable() from None
        finally:
            self._sending = False
            self._batch_sent.set()  # sent, or the connection failed

    async def _withdraw(self, header: bytes, parts: int, nbytes: int) -> None:
        """A cancelled call's request (``header`` and its ``parts`` buffers), so that the
        caller's buffers are never sent after its call ended: taken out of the outbox if it
        is still there; if it is in the batch being sent, waited for (shielded) until the
        batch is in the socket or the connection failed (bounded by the send timeout)."""
        for i, buffer in enumerate(self._outbox):
            if buffer is header:
                del self._outbox[i:i + 1 + parts]
                self._outbox_bytes -= nbytes
                return
        if any(buffer is header for buffer in self._batch):
            with trio.CancelScope(shield=True):
                await self._batch_sent.wait()

    async def _control(self, op: int, payload: bytes = b"", allowance: float = 0.0) -> Reader:
        return Reader((await self._call(op, [payload], allowance=allowance)).payload)

    def _handle(self, payload) -> RegionHandle:
        region_id, key, size = REGION_DESC.unpack(payload)
        return RegionHandle(self.address, region_id, size, key)

    # -- regions -------------------------------------------------------------------
    async def alloc(self, size: int, owner: str) -> RegionHandle:
        r = await self._control(Op.ALLOC, Writer().u64(size).str(owner).build())
        return self._handle(r.raw(REGION_DESC.size))

    async def free(self, region: RegionHandle) -> None:
        await self._control(Op.FREE, REGION_REF.pack(region.region_id, region.key))

    async def discard(self, region: RegionHandle, offset: int, length: int) -> None:
        check_range(region, offset, length)
        await self._control(Op.DISCARD, RANGE.pack(region.region_id, region.key, offset,
                                                   length))

    async def clone(self, region: RegionHandle) -> RegionHandle:
        r = await self._control(Op.CLONE, REGION_REF.pack(region.region_id, region.key),
                                region.size / CLONE_RATE_MIN)  # copied at least that fast
        return self._handle(r.raw(REGION_DESC.size))

    async def regions(self, owner: str | None = None) -> list[RegionInfo]:
        w = Writer().u32(0) if owner is None else Writer().u32(1).str(owner)
        r = await self._control(Op.LIST, w.build())
        return [RegionInfo(r.u64(), r.u64(), r.str()) for _ in range(r.u32())]

    async def lookup(self, region_id: int, key: int) -> RegionHandle:
        r = await self._control(Op.LOOKUP, REGION_REF.pack(region_id, key))
        return self._handle(r.raw(REGION_DESC.size))

    async def stat(self) -> ApplianceStat:
        r = await self._control(Op.STAT)
        capacity, used, count = STAT_REPLY.unpack(r.raw(STAT_REPLY.size))
        return ApplianceStat(capacity, used, count, r.str())

    # -- data ----------------------------------------------------------------------
    async def read_into(self, region: RegionHandle, offset: int, buffer) -> None:
        view = byte_view(buffer, writable=True)
        check_range(region, offset, len(view))
        for start in range(0, max(len(view), 1), MAX_DATA):
            piece = view[start:start + MAX_DATA]
            await self._call(Op.READ, [RANGE.pack(region.region_id, region.key,
                                                  offset + start, len(piece))],
                             dest=[piece], dest_len=len(piece))

    async def write(self, region: RegionHandle, offset: int, data) -> None:
        view = byte_view(data)
        check_range(region, offset, len(view))
        for start in range(0, max(len(view), 1), MAX_DATA):
            piece = view[start:start + MAX_DATA]
            await self._call(Op.WRITE, [DATA_PREFIX.pack(region.region_id, region.key,
                                                         offset + start), piece])

    @staticmethod
    def _vector(ranges, writable: bool):
        out = []
        for region, offset, buffer in ranges:
            view = byte_view(buffer, writable)
            check_range(region, offset, len(view))
            if len(view) > MAX_DATA:
                for start in range(0, len(view), MAX_DATA):
                    out.append((region, offset + start, view[start:start + MAX_DATA]))
            else:
                out.append((region, offset, view))
        return out

    @staticmethod
    def _descriptors(batch) -> bytes:
        return U32.pack(len(batch)) + b"".join(
            RANGE.pack(region.region_id, region.key, offset, len(view))
            for region, offset, view in batch)

    async def readv(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        for batch in _batches(self._vector(ranges, True), lambda r: len(r[2])):
            views = [view for _, _, view in batch]
            await self._call(Op.READV, [self._descriptors(batch)], dest=views,
                             dest_len=sum(len(v) for v in views))

    async def writev(self, ranges: Sequence[tuple[RegionHandle, int, object]]) -> None:
        """Vectored write; one request per MAX_DATA bytes, so all-or-error per request."""
        for batch in _batches(self._vector(ranges, False), lambda r: len(r[2])):
            await self._call(Op.WRITEV, [self._descriptors(batch),
                                         *(view for _, _, view in batch)])

    # -- forwarded writes ------------------------------------------------------------
    async def forward_write(self, region: RegionHandle, offset: int, data,
                            targets: Sequence[ForwardTarget]) -> None:
        view = byte_view(data)
        check_range(region, offset, len(view))
        for target in targets:
            if not 0 <= target.coefficient <= 255:
                raise ValueError(f"coefficient {target.coefficient} is not in GF(2^8)")
            check_range(target.region, offset, len(view))
        described = pack_targets(targets)
        for start in range(0, max(len(view), 1), MAX_DATA):
            piece = view[start:start + MAX_DATA]
            await self._call(Op.FORWARD_WRITE, [FORWARD_PREFIX.pack(
                region.region_id, region.key, offset + start, len(described)), described, piece])

    async def apply_delta(self, region: RegionHandle, offset: int, delta,
                          coefficient: int) -> None:
        view = byte_view(delta)
        check_range(region, offset, len(view))
        if not 0 <= coefficient <= 255:
            raise ValueError(f"coefficient {coefficient} is not in GF(2^8)")
        for start in range(0, max(len(view), 1), MAX_DATA):
            piece = view[start:start + MAX_DATA]
            await self._call(Op.APPLY_DELTA, [APPLY_PREFIX.pack(
                region.region_id, region.key, offset + start, coefficient), piece])

    # -- records -------------------------------------------------------------------
    async def record_get(self, owner: str, name: str) -> tuple[int, bytes] | None:
        r = await self._control(Op.RECORD_GET, Writer().str(owner).str(name).build())
        if not r.u32():
            return None
        generation = r.u64()
        return generation, r.bytes(MAX_RECORD)

    async def record_put(self, owner: str, name: str, value: bytes,
                         expected_generation: int) -> int:
        payload = Writer().str(owner).str(name).bytes(value).u64(expected_generation).build()
        return (await self._control(Op.RECORD_PUT, payload)).u64()

    async def record_list(self, owner: str) -> list[str]:
        r = await self._control(Op.RECORD_LIST, Writer().str(owner).build())
        return [r.str(MAX_NAME) for _ in range(r.u32())]

    async def record_delete(self, owner: str, name: str) -> None:
        await self._control(Op.RECORD_DELETE, Writer().str(owner).str(name).build())

    # -- intents -------------------------------------------------------------------
    async def intent_begin(self, owner: str, set_id: str, intent_id: int,
                           extents: Sequence[tuple[int, int]]) -> None:
        payload = Writer().str(owner).str(set_id).u64(intent_id).raw(
            pack_extents(extents)).build()
        await self._control(Op.INTENT_BEGIN, payload)

    async def intent_end(self, owner: str, set_id: str, intent_ids: Sequence[int]) -> None:
        w = Writer().str(owner).str(set_id).u32(len(intent_ids))
        for intent_id in intent_ids:
            w.u64(intent_id)
        await self._control(Op.INTENT_END, w.build())

    async def intent_pending(self, owner: str,
                             set_id: str) -> list[tuple[int, list[tuple[int, int]]]]:
        r = await self._control(Op.INTENT_PENDING, Writer().str(owner).str(set_id).build())
        return [(r.u64(), unpack_extents(r)) for _ in range(r.u32())]
