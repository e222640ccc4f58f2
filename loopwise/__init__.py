"""Entry points people and services touch: the CLI, the HTTP API, the demo,
the worker process.
"""
