"""Fault tests reuse the integration fixtures (real services, isolated deployments) and
print the suite's result table (tests.reliability.summary) at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.config import REPO_ROOT
from streams.harness import Deployment
from tests.integration.conftest import (  # noqa: F401  (fixtures)
    deployment,
    isolated_deployment,
    log_dir,
    pytest_runtest_makereport,
    services,
)
from tests.reliability import summary
from tests.reliability.soak import Soak


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not summary.ROWS:
        return
    terminalreporter.section("fault suite: lost and duplicated learning")
    terminalreporter.write_line(summary.render(summary.ROWS))
    path = REPO_ROOT / ".run" / "reliability-summary.json"
    summary.write_json(summary.ROWS, path)
    terminalreporter.write_line(f"(written to {path})")


@pytest.fixture
def wide_deployment(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:  # noqa: F811
    """Like ``deployment`` with 4 partitions, for tests that run two workers."""
    yield from isolated_deployment(
        log_dir, request, LOOPWISE_PARTITIONS="4", LOOPWISE_EXPECTED_WORKERS="2"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The soak test collects the background soak, so it runs last."""
    items.sort(key=lambda item: item.get_closest_marker("soak") is not None)


@pytest.fixture(scope="session", autouse=True)
def background_soak(request: pytest.FixtureRequest, log_dir: Path) -> Iterator[Soak | None]:  # noqa: F811
    """Started at the beginning of the session when the soak test is selected and
    ``LOOPWISE_SOAK_S`` is set (see tests.reliability.soak)."""
    duration = float(os.environ.get("LOOPWISE_SOAK_S", "0"))
    selected = any(item.get_closest_marker("soak") for item in request.session.items)
    if duration <= 0 or not selected:
        yield None
        return
    dep = Deployment.create(log_dir, name="soak", LOOPWISE_ITEM_DIM="4")
    dep.create_topics()
    soak = Soak(dep, duration, rate=float(os.environ.get("LOOPWISE_SOAK_RATE", "150")))
    soak.start()
    yield soak
    dep.stop()
    dep.delete_topics()
