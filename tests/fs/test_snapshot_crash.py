"""Snapshots and crashes, on real appliances, with the mount's layers in this process (no
FUSE): a crash is the pool dropped with nothing closed, stored or committed; a remount is
what ``resilfs.fs.mount`` does before serving (journal load, snapshot record recovery, leak
sweep). After each crash: the live file and the snapshot read back right, and the regions
on the appliances are exactly those the sets the journal knows name (nothing leaked)."""
import functools
import os
import stat

import pytest
import trio

from resilfs.codec import make_codec
from resilfs.fs.backing import SetBacking, set_name
from resilfs.fs.data import FileData
from resilfs.fs.errors import FsError
from resilfs.fs.journal import Journal
from resilfs.fs.journal_appliance import ApplianceJournalStore
from resilfs.fs.metadata import Metadata
from resilfs.fs.snapshots import Snapshots
from resilfs.fs.state import ROOT_INODE
from resilfs.fs.sweep import known_sets, sweep
from resilfs.sets import AppliancePool, split_clone
from resilfs.sets import membership as set_records
from resilfs.sets.errors import SetError
from resilfs.transport import connect
from tests import appliances as fixtures

launcher, appliances = fixtures.launcher, fixtures.appliances  # fixtures

pytestmark = pytest.mark.timeout(120)

OWNER = "crashfs"
MiB = 1 << 20
SET_SIZE = 8 * MiB
SIZE = 20 * MiB  # the file spans three sets


class Fs:
    """The layers of a mount on the test appliances; ``crash()`` drops them as a SIGKILL
    would (nothing closed, stored or committed)."""

    def __init__(self, pool, journal, backing, data, snapshots):
        self.pool, self.journal, self.backing = pool, journal, backing
        self.data, self.snapshots = data, snapshots
        self.md = snapshots.metadata
        self.state = journal.state

    @classmethod
    async def mount(cls, apps, secret, *, fresh: bool = False,
                    scheme: str = "mirror:2") -> "Fs":
        pool = await AppliancePool.create([a.address for a in apps],
                                          functools.partial(connect, secret=secret))
        journal = await Journal.load(ApplianceJournalStore(pool, OWNER))
        if fresh:
            Metadata.format(journal, 0, 0, set_size=SET_SIZE, scheme=scheme,
                            codec=make_codec(scheme, 64 * 1024).backend)
            await journal.commit()
        md = Metadata(journal)
        fmt = journal.state.format
        backing = SetBacking(pool, OWNER, fmt.scheme, chunk_size=fmt.chunk_size,
                             codec=fmt.codec)
        data = FileData(md, backing, fmt.set_size)
        snapshots = Snapshots(md, data, backing, journal)
        await snapshots.sets.recover()  # as mount does, before any set is opened
        await sweep(pool, OWNER, known_sets(journal.state))
        return cls(pool, journal, backing, data, snapshots)

    async def crash(self) -> None:
        await self.pool.aclose()

    async def write(self, name: bytes, data: bytes) -> int:
        node = self.md.create(ROOT_INODE, name, stat.S_IFREG | 0o644, 0, 0)
        for pos in range(0, len(data), MiB):
            await self.data.write(node.ino, pos, data[pos:pos + MiB])
        await self.journal.commit()
        return node.ino

    async def read(self, ino: int) -> bytes:
        size = self.state.inodes[ino].size
        parts = [bytes(await self.data.read(ino, pos, min(MiB, size - pos)))
                 for pos in range(0, size, MiB)]
        return b"".join(parts)

    def snapshot_top(self, name: bytes) -> int:
        return self.snapshots.by_name(name).top

    async def regions(self) -> set[tuple[str, int]]:
        """(appliance, region id) of every region of the filesystem on the appliances."""
        out = set()
        for address in self.pool.addresses:
            client = await self.pool.client(address)
            out |= {(address, r.region_id) for r in await client.regions(OWNER)}
        return out

    async def referenced(self, others: bool = False) -> set[tuple[str, int]]:
        """Regions named by the stored records of the sets the journal knows; asserts
        that every one of them has a record and (unless ``others``) that no other set
        record is on the appliances."""
        out = set()
        for set_id in known_sets(self.state):
            m, _ = await set_records.load(self.pool, OWNER, set_id)
            out |= {(x.appliance, x.region_id) for x in m.members if x.region_id}
        if not others:
            assert set(await set_records.list_sets(self.pool, OWNER)) == known_sets(self.state)
        return out


