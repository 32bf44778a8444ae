"""The scrub strategy: check every stripe of a set, run by run, and optionally repair.

Each run is checked under its stripe locks (``consistency.check_run``: mirrors agree,
coding matches data). Never raises for a mismatch (it is reported); members failing
meanwhile are marked failed, and stripes too degraded to check are reported unchecked.
"""
import logging
from typing import TYPE_CHECKING

from .consistency import check_run
from .status import ScrubReport
from .stripes import contiguous

if TYPE_CHECKING:
    from .core import SetCore

log = logging.getLogger(__name__)


async def scrub(s: "SetCore", repair: bool = False) -> ScrubReport:
    """Check every stripe of the set; with ``repair`` rewrite the members that disagree."""
    report = ScrubReport(repaired=repair)
    for run in contiguous(range(s.stripes), s.run_stripes()):
        async with s.locks.hold(run):
            await check_run(s, run, repair, report)
    if report.mismatched:
        log.warning("scrub of set %s: %d stripes mismatched%s", s.set_id,
                    len(report.mismatched), " (repaired)" if repair else "")
    return report
