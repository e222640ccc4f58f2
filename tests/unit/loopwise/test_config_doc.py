"""docs/configuration.md is the output of ``loopwise config --markdown``, kept up to date."""

from __future__ import annotations

import os

import pytest

from loopwise.cli.main import main
from streams.config import REPO_ROOT

DOC = REPO_ROOT / "docs" / "configuration.md"
REGENERATE = "regenerate it with `loopwise config --markdown > docs/configuration.md`"
ENV_PREFIXES = ("LOOPWISE_", "KAFKA_", "REDIS_", "PG", "DATABASE_URL")


def generated(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    capsys.readouterr()
    assert main(["config", "--markdown"]) == 0
    return capsys.readouterr().out


def test_configuration_doc_is_up_to_date(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = generated(monkeypatch, capsys)
    assert DOC.exists(), f"{DOC.relative_to(REPO_ROOT)} is missing: {REGENERATE}"
    assert DOC.read_text() == expected, (
        f"{DOC.relative_to(REPO_ROOT)} differs from `loopwise config --markdown`: {REGENERATE}"
    )


def test_the_reference_lists_every_setting_once_and_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.config import settings_table
    from streams.security import SECURITY_SETTINGS

    text = generated(monkeypatch, capsys)
    names = [row[0] for row in settings_table()] + [row[0] for row in SECURITY_SETTINGS]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == names
    for row in rows:  # a pipe inside a cell is escaped: every row has exactly three cells
        assert len(row.replace("\\|", "").split("|")) == 5, row
    monkeypatch.setenv("LOOPWISE_PARTITIONS", "12")
    monkeypatch.setenv("LOOPWISE_BATCH_SIZE", "not a number")  # an invalid environment too
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == text
