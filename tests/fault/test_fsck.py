"""``resilfs fsck`` on real filesystems: clean ones pass, metadata damaged on purpose is found.

Damage is done with the product's own pieces, as a bug or a stray client would: a journal
batch appended through ``ApplianceJournalStore`` (records that replay but break an
invariant), a set record rewritten on one appliance, a member region freed.
"""
import json
import os
import stat

import pytest
import trio

from resilfs.cli.fsck import check_offline
from resilfs.fs import cluster as clusterfile
from resilfs.fs.journal_appliance import ApplianceJournalStore
from resilfs.fs.journal_records import Op, encode
from resilfs.sets.membership import RECORD_PREFIX, Membership, record_name
from resilfs.transport.base import RegionHandle
from tests.fs.conftest import make_cluster
from tests.fs.mounting import run_cli

OWNER = "testfs"  # the name tests.fs.mounting gives the filesystem


@pytest.fixture
def fs(tmp_path):
    """A mirror:2 filesystem on 3 appliances (1 MiB sets) holding a few files, a directory
    and a hard link, cleanly unmounted."""
    c = make_cluster(tmp_path, count=3, mkfs_args=("--set-size", "1M"))
    try:
        c.mount()
        root = c.mountpoint
        os.mkdir(os.path.join(root, "d"))
        for i in range(3):
            with open(os.path.join(root, "d" if i else "", f"f{i}"), "wb") as f:
                f.write(os.urandom(20000 + i * 70000))
        os.link(os.path.join(root, "f0"), os.path.join(root, "d", "link"))
        assert c.mounts[-1].unmount() == 0, c.mounts[-1].log_tail()
        yield c
    finally:
        c.close()
        c.launcher.close()


def offline(c) -> tuple[int, list[str], list[str]]:
    report = trio.run(check_offline, clusterfile.load(c.cluster))
    return report.exit_code, report.problems, report.unchecked


def inodes_by_name(c) -> dict[str, int]:
    """Inode numbers of the files, read through a mount (then unmounted again)."""
    c.mount()
    try:
        names = {}
        for top, dirs, files in os.walk(c.mountpoint):
            for name in dirs + files:
                path = os.path.join(top, name)
                names[os.path.relpath(path, c.mountpoint)] = os.lstat(path).st_ino
        return names
    finally:
        assert c.mounts[-1].unmount() == 0


def append_batch(c, records) -> None:
    """Append one journal batch of ``records`` to the filesystem's metadata."""
    async def go():
        pool = await clusterfile.load(c.cluster).pool()
        try:
            store = ApplianceJournalStore(pool, OWNER)
            await store.load()
            await store.append(encode(records))
        finally:
            await pool.aclose()
    trio.run(go)


async def with_clients(c, job):
    pool = await clusterfile.load(c.cluster).pool()
    try:
        return await job(pool)
    finally:
        await pool.aclose()


def set_copies(c, set_id: str = "data-1") -> dict[str, tuple[int, bytes]]:
    async def job(pool):
        found = {}
        for address in pool.addresses:
            got = await (await pool.client(address)).record_get(OWNER, record_name(set_id))
            if got is not None:
                found[address] = got
        return found
    return trio.run(with_clients, c, job)


def age_member_copy(c, set_id: str) -> tuple[str, Membership, Membership]:
    """Put the set's record one epoch back on its first member's appliance, as a save cut
    short there leaves it; (that appliance, the older record, the newest record)."""
    copies = set_copies(c, set_id)
    newest = Membership.from_bytes(next(iter(copies.values()))[1])
    member = newest.members[0].appliance
    generation, value = copies[member]
    old = Membership.from_bytes(value)
    old.epoch -= 1
    async def job(pool):
        await (await pool.client(member)).record_put(OWNER, record_name(set_id),
                                                     old.to_bytes(), generation)
    trio.run(with_clients, c, job)
    return member, old, newest


# -- clean ----------------------------------------------------------------------------------
def test_clean_filesystem_is_clean_offline_and_online(fs):
    r = run_cli("fsck", fs.cluster)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "clean" in r.stdout
    fs.mount()
    r = run_cli("fsck", "--online", fs.mountpoint)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("fsck", "--online", "--json", fs.mountpoint)
    report = json.loads(r.stdout)
    assert report["problems"] == [] and report["exit"] == 0 and report["inodes"] == 5


# -- damaged metadata ----------------------------------------------------------------------
def test_wrong_link_count_is_found(fs):
    ino = inodes_by_name(fs)["d/f1"]
    append_batch(fs, [(Op.DIRENT, 1, b"stray-name", ino)])  # a name without its link count
    code, problems, _ = offline(fs)
    assert code == 1
    assert f"inode {ino} has link count 1, expected 2" in problems
    r = run_cli("fsck", fs.cluster)
    assert r.returncode == 1
    assert f"problem: inode {ino} has link count 1, expected 2" in r.stdout
    assert "1 problems found" in r.stdout


def test_disconnected_directory_is_found(fs):
    d = inodes_by_name(fs)["d"]
    # a rename no validation would allow: d into itself; d and everything in it hang loose
    append_batch(fs, [(Op.RENAME, 1, b"d", d, b"loop", 0)])
    code, problems, _ = offline(fs)
    assert code == 1
    assert any(p.startswith(f"directory {d} is not connected to the root") for p in problems)


