"""Metadata and journal: random operation sequences replay to the live state.

Runs the real journal logic on the real directory store (files in a temp dir): after any
sequence of namespace changes, loading the store (checkpoint + later batches) gives a state
equal to the live one, and refused operations change nothing.
"""
import errno
import os
import stat
import tempfile

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilfs.fs.allocator import OutOfSpace
from resilfs.fs.errors import FsError
from resilfs.fs.extents import page_up
from resilfs.fs.journal import Journal
from resilfs.fs.journal_dir import DirJournalStore
from resilfs.fs.journal_records import ATTR_MTIME, Op
from resilfs.fs.metadata import RENAME_NOREPLACE, Metadata
from resilfs.fs.state import ROOT_INODE

SET_SIZE = 64 * 4096
I64_MIN, I64_MAX, U32_MAX, U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 32) - 1, (1 << 64) - 1
NAMES = [b"a", b"b", b"c", b"d"]


async def new_fs(path):
    journal = await Journal.load(DirJournalStore(path))
    Metadata.format(journal, 0, 0)
    await journal.commit()
    return Metadata(journal)


async def reload(path):
    return await Journal.load(DirJournalStore(path))


def grow(md: Metadata, ino: int, offset: int, length: int) -> None:
    """What the data layer does for a write, minus the data: reserve, map, record size."""
    node = md.inode(ino)
    for gap, n in node.extents.gaps(offset, offset + length):
        before = node.extents.before(gap)
        hint = (before[2], before[3] + gap - before[0]) if before else None
        try:
            pieces = md.state.allocator.reserve(n, hint)
        except OutOfSpace:
            md.add_set(md.state.next_set_id, SET_SIZE)
            pieces = md.state.allocator.reserve(n, hint)
        md.map(ino, gap, pieces)
    md.written(ino, offset + length)


ops = st.lists(st.tuples(
    st.sampled_from(["mkdir", "create", "symlink", "link", "unlink", "rmdir", "rename",
                     "truncate", "write", "xattr", "rmxattr", "open", "release", "lookup",
                     "forget", "chmod", "commit", "checkpoint"]),
    st.integers(0, 30), st.integers(0, 30), st.integers(0, 3), st.integers(0, 3),
    st.integers(0, 40 * 4096)), max_size=60)


def run_op(md: Metadata, op, opened: list, known: list) -> None:
    kind, i, j, n1, n2, x = op
    inodes = sorted(md.state.inodes)
    dirs = [k for k in inodes if md.state.inodes[k].dir is not None]
    files = [k for k in inodes if stat.S_ISREG(md.state.inodes[k].mode)]
    d1, d2 = dirs[i % len(dirs)], dirs[j % len(dirs)]
    name1, name2 = NAMES[n1], NAMES[n2]
    present = [name for _, name, _ in md.state.inodes[d1].dir.listing()]
    if kind in ("unlink", "rmdir", "rename", "lookup") and present and x % 4:
        name1 = present[n1 % len(present)]  # mostly act on names that exist
    if kind == "mkdir":
        md.create(d1, name1, stat.S_IFDIR | 0o755, 1, 1)
    elif kind == "create":
        md.create(d1, name1, stat.S_IFREG | 0o644, 1, 1)
    elif kind == "symlink":
        md.create(d1, name1, stat.S_IFLNK | 0o777, 1, 1, target=b"t" * (x % 100))
    elif kind == "link":
        md.link(inodes[i % len(inodes)], d2, name2)
    elif kind == "unlink":
        md.unlink(d1, name1)
    elif kind == "rmdir":
        md.rmdir(d1, name1)
    elif kind == "rename":
        md.rename(d1, name1, d2, name2, RENAME_NOREPLACE if x % 5 == 0 else 0)
    elif kind == "truncate" and files:
        md.setattr(files[i % len(files)], size=x)
    elif kind == "write" and files:
        grow(md, files[i % len(files)], x, 1 + j * 1000)
    elif kind == "xattr":
        md.setxattr(inodes[i % len(inodes)], b"user." + name1, bytes([j]) * n2)
    elif kind == "rmxattr":
        md.removexattr(inodes[i % len(inodes)], b"user." + name1)
    elif kind == "open" and files:
        ino = files[i % len(files)]
        md.opened(ino)
        opened.append(ino)
    elif kind == "release" and opened:
        md.released(opened.pop(i % len(opened)))
    elif kind == "lookup":
        node = md.child(d1, name1)
        md.remember(node.ino)
        known.append(node.ino)
    elif kind == "forget" and known:
        md.forget(known.pop(i % len(known)), 1)
    elif kind == "chmod":
        md.setattr(inodes[i % len(inodes)], mode=x & 0o7777, uid=j)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_replay_equals_live_state(sequence):
    with tempfile.TemporaryDirectory() as path:
        async def main():
            md = await new_fs(path)
            opened, known = [], []
            for op in sequence:
                before = md.state.snapshot()
                queued = md.journal.queued
                if op[0] == "commit":
                    await md.journal.commit()
                    continue
                if op[0] == "checkpoint":
                    assert await md.journal.checkpoint()
                    continue
                try:
                    run_op(md, op, opened, known)
                except FsError as exc:
                    assert exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTDIR,
                                         errno.EISDIR, errno.ENOTEMPTY, errno.EINVAL,
                                         errno.EPERM, errno.ENODATA, errno.EBUSY), exc
                    assert md.state.snapshot() == before, "a refused operation changed the state"
                    assert md.journal.queued == queued
            await md.journal.commit()
            replayed = await reload(path)
            # the live mount still holds open/looked-up orphans; a replay keeps them too
            assert replayed.state.snapshot() == md.state.snapshot()
            check_invariants(md)
        trio.run(main)


