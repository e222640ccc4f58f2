"""The worker's HTTP endpoints: operations (health, readiness, metrics, state)
and the serving API (feedback intake, latest values, experiments).
"""
