"""Typed settings read from the environment, validated once at start-up.

Every knob has an environment variable (``loopwise config``; docs/configuration.md is
generated from it). A bad value stops the process with a message naming the variable, the
value and what was expected, instead of failing later inside a library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORD_OVERHEAD_BYTES = 16_384


class ConfigError(ValueError):
    """A setting from the environment is missing or malformed."""


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _parse_float_map(raw: str) -> dict[str, float]:
    """``"new=0.3,power=0.05"`` → ``{"new": 0.3, "power": 0.05}``."""
    result: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected name=value pairs separated by commas, got {part!r}")
        result[name.strip()] = float(value)
    return result


@dataclass(frozen=True)
class Setting:
    env: str
    help: str
    parse: Callable[[str], Any] = str
    check: Callable[[Any], bool] | None = None
    expected: str = ""


def _setting(default: Any, env: str, help: str, *, secret: bool = False, **kwargs: Any) -> Any:
    metadata = {"setting": Setting(env=env, help=help, **kwargs), "default": default}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    # A secret (an API token) stays out of repr(), hence out of the start-up log line.
    return field(default=default, metadata=metadata, repr=not secret)


def _parse_names(raw: str) -> tuple[str, ...]:
    """``"a, b,c"`` → ``("a", "b", "c")``; names must be unique."""
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    return names


def _faults_ok(spec: str) -> bool:
    from streams.faults import parse

    try:
        parse(spec)
    except ValueError:
        return False
    return True


def _positive(value: float) -> bool:
    return value > 0


def _probability(value: float) -> bool:
    return 0 < value <= 1


_THRESHOLD = re.compile(
    r"^(?P<component>[^/]+)/(?P<metric>[^<>]+)(?P<op>[<>])(?P<limit>[-+0-9.eE]+)"
    r"(?::(?P<severity>info|warning|critical))?$"
)


def parse_health_thresholds(raw: str) -> tuple[tuple[str, str, str, float, str], ...]:
    """``"*/success_rate<0.8:warning"`` → ``(("*", "success_rate", "<", 0.8, "warning"),)``.

    The severity defaults to ``warning``; all limits of one (component, metric) must use the
    same comparison. Raises ValueError naming the bad entry.
    """
    rules = []
    ops: dict[tuple[str, str], str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        m = _THRESHOLD.match(part)
        if m is None:
            raise ValueError(f"bad threshold {part!r}")
        key = (m["component"].strip(), m["metric"].strip())
        if ops.setdefault(key, m["op"]) != m["op"]:
            raise ValueError(f"{key[0]}/{key[1]} mixes '<' and '>' limits")
        rules.append((*key, m["op"], float(m["limit"]), m["severity"] or "warning"))
    return tuple(rules)


@dataclass(frozen=True)
class Settings:
    """All runtime configuration. Build with :meth:`from_env`."""

    kafka_bootstrap_servers: str = _setting(
        "127.0.0.1:9092", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers, host:port[,...]"
    )
    redis_url: str = _setting(
        "redis://127.0.0.1:6390/0", "REDIS_URL", "Redis URL for latest values"
    )
    database_url: str = _setting(
        "postgresql://loopwise:loopwise@127.0.0.1:5440/loopwise",
        "DATABASE_URL",
        "PostgreSQL URL for durable records",
    )
    topic_prefix: str = _setting(
        "loopwise.", "LOOPWISE_TOPIC_PREFIX", "prefix of every topic name (and of Redis keys)"
    )
    app_id: str = _setting(
        "loopwise", "LOOPWISE_APP_ID", "consumer group / faust app id (changelog topic prefix)"
    )
    partitions: int = _setting(
        4,
        "LOOPWISE_PARTITIONS",
        "partitions of keyed topics; a multiple of LOOPWISE_EXPECTED_WORKERS",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    expected_workers: int = _setting(
        2,
        "LOOPWISE_EXPECTED_WORKERS",
        "workers the partition count is planned for",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    replication_factor: int = _setting(
        1,
        "LOOPWISE_REPLICATION_FACTOR",
        "replication factor of created topics",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    batch_size: int = _setting(
        500,
        "LOOPWISE_BATCH_SIZE",
        "maximum events an agent takes per batch",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    batch_within_s: float = _setting(
        0.2,
        "LOOPWISE_BATCH_WITHIN_S",
        "seconds an agent waits to fill a batch",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    batch_max_events: int = _setting(
        20_000,
        "LOOPWISE_BATCH_MAX_EVENTS",
        "most events an agent processes at once (a batch of relay records is cut to this size)",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    implicit_relay: bool = _setting(
        True,
        "LOOPWISE_IMPLICIT_RELAY",
        "read feedback.implicit through the batched relay (agents/preferences/relay.py) rather "
        "than faust's per-event stream",
        parse=_parse_bool,
    )
    relay_max_events: int = _setting(
        5000,
        "LOOPWISE_RELAY_MAX_EVENTS",
        "events the implicit relay reads, validates and forwards per batch",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    relay_within_s: float = _setting(
        0.05,
        "LOOPWISE_RELAY_WITHIN_S",
        "seconds the implicit relay waits to fill a batch",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    relay_record_events: int = _setting(
        1000,
        "LOOPWISE_RELAY_RECORD_EVENTS",
        "events per record on feedback.implicit.relay (records stay well under 1 MB)",
        parse=int,
        check=lambda v: 1 <= v <= 3000,
        expected="an integer in 1..3000",
    )
    session_timeout_s: float = _setting(
        10.0,
        "LOOPWISE_SESSION_TIMEOUT_S",
        "consumer-group session timeout: how soon a crashed worker's partitions move",
        parse=float,
        check=lambda v: 6 <= v <= 300,
        expected="seconds in 6..300",
    )
    web_host: str = _setting("127.0.0.1", "LOOPWISE_WEB_HOST", "worker HTTP bind address")
    web_port: int = _setting(
        6066,
        "LOOPWISE_WEB_PORT",
        "worker HTTP port (/health, /ready, /metrics)",
        parse=int,
        check=lambda p: 0 < p < 65536,
        expected="a TCP port",
    )
    data_dir: Path = _setting(
        REPO_ROOT / ".run" / "worker-data",
        "LOOPWISE_DATA_DIR",
        "directory for the worker's local state",
        parse=Path,
    )
    item_dim: int = _setting(
        32,
        "LOOPWISE_ITEM_DIM",
        "dimension of item feature and user preference vectors",
        parse=int,
        check=lambda d: 0 < d <= 1024,
        expected="an integer in 1..1024",
    )
    base_alpha: float = _setting(
        0.1,
        "LOOPWISE_BASE_ALPHA",
        "base learning rate of the preference EMA",
        parse=float,
        check=_probability,
        expected="a number in (0, 1]",
    )
    max_alpha: float = _setting(
        0.5,
        "LOOPWISE_MAX_ALPHA",
        "upper clip of the per-event EMA rate",
        parse=float,
        check=_probability,
        expected="a number in (0, 1]",
    )
    type_multipliers: dict[str, float] = _setting(
        {
            "rating": 1.0,
            "like": 1.0,
            "dislike": 1.0,
            "save": 1.2,
            "share": 1.5,
            "impression": 0.02,
            "view": 0.1,
            "click": 0.3,
            "dwell": 0.2,
            "conversion": 1.0,
        },
        "LOOPWISE_TYPE_MULTIPLIERS",
        "per-kind EMA multipliers, e.g. 'like=1,click=0.3' (merged with the defaults)",
        parse=_parse_float_map,
        expected="name=number pairs separated by commas",
    )
    implicit_window_s: float = _setting(
        5.0,
        "LOOPWISE_IMPLICIT_WINDOW_S",
        "implicit feedback is summed per user over this window and applied once (0: per batch)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    segment_new_below: int = _setting(
        5,
        "LOOPWISE_SEGMENT_NEW_BELOW",
        "users with fewer interactions are 'new'",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    segment_power_above: int = _setting(
        100,
        "LOOPWISE_SEGMENT_POWER_ABOVE",
        "users with more interactions are 'power'",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    inactive_after_days: float = _setting(
        30.0,
        "LOOPWISE_INACTIVE_AFTER_DAYS",
        "users without activity for this long are 'inactive'",
        parse=float,
        check=_positive,
        expected="a positive number of days",
    )
    inactivity_scan_s: float = _setting(
        3600.0,
        "LOOPWISE_INACTIVITY_SCAN_S",
        "how often a worker re-classifies all of its users (inactivity)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    guard_enabled: bool = _setting(
        True,
        "LOOPWISE_GUARD",
        "rate limits and spam checks before learning (flagged events are quarantined)",
        parse=_parse_bool,
        expected="on/off",
    )
    guard_max_per_minute: int = _setting(
        30,
        "LOOPWISE_GUARD_MAX_PER_MINUTE",
        "hard limit of feedback events per user per minute (by event time)",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    guard_max_per_hour: int = _setting(
        300,
        "LOOPWISE_GUARD_MAX_PER_HOUR",
        "hard limit of feedback events per user per hour",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    guard_flag_below: float = _setting(
        40.0,
        "LOOPWISE_GUARD_FLAG_BELOW",
        "events of users whose reliability score (0-100) is below this are quarantined",
        parse=float,
        check=lambda v: 0 <= v <= 100,
        expected="a number in 0..100",
    )
    dedupe_horizon_s: float = _setting(
        3600.0,
        "LOOPWISE_DEDUPE_HORIZON_S",
        "a re-sent event (same event id) is recognised for this long after the first",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    # Replays are made idempotent by the per-topic offset watermark in each user's state;
    # ids only catch the same event produced twice at different offsets (producer retries,
    # within seconds or minutes), which the horizon covers. Keeping ids beyond it cost
    # ~190 B per quiet user (16 ids), most of the 300 MB per 1M users target.
    dedupe_ids: int = _setting(
        0,
        "LOOPWISE_DEDUPE_IDS",
        "event ids kept per user beyond the horizon (the most recent ones; 0: none, so a "
        "quiet user carries no ids)",
        parse=int,
        check=lambda v: 0 <= v <= 1024,
        expected="an integer in 0..1024",
    )
    vector_dtype: str = _setting(
        "int16",
        "LOOPWISE_VECTOR_DTYPE",
        "how preference vectors are stored: int16 (one shared power-of-two scale per vector, "
        "~2^-15 of the largest component), float16, or float32 (exact, over 300 MB per 1M "
        "users); published vectors equal the stored ones",
        check=lambda v: v in {"int16", "float16", "float32"},
        expected="int16, float16 or float32",
    )
    algorithms: tuple[str, ...] = _setting(
        ("collaborative", "content", "popular", "trending"),
        "LOOPWISE_ALGORITHMS",
        "recommendation algorithms the bandits weigh (impressions of others are dead-lettered)",
        parse=_parse_names,
        check=lambda names: 1 <= len(names) <= 64,
        expected="1 to 64 unique names separated by commas",
    )
    attribution_window_s: float = _setting(
        1800.0,
        "LOOPWISE_ATTRIBUTION_WINDOW_S",
        "an impression's first click/conversion within this window is a success, else a failure",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    attribution_idle_grace_s: float = _setting(
        60.0,
        "LOOPWISE_ATTRIBUTION_IDLE_GRACE_S",
        "windows of an idle partition close by wall clock after this extra delay",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    bandit_publish_s: float = _setting(
        5.0,
        "LOOPWISE_BANDIT_PUBLISH_S",
        "how often the leader publishes weights.algorithms",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    bandit_half_life_s: float = _setting(
        0.0,
        "LOOPWISE_BANDIT_HALF_LIFE_S",
        "discounted (non-stationary) algorithm posteriors: an impression's weight halves every"
        " this many seconds of event time; 0 keeps stationary posteriors",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0 (0 = off)",
    )
    bandit_contextual: bool = _setting(
        False,
        "LOOPWISE_BANDIT_CONTEXTUAL",
        "contextual mode: also learn a linear Thompson model per (segment, algorithm) over"
        " user preference vectors, used by GET /users/{id}/strategy (needs item dim <= 64)",
        parse=_parse_bool,
        expected="on/off",
    )
    bandit_linear_lambda: float = _setting(
        1.0,
        "LOOPWISE_BANDIT_LINEAR_LAMBDA",
        "contextual mode: ridge prior precision lambda of the linear models",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    bandit_linear_v: float = _setting(
        0.3,
        "LOOPWISE_BANDIT_LINEAR_V",
        "contextual mode: posterior scale v of linear Thompson sampling (about the reward noise)",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    exploration_rates: dict[str, float] = _setting(
        {"new": 0.30, "inactive": 0.20, "regular": 0.10, "power": 0.05},
        "LOOPWISE_EXPLORATION_RATES",
        "exploration rate per segment, e.g. 'new=0.3,power=0.05' (merged with the defaults)",
        parse=_parse_float_map,
        check=lambda rates: (
            set(rates) == {"new", "inactive", "regular", "power"}
            and all(0 <= r <= 1 for r in rates.values())
        ),
        expected="new/inactive/regular/power = numbers in [0, 1]",
    )
    disable_ctr: float = _setting(
        0.005,
        "LOOPWISE_DISABLE_CTR",
        "algorithms whose CTR is confidently below this are disabled",
        parse=float,
        check=_probability,
        expected="a number in (0, 1]",
    )
    disable_min_impressions: int = _setting(
        1000,
        "LOOPWISE_DISABLE_MIN_IMPRESSIONS",
        "resolved impressions needed in the window before disabling",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    disable_window_days: int = _setting(
        7,
        "LOOPWISE_DISABLE_WINDOW_DAYS",
        "sliding window of the auto-disable rule (and its cool-down), in days",
        parse=int,
        check=lambda v: 1 <= v <= 90,
        expected="an integer in 1..90",
    )
    max_message_bytes: int = _setting(
        1_000_000,
        "LOOPWISE_MAX_MESSAGE_BYTES",
        "input messages larger than this (as the consumer sees them, decompressed) are "
        "dead-lettered before parsing; producers' request size and the topics' "
        "max.message.bytes are this plus 16 KiB of record overhead",
        parse=int,
        check=lambda v: 65_536 <= v <= 100_000_000,
        expected="an integer in 65536..100000000",
    )
    ts_max_age_s: float = _setting(
        157_766_400.0,
        "LOOPWISE_TS_MAX_AGE_S",
        "an event whose ts is more than this before its Kafka record time is dead-lettered "
        "(timestamp_out_of_range); default 1826 days",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    ts_max_ahead_s: float = _setting(
        3600.0,
        "LOOPWISE_TS_MAX_AHEAD_S",
        "an event whose ts is more than this after its Kafka record time is dead-lettered "
        "(timestamp_out_of_range)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    stuck_after_s: float = _setting(
        60.0,
        "LOOPWISE_STUCK_AFTER_S",
        "/ready answers 503 when a consumer has been failing, or has not advanced while it "
        "has lag, for this long",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    sink_retry_max_s: float = _setting(
        5.0,
        "LOOPWISE_SINK_RETRY_MAX_S",
        "longest back-off between retries of a transient Redis/PostgreSQL fault",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    api_token: str = _setting(
        "",
        "LOOPWISE_API_TOKEN",
        "bearer token of the mutating HTTP endpoints (POST /experiments...); empty: refused",
        secret=True,
    )
    api_max_body_bytes: int = _setting(
        65_536,
        "LOOPWISE_API_MAX_BODY_BYTES",
        "larger HTTP request bodies are refused with 413",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    experiment_results_interval_s: float = _setting(
        1.0,
        "LOOPWISE_EXPERIMENT_RESULTS_INTERVAL_S",
        "at most one result per experiment per this many seconds (the last change always)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    experiment_history_interval_s: float = _setting(
        60.0,
        "LOOPWISE_EXPERIMENT_HISTORY_INTERVAL_S",
        "results kept in PostgreSQL history at most this often (decisions always)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    experiment_min_sample: int = _setting(
        500,
        "LOOPWISE_EXPERIMENT_MIN_SAMPLE",
        "default minimum units per variant before an early stop (min_sample_size)",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    experiment_min_runtime_s: int = _setting(
        3600,
        "LOOPWISE_EXPERIMENT_MIN_RUNTIME_S",
        "default minimum run time (event time) before an early stop (min_runtime_seconds)",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    experiment_realloc_interval_s: float = _setting(
        3600.0,
        "LOOPWISE_EXPERIMENT_REALLOC_INTERVAL_S",
        "bandit mode: event-time length of an allocation period before reallocating",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    experiment_bandit: str = _setting(
        "top_two",
        "LOOPWISE_EXPERIMENT_BANDIT",
        "bandit mode allocation: thompson or top_two (top-two Thompson sampling)",
        check=lambda v: v in {"thompson", "top_two"},
        expected="thompson or top_two",
    )
    experiment_max_held_units: int = _setting(
        10_000,
        "LOOPWISE_EXPERIMENT_MAX_HELD_UNITS",
        "conversions of not-yet-exposed units held per experiment (more: dead-lettered)",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    experiment_unexposed_wait_s: float = _setting(
        3600.0,
        "LOOPWISE_EXPERIMENT_UNEXPOSED_WAIT_S",
        "a held conversion is dead-lettered (unexposed_unit) once exposures are this far past "
        "it in event time",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    experiment_unit_retention_s: float = _setting(
        7 * 86400.0,
        "LOOPWISE_EXPERIMENT_UNIT_RETENTION_S",
        "unit records of a stopped or concluded experiment are deleted this long after it ended",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    choice_factors: tuple[str, ...] = _setting(
        ("price", "quality", "speed", "proximity", "capacity", "reliability"),
        "LOOPWISE_CHOICE_FACTORS",
        "scoring factors of the customer choice model (candidates must score every one)",
        parse=_parse_names,
        check=lambda names: (
            2 <= len(names) <= 32 and all(re.fullmatch(r"[a-z][a-z0-9_]{0,31}", n) for n in names)
        ),
        expected="2 to 32 unique factor names ([a-z][a-z0-9_]*) separated by commas",
    )
    choice_default_weights: dict[str, float] = _setting(
        {},
        "LOOPWISE_CHOICE_DEFAULT_WEIGHTS",
        "default scoring weights, e.g. 'price=0.3,quality=0.3,...' (empty: uniform)",
        parse=_parse_float_map,
        check=lambda weights: all(w >= 0 for w in weights.values()),
        expected="factor=number pairs (non-negative) separated by commas",
    )
    choice_weight_min: float = _setting(
        0.02,
        "LOOPWISE_CHOICE_WEIGHT_MIN",
        "lower bound of every published scoring weight",
        parse=float,
        check=lambda v: 0 <= v < 1,
        expected="a number in [0, 1)",
    )
    choice_weight_max: float = _setting(
        0.6,
        "LOOPWISE_CHOICE_WEIGHT_MAX",
        "upper bound of every published scoring weight",
        parse=float,
        check=_probability,
        expected="a number in (0, 1]",
    )
    choice_min_sample: int = _setting(
        50,
        "LOOPWISE_CHOICE_MIN_SAMPLE",
        "sessions a segment needs before its learned weights are applied",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    choice_min_confidence: float = _setting(
        0.7,
        "LOOPWISE_CHOICE_MIN_CONFIDENCE",
        "confidence a segment's weights need before they are applied",
        parse=float,
        check=lambda v: 0 <= v <= 1,
        expected="a number in [0, 1]",
    )
    choice_session_wait_s: float = _setting(
        30.0,
        "LOOPWISE_CHOICE_SESSION_WAIT_S",
        "a choice/interaction waits this long for its session, then is dead-lettered",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    choice_session_ttl_s: float = _setting(
        2_592_000.0,
        "LOOPWISE_CHOICE_SESSION_TTL_S",
        "a session without a choice for this long closes as 'no choice' (0: never)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    choice_session_retention_s: float = _setting(
        86_400.0,
        "LOOPWISE_CHOICE_SESSION_RETENTION_S",
        "completed sessions are kept this long to recognise re-sent events",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    choice_scan_s: float = _setting(
        300.0,
        "LOOPWISE_CHOICE_SCAN_S",
        "how often a worker scans its sessions (retention, sessions past the TTL)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    choice_window_s: float = _setting(
        3600.0,
        "LOOPWISE_CHOICE_WINDOW_S",
        "rolling window of the choice analytics and alerts (event time)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    choice_bucket_s: float = _setting(
        300.0,
        "LOOPWISE_CHOICE_BUCKET_S",
        "bucket of the rolling window (a divisor of the window is best)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    choice_alert_min_sessions: int = _setting(
        20,
        "LOOPWISE_CHOICE_ALERT_MIN_SESSIONS",
        "sessions a segment's window needs before its rate alerts are evaluated",
        parse=int,
        check=lambda v: v >= 1,
        expected="an integer >= 1",
    )
    choice_alert_conversion_below: float = _setting(
        0.6,
        "LOOPWISE_CHOICE_ALERT_CONVERSION_BELOW",
        "alert when a segment's conversion rate (sessions with a choice) is below this",
        parse=float,
        check=lambda v: 0 <= v <= 1,
        expected="a number in [0, 1]",
    )
    choice_alert_rank_above: float = _setting(
        2.0,
        "LOOPWISE_CHOICE_ALERT_RANK_ABOVE",
        "alert when a segment's average chosen rank is above this",
        parse=float,
        check=lambda v: v >= 1,
        expected="a number >= 1",
    )
    choice_alert_confidence_below: float = _setting(
        0.5,
        "LOOPWISE_CHOICE_ALERT_CONFIDENCE_BELOW",
        "alert when a segment's learning confidence stays below this for the period below",
        parse=float,
        check=lambda v: 0 <= v <= 1,
        expected="a number in [0, 1]",
    )
    choice_alert_confidence_period_s: float = _setting(
        86_400.0,
        "LOOPWISE_CHOICE_ALERT_CONFIDENCE_PERIOD_S",
        "how long the confidence must stay low before alerting (event time)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    choice_alert_satisfaction_below: float = _setting(
        3.5,
        "LOOPWISE_CHOICE_ALERT_SATISFACTION_BELOW",
        "alert when a segment's mean satisfaction (1-5) is below this",
        parse=float,
        check=lambda v: 1 <= v <= 5,
        expected="a number in [1, 5]",
    )
    choice_alert_repeat_s: float = _setting(
        3600.0,
        "LOOPWISE_CHOICE_ALERT_REPEAT_S",
        "an alert still firing after this long (event time) is repeated, escalated",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    insights_window_s: float = _setting(
        1800.0,
        "LOOPWISE_INSIGHTS_WINDOW_S",
        "length of the insights analytics windows (event time); trends and checks per window",
        parse=float,
        check=lambda v: 1 <= v <= 86_400,
        expected="seconds in 1..86400",
    )
    insights_grace_s: float = _setting(
        60.0,
        "LOOPWISE_INSIGHTS_GRACE_S",
        "a window closes once the component's events are this far past its end, or once it "
        "has had no event for this long (wall clock)",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    insights_retention_h: float = _setting(
        168.0,
        "LOOPWISE_INSIGHTS_RETENTION_H",
        "windows kept in the worker table; older events are not counted",
        parse=float,
        check=_positive,
        expected="a positive number of hours",
    )
    insights_history_days: float = _setting(
        90.0,
        "LOOPWISE_INSIGHTS_HISTORY_DAYS",
        "windows, alerts, resolved insights and actions kept in PostgreSQL",
        parse=float,
        check=_positive,
        expected="a positive number of days",
    )
    insights_eval_interval_s: float = _setting(
        10.0,
        "LOOPWISE_INSIGHTS_EVAL_INTERVAL_S",
        "how often a worker evaluates closed windows (health, trends, insights, heartbeats)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    insights_min_samples: int = _setting(
        20,
        "LOOPWISE_INSIGHTS_MIN_SAMPLES",
        "samples a window (or group) needs before its value counts in trends and checks",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    insights_trend_windows: int = _setting(
        12,
        "LOOPWISE_INSIGHTS_TREND_WINDOWS",
        "closed windows in a trend series (a shorter series has proportionally less confidence)",
        parse=int,
        check=lambda v: 3 <= v <= 1000,
        expected="an integer in 3..1000",
    )
    insights_trend_min_windows: int = _setting(
        6,
        "LOOPWISE_INSIGHTS_TREND_MIN_WINDOWS",
        "windows with data a series needs before it is tested for a trend",
        parse=int,
        check=lambda v: v >= 3,
        expected="an integer >= 3",
    )
    insights_alpha: float = _setting(
        0.05,
        "LOOPWISE_INSIGHTS_ALPHA",
        "false discovery rate of the trend and comparison tests (Benjamini-Hochberg per pass)",
        parse=float,
        check=lambda v: 0 < v < 0.5,
        expected="a number in (0, 0.5)",
    )
    insights_min_change: float = _setting(
        0.05,
        "LOOPWISE_INSIGHTS_MIN_CHANGE",
        "smallest relative change over a trend (or gap to the rest) reported as an insight",
        parse=float,
        check=lambda v: v >= 0,
        expected="a number >= 0",
    )
    insights_high_change: float = _setting(
        0.2,
        "LOOPWISE_INSIGHTS_HIGH_CHANGE",
        "a decline at least this large (relative) is a high-priority insight",
        parse=float,
        check=_positive,
        expected="a positive number",
    )
    insights_thresholds: str = _setting(
        "*/success_rate<0.8:warning,*/success_rate<0.5:critical",
        "LOOPWISE_INSIGHTS_THRESHOLDS",
        "health thresholds 'component/metric<limit:severity' ('>' for upper limits, '*' any "
        "component, severity info|warning|critical), separated by commas",
        parse=lambda raw: (parse_health_thresholds(raw), raw)[1],
    )
    insights_escalate_after: int = _setting(
        3,
        "LOOPWISE_INSIGHTS_ESCALATE_AFTER",
        "consecutive failing checks per escalation level of a health alert",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    insights_heartbeats: dict[str, float] = _setting(
        {},
        "LOOPWISE_INSIGHTS_HEARTBEATS",
        "expected interval in seconds between events of a scheduled component, e.g. "
        "'nightly-enricher=86400' (missed-run alerts)",
        parse=_parse_float_map,
        check=lambda m: all(v > 0 for v in m.values()),
        expected="component=seconds pairs separated by commas",
    )
    insights_heartbeat_grace_s: float = _setting(
        60.0,
        "LOOPWISE_INSIGHTS_HEARTBEAT_GRACE_S",
        "lateness allowed to a scheduled component before a run counts as missed",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    insights_dedupe_ids: int = _setting(
        512,
        "LOOPWISE_INSIGHTS_DEDUPE_IDS",
        "recent event ids kept per window to drop re-sent decisions and metrics",
        parse=int,
        check=lambda v: 1 <= v <= 65_536,
        expected="an integer in 1..65536",
    )
    insights_max_groups: int = _setting(
        32,
        "LOOPWISE_INSIGHTS_MAX_GROUPS",
        "values per dimension (method, persona, device, strategy) per window; more: '(other)'",
        parse=int,
        check=_positive,
        expected="a positive integer",
    )
    insights_dominant_prob: float = _setting(
        0.95,
        "LOOPWISE_INSIGHTS_DOMINANT_PROB",
        "probability of being best that makes an algorithm a segment's dominant one (insight)",
        parse=float,
        check=lambda v: 0.5 < v <= 1,
        expected="a number in (0.5, 1]",
    )
    insights_scoring_stuck_s: float = _setting(
        3600.0,
        "LOOPWISE_INSIGHTS_SCORING_STUCK_S",
        "event time a segment's scoring weights may stay on the defaults before an insight",
        parse=float,
        check=lambda v: v >= 0,
        expected="seconds >= 0",
    )
    optimization_strategy: str = _setting(
        "balanced",
        "LOOPWISE_OPTIMIZATION_STRATEGY",
        "greedy, balanced or conservative: confidence threshold, risk and actions per cycle",
        check=lambda v: v in {"greedy", "balanced", "conservative"},
        expected="greedy, balanced or conservative",
    )
    optimization_interval_s: float = _setting(
        600.0,
        "LOOPWISE_OPTIMIZATION_INTERVAL_S",
        "how often the leader runs an optimization cycle (actions, goals, tickets)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    optimization_max_actions: int = _setting(
        0,
        "LOOPWISE_OPTIMIZATION_MAX_ACTIONS",
        "actions per cycle (0: the strategy's own limit)",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    value_per_conversion: float = _setting(
        0.0,
        "LOOPWISE_VALUE_PER_CONVERSION",
        "value of one conversion (success) for the ROI of improvement tickets (0: no ROI)",
        parse=float,
        check=lambda v: v >= 0,
        expected="a number >= 0",
    )
    ticket_measure_h: float = _setting(
        24.0,
        "LOOPWISE_TICKET_MEASURE_H",
        "length of the matched before/after windows of an implemented ticket",
        parse=float,
        check=_positive,
        expected="a positive number of hours",
    )
    report_interval_h: float = _setting(
        168.0,
        "LOOPWISE_REPORT_INTERVAL_H",
        "scheduled report period (weekly by default; 0: no scheduled reports)",
        parse=float,
        check=lambda v: v >= 0,
        expected="hours >= 0",
    )
    report_dir: Path = _setting(
        REPO_ROOT / ".run" / "reports",
        "LOOPWISE_REPORT_DIR",
        "archive of generated reports (Markdown, HTML, JSON)",
        parse=Path,
    )
    report_retention_days: float = _setting(
        90.0,
        "LOOPWISE_REPORT_RETENTION_DAYS",
        "archived reports older than this are deleted",
        parse=float,
        check=_positive,
        expected="a positive number of days",
    )
    job_retry_base_s: float = _setting(
        60.0,
        "LOOPWISE_JOB_RETRY_BASE_S",
        "first retry delay of a failed scheduled job (doubling, capped by ..._MAX_S)",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    job_retry_max_s: float = _setting(
        3600.0,
        "LOOPWISE_JOB_RETRY_MAX_S",
        "longest retry delay of a failed scheduled job",
        parse=float,
        check=_positive,
        expected="a positive number of seconds",
    )
    job_max_attempts: int = _setting(
        3,
        "LOOPWISE_JOB_MAX_ATTEMPTS",
        "retries of a failed scheduled job before it is alerted and left for its next run",
        parse=int,
        check=lambda v: v >= 0,
        expected="an integer >= 0",
    )
    log_level: str = _setting(
        "info",
        "LOOPWISE_LOG_LEVEL",
        "worker log level",
        check=lambda v: v.lower() in {"debug", "info", "warning", "error"},
        expected="debug, info, warning or error",
    )
    faults: str = _setting(
        "",
        "LOOPWISE_FAULTS",
        "test hook: transient faults at processing points, e.g. decode=0.05,*=0.01 "
        "(streams/faults.py); empty in production",
        check=lambda v: _faults_ok(v),
        expected="point=probability pairs separated by commas",
    )
    fault_seed: int = _setting(
        0, "LOOPWISE_FAULT_SEED", "test hook: seed of LOOPWISE_FAULTS", parse=int
    )
    crash_at: str = _setting(
        "",
        "LOOPWISE_CRASH_AT",
        "test hook: exit at a processing boundary (after_table, after_redis, ...)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        errors: list[str] = []
        for f in fields(cls):
            spec: Setting = f.metadata["setting"]
            raw = env.get(spec.env)
            if raw is None:
                continue
            try:
                value = spec.parse(raw)
            except ValueError as exc:
                errors.append(f"{spec.env}={raw!r}: {exc}")
                continue
            if f.name in ("type_multipliers", "exploration_rates"):
                value = {**f.metadata["default"], **value}
            if spec.check is not None and not spec.check(value):
                errors.append(f"{spec.env}={raw!r}: expected {spec.expected}")
                continue
            values[f.name] = value
        settings = cls(**values)
        errors.extend(settings._cross_field_errors())
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
        return settings

    def _cross_field_errors(self) -> list[str]:
        errors = []
        if self.partitions % self.expected_workers:
            errors.append(
                f"LOOPWISE_PARTITIONS={self.partitions} is not a multiple of "
                f"LOOPWISE_EXPECTED_WORKERS={self.expected_workers}: workers would get "
                "unequal shares of the keys"
            )
        if self.segment_power_above < self.segment_new_below:
            errors.append("LOOPWISE_SEGMENT_POWER_ABOVE must be >= LOOPWISE_SEGMENT_NEW_BELOW")
        if self.bandit_contextual:
            # (d+1)² float64 per (segment, algorithm), base64, travel in every bandits partial:
            # it must fit a default Kafka message (1 MB) with room for the counts.
            partial_bytes = 4 * len(self.algorithms) * (self.item_dim + 1) ** 2 * 8 * 4 // 3
            if self.item_dim > 64 or partial_bytes > 800_000:
                errors.append(
                    "LOOPWISE_BANDIT_CONTEXTUAL needs LOOPWISE_ITEM_DIM <= 64 and "
                    f"algorithms x (dim + 1)^2 small enough: a partial would be {partial_bytes}"
                    " bytes (> 800000)"
                )
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            errors.append(f"REDIS_URL={self.redis_url!r}: expected redis://, rediss:// or unix://")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            errors.append(f"DATABASE_URL={self.database_url!r}: expected postgresql://...")
        errors.extend(self._choice_errors())
        return errors

    def _choice_errors(self) -> list[str]:
        errors = []
        factors = self.choice_factors
        if not self.choice_weight_min <= self.choice_weight_max:
            errors.append("LOOPWISE_CHOICE_WEIGHT_MIN must be <= LOOPWISE_CHOICE_WEIGHT_MAX")
        if not len(factors) * self.choice_weight_min <= 1 <= len(factors) * self.choice_weight_max:
            errors.append(
                "LOOPWISE_CHOICE_WEIGHT_MIN/MAX: weights within the bounds cannot sum to 1 "
                f"over {len(factors)} factors"
            )
        weights = self.choice_default_weights
        if weights:
            if set(weights) != set(factors):
                errors.append(
                    "LOOPWISE_CHOICE_DEFAULT_WEIGHTS must name every factor of "
                    f"LOOPWISE_CHOICE_FACTORS exactly once ({','.join(factors)})"
                )
            elif abs(sum(weights.values()) - 1.0) > 1e-6:
                errors.append("LOOPWISE_CHOICE_DEFAULT_WEIGHTS must sum to 1")
        return errors

    def topic(self, name: str) -> str:
        """Full topic name for a registry name (``feedback.explicit`` → prefixed)."""
        return f"{self.topic_prefix}{name}"

    @property
    def max_record_bytes(self) -> int:
        """The largest record a Loopwise producer sends and a Loopwise topic accepts: the
        input limit plus room for the record's own overhead (key, headers, batch header)."""
        return self.max_message_bytes + RECORD_OVERHEAD_BYTES

    @property
    def implicit_input(self) -> str:
        """The registry topic the preferences agent reads implicit feedback from."""
        return "feedback.implicit.relay" if self.implicit_relay else "feedback.implicit"