def check_invariants(md: Metadata) -> None:
    """nlink matches the names; extents never overlap and lie in free-space complements."""
    names = {}
    subdirs = {}
    for node in md.state.inodes.values():
        if node.dir is not None:
            for _, _, ino in node.dir.listing():
                names[ino] = names.get(ino, 0) + 1
                if md.state.inodes[ino].dir is not None:
                    subdirs[node.ino] = subdirs.get(node.ino, 0) + 1
    used = {}
    for node in md.state.inodes.values():
        if node.dir is not None:
            expect = 2 + subdirs.get(node.ino, 0) if (names.get(node.ino) or
                                                      node.ino == ROOT_INODE) else 0
            assert node.nlink == expect, (node.ino, node.nlink, expect)
        else:
            assert node.nlink == names.get(node.ino, 0)
        if node.extents is not None:
            assert all(f + n <= max(page_up(node.size), f + n) for f, n, _, _ in node.extents)
            for _, n, s, o in node.extents:
                used.setdefault(s, []).append((o, n))
    for set_id, free in md.state.allocator.free_ranges().items():
        ranges = sorted(used.get(set_id, []) + free)
        pos = 0
        for o, n in ranges:
            assert o >= pos, f"set {set_id}: overlap at {o}"
            pos = o + n
        assert pos <= SET_SIZE


def test_errors_and_unlink_of_open_file(tmp_path):
    async def main():
        md = await new_fs(str(tmp_path))
        f = md.create(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, 0)
        d = md.create(ROOT_INODE, b"d", stat.S_IFDIR | 0o755, 0, 0)
        md.create(d.ino, b"x", stat.S_IFREG | 0o644, 0, 0)
        codes = {
            "exists": lambda: md.create(ROOT_INODE, b"f", stat.S_IFREG, 0, 0),
            "notempty": lambda: md.rmdir(ROOT_INODE, b"d"),
            "isdir": lambda: md.unlink(ROOT_INODE, b"d"),
            "notdir": lambda: md.rmdir(ROOT_INODE, b"f"),
            "file over dir": lambda: md.rename(ROOT_INODE, b"f", ROOT_INODE, b"d"),
            "dir into itself": lambda: md.rename(ROOT_INODE, b"d", d.ino, b"y"),
            "missing": lambda: md.unlink(ROOT_INODE, b"nope"),
            "link a dir": lambda: md.link(d.ino, ROOT_INODE, b"d2"),
            "long name": lambda: md.create(ROOT_INODE, b"n" * 256, stat.S_IFREG, 0, 0),
            "not user xattr": lambda: md.setxattr(f.ino, b"trusted.x", b"v"),
        }
        expected = {"exists": errno.EEXIST, "notempty": errno.ENOTEMPTY, "isdir": errno.EISDIR,
                    "notdir": errno.ENOTDIR, "file over dir": errno.EISDIR,
                    "dir into itself": errno.EINVAL, "missing": errno.ENOENT,
                    "link a dir": errno.EPERM, "long name": errno.ENAMETOOLONG,
                    "not user xattr": errno.ENOTSUP}
        for what, call in codes.items():
            with pytest.raises(FsError) as info:
                call()
            assert info.value.errno == expected[what], what
        md.create(ROOT_INODE, b"e", stat.S_IFDIR | 0o755, 0, 0)
        md.rename(ROOT_INODE, b"e", d.ino, b"x2")  # a directory into another one
        with pytest.raises(FsError) as info:
            md.rename(d.ino, b"x", d.ino, b"x2")
        assert info.value.errno == errno.EISDIR
        md.rmdir(d.ino, b"x2")

        grow(md, f.ino, 0, 10000)
        md.opened(f.ino)
        md.unlink(ROOT_INODE, b"f")
        assert f.ino in md.state.inodes and md.inode(f.ino).nlink == 0
        used = md.state.allocator.free_bytes()
        md.released(f.ino)
        assert f.ino not in md.state.inodes
        await md.journal.commit()
        assert md.state.allocator.free_bytes() == used + 3 * 4096
        assert (await reload(str(tmp_path))).state.snapshot() == md.state.snapshot()
    trio.run(main)


