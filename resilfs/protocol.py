"""The appliance wire protocol: frame layout, operation table, error codes, payload codecs.

Every message is a frame: a 16-byte little-endian header followed by ``length`` payload
bytes. ``docs/protocol.md`` describes every operation; this module is the single source of
the numbers. It does no I/O.

Decoding functions raise ``ProtocolViolation`` for anything malformed; they never raise
anything else for bad input, so a server can answer every bad frame with an error.

The refusals an appliance answers with are defined here, one class per error status, because
both sides use them: the appliance raises them and answers with their status; a client
raises the same class for an error reply (``error_for``). ``transport.base`` re-exports
them beside what only a client can meet (``ApplianceUnavailable``).
"""
import re
import struct
from collections.abc import Sequence

from .errors import ResilfsError

VERSION = 1

# header: payload length u32, version u8, op u8, status u16, request id u64
HEADER = struct.Struct("<IBBHQ")
HEADER_SIZE = HEADER.size

MAX_DATA = 64 * 1024 * 1024  # largest data payload of one read/write/readv/writev
MAX_FRAME = MAX_DATA + 1024 * 1024  # largest payload of any frame: data plus descriptors
MAX_CONTROL = 1024 * 1024  # largest payload of a frame that carries no bulk data
MAX_RANGES = 4096  # ranges in one vectored request
MAX_NAME = 1024  # bytes of an owner, record name or set id
MAX_RECORD = 256 * 1024  # bytes of a record value
MAX_EXTENTS = 4096  # extents of one write intent

REPLY = 0x80  # set in the op of every reply


class Op:
    HELLO = 1  # appliance -> client, unsolicited, request id 0
    AUTH = 2
    ALLOC = 3
    FREE = 4
    CLONE = 5
    LIST = 6
    LOOKUP = 7
    STAT = 8
    READ = 9
    WRITE = 10
    READV = 11
    WRITEV = 12
    RECORD_GET = 13
    RECORD_PUT = 14
    RECORD_LIST = 15
    RECORD_DELETE = 16
    INTENT_BEGIN = 17
    INTENT_END = 18
    INTENT_PENDING = 19
    SHM_TABLE = 20  # Unix socket only: the region status table's memfd
    SHM_MAP = 21  # Unix socket only: one region's memfd
    RDMA_CONNECT = 22  # exchange RC queue-pair parameters
    RDMA_REGION = 23  # a region's remote address for RDMA
    FORWARD_WRITE = 24  # write here, then update peer regions (claims 6-8)
    APPLY_DELTA = 25  # fold new data or a delta into a region (sent by a forwarding appliance)


OP_NAMES = {v: k.lower() for k, v in vars(Op).items() if not k.startswith("_")}


class Status:
    OK = 0
    AUTHENTICATION_FAILED = 1
    NO_SUCH_REGION = 2
    WRONG_REGION_KEY = 3
    OUT_OF_BOUNDS = 4
    NO_SPACE = 5
    PROTOCOL_VIOLATION = 6
    RECORD_CONFLICT = 7
    UNSUPPORTED = 8  # a valid op this appliance or this socket does not offer
    INTERNAL = 9
    FORWARD_FAILED = 10


class TransportError(ResilfsError):
    """Base of everything an operation on an appliance can fail with: a refusal
    (``ApplianceError``) or, on a client, an appliance it cannot reach
    (``transport.base.ApplianceUnavailable``)."""


class ApplianceError(TransportError):
    """The appliance refused an operation and changed nothing; ``code`` is its wire status
    (``Status.INTERNAL`` for an unexpected failure on the appliance)."""

    code = 0


class AuthenticationFailed(ApplianceError):
    """The cluster secret did not match (either side)."""

    code = Status.AUTHENTICATION_FAILED


class NoSuchRegion(ApplianceError):
    """The region does not exist (never allocated, or freed)."""

    code = Status.NO_SUCH_REGION


class WrongRegionKey(ApplianceError):
    """The region key presented does not match the region's key."""

    code = Status.WRONG_REGION_KEY


class OutOfBounds(ApplianceError):
    """The byte range is outside the region."""

    code = Status.OUT_OF_BOUNDS


class NoSpace(ApplianceError):
    """The appliance cannot allocate that much: its capacity would be exceeded."""

    code = Status.NO_SPACE


class ProtocolViolation(ApplianceError):
    """A malformed, oversized or unknown frame."""

    code = Status.PROTOCOL_VIOLATION


class RecordConflict(ApplianceError):
    """A record compare-and-set found a different generation than expected."""

    code = Status.RECORD_CONFLICT


class Unsupported(ApplianceError):
    """A well-formed operation this appliance or this kind of connection does not offer."""

    code = Status.UNSUPPORTED


class ForwardFailed(ApplianceError):
    """A forwarded write reached its own region but not every target (the message names them)."""

    code = Status.FORWARD_FAILED


ERRORS: dict[int, type[ApplianceError]] = {
    cls.code: cls for cls in (Unsupported, AuthenticationFailed, NoSuchRegion, WrongRegionKey,
                              OutOfBounds, NoSpace, ProtocolViolation, RecordConflict,
                              ForwardFailed)}


def status_of(error: ApplianceError) -> int:
    """The wire status for a refusal raised on the appliance."""
    return error.code or Status.INTERNAL


def error_for(status: int, message: str) -> ApplianceError:
    """The exception a client raises for an error reply."""
    cls = ERRORS.get(status, ApplianceError)
    error = cls(message)
    if cls is ApplianceError:
        error.code = status
    return error


def pack_header(length: int, op: int, request_id: int, status: int = 0) -> bytes:
    return HEADER.pack(length, VERSION, op, status, request_id)