def run(apps, secret, scenario):
    trio.run(scenario, apps, secret)


async def _snapshot(fs: Fs):
    """A 20 MiB file (three sets) and a snapshot of it."""
    old = os.urandom(SIZE)
    ino = await fs.write(b"f", old)
    assert len({e[2] for e in fs.state.inodes[ino].extents}) == 3
    await fs.snapshots.create(ino, b"s")
    return ino, old


async def _overwrite(fs: Fs, ino: int) -> bytes:
    new = os.urandom(SIZE)
    for pos in range(0, SIZE, MiB):
        await fs.data.write(ino, pos, new[pos:pos + MiB])
    await fs.journal.commit()
    return new


@pytest.mark.parametrize("stored", ["nothing", "sources"])
def test_crash_before_the_records_are_stored(launcher, appliances, stored):
    """The call returned (journaled), then the daemon died before the background stored
    the records (none of them, or the sources' only): the next mount stores them from the
    journal, and the source sets never write into the snapshot's regions. (mirror:3: a
    split; a mirror:2 set is cloned.)"""
    async def main(apps, secret):
        fs = await Fs.mount(apps, secret, fresh=True, scheme="mirror:3")
        ino, old = await _snapshot(fs)
        sources = sorted(fs.state.allocator.set_sizes())
        if stored == "sources":
            for set_id in sources:
                await fs.backing.sets()[set_id].persist()
        for set_id in sources:  # what the appliances say of the sources before the crash
            m, _ = await set_records.load(fs.pool, OWNER, set_name(set_id))
            assert [x.state for x in m.members] == (
                ["ok"] * 3 if stored == "nothing" else ["ok", "ok", "failed"])
        snapsets = sorted(fs.state.snapsets)
        assert not set(await set_records.list_sets(fs.pool, OWNER)) & {
            set_name(i) for i in snapsets}
        await fs.crash()

        fs = await Fs.mount(apps, secret)
        new = await _overwrite(fs, ino)
        assert await fs.read(ino) == new
        assert await fs.read(fs.snapshot_top(b"s")) == old
        assert await fs.regions() == await fs.referenced()
        live = {r for i in sources for r in
                _regions(await set_records.load(fs.pool, OWNER, set_name(i)))}
        snap = {r for i in snapsets for r in
                _regions(await set_records.load(fs.pool, OWNER, set_name(i)))}
        assert not live & snap and (len(live), len(snap)) == (6, 3)
        await fs.crash()

    run(appliances, launcher.secret, main)


def _regions(loaded):
    m, _ = loaded
    return {(x.appliance, x.region_id) for x in m.members if x.region_id}


@pytest.mark.parametrize("scheme", ["mirror:3", "mirror:2", "parity:2+1"])
def test_crash_before_the_commit(launcher, appliances, scheme):
    """The daemon died while the snapshot was being journaled: nothing of it is visible
    after the next mount, every region is where it was, and nothing leaked (mirror:3
    splits, decided only; mirror:2 and parity clone every member, whose regions the sweep
    frees)."""
    async def main(apps, secret):
        fs = await Fs.mount(apps, secret, fresh=True, scheme=scheme)
        data = os.urandom(SIZE)
        ino = await fs.write(b"f", data)
        regions = await fs.regions()
        stuck = trio.Event()

        async def hang(batch):
            stuck.set()
            await trio.sleep_forever()

        fs.journal.store.append = hang
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.snapshots.create, ino, b"s")
            await stuck.wait()
            nursery.cancel_scope.cancel()  # the process is gone: what follows never runs
        await fs.crash()

        fs = await Fs.mount(apps, secret)
        assert fs.snapshots.by_name(b"s") is None and not fs.state.snapsets
        assert await fs.regions() == regions == await fs.referenced()
        assert await fs.read(ino) == data
        for set_id in fs.state.allocator.set_sizes():  # every member, as before
            m, _ = await set_records.load(fs.pool, OWNER, set_name(set_id))
            assert {x.state for x in m.members} == {"ok"}
        await fs.crash()

    run(appliances, launcher.secret, main)


