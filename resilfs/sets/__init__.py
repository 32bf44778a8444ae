"""Resiliency sets: regions on distinct appliances kept redundant by a codec.

The filesystem layer uses ``AppliancePool`` (shared connections), ``ResiliencySet``
(create/open/read_into/write/status/scrub/close), ``list_sets`` (the sets of an owner)
and one ``RebuildWorker`` per mount. See docs/sets.md.
"""
from .errors import NoPlacement, SetConflict, SetError, SetNotFound, SetUnavailable
from .membership import list_sets
from .pool import AppliancePool
from .rebuild import RebuildWorker
from .resiliency import WRITE_MODES, ResiliencySet
from .status import RebuildProgress, ScrubReport, SetStatus

__all__ = [
    "WRITE_MODES", "AppliancePool", "NoPlacement", "RebuildProgress", "RebuildWorker",
    "ResiliencySet", "ScrubReport", "SetConflict", "SetError", "SetNotFound", "SetStatus",
    "SetUnavailable", "list_sets",
]
