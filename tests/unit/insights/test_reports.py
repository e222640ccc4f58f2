"""Reports render from a fixture: JSON sections, Markdown, HTML with its sections and PNG
images, data-quality notes for corrupt or missing input, archive retention."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from agents.insights.reports import (
    SECTIONS,
    archive,
    build_report,
    render_html,
    render_markdown,
    render_plots,
)
from agents.insights.windows import WindowState, apply_decisions

H = 3_600_000
END = 1_767_225_600_000  # 2026-01-01 00:00 UTC
START = END - 24 * H


def windows(component: str, rates: list[float], first_start: int) -> list[tuple]:
    rng = np.random.default_rng(len(component))
    rows = []
    for k, rate in enumerate(rates):
        st = WindowState(component, first_start + k * H, first_start + (k + 1) * H)
        events = [
            {"method": "rules" if i % 2 else "llm", "success": i < rate * 100,
             "confidence": 0.5 + 0.02 * k, "processing_time_ms": float(rng.lognormal(5, 0.3)),
             "quality_score": 0.8, "device": "mobile"}
            for i in range(100)
        ]  # fmt: skip
        apply_decisions([st], [0] * 100, events, 32)
        rows.append((component, st.start, st.end, st.stats()))
    return rows


def fixture(experiments: Any = None) -> dict[str, Any]:
    decline = list(np.linspace(0.95, 0.6, 24))
    rows = (
        windows("enricher", [0.95] * 24, START - 24 * H)
        + windows("enricher", decline, START)
        + windows("scorer", [0.9] * 24, START)
        + [("broken", START, START + H, "not an object"),
           ("broken", START + H, START + 2 * H, {"decisions": {"all": "x"}})]
    )  # fmt: skip
    at = datetime(2025, 12, 31, 12, tzinfo=UTC)
    return {
        "start_ms": START,
        "end_ms": END,
        "notes": [],
        "windows": rows,
        "insights": [
            {"insight_id": "ins-1", "subject": "enricher", "component": "enricher",
             "kind": "trend", "metric": "success_rate", "grp": "all", "direction": "declining",
             "priority": "high", "confidence": 0.97, "status": "active",
             "title": "success_rate declining for enricher",
             "recommended_action": "Investigate enricher", "evidence": {},
             "first_seen": at, "updated_at": at},
        ],
        "alerts": [
            {"event_id": "a1", "component": "enricher", "metric": "success_rate",
             "severity": "warning", "escalation_level": 0, "status": "firing", "value": 0.75,
             "threshold": 0.8, "window_start": START, "message": "m", "raised_at": at},
            {"event_id": "a2", "component": "enricher", "metric": "success_rate",
             "severity": "warning", "escalation_level": 1, "status": "firing", "value": 0.7,
             "threshold": 0.8, "window_start": START + H, "message": "m", "raised_at": at},
        ],
        "actions": [
            {"action_id": "act-1", "target": "enricher", "kind": "investigate",
             "strategy": "balanced", "confidence": 0.97, "risk": "low", "insight_id": "ins-1",
             "reason": "because", "decided_at": at},
        ],
        "goals": [
            {"goal_id": "g1", "component": "enricher", "metric": "success_rate",
             "direction": "at_least", "target": 0.9, "baseline": 0.7, "current": 0.8,
             "progress": 0.5, "status": "active", "deadline": at},
        ],
        "tickets": [
            {"ticket_id": "tkt-1", "insight_id": "ins-1", "component": "enricher",
             "metric": "success_rate", "grp": "all", "title": "fix it", "priority": "high",
             "status": "measured", "cost": 100.0, "implemented_at": at, "measured_at": at,
             "impact": {"difference": 0.05, "ci_low": 0.02, "ci_high": 0.08, "before": 0.7,
                        "after": 0.75, "p_value": 0.001, "roi": 1.5,
                        "windows": {"metric": "success_rate"}}},
        ],
        "experiments": experiments,
    }  # fmt: skip


def build(**kw: Any) -> dict[str, Any]:
    return build_report(fixture(**kw), deployment="lw.", kind="on_demand",
                        generated_ms=END, report_id="rpt-test")  # fmt: skip


def test_report_document_has_every_section_and_the_numbers() -> None:
    report = build()
    assert report["sections"] == list(SECTIONS)
    for section in SECTIONS:
        assert section in report
    perf = report["performance"]
    assert set(perf) == {"enricher", "scorer"}
    assert perf["scorer"]["decisions"] == 2400
    assert perf["scorer"]["success_rate"] == pytest.approx(0.9)
    assert perf["enricher"]["change"]["success_rate"] < -0.1  # vs the previous day
    assert set(perf["enricher"]["by_dimension"]) == {"method", "device"}
    trends = {(t["component"], t["metric"]): t for t in report["trends"]}
    assert trends[("enricher", "success_rate")]["trend_direction"] == "declining"
    assert trends[("enricher", "success_rate")]["significance"] == "high"
    assert ("scorer", "success_rate") not in trends  # constant: not tested
    assert trends[("enricher", "confidence")]["trend_direction"] == "improving"
    health = report["system_health"]
    assert health["component_health"]["enricher"] == "needs_attention"
    assert health["component_health"]["scorer"] == "excellent"
    assert health["overall_status"] == "needs_attention"
    summary = report["executive_summary"]
    assert summary["key_metrics"]["high_priority_insights"] == 1
    assert summary["key_metrics"]["cumulative_roi"] == 1.5
    assert summary["top_recommendations"][0]["insight_id"] == "ins-1"
    assert any("fix it" in w for w in summary["wins"])
    # Corrupt and missing input are notes, not crashes.
    assert any("2 corrupt window" in n for n in report["data_quality"])
    assert any(n.startswith("experiments:") for n in report["data_quality"])
    orjson.dumps({k: v for k, v in report.items() if not k.startswith("_")})  # JSON-safe


class Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.images: list[str] = []
        self.sections: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "h2":
            self._in_h2 = True
        if tag == "img":
            self.images.append(a["src"] or "")
        if tag == "section":
            self.sections.append(a["id"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2.append(data)


def test_html_report_opens_with_its_sections_and_images(tmp_path: Path) -> None:
    report = build(experiments=[
        {"experiment_id": "e1", "status": "running", "primary_metric": "conversion",
         "result": {"primary_metric": "conversion", "comparisons": [
             {"variant": "b", "metric": "conversion", "lift": 0.12,
              "sequential_decision": "continue"},
             {"variant": "c", "metric": "conversion", "lift": 0.03},
             {"variant": "b", "metric": "latency_ms", "lift": 0.5}]}},
    ])  # fmt: skip
    assert report["experiments"]["items"] == [
        {"experiment_id": "e1", "status": "running", "primary_metric": "conversion",
         "best_variant": "b", "best_relative_lift": 0.12, "decision": "continue"},
    ]  # fmt: skip
    images = render_plots(report)
    assert set(images) == {
        "trend_success_rate.png",
        "trend_latency_p95.png",
        "learning_confidence.png",
        "health_alerts.png",
        "tickets_impact.png",
        "experiments_lift.png",
    }
    paths = archive(report, images, tmp_path, retention_days=90, now_ms=int(time.time() * 1000))
    page = Path(paths["html"]).read_text()
    outline = Outline()
    outline.feed(page)
    assert outline.h2 == [
        "Executive summary", "Performance", "Trends", "System health", "Insights",
        "Optimization actions", "Goals", "Improvement tickets", "Experiments", "Data quality",
    ]  # fmt: skip
    assert "executive-summary" in outline.sections
    assert len(outline.images) == 6
    for src in outline.images:
        data = (Path(paths["html"]).parent / src).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 200
    md = Path(paths["markdown"]).read_text()
    assert md.count("\n## ") == len(SECTIONS) and "![" in md
    doc = orjson.loads(Path(paths["json"]).read_bytes())
    assert doc["report_metadata"]["report_id"] == "rpt-test"
    assert doc["images"]["tickets_impact.png"] == "tickets_impact.png"
    assert "_series" not in doc


def test_render_without_any_data_still_writes_a_report(tmp_path: Path) -> None:
    raw = {"start_ms": START, "end_ms": END, "notes": ["alerts: skipped (UndefinedTable)"]}
    report = build_report(raw, deployment="lw.", kind="scheduled", generated_ms=END)
    images = render_plots(report)
    assert images == {}
    assert "No data in the period." in render_markdown(report)
    assert "<h2>Data quality</h2>" in render_html(report)
    assert report["executive_summary"]["overall_status"] == "excellent"
    assert any("UndefinedTable" in n for n in report["data_quality"])
    assert any("no decision or metric windows" in n for n in report["data_quality"])


def test_archive_deletes_reports_past_the_retention(tmp_path: Path) -> None:
    report = build()
    old = tmp_path / "lw" / "rpt-old"
    old.mkdir(parents=True)
    (old / "report.md").write_text("old")
    past = time.time() - 40 * 86_400
    os.utime(old, (past, past))
    archive(report, {}, tmp_path, retention_days=30, now_ms=int(time.time() * 1000))
    assert not old.exists()
    assert (tmp_path / "lw" / "rpt-test" / "report.html").exists()
