"""The data layer's mapping logic against a model, over an in-memory test double of the sets.

``MemoryBacking`` exists only in this test: it stands in for the sets so that the
file-range -> extent -> set-range logic can be checked exhaustively and fast. The product
backing (resiliency sets on appliances) is exercised by the real mounts in tests/fs.
"""
import stat
import tempfile

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilfs.fs.data import Backing, FileData
from resilfs.fs.errors import DataUnavailable
from resilfs.fs.journal import Journal
from resilfs.fs.journal_dir import DirJournalStore
from resilfs.fs.metadata import Metadata
from resilfs.fs.state import ROOT_INODE

SET_SIZE = 256 * 1024


class MemoryBacking(Backing):
    """Test double: sets as bytearrays filled with garbage, to catch reads of unwritten space."""

    def __init__(self):
        self.sets: dict[int, bytearray] = {}
        self.fail_writes = False

    async def create_set(self, set_id, size):
        self.sets[set_id] = bytearray(b"\xee" * size)

    async def read_into(self, set_id, offset, buffer):
        await trio.sleep(0)
        buffer[:] = self.sets[set_id][offset:offset + len(buffer)]

    async def write(self, set_id, offset, data):
        await trio.sleep(0)
        if self.fail_writes:
            raise DataUnavailable("test: writes fail")
        self.sets[set_id][offset:offset + len(data)] = data

    async def free_bytes(self):
        return 1 << 30

    async def aclose(self):
        pass


async def setup(path):
    journal = await Journal.load(DirJournalStore(path))
    Metadata.format(journal, 0, 0)
    md = Metadata(journal)
    return md, FileData(md, MemoryBacking(), SET_SIZE, stripe_size=16384)


ops = st.lists(st.tuples(st.sampled_from(["write", "read", "truncate", "recreate", "commit",
                                          "punch", "zero", "allocate"]),
                         st.integers(0, 2), st.integers(0, 300_000), st.integers(1, 70_000)),
               max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.randoms(use_true_random=False))
def test_files_match_model(sequence, rnd):
    with tempfile.TemporaryDirectory() as path:
        async def main():
            md, data = await setup(path)
            inos, models = [], []
            for i in range(3):
                inos.append(md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0).ino)
                models.append(bytearray())
            for kind, f, offset, length in sequence:
                ino, model = inos[f], models[f]
                if kind == "write":
                    buf = rnd.randbytes(length)
                    assert await data.write(ino, offset, buf) == length
                    if offset > len(model):
                        model.extend(bytes(offset - len(model)))
                    model[offset:offset + length] = buf
                elif kind == "read":
                    got = bytes(await data.read(ino, offset, length))
                    assert got == bytes(model[offset:offset + length])
                elif kind == "truncate":
                    await data.truncate(ino, offset)
                    del model[offset:]
                    model.extend(bytes(offset - len(model)))
                elif kind == "punch":  # frees the whole pages, zeroes the rest
                    await data.fallocate(ino, 0x03, offset, length)
                    end = min(offset + length, len(model))
                    model[offset:end] = bytes(max(end - offset, 0))
                elif kind in ("zero", "allocate"):  # ZERO_RANGE or mode 0: the size grows
                    await data.fallocate(ino, 0x10 if kind == "zero" else 0, offset, length)
                    if offset + length > len(model):
                        model.extend(bytes(offset + length - len(model)))
                    if kind == "zero":
                        model[offset:offset + length] = bytes(length)
                elif kind == "recreate":  # frees space that later writes reuse
                    md.unlink(ROOT_INODE, b"f%d" % f)
                    inos[f] = md.create(ROOT_INODE, b"f%d" % f, stat.S_IFREG | 0o644, 0,
                                        0).ino
                    models[f] = bytearray()
                else:
                    await md.journal.commit()
            for ino, model in zip(inos, models, strict=True):
                assert md.inode(ino).size == len(model)
                assert bytes(await data.read(ino, 0, len(model) + 10)) == bytes(model)
            await md.journal.commit()
            allocator = md.state.allocator  # the running totals match the free ranges
            assert allocator.free_bytes() == sum(n for ranges in allocator.free_ranges().values()
                                                 for _, n in ranges)
            assert allocator.quarantined_bytes() == 0
            replayed = await Journal.load(DirJournalStore(path))
            assert replayed.state.snapshot() == md.state.snapshot()
        trio.run(main)


