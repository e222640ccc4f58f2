"""Integration fixtures: the real Kafka, Redis and PostgreSQL started by deploy/local.

`make test` exports their addresses (from .run/services.env). Run by hand with
`make services-up` first; without reachable services these tests fail with that hint.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.config import REPO_ROOT
from streams.harness import Deployment


def _load_services_env() -> None:
    run_dir = os.environ.get("LOOPWISE_RUN_DIR")
    env_file = (Path(run_dir) if run_dir else REPO_ROOT / ".run") / "services.env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name and name not in os.environ:
            os.environ[name] = value


def _reachable(host_port: str) -> bool:
    host, _, port = host_port.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


_load_services_env()


@pytest.fixture(scope="session", autouse=True)
def services() -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    if not _reachable(bootstrap):
        pytest.fail(f"Kafka is not reachable at {bootstrap}: run `make services-up` first")


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = REPO_ROOT / ".run" / "test-logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def isolated_deployment(
    log_dir: Path, request: pytest.FixtureRequest, **env: str
) -> Iterator[Deployment]:
    """A fresh prefix + app id with its topics created; workers stopped afterwards, their
    log tails printed when the test failed, the topics deleted."""
    dep = Deployment.create(
        log_dir,
        name="it",
        **{"LOOPWISE_ITEM_DIM": "4", "LOOPWISE_MAX_MESSAGE_BYTES": "100000", **env},
    )
    dep.create_topics()
    yield dep
    dep.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for w in dep.workers:
            print(f"--- log of {w.name} ---\n{w.log_tail(60)}")
        if os.environ.get("LOOPWISE_KEEP_FAILED_TOPICS") == "1":  # for a post-mortem
            print(f"topics kept: prefix {dep.settings.topic_prefix} app {dep.settings.app_id}")
            return
    dep.delete_topics()


@pytest.fixture
def deployment(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    """An isolated deployment with 2 partitions per keyed topic (see isolated_deployment)."""
    yield from isolated_deployment(log_dir, request)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
