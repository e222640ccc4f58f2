"""The choice loop's table values and pure steps (agents/choices/state.py): joins, waiting
events, dedupe guards, customer evidence and segments, analytics, alerts, model updates."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from agents.choices import state as cs
from agents.learning.choice_model import ChoiceModelConfig
from agents.learning.customer_segments import SegmentRules, classify_segments, summarise_behaviour

FACTORS = ("price", "quality", "speed", "proximity")
NOW = 1_700_000_000_000
SRC = [0, 0, 1]  # source coordinates of the event being applied


def session_event(sid: str = "s1", customer: str = "c1", **extra: Any) -> dict[str, Any]:
    event = {
        "event_id": f"{sid}-session",
        "schema_version": 1,
        "ts": 1_000_000,
        "session_id": sid,
        "customer_id": customer,
        "algorithm_version": "v1",
        "complexity": "moderate",
        "stated_preferences": {"price": 0.9, "quality": 0.1},
        "candidates": [
            {
                "candidate_id": f"{sid}-a",
                "rank": 1,
                "predicted_score": 0.7,
                "factor_scores": {"price": 0.9, "quality": 0.2, "speed": 0.5, "proximity": 0.1},
            },
            {
                "candidate_id": f"{sid}-b",
                "rank": 2,
                "predicted_score": 0.6,
                "factor_scores": {"price": 0.1, "quality": 0.9, "speed": 0.5, "proximity": 0.3},
            },
            {
                "candidate_id": f"{sid}-c",
                "rank": 3,
                "predicted_score": 0.5,
                "factor_scores": {"price": 0.5, "quality": 0.5, "speed": 0.1, "proximity": 0.9},
            },
        ],
    }
    event.update(extra)
    return event


def choice_event(sid: str = "s1", chosen: str | None = "s1-b", **extra: Any) -> dict[str, Any]:
    event = {
        "event_id": f"{sid}-choice",
        "schema_version": 1,
        "ts": 1_000_500,
        "session_id": sid,
        "chosen_candidate_id": chosen,
        "satisfaction": 4,
        "decision_time_seconds": 12.5,
        "important_factors": ["quality"],
    }
    event.update(extra)
    return event


def interaction(n: int, sid: str = "s1", kind: str = "viewed", cand: str = "s1-a") -> dict:
    return {
        "event_id": f"{sid}-i{n}",
        "schema_version": 1,
        "ts": 1_000_100 + n,
        "session_id": sid,
        "candidate_id": cand,
        "kind": kind,
        "time_spent_seconds": 10.0,
        "helpful_rating": 5,
        "explanation_level": "detailed",
    }


def pending(slot: int, payload: dict, offset: int, arrived: int = NOW) -> cs.Pending:
    return cs.Pending(
        slot, payload, "lw.recs.choices", 0, offset, b"s1", b'{"raw": 1}', arrived,
        cs.event_id_hash(payload["event_id"]),
    )  # fmt: skip


# ------------------------------------------------------------------------- sessions


def test_parse_session_keeps_configured_factors_in_order():
    s = cs.parse_session(session_event(), FACTORS)
    assert s["X"][1] == [0.1, 0.9, 0.5, 0.3]
    assert s["stated"] == [0.9, 0.1, 0.0, 0.0]
    assert s["ranks"] == [1, 2, 3] and s["cands"] == ["s1-a", "s1-b", "s1-c"]


def test_parse_session_without_stated_preferences():
    event = session_event()
    del event["stated_preferences"]
    assert cs.parse_session(event, FACTORS)["stated"] is None


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda e: e["candidates"][0]["factor_scores"].pop("speed"), "dimension_mismatch"),
        (lambda e: e["candidates"][1].update(rank=1), "schema_violation"),
        (lambda e: e["candidates"][1].update(candidate_id="s1-a"), "schema_violation"),
    ],
)
def test_parse_session_rejects_what_the_schema_cannot_check(change, kind):
    event = session_event()
    change(event)
    with pytest.raises(cs.ChoiceRejection) as info:
        cs.parse_session(event, FACTORS)
    assert info.value.kind == kind


def test_session_then_interactions_then_choice_completes_once():
    st = cs.SessionState()
    obs, rejected = cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS),
                                     FACTORS, NOW, SRC)  # fmt: skip
    assert obs == [] and rejected == []
    assert cs.apply_interaction(st, "s1", interaction(0), SRC) == []
    assert cs.apply_interaction(st, "s1", interaction(1, kind="compared"), SRC) == []
    [o] = cs.apply_choice(st, "s1", choice_event(), FACTORS, NOW + 5, SRC)
    assert (o["id"], o["kind"], o["chosen"], o["rank"], o["outcome"]) == (
        "obs:s1", "session", 1, 2, "choice"
    )  # fmt: skip
    assert o["customer_id"] == "c1" and o["satisfaction"] == 4 and o["decision_time"] == 12.5
    assert o["important"] == [0.0, 1.0, 0.0, 0.0]
    counters = dict(zip(cs.INTERACTION_FIELDS, o["counters"], strict=True))
    assert counters["interactions"] == 2 and counters["viewed"] == 1 and counters["compared"] == 1
    assert counters["time_spent_sum"] == 20.0 and counters["helpful_n"] == 2
    assert counters["detailed_explanations"] == 2
    assert st.completed and st.completed_ms == NOW + 5
    with pytest.raises(cs.ChoiceRejection, match="already complete"):
        cs.apply_choice(st, "s1", choice_event(event_id="other"), FACTORS, NOW, SRC)


def test_no_choice_is_an_outcome_not_a_drop():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    [o] = cs.apply_choice(st, "s1", choice_event(chosen=None), FACTORS, NOW, SRC)
    assert (o["chosen"], o["rank"], o["outcome"]) == (-1, None, "none")


def test_choice_and_interaction_must_name_a_shown_candidate():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    with pytest.raises(cs.ChoiceRejection) as info:
        cs.apply_choice(st, "s1", choice_event(chosen="nope"), FACTORS, NOW, SRC)
    assert info.value.kind == "schema_violation"
    with pytest.raises(cs.ChoiceRejection):
        cs.apply_interaction(st, "s1", interaction(0, cand="nope"), SRC)
    assert not st.completed


def test_events_before_the_session_wait_and_apply_in_order():
    st = cs.SessionState()
    st.pending = [
        pending(cs.CHOICE, choice_event(), 7, NOW),
        pending(cs.INTERACTION, interaction(0), 3, NOW + 1),  # arrived later, still first
    ]
    obs, rejected = cs.apply_session(
        st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW + 2, SRC
    )
    assert rejected == [] and st.pending == []
    assert len(obs) == 1 and obs[0]["counters"][0] == 1  # the interaction counted
    assert st.outcome == "choice"


def test_invalid_waiting_choice_is_returned_for_dead_lettering():
    st = cs.SessionState()
    bad = pending(cs.CHOICE, choice_event(chosen="ghost"), 7)
    st.pending = [bad]
    obs, rejected = cs.apply_session(
        st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC
    )
    assert obs == [] and [(p.offset, e.kind) for p, e in rejected] == [(7, "schema_violation")]


def test_waiting_events_are_released_after_the_wait_and_forgotten():
    st = cs.SessionState()
    p1 = pending(cs.CHOICE, choice_event(), 5, NOW)
    p2 = pending(cs.INTERACTION, interaction(0), 6, NOW + 1500)
    for p in (p1, p2):
        st.remember(p.slot, p.offset, p.id_hash)
        st.pending.append(p)
    assert st.earliest_pending() == NOW
    assert st.take_due_pending(NOW + 1999, 2000) == []
    assert st.take_due_pending(NOW + 2000, 2000) == [p1]
    assert p1.id_hash not in st.recent_ids and p2.id_hash in st.recent_ids
    assert st.earliest_pending() == NOW + 1500
    # The offset guard stays: a replay of the released event is still a replay.
    assert st.seen(cs.CHOICE, 5, 123)


def test_guards_recognise_replays_and_resent_events():
    st = cs.SessionState()
    h = cs.event_id_hash("e1")
    assert not st.seen(cs.CHOICE, 10, h)
    st.remember(cs.CHOICE, 10, h)
    assert st.seen(cs.CHOICE, 9, 0)  # older offset: replay
    assert st.seen(cs.CHOICE, 11, h)  # same id, new offset: re-sent
    assert not st.seen(cs.INTERACTION, 5, 0)  # offsets are per topic
    for n in range(cs.MAX_IDS + 5):
        st.remember(cs.INTERACTION, 100 + n, n)
    assert len(st.recent_ids) == cs.MAX_IDS


def test_late_interactions_are_their_own_observations():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    [main] = cs.apply_choice(st, "s1", choice_event(), FACTORS, NOW, [1, 0, 7])
    [late] = cs.apply_interaction(
        st, "s1", interaction(3, kind="contacted", cand="s1-b"), [2, 0, 9]
    )
    assert late["id"] == "int:s1:s1-i3" and late["kind"] == "interaction"
    assert late["counters"][cs.INTERACTION_FIELDS.index("contacted")] == 1
    assert main["counters"][0] == 0  # the session's own counters are unchanged
    assert (main["src"], late["src"]) == ([1, 0, 7], [2, 0, 9])


def test_a_replayed_event_resends_exactly_what_it_produced():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    assert cs.replayed_observations("s1", st, SRC) == []  # the session event produced none
    cs.apply_choice(st, "s1", choice_event(), FACTORS, NOW, [1, 0, 7])
    cs.apply_interaction(st, "s1", interaction(3, cand="s1-b"), [2, 0, 9])
    cs.apply_interaction(st, "s1", interaction(4, cand="s1-b"), [2, 0, 10])
    st = cs.SessionState.unpack(st.pack())
    assert [o["id"] for o in cs.replayed_observations("s1", st, [1, 0, 7])] == ["obs:s1"]
    assert [o["id"] for o in cs.replayed_observations("s1", st, [2, 0, 10])] == ["int:s1:s1-i4"]
    assert cs.replayed_observations("s1", st, [2, 0, 8]) == []


def test_waiting_choice_completes_with_the_session_event_as_source():
    st = cs.SessionState()
    st.pending = [pending(cs.CHOICE, choice_event(), 3)]
    [obs], _ = cs.apply_session(
        st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, [0, 1, 40]
    )
    assert obs["src"] == [0, 1, 40] and st.completed_by == [0, 1, 40]


def test_abandoned_session_is_a_no_choice_observation():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    st.partition = 1
    o = cs.abandon(st, "s1", NOW + 10)
    assert (o["chosen"], o["outcome"], st.completed_ms) == (-1, "abandoned", NOW + 10)
    assert o["src"] == [cs.TIMER, 1, NOW + 10]


def test_second_session_event_for_the_same_session_is_rejected():
    st = cs.SessionState()
    cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)
    with pytest.raises(cs.ChoiceRejection, match="already known"):
        cs.apply_session(st, "s1", cs.parse_session(session_event(), FACTORS), FACTORS, NOW, SRC)


def test_session_state_round_trips_with_waiting_bytes():
    st = cs.SessionState(partition=3)
    st.remember(cs.CHOICE, 9, 2**64 - 1)
    st.pending.append(pending(cs.CHOICE, choice_event(), 9))
    st.pending[0].raw = bytes(range(256))
    back = cs.SessionState.unpack(st.pack())
    assert back == st
    assert back.pending[0].raw == bytes(range(256)) and back.pending[0].key == b"s1"


# ------------------------------------------------------------------------- customers


def _session_obs(i: int, X: list, chosen: int, stated: list | None = None) -> dict:
    return {
        "id": f"obs:s{i}", "kind": "session", "customer_id": "c", "complexity": "simple",
        "ts": 0, "X": X, "chosen": chosen, "rank": None if chosen < 0 else chosen + 1,
        "stated": stated, "important": None, "counters": [0.0] * len(cs.INTERACTION_FIELDS),
    }  # fmt: skip


def test_customer_evidence_equals_summarise_behaviour_over_all_sessions():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 5, size=30)
    sessions = [rng.uniform(size=(k, len(FACTORS))).round(3).tolist() for k in sizes]
    chosen = [int(rng.integers(-1, k)) for k in sizes]
    observations = [
        _session_obs(i, X, c) for i, (X, c) in enumerate(zip(sessions, chosen, strict=True))
    ]
    state = cs.CustomerState(len(FACTORS))
    rules = SegmentRules()
    for start in range(0, 30, 7):  # in several batches
        cs.observe_customers({"c": state}, [("c", o) for o in observations[start:start + 7]],
                             FACTORS, rules, NOW)  # fmt: skip
    X, mask = cs.pad(sessions, len(FACTORS))
    ref = summarise_behaviour(X, mask, np.array(chosen), np.zeros(30, int), 1, price_index=0)
    assert state.sessions == 30 and state.choices == ref.n_choices[0]
    np.testing.assert_allclose(np.array(state.chosen_sum) / state.choices, ref.chosen_mean[0])
    np.testing.assert_allclose(np.array(state.shown_sum) / state.choices, ref.shown_mean[0])
    np.testing.assert_allclose(state.level_sum / state.level_n, ref.chosen_price_level[0])


def test_segment_from_stated_preferences_then_behaviour_and_change_events():
    rules = SegmentRules()
    states = {"c": cs.CustomerState(len(FACTORS))}
    first = _session_obs(0, [[0.5, 0.5, 0.5, 0.5]], -1, stated=[0.1, 0.1, 0.1, 0.9])
    tags, changes = cs.observe_customers(states, [("c", first)], FACTORS, rules, NOW)
    st = states["c"]
    assert tags == ["local_preference"] and st.segment == "local_preference" and st.version == 1
    assert changes == [st.last_change]
    assert st.last_change["event_id"] == "cseg:c:1" and st.last_change["previous_segment"] is None
    # Then the customer keeps choosing the cheapest candidate: behaviour pulls to price,
    # from the observation on whose evidence crosses the threshold (not from the batch end).
    cheap = [_session_obs(i, [[0.95, 0.2, 0.5, 0.5], [0.1, 0.8, 0.5, 0.5]], 0) for i in range(12)]
    tags, changes = cs.observe_customers(states, [("c", o) for o in cheap], FACTORS, rules, NOW)
    k = tags.index("price_sensitive")
    assert k >= rules.min_choices - 1  # behaviour counts from min_choices choices on
    assert tags == ["local_preference"] * k + ["price_sensitive"] * (12 - k)
    assert st.segment == "price_sensitive" and st.version == 2
    assert st.evidence == "both" and st.rule == "price_emphasis"
    # The change event describes the customer when it changed, not at the end of the batch.
    [change] = changes
    assert change == st.last_change and change["event_id"] == "cseg:c:2"
    assert change["previous_segment"] == "local_preference" and change["sessions"] == 1 + k + 1
    more = _session_obs(12, [[0.95, 0.2, 0.5, 0.5], [0.1, 0.8, 0.5, 0.5]], 0)
    assert cs.observe_customers(states, [("c", more)], FACTORS, rules, NOW)[1] == []  # no event
    # Equal to classifying the same evidence directly.
    direct = classify_segments(
        FACTORS, np.array([[0.1, 0.1, 0.1, 0.9]]),
        summarise_behaviour(*cs.pad([o["X"] for o in cheap], len(FACTORS)),
                            np.zeros(12, int), np.zeros(12, int), 1, price_index=0),
    )  # fmt: skip
    assert direct.segments.tolist() == ["price_sensitive"]


def test_segments_do_not_depend_on_where_batches_begin_and_end():
    """Customers classified after each observation: the same tags and change events however
    the observations are cut into batches (with the table's pack/unpack in between)."""
    rng = np.random.default_rng(11)
    rules = SegmentRules()
    items = []
    for i in range(240):
        k = int(rng.integers(2, 5))
        stated = rng.uniform(size=len(FACTORS)).round(2).tolist() if i % 4 == 0 else None
        obs = _session_obs(i, rng.uniform(size=(k, len(FACTORS))).round(3).tolist(),
                           int(rng.integers(-1, k)), stated=stated)  # fmt: skip
        items.append((f"c{i % 6}", {**obs, "customer_id": f"c{i % 6}"}))

    def run(cuts: list[int]) -> tuple[list[str], list[dict], dict[str, bytes]]:
        blobs: dict[str, bytes] = {}
        tags, changes = [], []
        for lo, hi in zip([0, *cuts], [*cuts, len(items)], strict=True):
            states = {c: cs.CustomerState.unpack(b) for c, b in blobs.items()}
            for c, _ in items[lo:hi]:
                states.setdefault(c, cs.CustomerState(len(FACTORS)))
            t, ch = cs.observe_customers(states, items[lo:hi], FACTORS, rules, NOW)
            tags += t
            changes += ch
            blobs.update({c: st.pack() for c, st in states.items()})
        return tags, changes, blobs

    whole = run([])
    # The customers do move between segments as their evidence builds up (else trivial).
    assert len(whole[1]) > 6 and len(set(whole[0])) > 1
    for cuts in ([1, 2, 3], [100], sorted(rng.choice(np.arange(1, 240), 20, replace=False))):
        assert run([int(c) for c in cuts]) == whole


def test_customer_recognises_resent_observations_by_source():
    st = cs.CustomerState(len(FACTORS))
    assert not st.seen_source([1, 0, 5])
    st.advance_source([1, 0, 5])
    assert st.seen_source([1, 0, 5]) and st.seen_source([1, 0, 2])
    assert not st.seen_source([1, 0, 6]) and not st.seen_source([1, 1, 0])
    assert not st.seen_source([0, 0, 0])  # per topic slot
    assert cs.CustomerState.unpack(st.pack()).sources == {"1:0": 5}


def test_customer_ring_remembers_the_forwarded_segment():
    st = cs.CustomerState(len(FACTORS))
    st.remember(4, 111, cs.segment_code("speed_priority"))
    assert st.offset == 4 and cs.segment_name(st.lookup(111)) == "speed_priority"
    assert st.lookup(222) is None
    for n in range(cs.MAX_IDS):
        st.remember(5 + n, n, 0)
    assert st.lookup(111) is None and len(st.recent) == cs.MAX_IDS
    assert cs.CustomerState.unpack(st.pack()) == st


# ------------------------------------------------------------------------- segments


def _obs(ts: int, complexity: str, chosen: int, rank: int | None, sat: int | None,
         inter: int = 0, kind: str = "session") -> dict:  # fmt: skip
    counters = [0.0] * len(cs.INTERACTION_FIELDS)
    counters[0] = inter
    return {
        "id": f"o{ts}", "kind": kind, "complexity": complexity, "ts": ts,
        "X": [[0.5] * len(FACTORS)] * 3, "chosen": chosen, "rank": rank,
        "satisfaction": sat, "decision_time": 30.0 if chosen >= 0 else None,
        "outcome": "choice" if chosen >= 0 else "none", "counters": counters,
    }  # fmt: skip


def test_watermarks_per_source_partition():
    st = cs.SegmentState()
    assert not st.seen(0, 5)
    st.advance(0, 5)
    assert st.seen(0, 5) and st.seen(0, 2) and not st.seen(0, 6) and not st.seen(1, 0)
    assert cs.SegmentState.unpack(st.pack()) == st


def test_analytics_match_a_direct_computation():
    rng = np.random.default_rng(11)
    st = cs.SegmentState()
    observations = []
    for i in range(300):
        chosen = int(rng.integers(-1, 3))
        observations.append(
            _obs(i * 1000, ("simple", "moderate", "complex")[i % 3], chosen,
                 None if chosen < 0 else chosen + 1,
                 int(rng.integers(1, 6)) if chosen >= 0 and i % 4 else None,
                 int(rng.poisson(2)))
        )  # fmt: skip
    for o in observations:
        assert cs.add_to_window(st, o, window_s=3600, bucket_s=60) is not None
    summary = cs.window_summary(st)
    for name in ("all", "simple", "moderate", "complex"):
        mine = [o for o in observations if name in ("all", o["complexity"])]
        picked = [o for o in mine if o["chosen"] >= 0]
        rated = [o for o in mine if o["satisfaction"] is not None]
        s = summary[name]
        assert s["sessions"] == len(mine)
        assert s["conversion_rate"] == pytest.approx(len(picked) / len(mine))
        assert s["avg_chosen_rank"] == pytest.approx(np.mean([o["rank"] for o in picked]))
        assert s["satisfaction"] == pytest.approx(np.mean([o["satisfaction"] for o in rated]))
        assert s["interaction_depth"] == pytest.approx(np.mean([o["counters"][0] for o in mine]))


def test_window_rolls_by_event_time():
    st = cs.SegmentState()
    cs.add_to_window(st, _obs(0, "simple", 0, 1, 5), window_s=600, bucket_s=60)
    cs.add_to_window(st, _obs(300_000, "simple", -1, None, None), window_s=600, bucket_s=60)
    cs.add_to_window(st, _obs(700_000, "simple", -1, None, None), window_s=600, bucket_s=60)
    cs.prune_window(st, window_s=600, bucket_s=60)
    assert sorted(st.buckets, key=int) == ["300000", "660000"]
    assert cs.window_summary(st)["all"]["conversion_rate"] == 0.0
    # An observation older than the window is not counted (its bucket is gone).
    assert cs.add_to_window(st, _obs(1000, "simple", 0, 1, 5), 600, 60) is None
    assert st.too_late == 1


def test_interaction_observations_add_depth_not_sessions():
    st = cs.SegmentState()
    cs.add_to_window(st, _obs(0, "complex", 0, 1, None, inter=1), 3600, 60)
    cs.add_to_window(st, _obs(0, "complex", 0, 1, None, inter=2, kind="interaction"), 3600, 60)
    s = cs.window_summary(st)["complex"]
    assert s["sessions"] == 1 and s["interaction_depth"] == 3.0


def _state_with(conversions: int, sessions: int, rank: int = 1, sat: int = 5) -> cs.SegmentState:
    st = cs.SegmentState()
    for i in range(sessions):
        chosen = 0 if i < conversions else -1
        cs.add_to_window(st, _obs(i, "simple", chosen, rank if chosen >= 0 else None,
                                  sat if chosen >= 0 else None), 3600, 60)  # fmt: skip
    return st


def _alerts(st: cs.SegmentState, t: cs.AlertThresholds) -> list[dict]:
    return cs.evaluate_alerts("balanced", st, cs.window_summary(st), t, 3600, NOW)


def test_conversion_alert_fires_once_per_episode_and_rearms():
    t = cs.AlertThresholds(min_sessions=20)
    assert _alerts(_state_with(5, 19), t) == []  # too few sessions
    st = _state_with(10, 30)
    [a] = _alerts(st, t)
    assert a["metric"] == "choice_conversion_rate" and a["event_id"].endswith(":1:0")
    assert a["value"] == pytest.approx(1 / 3) and a["threshold"] == 0.6
    assert a["severity"] == "warning" and a["dimensions"]["segment"] == "balanced"
    assert _alerts(st, t) == []  # still breached: no new alert
    for i in range(40):  # recovers
        cs.add_to_window(st, _obs(100 + i, "simple", 0, 1, 5), 3600, 60)
    assert _alerts(st, t) == []
    for i in range(150):  # breached again: a new episode
        cs.add_to_window(st, _obs(200 + i, "simple", -1, None, None), 3600, 60)
    [again] = _alerts(st, t)
    assert again["event_id"] == "alert:choices:balanced:choice_conversion_rate:2:0"


def test_alert_repeats_escalated_after_the_repeat_period():
    t = cs.AlertThresholds(min_sessions=20, repeat_s=60)
    st = _state_with(0, 30)
    assert len(_alerts(st, t)) == 1
    cs.add_to_window(st, _obs(61_000, "simple", -1, None, None), 3600, 60)
    [a] = _alerts(st, t)
    assert (a["escalation_level"], a["severity"]) == (1, "critical")
    assert a["event_id"].endswith(":1:1")


def test_rank_and_satisfaction_alerts():
    t = cs.AlertThresholds(min_sessions=20)
    fired = {a["metric"] for a in _alerts(_state_with(30, 30, rank=3, sat=2), t)}
    assert fired == {"choice_avg_chosen_rank", "choice_satisfaction"}
    assert _alerts(_state_with(30, 30, rank=2, sat=4), t) == []


def test_low_confidence_alert_needs_the_period():
    t = cs.AlertThresholds(confidence_below=0.5, confidence_period_s=10)
    st = cs.SegmentState(version=1, confidence=0.2)
    cs.add_to_window(st, _obs(0, "simple", 0, 1, None), 3600, 60)
    assert _alerts(st, t) == [] and st.low_confidence_since == 0
    cs.add_to_window(st, _obs(10_000, "simple", 0, 1, None), 3600, 60)
    [a] = _alerts(st, t)
    assert a["metric"] == "choice_learning_confidence" and a["value"] == 0.2
    st.confidence = 0.9
    assert _alerts(st, t) == [] and st.low_confidence_since is None


# ------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def config() -> ChoiceModelConfig:
    return ChoiceModelConfig(factors=FACTORS, min_sample_size=50, min_confidence=0.7)


def _simulated(rng: np.random.Generator, n: int, w: np.ndarray) -> list[dict]:
    X = rng.uniform(size=(n, 4, w.size))
    util = np.concatenate([8 * X @ w, np.full((n, 1), 4.0)], axis=1)
    pick = (util + rng.gumbel(size=util.shape)).argmax(axis=1)
    return [
        {"kind": "session", "X": X[i].tolist(), "chosen": -1 if pick[i] == 4 else int(pick[i])}
        for i in range(n)
    ]


def test_defaults_below_the_minimum_sample_then_learned(config):
    rng = np.random.default_rng(5)
    w = np.array([0.5, 0.25, 0.15, 0.1])
    st = cs.SegmentState()
    pub = cs.fit_segment(st, _simulated(rng, 30, w), config)
    assert pub is not None and st.version == 1
    assert pub.is_default and not pub.applied and pub.reason == "below_min_sample_size"
    np.testing.assert_allclose(pub.weights, 0.25)
    event = cs.scoring_event("price_sensitive", st, pub, NOW)
    assert event["is_default"] and event["sample_size"] == 30 and event["version"] == 1
    for _ in range(10):
        pub = cs.fit_segment(st, _simulated(rng, 300, w), config)
    assert pub.applied and not pub.is_default and pub.confidence > 0.7
    assert list(np.argsort(-pub.weights)) == [0, 1, 2, 3]
    assert pub.weights.sum() == pytest.approx(1.0)
    again = cs.current_weights(cs.SegmentState.unpack(st.pack()), config)
    np.testing.assert_allclose(again.weights, pub.weights)


def test_segment_weights_do_not_depend_on_where_batches_begin_and_end(config):
    """The worker's batches are cut by poll timing; the weights must not notice."""
    rng = np.random.default_rng(6)
    observations = _simulated(rng, 730, np.array([0.5, 0.25, 0.15, 0.1]))

    def run(sizes: list[int]) -> tuple[cs.SegmentState, np.ndarray]:
        blob, start = cs.SegmentState().pack(), 0
        for size in sizes:
            st = cs.SegmentState.unpack(blob)  # through the table value, as in the worker
            cs.fit_segment(st, observations[start : start + size], config)
            blob, start = st.pack(), start + size
        assert start == len(observations)
        st = cs.SegmentState.unpack(blob)
        return st, cs.current_weights(st, config).weights

    one, weights = run([730])
    assert one.model is not None and len(one.model["open_block"]) == 730 % config.block_size
    for sizes in ([500, 230], [1] * 30 + [700], [37] * 19 + [27]):
        st, w = run(sizes)
        assert st.model == one.model and np.array_equal(w, weights)


def test_interaction_only_batch_does_not_update_the_model(config):
    st = cs.SegmentState()
    obs = _obs(0, "simple", -1, None, None, inter=1, kind="interaction")
    assert cs.fit_segment(st, [obs], config) is None and st.version == 0


def test_changed_factor_list_restarts_from_the_prior(config):
    st = cs.SegmentState(model={"mean": [1.0, 2.0, 0.0], "precision": [[1, 0, 0], [0, 1, 0],
                                [0, 0, 1]], "n_sessions": 5, "n_no_choice": 0})  # fmt: skip
    assert cs.SegmentState.model_state(st, config).n_sessions == 0


def test_bucket_rows_and_copy_independence():
    st = _state_with(3, 5)
    rows = list(cs.iter_bucket_rows(st))
    assert rows and all(len(r[2]) == len(cs.ANALYTICS_FIELDS) for r in rows)
    clone = copy.deepcopy(st)
    assert cs.SegmentState.unpack(clone.pack()) == st


def test_docstring_examples():
    import doctest

    result = doctest.testmod(cs)
    assert result.attempted >= 3 and result.failed == 0
