"""``loopwise choices report`` rendering and its place in the ``loopwise`` parser."""

from __future__ import annotations

from loopwise.cli.choices import render
from loopwise.cli.main import build_parser

REPORT = {
    "deployment": "loopwise.",
    "segments": [
        {
            "segment": "price_sensitive",
            "customers": 1,
            "weights": {
                "version": 7,
                "weights": {"quality": 0.3, "price": 0.7},  # as jsonb returns them
                "confidence": 0.91,
                "sample_size": 800,
                "no_choice": 120,
                "applied": True,
                "is_default": False,
                "reason": "learned",
                "published_at": "2026-01-01T00:00:00+00:00",
            },
            "analytics": {
                "version": 9,
                "window_s": 3600.0,
                "event_time_ms": 0,
                "confidence": 0.91,
                "updated_at": "2026-01-01T00:00:00+00:00",
                "summary": {
                    "all": {
                        "sessions": 10, "conversion_rate": 0.5, "avg_chosen_rank": 1.5,
                        "satisfaction": None, "interaction_depth": 2.0,
                        "avg_decision_time_s": 12.0, "min_learning_confidence": 0.8,
                    },
                    "simple": {
                        "sessions": 10, "conversion_rate": 0.5, "avg_chosen_rank": 1.5,
                        "satisfaction": None, "interaction_depth": 2.0,
                        "avg_decision_time_s": 12.0,
                    },
                },
            },
        },
        {"segment": "balanced", "customers": 0, "weights": None, "analytics": None},
    ],
    "alerts": [
        {
            "event_id": "alert:choices:price_sensitive:choice_conversion_rate:1:0",
            "segment": "price_sensitive", "metric": "choice_conversion_rate",
            "severity": "warning", "escalation_level": 0, "value": 0.5, "threshold": 0.6,
            "message": "segment price_sensitive: conversion rate 50.0% is below 60%",
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    ],
}  # fmt: skip


def test_report_lists_weights_in_factor_order_analytics_and_alerts():
    text = render(REPORT, ("price", "quality"))
    assert "price_sensitive  (1 customer)" in text
    assert "v7 learned, applied; confidence 0.910, 800 sessions (120 without a choice)" in text
    assert "price=0.700  quality=0.300" in text
    assert "conversion  50.0%" in text and "satisfaction    -  depth" in text
    assert "balanced  (0 customers)" in text and "none published yet" in text
    assert "choice_conversion_rate" in text and "recent alerts (1)" in text


def test_empty_report():
    text = render({"deployment": "x.", "segments": [], "alerts": []})
    assert "no segment has data yet" in text and "no alerts" in text


def test_choices_report_is_a_loopwise_command():
    args = build_parser().parse_args(["choices", "report", "--alerts", "5", "--json"])
    assert (args.alerts, args.json, args.deployment) == (5, True, None)
    assert args.func.__name__ == "cmd_report"
