"""Checks deploy/local/services.sh: against the shared services, and in throw-away run dirs.

The shared Kafka/Redis/PostgreSQL (started by `make services-up`) are only inspected; every
start/stop cycle uses its own LOOPWISE_RUN_DIR and free ports so they are never disturbed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
SERVICES = REPO / "deploy" / "local" / "services.sh"
MIGRATE = REPO / "deploy" / "local" / "migrate.sh"
SERVICE_NAMES = ("kafka", "redis", "postgres")
ADDRESS_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "DATABASE_URL")

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed (external Redis?)"
)


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=50,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(run_dir: Path, redis_port: int) -> dict[str, str]:
    """Environment for a private run dir: no shared addresses, no inherited port settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ADDRESS_VARS and not k.startswith("LOOPWISE_")
    }
    env.update(LOOPWISE_RUN_DIR=str(run_dir), LOOPWISE_REDIS_PORT=str(redis_port))
    return env


def status_lines(env: dict[str, str] | None = None) -> dict[str, list[str]]:
    out = run(SERVICES, "status", env=env).stdout
    return {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def test_status_reports_the_three_services_up():
    result = run(SERVICES, "status")
    assert result.returncode == 0, result.stdout
    lines = status_lines()
    for name in SERVICE_NAMES:
        assert name in lines, result.stdout
        assert lines[name][1] in ("running", "external"), result.stdout


def test_second_up_is_a_no_op():
    before = status_lines()
    result = run(SERVICES, "up")
    assert result.returncode == 0, result.stdout
    for name in SERVICE_NAMES:
        assert re.search(rf"^{name}: (already running|external)", result.stdout, re.M), (
            result.stdout
        )
    assert "starting" not in result.stdout
    assert status_lines() == before  # same states, addresses and pids


@needs_redis_server
def test_stale_and_foreign_pid_files_are_handled(tmp_path):
    env = isolated_env(tmp_path / "run", free_port())
    pid_file = tmp_path / "run" / "redis" / "redis.pid"
    foreign = subprocess.Popen(["sleep", "60"])
    try:
        up = run(SERVICES, "up", "redis", env=env)
        assert up.returncode == 0, up.stdout
        first_pid = int(pid_file.read_text())
        url = f"redis://127.0.0.1:{env['LOOPWISE_REDIS_PORT']}/0"
        assert (tmp_path / "run" / "services.env").read_text().count(f"REDIS_URL={url}") == 1
        redis.Redis.from_url(url).set("lw:test", "kept")
        down = run(SERVICES, "down", "redis", env=env)
        assert down.returncode == 0, down.stdout
        assert not pid_alive(first_pid)

        # A pid file naming a live process that is not our redis: never signalled, replaced.
        pid_file.write_text(f"{foreign.pid}\n")
        assert run(SERVICES, "down", "redis", env=env).returncode == 0
        assert foreign.poll() is None, "down killed a process it did not start"
        pid_file.write_text(f"{foreign.pid}\n")
        up = run(SERVICES, "up", "redis", env=env)
        assert up.returncode == 0, up.stdout
        assert "stale pid file" in up.stdout
        assert foreign.poll() is None
        new_pid = int(pid_file.read_text())
        assert new_pid != foreign.pid and pid_alive(new_pid)
        assert redis.Redis.from_url(url).get("lw:test") == b"kept"  # append-only file survived

        # A pid file naming a process that is gone.
        run(SERVICES, "down", "redis", env=env)
        pid_file.write_text(f"{first_pid}\n")
        up = run(SERVICES, "up", "redis", env=env)
        assert up.returncode == 0, up.stdout
        assert "stale pid file" in up.stdout
        assert redis.Redis.from_url(url).ping()
    finally:
        run(SERVICES, "down", "redis", env=env)
        foreign.kill()
        foreign.wait()


@needs_redis_server
def test_port_in_use_gives_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = isolated_env(tmp_path / "run", port)
        result = run(SERVICES, "up", "redis", env=env)
    assert result.returncode != 0
    assert f"port {port}" in result.stdout
    assert "LOOPWISE_REDIS_PORT" in result.stdout
    assert not (tmp_path / "run" / "redis" / "redis.pid").exists()


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL") or shutil.which("psql") is None,
    reason="needs DATABASE_URL (from .run/services.env) and psql",
)
def test_migrations_apply_once_in_order_and_roll_back_on_error(tmp_path):
    url = os.environ["DATABASE_URL"]
    scratch = f"lw_migrate_test_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'create database "{scratch}"')
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the database role may not create scratch databases")
    target = make_conninfo(url, dbname=scratch)
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "002_b.sql").write_text("alter table t add column b int;\n")
    (migrations / "001_a.sql").write_text("create table t (a int)")  # no trailing ; or newline
    env = {**os.environ, "LOOPWISE_MIGRATIONS_DIR": str(migrations)}
    try:
        first = run(MIGRATE, target, env=env)
        assert first.returncode == 0, first.stdout
        assert first.stdout.index("applied 001_a") < first.stdout.index("applied 002_b")
        again = run(MIGRATE, target, env=env)
        assert again.returncode == 0, again.stdout
        assert "(0 applied now, 2 in total)" in again.stdout, again.stdout

        (migrations / "003_bad.sql").write_text("create table u (x int);\nselect nope;\n")
        bad = run(MIGRATE, target, env=env)
        assert bad.returncode != 0
        assert "003_bad" in bad.stdout
        with psycopg.connect(target) as conn:
            versions = [r[0] for r in conn.execute("select version from schema_migrations")]
            assert sorted(versions) == ["001_a", "002_b"]
            assert conn.execute("select to_regclass('u')").fetchone()[0] is None
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{scratch}" with (force)')
