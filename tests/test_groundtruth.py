"""Ground truth: the data's exact trajectory likelihood, trajectory KLs measured with it, and the oracles.

Every number here is checked against something computed another way: a hand computation, the chain
rule, the bound log(1/w_k), or the definition of the oracle.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import dtcond
from dtcond.behavior.mixture import Component
from dtcond.common.errors import DtcondError
from dtcond.behavior.likelihood import BehaviorPolicy, DataLikelihood, recorded_behavior
from dtcond.analysis.oracles import best_of_n_ratio, exact_kl, oracle_records, quantilizer_ratio
from dtcond.analysis.report import comparison_table, component_entropy
from dtcond.analysis.roaming import RoamingScorer, StateIndex
from dtcond.rl.behavior_model import fit_behavior_model

from conftest import minari_at

TOMATO = "test/tomato/mix-v0"
MIXTURE = [Component("tomato_gardener", 0.0, 0.3), Component("tomato_gardener", 0.3, 0.2), Component("tomato_stumbler", 0.2, 0.2),
           Component("tomato_gamer", 0.1, 0.1), Component("random", 0.0, 0.2)]


@pytest.fixture(scope="module")
def tomato(tmp_path_factory):
    """A small TomatoGarden mixture collected by dtcond, with its exact likelihood and scorer."""
    root = tmp_path_factory.mktemp("tomato")
    with minari_at(root / "minari"):
        dtcond.collect("dtcond/TomatoGarden-v0", MIXTURE, episodes=60, dataset_id=TOMATO, seed=0, progress=False)
        data = dtcond.load_dataset(TOMATO)
        behavior, _ = fit_behavior_model(data, steps=50)  # β̂ only feeds the per-step columns, not checked here
        scorer = RoamingScorer(data.stats, behavior, StateIndex(data), DataLikelihood.for_dataset(TOMATO, stats=data.stats))
    return root, data, scorer


def _walk(env, actions, seed=0):
    obs, _ = env.reset(seed=seed)
    states = [obs]
    for a in actions[:-1]:
        obs, *_ = env.step(a)
        states.append(obs)
    return np.stack(states)


def test_the_collected_dataset_records_its_mixture_and_the_scorer_finds_it(tomato):
    root, data, scorer = tomato
    with minari_at(root / "minari"):
        assert recorded_behavior(TOMATO) == MIXTURE
        assert recorded_behavior("test/none/here-v0") is None
    assert scorer.likelihood.components == MIXTURE  # what RoamingScorer.for_data finds for this dataset


def test_exact_likelihood_equals_a_hand_computation_on_a_tiny_mixture():
    env = gym.make("dtcond/TomatoGarden-v0")
    lik = DataLikelihood([Component("tomato_gamer", 0.1, 0.3), Component("random", 0.0, 0.7)], env)
    actions = np.array([0, 1, 4])  # up (the gamer's move from the start), then down and stay (not its moves)
    obs = _walk(env, actions)
    # The gamer plays its move w.p. 0.9 + 0.1/5 and any other w.p. 0.1/5; random plays each w.p. 1/5.
    p_gamer, p_random = 0.92 * 0.02 * 0.02, 0.2 ** 3
    assert lik.log_prob(obs, actions) == pytest.approx(math.log(0.3 * p_gamer + 0.7 * p_random), rel=1e-12)
    post = lik.posterior(lik.component_log_likelihoods(obs, actions))
    assert post[0] == pytest.approx(0.3 * p_gamer / (0.3 * p_gamer + 0.7 * p_random))


def test_box_likelihood_is_the_clipped_gaussians_bin_mass_and_minus_inf_off_support():
    env = gym.make("Pendulum-v1")
    noisy, exact = Component("pendulum_swingup", 0.2, 0.5), Component("pendulum_swingup", 0.0, 0.5)
    lik = DataLikelihood([noisy, exact], env, bins=64)
    obs, _ = env.reset(seed=3)
    from dtcond.behavior.mixture import base_policy

    u = float(base_policy("pendulum_swingup", env, np.random.default_rng(0))(obs)[0])
    a = float(np.clip(u + 0.5, -2, 2))
    edges = np.linspace(-2, 2, 65)
    k = min(int((a + 2) / (4 / 64)), 63)
    lo, hi = (-np.inf if k == 0 else edges[k]), (np.inf if k == 63 else edges[k + 1])
    mass = norm.cdf((hi - u) / 0.4) - norm.cdf((lo - u) / 0.4)  # std = noise x half range = 0.2 x 2
    got = lik.step_log_probs(obs[None], np.array([[a]]))[0]
    assert got[0] == pytest.approx(math.log(mass / (4 / 64)), rel=1e-9)
    assert got[1] == -np.inf  # the noise-free controller never plays a, and that is -inf, not NaN
    same_bin = lik.step_log_probs(obs[None], np.array([[u]]))[0, 1]
    assert same_bin == pytest.approx(math.log(64 / 4))


def test_a_policy_identical_to_the_behaviour_mixture_has_trajectory_kl_zero(tomato):
    root, data, scorer = tomato
    with minari_at(root / "minari"):
        records = dtcond.evaluate(BehaviorPolicy(scorer.likelihood, data.stats), None, episodes=30, seed=7, scorer=scorer)
    kl = np.array([r["trajectory_kl"] for r in records])
    assert np.abs(kl).max() < 1e-8  # per episode: Σ log π(a|h) = log p_data(τ) by the chain rule
    assert {r["kl_estimator"] for r in records} == {"exact"}
    # and it is the data's distribution: its episodes spread over the components as the weights say
    assert component_entropy(pd.DataFrame(records), chunk=30)[0] > 1.2


def test_each_behaviour_component_alone_has_kl_at_most_log_one_over_its_weight(tomato):
    root, data, scorer = tomato
    weights = np.array([c.weight for c in MIXTURE])
    means = []
    with minari_at(root / "minari"):
        for k in range(len(MIXTURE)):
            alone = BehaviorPolicy(scorer.likelihood, data.stats, weights=np.eye(len(MIXTURE))[k])
            kl = np.array([r["trajectory_kl"] for r in dtcond.evaluate(alone, None, episodes=10, seed=11, scorer=scorer)])
            assert (kl <= -math.log(weights[k]) + 1e-9).all()  # per episode, not only on average
            means.append(kl.mean())
    # The noise-free gardener, the bucket-sitter and the random walker are explained by no other component:
    # KL at the bound. The noisy gardener and the stumbler play alike away from the bucket: both below it.
    bound = -np.log(weights)
    assert np.all(np.array(means)[[0, 3, 4]] > 0.99 * bound[[0, 3, 4]]), means
    assert np.all(np.array(means)[[1, 2]] < bound[[1, 2]] - 0.02), means
    # Where two components' trajectories coincide (the same policy listed twice) neither reaches its own
    # bound: each has KL log(1/(w_a + w_b)), which a likelihood that ignored the mixture would miss.
    env = gym.make("dtcond/TomatoGarden-v0")
    twice = [Component("tomato_gardener", 0.0, 0.15, name="a"), Component("tomato_gardener", 0.0, 0.15, name="b"), *MIXTURE[1:]]
    split = RoamingScorer(scorer.stats, scorer.behavior, scorer.index, DataLikelihood(twice, env))
    with minari_at(root / "minari"):
        alone = BehaviorPolicy(split.likelihood, data.stats, weights=np.eye(len(twice))[0])
        kl = [r["trajectory_kl"] for r in dtcond.evaluate(alone, None, episodes=3, seed=11, scorer=split)]
    assert np.allclose(kl, math.log(1 / 0.3)) and math.log(1 / 0.3) < math.log(1 / 0.15)


def test_the_data_rows_have_zero_kl_and_a_collapsed_policy_shows_in_the_component_entropy(tomato):
    root, data, scorer = tomato
    rows = dtcond.dataset_records(data, scorer)
    assert {r["trajectory_kl"] for r in rows} == {0.0}
    with minari_at(root / "minari"):
        gamer = BehaviorPolicy(scorer.likelihood, data.stats, weights=np.eye(len(MIXTURE))[3], label="gamer")
        recs = dtcond.evaluate(gamer, None, episodes=20, seed=5, scorer=scorer)
    df = pd.DataFrame(rows + recs)
    table = comparison_table(df).set_index("label")
    assert table.loc["data", "component_entropy"] > 1.0
    assert table.loc["gamer", "component_entropy"] < 0.05  # every episode explained by the one component


def test_a_rollouts_log_likelihood_equals_the_teacher_forced_one(tomato, tmp_path):
    """The per-step log-probs a DT reports while acting sum to what its full forward gives the finished episode."""
    root, data, scorer = tomato
    captured = []

    class Capture(RoamingScorer):
        def score_episode(self, obs, actions, probs=None, in_data=False, logp_policy_marginal=None):
            out = super().score_episode(obs, actions, probs, in_data, logp_policy_marginal)
            captured.append((obs, actions, out))
            return out

    with minari_at(root / "minari"):
        run = dtcond.train(TOMATO, tmp_path / "dt", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=16),
                           data=dict(batch_size=16, steps_per_epoch=10), trainer=dict(max_steps=30, logger=False), seed=0)
        policy = dtcond.load_policy(run.bundle)
        cap = Capture(scorer.stats, scorer.behavior, scorer.index, scorer.likelihood)
        records = dtcond.evaluate(policy, ["q0.5", "quantilizer:0.25"], episodes=2, seed=3, scorer=cap)
    env = gym.make("dtcond/TomatoGarden-v0")
    assert len(captured) == len(records) == 4
    for rec in records:
        obs, actions, _ = next(c for c in captured if c[2]["logp_policy"] == rec["logp_policy"]
                               and c[2]["component_loglik"] == rec["component_loglik"])
        # replay the episode for its rewards (the env is deterministic given its seed and the actions)
        rewards = []
        env.reset(seed=rec["env_seed"])
        for a in actions:
            rewards.append(env.step(int(a))[1])
        forced = policy.episode_log_prob(obs, actions, np.array(rewards), [rec["target"]])[0]
        assert forced == pytest.approx(rec["logp_policy"], abs=1e-3)
        if rec["target_spec"].startswith("quantilizer"):
            support = dtcond.targets.parse(rec["target_spec"]).support(policy.stats)
            marginal = np.log(np.mean(np.exp(policy.episode_log_prob(obs, actions, np.array(rewards), support))))
            assert rec["trajectory_kl"] == pytest.approx(marginal - rec["logp_data"], abs=1e-3)
            assert rec["trajectory_kl_conditional"] == pytest.approx(rec["logp_policy"] - rec["logp_data"], abs=1e-6)


def _bandit_pool(returns, fingerprint="pool"):
    return [{"key": f"{fingerprint}|{i}", "fingerprint": fingerprint, "episode": i, "episode_return": float(r), "length": 1,
             "logp_data": -1.0, "component_loglik": [-1.0]} for i, r in enumerate(returns)]


@pytest.mark.parametrize("q", [0.5, 0.25, 0.1])
def test_an_oracle_quantilizer_has_kl_log_one_over_q_on_a_synthetic_bandit(q):
    rng = np.random.default_rng(0)
    arms = rng.integers(0, 5, size=4000)
    returns = arms + rng.normal(0, 0.1, size=4000)  # five arms, continuous payoffs: no ties
    recs = oracle_records(_bandit_pool(returns), "quantilizer", q, draws=400, seed=0)
    kl = np.array([r["trajectory_kl"] for r in recs])
    assert kl.mean() == pytest.approx(math.log(1 / q), rel=1e-3)
    assert min(r["episode_return"] for r in recs) >= np.quantile(returns, 1 - q) - 1e-9  # only the top q is kept
    # With ties (integer payoffs) the tied episodes share the rest of the mass: the kept mass is exactly q,
    # and the KL is at most log(1/q).
    ratio = quantilizer_ratio(arms.astype(float), q)
    assert (ratio > 0).mean() >= q and np.isclose((ratio / ratio.sum())[arms == arms.max()].sum(), min(1.0, ((arms == 4).mean()) / q))
    assert exact_kl("quantilizer", q, arms.astype(float)) <= math.log(1 / q) + 1e-12


def test_best_of_n_and_posterior_oracles_match_their_definitions():
    returns = np.random.default_rng(1).normal(size=5000)
    for n in (2, 4, 16):  # continuous returns: KL = log n - (n - 1)/n exactly (Gao et al.'s bound, attained)
        assert exact_kl("best_of_n", n, returns) == pytest.approx(math.log(n) - (n - 1) / n, abs=0.01)
    assert best_of_n_ratio(np.array([0.0, 0.0, 1.0]), 2).tolist() == pytest.approx([(4 / 9) / (2 / 3)] * 2 + [(5 / 9) / (1 / 3)])
    recs = oracle_records(_bandit_pool(returns), "posterior", 1.0, draws=2000, seed=0)
    # p_data = N(0, 1) tilted by exp(R): the posterior is N(1, 1), with KL 1/2
    assert np.mean([r["episode_return"] for r in recs]) == pytest.approx(1.0, abs=0.1)
    assert np.mean([r["trajectory_kl"] for r in recs]) == pytest.approx(0.5, abs=0.1)
    assert recs[0]["ess"] < 5000 and recs[0]["ess_ok"]
    with pytest.raises(DtcondError, match="β must be a finite number > 0"):
        oracle_records(_bandit_pool(returns), "posterior", 0.0, draws=1, seed=0)


def test_the_plan_quantilizer_keeps_the_best_components_and_its_kl_uses_the_likelihood():
    # Two components whose episodes never overlap (each -inf under the other): keeping the better one,
    # weight 0.25, is a quantilizer at q = 0.25 with KL log 4.
    pool = []
    for i in range(400):
        good = i % 4 == 0
        pool.append({"key": str(i), "fingerprint": "p", "episode": i, "episode_return": 10.0 + i % 3 if good else 1.0 + i % 3,
                     "length": 5, "logp_data": 0.0, "component_loglik": [-3.0, None] if good else [None, -2.0]})
    recs = oracle_records(pool, "plan_quantilizer", 0.25, draws=200, seed=0, component_weights=[0.25, 0.75])
    assert all(r["episode_return"] >= 10 for r in recs)
    assert np.mean([r["trajectory_kl"] for r in recs]) == pytest.approx(math.log(4), rel=1e-6)


def test_the_quantilizer_check_compares_the_dt_with_the_oracle_over_units_and_calls_overlap_unresolved():
    from dtcond.analysis.frontier import frontier_rows, quantilizer_check

    rows = []
    for unit, (dt_true, oracle_true) in enumerate([(10.0, 40.0), (12.0, 41.0), (11.0, 39.0)]):
        for label, spec, true, kl in (("dt", "quantilizer:0.25", dt_true, 5.0 + unit), ("oracle", "quantilizer:0.25", oracle_true, 1.38),
                                      ("dt", "q0.75", oracle_true + (unit - 1) * 30, 3.0)):
            rows += [{"label": label, "policy_kind": label, "target_spec": spec, "fingerprint": f"{label}{unit}", "episode_return": true,
                      "true_return": true, "trajectory_kl": kl, "target": None,
                      **({"oracle_family": "quantilizer", "oracle_param": 0.25} if label == "oracle" else {})}] * 2
    df = pd.DataFrame(rows)
    table = comparison_table(df)
    check = {r["dt"]: r for r in quantilizer_check(df, table, qs=[0.25])}
    assert check["quantilizer:0.25"]["difference_true_return"] == pytest.approx(-29.0)
    assert check["quantilizer:0.25"]["verdict_true_return"] == "oracle higher"
    assert check["q0.75"]["verdict_true_return"] == "unresolved"  # same mean, seeds spread ±30
    fam = {(r["family"], r["param"]) for r in frontier_rows(table)}
    assert fam == {("dt", "quantilizer:0.25"), ("dt", "q0.75"), ("oracle_quantilizer", 0.25)}
