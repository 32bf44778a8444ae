"""The write-behind cache against a model of bytes, over an in-memory test double of the sets.

``SlowSets`` stands in for the resiliency sets: it yields to other tasks inside every read
and write and writes in two halves, so that reads, writes through, flushes and the
background flusher interleave at every point where the product's sets could. Time is
trio's MockClock (autojump), so ages and waits cost nothing and nothing sleeps.
"""
import os
import stat

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilfs.fs.data import Backing, FileData
from resilfs.fs.errors import DataUnavailable
from resilfs.fs.journal import Journal
from resilfs.fs.journal_dir import DirJournalStore
from resilfs.fs.metadata import Metadata
from resilfs.fs.state import ROOT_INODE
from resilfs.fs.writebehind import CLEAN_KEEP, WriteBehind

BLOCK = 64
SET_SIZE = 1000  # not a multiple of BLOCK: the last block is short
SETS = (1, 2)


class SlowSets(Backing):
    """Sets as bytearrays; every call yields, writes land in two halves."""

    def __init__(self, size: int = SET_SIZE):
        self.sets = {s: bytearray(size) for s in SETS}
        self.failing: set[int] = set()
        self.read_gate: trio.Event | None = None  # reads wait for it, when there is one
        self.write_gate: trio.Event | None = None  # writes wait for it, when there is one
        self.writes = 0

    async def create_set(self, set_id, size):
        self.sets[set_id] = bytearray(size)

    async def _enter(self, set_id, gate):
        await trio.lowlevel.checkpoint()
        if gate is not None:
            await gate.wait()
        if set_id in self.failing:
            raise DataUnavailable(f"test: set {set_id} is lost")

    async def read_into(self, set_id, offset, buffer):
        await self._enter(set_id, self.read_gate)
        assert 0 <= offset and offset + len(buffer) <= len(self.sets[set_id])
        buffer[:] = self.sets[set_id][offset:offset + len(buffer)]

    async def write(self, set_id, offset, data):
        before = bytes(data)  # a set encodes parity from the same bytes: they must hold still
        await self._enter(set_id, self.write_gate)
        assert 0 <= offset and offset + len(before) <= len(self.sets[set_id])
        half = len(before) // 2
        self.sets[set_id][offset:offset + half] = data[:half]
        await trio.lowlevel.checkpoint()
        self.sets[set_id][offset + half:offset + len(before)] = data[half:]
        assert bytes(data) == before, "the buffer changed while the set wrote it"
        self.writes += 1

    async def free_bytes(self):
        return 0

    async def aclose(self):
        pass


def make_cache(inner: SlowSets, limit: int = 4 * BLOCK) -> WriteBehind:
    return WriteBehind(inner, BLOCK, lambda set_id: len(inner.sets[set_id]), limit=limit,
                       age=0.5)


def run(main, *args):
    trio.run(main, *args, clock=trio.testing.MockClock(autojump_threshold=0))


ranges = st.tuples(st.sampled_from(SETS), st.integers(0, SET_SIZE - 1),
                   st.integers(1, 3 * BLOCK)).map(
    lambda t: (t[0], t[1], min(t[2], SET_SIZE - t[1])))
ops = st.lists(st.one_of(
    st.tuples(st.sampled_from(["behind", "through", "read", "flush_range"]), ranges),
    st.tuples(st.sampled_from(["flush", "sleep", "burst"]), st.just((1, 0, 1)))),
    max_size=50)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(0, 2**32 - 1), st.sampled_from([2 * BLOCK, 4 * BLOCK, 64 * BLOCK]))
def test_cache_matches_model(sequence, seed, limit):
    """Writes deferred and through, reads, flushes and the flusher, in any order: reads
    always return the latest bytes, and after a flush the sets equal the model."""
    async def main():
        inner = SlowSets()
        cache = make_cache(inner, limit)
        model = {s: bytearray(SET_SIZE) for s in SETS}
        counter = seed

        def data(n):
            nonlocal counter
            counter += 1
            return bytes((counter + i * 7) % 251 for i in range(n))

        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            for kind, (s, offset, length) in sequence:
                if kind == "behind":
                    buf = data(length)
                    await cache.write_behind([(s, offset, buf)])
                    model[s][offset:offset + length] = buf
                elif kind == "through":
                    buf = data(length)
                    await cache.write(s, offset, buf)
                    model[s][offset:offset + length] = buf
                elif kind == "read":
                    buf = bytearray(length)
                    await cache.read_into(s, offset, buf)
                    assert buf == model[s][offset:offset + length]
                elif kind == "flush_range":
                    await cache.flush([(s, offset, length)])
                    assert inner.sets[s][offset:offset + length] == model[s][offset:offset + length]
                elif kind == "flush":
                    await cache.flush()
                    assert inner.sets == model
                elif kind == "sleep":
                    await trio.sleep(0.3)
                else:  # a burst of concurrent deferred writes and reads, disjoint ranges
                    async def read_back(s, offset, expected):
                        buf = bytearray(len(expected))
                        await cache.read_into(s, offset, buf)
                        assert buf == expected
                    async with trio.open_nursery() as burst:
                        for k in range(6):
                            s, at = SETS[k % 2], (k * 150 + counter) % (SET_SIZE - 40)
                            if k % 3 == 2:
                                burst.start_soon(read_back, s, at, bytes(model[s][at:at + 40]))
                                continue
                            buf = data(40)
                            model[s][at:at + 40] = buf
                            burst.start_soon(cache.write_behind, [(s, at, buf)])
                        await trio.sleep(0.2)
            await cache.flush()
            assert inner.sets == model
            assert cache.statistics()["dirty_block_bytes"] == 0
            nursery.cancel_scope.cancel()
    run(main)


