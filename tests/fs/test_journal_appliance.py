"""The appliance journal store on real appliance processes: durability, copies, compaction."""
import errno
import functools
import json
import stat
import zlib

import pytest
import trio

from resilfs.fs import journal_appliance, journal_records
from resilfs.fs.errors import FsError
from resilfs.fs.journal import Journal, JournalWorker, encode_checkpoint
from resilfs.fs.journal_appliance import SUPER, ApplianceJournalStore, JournalUnavailable
from resilfs.fs.journal_records import Op
from resilfs.fs.metadata import Metadata
from resilfs.fs.state import ROOT_INODE, State
from resilfs.sets import AppliancePool
from resilfs.transport import connect
from tests import appliances as fixtures

launcher, appliances = fixtures.launcher, fixtures.appliances  # fixtures

pytestmark = pytest.mark.timeout(120)
OWNER = "jtest"


async def open_store(apps, secret):
    pool = await AppliancePool.create([a.address for a in apps],
                                      functools.partial(connect, secret=secret))
    return pool, ApplianceJournalStore(pool, OWNER)


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


async def records_of(pool, app) -> dict[str, bytes]:
    """Every journal record one appliance holds for the test filesystem."""
    client = await pool.client(app.address)
    return {name: (await client.record_get(OWNER, name))[1]
            for name in await client.record_list(OWNER)}


async def make_hold(pool, app, image: dict[str, bytes]) -> None:
    """Make one appliance hold exactly ``image`` (what a crash or a torn write left there),
    written through the client API."""
    client = await pool.client(app.address)
    for name in await client.record_list(OWNER):
        if name not in image:
            await client.record_delete(OWNER, name)
    for name, value in image.items():
        found = await client.record_get(OWNER, name)
        await client.record_put(OWNER, name, value, found[0] if found else 0)


def names_in(journal) -> set[bytes]:
    return {name for _, name, _ in journal.state.inodes[ROOT_INODE].dir.listing()}


def test_crash_between_superblock_copies_keeps_fsynced_batches(launcher, appliances):
    """A checkpoint switched the superblock on one copy, then the client crashed. A mount
    without that copy continued the old generation and fsync'd a batch; once the copy is
    back, the next mount must not pick its newer superblock and drop that batch."""
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        md = Metadata(journal)
        md.create(ROOT_INODE, b"old", stat.S_IFREG, 0, 0)
        await journal.commit()
        assert await journal.checkpoint()
        md.create(ROOT_INODE, b"in-log", stat.S_IFREG, 0, 0)
        await journal.commit()
        before = [await records_of(pool, app) for app in appliances]
        assert await journal.checkpoint()
        after = [await records_of(pool, app) for app in appliances]
        # the crash: every copy has the new checkpoint's parts and still the old generation,
        # only the first copy has the new superblock
        for i, app in enumerate(appliances):
            crashed = {**before[i], **{n: v for n, v in after[i].items() if n != SUPER}}
            if i == 0:
                crashed[SUPER] = after[0][SUPER]
            await make_hold(pool, app, crashed)
        await pool.aclose()

        launcher.kill(appliances[0])
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        assert names_in(journal) == {b"old", b"in-log"}
        Metadata(journal).create(ROOT_INODE, b"fsynced", stat.S_IFREG, 0, 0)
        await journal.commit()  # durable on the two copies that answer
        expected = journal.state.snapshot()
        await pool.aclose()

        launcher.restart(appliances[0])
        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()
    trio.run(main)


