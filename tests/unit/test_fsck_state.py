"""``check_state``: states made by the real metadata operations are clean, live and after a
checkpoint replay (hypothesis); each kind of damage, done to a state in memory, is found."""
import json
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.fs import journal_records
from resilfs.fs.errors import FsError
from resilfs.fs.fsck import check_state
from resilfs.fs.journal import CHECKPOINT_MAGIC, Journal, encode_checkpoint
from resilfs.fs.metadata import Metadata
from resilfs.fs.state import ROOT_INODE, State

SET = 1 << 20


def fresh() -> Metadata:
    journal = Journal(None, State())  # record() only: nothing is committed here
    Metadata.format(journal, 0, 0)
    metadata = Metadata(journal)
    metadata.add_set(1, SET)
    return metadata


def replayed(state: State) -> State:
    """The state a mount would load from a checkpoint of ``state``."""
    state.allocator.release(state.allocator.seal())
    blob = encode_checkpoint(state)
    again = State()
    for record in journal_records.decode(memoryview(blob)[len(CHECKPOINT_MAGIC):]):
        again.apply(record)
    return again


OPS = st.lists(st.tuples(st.sampled_from(["file", "dir", "link", "unlink", "rmdir", "rename",
                                          "write", "truncate"]),
                         st.integers(0, 7), st.integers(0, 7), st.integers(0, 40)),
               max_size=60)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_states_made_by_metadata_operations_are_clean(ops):
    m = fresh()
    dirs = [ROOT_INODE]
    for op, a, b, n in ops:
        parent, name = dirs[a % len(dirs)], f"n{b}".encode()
        other = dirs[b % len(dirs)]
        try:
            if op == "file":
                m.create(parent, name, stat.S_IFREG | 0o644, 0, 0)
            elif op == "dir":
                dirs.append(m.create(parent, name, stat.S_IFDIR | 0o755, 0, 0).ino)
            elif op in ("link", "write", "truncate"):
                node = m.child(parent, name)
                if op == "link":
                    m.link(node.ino, other, f"l{n}".encode())
                elif op == "write" and node.extents is not None:
                    end = node.extents.mapped_bytes
                    pieces = m.state.allocator.reserve((n + 1) * 4096)
                    m.map(node.ino, end, pieces)
                    m.written(node.ino, end + (n + 1) * 4096)
                elif op == "truncate" and node.extents is not None:
                    m.setattr(node.ino, size=n * 1000)
            elif op == "unlink":
                m.unlink(parent, name)
            elif op == "rmdir":
                m.rmdir(parent, name)
            elif op == "rename":
                m.rename(parent, name, other, f"r{n % 3}".encode())
        except FsError:
            pass
        dirs = [d for d in dirs if d in m.state.inodes and m.state.inodes[d].nlink]
        assert check_state(m.state, live=True).problems == []
    report = check_state(replayed(m.state))
    assert report.problems == [] and report.exit_code == 0


@pytest.fixture
def state() -> State:
    """/a (a file of two pages), /d/ (a directory) with /d/b (a file of one page)."""
    m = fresh()
    a = m.create(ROOT_INODE, b"a", stat.S_IFREG | 0o644, 0, 0)
    m.map(a.ino, 0, m.state.allocator.reserve(8192))
    d = m.create(ROOT_INODE, b"d", stat.S_IFDIR | 0o755, 0, 0)
    b = m.create(d.ino, b"b", stat.S_IFREG | 0o644, 0, 0)
    m.map(b.ino, 0, m.state.allocator.reserve(4096))
    assert check_state(m.state).problems == []
    return m.state


def problems(state) -> list[str]:
    report = check_state(state)
    assert report.exit_code == 1
    return report.problems


def test_extent_outside_its_set(state):
    state.inodes[2].extents.add(65536, 8192, 1, SET - 4096)
    assert ("inode 2: extent at file offset 65536 (8192 bytes at set 1 offset 1044480) ends "
            "outside the set's 1048576 bytes") in problems(state)


def test_extent_in_an_unknown_set_and_unaligned(state):
    state.inodes[2].extents.add(65536, 100, 7, 0)
    found = problems(state)
    assert "inode 2: extent at file offset 65536 (100 bytes at set 7 offset 0) is not page " \
           "aligned" in found
    assert "inode 2: extent at file offset 65536 (100 bytes at set 7 offset 0) is in a set " \
           "the metadata does not know" in found


def test_block_owned_twice(state):
    state.inodes[4].extents.add(4096, 4096, 1, 4096)  # /d/b's second page is /a's second
    assert ("set 1 bytes 4096-8192 are owned twice: by inode 2 (file offset 0) and inode 4 "
            "(file offset 4096)") in problems(state)


def test_leaked_and_doubly_free_space(state):
    state.allocator.reserve(4096)  # taken and never mapped: after a replay, a leak
    assert "set 1: bytes 12288-16384 are neither free nor used by a file (leaked)" in \
        problems(state)
    assert check_state(state, live=True).problems == []  # a write in flight holds it


def test_wrong_link_counts(state):
    state.inodes[2].nlink = 3
    state.inodes[3].nlink = 5
    found = problems(state)
    assert "inode 2 has link count 3, expected 1" in found
    assert "inode 3 has link count 5, expected 2" in found


def test_disconnected_directory_and_wrong_parent(state):
    state.inodes[ROOT_INODE].dir.remove(b"d")
    state.inodes[ROOT_INODE].nlink -= 1
    found = problems(state)
    assert "directory 3 is not connected to the root (link count 2, 0 names)" in found
    assert "inode 4 is not connected to the root (link count 1, 1 names)" in found
    state.inodes[ROOT_INODE].dir.add(b"d", 3)
    state.inodes[ROOT_INODE].nlink += 1
    state.inodes[3].parent = 2
    assert problems(state) == ["directory 3 (named b'd' in directory 1) says its parent is 2"]


def test_entry_naming_a_missing_inode(state):
    state.inodes[3].dir.add(b"ghost", 99)
    assert "directory 3: entry b'ghost' names inode 99, which does not exist" in \
        problems(state)


def test_nameless_inode_is_a_note_not_a_problem(state):
    state.inodes[3].dir.remove(b"b")
    state.inodes[4].nlink = 0
    report = check_state(state)
    assert report.exit_code == 0
    assert report.notes == ["inode 4 has no name (left open by a crash: the next mount "
                            "deletes it)"]


def test_a_long_report_fits_in_an_xattr():
    from resilfs.fs.fsck import MAX_JSON, Report
    report = Report(problems=[f"problem {i} " + "x" * 300 for i in range(1000)])
    encoded = json.dumps(report.to_json())
    assert len(encoded) <= MAX_JSON
    assert report.to_json()["problems"][-1].startswith("... and ")
    assert Report.from_json(report.to_json()).exit_code == 1