def test_a_failed_clone_snapshot_leaves_nothing(launcher, appliances, monkeypatch):
    """A clone's record is stored before the commit; a snapshot that fails after that (here
    one set's take, after its clone) deletes that record and frees the clones: nothing is
    left for the sweep, and the file is as it was."""
    async def main(apps, secret):
        fs = await Fs.mount(apps, secret, fresh=True, scheme="parity:2+1")
        data = os.urandom(SIZE)
        ino = await fs.write(b"f", data)
        regions = await fs.regions()
        original, taken = split_clone.take, []

        async def take(snap):
            await original(snap)
            taken.append(snap)
            if len(taken) == 1:
                raise SetError("injected after the clone")

        monkeypatch.setattr(split_clone, "take", take)
        with pytest.raises(FsError):
            await fs.snapshots.create(ino, b"s")
        assert len(taken) == 3 and all(snap.method is None for snap in taken)
        assert await fs.regions() == regions
        assert set(await set_records.list_sets(fs.pool, OWNER)) == known_sets(fs.state)
        assert fs.snapshots.by_name(b"s") is None and await fs.read(ino) == data
        await fs.crash()

    run(appliances, launcher.secret, main)


def test_crash_during_a_delete_leaks_nothing(launcher, appliances):
    """The daemon died after a delete was journaled and before it freed the snapshot's
    regions: the next mount's sweep frees them and drops their records."""
    async def main(apps, secret):
        fs = await Fs.mount(apps, secret, fresh=True)
        ino, _ = await _snapshot(fs)
        new = await _overwrite(fs, ino)
        stuck = trio.Event()

        async def hang(set_id):
            stuck.set()
            await trio.sleep_forever()

        fs.backing.destroy_set = hang
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.snapshots.delete, b"s")
            await stuck.wait()
            nursery.cancel_scope.cancel()
        await fs.crash()

        fs = await Fs.mount(apps, secret)
        assert not fs.state.snapsets and fs.snapshots.by_name(b"s") is None
        assert await fs.regions() == await fs.referenced()
        assert len(await fs.regions()) == 6  # the live sets' members (cloned: all stay)
        assert await fs.read(ino) == new
        await fs.crash()

    run(appliances, launcher.secret, main)


def test_sweep_frees_only_what_no_known_set_names(launcher, appliances):
    """A region allocated and named by a record of a set the journal never heard of (a
    crashed set creation) is freed with that record; the live sets' regions stay, those
    of failed members included; a region no record names cannot be freed (no key) and
    stays; an appliance that does not answer stops the sweep before it frees anything."""
    async def main(apps, secret):
        fs = await Fs.mount(apps, secret, fresh=True)
        data = os.urandom(SIZE)
        ino = await fs.write(b"f", data)
        await fs.backing.create_set(99, SET_SIZE)  # never journaled
        client = await fs.pool.client(fs.pool.addresses[0])
        await client.alloc(MiB, OWNER)  # named by no record
        launcher.kill(apps[1])
        data = await _overwrite(fs, ino)  # members on apps[1] fail
        launcher.restart(apps[1])
        live = await fs.referenced(others=True)
        await fs.crash()

        fs = await Fs.mount(apps, secret)
        assert any(a == apps[1].address for a, _ in live)  # failed members keep theirs
        assert await fs.referenced() == live
        assert len(await fs.regions() - live) == 1  # the one with no record
        assert await fs.read(ino) == data
        await fs.backing.create_set(98, SET_SIZE)
        await fs.crash()
        launcher.kill(apps[2])
        fs = await Fs.mount(apps, secret)
        assert set_name(98) in await set_records.list_sets(fs.pool, OWNER)  # not swept
        await fs.crash()

    run(appliances, launcher.secret, main)
