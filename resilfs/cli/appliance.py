"""Run a memory appliance: lend this host's RAM to resilfs clients."""
import argparse
import fcntl
import logging
import os
import re
import signal
import sys
import uuid

import trio

from ..appliance.intent_log import IntentLog
from ..appliance.metrics import Metrics
from ..appliance.record_store import RecordStore
from ..appliance.server import Appliance
from ..appliance.store import RegionStore
from ..auth import SecretFileError, load_secret
from ..protocol import shm_socket_name, split_address
from ..transport import rdma

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:7400"
DEFAULT_CAPACITY = "1G"
DEFAULT_SECRET_FILE = os.path.expanduser("~/.config/resilfs/secret")
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class UsageError(Exception):
    """A bad argument; the message is one line for the user."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` -> (host, port); UsageError if malformed."""
    try:
        return split_address(text)
    except ValueError:
        raise UsageError(f"{what} must be HOST:PORT with a port below 65536, not {text!r}") \
            from None


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``4GiB``, ``1g`` -> bytes; UsageError if malformed or zero."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"capacity must be a positive size like 512M or 4G, not {text!r}")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="resilfs appliance", description=__doc__)
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"tcp address to serve (default {DEFAULT_LISTEN}); the shm transport "
                        "uses the abstract Unix socket @resilfs-appliance:PORT")
    p.add_argument("--capacity", default=DEFAULT_CAPACITY, metavar="SIZE",
                   help=f"bytes to lend at most, e.g. 512M, 4G (default {DEFAULT_CAPACITY})")
    p.add_argument("--secret-file", default=DEFAULT_SECRET_FILE, metavar="PATH",
                   help="the cluster secret, a file of mode 0600 (default %(default)s)")
    p.add_argument("--persist-dir", metavar="DIR",
                   help="keep regions, records and intents as files here (e.g. under "
                        "/dev/shm) so a restarted appliance finds them again")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p


def _lock_persist_dir(path: str) -> tuple[int, str]:
    """Create and lock the persist dir; return (lock fd, stable appliance id)."""
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise UsageError(f"cannot use persist dir {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"persist dir {path} is in use by another appliance") from None
    id_path = os.path.join(path, "appliance-id")
    try:
        with open(id_path) as f:
            appliance_id = f.read().strip()
    except FileNotFoundError:
        appliance_id = uuid.uuid4().hex
        with open(id_path + ".tmp", "w") as f:
            f.write(appliance_id + "\n")
        os.replace(id_path + ".tmp", id_path)
    return fd, appliance_id


async def _run(opts, listen, capacity, metrics_address, secret, appliance_id) -> None:
    store = RegionStore(capacity, opts.persist_dir)
    records = RecordStore(opts.persist_dir)
    intents = IntentLog(opts.persist_dir)
    try:
        if store.used > capacity:
            log.warning("persisted regions use %d bytes, more than the capacity %d",
                        store.used, capacity)
        metrics = Metrics(store)
        if metrics_address:
            metrics.serve(*metrics_address)
        rdma_unavailable = rdma.unavailable_reason()
        if rdma_unavailable:
            log.info("rdma transport not offered: %s", rdma_unavailable)
        appliance = Appliance(store=store, records=records, intents=intents, secret=secret,
                              appliance_id=appliance_id, metrics=metrics,
                              rdma=None if rdma_unavailable else rdma.RdmaResponder())
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(appliance.serve, *listen)
                log.info("appliance %s listening on %s:%d and unix @%s, capacity %d bytes%s",
                         appliance_id, listen[0], port, shm_socket_name(port)[1:].decode(),
                         capacity, f", persisting in {opts.persist_dir}"
                         if opts.persist_dir else "")
                async for signum in signals:
                    log.info("stopping on %s", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
    finally:
        intents.close()
        store.close()
    log.info("appliance %s stopped", appliance_id)


def _os_error(error: BaseException) -> OSError | None:
    """The OSError (e.g. address in use) inside a possibly nested exception group."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


def main(args: list[str] | None = None) -> int:
    try:
        opts = _parser().parse_args(args)
        listen = parse_address(opts.listen, "--listen")
        capacity = parse_size(opts.capacity)
        metrics_address = parse_address(opts.metrics, "--metrics") if opts.metrics else None
        secret = load_secret(opts.secret_file)
        lock_fd, appliance_id = (_lock_persist_dir(opts.persist_dir) if opts.persist_dir
                                 else (None, uuid.uuid4().hex))
    except (UsageError, SecretFileError) as e:
        print(f"resilfs appliance: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code or 0
    logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_run, opts, listen, capacity, metrics_address, secret, appliance_id)
    except (OSError, ExceptionGroup) as e:
        error = _os_error(e)
        if error is None:
            raise
        print(f"resilfs appliance: {error.strerror or error} (--listen {opts.listen}"
              f"{f', --metrics {opts.metrics}' if opts.metrics else ''})", file=sys.stderr)
        return 1
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    return 0