def test_torn_copy_never_loses_a_batch(launcher, appliances):
    """Every record of one copy torn (half written): loading takes the consistent copies,
    and the first write afterwards repairs the torn one, so it can stand in for another."""
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        md = Metadata(journal)
        for i in range(20):
            md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG, 0, 0)
            if i == 10:
                await journal.commit()
                assert await journal.checkpoint()
            await journal.commit()
        md.setxattr(ROOT_INODE, b"user.big", bytes(60000))
        for i in range(5):  # a batch of several records
            md.create(ROOT_INODE, b"x" * 200 + b"%d" % i, stat.S_IFREG, 0, 0)
        await journal.commit()
        expected = journal.state.snapshot()
        torn = {n: v[:len(v) // 2] for n, v in (await records_of(pool, appliances[0])).items()}
        await make_hold(pool, appliances[0], torn)
        await pool.aclose()

        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        assert journal.state.snapshot() == expected
        Metadata(journal).create(ROOT_INODE, b"later", stat.S_IFREG, 0, 0)
        await journal.commit()
        expected = journal.state.snapshot()
        await pool.aclose()

        launcher.kill(appliances[1])  # the repaired copy stands in for a good one
        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()
    trio.run(main)


def test_failed_append_left_on_one_copy_loses_nothing(launcher, appliances):
    """An append that reached one copy only (it failed: not durable) and the durable
    retry on the other two copies at the same record numbers: loading takes the retry."""
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        await store.load()
        await store.append(journal_records.encode([(Op.NEXT, 5)]))
        for app in appliances[1:]:
            launcher.kill(app)
        with pytest.raises(JournalUnavailable):  # a batch of two records, on one copy
            await store.append(journal_records.encode([(Op.XATTR, 1, b"user.a", bytes(300_000))]))
        await pool.aclose()
        for app in appliances[1:]:
            launcher.restart(app)
        launcher.kill(appliances[0])
        pool, store = await open_store(appliances, launcher.secret)
        assert await store.load() == (None, [journal_records.encode([(Op.NEXT, 5)])])
        await store.append(journal_records.encode([(Op.NEXT, 7)]))  # durable on two copies
        await pool.aclose()
        launcher.restart(appliances[0])
        pool, store = await open_store(appliances, launcher.secret)
        assert await store.load() == (None, [journal_records.encode([(Op.NEXT, 5)]),
                                             journal_records.encode([(Op.NEXT, 7)])])
        await pool.aclose()
    trio.run(main)


def test_commits_that_keep_failing_bound_the_backlog(launcher, appliances):
    """While too few copies answer, commits fail with a clear error, records stay queued up
    to the backlog bound, then changes are refused (EIO); once the copies are back, the
    next commit stores everything and changes are accepted again."""
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        await journal.commit()
        md = Metadata(journal)
        journal.MAX_BACKLOG = 50
        for app in appliances[1:]:
            launcher.kill(app)
        for i in range(25):  # two records each
            journal.check_room()
            md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG, 0, 0)
        with pytest.raises(JournalUnavailable):
            await journal.commit()
        with pytest.raises(FsError) as info:
            journal.check_room()
        assert info.value.errno == errno.EIO and "JournalUnavailable" in str(info.value)
        for app in appliances[1:]:
            launcher.restart(app)
        with trio.fail_after(30):
            while True:  # the pool reconnects after its retry interval
                try:
                    await journal.commit()
                    break
                except JournalUnavailable:
                    await trio.sleep(0.05)
        journal.check_room()
        expected = journal.state.snapshot()
        await pool.aclose()
        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()
    trio.run(main)


def test_format1_is_read_and_rewritten_in_the_current_format(launcher, appliances):
    """Metadata written before the format had a version (format 1: a bare JSON superblock,
    bare checkpoint parts, log records of a flag byte and data) loads as it was and is
    rewritten in the current format before the first change."""
    async def main():
        state_journal = Journal(None, State())
        Metadata.format(state_journal, 0, 0)
        md = Metadata(state_journal)
        md.create(ROOT_INODE, b"in-checkpoint", stat.S_IFREG, 0, 0)
        blob = encode_checkpoint(state_journal.state)
        covered = state_journal.queued
        md.create(ROOT_INODE, b"in-log", stat.S_IFREG, 0, 0)
        batch = journal_records.encode(state_journal._queued[covered:])
        image = {SUPER: json.dumps({"generation": 3, "parts": 1}).encode(),
                 "fs-ckpt-3-0": blob, "fs-log-3-0": b"\x00" + batch[:10],
                 "fs-log-3-1": b"\x01" + batch[10:]}
        pool, store = await open_store(appliances, launcher.secret)
        for app in appliances:
            await make_hold(pool, app, image)
        journal = await Journal.load(store)
        assert store.format_version == 1
        assert journal.state.snapshot() == state_journal.state.snapshot()
        Metadata(journal).create(ROOT_INODE, b"new", stat.S_IFREG, 0, 0)
        await journal.commit()
        assert store.format_version == journal_appliance.FORMAT
        expected = journal.state.snapshot()
        for app in appliances:
            held = await records_of(pool, app)
            assert journal_appliance.Super.decode(held.pop(SUPER)) is not None
            assert all(journal_appliance.Part.decode(v) for v in held.values()), held.keys()
        await pool.aclose()
        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()
    trio.run(main)


def test_newer_format_is_refused(launcher, appliances):
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        await journal.commit()
        body = json.dumps({"format": journal_appliance.FORMAT + 1, "epoch": 9}).encode()
        newer = journal_appliance.SUPER_MAGIC + zlib.crc32(body).to_bytes(4, "little") + body
        for app in appliances:
            held = await records_of(pool, app)
            await make_hold(pool, app, {**held, SUPER: newer})
        with pytest.raises(journal_appliance.FormatTooNew, match="format 3"):
            await Journal.load(store)
        await pool.aclose()
    trio.run(main)


def test_copies_an_append_did_not_wait_for_are_finished(launcher, appliances):
    """With the worker running, an append returns once two copies stored it and the third
    finishes in the worker's nursery: when the worker ends, every copy holds every batch
    (none was abandoned), so any two copies load the same state."""
    async def main():
        pool, store = await open_store(appliances, launcher.secret)
        journal = await Journal.load(store)
        Metadata.format(journal, 0, 0)
        await journal.commit()
        md = Metadata(journal)
        worker = JournalWorker(journal, interval=600)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.run)
            for i in range(50):
                md.create(ROOT_INODE, b"f%d" % i, stat.S_IFREG, 0, 0)
                await journal.commit()
            worker.stop()
        expected = journal.state.snapshot()
        held = [await records_of(pool, app) for app in appliances]
        assert held[0] == held[1] == held[2]
        assert sum(name.startswith("fs-log-") for name in held[0]) == 51
        await pool.aclose()
        for app in appliances:  # each pair of copies alone
            launcher.kill(app)
            pool, store = await open_store(appliances, launcher.secret)
            assert (await Journal.load(store)).state.snapshot() == expected
            await pool.aclose()
            launcher.restart(app)
    trio.run(main)