def test_reads_are_served_while_a_flush_is_in_flight():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        await cache.write_behind([(1, 10, b"new")])
        inner.write_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.flush)
            await trio.testing.wait_all_tasks_blocked()  # the flush is writing
            buf = bytearray(5)
            await cache.read_into(1, 9, buf)  # reads take no lock
            assert buf == b"\0new\0"
            inner.write_gate.set()
        assert inner.sets[1][9:14] == b"\0new\0"
        await trio.sleep(CLEAN_KEEP + 1)
        buf = bytearray(5)
        await cache.read_into(1, 9, buf)
        assert buf == b"\0new\0"
    run(main)


def test_write_through_waits_for_a_merging_flush():
    """A flush that read the block before a write through landed must not write the old
    bytes back over it: the write through waits for the block's lock."""
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        for at in range(0, 40, 8):  # many dirty ranges: the flush reads and merges
            await cache.write_behind([(1, at, b"d")])
        inner.read_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.flush)
            await trio.testing.wait_all_tasks_blocked()  # the flush is reading the block
            nursery.start_soon(cache.write, 1, 50, b"through")
            await trio.testing.wait_all_tasks_blocked()
            inner.read_gate.set()
        assert inner.sets[1][50:57] == b"through"
        assert inner.sets[1][0:1] == b"d" and inner.sets[1][32:33] == b"d"
        buf = bytearray(7)
        await cache.read_into(1, 50, buf)
        assert buf == b"through"
    run(main)


def test_a_merging_flush_waits_for_a_write_through_in_flight():
    """A write through that started first: the flush must not read the block before it
    landed and write the old bytes back after it."""
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        for at in range(0, 40, 8):
            await cache.write_behind([(1, at, b"d")])
        inner.write_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.write, 1, 50, b"through")
            await trio.testing.wait_all_tasks_blocked()  # the write through is writing
            nursery.start_soon(cache.flush)
            await trio.testing.wait_all_tasks_blocked()
            inner.write_gate.set()
        assert inner.sets[1][50:57] == b"through" and inner.sets[1][8:9] == b"d"
    run(main)


@pytest.mark.parametrize("whole", [False, True])
def test_a_write_during_a_flush_stays_dirty_under_memory_pressure(whole):
    """A block written again while its flush is in flight: the flush writes stable bytes,
    and the new ones stay dirty (not dropped as clean when memory is short)."""
    async def main():
        inner = SlowSets()
        cache = make_cache(inner, limit=2 * BLOCK)
        first = bytes(range(1, BLOCK + 1)) if whole else b"first"
        for at in range(0, len(first), 16):
            await cache.write_behind([(1, at, first[at:at + 16])])
        inner.write_gate = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            nursery.start_soon(cache.flush)
            await trio.testing.wait_all_tasks_blocked()  # the flush is writing
            await cache.write_behind([(1, 2, b"second")])
            inner.write_gate.set()
            await cache.write_behind([(1, BLOCK, b"x"), (1, 2 * BLOCK, b"y")])  # evicts
            nursery.cancel_scope.cancel()
        await cache.flush()
        assert inner.sets[1][:8] == first[:2] + b"second"
        assert inner.sets[1][8:len(first)] == first[8:]
    run(main)


def test_lost_flush_is_reported_until_unmount_and_later_writes_fail_at_once():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        await cache.write_behind([(1, 0, b"lost"), (2, 0, b"kept")])
        inner.failing.add(1)
        with pytest.raises(DataUnavailable):
            await cache.flush([(1, 0, 4)])
        with pytest.raises(DataUnavailable):  # the loss stays reported
            await cache.flush([(1, 0, 100)])
        await cache.flush([(2, 0, 4)])  # other sets are not affected
        assert inner.sets[2][:4] == b"kept"
        with pytest.raises(DataUnavailable):  # written through now: fails at once
            await cache.write_behind([(1, 200, b"x")])
        assert cache.statistics()["lost_blocks"] == 1
        await cache.aclose()  # logs, closes all the same
    run(main)