def unpack_header(data) -> tuple[int, int, int, int]:
    """Return (length, op, status, request id); refuse a wrong version or oversized frame."""
    length, version, op, status, request_id = HEADER.unpack(data)
    if version != VERSION:
        raise ProtocolViolation(f"protocol version {version} is not supported (want {VERSION})")
    if length > MAX_FRAME:
        raise ProtocolViolation(f"frame of {length} bytes exceeds the maximum {MAX_FRAME}")
    return length, op, status, request_id


# -- payload codecs ------------------------------------------------------------------
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
REGION_REF = struct.Struct("<QQ")  # region id, key
RANGE = struct.Struct("<QQQQ")  # region id, key, offset, length
DATA_PREFIX = struct.Struct("<QQQ")  # region id, key, offset (READ adds a length)
READ_REQ = RANGE
REGION_DESC = struct.Struct("<QQQ")  # region id, key, size
STAT_REPLY = struct.Struct("<QQQ")  # capacity, used, regions; then appliance id string
EXTENT = struct.Struct("<QQ")
FORWARD_PREFIX = struct.Struct("<QQQI")  # region id, key, offset, bytes of the target list
APPLY_PREFIX = struct.Struct("<QQQI")  # region id, key, offset, coefficient
MAX_TARGETS = 64


class Writer:
    """Builds a payload from fixed fields and length-prefixed strings."""

    def __init__(self):
        self._parts: list[bytes] = []

    def u64(self, value: int) -> "Writer":
        self._parts.append(U64.pack(value))
        return self

    def u32(self, value: int) -> "Writer":
        self._parts.append(U32.pack(value))
        return self

    def bytes(self, value: bytes) -> "Writer":
        self._parts.append(U32.pack(len(value)))
        self._parts.append(bytes(value))
        return self

    def str(self, value: str) -> "Writer":
        return self.bytes(value.encode())

    def raw(self, value: bytes) -> "Writer":
        self._parts.append(bytes(value))
        return self

    def build(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads a payload field by field; anything short or malformed is a ProtocolViolation."""

    def __init__(self, payload):
        self._view = memoryview(payload)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        if self._pos + n > len(self._view):
            raise ProtocolViolation("payload too short")
        piece = self._view[self._pos:self._pos + n]
        self._pos += n
        return piece

    def u64(self) -> int:
        return U64.unpack(self._take(8))[0]

    def u32(self) -> int:
        return U32.unpack(self._take(4))[0]

    def bytes(self, limit: int) -> bytes:
        n = self.u32()
        if n > limit:
            raise ProtocolViolation(f"field of {n} bytes exceeds the limit {limit}")
        return bytes(self._take(n))

    def str(self, limit: int = MAX_NAME) -> str:
        try:
            return self.bytes(limit).decode()
        except UnicodeDecodeError:
            raise ProtocolViolation("string field is not UTF-8") from None

    def raw(self, n: int) -> bytes:
        return bytes(self._take(n))

    def rest(self) -> memoryview:
        piece = self._view[self._pos:]
        self._pos = len(self._view)
        return piece

    def end(self) -> None:
        if self._pos != len(self._view):
            raise ProtocolViolation("trailing bytes in payload")


def pack_ranges(ranges: Sequence[tuple[int, int, int, int]]) -> bytes:
    """Descriptors of a vectored request: count, then (region id, key, offset, length)."""
    return U32.pack(len(ranges)) + b"".join(RANGE.pack(*r) for r in ranges)


def unpack_ranges(reader: Reader) -> list[tuple[int, int, int, int]]:
    count = reader.u32()
    if count > MAX_RANGES:
        raise ProtocolViolation(f"{count} ranges exceed the limit {MAX_RANGES}")
    return [RANGE.unpack(reader._take(RANGE.size)) for _ in range(count)]


def pack_extents(extents: Sequence[tuple[int, int]]) -> bytes:
    return U32.pack(len(extents)) + b"".join(EXTENT.pack(o, n) for o, n in extents)


def unpack_extents(reader: Reader) -> list[tuple[int, int]]:
    count = reader.u32()
    if count > MAX_EXTENTS:
        raise ProtocolViolation(f"{count} extents exceed the limit {MAX_EXTENTS}")
    return [EXTENT.unpack(reader._take(EXTENT.size)) for _ in range(count)]


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); ValueError if malformed."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", address)
    if not match:
        raise ValueError(f"appliance address must be HOST:PORT, not {address!r}")
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"port {port} in {address!r} is not below 65536")
    return match.group(1) or match.group(3), port


def pack_targets(targets) -> bytes:
    """Forward targets: count, then (peer address, region id, key, coefficient) each."""
    w = Writer().u32(len(targets))
    for t in targets:
        w.str(t.region.appliance).u64(t.region.region_id).u64(t.region.key).u32(t.coefficient)
    return w.build()


def unpack_targets(reader: Reader) -> list[tuple[str, int, int, int]]:
    count = reader.u32()
    if count > MAX_TARGETS:
        raise ProtocolViolation(f"{count} forward targets exceed the limit {MAX_TARGETS}")
    targets = []
    for _ in range(count):
        address, region_id = reader.str(), reader.u64()
        key, coefficient = reader.u64(), reader.u32()
        if coefficient > 255:
            raise ProtocolViolation(f"coefficient {coefficient} is not in GF(2^8)")
        split_address_or_violation(address)
        targets.append((address, region_id, key, coefficient))
    return targets


def split_address_or_violation(address: str) -> tuple[str, int]:
    try:
        return split_address(address)
    except ValueError as e:
        raise ProtocolViolation(str(e)) from None


def shm_socket_name(port: int) -> bytes:
    """The abstract Unix socket an appliance listening on tcp ``port`` also listens on."""
    return b"\0resilfs-appliance:%d" % port
