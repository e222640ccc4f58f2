"""The soak: one worker under a steady stream for ``LOOPWISE_SOAK_S`` seconds (600 in
`make test-reliability`), its resident memory sampled every few seconds.

It runs in the background from the start of the session, alongside the other fault tests
(at a modest rate, so it barely slows them), and ``test_soak`` collects it at the end: the
suite stays within its time budget although the soak alone takes ten minutes."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.harness import Deployment, Worker
from tests.reliability.workload import PacedProducer, Workload, item_events


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Soak:
    dep: Deployment
    duration_s: float
    rate: float
    users: int = 2000
    samples: list[tuple[float, int]] = field(default_factory=list)
    worker: Worker | None = None
    workload: Workload | None = None
    stream: PacedProducer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.dep.produce("items", item_events(), key_field="item_id")
        self.worker = self.dep.start_worker()
        per_user = max(1, int(self.duration_s * self.rate / self.users))
        # A fixed population: after warm-up the state stops growing, so memory should too.
        self.workload = Workload.generate(f"{self.dep.run_id}-soak", self.users, per_user, 41)
        self.stream = PacedProducer(self.dep, self.workload.events, self.rate)
        self.stream.start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        assert self.worker is not None
        started = time.monotonic()
        while not self._stop.is_set() and self.worker.alive():
            self.samples.append((time.monotonic() - started, rss_bytes(self.worker.process.pid)))
            self._stop.wait(5.0)

    def finish(self) -> None:
        assert self.stream is not None
        self.stream.join()
        self._stop.set()

    def growth(self, warm_up_s: float) -> tuple[float, float, float]:
        """(median RSS in the minute after warm-up, median RSS in the last minute, growth)."""
        end = self.samples[-1][0]
        early = [rss for t, rss in self.samples if warm_up_s <= t < warm_up_s + 60]
        late = [rss for t, rss in self.samples if t >= end - 60]
        first, last = statistics.median(early), statistics.median(late)
        return first, last, last / first - 1.0
