"""The customer choice loop: which ranked candidate a customer chose, and why.

In: ``recs.sessions``, ``recs.choices``, ``recs.interactions``.
State: sessions waiting for their choice, per-customer choice segments, per-segment models.
Out: ``weights.scoring`` (per-segment scoring weights), ``customers.segments``, alerts.
"""
