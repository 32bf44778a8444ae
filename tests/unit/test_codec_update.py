"""Partial writes: updating coding chunks from the changed bytes equals a full re-encode."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilfs.codec import available_backends, gf_mad, make_codec, twin, xor_into

BACKENDS = ["mirror", "xor", *available_backends("ec")]


def scheme_for(backend: str, k: int, m: int) -> str:
    if backend == "mirror":
        return f"mirror:{m + 1}"
    if backend == "xor":
        return f"parity:{k}+1"
    return f"ec:{k}+{m}"


def partial_write(codec, rng: random.Random):
    """A stripe, and a random write into one data chunk: (data, coding, index, start, new)."""
    size = codec.chunk_size
    data = [bytearray(rng.randbytes(size)) for _ in range(codec.data_chunks)]
    coding = [bytearray(c) for c in codec.encode(data)]
    index = rng.randrange(codec.data_chunks)
    start = rng.randrange(size)
    new = rng.randbytes(rng.randint(0, size - start))
    return data, coding, index, start, new


@settings(max_examples=80, deadline=None)
@given(backend=st.sampled_from(BACKENDS), k=st.integers(1, 16), m=st.integers(1, 4),
       chunk_size=st.one_of(st.integers(1, 200), st.integers(1, 20000)),
       seed=st.integers(0, 2**32))
def test_update_equals_full_reencode(backend, k, m, chunk_size, seed):
    codec = make_codec(scheme_for(backend, k, m), chunk_size, backend)
    data, coding, index, start, new = partial_write(codec, random.Random(seed))
    end = start + len(new)
    old = bytes(data[index][start:end])
    codec.update(index, old, new, [memoryview(c)[start:end] for c in coding])
    data[index][start:end] = new
    assert coding == [bytearray(c) for c in codec.encode(data)]


@settings(max_examples=60, deadline=None)
@given(backend=st.sampled_from(BACKENDS), k=st.integers(1, 16), m=st.integers(1, 4),
       chunk_size=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_forwarded_write_with_coefficients_equals_reencode(backend, k, m, chunk_size, seed):
    """What an appliance holding one coding chunk does: coding ^= coef * (old ^ new)."""
    codec = make_codec(scheme_for(backend, k, m), chunk_size, backend)
    data, coding, index, start, new = partial_write(codec, random.Random(seed))
    end = start + len(new)
    delta = bytearray(len(new))
    xor_into(delta, [data[index][start:end], new])
    for j in range(codec.coding_chunks):
        coef = codec.coefficient(codec.data_chunks + j, index)
        gf_mad(memoryview(coding[j])[start:end], coef, delta)
    data[index][start:end] = new
    assert coding == [bytearray(c) for c in codec.encode(data)]


def test_twin_gf_mad_serves_forwarded_writes_too():
    codec = make_codec("ec:4+2", 300, available_backends("ec")[-1])
    rng = random.Random(5)
    data, coding, index, start, new = partial_write(codec, rng)
    end = start + len(new)
    delta = bytes(a ^ b for a, b in zip(data[index][start:end], new, strict=True))
    for j in range(2):
        twin.gf_mad(memoryview(coding[j])[start:end], codec.coefficient(4 + j, index), delta)
    data[index][start:end] = new
    assert coding == [bytearray(c) for c in codec.encode(data)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_of_whole_chunk_with_numpy_buffers(backend):
    np = pytest.importorskip("numpy")
    codec = make_codec(scheme_for(backend, 3, 2), 4096, backend)
    rng = np.random.default_rng(1)
    data = [rng.integers(0, 256, 4096, dtype=np.uint8) for _ in range(codec.data_chunks)]
    coding = [np.frombuffer(bytearray(c), dtype=np.uint8) for c in codec.encode(data)]
    new = rng.integers(0, 256, 4096, dtype=np.uint8)
    index = codec.data_chunks - 1
    codec.update(index, data[index], new, coding)
    data[index] = new
    assert all((c == np.frombuffer(e, np.uint8)).all()
               for c, e in zip(coding, codec.encode(data), strict=True))
