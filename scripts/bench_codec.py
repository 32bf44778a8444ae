"""Codec throughput: encode and decode MB/s per scheme, backend and chunk size.

Beside each figure, baselines from the same run: a plain memcpy of the same bytes, numpy's
XOR of the same buffers and raw zfec. Throughput counts the stripe's data bytes (K chunks)
per second; decode rebuilds the first M data chunks from the others. Every figure is the
median of several timed samples into preallocated buffers (the machine is noisy). Prints a
table, the bars' verdicts, and last one JSON line with every figure and ratio. Exits 0
unless the benchmark itself fails; a missed bar is reported, not an error.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import zfec

from resilfs.codec import available_backends, make_codec
from resilfs.scheme import Scheme

KIB = 1024
CHUNKS = {"64KiB": 64 * KIB, "256KiB": 256 * KIB, "1MiB": 1024 * KIB}
CASES = [("mirror:3", "mirror"), ("parity:4+1", "xor"), ("ec:4+2", "isal"), ("ec:4+2", "zfec"),
         ("ec:8+3", "isal"), ("ec:8+3", "zfec")]
BASELINES = ("memcpy", "numpy_xor", "zfec_encode", "zfec_decode")


def measure(fns: dict, nbytes: int, samples: int, sample_seconds: float) -> dict[str, float]:
    """Median MB/s of each of ``fns`` moving ``nbytes`` a call.

    Samples are interleaved (one batch of each function in turn, ``samples`` times) so that
    the noise of a shared machine falls on every figure alike and ratios stay fair.
    """
    calls = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(sample_seconds / max(time.perf_counter() - start, 1e-7)))
    rates = {name: [] for name in fns}
    for _ in range(samples):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            rates[name].append(nbytes * calls[name] / (time.perf_counter() - start) / 1e6)
    return {name: statistics.median(r) for name, r in rates.items()}


def random_chunks(rng, count: int, size: int) -> list[np.ndarray]:
    return [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(count)]


def baselines(rng, k: int, m: int, size: int) -> dict:
    """memcpy, numpy XOR and raw zfec over the same K chunks of ``size`` bytes."""
    src = random_chunks(rng, k, size)
    dst = random_chunks(rng, k, size)
    acc = np.empty(size, dtype=np.uint8)

    def memcpy():
        for s, d in zip(src, dst, strict=True):
            np.copyto(d, s)

    def numpy_xor():
        if k == 1:
            np.copyto(acc, src[0])
            return
        np.bitwise_xor(src[0], src[1], out=acc)
        for s in src[2:]:
            np.bitwise_xor(acc, s, out=acc)

    blocks = [s.tobytes() for s in src]
    encoder = zfec.Encoder(k, k + m)
    decoder = zfec.Decoder(k, k + m)
    coding_numbers = list(range(k, k + m))
    numbers = list(range(m, k + m))
    have = [(blocks + encoder.encode(blocks, coding_numbers))[i] for i in numbers]
    return {"memcpy": memcpy, "numpy_xor": numpy_xor,
            "zfec_encode": lambda: encoder.encode(blocks, coding_numbers),
            "zfec_decode": lambda: decoder.decode(have, numbers)}


def codec_calls(rng, scheme: str, backend: str, size: int) -> dict:
    """Encode into preallocated buffers; decode the first M data chunks from the rest."""
    codec = make_codec(scheme, size, backend)
    k, m = codec.data_chunks, codec.coding_chunks
    data = random_chunks(rng, k, size)
    out = [np.empty(size, dtype=np.uint8) for _ in range(m)]
    codec.encode(data, out=out)
    chunks = data + out
    lost = list(range(m)) if k > 1 else list(range(1, m + 1))
    available = {i: chunks[i] for i in range(k + m) if i not in lost}
    rebuilt = {i: np.empty(size, dtype=np.uint8) for i in lost}
    return {f"encode {scheme} {backend}": lambda: codec.encode(data, out=out),
            f"decode {scheme} {backend}": lambda: codec.decode(available, lost, out=rebuilt)}


def main(args=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7, help="timed batches per figure")
    parser.add_argument("--seconds", type=float, default=0.02, help="length of one batch")
    opts = parser.parse_args(args)
    rng = np.random.default_rng(42)
    have = set(available_backends())
    for scheme, backend in CASES:
        if backend not in have:
            print(f"skipping {scheme} {backend}: backend not available", file=sys.stderr)
    results, base = [], {}
    for label, size in CHUNKS.items():
        shapes = {}
        for scheme, backend in CASES:
            if backend in have:
                parsed = Scheme.parse(scheme)
                shapes.setdefault((parsed.data_chunks, parsed.coding_chunks), []).append(
                    (scheme, backend))
        for (k, m), cases in shapes.items():
            fns = baselines(rng, k, m, size)
            for scheme, backend in cases:
                fns.update(codec_calls(rng, scheme, backend, size))
            rates = measure(fns, k * size, opts.samples, opts.seconds)
            b = base[f"K{k}+{m} {label}"] = {n: rates[n] for n in BASELINES}
            for scheme, backend in cases:
                for op in ("encode", "decode"):
                    rate = rates[f"{op} {scheme} {backend}"]
                    results.append({
                        "name": f"{op} {scheme} {backend} {label}", "op": op, "scheme": scheme,
                        "backend": backend, "chunk": size, "mb_s": round(rate),
                        "vs_memcpy": round(rate / b["memcpy"], 3),
                        "vs_numpy_xor": round(rate / b["numpy_xor"], 3),
                        f"vs_zfec_{op}": round(rate / b[f"zfec_{op}"], 2)})
    print_table(results, base)
    bars = check_bars(results, base)
    for bar in bars:
        print(f"{'PASS' if bar['pass'] else 'FAIL'}  {bar['name']}: {bar['ratio']:.2f}x "
              f"(bar {bar['threshold']}x)")
    rounded = {key: {n: round(v) for n, v in b.items()} for key, b in base.items()}
    print(json.dumps({"results": results, "baselines": rounded, "bars": bars}))
    return 0


def print_table(results: list[dict], base: dict) -> None:
    print(f"{'benchmark':34} {'MB/s':>9} {'x memcpy':>9} {'x np XOR':>9} {'x zfec':>8}")
    for r in results:
        zf = r.get(f"vs_zfec_{r['op']}")
        print(f"{r['name']:34} {r['mb_s']:9} {r['vs_memcpy']:9.2f} {r['vs_numpy_xor']:9.2f} "
              f"{zf:8.2f}")
    print()
    print(f"{'baseline (same bytes)':34} {'memcpy':>9} {'np XOR':>9} {'zfec enc':>9} "
          f"{'zfec dec':>9}")
    for key, b in base.items():
        print(f"{key:34} {b['memcpy']:9.0f} {b['numpy_xor']:9.0f} {b['zfec_encode']:9.0f} "
              f"{b['zfec_decode']:9.0f}")
    print()


def check_bars(results: list[dict], base: dict) -> list[dict]:
    """The issue's bars, one verdict per chunk size where the bar is per size."""
    def find(op, scheme, backend, label):
        name = f"{op} {scheme} {backend} {label}"
        return next((r for r in results if r["name"] == name), None)

    bars = []
    for label in CHUNKS:
        xor = find("encode", "parity:4+1", "xor", label)
        if xor:
            bars.append(bar(f"parity:4+1 encode {label} vs numpy XOR", xor["vs_numpy_xor"], 1.0))
        isal = find("encode", "ec:4+2", "isal", label)
        if isal:
            bars.append(bar(f"isal ec:4+2 encode {label} vs raw zfec", isal["vs_zfec_encode"], 10))
    isal = find("encode", "ec:4+2", "isal", "1MiB")
    if isal:
        bars.append(bar("isal ec:4+2 encode 1MiB vs memcpy", isal["vs_memcpy"], 0.5))
    return bars


def bar(name: str, ratio: float, threshold: float) -> dict:
    return {"name": name, "ratio": ratio, "threshold": threshold, "pass": ratio >= threshold}


if __name__ == "__main__":
    sys.exit(main())
