"""Frame I/O on non-blocking sockets under trio, shared by the appliance and the clients.

``FrameReader`` reads headers and small payloads through one reusable buffer and receives
large payloads straight into their destination (a region's mapping on the appliance, the
caller's buffer on a client), so bulk data is copied once by the kernel and never by Python.
``send_buffers`` sends a list of buffers with ``sendmsg`` and handles partial sends.

Both call the (non-blocking) stdlib socket directly and park in ``trio.lowlevel.wait_*``
only when it would block: a call that does not block is not a checkpoint, which saves a
trip through trio's scheduler per frame (on the 2-vCPU development VM a 64-byte round trip
took ~12 us over plain sockets and ~52 us over trio streams). Loops that can
run without ever blocking must checkpoint themselves now and then.

When a receive would block and no other trio task is runnable, ``FrameReader`` first waits
in a blocking poll() on the socket *and trio's own epoll fd*, with the timeout trio's own
epoll_wait would have (its next deadline; none if there is none), see ``IdleWait``: the
same wait, minus a trip through trio's scheduler. What we measured on this machine kind (a
Firecracker VM, 2 vCPUs, HZ=250, guest_halt_poll_ns=0): a 4 KiB loopback ping-pong of two
plain processes takes ~6 us only while both run back to back on one vCPU (~60 us pinned to
different vCPUs: waking a halted vCPU), so each side's CPU per request is on the critical
path; and a wait with a timeout shorter than the 4 ms tick costs ~5 us more than one with a
longer timeout or none (arming the earliest timer traps to the hypervisor): select(1 ms) on
both sides 16-19 us, select(1 s) or no timeout 8-9 us.

Before that blocking poll() it spins for a little while (``SPIN``: polls without a timeout,
yielding the CPU to any other runnable thread between polls), but only while the waits of
this socket stay short. Waking a halted vCPU is what makes a loopback round trip slow here,
and it slows the sender too: a receiver that sleeps makes each sendmsg of 1 MiB cost ~300 us
instead of ~200 us (the sender's softirq then does the receive processing and the wake-up).
A spinning receiver took a plain socket request/reply stream from 3.0 to 4.6 GB/s.

On EOF ``FrameReader`` raises ``ConnectionClosed``; socket errors propagate as ``OSError``;
a socket closed by another task (``close_socket``) raises ``trio.ClosedResourceError``.
Cancellation in the middle of a frame leaves the stream unusable: callers close it.
"""
import math
import os
import select
import socket
import struct
import time

import trio

try:  # trio's run loop, read by IdleWait only (guarded: see _loop_epoll and IdleWait.wait)
    from trio._core import _run as _trio_run
except ImportError:  # pragma: no cover - another trio layout: IdleWait always declines
    _trio_run = None

from .protocol import HEADER_SIZE, unpack_header

IOV_MAX = 1024
BUFFER_SIZE = 256 * 1024
RECV_INTO_MIN = 64 * 1024  # payload pieces at least this large are received straight into
# the caller's buffer, bypassing the connection's own
READ_AHEAD = 16 * 1024  # bytes a buffered read asks for beyond what it needs


class ConnectionClosed(Exception):
    """The peer closed the connection (possibly in the middle of a frame)."""


def nonblocking(trio_socket) -> socket.socket:
    """The stdlib socket behind a (connected or accepted) trio socket, set non-blocking."""
    sock = socket.socket(trio_socket.family, trio_socket.type, fileno=trio_socket.detach())
    sock.setblocking(False)
    return sock


def close_socket(sock: socket.socket, abort: bool = False) -> None:
    """Close ``sock``, waking any task parked on it with ClosedResourceError.

    ``abort``: discard what the kernel still holds to send and reset the connection (TCP:
    SO_LINGER 0, an RST instead of a FIN). A plain close leaves unsent data in the kernel,
    which delivers it whenever it can: after a network partition heals, possibly seconds
    later, when whoever closed it has long given the request up and gone on.
    """
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        if abort:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        sock.close()


