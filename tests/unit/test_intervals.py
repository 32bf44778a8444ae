"""Intervals against a model: a Python set of the offsets it should contain."""
from hypothesis import given
from hypothesis import strategies as st

from resilfs.fs.intervals import Intervals

ranges = st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda t: (t[0], t[0] + t[1]))


def offsets(pairs) -> set[int]:
    return {i for lo, hi in pairs for i in range(lo, hi)}


@given(st.lists(ranges, max_size=30), st.lists(ranges, max_size=5), ranges)
def test_intervals_match_a_set_of_offsets(added, more, query):
    iv, model = Intervals(), set()
    for lo, hi in added:
        iv.add(lo, hi)
        model |= set(range(lo, hi))
    iv.update(Intervals(more))
    model |= offsets(more)
    pairs = list(iv)
    assert offsets(pairs) == model
    assert all(lo < hi for lo, hi in pairs)
    assert all(a[1] < b[0] for a, b in zip(pairs, pairs[1:], strict=False))  # merged
    assert iv.total() == len(model) and len(iv) == len(pairs) and bool(iv) == bool(model)
    lo, hi = query
    inside = set(range(lo, hi)) & model
    assert offsets(iv.within(lo, hi)) == inside
    assert offsets(iv.gaps(lo, hi)) == set(range(lo, hi)) - model
    assert iv.covers(lo, hi) == (inside == set(range(lo, hi)))


def test_adjacent_ranges_merge():
    iv = Intervals([(0, 4096), (8192, 12288)])
    iv.add(4096, 8192)
    assert list(iv) == [(0, 12288)] and iv.covers(0, 12288) and not iv.covers(0, 12289)