def test_freed_space_is_reused_only_after_commit(tmp_path):
    async def main():
        md = await new_fs(str(tmp_path))
        f = md.create(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, 0)
        grow(md, f.ino, 0, SET_SIZE)
        md.setattr(f.ino, size=0)
        with pytest.raises(OutOfSpace):
            md.state.allocator.reserve(4096)
        await md.journal.commit()
        assert md.state.allocator.reserve(4096) == [(1, 0, 4096)]
    trio.run(main)


def test_large_directory_and_stable_readdir(tmp_path):
    async def main():
        md = await new_fs(str(tmp_path))
        for i in range(100_000):
            md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0)
        root = md.inode(ROOT_INODE)
        seen, cookie = [], 0
        for k, (c, name, _) in enumerate(root.dir.listing()):
            if k == 1000:
                cookie = c
                break
            seen.append(name)
        for i in range(0, 2000, 2):  # remove entries on both sides of the cookie
            md.unlink(ROOT_INODE, b"f%d" % i)
        md.create(ROOT_INODE, b"late", stat.S_IFREG | 0o644, 0, 0)
        rest = [name for _, name, _ in root.dir.listing(cookie)]
        assert not set(rest) & set(seen)
        assert rest[-1] == b"late" and len(rest) == 100_000 - 1000 - 500 + 1
        await md.journal.commit()
        assert await md.journal.checkpoint()
        replayed = await reload(str(tmp_path))
        assert replayed.state.snapshot() == md.state.snapshot()
    trio.run(main)


def test_torn_last_frame_is_ignored(tmp_path):
    async def main():
        md = await new_fs(str(tmp_path))
        md.create(ROOT_INODE, b"kept", stat.S_IFREG | 0o644, 0, 0)
        await md.journal.commit()
        md.create(ROOT_INODE, b"torn", stat.S_IFREG | 0o644, 0, 0)
        await md.journal.commit()
        journal = os.path.join(str(tmp_path), "journal-0")
        with open(journal, "r+b") as f:
            f.truncate(os.path.getsize(journal) - 3)
        replayed = await reload(str(tmp_path))
        names = [n for _, n, _ in replayed.state.inodes[ROOT_INODE].dir.listing()]
        assert names == [b"kept"]
    trio.run(main)


def test_worker_commits_and_compacts(tmp_path):
    """The background worker commits on its own and writes checkpoints as the journal grows."""
    from resilfs.fs.journal import JournalWorker

    async def main():
        md = await new_fs(str(tmp_path))
        worker = JournalWorker(md.journal, interval=0.01)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            for i in range(30_000):
                md.create(ROOT_INODE, b"file-%d" % i, stat.S_IFREG | 0o644, 0, 0)
                if i % 1000 == 0:
                    await trio.sleep(0.02)
            for i in range(0, 30_000, 2):
                md.unlink(ROOT_INODE, b"file-%d" % i)
            with trio.fail_after(60):  # a hang guard; the worker checkpoints on a later tick
                while not any(n.startswith("checkpoint-") for n in os.listdir(str(tmp_path))):
                    await trio.sleep(0.01)
            worker.stop()
        assert md.journal.queued == 0
        assert (await reload(str(tmp_path))).state.snapshot() == md.state.snapshot()
    # the real clock: the directory store writes in threads, and an autojump clock would
    # jump past the worker's ticks while a thread works (how many commits, so whether a
    # checkpoint came, then depended on the machine's speed)
    trio.run(main)


