"""Pure logic of the resiliency-set layer: run lists, stripe locks, intents, records."""
import pytest
import trio
import trio.testing

from resilfs.scheme import Scheme
from resilfs.sets.intents import IntentTracker
from resilfs.sets.locks import StripeLocks
from resilfs.sets.membership import FAILED, OK, Member, Membership
from resilfs.sets.stripes import contiguous, from_runs, to_runs


def test_runs_round_trip():
    stripes = {0, 1, 2, 7, 9, 10}
    assert to_runs(stripes) == [[0, 3], [7, 8], [9, 11]]
    assert from_runs(to_runs(stripes)) == stripes
    with pytest.raises(ValueError):
        from_runs([[3, 3]])


def test_contiguous_splits_at_gaps_and_limit():
    assert list(contiguous({5, 1, 2, 3, 4, 9}, 3)) == [range(1, 4), range(4, 6), range(9, 10)]
    assert list(contiguous(set(), 4)) == []


def test_membership_record_round_trip():
    m = Membership("fs", "seg-1", Scheme.parse("ec:4+2"), "isal", 65536, 1 << 20,
                   [Member(f"127.0.0.1:{7400 + i}", i + 1, 1000 + i, 65536) for i in range(6)],
                   epoch=7)
    m.members[2].state = FAILED
    m.members[2].dirty = {1, 2, 3}
    back = Membership.from_bytes(m.to_bytes())
    assert back.scheme == m.scheme and back.epoch == 7 and back.size == 1 << 20
    assert [x.to_json() for x in back.members] == [x.to_json() for x in m.members]
    assert back.members[0].usable(1) and not back.members[2].usable(5)
    with pytest.raises(ValueError):
        Membership.from_bytes(b'{"format": 1}')


async def test_stripe_locks_serialize_same_stripe_only(autojump_clock):
    locks = StripeLocks()
    order = []

    async def hold(name, stripes, delay):
        async with locks.hold(stripes):
            order.append(f"{name}+")
            await trio.sleep(delay)
            order.append(f"{name}-")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a", range(0, 2), 0.05)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "b", range(1, 3), 0.0)  # overlaps: waits for a
        nursery.start_soon(hold, "c", range(5, 6), 0.0)  # disjoint: runs now
    assert order.index("c-") < order.index("a-") < order.index("b+")
    assert not any(locks.locked(s) for s in range(6))


async def test_cancelled_lock_acquire_holds_nothing(autojump_clock):
    locks = StripeLocks()
    await locks.acquire(range(3, 4))
    with trio.move_on_after(0.01):
        await locks.acquire(range(0, 5))  # takes 0..2, then waits for 3
    assert not any(locks.locked(s) for s in (0, 1, 2, 4))
    locks.release([3])


async def test_intents_open_once_per_granule_and_end_in_batches(autojump_clock):
    begun, ended = [], []

    async def begin(intent_id, extents):
        begun.append((intent_id, extents))

    async def end(ids):
        ended.extend(ids)

    tracker = IntentTracker(1000, begin, end, granule=4, linger=0.1, max_open=8)
    token = await tracker.enter(range(0, 6))  # granules 0 and 1
    assert [e for _, e in begun] == [[(0, 4000)], [(4000, 4000)]]
    tracker.leave(token)
    tracker.leave(await tracker.enter(range(2, 3)))  # granule 0 is open: no new begin
    assert len(begun) == 2
    await tracker.end_idle()
    assert ended == []  # not idle long enough
    await trio.sleep(0.15)
    await tracker.end_idle()
    assert sorted(ended) == sorted(i for i, _ in begun) and tracker.open_count == 0


async def test_failed_begin_is_raised_to_every_waiter_and_not_left_open():
    gate = trio.Event()

    async def begin(intent_id, extents):
        await gate.wait()
        raise RuntimeError("no member")

    async def end(ids):
        raise AssertionError("nothing to end")

    tracker = IntentTracker(1000, begin, end, granule=4)
    errors = []

    async def enter():
        try:
            await tracker.enter(range(0, 1))
        except RuntimeError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(enter)
        nursery.start_soon(enter)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert len(errors) == 2 and tracker.open_count == 0
    await tracker.end_idle(everything=True)


def test_member_states():
    m = Member("a:1", 1, 2, 3)
    assert m.state == OK and m.usable(0)
    m.dirty.add(0)
    assert not m.usable(0) and m.usable(1)


def test_scratch_reuses_and_stays_bounded():
    from resilfs.sets.scratch import MIN_SIZE, Scratch
    cache = Scratch(limit=4 * MIN_SIZE)
    a = cache.take(MIN_SIZE)
    cache.give(a)
    assert cache.take(MIN_SIZE) is a
    cache.give(bytearray(10))  # small: not kept
    cache.give(*[bytearray(MIN_SIZE) for _ in range(6)])
    assert cache.held == 4 * MIN_SIZE
