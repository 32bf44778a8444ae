"""Bad input to codecs: a clear exception and untouched outputs, never garbage."""
import pytest

from resilfs.codec import (
    BackendUnavailable,
    CodecError,
    NotEnoughChunks,
    available_backends,
    default_backend,
    make_codec,
    rs_isal,
)
from resilfs.scheme import InvalidScheme, Scheme

BACKENDS = {"mirror": "mirror:3", "xor": "parity:3+1",
            **{b: "ec:3+2" for b in available_backends("ec")}}


@pytest.fixture(params=sorted(BACKENDS))
def codec(request):
    return make_codec(BACKENDS[request.param], 8, request.param)


@pytest.mark.parametrize("scheme", ["ec:0+2", "ec:4+-1", "ec:200+56", "parity:4+2", "mirror:1",
                                    "ec:4+0", "raid6"])
def test_bad_shapes_are_refused(scheme):
    with pytest.raises(InvalidScheme):
        make_codec(scheme, 64)


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, "64", True, None])
def test_bad_chunk_sizes_are_refused(chunk_size):
    with pytest.raises(CodecError):
        make_codec("ec:4+2", chunk_size)


def test_backends_are_part_of_the_format():
    with pytest.raises(BackendUnavailable, match="unknown codec backend 'jerasure'"):
        make_codec("ec:4+2", 64, "jerasure")
    with pytest.raises(CodecError, match="does not implement mirror"):
        make_codec("mirror:3", 64, "zfec")
    with pytest.raises(CodecError, match="does not implement ec"):
        make_codec("ec:4+2", 64, "xor")


def test_backend_choice():
    assert available_backends("mirror") == ["mirror"]
    assert available_backends("parity") == ["xor"]
    assert available_backends("ec")[-1] == "zfec"
    assert default_backend("ec") == available_backends("ec")[0]
    assert make_codec("ec:4+2", 64).backend == default_backend("ec")
    with pytest.raises(CodecError, match="unknown scheme kind"):
        default_backend("raid")


def test_missing_isal_is_reported_not_replaced(monkeypatch):
    monkeypatch.setattr(rs_isal, "_isal", None)
    with pytest.raises(BackendUnavailable, match="isal.*libisal-dev"):
        make_codec(Scheme.parse("ec:4+2"), 64, "isal")


def test_isal_chunk_size_limit():
    if "isal" not in available_backends():
        pytest.skip("ISA-L is not built here")
    with pytest.raises(CodecError, match="at most"):
        make_codec("ec:4+2", 2**31, "isal")


def stripe(codec):
    data = [bytes([i + 1]) * 8 for i in range(codec.data_chunks)]
    return data + [bytes(c) for c in codec.encode(data)]


def test_encode_refuses_wrong_counts_and_sizes(codec):
    k, m = codec.data_chunks, codec.coding_chunks
    out = [bytearray(b"untouchd") for _ in range(m)]
    bad_inputs = [
        [b"x" * 8] * (k + 1),
        [b"x" * 8] * (k - 1) + [b"x" * 7],
        [b"x" * 8] * (k - 1) + [b"x" * 9],
        [b"x" * 8] * (k - 1) + [object()],
        b"x" * 8 * k,
        None,
    ]
    for data in bad_inputs:
        with pytest.raises(CodecError):
            codec.encode(data, out=out)
    good = [b"x" * 8] * k
    for bad_out in ([bytearray(8)] * (m + 1), [bytearray(7)] * m, [bytes(8)] * m,
                    [memoryview(bytearray(16))[::2]] * m):
        with pytest.raises(CodecError):
            codec.encode(good, out=bad_out)
    assert all(o == b"untouchd" for o in out)


def test_decode_refuses_bad_chunks(codec):
    chunks = stripe(codec)
    n = codec.total_chunks
    everything = dict(enumerate(chunks))
    for bad in ({**everything, n: chunks[0]}, {**everything, -1: chunks[0]},
                {**everything, "0": chunks[0]}, {**everything, 0: chunks[0][:7]}):
        with pytest.raises(CodecError):
            codec.decode(bad, [0])
    with pytest.raises(CodecError):
        codec.decode(everything, [n])
    with pytest.raises(CodecError):
        codec.decode(list(chunks), [0])
    out = bytearray(7)
    with pytest.raises(CodecError):
        codec.decode({i: chunks[i] for i in range(1, n)}, [0], out={0: out})


def test_too_few_chunks_raise_not_enough_chunks(codec):
    chunks = stripe(codec)
    k = codec.data_chunks
    few = {i: chunks[i] for i in range(1, k)} if k > 1 else {}
    with pytest.raises(NotEnoughChunks, match=f"need {k} of"):
        codec.decode(few, [0])
    with pytest.raises(NotEnoughChunks):
        codec.minimum_to_decode({0}, set(few))
    with pytest.raises(CodecError):
        codec.minimum_to_decode({codec.total_chunks}, set(range(codec.total_chunks)))


def test_update_refuses_bad_input(codec):
    m = codec.coding_chunks
    coding = [bytearray(b"untouchd") for _ in range(m)]
    for index, old, new, cod in [
        (codec.data_chunks, b"a", b"b", [c[:1] for c in coding]),
        (-1, b"a", b"b", [memoryview(c)[:1] for c in coding]),
        (0, b"ab", b"b", [memoryview(c)[:1] for c in coding]),
        (0, b"a", b"b", [memoryview(c)[:2] for c in coding]),
        (0, b"a", b"b", [memoryview(c)[:1] for c in coding] + [bytearray(1)]),
        (0, b"a", b"b", [bytes(1)] * m),
        (0, b"a" * 9, b"b" * 9, [bytearray(9)] * m),
        (0, b"a", b"b", bytearray(1)),
    ]:
        with pytest.raises(CodecError):
            codec.update(index, old, new, cod)
    assert all(c == b"untouchd" for c in coding)


def test_coefficient_refuses_unknown_chunks(codec):
    k, m = codec.data_chunks, codec.coding_chunks
    assert codec.coefficient(k, 0) in range(1, 256)
    for coding_index, data_index in [(k - 1, 0), (k + m, 0), (k, k), (k, -1)]:
        with pytest.raises(CodecError):
            codec.coefficient(coding_index, data_index)
