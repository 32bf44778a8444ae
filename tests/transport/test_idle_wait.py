"""protocol_io.IdleWait: blocking in poll() in place of trio's scheduler never delays the loop.

The wait must end (returning False, so the caller parks in trio) as soon as anything else of
the trio loop could run: another task's socket, a deadline, a task already runnable, its own
cancellation.
"""
import os
import socket
import threading
import time

import pytest
import trio

from resilfs.protocol_io import FrameReader


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def send_later(sock, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), sock.send(b"x")))
    thread.start()
    return thread


async def test_true_once_readable(pair):
    a, b = pair
    thread = send_later(b, 0.05)
    start = time.perf_counter()
    assert FrameReader(a).wait_idle(5.0)
    assert time.perf_counter() - start < 2.0
    thread.join()


async def test_limit(pair):
    a, _ = pair
    start = time.perf_counter()
    assert not FrameReader(a).wait_idle(0.05)
    assert 0.04 <= time.perf_counter() - start < 2.0


async def test_ends_at_another_tasks_deadline(pair):
    a, _ = pair
    reader = FrameReader(a)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0.05)
        await trio.sleep(0)  # let it park with its deadline
        start = time.perf_counter()
        assert not reader.wait_idle(5.0)
        assert time.perf_counter() - start < 2.0


async def test_ends_on_another_tasks_io(pair):
    a, _ = pair
    reader = FrameReader(a)
    c, d = socket.socketpair()
    with trio.socket.from_stdlib_socket(c) as c, d:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(c.recv, 1)
            await trio.sleep(0)  # let it park in trio's epoll
            thread = send_later(d, 0.05)
            start = time.perf_counter()
            assert not reader.wait_idle(5.0)
            assert time.perf_counter() - start < 2.0
            thread.join()


async def test_declines_when_another_task_is_runnable(pair):
    a, _ = pair
    reader = FrameReader(a)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)  # spawned: runnable, not run yet
        start = time.perf_counter()
        assert not reader.wait_idle(5.0)
        assert time.perf_counter() - start < 0.5


async def test_declines_when_cancelled(pair):
    a, _ = pair
    reader = FrameReader(a)
    with trio.CancelScope() as scope:
        scope.cancel()
        start = time.perf_counter()
        assert not reader.wait_idle(5.0)
        assert time.perf_counter() - start < 0.5


async def test_disabled(pair):
    a, _ = pair
    start = time.perf_counter()
    assert not FrameReader(a, idle_wait=False).wait_idle(5.0)
    assert time.perf_counter() - start < 0.5


async def test_spins_briefly_then_sleeps(pair):
    """A wait spins at most ``spin`` seconds; a long wait costs (almost) no CPU, and after
    one the next wait does not spin at all."""
    a, b = pair
    reader = FrameReader(a, spin=0.01)
    for _ in range(2):
        cpu, start = time.process_time(), time.perf_counter()
        assert not reader.wait_idle(0.2)
        assert time.perf_counter() - start >= 0.15
        assert time.process_time() - cpu < 0.1
    send_later(b, 0.0).join()
    assert reader.wait_idle(1.0)


async def test_a_spin_that_overruns_the_limit_does_not_block(pair, monkeypatch):
    """A spin that ran past the limit (the thread was descheduled meanwhile) ends the wait
    at once; it never turns into a wait for data without a timeout."""
    a, b = pair
    monkeypatch.setattr(os, "sched_yield", lambda: time.sleep(0.005))
    thread = send_later(b, 2.0)
    start = time.perf_counter()
    assert not FrameReader(a, spin=0.01).wait_idle(0.001)
    assert time.perf_counter() - start < 1.0
    thread.join()
