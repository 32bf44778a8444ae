"""resilfs._stripe and its pure-Python twin agree exactly: same results, same errors."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.codec import CodecError, geometry, twin

_stripe = pytest.importorskip("resilfs._stripe")

BIG = 2**50
chunk_sizes = st.one_of(st.integers(1, 17), st.integers(1, 2**20).map(lambda n: n | 1),
                        st.sampled_from([512, 4096, 65536, 1 << 20]))
data_chunks = st.one_of(st.integers(1, 16), st.sampled_from([1, 2, 3, 4, 8, 255]))


@st.composite
def shapes_and_offsets(draw):
    """(K, chunk size, offset): offsets anywhere up to 2**50, often on or next to a chunk
    or stripe boundary."""
    k, cs = draw(data_chunks), draw(chunk_sizes)
    unit = draw(st.sampled_from([cs, k * cs]))
    offset = draw(st.one_of(
        st.integers(0, BIG),
        st.integers(0, BIG // unit).map(lambda n: n * unit),
        st.integers(1, BIG // unit).map(lambda n: n * unit - 1),
        st.integers(0, BIG // unit).map(lambda n: n * unit + 1),
        st.just(0)))
    return k, cs, offset


@st.composite
def lengths(draw, cs):
    """0, boundary-sized or random lengths; at most ~130 chunks' worth (bounded piece count)."""
    return draw(st.one_of(st.just(0), st.integers(1, 3), st.integers(0, 130 * cs),
                          st.integers(1, 130).map(lambda n: n * cs),
                          st.integers(1, 130).map(lambda n: n * cs + 1)))


def outcome(func, *args):
    """The result of ``func(*args)``, or the (type, message) of what it raised."""
    try:
        return "ok", func(*args)
    except Exception as exc:  # every outcome is compared, errors included
        return "raised", type(exc), str(exc)


def test_geometry_uses_the_extension():
    assert geometry.HAVE_STRIPE_EXT
    assert geometry.map_range is _stripe.map_range and geometry.locate is _stripe.locate
    assert geometry.Piece is twin.Piece


@settings(max_examples=500, deadline=None)
@given(data=st.data(), shape=shapes_and_offsets())
def test_map_range_and_stripes_match_twin(data, shape):
    k, cs, offset = shape
    length = data.draw(lengths(cs))
    pieces = _stripe.map_range(offset, length, k, cs)
    assert pieces == twin.map_range(offset, length, k, cs)
    assert all(type(p) is twin.Piece for p in pieces)
    assert _stripe.stripes_in_range(offset, length, k, cs) == \
        twin.stripes_in_range(offset, length, k, cs)


@settings(max_examples=500, deadline=None)
@given(shape=shapes_and_offsets())
def test_locate_file_offset_member_offset_match_twin(shape):
    k, cs, offset = shape
    where = _stripe.locate(offset, k, cs)
    assert type(where) is tuple and where == twin.locate(offset, k, cs)
    stripe, chunk, in_chunk = where
    assert _stripe.file_offset(stripe, chunk, in_chunk, k, cs) == offset == \
        twin.file_offset(stripe, chunk, in_chunk, k, cs)
    assert _stripe.member_offset(stripe, in_chunk, cs) == twin.member_offset(stripe, in_chunk, cs)


# Past the fast path (2**62 and up, results over 63 bits) the ext hands over to the twin.
@pytest.mark.parametrize("offset", [2**62 - 1, 2**62, 2**63 - 1, 2**63, 2**64 + 7, 2**100])
@pytest.mark.parametrize("k, cs", [(1, 1), (3, 7), (16, 65536), (2, 2**61 + 1)])
def test_huge_values_match_twin(offset, k, cs):
    for length in (0, 1, cs + 1):
        assert _stripe.map_range(offset, length, k, cs) == twin.map_range(offset, length, k, cs)
        assert _stripe.stripes_in_range(offset, length, k, cs) == \
            twin.stripes_in_range(offset, length, k, cs)
    stripe, chunk, in_chunk = _stripe.locate(offset, k, cs)
    assert (stripe, chunk, in_chunk) == twin.locate(offset, k, cs)
    assert _stripe.file_offset(stripe, chunk, in_chunk, k, cs) == offset
    assert _stripe.member_offset(2**62 - 1, in_chunk, cs) == \
        twin.member_offset(2**62 - 1, in_chunk, cs)


values = st.one_of(
    st.integers(-2**64, 2**64), st.integers(-3, 3), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["1", b"1", [1]]),
    st.integers(0, 100).map(np.int64))


@settings(max_examples=500, deadline=None)
@given(args=st.tuples(values, values, values, values, values))
def test_any_input_same_outcome(args):
    """Random, mostly bad arguments: the same result or the same error and message."""
    for name, arity in (("locate", 3), ("file_offset", 5), ("member_offset", 3),
                        ("map_range", 4), ("stripes_in_range", 4)):
        a = args[:arity]
        if name == "map_range" and all(isinstance(v, int) for v in a) and a[1] > 10**4:
            continue  # a valid but huge length: too many pieces to build twice
        ext, ref = outcome(getattr(_stripe, name), *a), outcome(getattr(twin, name), *a)
        assert ext == ref, (name, a)
        assert ext[0] == "ok" or ext[1] is CodecError


@pytest.mark.parametrize("name, args", [
    ("locate", (-1, 4, 64)), ("locate", (0, 0, 64)), ("locate", (0, 4, 0)),
    ("locate", (1.5, 4, 64)), ("locate", (np.int64(3), 4, 64)), ("locate", (None, 4, 64)),
    ("locate", (-2**70, 4, 64)), ("locate", (0, -2**70, 64)),
    ("file_offset", (0, 4, 0, 4, 64)), ("file_offset", (0, -1, 0, 4, 64)),
    ("file_offset", (0, 0, 64, 4, 64)), ("file_offset", (-1, 0, 0, 4, 64)),
    ("file_offset", (2**70, 2**62, 0, 4, 64)),
    ("member_offset", (0, 64, 64)), ("member_offset", (0, -1, 64)),
    ("member_offset", (0, 0, 0)), ("member_offset", (-1, 0, 64)),
    ("map_range", (0, -1, 4, 64)), ("map_range", (-5, 1, 4, 64)), ("map_range", (0, 1, 0, 64)),
    ("map_range", (0, 1, 4, 0)), ("map_range", (0, 1.0, 4, 64)), ("map_range", (0, 1, 4, "64")),
    ("stripes_in_range", (0, -1, 4, 64)), ("stripes_in_range", (0, 0, 4, -64)),
    ("stripes_in_range", (0.0, 0, 4, 64)),
])
def test_bad_input_raises_the_same_error(name, args):
    with pytest.raises(CodecError) as ext_error:
        getattr(_stripe, name)(*args)
    with pytest.raises(CodecError) as twin_error:
        getattr(twin, name)(*args)
    assert str(ext_error.value) == str(twin_error.value)
