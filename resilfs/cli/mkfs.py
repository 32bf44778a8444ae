"""Write a new filesystem onto the appliances of a cluster file."""
import argparse
import logging
import sys

import trio

from ..errors import ResilfsError
from ..fs import cluster as clusterfile
from ..fs.mount import mkfs
from ..scheme import Scheme

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(text: str) -> int:
    """``64K``, ``256M``, ``1G`` or bytes."""
    number, unit = text.rstrip("kKmMgGiIbB"), text[len(text.rstrip("kKmMgGiIbB")):]
    unit = unit.lower().rstrip("b").rstrip("i")
    if not number.isdigit() or unit not in UNITS or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 64K, 256M)")
    return int(number) * UNITS[unit]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resilfs mkfs", description=__doc__)
    p.add_argument("cluster", help="cluster file (TOML: name, transport, secret_file, appliances)")
    p.add_argument("--scheme", default="mirror:2", help="mirror:N, parity:K+1 or ec:K+M")
    p.add_argument("--codec", help="codec backend: isal or zfec for ec (default: isal where "
                   "built); part of the format")
    p.add_argument("--chunk-size", type=size, default=64 * 1024, help="bytes per chunk")
    p.add_argument("--set-size", type=size, default=256 << 20,
                   help="bytes of file data per resiliency set")
    p.add_argument("--force", action="store_true", help="replace an existing filesystem")
    p.add_argument("--journal-dir", help="developer option: keep metadata in this local dir")
    return p


def main(args=None) -> int:
    opts = parser().parse_args(args)
    logging.basicConfig(level=logging.WARNING, format="resilfs mkfs: %(message)s")
    try:
        Scheme.parse(opts.scheme)
        cluster = clusterfile.load(opts.cluster)
        if opts.chunk_size % 4096:
            raise ResilfsError("--chunk-size must be a multiple of 4K")
        codec = trio.run(lambda: mkfs(cluster, scheme=opts.scheme, chunk_size=opts.chunk_size,
                                      set_size=opts.set_size, codec=opts.codec,
                                      journal_dir=opts.journal_dir, force=opts.force))
    except ResilfsError as exc:
        print(f"resilfs mkfs: {exc}", file=sys.stderr)
        return 1
    print(f"formatted {cluster.name}: {opts.scheme} ({codec} codec) on "
          f"{len(cluster.appliances)} appliances")
    return 0