def _loop_epoll(runner):
    """The epoll object of trio's run loop ``runner`` if IdleWait may block in its place.

    Only a plain ``trio.run`` qualifies: epoll I/O manager, the system clock (a MockClock's
    time may jump or stand still), not guest mode. None otherwise.
    """
    try:
        epoll = runner.io_manager._epoll
        ok = (isinstance(epoll, select.epoll) and not runner.is_guest
              and type(runner.clock) is trio._core._run.SystemClock)
    except AttributeError:
        return None
    return epoll if ok else None


IDLE_WAIT_MAX_TASKS = 64  # more trio tasks than this: IdleWait declines (it scans them)
SPIN = 200e-6  # seconds IdleWait polls before it blocks, while this socket's waits are short


class IdleWait:
    """Block in poll() for one socket in place of trio's scheduler, when trio is idle.

    ``wait(limit)`` returns True once the socket is readable (or in error or hung up). It
    returns False at once, without waiting, when this task is cancelled already, another
    trio task is runnable (queued or in the batch being run), callbacks are queued,
    ``wait_all_tasks_blocked`` is in use, the loop has more than ``IDLE_WAIT_MAX_TASKS``
    tasks, or trio's internals are not the ones this was written against (trio 0.2x-0.3x,
    epoll); it returns False after waiting when trio's epoll fd became readable (other I/O
    of this loop, a signal, a wake-up from a thread), when trio's next deadline came, or
    after ``limit`` seconds. The caller then parks in trio as before, which handles whatever
    woke us: deadlines and cancellation keep their meaning, and other tasks of the loop wait
    no longer than for trio's own epoll_wait. Never a checkpoint; raises only what poll()
    raises (e.g. KeyboardInterrupt from trio's SIGINT handler).

    ``spin``: seconds to poll without blocking (``os.sched_yield()`` between polls, so a
    thread waiting for this CPU gets it) before the blocking poll(), when the previous wait
    ended within that time; a socket whose peer pauses longer stops spinning until its waits
    are short again, so an idle connection costs no CPU. 0 never spins.
    """

    def __init__(self, sock, spin: float = SPIN):
        self._sock = sock
        self._spin = spin
        self._last_wait = 0.0  # seconds the previous wait took
        self._runner = None
        self._epoll = None
        self._poll = None

    def _setup(self, runner) -> bool:
        self._runner, self._epoll = runner, _loop_epoll(runner)
        if self._epoll is None:
            return False
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._poll.register(self._epoll.fileno(), select.POLLIN)
        return True

    def wait(self, limit: float) -> bool:
        if _trio_run is None:
            return False
        try:
            runner = _trio_run.GLOBAL_RUN_CONTEXT.runner
        except AttributeError:  # not in trio.run()
            return False
        if runner is not self._runner and not self._setup(runner):
            return False
        if self._epoll is None or self._epoll.closed:
            return False
        try:
            tasks = runner.tasks
            if (runner.runq or len(tasks) > IDLE_WAIT_MAX_TASKS or runner.entry_queue.size()
                    or runner.waiting_for_idle or runner.clock_autojump_threshold != math.inf):
                return False
            # trio runs the run queue in batches: a task of the current batch that has not
            # run yet is in neither runq nor any wait, only marked as scheduled
            for task in tasks:
                if task._next_send_fn is not None:
                    return False
            timeout = min(limit, runner.clock.deadline_to_sleep_time(
                runner.deadlines.next_deadline()))
        except AttributeError:  # pragma: no cover - trio changed: decline from now on
            self._epoll = None
            return False
        # -inf if this task is cancelled already (its next checkpoint raises Cancelled)
        if timeout <= 0 or trio.current_effective_deadline() == -math.inf:
            return False
        fd = self._sock.fileno()
        started = time.perf_counter()
        try:
            if self._last_wait <= self._spin:
                give_up = started + min(self._spin, timeout)
                while True:
                    ready = self._poll.poll(0)
                    if ready:
                        return any(r_fd == fd for r_fd, _ in ready)
                    now = time.perf_counter()
                    if now >= give_up:
                        break
                    os.sched_yield()
                # (not below 0: poll() takes a negative timeout as "wait forever")
                timeout = max(timeout - (now - started), 0.0)
            # poll() rounds up to whole ms; an infinite timeout waits without any timer
            ready = self._poll.poll(None if timeout == math.inf else math.ceil(timeout * 1000))
            return any(r_fd == fd for r_fd, _ in ready)
        finally:
            self._last_wait = time.perf_counter() - started


