"""Target specs: parsing, resolution against the data's returns, the quantilizer's tail, bad specs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtcond import targets as T
from dtcond.datasets.loading import DatasetStats
from dtcond.common.errors import DtcondError


def stats_with(returns) -> DatasetStats:
    return DatasetStats(
        dataset_id="x/y-v0", env_id="CartPole-v1", env_kwargs={}, max_episode_steps=500, obs_dim=4,
        action_kind="discrete", action_dim=2, action_low=None, action_high=None, obs_mean=[0.0] * 4,
        obs_std=[1.0] * 4, episode_returns=sorted(float(r) for r in returns), max_episode_length=500,
        num_episodes=len(returns), num_steps=1000,
    )


RETURNS = np.random.default_rng(0).uniform(-50, 400, size=101)
STATS = stats_with(RETURNS)


@pytest.mark.parametrize("text, kind, value", [
    ("q0.9", "quantile", 0.9), ("quantile:0.25", "quantile", 0.25), ("x1.5", "scale", 1.5), ("3000", "absolute", 3000.0),
    ("-150.5", "absolute", -150.5), ("abs:12", "absolute", 12.0), ("n0.5", "normalized", 0.5),
    ("quantilizer:0.1", "quantilizer", 0.1), ("QZ0.05", "quantilizer", 0.05), (250, "absolute", 250.0),
])
def test_specs_parse_and_print_back(text, kind, value):
    spec = T.parse(text)
    assert (spec.kind, spec.value) == (kind, value)
    assert T.parse(str(spec)) == spec


@pytest.mark.parametrize("text, message", [
    ("nan", "cannot parse"), ("inf", "must be finite"), ("q1.5", "quantile must be in \\[0, 1\\]"),
    ("q-0.1", "quantile must be in"), ("quantilizer:0", "must be in \\(0, 1\\]"), ("quantilizer:1.2", "must be in \\(0, 1\\]"),
    ("best", "cannot parse"), ("", "cannot parse"),
])
def test_bad_specs_are_refused(text, message):
    with pytest.raises(DtcondError, match=message):
        T.parse(text)


def test_absurd_targets_are_refused():
    with pytest.raises(DtcondError, match="is it a typo"):
        T.absolute(1e9).resolve(STATS)


def test_resolution_matches_numpy():
    for q in (0.0, 0.05, 0.5, 0.9, 1.0):
        r = T.quantile(q).resolve(STATS)
        assert r.value == pytest.approx(np.quantile(RETURNS, q))
        assert r.quantile == pytest.approx((RETURNS >= r.value).mean())
    lo, hi = RETURNS.min(), RETURNS.max()
    assert T.normalized(0.25).resolve(STATS).value == pytest.approx(lo + 0.25 * (hi - lo))
    assert T.scale(1.5).resolve(STATS).value == pytest.approx(1.5 * hi)
    neg = stats_with([-1000.0, -500.0, -200.0])
    assert T.scale(1.5).resolve(neg).value == pytest.approx(-100.0)  # more than the best, not less


def test_ood_flag_marks_targets_outside_the_data():
    lo, hi = RETURNS.min(), RETURNS.max()
    assert not T.absolute(hi).resolve(STATS).ood and not T.absolute(lo).resolve(STATS).ood
    assert T.absolute(hi + 1).resolve(STATS).ood and T.absolute(lo - 1).resolve(STATS).ood
    assert T.scale(1.25).resolve(STATS).ood and T.scale(1.25).resolve(STATS).quantile == 0.0


def test_quantilizer_draws_only_from_the_top_tail():
    rng = np.random.default_rng(1)
    tail = np.sort(RETURNS)[-11:]  # ceil(0.1 * 101) episodes
    draws = {T.quantilizer(0.1).resolve(STATS, rng).value for _ in range(2000)}
    assert draws == set(tail.tolist())
    with pytest.raises(DtcondError, match="pass rng"):
        T.quantilizer(0.1).resolve(STATS)


def test_grid_spans_p5_to_p95_then_ood():
    specs = T.grid(STATS, n=7, ood_scales=(1.25, 2.0))
    values = [s.resolve(STATS).value for s in specs[:7]]
    assert values[0] == pytest.approx(np.quantile(RETURNS, 0.05), rel=1e-3)
    assert values[-1] == pytest.approx(np.quantile(RETURNS, 0.95), rel=1e-3)
    assert np.allclose(np.diff(values), np.diff(values)[0], rtol=1e-2)
    assert [str(s) for s in specs[7:]] == ["x1.25", "x2"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=60), st.floats(0, 1), st.floats(0, 1))
def test_quantile_targets_are_monotone_in_q(returns, q1, q2):
    stats = stats_with(returns)
    a, b = T.quantile(min(q1, q2)).resolve(stats), T.quantile(max(q1, q2)).resolve(stats)
    assert a.value <= b.value + 1e-9
    assert a.quantile >= b.quantile


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=1, max_size=60), st.floats(-2e4, 2e4))
def test_ood_iff_outside_the_data_range(returns, g):
    lo, hi = min(returns), max(returns)
    span = max(hi - lo, abs(hi), 1.0)
    if min(abs(g - lo), abs(g - hi)) > T.ABSURD_RANGES * span:
        with pytest.raises(DtcondError, match="is it a typo"):
            T.absolute(g).resolve(stats_with(returns))
        return
    r = T.absolute(g).resolve(stats_with(returns))
    assert r.ood == (g < lo or g > hi)


# Joint (return, cost) targets. Episodes as (return, cost) pairs: costs not a function of returns.
PAIRS = [(1.0, 0.0), (2.0, 5.0), (3.0, 0.0), (4.0, 9.0), (5.0, 1.0), (6.0, 16.0), (7.0, 4.0), (8.0, 36.0)]


def stats_with_costs(pairs=PAIRS) -> DatasetStats:
    ordered = sorted(pairs)
    stats = stats_with([g for g, _ in ordered])
    stats.episode_costs = [c for _, c in ordered]
    return stats


@pytest.mark.parametrize("text", ["q0.9,cost<=q0.2", "5,cost=3", "quantilizer:0.25,cost<=4", "n0.5,cost=q0.5", "x1.5,cost<=0"])
def test_joint_specs_parse_and_print_back(text):
    spec = T.parse(text)
    assert spec.cost is not None and str(spec) == text and T.parse(str(spec)) == spec
    assert T.parse(text.replace(",", " , ").upper()) == spec  # spaces and case do not matter


def test_joint_targets_resolve_both_signals_against_the_data():
    stats = stats_with_costs()
    r = T.parse("5,cost=q0.5").resolve(stats)
    costs = np.array([c for _, c in sorted(PAIRS)])
    assert r.value == 5.0 and r.cost == pytest.approx(np.quantile(costs, 0.5))
    assert r.cost_quantile == pytest.approx(np.mean(costs <= r.cost))
    # P(G >= 5 and C <= c): of the episodes returning 5, 6, 7, 8 (costs 1, 16, 4, 36), those within c = 4.5
    assert r.joint_quantile == pytest.approx(2 / 8)
    assert T.parse("5,cost<=2").resolve(stats).cost == 2.0  # a fixed return: both operators condition on C
    assert T.parse("5").resolve(stats).cost is None


def test_the_feasible_quantilizer_draws_pairs_from_the_top_of_the_episodes_within_budget():
    stats, rng = stats_with_costs(), np.random.default_rng(0)
    # cost <= 4: episodes (1,0), (3,0), (5,1), (7,4); the top half by return is (5,1) and (7,4)
    draws = {(r.value, r.cost) for r in (T.parse("quantilizer:0.5,cost<=4").resolve(stats, rng) for _ in range(200))}
    assert draws == {(5.0, 1.0), (7.0, 4.0)}
    # "=" instead: the return from the top half of all episodes (5..8), the cost as requested
    draws = {(r.value, r.cost) for r in (T.parse("quantilizer:0.5,cost=4").resolve(stats, rng) for _ in range(200))}
    assert draws == {(g, 4.0) for g in (5.0, 6.0, 7.0, 8.0)}
    with pytest.raises(DtcondError, match="no episode in the data has cost <= 0.5"):
        T.parse("quantilizer:0.5,cost<=0.5").resolve(stats_with_costs([(1.0, 2.0), (2.0, 3.0)]), rng)


@pytest.mark.parametrize("text, message", [
    ("q0.9,cost<q0.2", "cannot parse cost target"), ("q0.9,budget<=1", "cannot parse cost target"),
    ("q0.9,cost<=-1", "finite number >= 0"), ("q0.9,cost<=q1.5", "cost quantile must be in"),
    ("none,cost<=1", "takes no cost part"), ("q0.9,cost<=1,cost<=2", "one comma"), ("q0.9,cost<=nan", "finite number"),
])
def test_bad_joint_specs_are_one_line_errors(text, message):
    with pytest.raises(DtcondError, match=message):
        T.parse(text)


def test_a_cost_target_on_data_without_costs_is_refused():
    with pytest.raises(DtcondError, match="needs a dataset with costs"):
        T.parse("q0.5,cost<=1").resolve(STATS)


def test_a_sampler_cost_joins_every_target_without_one():
    stats = stats_with_costs()
    specs = T.from_sampler({"name": "quantilizer", "qs": [0.5, 0.25], "cost": "cost<=4"}, stats)
    assert [str(s) for s in specs] == ["quantilizer:0.5,cost<=4", "quantilizer:0.25,cost<=4"]
    specs = T.from_sampler({"targets": ["q0.5", "q0.9,cost=1"], "cost": "cost<=q0.5"}, stats)
    assert [str(s) for s in specs] == ["q0.5,cost<=q0.5", "q0.9,cost=1"]  # a spec's own cost part stays
    assert all(s.cost is None for s in T.from_sampler({"name": "grid", "n": 3, "cost": None}, stats))
    with pytest.raises(DtcondError, match="cannot parse cost target"):
        T.from_sampler({"targets": ["q0.5"], "cost": "<=4"}, stats)


def test_a_grid_sampler_takes_grids_own_defaults_for_the_keys_it_leaves_out():
    data = stats_with(np.linspace(0.0, 100.0, 101))
    assert [str(s) for s in T.from_sampler({"name": "grid"}, data)] == [str(s) for s in T.grid(data)]
    assert [str(s) for s in T.from_sampler({"name": "grid", "n": 2, "ood_scales": []}, data)] == [str(s) for s in T.grid(data, n=2, ood_scales=())]
