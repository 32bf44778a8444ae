"""The appliance journal store on real appliance processes: durability, copies, compaction."""
import functools
import stat

import pytest
import trio

from resilfs.fs.journal import Journal
from resilfs.fs.journal_appliance import ApplianceJournalStore, JournalUnavailable
from resilfs.fs.metadata import Metadata
from resilfs.fs.state import ROOT_INODE
from resilfs.sets import AppliancePool
from resilfs.transport import connect
from tests import appliances as fixtures

launcher, appliances = fixtures.launcher, fixtures.appliances  # fixtures

pytestmark = pytest.mark.timeout(120)


async def open_store(apps, secret):
    pool = await AppliancePool.create([a.address for a in apps],
                                      functools.partial(connect, secret=secret))
    return pool, ApplianceJournalStore(pool, "jtest")


def test_batches_checkpoints_and_a_lost_copy(launcher, appliances):
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        md = Metadata(journal)
        for i in range(200):
            md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG | 0o644, 0, 0)
            if i % 50 == 0:
                await journal.commit()
        md.setxattr(ROOT_INODE, b"user.big", bytes(60000))
        for i in range(10):  # batches larger than one record
            md.create(ROOT_INODE, b"x" * 200 + b"%d" % i, stat.S_IFREG, 0, 0)
        await journal.commit()
        assert await journal.checkpoint()
        md.unlink(ROOT_INODE, b"f7")
        await journal.commit()
        expected = journal.state.snapshot()
        await pool.aclose()

        launcher.kill(appliances[1])  # one copy gone: loads and appends still work
        pool, store = await open_store(appliances, launcher.secret)
        loaded = await Journal.load(store)
        assert loaded.state.snapshot() == expected
        Metadata(loaded).create(ROOT_INODE, b"after", stat.S_IFREG, 0, 0)
        await loaded.commit()
        expected = loaded.state.snapshot()
        await pool.aclose()

        launcher.restart(appliances[1])  # it missed a batch: the others fill in
        launcher.kill(appliances[0])
        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()

        launcher.kill(appliances[2])  # two of three copies gone: refuse, never guess
        pool, store = await open_store(appliances, launcher.secret)
        with pytest.raises(JournalUnavailable):
            await Journal.load(store)
        await pool.aclose()
    trio.run(main)
