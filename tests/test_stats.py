"""dtcond.analysis.statistics: one t-interval, metrics that compute what their names say, typed policy columns."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dtcond.common.errors import DtcondError
from dtcond.analysis.report import comparison_table, divergence_column
from dtcond.analysis.statistics import calibration_metrics, ci95, grouped_mean_ci, mean_ci, ood_gain, with_policy_columns


def test_ci95_is_the_student_t_interval_not_the_normal_one():
    x = np.array([3.1, 4.7, 2.2, 5.9, 4.0, 3.3, 6.1, 2.8])
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert ci95(x) == pytest.approx((hi - lo) / 2, rel=1e-12)
    three = [1.0, 2.0, 4.0]  # three seeds: t(0.975, 2) = 4.30, more than twice the z value
    z = 1.96 * np.std(three, ddof=1) / math.sqrt(3)
    assert ci95(three) == pytest.approx(z * sps.t.ppf(0.975, 2) / 1.96) and ci95(three) > 2 * z


def test_ci95_drops_non_finite_values_and_needs_two():
    assert ci95([1.0, 2.0, 4.0, float("nan"), None]) == ci95([1.0, 2.0, 4.0])
    assert math.isnan(ci95([5.0])) and math.isnan(ci95([])) and math.isnan(ci95([1.0, float("inf")]))
    mean, ci = mean_ci([1.0, 2.0, 4.0, float("nan")])
    assert mean == pytest.approx(7 / 3) and ci == ci95([1.0, 2.0, 4.0])


def test_grouped_ci_is_over_seeds_when_there_are_several_else_over_episodes():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"fingerprint": np.repeat(["a", "b", "c"], 20), "r": rng.normal(np.repeat([0.0, 5.0, 1.0], 20), 1.0)})
    per_seed = df.groupby("fingerprint")["r"].mean()
    mean, ci, units = grouped_mean_ci(df, "r")
    assert units == 3 and mean == pytest.approx(per_seed.mean()) and ci == pytest.approx(ci95(per_seed))
    assert ci > 2 * ci95(df["r"])  # 60 episodes would understate how much a fresh seed varies
    one = df[df["fingerprint"] == "b"]
    assert grouped_mean_ci(one, "r") == pytest.approx((one["r"].mean(), ci95(one["r"]), 1))
    with pytest.raises(DtcondError, match="no column 'nope'"):
        grouped_mean_ci(df, "nope")


def test_mae_and_bias_differ_when_errors_cancel():
    # Target 10: episodes land at 4 and 16 (bias 0, MAE 6); target 20: at 18 and 18 (bias −2, MAE 2).
    df = pd.DataFrame({"target_spec": ["10", "10", "20", "20"], "target": [10.0, 10.0, 20.0, 20.0], "ood": False,
                       "episode_return": [4.0, 16.0, 18.0, 18.0], "episode": [0, 1, 0, 1]})
    m = calibration_metrics(df, data_returns=[0.0, 40.0])["in_distribution"]
    assert (m["mae"], m["bias"]) == (4.0, -1.0)
    assert (m["normalized_mae"], m["normalized_bias"]) == (0.1, -0.025)
    assert (m["targets"], m["episodes"]) == (2, 4)


def test_quantilizer_specs_and_targetless_rows_stay_out_of_the_fits():
    df = pd.DataFrame({"target_spec": ["10", "quantilizer:0.1", "none"], "target": [10.0, 30.0, None], "ood": False,
                       "episode_return": [12.0, 0.0, 0.0], "episode": [0, 0, 0]})
    m = calibration_metrics(df, [0.0, 40.0])
    assert m["in_distribution"]["episodes"] == 1 and m["in_distribution"]["bias"] == 2.0 and m["ood"] is None


def _plateau(rng, episodes=10):
    """A policy that saturates: seven in-distribution targets and one OOD target, all achieving the
    same expected return (100); each episode's env seed shifts its return by a shared amount."""
    env_effect = rng.normal(0, 10, episodes)
    rows = []
    for target, ood in [*((t, False) for t in (20, 40, 60, 80, 100, 120, 140)), (300, True)]:
        for e in range(episodes):
            rows.append({"target_spec": str(target), "target": float(target), "ood": ood, "episode": e, "env_seed": 1000 + e,
                         "fingerprint": "f", "episode_return": 100 + env_effect[e] + rng.normal(0, 10)})
    return pd.DataFrame(rows)