def test_concurrent_writes_and_failed_write(tmp_path):
    async def main():
        md, data = await setup(str(tmp_path))
        a = md.create(ROOT_INODE, b"a", stat.S_IFREG | 0o644, 0, 0).ino
        b = md.create(ROOT_INODE, b"b", stat.S_IFREG | 0o644, 0, 0).ino
        async with trio.open_nursery() as nursery:
            for i in range(64):  # overlapping and adjacent writes into holes, two files
                nursery.start_soon(data.write, a, i * 3000, bytes([i]) * 3000)
                nursery.start_soon(data.write, b, (63 - i) * 5000, bytes([i]) * 5000)
        got_a = bytes(await data.read(a, 0, 64 * 3000))
        assert got_a == b"".join(bytes([i]) * 3000 for i in range(64))
        got_b = bytes(await data.read(b, 0, 64 * 5000))
        assert got_b == b"".join(bytes([63 - i]) * 5000 for i in range(64))
        allocator = md.state.allocator
        free, total = allocator.free_bytes(), allocator.total_bytes()
        data.backing.fail_writes = True
        with pytest.raises(DataUnavailable):
            await data.write(a, 1 << 20, b"x" * 10000)
        # the reservation was given back (a set added for it stays)
        assert allocator.free_bytes() - free == allocator.total_bytes() - total
        assert md.inode(a).size == 64 * 3000
    trio.run(main)


def test_large_holes_are_stripe_aligned(tmp_path):
    async def main():
        md, data = await setup(str(tmp_path))
        small = md.create(ROOT_INODE, b"small", stat.S_IFREG | 0o644, 0, 0).ino
        big = md.create(ROOT_INODE, b"big", stat.S_IFREG | 0o644, 0, 0).ino
        await data.write(small, 0, b"x" * 100)  # takes the first page of the set
        await data.write(big, 16384 * 2 + 4096, b"y" * 40000)
        await data.write(big, 0, b"z" * 16384)
        for f, _, _, o in md.inode(big).extents:
            assert o % 16384 == f % 16384
        await data.write(small, 4096, b"x" * 100)  # small holes still pack, unaligned
        assert md.inode(small).extents.mapped_bytes == 8192
        assert md.state.allocator.free_ranges()[1][0] == (65536, SET_SIZE - 65536)
    trio.run(main)


def test_placeable_sets():
    from resilfs.fs.backing import placeable
    assert placeable([10, 10, 10], 1, 3) == 10
    assert placeable([10, 10, 10], 1, 2) == 15
    assert placeable([24] * 5 + [0, 0], 1, 6) == 0
    assert placeable([30, 30, 30, 30, 30, 30, 1], 1, 6) == 30
    assert placeable([100, 5, 5, 5, 5, 5, 5], 1, 6) == 6  # one region per appliance per set
    assert placeable([], 1, 6) == 0


def test_allocator_holds_only_what_is_still_free():
    from resilfs.fs.allocator import Allocator
    a = Allocator()
    a.add_set(1, 1 << 20)
    a.take_released()  # keep released ranges from now on
    pieces = a.reserve(256 << 10)
    for piece in pieces:
        a.mark_used(*piece)
    a.free(1, 0, 256 << 10)
    a.release(a.seal())
    released = a.take_released()
    assert released == [(1, 0, 256 << 10)]
    reused = a.reserve(4096)  # a writer took a page back meanwhile
    held = a.hold(released)
    assert sum(n for _, _, n in held) == (256 << 10) - 4096
    assert a.free_bytes() == (1 << 20) - (256 << 10)
    a.cancel(held)
    a.cancel(reused)
    assert a.free_bytes() == 1 << 20 and a.take_released() == []
