"""Striping geometry: offsets round-trip, ranges map to exact pieces, splits do not copy."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.codec import CodecError
from resilfs.codec.geometry import (
    Piece,
    file_offset,
    locate,
    map_range,
    member_offset,
    split_chunks,
    stripes_in_range,
)

shapes = st.tuples(st.integers(1, 16), st.integers(1, 5000))


@settings(max_examples=300, deadline=None)
@given(shape=shapes, offset=st.integers(0, 2**40))
def test_locate_and_file_offset_round_trip(shape, offset):
    k, size = shape
    stripe, chunk, in_chunk = locate(offset, k, size)
    assert 0 <= chunk < k and 0 <= in_chunk < size
    assert file_offset(stripe, chunk, in_chunk, k, size) == offset
    assert member_offset(stripe, in_chunk, size) == stripe * size + in_chunk


@settings(max_examples=300, deadline=None)
@given(shape=shapes, offset=st.integers(0, 2**32), length=st.integers(0, 200000))
def test_map_range_covers_the_range_exactly(shape, offset, length):
    k, size = shape
    pieces = map_range(offset, length, k, size)
    assert sum(p.length for p in pieces) == length
    position = 0
    for piece in pieces:
        assert isinstance(piece, Piece)
        assert piece.buffer_offset == position
        assert 0 < piece.length and piece.chunk_offset + piece.length <= size
        assert file_offset(piece.stripe, piece.chunk, piece.chunk_offset, k, size) == \
            offset + position
        position += piece.length
    assert [p.stripe for p in pieces] == sorted(p.stripe for p in pieces)
    assert sorted({p.stripe for p in pieces}) == list(stripes_in_range(offset, length, k, size))


def test_map_range_example():
    assert map_range(5, 20, 2, 8) == [
        Piece(0, 0, 5, 3, 0), Piece(0, 1, 0, 8, 3), Piece(1, 0, 0, 8, 11), Piece(1, 1, 0, 1, 19)]


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 16), size=st.integers(1, 300))
def test_split_chunks_are_views(count, size):
    buffer = bytearray(count * size)
    chunks = split_chunks(buffer, count, size)
    assert [c.nbytes for c in chunks] == [size] * count
    for i, chunk in enumerate(chunks):
        chunk[0] = i + 1
    assert [buffer[i * size] for i in range(count)] == list(range(1, count + 1))


@pytest.mark.parametrize("call", [
    lambda: locate(-1, 4, 64),
    lambda: locate(0, 0, 64),
    lambda: locate(0, 4, 0),
    lambda: locate(1.5, 4, 64),
    lambda: file_offset(0, 4, 0, 4, 64),
    lambda: file_offset(0, -1, 0, 4, 64),
    lambda: file_offset(0, 0, 64, 4, 64),
    lambda: file_offset(-1, 0, 0, 4, 64),
    lambda: member_offset(0, 64, 64),
    lambda: map_range(0, -1, 4, 64),
    lambda: map_range(-5, 1, 4, 64),
    lambda: stripes_in_range(0, -1, 4, 64),
    lambda: split_chunks(bytearray(100), 2, 64),
    lambda: split_chunks("text", 1, 4),
    lambda: split_chunks(bytearray(128), 0, 64),
])
def test_bad_geometry_input_raises(call):
    with pytest.raises(CodecError):
        call()
