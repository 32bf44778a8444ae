"""Start local appliances, format and mount: the embedded default (undo with resilfs down)."""
import argparse
import os
import re
import shutil
import subprocess
import sys

import trio

from ..appliance.launcher import ApplianceLauncher, LauncherError
from ..errors import ResilfsError
from ..fs import cluster as clusterfile
from ..fs import embedded
from ..fs.kernel import mount_device
from ..fs.mount import mkfs
from ..scheme import Scheme
from . import options as mount_options
from .mkfs import size
from .mount import resolve


def main(args=None) -> int:
    p = argparse.ArgumentParser(prog="resilfs up", description=__doc__)
    p.add_argument("mountpoint")
    p.add_argument("--appliances", type=int, help="how many (default: scheme width + 1)")
    p.add_argument("--scheme", default="mirror:2", help="mirror:N, parity:K+1 or ec:K+M")
    p.add_argument("--codec", help="codec backend: isal or zfec for ec (default: isal)")
    p.add_argument("--capacity", default="1G", help="RAM each appliance lends (e.g. 512M)")
    p.add_argument("--transport", default="shm", choices=["shm", "tcp"])
    p.add_argument("--set-size", type=size,
                   help="bytes of file data per set (default: a quarter of --capacity, "
                        "at most 256M)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="mount options as for resilfs mount, e.g. allow_other")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics of the mount here")
    opts = p.parse_args(args)
    mountpoint = os.path.abspath(opts.mountpoint)
    try:
        resolve(argparse.Namespace(options=opts.options, metrics=opts.metrics,
                                   write_mode=None, cache_size=None, log=None))
        scheme = Scheme.parse(opts.scheme)
        count = opts.appliances or scheme.width + 1
        if count < scheme.width:
            raise ResilfsError(f"{scheme} needs at least {scheme.width} appliances")
        if not os.path.isdir(mountpoint):
            raise ResilfsError(f"mount point {mountpoint} is not a directory")
        if mount_device(mountpoint) is not None:
            raise ResilfsError(f"{mountpoint} is already mounted")
        return _up(mountpoint, scheme, count, opts)
    except (ResilfsError, LauncherError, mount_options.UsageError) as exc:
        print(f"resilfs up: {exc}", file=sys.stderr)
        return 1


def _up(mountpoint: str, scheme: Scheme, count: int, opts) -> int:
    state = embedded.state_dir(mountpoint)
    previous = embedded.load(mountpoint)
    if previous and any(embedded.alive(a["pid"]) for a in previous["appliances"]):
        raise ResilfsError(f"appliances of an earlier 'resilfs up {mountpoint}' are still "
                           f"running: run 'resilfs down {mountpoint}' first")
    shutil.rmtree(state, ignore_errors=True)
    launcher = ApplianceLauncher(state)
    try:
        apps = launcher.start(count, persist=True, capacity=opts.capacity)
        cluster_path = os.path.join(state, "cluster.toml")
        clusterfile.write(cluster_path, "embedded", opts.transport, "secret",
                          [a.address for a in apps])
        cluster = clusterfile.load(cluster_path)
        set_size = opts.set_size or min(256 << 20, size(opts.capacity) // 4)
        trio.run(lambda: mkfs(cluster, scheme=str(scheme), chunk_size=64 * 1024,
                              set_size=set_size, codec=opts.codec))
        log_path = os.path.join(state, "mount.log")
        extra = [*(["-o", ",".join(opts.options)] if opts.options else []),
                 *(["--metrics", opts.metrics] if opts.metrics else [])]
        r = subprocess.run([sys.executable, "-m", "resilfs", "mount", cluster_path, mountpoint,
                            "--log", log_path, *extra], capture_output=True, text=True,
                           timeout=120)
        found = re.search(r"pid (\d+)", r.stdout)
        if r.returncode or not found:
            raise ResilfsError(f"the mount did not come up: {r.stderr.strip()} "
                               f"(log: {log_path})")
    except BaseException:
        launcher.close()
        shutil.rmtree(state, ignore_errors=True)
        raise
    embedded.save(state, {
        "mountpoint": mountpoint, "scheme": str(scheme), "transport": opts.transport,
        "cluster": cluster_path, "mount_pid": int(found.group(1)), "mount_log": log_path,
        "appliances": [{"address": a.address, "pid": a.pid, "persist_dir": a.persist_dir,
                        "log": a.log_path} for a in apps]})
    print(f"started {count} appliances ({opts.transport}, {opts.capacity} each, state in "
          f"{state})")
    print(f"formatted {scheme}; mounted on {mountpoint} (daemon pid {found.group(1)})"
          + (f"; metrics on http://{opts.metrics}/metrics" if opts.metrics else ""))
    print(f"stop with: resilfs down {mountpoint}")
    return 0
