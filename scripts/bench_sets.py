"""Resiliency-set throughput beside the raw transport to one appliance, same invocation.

For tcp and shm: raw 1 MiB sequential write/read to one region; then for each scheme and
write mode, 1 MiB sequential writes and reads of a set; degraded read (one member's
appliance killed) against the healthy read; rebuild rate (bytes written to the
replacement per second, best of three kill-and-rebuild rounds of a set four times as
large) against the raw write.
Prints a table and, last, one JSON line with every figure and ratio, the load average
before and after (other work on the machine moves these figures more than anything) and
the copy lane's statistics (how much of the work its helper thread did).
Usage: bench_sets.py [--size MiB] [--quick]
"""
import argparse
import functools
import json
import os
import sys
import tempfile
import time

import trio

from resilfs.appliance.launcher import ApplianceLauncher
from resilfs.codec import make_codec
from resilfs.copy import copy_parallel, lane_statistics
from resilfs.sets import AppliancePool, RebuildWorker, ResiliencySet
from resilfs.transport import connect

MiB = 1 << 20
BLOCK = MiB
SCHEMES = [("mirror:2", MiB), ("mirror:3", MiB), ("parity:4+1", 256 << 10),
           ("ec:4+2", 256 << 10)]
BARS = {  # figure -> (numerator, denominator, minimum ratio); shm only
    "mirror:2 parallel write": ("shm mirror:2 parallel write", "shm raw write", 0.45),
    "ec:4+2 write": ("shm ec:4+2 parallel write", "shm raw write", 0.6),
    "degraded read (ec:4+2)": ("shm ec:4+2 degraded read", "shm ec:4+2 parallel read", 0.5),
    "degraded read (mirror:2)": ("shm mirror:2 degraded read", "shm mirror:2 parallel read",
                                 0.5),
    "rebuild (mirror:2)": ("shm mirror:2 rebuild", "shm raw write", 0.5),
    "rebuild (ec:4+2)": ("shm ec:4+2 rebuild", "shm raw write", 0.5),
}
# not bars, context: a rebuild writes memory the appliance never touched before; and the
# set paths over shm may share their copies with a second vCPU (resilfs._copy's helper
# thread) while the raw write is one memcpy: against a raw write on two lanes as well
CONTEXT = {
    "rebuild (mirror:2) vs fresh-region raw write": ("shm mirror:2 rebuild",
                                                      "shm raw write fresh region"),
    "rebuild (ec:4+2) vs fresh-region raw write": ("shm ec:4+2 rebuild",
                                                    "shm raw write fresh region"),
    "mirror:2 parallel write vs 2-lane raw write": ("shm mirror:2 parallel write",
                                                     "shm raw write 2 lanes"),
    "ec:4+2 write vs 2-lane raw write": ("shm ec:4+2 parallel write", "shm raw write 2 lanes"),
    "rebuild (mirror:2) vs 2-lane raw write": ("shm mirror:2 rebuild", "shm raw write 2 lanes"),
    "rebuild (ec:4+2) vs 2-lane raw write": ("shm ec:4+2 rebuild", "shm raw write 2 lanes"),
}


