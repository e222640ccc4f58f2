"""Per-user preference vectors from feedback.

In: ``feedback.explicit``, ``feedback.implicit`` (through the batched relay), the item catalog.
State: one packed value per user (vector, offset watermarks, event ids, open implicit window,
activity segment) and the guard's rate state, in the ``preferences`` table.
Out: ``weights.preferences``, ``segments.changes``, Redis, PostgreSQL ``user_preferences``;
rejected feedback to the dead-letter topic, suspicious feedback to ``quarantine``.
"""
