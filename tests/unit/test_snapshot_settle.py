"""sets.split_clone.settle: a snapshot waits for a mirror set regaining a member only if the
set would then be split (mirror:3 and wider); a mirror:2 set is cloned, so it never waits
(trio's mock clock: no real time passes)."""
import trio

from resilfs.codec import make_codec
from resilfs.scheme import Scheme
from resilfs.sets import AppliancePool, ResiliencySet, split_clone
from resilfs.sets.membership import OK, REBUILDING, Member, Membership


def _set(copies: int) -> ResiliencySet:
    """A mirror set whose last member is being rebuilt (no I/O: nothing is connected)."""
    members = [Member(f"127.0.0.1:{7400 + i}", i + 1, 1, 1 << 20, OK, set())
               for i in range(copies)]
    members[-1].state, members[-1].dirty = REBUILDING, {0}
    scheme = f"mirror:{copies}"
    codec = make_codec(scheme, 64 << 10)
    m = Membership("fs", "data-1", Scheme.parse(scheme), codec.backend, 64 << 10, 1 << 20,
                   members)
    return ResiliencySet(AppliancePool([], None), m, codec, {})


async def test_settle_waits_only_for_sets_it_would_split(autojump_clock):
    start = trio.current_time()
    await split_clone.settle(_set(2), 60.0)
    assert trio.current_time() == start  # cloned: nothing to wait for
    s = _set(3)
    await split_clone.settle(s, 60.0)
    assert trio.current_time() - start >= 60.0  # waited for the rebuild, up to the timeout
    s.members[-1].state, s.members[-1].dirty = OK, set()
    start = trio.current_time()
    await split_clone.settle(s, 60.0)
    assert trio.current_time() == start
