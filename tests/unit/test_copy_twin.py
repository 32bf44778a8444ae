"""resilfs._copy and its pure-Python twin (resilfs.copy) agree byte for byte:
copies and matrix products, on this thread or shared with the helper, errors included."""
import functools
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs import copy
from resilfs.codec import available_backends, make_codec, twin

_copy = pytest.importorskip("resilfs._copy")
_isal = pytest.importorskip("resilfs._isal")

KiB = 1 << 10


def blobs(rng: random.Random, count: int, size: int) -> list[bytes]:
    return [rng.randbytes(size) for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), pairs=st.integers(0, 5), products=st.integers(0, 3),
       size=st.one_of(st.integers(0, 300), st.integers(0, 300 * KiB)),
       piece=st.sampled_from([-1, 1, 4 * KiB, 100 * KiB]), helper=st.booleans())
def test_copy_parallel_matches_twin(seed, pairs, products, size, piece, helper):
    rng = random.Random(seed)
    sources = blobs(rng, pairs, size)
    shapes = [(rng.randint(1, 8), rng.randint(1, 4)) for _ in range(products)]
    coefs = [rng.randbytes(k * rows) for k, rows in shapes]
    inputs = [blobs(rng, k, size) for k, _ in shapes]
    outs = {}
    for name, impl, tables in (("ext", _copy.copy_parallel, _isal.Tables),
                               ("twin", copy._copy_parallel, twin.Tables)):
        dsts = [bytearray(size) for _ in sources]
        outputs = [[bytearray(size) for _ in range(rows)] for _, rows in shapes]
        calls: list[int] = []
        impl(list(zip(dsts, sources, strict=True)), then=functools.partial(calls.append, 1),
             min_parallel=0 if helper else 1 << 62, piece=piece, adaptive=not helper,
             products=[(tables(k, rows, coef), srcs, out) for (k, rows), coef, srcs, out
                       in zip(shapes, coefs, inputs, outputs, strict=True)])
        assert calls == [1]
        outs[name] = (dsts, outputs)
    assert outs["ext"] == outs["twin"]
    assert outs["ext"][0] == [bytearray(b) for b in sources]


def test_products_without_a_lane_kernel_run_on_this_thread():
    """A twin Tables in the ext: computed by its own encode, same bytes."""
    rng = random.Random(1)
    data = blobs(rng, 3, 5000)
    coef = rng.randbytes(6)
    ext_out, twin_out = [bytearray(5000) for _ in range(2)], [bytearray(5000) for _ in range(2)]
    _copy.copy_parallel([], products=[(twin.Tables(3, 2, coef), data, twin_out),
                                      (_isal.Tables(3, 2, coef), data, ext_out)],
                        min_parallel=0)
    assert ext_out == twin_out


@pytest.mark.parametrize("impl", [_copy.copy_parallel, copy._copy_parallel])
def test_copy_parallel_refuses_bad_input(impl):
    tables = (_isal if impl is _copy.copy_parallel else twin).Tables(2, 1, b"\x01\x02")
    out = bytearray(b"keep")
    with pytest.raises(ValueError):
        impl([(out, b"abc")])
    with pytest.raises(ValueError):  # wrong source count
        impl([], products=[(tables, [b"abcd"], [out])])
    with pytest.raises(ValueError):  # unequal lengths
        impl([], products=[(tables, [b"abcd", b"abc"], [out])])
    with pytest.raises((TypeError, BufferError)):  # read-only output
        impl([], products=[(tables, [b"abcd", b"abcd"], [b"read"])])
    assert out == b"keep"


def test_ext_refuses_before_doing_anything():
    """One bad product: no copy made, no other product computed."""
    dst = bytearray(b"keep")
    good, bad = bytearray(4), bytearray(4)
    tables = _isal.Tables(2, 1, b"\x01\x02")
    with pytest.raises(ValueError):
        _copy.copy_parallel([(dst, b"abcd")], products=[(tables, [b"abcd", b"efgh"], [good]),
                                                        (tables, [b"abcd"], [bad])])
    assert dst == b"keep" and good == bytearray(4)


def test_the_helper_runs_pieces_and_is_counted():
    rng = random.Random(2)
    data = blobs(rng, 4, 4 << 20)
    out = [bytearray(4 << 20)]
    tables = _isal.Tables(4, 1, b"\x01\x02\x03\x04")
    before = _copy.lane_statistics()
    for _ in range(20):  # the helper may be late (a busy vCPU): it then sits some out
        _copy.copy_parallel([], products=[(tables, data, out)], min_parallel=0,
                            adaptive=False)
    after = _copy.lane_statistics()
    assert after.keys() == copy._lane_statistics().keys()
    assert after["posted"] >= before["posted"] and after["helped"] >= before["helped"]
    assert after["helped"] - before["helped"] <= after["posted"] - before["posted"]
    expected = [bytearray(4 << 20)]
    twin.Tables(4, 1, b"\x01\x02\x03\x04").encode([d[:4096] for d in data],
                                                  [memoryview(expected[0])[:4096]])
    assert out[0][:4096] == expected[0][:4096]


def test_lane_kernel_keeps_its_tables_alive():
    kernel = _isal.Tables(2, 1, b"\x01\x02").lane_kernel  # the Tables is gone but for this
    del kernel  # releasing it must not crash (it owns a reference)


@pytest.mark.parametrize("k, m", [(2, 1), (4, 2), (8, 3)])
def test_codec_kernel_computes_what_encode_and_decode_do(k, m):
    codec = make_codec(f"ec:{k}+{m}", 4 * KiB, "isal")
    rng = random.Random(k * m)
    data = blobs(rng, k, 4 * KiB)
    stripe = data + [bytes(c) for c in codec.encode(data)]
    for lost in itertools.combinations(range(k + m), m):
        sources = [i for i in range(k + m) if i not in lost][:k]
        kernel = codec.kernel(sources, lost)
        part = slice(100, 3000)  # any byte range of the chunks codes alike
        out = [bytearray(2900) for _ in lost]
        kernel.encode([stripe[i][part] for i in sources], out)
        assert out == [bytearray(stripe[i][part]) for i in lost]


def test_codec_kernel_refuses_what_cannot_be_computed():
    codec = make_codec("ec:4+2", 4 * KiB, "isal")
    for sources, outputs in (([0, 1, 2], [3]), ([0, 1, 2, 3], [3]), ([0, 1, 2, 2], [4]),
                             ([0, 1, 2, 3], []), ([0, 1, 2, 9], [4]), ([0, 1, 2, 3], [4, 4])):
        with pytest.raises(ValueError):
            codec.kernel(sources, outputs)
    assert make_codec("mirror:2", 4 * KiB).kernel([0], [1]) is None
    if "zfec" in available_backends("ec"):  # backends without kernels: encode/decode
        assert make_codec("ec:4+2", 4 * KiB, "zfec").kernel(range(4), [4, 5]) is None
