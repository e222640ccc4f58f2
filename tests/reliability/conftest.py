"""Fault tests reuse the integration fixtures (real services, isolated deployments)."""

from tests.integration.conftest import (  # noqa: F401  (fixtures)
    deployment,
    log_dir,
    pytest_runtest_makereport,
    services,
)
