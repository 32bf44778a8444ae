"""The extensions and their pure-Python twins agree byte for byte, errors included.

A test that needs an extension that is not built is skipped with that reason; the others
(and the twins' own checks) still run: XOR without ISA-L, for instance.
"""
import importlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.codec import make_codec, twin


def built(name: str):
    """The compiled module ``name``, or None if it is not built here."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_xor = built("resilfs._xor")
_isal = built("resilfs._isal")
needs_xor = pytest.mark.skipif(_xor is None, reason="resilfs._xor is not built")
needs_isal = pytest.mark.skipif(_isal is None, reason="resilfs._isal is not built (no ISA-L)")

sizes = st.one_of(st.integers(0, 600), st.integers(0, 40000))


def blobs(seed: int, count: int, size: int) -> list[bytes]:
    """``count`` random byte strings of ``size`` (drawn from a seed: hypothesis's own
    byte strings stay small)."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


@needs_xor
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(1, 17), size=sizes,
       accumulate=st.booleans())
def test_xor_kernel_matches_twin(seed, count, size, accumulate):
    start, *sources = blobs(seed, count + 1, size)
    ext_out, twin_out = bytearray(start), bytearray(start)
    _xor.xor_into(ext_out, sources, accumulate=accumulate)
    twin.xor_into(twin_out, sources, accumulate=accumulate)
    assert ext_out == twin_out


@needs_xor
def test_xor_kernel_takes_any_buffer_and_may_alias_out():
    a = np.arange(1000, dtype=np.uint64)
    b = bytearray(range(256)) * 31 + bytearray(64)
    out = np.zeros(8000, dtype=np.uint8)
    _xor.xor_into(out, [memoryview(a), b[:8000]])
    expected = bytearray(8000)
    twin.xor_into(expected, [a.tobytes(), bytes(b[:8000])])
    assert out.tobytes() == bytes(expected)
    _xor.xor_into(out, [out, a], accumulate=False)
    assert out.tobytes() == bytes(b[:8000])


@pytest.mark.parametrize("impl", [
    pytest.param(_xor and _xor.xor_into, marks=needs_xor, id="ext"),
    pytest.param(twin.xor_into, id="twin")])
def test_xor_kernel_refuses_bad_input_and_leaves_out_alone(impl):
    out = bytearray(b"keep")
    with pytest.raises(ValueError):
        impl(out, [b"abcd", b"abc"])
    with pytest.raises(ValueError):
        impl(out, [])
    with pytest.raises(BufferError):
        impl(b"read", [b"abcd"])
    with pytest.raises((TypeError, BufferError)):
        impl(out, [object()])
    assert out == b"keep"


@needs_isal
def test_gf_multiplication_matches_twin_everywhere():
    for a in range(256):
        assert [_isal.gf_mul(a, b) for b in range(256)] == twin.MUL_TABLE[a].tolist()
    assert [_isal.gf_inv(a) for a in range(1, 256)] == [twin.gf_inv(a) for a in range(1, 256)]
    for impl in (_isal.gf_mul, twin.gf_mul):
        with pytest.raises(ValueError):
            impl(256, 1)
    for impl in (_isal.gf_inv, twin.gf_inv):
        with pytest.raises(ValueError):
            impl(0)


@needs_isal
@pytest.mark.parametrize("k", [1, 2, 5, 16, 100])
@pytest.mark.parametrize("m", [1, 4, 20])
def test_cauchy_matrix_matches_twin(k, m):
    assert _isal.cauchy_matrix(k + m, k) == twin.cauchy_matrix(k + m, k)


@needs_isal
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_matrix_inverse_matches_twin(n, data):
    matrix = data.draw(st.binary(min_size=n * n, max_size=n * n))
    try:
        expected = twin.invert_matrix(matrix, n)
    except ValueError:
        with pytest.raises(ValueError):
            _isal.invert_matrix(matrix, n)
        return
    assert _isal.invert_matrix(matrix, n) == expected


@needs_isal
@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 16), rows=st.integers(1, 6), size=sizes, seed=st.integers(0, 2**32),
       data=st.data())
def test_tables_encode_and_update_match_twin(k, rows, size, seed, data):
    coef = data.draw(st.binary(min_size=k * rows, max_size=k * rows))
    sources = blobs(seed, k, size)
    ext_out = [bytearray(size) for _ in range(rows)]
    twin_out = [bytearray(size) for _ in range(rows)]
    _isal.Tables(k, rows, coef).encode(sources, ext_out)
    twin.Tables(k, rows, coef).encode(sources, twin_out)
    assert ext_out == twin_out
    index = data.draw(st.integers(0, k - 1))
    _isal.Tables(k, rows, coef).update(index, sources[0], ext_out)
    twin.Tables(k, rows, coef).update(index, sources[0], twin_out)
    assert ext_out == twin_out


@needs_isal
@settings(max_examples=100, deadline=None)
@given(coef=st.integers(0, 255), size=sizes, seed=st.integers(0, 2**32))
def test_gf_mad_matches_twin(coef, size, seed):
    start, delta = blobs(seed, 2, size)
    ext_out, twin_out = bytearray(start), bytearray(start)
    _isal.gf_mad(ext_out, coef, delta)
    twin.gf_mad(twin_out, coef, delta)
    assert ext_out == twin_out


@pytest.mark.parametrize("impl", [pytest.param(_isal, marks=needs_isal, id="isal"),
                                  pytest.param(twin, id="twin")])
def test_isal_helpers_refuse_bad_input(impl):
    with pytest.raises(ValueError):
        impl.Tables(2, 1, b"\x01")
    tables = impl.Tables(2, 1, b"\x01\x02")
    out = bytearray(b"keep")
    with pytest.raises(ValueError):
        tables.encode([b"abcd"], [out])
    with pytest.raises(ValueError):
        tables.encode([b"abcd", b"abc"], [out])
    with pytest.raises(ValueError):
        tables.update(2, b"abcd", [out])
    with pytest.raises(ValueError):
        impl.gf_mad(out, 3, b"abc")
    with pytest.raises(ValueError):
        impl.invert_matrix(b"\x01\x01\x01\x01", 2)
    assert out == b"keep"


@pytest.mark.parametrize("backend", [pytest.param("isal", marks=needs_isal), "zfec"])
@pytest.mark.parametrize("k, m", [(1, 1), (4, 2), (8, 3), (16, 4)])
def test_codecs_code_what_their_coding_matrix_says(k, m, backend):
    """isal's and zfec's parity equal the twin applied to their published coefficients."""
    rng = np.random.default_rng(k * m)
    data = [rng.integers(0, 256, 333, dtype=np.uint8).tobytes() for _ in range(k)]
    codec = make_codec(f"ec:{k}+{m}", 333, backend)
    expected = [bytearray(333) for _ in range(m)]
    coef = bytes(c for row in codec.coding_matrix for c in row)
    twin.Tables(k, m, coef).encode(data, expected)
    assert [bytes(c) for c in codec.encode(data)] == [bytes(e) for e in expected]