def test_the_ood_gain_is_unbiased_where_ood_minus_the_best_mean_is_not():
    rng = np.random.default_rng(1)
    gains, max_based, covered = [], [], 0
    for _ in range(200):
        df = _plateau(rng)
        m = ood_gain(df, data_max=150.0)
        gains.append(m["ood_gain"])
        covered += abs(m["ood_gain"]) <= m["ood_gain_ci95"]
        ind = df[~df["ood"]]
        max_based.append(df[df["ood"]]["episode_return"].mean() - ind.groupby("target")["episode_return"].mean().max())
    assert abs(np.mean(gains)) < 3 * np.std(gains) / math.sqrt(len(gains))  # true gain is 0
    assert np.mean(max_based) < -3.0  # the max of 7 noisy means sits ~1.35 sd (~4.3) above their common mean
    assert covered >= 180  # the 95% interval covers the true gain about 95% of the time


def test_the_ood_gain_pairs_episodes_by_env_seed():
    df = pd.DataFrame({"target": [50.0] * 3 + [90.0] * 3, "ood": [False] * 3 + [True] * 3, "fingerprint": "f",
                       "env_seed": [7, 8, 9, 9, 7, 8], "episode_return": [10.0, 50.0, 90.0, 92.0, 12.0, 52.0]})
    m = ood_gain(df, data_max=60.0)
    # Each env seed gains exactly 2, however different the seeds are; unpaired, the spread would swamp it.
    assert m["ood_gain"] == pytest.approx(2.0) and m["ood_gain_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert (m["ood_gain_pairs"], m["ood_gain_reference_target"]) == (3, 50.0)
    m = calibration_metrics(df.assign(target_spec=df["target"].astype(str)), [0.0, 60.0])
    assert m["ood_gain"] == pytest.approx(2.0) and m["best_mean_return"] == pytest.approx(52.0)


def test_ood_targets_below_the_data_are_not_a_gain():
    df = pd.DataFrame({"target": [-50.0, 50.0, 90.0], "ood": [True, False, True], "env_seed": 1,
                       "episode_return": [-40.0, 48.0, 55.0]})
    assert ood_gain(df, data_max=60.0)["ood_gain"] == pytest.approx(7.0)
    assert ood_gain(df[df["target"] < 60], data_max=60.0) == {}


def test_policy_columns_come_from_the_typed_identity_and_labels_are_never_parsed():
    df = pd.DataFrame({"label": ["ppo@100", "custom", "looks-like-sac@9"], "policy_kind": ["ppo", "sac", "dt"],
                       "algo": [None, "sac", None], "train_step": [100, 3000, None]})
    out = with_policy_columns(df)  # an old table's algo column, a repeat of policy_kind, is dropped
    assert "algo" not in out and out["policy_kind"].tolist() == ["ppo", "sac", "dt"] and out["train_step"].tolist() == [100, 3000, None]
    with pytest.raises(DtcondError, match="no policy_kind column.*labels are not parsed"):
        with_policy_columns(pd.DataFrame({"label": ["ppo@100"]}))


def test_the_comparison_orders_checkpoints_by_train_step_and_averages_over_seeds():
    rows = []
    for label, step in (("late", 5000), ("early", 200)):
        for fp, base in (("s1", 10.0), ("s2", 20.0)):
            rows += [{"label": label, "policy_kind": "ppo", "algo": "ppo", "train_step": step, "target_spec": "none",
                      "target": None, "fingerprint": f"{fp}{label}", "episode_return": base + e, "nll_behavior": 1.0 + e}
                     for e in range(3)]
    table = comparison_table(pd.DataFrame(rows))
    assert table["label"].tolist() == ["early", "late"] and table["train_step"].tolist() == [200, 5000]
    assert table["seeds"].tolist() == [2, 2] and table["episode_return"].tolist() == [16.0, 16.0]
    assert table["episode_return_ci95"].iloc[0] == pytest.approx(ci95([11.0, 21.0]))
    assert table["cross_entropy_behavior"].iloc[0] == 2.0 and "nll_behavior" not in table  # old tables read under the new name


def test_the_frontier_uses_the_kl_where_rows_have_it():
    assert divergence_column(pd.DataFrame({"kl_behavior": [0.1, None], "cross_entropy_behavior": [1.0, 2.0]})) == "kl_behavior"
    assert divergence_column(pd.DataFrame({"kl_behavior": [None], "cross_entropy_behavior": [2.0]})) == "cross_entropy_behavior"
    with pytest.raises(DtcondError, match="roaming=true"):
        divergence_column(pd.DataFrame({"episode_return": [1.0]}))