def test_a_record_another_writer_keeps_changing_is_given_up_on(launcher, appliances):
    """One copy's superblock is changed by another writer between every read and put of
    ours: the store gives that copy up after a bounded number of rounds (the write counts
    as failed there; the two other copies carry it) instead of retrying for as long as the
    other writer goes on. The state loads back whole from the copies."""
    async def main():
        contested = appliances[0].address
        other = await connect(contested, secret=launcher.secret)
        raced = []

        async def connect_raced(address):
            client = await connect(address, secret=launcher.secret)
            if address == contested:
                record_get = client.record_get

                async def get_then_race(owner, name):
                    found = await record_get(owner, name)
                    if name == SUPER and found is not None:  # the other writer moves it on
                        await other.record_put(owner, name, found[1], found[0])
                        raced.append(found[0])
                    return found
                client.record_get = get_then_race
            return client

        pool = await AppliancePool.create([a.address for a in appliances], connect_raced)
        journal = await Journal.load(ApplianceJournalStore(pool, OWNER))
        Metadata.format(journal, 0, 0)
        md = Metadata(journal)
        md.create(ROOT_INODE, b"before", stat.S_IFREG, 0, 0)
        await journal.commit()
        with trio.fail_after(60):  # hang guard: retries without a bound never end
            assert await journal.checkpoint()
        assert len(raced) == journal_appliance.STORE_ATTEMPTS
        md.create(ROOT_INODE, b"after", stat.S_IFREG, 0, 0)
        await journal.commit()
        expected = journal.state.snapshot()
        await pool.aclose()
        await other.aclose()

        pool, store = await open_store(appliances, launcher.secret)
        assert (await Journal.load(store)).state.snapshot() == expected
        await pool.aclose()
    trio.run(main)
