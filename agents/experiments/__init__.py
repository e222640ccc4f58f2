"""A/B and multi-armed experiments with sequential statistics.

In: ``experiments.definitions``, ``experiments.exposures``, ``experiments.conversions``.
State: per experiment the aggregate statistics and sequential tests, per unit its record.
Out: ``experiments.results`` (estimates, intervals, decisions), PostgreSQL records,
``actions`` (ramp, rollback, stop).
"""
