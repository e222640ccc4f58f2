"""The fault suite's result table: one row per fault test, printed at the end of the run.

`make test-reliability` prints it (and writes ``.run/reliability-summary.json``); the
columns are the issue's: events, faults injected, lost, duplicated, recovery time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson


@dataclass
class Row:
    test: str
    events: int
    faults: str
    lost: int
    duplicated: int
    resent_outputs: int = 0
    recovery_s: float | None = None
    notes: list[str] = field(default_factory=list)


ROWS: list[Row] = []


def record(row: Row) -> Row:
    ROWS.append(row)
    return row


def render(rows: list[Row]) -> str:
    header = ("test", "events", "faults injected", "lost", "duplicated", "re-sent outputs",
              "recovery (s)")  # fmt: skip
    body = [
        (r.test, str(r.events), r.faults, str(r.lost), str(r.duplicated), str(r.resent_outputs),
         "-" if r.recovery_s is None else f"{r.recovery_s:.1f}")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def write_json(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps([asdict(r) for r in rows], option=orjson.OPT_INDENT_2))
