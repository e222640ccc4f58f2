"""``loopwise state show``, ``loopwise lag`` and ``dlq replay`` progress, without services.

The stores and the broker are replaced by fakes at the seams (`read`, `get`, `sample`,
`read_topic`/`producer`); tests/integration/test_cli_ops.py runs the real thing.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from loopwise.cli import ops as cli_ops
from loopwise.cli.main import build_parser, main
from loopwise.cli.ops import (
    LagReport,
    NotFound,
    OpsError,
    PartitionLag,
    build_report,
    format_report,
    progress_line,
    read_worker_state,
    watch,
)
from streams.config import Settings

SETTINGS = Settings.from_env({})
EXPLICIT = SETTINGS.topic("feedback.explicit")
IMPLICIT = SETTINGS.topic("feedback.implicit")


# --------------------------------------------------------------------------- parsing


def test_state_show_defaults_to_a_user_read_from_redis() -> None:
    args = build_parser().parse_args(["state", "show", "u1"])
    assert (args.key, args.kind, args.worker) == ("u1", "user", None)
    assert args.func is cli_ops.cmd_state_show


def test_state_show_kind_and_worker() -> None:
    args = build_parser().parse_args(
        ["state", "show", "exp-1", "--kind", "experiment", "--worker", "http://w:6066"]
    )
    assert (args.kind, args.worker, args.timeout) == ("experiment", "http://w:6066", 5.0)


def test_state_show_refuses_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["state", "show", "x", "--kind", "item"])
    assert exc.value.code == 2
    assert "invalid choice: 'item'" in capsys.readouterr().err


def test_lag_options() -> None:
    plain = build_parser().parse_args(["lag"])
    assert (plain.json, plain.watch, plain.count) == (False, None, 0)
    watching = build_parser().parse_args(["lag", "--json", "--watch", "2.5", "--count", "3"])
    assert (watching.json, watching.watch, watching.count) == (True, 2.5, 3)
    assert watching.func is cli_ops.cmd_lag


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_lag_watch_interval_must_be_positive(
    interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lag", "--watch", interval])
    assert "must be > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["state", "show", "--help"], ["--kind", "--worker", "Exit 1 when the key has no state"]),
        (["lag", "--help"], ["--watch N", "--count K", "Committed offset, end offset and lag"]),
        (["dlq", "replay", "--help"], ["--progress-every N", "--reason", "after fixing the cause"]),
    ],
)
def test_new_commands_have_help(
    argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for fragment in expected:
        assert fragment in text


def test_top_level_help_lists_the_new_commands() -> None:
    text = build_parser().format_help()
    assert "loopwise state show KEY" in text and "loopwise lag" in text


# --------------------------------------------------------------------------- state show

PREFS = {"user_id": "u1", "segment": "regular", "interactions": 7, "version": 9, "vector": [0.1]}
ALGS = {"segment": "regular", "algorithms": [{"name": "a", "weight": 1.0}], "version": 3}


def _reader(values: dict[tuple[str, str], Any]) -> Any:
    return lambda kind, entity: values.get((kind, entity))


def test_user_state_has_preferences_segment_and_strategy() -> None:
    doc = cli_ops._redis_state(
        "user", "u1", _reader({("pref", "u1"): PREFS, ("alg", "regular"): ALGS})
    )
    assert doc["interactions"] == 7 and doc["segment"] == "regular" and doc["version"] == 9
    assert doc["preferences"] == PREFS and doc["strategy"] == ALGS


def test_user_without_published_strategy_still_shows_its_preferences() -> None:
    doc = cli_ops._redis_state("user", "u1", _reader({("pref", "u1"): PREFS}))
    assert doc["strategy"] is None and doc["interactions"] == 7


def test_unknown_user_is_not_found() -> None:
    with pytest.raises(NotFound, match="no preference state for user 'ghost'"):
        cli_ops._redis_state("user", "ghost", _reader({("alg", "new"): ALGS}))


def test_segment_state_shows_whichever_loop_published() -> None:
    scoring = {"segment": "balanced", "weights": {"price": 1.0}}
    doc = cli_ops._redis_state("segment", "balanced", _reader({("scoring", "balanced"): scoring}))
    assert doc["scoring_weights"] == scoring and doc["algorithm_weights"] is None
    with pytest.raises(NotFound, match="nothing published for segment 'none'"):
        cli_ops._redis_state("segment", "none", _reader({}))


def test_experiment_state_is_its_latest_result() -> None:
    result = {"experiment_id": "e1", "version": 4, "status": "running"}
    doc = cli_ops._redis_state("experiment", "e1", _reader({("exp", "e1"): result}))
    assert (doc["status"], doc["version"], doc["results"]) == ("running", 4, result)
    with pytest.raises(NotFound, match="no result for experiment 'e2'"):
        cli_ops._redis_state("experiment", "e2", _reader({}))


class FakeWorker:
    def __init__(self, answers: dict[str, tuple[int, Any]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, url: str, timeout: float) -> tuple[int, Any]:
        self.asked.append(url)
        return self.answers[url]


def test_worker_user_state_combines_table_value_and_strategy() -> None:
    worker = FakeWorker(
        {
            "http://w:1/state/preferences/u%201%2Fx": (200, {"interactions": 3, "version": 5}),
            "http://w:1/users/u%201%2Fx/strategy": (200, {"segment": "new"}),
        }
    )
    doc = read_worker_state("w:1/", "user", "u 1/x", get=worker)  # scheme added, key quoted
    assert (doc["source"], doc["worker"], doc["interactions"], doc["segment"]) == (
        "worker",
        "http://w:1",
        3,
        "new",
    )
    assert len(worker.asked) == 2


def test_worker_without_the_key_is_not_found_and_errors_are_errors() -> None:
    missing = FakeWorker({"http://w:1/state/experiments/e1": (404, {"found": False})})
    with pytest.raises(NotFound, match="holds only its own table partitions"):
        read_worker_state("http://w:1", "experiment", "e1", get=missing)
    broken = FakeWorker({"http://w:1/state/experiments/e1": (503, {"error": "x"})})
    with pytest.raises(OpsError, match="answered 503"):
        read_worker_state("http://w:1", "experiment", "e1", get=broken)


def test_worker_default_scoring_weights_are_not_state() -> None:
    url = "http://w:1/segments/balanced/scoring-weights"
    defaults = FakeWorker({url: (200, {"source": "default"})})
    with pytest.raises(NotFound, match="serves defaults"):
        read_worker_state("http://w:1", "segment", "balanced", get=defaults)
    published = FakeWorker({url: (200, {"source": "redis", "version": 2})})
    doc = read_worker_state("http://w:1", "segment", "balanced", get=published)
    assert doc["scoring_weights"]["version"] == 2


def test_state_show_exit_codes_and_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing(settings: Settings, kind: str, key: str) -> dict[str, Any]:
        raise NotFound(f"no preference state for user {key!r} in Redis")

    monkeypatch.setattr(cli_ops, "read_redis_state", missing)
    assert main(["state", "show", "ghost"]) == 1
    assert "loopwise: no preference state for user 'ghost'" in capsys.readouterr().err

    def down(settings: Settings, kind: str, key: str) -> dict[str, Any]:
        raise OpsError("Redis at redis://x failed: ConnectionError")

    monkeypatch.setattr(cli_ops, "read_redis_state", down)
    assert main(["state", "show", "u1"]) == 2

    monkeypatch.setattr(cli_ops, "read_redis_state", lambda s, kind, key: {"key": key, "n": 1})
    assert main(["state", "show", "u1"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"key": "u1", "n": 1}


# --------------------------------------------------------------------------- lag


def _report(ts: float = 100.0) -> LagReport:
    return build_report(
        "loopwise",
        "STABLE",
        2,
        committed={(EXPLICIT, 0): 40, (EXPLICIT, 1): -1001, (IMPLICIT, 0): 5, ("other", 0): 1},
        assigned=[(EXPLICIT, 0), (EXPLICIT, 1), (IMPLICIT, 1), ("lw-preferences-changelog", 0)],
        watermarks={
            (EXPLICIT, 0): (0, 50),
            (EXPLICIT, 1): (10, 30),  # never committed: counted from the log start
            (IMPLICIT, 0): (20, 25),  # committed offset deleted by retention
            (IMPLICIT, 1): (0, 0),
        },
        topics=[EXPLICIT, IMPLICIT],
        ts=ts,
    )  # fmt: skip


def test_report_covers_committed_and_assigned_registry_partitions() -> None:
    report = _report()
    rows = [(p.topic, p.partition, p.committed, p.end, p.lag) for p in report.partitions]
    assert rows == [
        (EXPLICIT, 0, 40, 50, 10),
        (EXPLICIT, 1, None, 30, 20),
        (IMPLICIT, 0, 5, 25, 5),
        (IMPLICIT, 1, None, 0, 0),
    ]
    assert report.by_topic() == {EXPLICIT: 30, IMPLICIT: 5}
    assert report.total == 35


def test_report_json_shape() -> None:
    doc = orjson.loads(orjson.dumps(_report().to_dict()))
    assert doc["group"] == "loopwise" and doc["members"] == 2 and doc["total_lag"] == 35
    assert doc["partitions"][1] == {
        "topic": EXPLICIT,
        "partition": 1,
        "committed": None,
        "end": 30,
        "lag": 20,
    }
    assert doc["topics"][IMPLICIT] == 5


def test_report_table() -> None:
    lines = format_report(_report()).splitlines()
    assert lines[0] == "consumer group loopwise (STABLE, 2 members)"
    assert lines[1].split() == ["topic", "partition", "committed", "end", "lag"]
    assert lines[3].split() == [EXPLICIT, "1", "-", "30", "20"]
    assert lines[-3].split() == ["total", EXPLICIT, "30"]
    assert lines[-1].split() == ["total", "35"]
    assert len({len(line) for line in lines[1:]}) == 1  # the lag column lines up


def test_empty_report_says_so() -> None:
    empty = build_report("g", "DEAD", 0, {}, [], {}, [EXPLICIT])
    text = format_report(empty)
    assert "no committed or assigned partitions" in text and text.splitlines()[-1].split() == [
        "total",
        "0",
    ]


def test_progress_line_reports_drain_rate_and_time_to_zero() -> None:
    before = LagReport("g", "STABLE", 1, [PartitionLag(EXPLICIT, 0, 0, 0, 100)], ts=10.0)
    after = LagReport("g", "STABLE", 1, [PartitionLag(EXPLICIT, 0, 60, 0, 100)], ts=15.0)
    assert "total lag 100 over 1 partitions" in progress_line(None, before)
    assert "(+" not in progress_line(None, before)
    line = progress_line(before, after)
    assert "total lag 40" in line and "-60 in 5.0 s" in line
    assert "draining 12.0/s" in line and "~3 s to zero" in line
    grown = LagReport("g", "STABLE", 1, [PartitionLag(EXPLICIT, 0, 0, 0, 160)], ts=20.0)
    assert "+120 in 5.0 s, growing 24.0/s)" in progress_line(after, grown)
    assert progress_line(grown, before).endswith("(-60 in -10.0 s)")  # no rate backwards


def test_watch_samples_count_times_and_survives_a_failed_sample(
    capsys: pytest.CaptureFixture[str],
) -> None:
    samples: list[LagReport | Exception] = [
        _report(1.0),
        OpsError("broker: coordinator moved"),
        _report(3.0),
    ]
    sleeps: list[float] = []
    emitted: list[tuple[float, float | None]] = []

    def sample() -> LagReport:
        item = samples.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    done = watch(
        sample,
        2.0,
        3,
        lambda cur, prev: emitted.append((cur.ts, None if prev is None else prev.ts)),
        sleep=sleeps.append,
    )
    assert done == 3 and sleeps == [2.0, 2.0]
    assert emitted == [(1.0, None), (3.0, 1.0)]  # the failed sample is skipped, not fatal
    assert "coordinator moved" in capsys.readouterr().err


def test_lag_command_json_and_watch_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = iter([_report(1.0), _report(2.0)])
    monkeypatch.setattr(cli_ops, "collect_lag", lambda settings, timeout, relay: next(reports))
    assert main(["lag", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["total_lag"] == 35

    reports = iter([_report(1.0), _report(2.0)])
    monkeypatch.setattr(cli_ops.time, "sleep", lambda s: None)
    assert main(["lag", "--watch", "1", "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("consumer group loopwise") == 2
    assert "total lag 35 over 4 partitions (+0 in 1.0 s)" in out

    assert main(["lag", "--count", "2"]) == 2
    assert "--count needs --watch" in capsys.readouterr().err


# --------------------------------------------------------------------------- dlq replay


def test_dlq_replay_reports_progress_and_totals(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import streams.kafka_admin as kafka_admin

    def letter(i: int, valid: bool) -> bytes:
        event = {"event_id": f"e{i}", "schema_version": 1, "ts": 1700000000000,
                 "user_id": "u1", "item_id": "i1", "kind": "like" if valid else "nope"}  # fmt: skip
        return orjson.dumps(
            {
                "error_kind": "unknown_item",
                "source": {"topic": EXPLICIT, "partition": 0, "offset": i,
                           "key": base64.b64encode(b"u1").decode()},
                "original": base64.b64encode(orjson.dumps(event)).decode(),
            }
        )  # fmt: skip

    letters = [(None, letter(i, valid=i != 3)) for i in range(5)]
    sent: list[tuple[str, bytes | None]] = []

    class FakeProducer:
        def produce(self, topic: str, key: bytes | None, value: bytes) -> None:
            sent.append((topic, key))

        def poll(self, timeout: float) -> int:
            return 0

        def flush(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(kafka_admin, "read_topic", lambda settings, topic, limit: iter(letters))
    monkeypatch.setattr(kafka_admin, "producer", lambda settings: FakeProducer())
    assert main(["dlq", "replay", "--progress-every", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    progress = [line for line in err if line.startswith("dlq replay:")]
    assert progress == [
        "dlq replay: 2 dead letters read, 2 replayed, 0 still invalid",
        "dlq replay: 4 dead letters read, 3 replayed, 1 still invalid",
    ]
    assert err[-1] == "read 5; replayed 4; still invalid (left in place) 1"
    assert sent == [(EXPLICIT, b"u1")] * 4
