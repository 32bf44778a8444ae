"""Wiring: a cluster and a mount point become a running filesystem (S3QL's mount.py).

``mount`` builds the layers bottom-up in an exit stack (pool -> journal store -> journal ->
metadata -> sets -> write-behind cache -> file data -> operations), repairs what a crash
left on the appliances before any set is opened (snapshot records, leaked regions:
``Snapshots.sets.recover``, ``sweep``), starts the background workers (journal commits and
compaction, set rebuild, cache flusher, snapshot sets) in a nursery, mounts, raises the
bdi's read-ahead, and serves until the filesystem is unmounted (``fusermount3 -u``) or
SIGTERM/SIGINT arrives. Then it stops the workers, commits, writes a checkpoint, flushes
the cache and closes the sets, so a clean unmount leaves everything on the appliances and
a quick next mount; SIGTERM/SIGINT arriving meanwhile are ignored (``_SignalWatcher``).
With ``metrics_address`` it serves Prometheus metrics there (``resilfs.fs.metrics``; the
address is bound before anything else happens).

Failure: errors while building raise before anything is mounted; if serving ends with an
exception, the mount point is still unmounted and the exit stack closes what was opened
(the queued journal records are then lost, as in a crash).
"""
import logging
import os
import signal
from contextlib import AsyncExitStack
from functools import partial

import pyfuse3
import trio

from .. import taskdump
from ..codec import make_codec
from ..scheme import Scheme
from ..sets import RebuildWorker
from .backing import SetBacking
from .cluster import Cluster
from .control import Control
from .data import FileData
from .errors import FsError
from .extents import PAGE
from .fuse_fallocate import FallocateHook
from .journal import Journal, JournalStore, JournalWorker, encode_checkpoint
from .journal_appliance import ApplianceJournalStore, FormatTooNew
from .journal_dir import DirJournalStore
from .kernel import fuse_options, tune_when_ready
from .metadata import Metadata
from .metrics import MetricsServer, MountMetrics
from .operations import Failsafe, Operations
from .snapshots import Snapshots
from .state import State
from .sweep import known_sets, sweep
from .writebehind import DEFAULT_LIMIT, WriteBehind, block_size_for

log = logging.getLogger(__name__)


class NotFormatted(FsError):
    """The cluster holds no filesystem of that name (run mkfs first)."""


class AlreadyFormatted(FsError):
    """mkfs found a filesystem already there (and was not told --force)."""


async def open_metadata(stack: AsyncExitStack, cluster: Cluster, journal_dir: str | None):
    """Connect to the cluster and load its journal: (pool, store, journal), each closed by
    ``stack``. The store is on the appliances, or in ``journal_dir`` (developer option)."""
    pool = await cluster.pool()
    stack.push_async_callback(pool.aclose)
    store: JournalStore = (DirJournalStore(journal_dir) if journal_dir is not None
                           else ApplianceJournalStore(pool, cluster.name))
    stack.push_async_callback(store.aclose)
    return pool, store, await Journal.load(store)


async def mkfs(cluster: Cluster, *, scheme: str, chunk_size: int, set_size: int,
               codec: str | None = None, journal_dir: str | None = None,
               force: bool = False) -> str:
    """Write a new, empty filesystem: format record, root directory, first checkpoint.

    ``codec`` names the codec backend (None: the best one here for the scheme); it is part
    of the format, since parity bytes differ between backends. Returns the backend used.
    Raises BackendUnavailable / CodecError for a backend this client lacks or that does not
    fit the scheme, before touching the appliances. Refuses (AlreadyFormatted) when the
    store already holds a filesystem, unless ``force``: then the old metadata is replaced
    (its data sets are not freed).
    """
    codec = make_codec(scheme, chunk_size, codec).backend
    async with AsyncExitStack() as stack:
        _, store, journal = await open_metadata(stack, cluster, journal_dir)
        if journal.state.format is not None and not force:
            raise AlreadyFormatted(f"a filesystem named {cluster.name!r} exists already "
                                   f"(use --force to replace it)")
        fresh = Journal(store, State())
        Metadata.format(fresh, os.getuid(), os.getgid(), scheme=scheme,
                        chunk_size=chunk_size, set_size=set_size, codec=codec)
        # one atomic checkpoint, no batch: a crash leaves the old filesystem or the new one
        await store.write_checkpoint(encode_checkpoint(fresh.state))
        log.info("formatted %s: %s (%s), chunk %d, sets of %d bytes", cluster.name, scheme,
                 codec, chunk_size, set_size)
    return codec


