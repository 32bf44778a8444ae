"""Frame I/O on non-blocking sockets under trio, shared by the appliance and the clients.

``FrameReader`` reads headers and small payloads through one reusable buffer and receives
large payloads straight into their destination (a region's mapping on the appliance, the
caller's buffer on a client), so bulk data is copied once by the kernel and never by Python.
``send_buffers`` sends a list of buffers with ``sendmsg`` and handles partial sends.

Both call the (non-blocking) stdlib socket directly and park in ``trio.lowlevel.wait_*``
only when it would block: a call that does not block is not a checkpoint, which saves a
trip through trio's scheduler per frame (MEASURED.md: ~40 us per round trip). Loops that can
run without ever blocking must checkpoint themselves now and then.

On EOF ``FrameReader`` raises ``ConnectionClosed``; socket errors propagate as ``OSError``;
a socket closed by another task (``close_socket``) raises ``trio.ClosedResourceError``.
Cancellation in the middle of a frame leaves the stream unusable: callers close it.
"""
import select
import socket

import trio

from .protocol import HEADER_SIZE, unpack_header

IOV_MAX = 1024
BUFFER_SIZE = 256 * 1024
DIRECT_THRESHOLD = 64 * 1024  # payload pieces at least this large bypass the buffer
READ_AHEAD = 16 * 1024  # bytes a buffered read asks for beyond what it needs


class ConnectionClosed(Exception):
    """The peer closed the connection (possibly in the middle of a frame)."""


def nonblocking(trio_socket) -> socket.socket:
    """The stdlib socket behind a (connected or accepted) trio socket, set non-blocking."""
    sock = socket.socket(trio_socket.family, trio_socket.type, fileno=trio_socket.detach())
    sock.setblocking(False)
    return sock


def close_socket(sock: socket.socket) -> None:
    """Close ``sock``, waking any task parked on it with ClosedResourceError."""
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()


