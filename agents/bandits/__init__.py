"""Per-segment bandit posteriors over the recommendation algorithms.

In: impressions, clicks and conversions (joined in the attribution window by the preferences
agent), absolute counts per input partition on ``bandits.partials``.
State: attribution records per impression, per-partition counts, per-segment posteriors.
Out: ``weights.algorithms`` (Thompson weights with exploration, auto-disabled arms), Redis,
PostgreSQL ``algorithm_weights``, ``actions`` when an arm is disabled.
"""
