"""Checks every client makes before a data call sends anything: a buffer as a flat byte view,
and a byte range inside its region."""
from .base import OutOfBounds, RegionHandle


def byte_view(buffer, writable: bool = False) -> memoryview:
    """``buffer`` as a one-dimensional memoryview of bytes; TypeError if ``writable`` is asked
    for and the buffer is read-only."""
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if writable and view.readonly:
        raise TypeError("read buffer must be writable")
    return view


def check_range(region: RegionHandle, offset: int, length: int) -> None:
    """OutOfBounds unless [offset, offset + length) lies inside the region."""
    if offset < 0 or offset + length > region.size:
        raise OutOfBounds(f"range {offset}+{length} is outside region {region.region_id} "
                          f"of {region.size} bytes")
