"""Snapshot metadata (resilfs.fs.snapshots and snapshot_trees, the SNAPSET/SNAPSHOT/
UNSNAPSHOT records): recorded copies replay to the same state from batches and from a
checkpoint, stay out of the allocator, and a delete gives back exactly the state before
(sets freed whole)."""
import stat

import trio

from resilfs.fs.journal import Journal
from resilfs.fs.journal_dir import DirJournalStore
from resilfs.fs.metadata import Metadata
from resilfs.fs.snapshot_names import DIR_NAME
from resilfs.fs.snapshots import SNAPSET_BASE, Snapshots
from resilfs.fs.state import ROOT_INODE


class FakeBacking:
    def __init__(self):
        self.destroyed = []

    async def destroy_set(self, set_id):
        self.destroyed.append(set_id)


def build(md: Metadata) -> int:
    md.add_set(1, 1 << 20)
    d = md.create(ROOT_INODE, b"d", stat.S_IFDIR | 0o750, 1, 2)
    sub = md.create(d.ino, b"sub", stat.S_IFDIR | 0o755, 1, 2)
    for parent, name, pages in ((d.ino, b"f", 3), (sub.ino, b"g", 1)):
        f = md.create(parent, name, stat.S_IFREG | 0o640, 1, 2)
        pieces = md.state.allocator.reserve(pages * 4096)
        md.map(f.ino, 0, pieces)
        md.written(f.ino, pages * 4096 - 10)
        md.setxattr(f.ino, b"user.k", b"v")
    md.link(md.child(d.ino, b"f").ino, sub.ino, b"hard")
    md.create(d.ino, b"ln", stat.S_IFLNK | 0o777, 1, 2, target=b"f")
    return d.ino


async def test_snapshot_records_replay_and_delete(tmp_path):
    path = str(tmp_path)
    journal = await Journal.load(DirJournalStore(path))
    Metadata.format(journal, 0, 0)
    md = Metadata(journal)
    d = build(md)
    await journal.commit()
    before = journal.state.snapshot()
    backing = FakeBacking()
    snaps = Snapshots(md, None, backing, journal)
    tree = snaps.trees.capture(d)
    info = snaps.trees.record(b"s", d, tree, {SNAPSET_BASE: (1, 1 << 20, b"membership")})
    await journal.commit()
    state = journal.state
    top = state.inodes[info.top]
    assert state.inodes[ROOT_INODE].dir.get(DIR_NAME) == snaps.directory()
    assert state.inodes[snaps.directory()].dir.get(b"s") == info.top
    assert (top.mode, top.nlink, top.ctime) == (state.inodes[d].mode, 3, state.inodes[d].ctime)
    f_copy = state.inodes[top.dir.get(b"f")]
    assert f_copy.nlink == 2 and f_copy.xattrs == {b"user.k": b"v"}
    assert [e[2] for e in f_copy.extents] == [SNAPSET_BASE]
    assert state.allocator.free_ranges() == before["free"]  # not in the allocator
    assert state.snapset_records == {SNAPSET_BASE: (1, b"membership")}
    assert snaps.frozen(info.top) and snaps.frozen(ROOT_INODE, DIR_NAME)
    assert not snaps.frozen(d) and not snaps.frozen(ROOT_INODE, b"d")
    live = state.snapshot()
    assert (await Journal.load(DirJournalStore(path))).state.snapshot() == live
    assert await journal.checkpoint()
    assert (await Journal.load(DirJournalStore(path))).state.snapshot() == live
    await snaps.delete(b"s")
    assert backing.destroyed == [SNAPSET_BASE]
    after = journal.state.snapshot()
    assert after["snapshots"] == after["snapsets"] == after["snapset_records"] == {}
    assert after["free"] == before["free"]
    assert set(after["inodes"]) == set(before["inodes"]) | {snaps.directory()}
    assert (await Journal.load(DirJournalStore(path))).state.snapshot() == after
    await trio.lowlevel.checkpoint()
