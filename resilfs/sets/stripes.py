"""Sets of stripe numbers: the dirty bitmaps of members, stored as sorted run lists."""
from collections.abc import Iterable, Iterator


def to_runs(stripes: Iterable[int]) -> list[list[int]]:
    """Compress stripe numbers into sorted ``[first, stop)`` runs (for JSON records)."""
    runs: list[list[int]] = []
    for s in sorted(stripes):
        if runs and runs[-1][1] == s:
            runs[-1][1] = s + 1
        else:
            runs.append([s, s + 1])
    return runs


def from_runs(runs: Iterable[Iterable[int]]) -> set[int]:
    """The inverse of ``to_runs``; raises ValueError on a malformed run."""
    stripes: set[int] = set()
    for first, stop in runs:
        if not 0 <= first < stop:
            raise ValueError(f"bad stripe run [{first}, {stop})")
        stripes.update(range(first, stop))
    return stripes


def contiguous(stripes: Iterable[int], limit: int) -> Iterator[range]:
    """Split stripe numbers into ascending ranges of consecutive stripes, at most ``limit`` long."""
    run_first = run_stop = None
    for s in sorted(stripes):
        if run_first is not None and s == run_stop and s - run_first < limit:
            run_stop = s + 1
            continue
        if run_first is not None:
            yield range(run_first, run_stop)
        run_first, run_stop = s, s + 1
    if run_first is not None:
        yield range(run_first, run_stop)
