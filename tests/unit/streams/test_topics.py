from __future__ import annotations

import pytest

from schemas.registry import all_schemas
from streams.config import Settings
from streams.topics import TOPICS, Direction, get_topic, resolve

SPEC_TOPICS = {
    "feedback.explicit",
    "feedback.implicit",
    "items",
    "recs.sessions",
    "recs.choices",
    "recs.interactions",
    "experiments.exposures",
    "experiments.conversions",
    "decisions",
    "metrics",
    "weights.preferences",
    "weights.algorithms",
    "weights.scoring",
    "experiments.results",
    "insights",
    "actions",
    "alerts",
    "deadletter",
}


def test_registry_covers_every_topic_of_the_spec() -> None:
    assert {t.name for t in TOPICS} >= SPEC_TOPICS


def test_every_topic_has_a_schema() -> None:
    schemas = all_schemas()
    for t in TOPICS:
        if t.direction is Direction.INTERNAL:
            assert t.schema is None
            continue
        assert t.schema in schemas, t.name
        props = schemas[t.schema].json_schema["properties"]
        assert t.key_field.split(".")[0] in props, (t.name, t.key_field)


def test_input_keys_follow_the_state_owner() -> None:
    assert get_topic("feedback.explicit").key_field == "user_id"
    assert get_topic("recs.choices").key_field == "session_id"
    assert get_topic("items").compacted
    assert all(t.schema is not None for t in TOPICS if t.direction is not Direction.INTERNAL)


def test_partitions_and_names_come_from_settings() -> None:
    s = Settings.from_env({"LOOPWISE_PARTITIONS": "8", "LOOPWISE_TOPIC_PREFIX": "x."})
    assert get_topic("feedback.explicit").partitions(s) == 8
    assert resolve(s, "x.feedback.explicit").name == "feedback.explicit"
    assert resolve(s, "feedback.explicit").name == "feedback.explicit"
    with pytest.raises(KeyError, match="known topics"):
        resolve(s, "nope")


def test_compacted_topics_have_compaction_config() -> None:
    assert get_topic("items").config()["cleanup.policy"] == "compact"
    assert get_topic("feedback.explicit").config()["cleanup.policy"] == "delete"