class FrameReader:
    """Reads frames from a non-blocking socket; read-ahead bytes stay in one reusable buffer.

    ``idle_wait``: wait for data in a blocking poll() while trio has nothing else to do
    (see ``IdleWait``, which spins up to ``spin`` seconds first) before parking in trio's
    scheduler.
    """

    def __init__(self, sock, size: int = BUFFER_SIZE, fds: list | None = None,
                 timeout: float | None = None, idle_wait: bool = True, spin: float = SPIN):
        self._sock = sock
        self._timeout = timeout  # seconds without a byte before trio.TooSlowError
        self._idle = IdleWait(sock, spin) if idle_wait else None
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

    def wait_idle(self, limit: float = math.inf) -> bool:
        """Wait up to ``limit`` seconds for data while trio is idle (``IdleWait.wait``);
        True if the socket is readable. Never raises for a timeout, never a checkpoint."""
        return self._idle is not None and self._idle.wait(limit)

    async def _recv_into(self, view, wait_limit: bool = True) -> int:
        deadline = None
        while True:
            try:
                return self._recv_now(view)
            except BlockingIOError:
                limit = math.inf
                if wait_limit and self._timeout is not None:
                    if deadline is None:
                        deadline = trio.current_time() + self._timeout
                    limit = deadline - trio.current_time()
                if self.wait_idle(limit):
                    continue
                if deadline is None:
                    await trio.lowlevel.wait_readable(self._sock)
                else:
                    with trio.fail_at(deadline):
                        await trio.lowlevel.wait_readable(self._sock)

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

    def frame_now(self):
        """The next frame if it is entirely buffered, consumed: (length, op, status,
        request id, payload), the payload a memoryview of the buffer that is valid until the
        next read from this reader. None (nothing consumed) if it is not all there yet.
        ProtocolViolation for a bad header, as ``read_header``."""
        start, n = self._start, self._end - self._start
        if n < HEADER_SIZE:
            return None
        length = int.from_bytes(self._view[start:start + 4], "little")
        if n < HEADER_SIZE + length:
            return None
        length, op, status, request_id = unpack_header(self._view[start:start + HEADER_SIZE])
        start += HEADER_SIZE
        self._start = start + length
        return length, op, status, request_id, self._view[start:self._start]

    def buffered(self) -> int:
        """Bytes received and not yet consumed."""
        return self._end - self._start

    async def wait_data(self) -> None:
        """Return once at least one byte is buffered; waits with no timeout of its own."""
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
            if n - pos >= RECV_INTO_MIN:
                got = await self._recv_into(dest[pos:])
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


async def send_buffers(sock, buffers: list, ancdata=(), timeout: float | None = None,
                       nbytes: int | None = None) -> None:
    """Send every byte of ``buffers`` in order (``ancdata`` goes with the first byte).

    ``nbytes``, if the caller knows it, is the byte count of ``buffers``: then a send that
    goes out whole in one ``sendmsg`` (the usual case) costs no per-buffer work. With
    ``timeout``, raise trio.TooSlowError when the peer took no byte for that long.
    """
    sent = 0
    if nbytes is not None and len(buffers) <= IOV_MAX:
        try:
            sent = sock.sendmsg(buffers, ancdata)
        except BlockingIOError:
            pass
        else:
            if sent == nbytes:
                return
            ancdata = ()
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    i = 0
    while True:
        while sent:  # drop what went out
            if sent >= len(views[i]):
                sent -= len(views[i])
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
        if i >= len(views):
            return
        try:
            sent = sock.sendmsg(views[i:i + IOV_MAX], ancdata)
        except BlockingIOError:
            await _wait(trio.lowlevel.wait_writable, sock, timeout)
            continue
        ancdata = ()
