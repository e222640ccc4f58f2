"""Run real workers as subprocesses and talk to their services: used by the demo, the
integration and reliability tests, and the benchmarks.

Each :class:`Deployment` has its own topic prefix and app id, so runs never share topics,
consumer groups or changelogs on a shared broker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.codecs import key_of
from streams.config import REPO_ROOT, Settings
from streams.kafka_admin import admin, create_topics, producer, read_topic
from streams.topics import get_topic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get_json(self, path: str, timeout: float = 3.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")

    def post(
        self, path: str, body: bytes, token: str | None = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url(path), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, orjson.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"null")

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The worker's ``/metrics`` samples called ``name``: (labels, value) each."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as resp:
            text = resp.read().decode()
        return [
            (sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_tail()}")
            try:
                status, body = self.get_json("/ready", timeout=3)
                if status == 200 and body.get("ready"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"worker {self.name} not ready after {timeout_s}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no commit, like a crashed host."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _key_of_raw(raw: bytes, key_field: str) -> bytes:
    try:
        return key_of(orjson.loads(raw), key_field).encode()
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return b"raw"


@dataclass
class Deployment:
    """One isolated Loopwise deployment (prefix, app id) on the shared services."""

    base_env: dict[str, str]
    log_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[Worker] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, log_dir: Path, name: str = "lw", **env: str) -> Deployment:
        base = {k: v for k, v in os.environ.items()}
        dep = cls(base_env=base, log_dir=log_dir)
        base.update(
            {
                "LOOPWISE_TOPIC_PREFIX": f"{name}-{dep.run_id}.",
                "LOOPWISE_APP_ID": f"{name}-{dep.run_id}",
                "LOOPWISE_PARTITIONS": "2",
                "LOOPWISE_EXPECTED_WORKERS": "1",
                "LOOPWISE_BATCH_WITHIN_S": "0.1",
            }
        )
        base.update(env)
        log_dir.mkdir(parents=True, exist_ok=True)
        return dep

    @property
    def settings(self) -> Settings:
        return Settings.from_env({**self.base_env, **self.extra_env})

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    def create_topics(self) -> list[str]:
        return create_topics(self.settings)

    def start_worker(self, wait: bool = True, **env: str) -> Worker:
        port = free_port()
        name = f"w{len(self.workers)}"
        log_path = self.log_dir / f"{self.run_id}-{name}.log"
        worker_env = {
            **self.base_env,
            **self.extra_env,
            **env,
            "LOOPWISE_WEB_PORT": str(port),
            "LOOPWISE_DATA_DIR": str(self.log_dir / f"{self.run_id}-{name}-data"),
        }
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "loopwise.cli.main", "worker"],
                cwd=REPO_ROOT,
                env=worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, proc, port, log_path)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def produce(
        self,
        topic_name: str,
        events: Iterable[dict[str, Any] | bytes],
        key_field: str | None = None,
    ) -> int:
        """Produce events keyed by ``key_field`` (default: the topic's registry key, as
        every producer must: streams.partitioning); raw bytes are keyed by that field when
        they parse as an object that has it, else ``raw``."""
        prod = producer(self.settings)
        field_name = key_field or get_topic(topic_name).key_field
        count = 0
        for ev in events:
            if isinstance(ev, bytes):
                prod.produce(self.topic(topic_name), key=_key_of_raw(ev, field_name), value=ev)
            else:
                try:
                    key = key_of(ev, field_name).encode()
                except (KeyError, TypeError):
                    key = b"none"
                prod.produce(self.topic(topic_name), key=key, value=orjson.dumps(ev))
            count += 1
            if count % 1000 == 0:
                prod.poll(0)
        if prod.flush(30):
            raise RuntimeError("produce: messages left undelivered after 30 s")
        return count

    def read(self, topic_name: str) -> list[dict[str, Any]]:
        return [
            orjson.loads(v)
            for _, v in read_topic(self.settings, self.topic(topic_name), timeout_s=3.0)
        ]

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def delete_topics(self) -> None:
        client = admin(self.settings)
        names = [
            t
            for t in client.list_topics(timeout=10).topics
            if t.startswith(self.settings.topic_prefix) or t.startswith(self.settings.app_id)
        ]
        if names:
            for fut in client.delete_topics(names, operation_timeout=30).values():
                with contextlib.suppress(Exception):  # already deleted is fine
                    fut.result()
