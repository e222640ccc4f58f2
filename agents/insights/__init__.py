"""Insights and improvement actions from production decision logs and metrics.

In: ``decisions``, ``metrics`` and the other agents' outputs (weights, results).
State: analytics windows per component, insight and ticket records in PostgreSQL.
Out: ``insights``, ``alerts``, ``actions``, reports.
"""
