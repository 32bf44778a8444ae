"""The filesystem: FUSE operations over a journaled namespace and files mapped onto sets.

Layers, each a module with one job (lower never imports higher):
``records`` (journal record encoding) -> ``metadata`` (namespace state, one apply function)
-> ``allocator`` (extents of sets) -> ``journal`` (stores, commit, checkpoint) -> ``data``
(file ranges to set ranges) -> ``operations`` (pyfuse3.Operations, the only place that
raises FUSEError) -> ``mount`` (wiring). ``kernel`` holds the FUSE options and tuning.
"""