def test_extent_outside_its_set_and_block_owned_twice_are_found(fs):
    names = inodes_by_name(fs)
    # the set's record says 1 MiB; a SET record that shrinks it forgets what is used,
    # so the next file takes bytes f0 already owns, and f2's extent now ends outside it
    t = 1
    append_batch(fs, [
        (Op.SET, 1, 65536),
        (Op.INODE, 100, stat.S_IFREG | 0o644, 0, 0, 0, 4096, t, t, t, 0, None),
        (Op.LINK, 1, b"thief", 100, t),
        (Op.MAP, 100, 0, 4096, 1, 0),
    ])
    code, problems, _ = offline(fs)
    assert code == 1
    assert any("owned twice" in p and "inode 100" in p for p in problems), problems
    assert any(p.startswith(f"inode {names['d/f2']}: extent") and "ends outside the set's "
               "65536 bytes" in p for p in problems), problems
    assert "set data-1: its record says 1048576 bytes, the metadata 65536" in problems


def test_free_space_used_by_a_file_is_found(fs):
    f0 = inodes_by_name(fs)["f0"]
    # SET again with the right size: every byte free again, while the files still use them
    append_batch(fs, [(Op.SET, 1, 1 << 20)])
    code, problems, _ = offline(fs)
    assert code == 1
    assert any(f"are free but used by inode {f0}" in p for p in problems), problems


def test_witnesses_that_disagree_are_found(fs):
    copies = set_copies(fs)
    address, (generation, value) = sorted(copies.items())[0]
    m = Membership.from_bytes(value)
    m.members[0].dirty = {3}  # same epoch, different contents
    async def job(pool):
        await (await pool.client(address)).record_put(OWNER, record_name("data-1"),
                                                      m.to_bytes(), generation)
    trio.run(with_clients, fs, job)
    code, problems, _ = offline(fs)
    assert code == 1
    assert any(p.startswith(f"set data-1: the witnesses disagree about epoch {m.epoch}")
               for p in problems), problems


def test_stale_member_record_is_found(fs):
    member, old, newest = age_member_copy(fs, "data-1")
    code, problems, _ = offline(fs)
    assert code == 1
    assert (f"set data-1: member 0 on {member} is not failed but holds epoch {old.epoch}, "
            f"not the newest ({newest.epoch})") in problems


def test_a_record_copy_left_at_an_older_epoch_is_repaired_by_the_next_mount(fs):
    """A save cut short by a crash leaves a member's copy of a set record an epoch behind.
    A snapshot's set is never opened again by a mount, so nothing saved it anew and fsck
    kept finding it (the parity:2+1 soak); the mount's sweep now writes the newest copy
    over it, and fsck is clean after the next mount."""
    before = trio.run(with_clients, fs, _record_names)
    fs.mount()
    os.setxattr(fs.mountpoint, "user.resilfs.snapshot", b"s1")
    assert fs.mounts[-1].unmount() == 0, fs.mounts[-1].log_tail()
    snapshot_records = sorted(trio.run(with_clients, fs, _record_names) - before)
    assert snapshot_records, "the snapshot made no set of its own"
    set_id = snapshot_records[0][len(RECORD_PREFIX):]
    member, _, newest = age_member_copy(fs, set_id)
    code, problems, _ = offline(fs)
    assert code == 1 and any("not the newest" in p for p in problems), problems
    fs.mount()
    assert fs.mounts[-1].unmount() == 0, fs.mounts[-1].log_tail()
    assert offline(fs) == (0, [], [])
    assert Membership.from_bytes(set_copies(fs, set_id)[member][1]).epoch == newest.epoch


async def _record_names(pool) -> set[str]:
    """The names of the set records on any appliance."""
    names = set()
    for address in pool.addresses:
        names.update(n for n in await (await pool.client(address)).record_list(OWNER)
                     if n.startswith(RECORD_PREFIX))
    return names


def test_missing_member_region_is_found(fs):
    m = Membership.from_bytes(next(iter(set_copies(fs).values()))[1])
    gone = m.members[1]
    async def job(pool):
        await (await pool.client(gone.appliance)).free(
            RegionHandle(gone.appliance, gone.region_id, gone.size, gone.key))
    trio.run(with_clients, fs, job)
    code, problems, _ = offline(fs)
    assert code == 1
    assert (f"set data-1: member 1 (region {gone.region_id} on {gone.appliance}) does not "
            f"exist") in problems


def test_missing_set_record_is_found(fs):
    async def job(pool):
        for address in pool.addresses:
            await (await pool.client(address)).record_delete(OWNER, record_name("data-1"))
    trio.run(with_clients, fs, job)
    code, problems, _ = offline(fs)
    assert code == 1
    assert "set data-1: no appliance holds its membership record" in problems


def test_journal_that_does_not_replay_is_a_problem(fs):
    append_batch(fs, [(Op.UNLINK, 1, b"no-such-name", 0)])
    r = run_cli("fsck", fs.cluster)
    assert r.returncode == 1
    assert "problem: the metadata journal does not replay" in r.stdout


# -- what cannot be checked ----------------------------------------------------------------
def test_unreachable_appliance_is_not_checked_not_a_problem(fs):
    fs.launcher.kill(fs.apps[2])
    r = run_cli("fsck", fs.cluster)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"not checked: appliance {fs.apps[2].address} did not answer" in r.stdout


def test_bad_arguments_say_so(fs, tmp_path):
    r = run_cli("fsck", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "No such file or directory" in r.stderr
    assert r.stdout == ""
    r = run_cli("fsck", "--online", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("resilfs fsck: ")


def test_the_tests_fs_fixture_fails_on_damage(fs):
    """What ``scrub_and_fsck`` (tests/fs/conftest.py) runs at the end of every fs test finds
    damage online and offline."""
    from tests.fs.conftest import _findings
    ino = inodes_by_name(fs)["d/f1"]
    append_batch(fs, [(Op.DIRENT, 1, b"stray-name", ino)])
    fs.mount()
    found = _findings(fs)
    assert f"fsck --online: inode {ino} has link count 1, expected 2" in found
    assert f"fsck: inode {ino} has link count 1, expected 2" in found
