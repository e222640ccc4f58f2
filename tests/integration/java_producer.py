"""Runs the Java example producer (docs/examples/java) through deploy/local/java-producer.sh,
which compiles it against the cached Kafka jars on first use (a few seconds)."""

from __future__ import annotations

import subprocess

from streams.config import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "local" / "java-producer.sh"


def run_java_producer(
    bootstrap: str, topic: str, key_field: str, lines: list[bytes], timeout_s: float = 120
) -> None:
    """Send ``lines`` (JSON events, one per item, without newlines) to ``topic`` keyed by their
    ``key_field``; return once every record is acknowledged. Raises ``RuntimeError`` with the
    script's stderr when it fails, times out or reports another count than it was given."""
    if any(b"\n" in line for line in lines):
        raise ValueError("a line holds a newline: the producer reads one event per line")
    stdin = b"".join(line + b"\n" for line in lines)
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), bootstrap, topic, key_field],
            input=stdin,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        raise RuntimeError(f"{SCRIPT.name} timed out after {timeout_s} s:\n{stderr}") from None
    stderr = done.stderr.decode(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{SCRIPT.name} exited with {done.returncode}:\n{stderr}")
    expected = sum(1 for line in lines if line.strip())  # it skips blank lines
    if f"sent {expected}" not in stderr.splitlines():
        raise RuntimeError(f"{SCRIPT.name} did not report 'sent {expected}':\n{stderr}")
