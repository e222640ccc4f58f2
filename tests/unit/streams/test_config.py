from __future__ import annotations

from pathlib import Path

import pytest

from streams.config import ConfigError, Settings, settings_table


def test_defaults_are_valid() -> None:
    s = Settings.from_env({})
    assert s.partitions % s.expected_workers == 0
    assert s.topic("feedback.explicit") == "loopwise.feedback.explicit"


def test_values_are_parsed_from_env() -> None:
    s = Settings.from_env(
        {
            "LOOPWISE_PARTITIONS": "6",
            "LOOPWISE_EXPECTED_WORKERS": "3",
            "LOOPWISE_BATCH_WITHIN_S": "0.5",
            "LOOPWISE_TYPE_MULTIPLIERS": "click=0.5, like=2",
            "LOOPWISE_DATA_DIR": "/tmp/x",
        }
    )
    assert (s.partitions, s.expected_workers, s.batch_within_s) == (6, 3, 0.5)
    assert s.type_multipliers["click"] == 0.5 and s.type_multipliers["like"] == 2.0
    assert s.type_multipliers["rating"] == 1.0  # defaults kept for unnamed kinds
    assert s.data_dir == Path("/tmp/x")


def test_every_error_is_reported_with_its_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {
                "LOOPWISE_PARTITIONS": "many",
                "LOOPWISE_BASE_ALPHA": "2",
                "REDIS_URL": "http://nope",
            }
        )
    text = str(info.value)
    assert "LOOPWISE_PARTITIONS='many'" in text
    assert "LOOPWISE_BASE_ALPHA='2': expected a number in (0, 1]" in text
    assert "REDIS_URL" in text


def test_partitions_must_be_a_multiple_of_workers() -> None:
    with pytest.raises(ConfigError, match="not a multiple"):
        Settings.from_env({"LOOPWISE_PARTITIONS": "5", "LOOPWISE_EXPECTED_WORKERS": "2"})


def test_settings_table_documents_every_variable() -> None:
    envs = [row[0] for row in settings_table()]
    assert "KAFKA_BOOTSTRAP_SERVERS" in envs and "LOOPWISE_TOPIC_PREFIX" in envs
    assert len(envs) == len(set(envs))
