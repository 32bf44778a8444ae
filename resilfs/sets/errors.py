"""Exceptions of the resiliency-set layer; each message is meant for a user."""
from contextlib import contextmanager

from ..errors import ResilfsError
from ..transport.base import ApplianceUnavailable, TransportError


class SetError(ResilfsError):
    """Base class of everything the resiliency-set layer raises."""


class SetUnavailable(SetError):
    """More members are lost than the set's scheme tolerates: the data cannot be served.

    Raised instead of ever returning wrong data. A write that raises it may have reached some
    members; the range's contents are then undefined until enough members return.
    """


class SetNotFound(SetError):
    """No reachable appliance holds a membership record for this set."""


class SetConflict(SetError):
    """The membership record was changed by another client (compare-and-set failed)."""


class NoPlacement(SetError):
    """Not enough distinct live appliances with free space to place (or replace) members."""


def set_error(what: str, error: TransportError) -> SetError:
    """The set error for a transport failure: SetUnavailable for ApplianceUnavailable,
    SetError for any other; ``what`` first in the message."""
    cls = SetUnavailable if isinstance(error, ApplianceUnavailable) else SetError
    return cls(f"{what}: {error}")


@contextmanager
def from_transport(what: str):
    """Raise the transport failures of the block as set errors (``set_error``), so the
    layers above handle one family. (Hot paths use try/except with ``set_error``: this
    costs a few calls even when nothing fails.)"""
    try:
        yield
    except TransportError as e:
        raise set_error(what, e) from e
