"""Ten minutes at a steady rate (``LOOPWISE_SOAK_S``; only in `make test-reliability`):
resident memory grows less than 10 % after warm-up, and the state is exact at the end."""

from __future__ import annotations

import pytest

from tests.reliability.soak import Soak
from tests.reliability.workload import assert_exact

pytestmark = [pytest.mark.integration, pytest.mark.long, pytest.mark.soak]


@pytest.mark.timeout(1200)
def test_soak_memory_stays_flat_and_state_exact(background_soak: Soak | None) -> None:
    if background_soak is None:
        pytest.skip("LOOPWISE_SOAK_S is not set (make test-reliability sets it)")
    soak = background_soak
    soak.finish()
    assert soak.worker is not None and soak.worker.alive(), "the soak worker died"
    assert soak.stream is not None and soak.stream.error is None, soak.stream.error
    warm_up = min(120.0, soak.duration_s / 5)
    first, last, growth = soak.growth(warm_up)
    assert soak.workload is not None
    assert_exact(
        soak.dep,
        soak.workload,
        timeout_s=180,
        test=f"soak {soak.duration_s / 60:.0f} min at {soak.rate:.0f} ev/s",
        faults=f"RSS {first / 2**20:.0f} → {last / 2**20:.0f} MB ({growth:+.1%})",
    )
    assert growth < 0.10, f"RSS grew {growth:.1%} after warm-up ({first} → {last} bytes)"