async def mount(cluster: Cluster, mountpoint: str, *, journal_dir: str | None = None,
                write_mode: str = "parallel", fuse_extra=(), commit_interval: float = 1.0,
                cache_size: int = DEFAULT_LIMIT, metrics_address: tuple[str, int] | None = None,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Mount and serve until unmounted; see the module docstring. ``cache_size`` bytes for
    the write-behind cache (``resilfs.fs.writebehind``); 0 writes through.
    ``metrics_address`` (host, port): serve metrics there (MetricsUnavailable if it cannot
    be bound)."""
    mountpoint = os.path.abspath(mountpoint)
    metrics = MetricsServer.start(*metrics_address) if metrics_address is not None else None
    async with AsyncExitStack() as stack:
        stack.callback(_SignalWatcher.restore, _SignalWatcher.handlers())  # closed last
        try:
            pool, store, journal = await open_metadata(stack, cluster, journal_dir)
        except FormatTooNew as exc:
            log.error("%s", exc)  # the log of a background mount says why it did not start
            raise
        fmt = journal.state.format
        if fmt is None:
            raise NotFormatted(f"no filesystem named {cluster.name!r} on these appliances "
                               f"(run resilfs mkfs first)")
        make_codec(fmt.scheme, fmt.chunk_size, fmt.codec)  # BackendUnavailable: say so now
        metadata = Metadata(journal)
        orphans = metadata.remove_orphans()
        if orphans:
            log.info("deleted %d files left open by a crash", orphans)
        rebuild = RebuildWorker()
        backing = SetBacking(pool, cluster.name, fmt.scheme, write_mode=write_mode,
                             chunk_size=fmt.chunk_size, codec=fmt.codec, rebuild=rebuild,
                             set_size=fmt.set_size)
        scheme = Scheme.parse(fmt.scheme)
        stripe = fmt.chunk_size * scheme.data_chunks if scheme.data_chunks > 1 else PAGE
        cache = None
        if cache_size:
            cache = WriteBehind(backing, block_size_for(stripe),
                                lambda set_id: journal.state.allocator.set_sizes()[set_id],
                                limit=cache_size)
        stack.push_async_callback((cache or backing).aclose)  # the cache flushes first
        data = FileData(metadata, cache or backing, fmt.set_size, stripe)
        if cache is not None:
            cache.on_lost = data.lost_writes
        journal.before_append = data.flush_mapped
        failsafe = Failsafe(data=data)
        control = Control(cluster.name, metadata, data, backing, journal, failsafe,
                          cache=cache)
        snapshots = Snapshots(metadata, data, backing, journal, mountpoint)
        # before any set is opened or any region allocated:
        await snapshots.sets.recover()  # snapshot records a crash kept off the appliances
        await sweep(pool, cluster.name, known_sets(journal.state))  # regions nothing names
        operations = Operations(metadata, data, journal, control, failsafe=failsafe,
                                snapshots=snapshots)
        worker = JournalWorker(journal, commit_interval)
        if metrics is not None:
            metrics.attach(MountMetrics(operations, journal, backing, cache))

        pyfuse3.init(operations, mountpoint, fuse_options(f"resilfs:{cluster.name}",
                                                          fuse_extra))
        fallocate = FallocateHook(operations.fallocate)
        fallocate.install()  # before main(): no request has been read yet
        signals = _SignalWatcher()
        dumper = taskdump.DumpOnSignal()
        signals.ignore_outside()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(signals.run)  # first: signals are ignored until then
                await nursery.start(dumper.run)
                fallocate.nursery = nursery
                nursery.start_soon(worker.run)
                await nursery.start(rebuild.run)
                if cache is not None:
                    await nursery.start(cache.run)
                await nursery.start(data.run_discards)
                nursery.start_soon(control.run)
                nursery.start_soon(snapshots.sets.run)
                nursery.start_soon(backing.open_all,
                                   sorted(journal.state.allocator.set_sizes()))
                nursery.start_soon(partial(trio.to_thread.run_sync, tune_when_ready,
                                           mountpoint, abandon_on_cancel=True))
                task_status.started()
                log.info("mounted %s on %s (%s)", cluster.name, mountpoint, fmt.scheme)
                await pyfuse3.main()
                signals.stop()
                dumper.stop()
                worker.stop()  # its last commit runs before the nursery exits
                rebuild.stop()
                control.stop()
                snapshots.sets.stop()
                data.stop_discards()
                if cache is not None:
                    cache.stop()  # the exit stack flushes it
        finally:
            # main() returns without our help only when the kernel unmounted already
            pyfuse3.close(unmount=signals.received or not signals.stopped)
        if cache is not None:  # before the last commit, which records any loss it finds
            try:
                await cache.flush()
            except FsError as exc:
                log.error("unmount: %s", exc)
        await journal.commit()
        await journal.checkpoint()
        log.info("unmounted %s from %s", cluster.name, mountpoint)


class _SignalWatcher:
    """SIGTERM or SIGINT end the FUSE loop, which leads to a clean unmount.

    Once the FUSE loop has ended (unmounted, by a signal or by ``umount``), further
    SIGTERM/SIGINT are ignored until ``mount`` returns: the daemon is storing its cached
    writes and metadata, which is what stopping means (systemd sends SIGTERM to a mount
    unit's daemon right after its umount). SIGKILL still ends it at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = False
        self.stopped = False
        self._scope = trio.CancelScope()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self._scope, trio.open_signal_receiver(*self.SIGNALS) as sigs:
            task_status.started()
            async for signum in sigs:
                log.info("signal %d: unmounting", signum)
                self.received = True
                pyfuse3.terminate()
                return

    def stop(self) -> None:
        self.stopped = True
        self._scope.cancel()

    @classmethod
    def handlers(cls) -> dict:
        return {signum: signal.getsignal(signum) for signum in cls.SIGNALS}

    @staticmethod
    def restore(handlers: dict) -> None:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    def ignore_outside(self) -> None:
        """Ignore the signals whenever ``run`` is not receiving them (``run`` restores
        this disposition when it ends)."""
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