async def timed(total: int, step) -> float:
    """Bytes per second of ``step(offset)`` over ``total`` bytes in BLOCK pieces (best of 3)."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for offset in range(0, total, BLOCK):
            await step(offset)
        best = max(best, total / (time.perf_counter() - start))
    return best


async def raw(connect_one, address: str, size: int) -> dict[str, float]:
    """Raw write and read to one region (best of 3), and the first write of a fresh region
    (what a rebuild target costs: the appliance's memory is touched for the first time).
    Where the transport maps the region here (shm), also a write that copies each block on
    two lanes (``copy_parallel`` with its helper thread), as the set paths may."""
    client = await connect_one(address)
    region = await client.alloc(size, "bench")
    data = os.urandom(BLOCK)
    buf = bytearray(BLOCK)
    start = time.perf_counter()
    for offset in range(0, size, BLOCK):
        await client.write(region, offset, data)
    figures = {"raw write fresh region": size / (time.perf_counter() - start)}
    figures["raw write"] = await timed(size, lambda o: client.write(region, o, data))
    figures["raw read"] = await timed(size, lambda o: client.read_into(region, o, buf))
    if client.mapped_view(region, 0, BLOCK, writable=True) is not None:

        async def two_lanes(offset: int) -> None:
            view = client.mapped_view(region, offset, BLOCK, writable=True)
            copy_parallel([(view, data)], min_parallel=0, adaptive=False)
            await trio.lowlevel.checkpoint_if_cancelled()

        figures["raw write 2 lanes"] = await timed(size, two_lanes)
    await client.free(region)
    await client.aclose()
    return figures


async def set_figures(pool, scheme, chunk, mode, size, label, results) -> None:
    s = await ResiliencySet.create(pool, scheme, make_codec(scheme, chunk), size, "bench",
                                   f"{label}-{scheme}-{mode}", write_mode=mode)
    data = os.urandom(BLOCK)
    buf = bytearray(BLOCK)
    results[f"{label} {scheme} {mode} write"] = await timed(size, lambda o: s.write(o, data))
    results[f"{label} {scheme} {mode} read"] = await timed(size, lambda o: s.read_into(o, buf))
    await s.destroy()


REBUILDS = 3  # kill-and-rebuild rounds per scheme; the best rate is kept, as in timed()
REBUILD_SCALE = 4  # the rebuilt set is this many times --size: a 16 MiB ec:4+2 member
# rebuilds in ~5 ms over shm, which 1 ms polling would misjudge by up to half; polling at
# every scheduler turn instead would keep trio busy and slow the tcp transport's waits
POLL = 0.001  # seconds between looks at the set's state


async def until(condition) -> None:
    """Return once ``condition()`` holds, looking every POLL seconds."""
    while not condition():
        await trio.sleep(POLL)


async def degraded_and_rebuild(launcher, pool, scheme, chunk, size, label, results) -> None:
    """On a set REBUILD_SCALE times ``size``: the degraded read of ``size`` bytes with member
    0's appliance killed; then, killing members 0, 1, 2 (modulo the member count) in turn,
    the rebuild rate: bytes written to the replacement per second, from the moment the set
    is rebuilding (the replacement placed) until it is healthy again."""
    total = size * REBUILD_SCALE
    s = await ResiliencySet.create(pool, scheme, make_codec(scheme, chunk), total, "bench",
                                   f"{label}-{scheme}-degraded")
    data = os.urandom(BLOCK)
    buf = bytearray(BLOCK)
    for offset in range(0, total, BLOCK):
        await s.write(offset, data)
    best = 0.0
    for round_ in range(REBUILDS):
        victim = next(a for a in launcher.appliances
                      if a.address == s.members[round_ % len(s.members)].appliance)
        launcher.kill(victim)
        await s.read_into(0, buf)  # notices the failure
        if round_ == 0:
            results[f"{label} {scheme} degraded read"] = await timed(
                size, lambda o: s.read_into(o, buf))
        worker = RebuildWorker(replace_after=0, rate_floor=None, rate_ceiling=None)
        worker.watch(s)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            await until(lambda: s.status().rebuilding)
            start, before = time.perf_counter(), s.rebuilt_bytes
            await until(lambda: s.status().state == "healthy")
            best = max(best, (s.rebuilt_bytes - before) / (time.perf_counter() - start))
            worker.stop()
        launcher.restart(victim)
    results[f"{label} {scheme} rebuild"] = best
    await s.destroy()


async def thread_hop(results) -> None:
    """What moving an encode to a worker thread costs, against the encode itself."""
    codec = make_codec("ec:4+2", 16 << 10)
    chunks = [os.urandom(16 << 10) for _ in range(4)]
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        codec.encode(chunks)
    results["encode ec:4+2 64KiB stripe us"] = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n):
        await trio.to_thread.run_sync(codec.encode, chunks)
    results["encode in thread 64KiB stripe us"] = (time.perf_counter() - start) / n * 1e6


async def main(launcher, size: int, quick: bool) -> dict:
    results: dict[str, float] = {}
    addresses = [a.address for a in launcher.appliances]
    for label in ("tcp", "shm"):
        connect_one = functools.partial(connect, transport=label, secret=launcher.secret)
        for name, value in (await raw(connect_one, addresses[0], size)).items():
            results[f"{label} {name}"] = value
        pool = await AppliancePool.create(addresses, connect_one)
        for scheme, chunk in SCHEMES:
            for mode in ("parallel",) if quick else ("parallel", "sequential", "forward"):
                await set_figures(pool, scheme, chunk, mode, size, label, results)
        for scheme, chunk in (("mirror:2", MiB), ("ec:4+2", 256 << 10)):
            await degraded_and_rebuild(launcher, pool, scheme, chunk, size, label, results)
        await pool.aclose()
    await thread_hop(results)
    return results


def report(results: dict) -> dict:
    print(f"{'figure':45} {'MB/s':>9}  ratio to raw (same transport)")
    for name, value in results.items():
        if name.endswith(" us"):
            print(f"{name:45} {value:9.1f} us")
            continue
        label = name.split()[0]
        raw_name = f"{label} raw {'read' if 'read' in name else 'write'}"
        ratio = value / results[raw_name] if raw_name in results else None
        print(f"{name:45} {value / 1e6:9.0f}  {'' if ratio is None else f'{ratio:.2f}x'}")
    ratios = {}
    print("\nbars (shm):")
    for bar, (num, den, minimum) in BARS.items():
        ratio = results[num] / results[den]
        ratios[bar] = {"ratio": round(ratio, 3), "bar": minimum, "pass": ratio >= minimum}
        verdict = "PASS" if ratio >= minimum else "FAIL"
        print(f"  {bar:25} {ratio:5.2f}x  (bar {minimum}x)  {verdict}")
    print("context:")
    for name, (num, den) in CONTEXT.items():
        ratios[name] = {"ratio": round(results[num] / results[den], 3)}
        print(f"  {name:45} {results[num] / results[den]:5.2f}x")
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB written per figure")
    parser.add_argument("--quick", action="store_true", help="parallel mode only")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sets-") as workdir, \
            ApplianceLauncher(workdir) as launcher:
        launcher.start(7, capacity="1G")
        results = trio.run(main, launcher, args.size * MiB, args.quick)
    ratios = report(results)
    load = {"before": load_before, "after": os.getloadavg()}
    lane = lane_statistics()
    lane["ns_per_byte"] = {f"{label} {'large' if big else 'small'}": [round(x, 3) for x in v]
                           for (label, big), v in lane["ns_per_byte"].items()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    print(f"copy lane: {lane['helped']} of {lane['posted']} pieces offered to the helper "
          f"thread ran there; it was late {lane['late']} times")
    print(json.dumps({"figures_bytes_per_s": {k: round(v) for k, v in results.items()},
                      "bars": ratios, "loadavg": load, "copy_lane": lane}))
    sys.exit(0)
