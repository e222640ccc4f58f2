"""``settings_in_force`` and ``loopwise config``: the value of every setting, where it comes
from, and no secret in clear."""

from __future__ import annotations

import pytest

from loopwise.cli import main as cli
from streams.config import Settings, settings_in_force, settings_table
from streams.security import SECURITY_SETTINGS

ENV = {
    "LOOPWISE_TOPIC_PREFIX": "acme.",
    "LOOPWISE_PARTITIONS": "8",
    "LOOPWISE_EXPECTED_WORKERS": "2",
    "LOOPWISE_TS_MAX_AHEAD_S": "120",
    "LOOPWISE_API_TOKEN": "tok-Sup3rSecret",
    "DATABASE_URL": "postgresql://lw:pg-Pa55word@db.internal:5432/loopwise",
    "REDIS_URL": "redis://:redis-Pa55@cache.internal:6379/0",
}


def _rows(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    rows = settings_in_force(Settings.from_env(env), env)
    table = {name: (value, source) for name, value, source, _ in rows}
    assert len(table) == len(rows)
    return table


def test_values_from_the_environment_are_marked_env() -> None:
    rows = _rows(ENV)
    assert rows["LOOPWISE_PARTITIONS"] == ("8", "env")
    assert rows["LOOPWISE_EXPECTED_WORKERS"] == ("2", "env")
    assert rows["LOOPWISE_TS_MAX_AHEAD_S"] == ("120.0", "env")
    assert rows["LOOPWISE_TOPIC_PREFIX"] == ("acme.", "env")


def test_defaults_are_marked_default() -> None:
    rows = _rows(ENV)
    defaults = {env: default for env, default, _ in settings_table()}
    assert rows["KAFKA_BOOTSTRAP_SERVERS"] == ("127.0.0.1:9092", "default")
    assert rows["LOOPWISE_TS_MAX_AGE_S"] == ("157766400.0", "default")
    for name, (value, source) in rows.items():
        if name not in ENV:
            assert source == "default", name
            assert value == defaults[name], name


def test_every_setting_has_a_row() -> None:
    rows = settings_in_force(Settings.from_env({}), {})
    assert [r[0] for r in rows] == [r[0] for r in settings_table()]
    assert {r[2] for r in rows} == {"default"}
    assert all(r[3] for r in rows)


@pytest.mark.parametrize("prefix", ["acme.", ""])
def test_the_topic_prefix_is_shown_as_set(prefix: str) -> None:
    rows = _rows({"LOOPWISE_TOPIC_PREFIX": prefix})
    assert rows["LOOPWISE_TOPIC_PREFIX"] == (prefix, "env")
    assert _rows({})["LOOPWISE_TOPIC_PREFIX"] == ("loopwise.", "default")


def test_the_api_token_is_masked() -> None:
    rows = _rows(ENV)
    assert rows["LOOPWISE_API_TOKEN"] == ("***", "env")
    assert not any("Sup3rSecret" in value for value, _ in rows.values())
    # An empty token (the default: mutating endpoints refused) is shown as empty.
    assert _rows({})["LOOPWISE_API_TOKEN"] == ("", "default")


def test_passwords_inside_urls_are_masked() -> None:
    rows = _rows(ENV)
    assert rows["DATABASE_URL"] == ("postgresql://lw:***@db.internal:5432/loopwise", "env")
    assert rows["REDIS_URL"] == ("redis://:***@cache.internal:6379/0", "env")
    assert not any("Pa55" in value for value, _ in rows.values())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://pw:pw@h/db", "postgresql://pw:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgres://h/db", "postgres://h/db"),
    ],
)
def test_database_url_forms(url: str, shown: str) -> None:
    assert _rows({"DATABASE_URL": url})["DATABASE_URL"] == (shown, "env")


def test_a_password_in_the_query_string_is_masked() -> None:
    value, _ = _rows({"DATABASE_URL": "postgresql://u@h/db?password=pg-Pa55"})["DATABASE_URL"]
    assert "pg-Pa55" not in value


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [r[0] for r in settings_table()] + [r[0] for r in SECURITY_SETTINGS]:
        monkeypatch.delenv(name, raising=False)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "lw-user")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-Pa55")
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "key-Pa55")
    monkeypatch.setenv("REDIS_PASSWORD", "auth-Pa55")


def _config_lines(capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "Pa55" not in out and "Sup3rSecret" not in out
    return {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}


def test_loopwise_config_prints_the_values_in_force(
    environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _config_lines(capsys)
    assert lines["LOOPWISE_TOPIC_PREFIX"][1:3] == ["acme.", "env"]
    assert lines["LOOPWISE_PARTITIONS"][1:3] == ["8", "env"]
    assert lines["KAFKA_BOOTSTRAP_SERVERS"][1:3] == ["127.0.0.1:9092", "default"]
    assert lines["LOOPWISE_API_TOKEN"][1:3] == ["***", "env"]
    assert lines["DATABASE_URL"][1:3] == ["postgresql://lw:***@db.internal:5432/loopwise", "env"]
    assert lines["REDIS_URL"][1:3] == ["redis://:***@cache.internal:6379/0", "env"]
    assert set(lines) >= {r[0] for r in settings_table()}


def test_loopwise_config_prints_the_security_variables_masked(
    environ: None, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _config_lines(capsys)
    assert set(lines) >= {name for name, _, _ in SECURITY_SETTINGS}
    assert lines["KAFKA_SASL_PASSWORD"][1:3] == ["***", "env"]
    assert lines["KAFKA_SSL_KEY_PASSWORD"][1:3] == ["***", "env"]
    assert lines["REDIS_PASSWORD"][1:3] == ["***", "env"]
    assert lines["KAFKA_SASL_USERNAME"][1:3] == ["lw-user", "env"]  # not a secret
    assert lines["KAFKA_SECURITY_PROTOCOL"][1:3] == ["PLAINTEXT", "default"]
