"""The filesystem: FUSE operations over a journaled namespace and files mapped onto sets.

Layers, each a module with one job (lower never imports higher):
``records`` (journal record encoding), ``extents`` and ``allocator`` -> ``state`` (inodes,
directories, set space; the one ``State.apply`` for live changes and replay) -> ``journal``
(commit, checkpoint; stores in ``journal_appliance`` and ``journal_dir``) -> ``metadata``
(namespace operations) -> ``data`` (file ranges to set ranges) -> ``backing`` (data on
resiliency sets) and ``writebehind`` (its cache) -> ``snapshot_sets``, ``snapshots``,
``control`` and ``sweep`` -> ``operations`` (pyfuse3.Operations, the only place that raises
FUSEError) -> ``mount`` (wiring). ``kernel`` holds the FUSE options and tuning, ``cluster``
reads cluster files, ``embedded`` names the files of ``resilfs up``.
"""