def _shown(value: Any) -> str:
    """A setting's value as the docs and ``loopwise config`` write it."""
    if isinstance(value, Path):
        return str(value.relative_to(REPO_ROOT)) if value.is_relative_to(REPO_ROOT) else str(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) rows for docs/configuration.md and ``loopwise config``."""
    rows = []
    for f in fields(Settings):
        spec: Setting = f.metadata["setting"]
        rows.append((spec.env, _shown(f.metadata["default"]), spec.help))
    return rows


def settings_in_force(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str, str, str]]:
    """(env var, value in force, "env" or "default", description) rows; secrets (API
    tokens) and passwords inside URLs are masked."""
    from urllib.parse import urlsplit

    env = os.environ if environ is None else environ
    rows = []
    for f in fields(Settings):
        spec: Setting = f.metadata["setting"]
        value = _shown(getattr(settings, f.name))
        if not f.repr and value:  # a secret: see _setting
            value = "***"
        elif "://" in value:
            try:
                parts = urlsplit(value)
                if parts.password:
                    value = value.replace(f":{parts.password}@", ":***@", 1)
            except ValueError:
                value = "<unparseable url>"
            # libpq also takes ?password=... in the query string
            value = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", value)
        rows.append((spec.env, value, "env" if spec.env in env else "default", spec.help))
    return rows
