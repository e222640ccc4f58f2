"""The item catalog's validation.

In: ``items`` (compacted; every worker also reads the whole topic into its catalog).
State: none (the catalog lives in ``streams.catalog``).
Out: dead letters for invalid item events, once per event.
"""
