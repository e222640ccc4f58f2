"""Assignment: published vectors, uniformity, stickiness and minimal movement."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from agents.learning.assignment import (
    Assigner,
    assign,
    expected_moved_fraction,
    total_variation,
    unit_hash,
    unit_hash_batch,
)

VECTORS = json.loads(
    (Path(__file__).parent / "assignment_vectors.json").read_text(encoding="utf-8")
)["vectors"]
UNITS = [f"user-{i}" for i in range(50_000)]


def reference_hash(salt: str, experiment_id: str, unit_id: str) -> tuple[int, float]:
    """The recipe of docs/assignment.md, written out independently of the module."""
    message = (salt + "\x1f" + experiment_id + "\x1f" + unit_id).encode("utf-8")
    (x,) = struct.unpack(">Q", hashlib.sha256(message).digest()[:8])
    return x, (x >> 11) / 2.0**53


def reference_assign(vector: dict) -> str | None:
    _, traffic_value = reference_hash("traffic", vector["experiment_id"], vector["unit_id"])
    if not traffic_value < vector["traffic"]:
        return None
    scores = []
    for name, weight in zip(vector["variants"], vector["weights"], strict=True):
        _, value = reference_hash("variant:" + name, vector["experiment_id"], vector["unit_id"])
        scores.append(-math.log(1.0 - value) / weight if weight > 0 else math.inf)
    return vector["variants"][int(np.argmin(scores))]


# --------------------------------------------------------------------------------------
# Published vectors
# --------------------------------------------------------------------------------------


def test_there_are_at_least_20_vectors_covering_gate_and_variants():
    assert len(VECTORS) >= 20
    outcomes = [v["expected_variant"] for v in VECTORS]
    assert None in outcomes
    assert len({o for o in outcomes if o is not None}) >= 5
    assert any(any(ord(ch) > 127 for ch in v["unit_id"] + v["experiment_id"]) for v in VECTORS)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['experiment_id']}/{v['unit_id']}")
def test_vector_hashes_match_module_and_reference(vector):
    exp, unit = vector["experiment_id"], vector["unit_id"]
    x, value = reference_hash("traffic", exp, unit)
    assert str(x) == vector["traffic_hash"]["uint64"]
    assert value == vector["traffic_hash"]["value"]
    assert unit_hash(exp, unit) == vector["traffic_hash"]["value"]
    assert (int(vector["traffic_hash"]["uint64"]) >> 11) / 2**53 == value
    for name, expected in vector["variant_hashes"].items():
        x, value = reference_hash("variant:" + name, exp, unit)
        assert str(x) == expected["uint64"]
        assert unit_hash(exp, unit, salt="variant:" + name) == expected["value"] == value


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['experiment_id']}/{v['unit_id']}")
def test_vector_assignment(vector):
    args = (vector["variants"], vector["weights"], vector["traffic"])
    expected = vector["expected_variant"]
    assert reference_assign(vector) == expected
    assert assign(vector["experiment_id"], vector["unit_id"], *args) == expected
    assigner = Assigner(vector["experiment_id"], *args)
    assert assigner.assign(vector["unit_id"]) == expected
    assert assigner.variant_names(assigner.assign_batch([vector["unit_id"]])) == [expected]


def test_vectors_are_far_from_score_ties():
    # A cross-language port could differ by an ulp in ln(); published vectors must not
    # depend on that.
    for vector in VECTORS:
        if vector["expected_variant"] is None:
            continue
        scores = sorted(
            -math.log(1.0 - vector["variant_hashes"][name]["value"]) / w
            for name, w in zip(vector["variants"], vector["weights"], strict=True)
            if w > 0
        )
        if len(scores) > 1:
            assert scores[1] - scores[0] > 1e-9 * scores[1]


# --------------------------------------------------------------------------------------
# Hash properties
# --------------------------------------------------------------------------------------


def test_hash_is_uniform_and_salts_are_independent():
    traffic = unit_hash_batch("uniformity", UNITS)
    variant = unit_hash_batch("uniformity", UNITS, salt="variant:a")
    assert traffic.min() >= 0.0 and traffic.max() < 1.0
    counts = np.histogram(traffic, bins=50, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 0.001
    assert stats.kstest(variant, "uniform").pvalue > 0.001
    # correlation of independent uniforms has sd 1/sqrt(n) ~ 0.0045
    assert abs(np.corrcoef(traffic, variant)[0, 1]) < 0.02


def test_hash_batch_equals_scalar():
    units = UNITS[:500]
    batch = unit_hash_batch("exp-1", units, salt="variant:x")
    assert batch.tolist() == [unit_hash("exp-1", u, salt="variant:x") for u in units]


def test_largest_hash_stays_below_one():
    # x = 2**64 - 1 would round to 1.0 as x / 2**64; the 53-bit recipe cannot.
    assert ((2**64 - 1) >> 11) / 2**53 < 1.0
    assert (2**64 - 1) / 2**64 == 1.0


@settings(max_examples=200, deadline=None)
@given(
    unit=st.text(max_size=40),
    weights=st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).filter(lambda w: sum(w) > 0),
    traffic=st.floats(0.0, 1.0),
)
def test_scalar_and_batch_agree_for_arbitrary_units(unit, weights, traffic):
    variants = [f"v{i}" for i in range(len(weights))]
    assigner = Assigner("prop-exp", variants, weights, traffic)
    scalar = assigner.assign(unit)
    assert assigner.variant_names(assigner.assign_batch([unit])) == [scalar]
    if scalar is not None:
        assert weights[variants.index(scalar)] > 0
        assert unit_hash("prop-exp", unit) < traffic


# --------------------------------------------------------------------------------------
# Allocation, gate, stickiness
# --------------------------------------------------------------------------------------


def test_batch_equals_scalar_on_many_units():
    a = Assigner("pricing", ["control", "a", "b", "c"], [0.4, 0.2, 0.2, 0.2], traffic=0.7)
    units = UNITS[:5000]
    assert a.variant_names(a.assign_batch(units)) == [a.assign(u) for u in units]


def test_shares_follow_weights_and_traffic():
    weights = np.array([0.5, 0.3, 0.2])
    a = Assigner("shares", ["control", "b", "c"], weights, traffic=0.6)
    idx = a.assign_batch(UNITS)
    n = len(UNITS)
    inside = idx >= 0
    # binomial tolerance: 4 standard deviations
    assert abs(inside.mean() - 0.6) < 4 * math.sqrt(0.6 * 0.4 / n)
    counts = np.bincount(idx[inside], minlength=3)
    assert stats.chisquare(counts, weights * counts.sum()).pvalue > 0.001


def test_zero_and_full_traffic():
    units = UNITS[:2000]
    assert (Assigner("t", ["a", "b"], [1, 1], traffic=0.0).assign_batch(units) == -1).all()
    assert (Assigner("t", ["a", "b"], [1, 1], traffic=1.0).assign_batch(units) >= 0).all()
    assert Assigner("t", ["a", "b"], [1, 1], traffic=0.0).assign("user-1") is None


def test_ramping_traffic_up_keeps_every_unit_in_its_variant():
    variants, weights = ["control", "a", "b"], [1, 1, 1]
    at_10 = Assigner("ramp", variants, weights, traffic=0.10).assign_batch(UNITS)
    at_50 = Assigner("ramp", variants, weights, traffic=0.50).assign_batch(UNITS)
    was_in = at_10 >= 0
    assert abs(was_in.mean() - 0.10) < 0.01
    assert np.array_equal(at_50[was_in], at_10[was_in])  # all still in, same variant
    newly_in = (at_50 >= 0) & ~was_in
    assert abs(newly_in.mean() - 0.40) < 0.01
    # ramping back down removes units but never switches one
    back = Assigner("ramp", variants, weights, traffic=0.10).assign_batch(UNITS)
    assert np.array_equal(back, at_10)


def test_variant_does_not_depend_on_traffic():
    full = Assigner("indep", ["a", "b"], [1, 3], traffic=1.0).assign_batch(UNITS)
    part = Assigner("indep", ["a", "b"], [1, 3], traffic=0.3).assign_batch(UNITS)
    inside = part >= 0
    assert np.array_equal(part[inside], full[inside])


def _moved(old_weights, new_weights, variants=None):
    variants = variants or [f"v{i}" for i in range(len(old_weights))]
    old = Assigner("move", variants, old_weights).assign_batch(UNITS)
    new = Assigner("move", variants, new_weights).assign_batch(UNITS)
    return old, new, float(np.mean(old != new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([0.5, 0.5], [0.4, 0.6]),  # two variants
        ([1, 1, 1], [2, 1, 1]),  # ramp one variant up, others shrink proportionally
        ([0.7, 0.1, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2]),  # ramp control down
        ([1, 1, 1, 1], [1, 0, 1, 1]),  # disable a variant
        ([1, 1, 0], [1, 1, 1]),  # enable a new variant
    ],
)
def test_two_ratio_changes_move_exactly_the_minimum(old, new):
    old_idx, new_idx, moved = _moved(old, new)
    tv = total_variation(old, new)
    assert expected_moved_fraction(old, new) == pytest.approx(tv, abs=1e-12)
    assert abs(moved - tv) < 4 * math.sqrt(tv * (1 - tv) / len(UNITS)) + 1e-9
    # only units from shrinking variants move, and only to growing ones
    ratio = (np.asarray(new) / np.sum(new)) / np.maximum(np.asarray(old) / np.sum(old), 1e-300)
    changed = old_idx != new_idx
    assert (ratio[old_idx[changed]] < ratio[new_idx[changed]]).all()


def test_general_changes_move_close_to_the_minimum():
    rng = np.random.default_rng(20240601)
    for _ in range(4):
        k = int(rng.integers(3, 6))
        old = rng.dirichlet(np.ones(k))
        new = rng.dirichlet(np.ones(k))
        _, _, moved = _moved(old, new)
        tv = total_variation(old, new)
        expected = expected_moved_fraction(old, new)
        assert tv - 1e-12 <= expected <= 2 * tv / (1 + tv) + 1e-12
        assert abs(moved - expected) < 4 * math.sqrt(expected * (1 - expected) / len(UNITS))


# The table in docs/assignment.md: (old, new, minimum TV, exponential race, cumulative).
MOVEMENT_TABLE = [
    ([1, 1], [2, 3], 0.100, 0.100, 0.100),
    ([1, 1, 1], [2, 1, 1], 0.167, 0.167, 0.250),
    ([1, 1, 1], [1, 1, 2], 0.167, 0.167, 0.250),
    ([0.7, 0.1, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2], 0.300, 0.300, 0.500),
    ([1, 1, 1, 1], [1, 0, 1, 1], 0.250, 0.250, 0.333),
    ([1, 1, 0], [1, 1, 1], 0.333, 0.333, 0.500),
    ([2, 1, 1], [1, 2, 1], 0.250, 0.300, 0.250),
    ([1, 9], [9, 1], 0.800, 0.800, 0.800),
]


@pytest.mark.parametrize(("old", "new", "tv", "race", "cumulative"), MOVEMENT_TABLE)
def test_documented_movement_table(old, new, tv, race, cumulative):
    assert total_variation(old, new) == pytest.approx(tv, abs=5e-4)
    assert expected_moved_fraction(old, new) == pytest.approx(race, abs=5e-4)
    _, _, race_moved = _moved(old, new)
    assert race_moved == pytest.approx(race, abs=0.01)
    # cumulative intervals over a single hash, the rejected alternative
    h = unit_hash_batch("move", UNITS, salt="single")
    before = np.searchsorted(np.cumsum(old) / np.sum(old), h, side="right")
    after = np.searchsorted(np.cumsum(new) / np.sum(new), h, side="right")
    assert np.mean(before != after) == pytest.approx(cumulative, abs=0.01)


def test_variant_order_does_not_matter():
    a = Assigner("order", ["x", "y", "z"], [1, 2, 3]).assign_batch(UNITS[:3000])
    b = Assigner("order", ["z", "x", "y"], [3, 1, 2]).assign_batch(UNITS[:3000])
    names_a = np.array(["x", "y", "z"])[a]
    names_b = np.array(["z", "x", "y"])[b]
    assert np.array_equal(names_a, names_b)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("e\x1fx", ["a", "b"], [1, 1]), ValueError),
        (("e", ["a\x1f", "b"], [1, 1]), ValueError),
        (("e", ["a", "a"], [1, 1]), ValueError),
        (("e", ["a", "b"], [1]), ValueError),
        (("e", ["a", "b"], [-1, 2]), ValueError),
        (("e", ["a", "b"], [0, 0]), ValueError),
        (("e", ["a", "b"], [1, float("nan")]), ValueError),
        (("e", [], []), ValueError),
        ((1, ["a"], [1]), TypeError),
    ],
)
def test_invalid_definitions_raise(args, error):
    with pytest.raises(error):
        Assigner(*args)


def test_invalid_traffic_raises():
    with pytest.raises(ValueError):
        Assigner("e", ["a"], [1], traffic=1.5)


def test_empty_batch():
    assert Assigner("e", ["a"], [1]).assign_batch([]).shape == (0,)
    assert Assigner("e", ["a"], [1], traffic=0.0).assign_batch(["u"]).tolist() == [-1]