def test_unencodable_record_is_refused_and_later_commits_go_on(tmp_path):
    """A record the encoder cannot hold used to be queued; its batch then failed every
    commit, and with it every later change (issue 16, defect 1)."""
    async def main():
        md = await new_fs(str(tmp_path))
        f = md.create(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, 0)
        await md.journal.commit()
        before, queued = md.state.snapshot(), md.journal.queued
        with pytest.raises(FsError) as info:  # past what an i64 of ns holds
            md.journal.record((Op.SETATTR, f.ino, ATTR_MTIME, 0, 0, 0, 0, 0, I64_MAX + 1, 0))
        assert info.value.errno == errno.EOVERFLOW
        assert md.state.snapshot() == before and md.journal.queued == queued
        md.create(ROOT_INODE, b"g", stat.S_IFREG | 0o644, 0, 0)
        await md.journal.commit()
        assert (await reload(str(tmp_path))).state.snapshot() == md.state.snapshot()
    trio.run(main)


def test_fields_at_and_beyond_their_edges(tmp_path):
    """Every user-set field: the edge values are stored and replay; one past is refused
    with the errno a Linux filesystem gives, changing nothing."""
    async def main():
        md = await new_fs(str(tmp_path))
        f = md.create(ROOT_INODE, b"n" * 255, stat.S_IFREG | 0o644, U32_MAX, U32_MAX)
        md.create(ROOT_INODE, b"dev", stat.S_IFCHR | 0o600, 0, 0, rdev=U64_MAX)
        md.create(ROOT_INODE, b"l", stat.S_IFLNK | 0o777, 0, 0, target=b"t" * 4095)
        md.setattr(f.ino, mode=U32_MAX, atime=I64_MIN, mtime=I64_MAX, ctime=I64_MIN)
        md.setattr(f.ino, size=I64_MAX)
        md.written(f.ino, I64_MAX)
        md.setxattr(f.ino, b"user." + b"x" * 250, b"v" * 65536)
        refused = {
            errno.EOVERFLOW: [lambda: md.setattr(f.ino, atime=I64_MIN - 1),
                              lambda: md.setattr(f.ino, mtime=I64_MAX + 1),
                              lambda: md.setattr(f.ino, ctime=I64_MAX + 1)],
            errno.EINVAL: [lambda: md.setattr(f.ino, mode=U32_MAX + 1),
                           lambda: md.setattr(f.ino, uid=U32_MAX + 1),
                           lambda: md.setattr(f.ino, gid=-1),
                           lambda: md.setattr(f.ino, size=-1),
                           lambda: md.create(ROOT_INODE, b"u", stat.S_IFREG, U32_MAX + 1, 0),
                           lambda: md.create(ROOT_INODE, b"d", stat.S_IFCHR, 0, 0,
                                             rdev=U64_MAX + 1)],
            errno.EFBIG: [lambda: md.setattr(f.ino, size=I64_MAX + 1),
                          lambda: md.written(f.ino, I64_MAX + 1)],
            errno.ENAMETOOLONG: [lambda: md.create(ROOT_INODE, b"n" * 256, stat.S_IFREG, 0, 0),
                                 lambda: md.create(ROOT_INODE, b"s", stat.S_IFLNK, 0, 0,
                                                   target=b"t" * 4096),
                                 lambda: md.rename(ROOT_INODE, b"l", ROOT_INODE, b"m" * 256)],
            errno.ERANGE: [lambda: md.setxattr(f.ino, b"user." + b"x" * 251, b"")],
            errno.E2BIG: [lambda: md.setxattr(f.ino, b"user.v", b"v" * 65537)],
        }
        before, queued = md.state.snapshot(), md.journal.queued
        for code, calls in refused.items():
            for call in calls:
                with pytest.raises(FsError) as info:
                    call()
                assert info.value.errno == code, (errno.errorcode[code], info.value)
        assert md.state.snapshot() == before and md.journal.queued == queued
        await md.journal.commit()
        assert await md.journal.checkpoint()  # the checkpoint holds them too
        assert (await reload(str(tmp_path))).state.snapshot() == md.state.snapshot()
    trio.run(main)
