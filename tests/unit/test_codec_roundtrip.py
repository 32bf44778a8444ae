"""Every backend: encode, lose any set of at most M chunks, decode byte-exactly."""
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.codec import available_backends, make_codec

EC_BACKENDS = available_backends("ec")
EVERY_BACKEND = ["mirror", "xor", *EC_BACKENDS]


def scheme_for(backend: str, k: int, m: int) -> str:
    """The scheme a backend implements closest to K+M (mirror: K=1, xor: M=1)."""
    if backend == "mirror":
        return f"mirror:{m + 1}"
    if backend == "xor":
        return f"parity:{k}+1"
    return f"ec:{k}+{m}"


def stripe(codec, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    data = [rng.randbytes(codec.chunk_size) for _ in range(codec.data_chunks)]
    return data + [bytes(c) for c in codec.encode(data)]


def check_every_loss(codec, chunks: list[bytes]) -> int:
    """Decode every subset of at most M lost chunks; return how many patterns were checked."""
    n = codec.total_chunks
    patterns = 0
    for count in range(codec.coding_chunks + 1):
        for lost in itertools.combinations(range(n), count):
            available = {i: chunks[i] for i in range(n) if i not in lost}
            decoded = codec.decode(available, range(n))
            assert sorted(decoded) == list(range(n))
            for i in range(n):
                assert bytes(decoded[i]) == chunks[i], (codec.scheme, codec.backend, lost, i)
            patterns += 1
    return patterns


@pytest.mark.parametrize("backend", EC_BACKENDS)
@pytest.mark.parametrize("chunk_size", [67, 128])
def test_ec_every_shape_every_loss(backend, chunk_size):
    """K in 1..16, M in 1..4, odd and even chunks: all 35300 loss patterns of each shape."""
    total = 0
    for k in range(1, 17):
        for m in range(1, 5):
            codec = make_codec(f"ec:{k}+{m}", chunk_size, backend)
            total += check_every_loss(codec, stripe(codec, k * 10 + m))
    assert total == 35300 + 64


@pytest.mark.parametrize("chunk_size", [1, 67, 4096])
def test_parity_every_shape_every_loss(chunk_size):
    for k in range(1, 17):
        codec = make_codec(f"parity:{k}+1", chunk_size)
        assert codec.backend == "xor"
        assert check_every_loss(codec, stripe(codec, k)) == k + 2


@pytest.mark.parametrize("chunk_size", [1, 67, 4096])
def test_mirror_every_shape_every_loss(chunk_size):
    for copies in range(2, 6):
        codec = make_codec(f"mirror:{copies}", chunk_size)
        check_every_loss(codec, stripe(codec, copies))


@settings(max_examples=40, deadline=None)
@given(backend=st.sampled_from(EVERY_BACKEND), k=st.integers(1, 16), m=st.integers(1, 4),
       chunk_size=st.one_of(st.integers(1, 300), st.integers(1, 70000)),
       seed=st.integers(0, 2**32))
def test_random_shapes_and_sizes(backend, k, m, chunk_size, seed):
    """Odd and even sizes around the SIMD widths, every backend, a random lost set."""
    codec = make_codec(scheme_for(backend, k, m), chunk_size, backend)
    chunks = stripe(codec, seed)
    rng = random.Random(seed)
    lost = rng.sample(range(codec.total_chunks), rng.randint(0, codec.coding_chunks))
    available = {i: chunks[i] for i in range(codec.total_chunks) if i not in lost}
    out = {i: bytearray(chunk_size) for i in lost}
    decoded = codec.decode(available, sorted(lost), out=out)
    for i in lost:
        assert bytes(decoded[i]) == chunks[i]
        assert decoded[i].obj is out[i] or bytes(out[i]) == chunks[i]


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_encode_into_preallocated_buffers(backend):
    codec = make_codec(scheme_for(backend, 5, 3), 1000, backend)
    chunks = stripe(codec, 7)
    out = [bytearray(1000) for _ in range(codec.coding_chunks)]
    result = codec.encode(chunks[:codec.data_chunks], out=out)
    assert [bytes(r) for r in result] == chunks[codec.data_chunks:]
    assert [bytes(o) for o in out] == chunks[codec.data_chunks:]


def test_mirror_encode_and_decode_do_not_copy():
    codec = make_codec("mirror:3", 16)
    data = bytearray(b"0123456789abcdef")
    copies = codec.encode([data])
    decoded = codec.decode({2: data}, [0, 1])
    data[0] = ord("X")
    assert all(bytes(c)[0] == ord("X") for c in copies)
    assert all(bytes(v)[0] == ord("X") for v in decoded.values())


@pytest.mark.parametrize("backend", EVERY_BACKEND)
def test_available_wanted_chunks_are_views(backend):
    codec = make_codec(scheme_for(backend, 3, 2), 32, backend)
    chunks = [bytearray(c) for c in stripe(codec, 3)]
    decoded = codec.decode(dict(enumerate(chunks)), [0])
    assert decoded[0].obj is chunks[0]


@settings(max_examples=60, deadline=None)
@given(backend=st.sampled_from(EVERY_BACKEND), k=st.integers(1, 16), m=st.integers(1, 4),
       data=st.data())
def test_minimum_to_decode_suffices(backend, k, m, data):
    codec = make_codec(scheme_for(backend, k, m), 24, backend)
    n = codec.total_chunks
    lost = set(data.draw(st.sets(st.integers(0, n - 1), max_size=codec.coding_chunks)))
    wanted = data.draw(st.sets(st.integers(0, n - 1), min_size=1))
    available = set(range(n)) - lost
    needed = codec.minimum_to_decode(wanted, available)
    assert needed <= available
    assert wanted & available <= needed
    assert len(needed) <= max(len(wanted), codec.data_chunks + len(wanted & available))
    chunks = stripe(codec, k + m)
    decoded = codec.decode({i: chunks[i] for i in needed}, sorted(wanted))
    assert {i: bytes(v) for i, v in decoded.items()} == {i: chunks[i] for i in wanted}


@pytest.mark.parametrize("backend", [b for b in ("xor", "isal") if b in EVERY_BACKEND])
def test_encode_into_buffers_takes_the_kernel_path(backend, monkeypatch):
    """Valid buffers go straight to the kernel (which checks them) without Python checks."""
    from resilfs.codec import mds

    codec = make_codec(scheme_for(backend, 4, 2), 4096, backend)
    chunks = stripe(codec, 9)
    monkeypatch.setattr(mds, "as_chunks", None)
    out = [bytearray(4096) for _ in range(codec.coding_chunks)]
    assert [bytes(c) for c in codec.encode(chunks[:4], out=out)] == chunks[4:]


@pytest.mark.parametrize("backend", EC_BACKENDS)
@pytest.mark.parametrize("scheme", ["ec:200+55", "ec:1+254", "ec:254+1"])
def test_widest_sets_decode(backend, scheme):
    codec = make_codec(scheme, 100, backend)
    chunks = stripe(codec, 1)
    lost = random.Random(2).sample(range(codec.total_chunks), codec.coding_chunks)
    available = {i: chunks[i] for i in range(codec.total_chunks) if i not in lost}
    decoded = codec.decode(available, lost)
    assert all(bytes(decoded[i]) == chunks[i] for i in lost)