class FrameReader:
    """Reads frames from a non-blocking socket; read-ahead bytes stay in one reusable buffer."""

    def __init__(self, sock, size: int = BUFFER_SIZE, fds: list | None = None,
                 timeout: float | None = None, block: float = 0.0):
        self._sock = sock
        self._timeout = timeout  # seconds without a byte before trio.TooSlowError
        self._block = block  # see wait_briefly()
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # On Unix sockets, file descriptors passed with SCM_RIGHTS are appended here.
        self._fds = fds

    async def _fill(self, need: int) -> None:
        """Make at least ``need`` bytes available in the buffer."""
        if self._start + need > len(self._buf):
            n = self._end - self._start
            self._view[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        while self._end - self._start < need:
            # read ahead a little, not a whole bulk payload that could go straight to its
            # destination (read_into) instead of being copied out of the buffer
            limit = self._end + max(need - (self._end - self._start), READ_AHEAD)
            got = await self._recv_into(self._view[self._end:limit])
            if not got:
                raise ConnectionClosed("connection closed by peer")
            self._end += got

    def _recv_now(self, view) -> int:
        """One non-blocking receive (BlockingIOError if nothing is there)."""
        if self._fds is None:
            return self._sock.recv_into(view)
        got, ancdata, _flags, _addr = self._sock.recvmsg_into([view], socket.CMSG_SPACE(4 * 4))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                self._fds.extend(int.from_bytes(data[i:i + 4], "little")
                                 for i in range(0, usable, 4))
        return got

    def wait_briefly(self) -> bool:
        """Wait up to ``block`` seconds for data in a blocking select(), if no trio task is
        runnable: parking in trio's scheduler and being woken costs tens of microseconds
        here (MEASURED.md), which is per 64 KiB chunk of a bulk transfer and most of a small
        request's round trip. Other I/O of this trio loop is noticed at most that much later.
        True if the socket is readable.
        """
        if not self._block or trio.lowlevel.current_statistics().tasks_runnable:
            return False
        return bool(select.select([self._sock], [], [], self._block)[0])

    async def _recv_into(self, view, wait_limit: bool = True, bulk: bool = False) -> int:
        while True:
            try:
                return self._recv_now(view)
            except BlockingIOError:
                if bulk and self.wait_briefly():  # the rest of a payload is on its way
                    continue
                await _wait(trio.lowlevel.wait_readable, self._sock,
                            self._timeout if wait_limit else None)

    def fill_nowait(self) -> bool:
        """Buffer whatever has arrived, without blocking; True if anything is buffered."""
        if self._start == self._end:
            self._start = self._end = 0
        if self._end < len(self._buf):
            try:
                got = self._recv_now(self._view[self._end:self._end + READ_AHEAD])
            except BlockingIOError:
                return self._end > self._start
            if not got:
                raise ConnectionClosed("connection closed by peer")
            self._end += got
        return self._end > self._start

    def frame_buffered(self) -> bool:
        """Whether the next frame is entirely in the buffer (reading it will not block)."""
        n = self._end - self._start
        if n < HEADER_SIZE:
            return False
        return n >= HEADER_SIZE + int.from_bytes(self._view[self._start:self._start + 4],
                                                 "little")

    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._end - self._start

    async def wait_data(self) -> None:
        """Return once at least one byte is buffered; parks with no timeout of its own."""
        if self._start == self._end:
            self._start = self._end = 0
            got = await self._recv_into(self._view[:READ_AHEAD], wait_limit=False)
            if not got:
                raise ConnectionClosed("connection closed by peer")
            self._end = got

    async def read_header(self) -> tuple[int, int, int, int]:
        """(length, op, status, request id) of the next frame; ProtocolViolation if bad."""
        await self._fill(HEADER_SIZE)
        header = self._view[self._start:self._start + HEADER_SIZE]
        self._start += HEADER_SIZE
        return unpack_header(header)

    async def read_bytes(self, n: int) -> bytes:
        """The next ``n`` bytes as a new bytes object (for small payloads)."""
        if n <= len(self._buf):
            await self._fill(n)
            data = bytes(self._view[self._start:self._start + n])
            self._start += n
            return data
        data = bytearray(n)
        await self.read_into(memoryview(data))
        return bytes(data)

    async def read_into(self, dest: memoryview) -> None:
        """Fill ``dest`` (a writable byte memoryview) with the next ``len(dest)`` bytes."""
        n = len(dest)
        take = min(n, self._end - self._start)
        if take:
            dest[:take] = self._view[self._start:self._start + take]
            self._start += take
        pos = take
        while pos < n:
            if n - pos >= DIRECT_THRESHOLD:
                got = await self._recv_into(dest[pos:], bulk=True)
                if not got:
                    raise ConnectionClosed("connection closed by peer")
                pos += got
            else:
                need = n - pos
                self._start = self._end = 0
                await self._fill(need)
                dest[pos:] = self._view[:need]
                self._start = need
                pos = n

    async def skip(self, n: int) -> None:
        """Discard the next ``n`` bytes, without allocating more than the buffer."""
        while n:
            if self._start == self._end:
                self._start = self._end = 0
                await self._fill(1)
            take = min(n, self._end - self._start)
            self._start += take
            n -= take


async def _wait(wait, sock, timeout: float | None) -> None:
    if timeout is None:
        await wait(sock)
    else:
        with trio.fail_after(timeout):
            await wait(sock)


async def send_buffers(sock, buffers: list, ancdata=(), timeout: float | None = None) -> None:
    """Send every byte of ``buffers`` in order (``ancdata`` goes with the first byte).

    With ``timeout``, raise trio.TooSlowError when the peer took no byte for that long.
    """
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    i = 0
    while i < len(views):
        try:
            sent = sock.sendmsg(views[i:i + IOV_MAX], ancdata)
        except BlockingIOError:
            await _wait(trio.lowlevel.wait_writable, sock, timeout)
            continue
        ancdata = ()
        while sent:
            if sent >= len(views[i]):
                sent -= len(views[i])
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