def test_lost_background_flush_fails_the_next_full_flush():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        inner.failing.add(2)
        await cache.write_behind([(2, 0, b"x")])
        with pytest.raises(DataUnavailable):
            await cache.flush()
        await cache.flush()  # nothing failed since
    run(main)


def test_cancelled_flush_keeps_the_bytes_dirty():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        await cache.write_behind([(1, 100, b"keep me")])
        inner.write_gate = trio.Event()
        with trio.move_on_after(1):
            await cache.flush()
        assert cache.statistics()["dirty_block_bytes"] == BLOCK
        inner.write_gate = None
        await cache.flush()
        assert inner.sets[1][100:107] == b"keep me"
        assert cache.statistics()["dirty_block_bytes"] == 0
    run(main)


def test_writers_wait_for_the_flusher_when_the_cache_is_full():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner, limit=2 * BLOCK)
        await cache.write_behind([(1, 0, b"a"), (1, BLOCK, b"b")])
        done = trio.Event()

        async def third():
            await cache.write_behind([(1, 2 * BLOCK, b"c")])
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(third)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # over the limit, nothing clean to drop
            await nursery.start(cache.run)
            with trio.fail_after(5):
                await done.wait()
            assert cache.statistics()["cached_bytes"] <= 2 * BLOCK
            nursery.cancel_scope.cancel()
        await cache.flush()
        assert inner.sets[1][0:1] + inner.sets[1][BLOCK:BLOCK + 1] == b"ab"
        assert inner.sets[1][2 * BLOCK:2 * BLOCK + 1] == b"c"
    run(main)


def test_a_full_block_is_one_write_and_long_writes_go_through():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        for at in range(0, BLOCK, 16):
            await cache.write_behind([(1, at, bytes([at + 1]) * 16)])
        assert inner.writes == 0
        await cache.flush()
        assert inner.writes == 1
        await cache.write_behind([(1, 0, b"L" * BLOCK)])
        assert inner.writes == 2 and inner.sets[1][:BLOCK] == b"L" * BLOCK
    run(main)


def test_writes_off_block_boundaries_reach_the_set_as_whole_blocks():
    """A long write's whole blocks go through; its ends wait in the cache and, completed by
    the neighbouring writes (as the kernel's writeback sends them), are flushed as whole
    blocks: no partial-block write reaches the set."""
    async def main():
        inner = SlowSets()
        cache = make_cache(inner, limit=64 * BLOCK)
        spans = []
        original = inner.write

        async def write(set_id, offset, data):
            spans.append((offset, len(data)))
            await original(set_id, offset, data)

        inner.write = write
        data = os.urandom(5 * BLOCK)
        cut = [0, BLOCK // 3, BLOCK // 3 + 2 * BLOCK + 5, 5 * BLOCK]
        for lo, hi in zip(cut, cut[1:], strict=False):
            await cache.write_behind([(1, lo, data[lo:hi])])
        assert spans == [(BLOCK, BLOCK), (3 * BLOCK, 2 * BLOCK)]  # the whole blocks
        await cache.flush()
        assert all(o % BLOCK == 0 and n % BLOCK == 0 for o, n in spans)
        assert inner.sets[1][:5 * BLOCK] == data
    run(main)


def test_writing_through_flushes_first_and_then_bypasses_the_cache():
    async def main():
        inner = SlowSets()
        cache = make_cache(inner)
        await cache.write_behind([(1, 0, b"before")])
        async with cache.writing_through():
            assert inner.sets[1][:6] == b"before"
            await cache.write_behind([(1, 3, b"during")])
            assert inner.sets[1][:9] == b"befduring"
            assert cache.statistics()["dirty_block_bytes"] == 0
        await cache.write_behind([(1, 0, b"after")])
        assert inner.sets[1][:5] == b"befdu"
    run(main)


def test_journal_maps_data_only_after_it_is_on_the_sets(tmp_path):
    """Ordered data: an allocating write waits in the cache, and the batch with its MAP
    record is appended only after the data reached the sets."""
    async def main():
        store = DirJournalStore(str(tmp_path))
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        metadata = Metadata(journal)
        inner = SlowSets(size=1 << 20)
        cache = WriteBehind(inner, 16384, lambda set_id: 1 << 20)
        data = FileData(metadata, cache, 1 << 20)
        journal.before_append = data.flush_mapped
        appended = []
        append = store.append

        async def checking_append(batch):
            appended.append(bytes(inner.sets[1][:5]))
            await append(batch)

        store.append = checking_append
        ino = metadata.create(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, 0).ino
        await data.write(ino, 0, b"hello")
        assert bytes(await data.read(ino, 0, 5)) == b"hello"
        assert inner.sets[1][:5] == bytes(5)  # still in the cache
        await journal.commit()
        assert appended == [b"hello"]
    run(main)
