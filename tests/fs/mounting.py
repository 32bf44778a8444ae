"""The mount harness of the tests lives in the package (``resilfs.cli.mounted``), where the
benchmarks in scripts/ use it too; tests/fs/conftest.py imports it from here."""
from resilfs.cli.mounted import Mounted, run_cli, write_cluster

__all__ = ["Mounted", "run_cli", "write_cluster"]
