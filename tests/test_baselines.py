"""Online RL baseline, BC/%BC, roaming metrics and the comparison report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CARTPOLE, minari_at, run_cli
from dtcond.rl.baselines import train_baseline
from dtcond.rl.penalties import CostLagrangian, KLPenalty
from dtcond.families import load_policy
from dtcond.datasets.loading import load
from dtcond.common.errors import DtcondError
from dtcond.rollout.evaluation import evaluate
from dtcond.rollout.records import ResultsStore
from dtcond.analysis.roaming import RoamingScorer, dataset_records
from dtcond.dt.training import train

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)
SMALL_PPO = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2}


# The module's tests share one tiny PPO run and one tiny DT on the CartPole data; they only read them.
@pytest.fixture(scope="module")
def ppo_run(module_root):
    with minari_at(module_root / "minari"):
        stats = load(CARTPOLE).stats
    return train_baseline(stats, "ppo", module_root / "ppo", budget=256, checkpoints=2, hyperparams=SMALL_PPO, progress=False)


@pytest.fixture(scope="module")
def dt_bundle(module_root):
    with minari_at(module_root / "minari"):
        return train(CARTPOLE, module_root / "dt", model=TINY, data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
                     trainer=dict(max_steps=5, **QUIET)).bundle


def test_a_tiny_ppo_run_checkpoints_exports_and_resumes(cartpole_dataset, tmp_path):
    stats = load(cartpole_dataset).stats
    first = train_baseline(stats, "ppo", tmp_path / "ppo", budget=256, checkpoints=2, hyperparams=SMALL_PPO, progress=False)
    assert first.timesteps == 256 and len(first.bundles) >= 2
    resumed = train_baseline(stats, "ppo", tmp_path / "ppo", budget=512, checkpoints=2, hyperparams=SMALL_PPO, progress=False)
    assert resumed.timesteps == 512 and resumed.bundles[: len(first.bundles)] == first.bundles
    card = json.loads((resumed.bundles[-1] / "card.json").read_text())
    assert card["format"] == "dtcond-sb3-policy" and card["timesteps"] == 512


def test_an_sb3_bundle_acts_like_the_sb3_model(ppo_run):
    from stable_baselines3 import PPO

    sb3 = PPO.load(ppo_run.out_dir / "checkpoints" / "ppo_256_steps.zip", device="cpu")
    policy = load_policy(ppo_run.bundles[-1])
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    ours, probs, _ = policy.act_batch(None, obs, np.zeros(64), np.zeros(64))
    np.testing.assert_array_equal(ours, sb3.predict(obs, deterministic=True)[0])
    assert probs.shape == (64, 2) and np.array_equal(probs.argmax(1), ours) and set(probs.ravel()) <= {0.0, 1.0}  # one-hot: it acts by the argmax
    assert policy.kind == "ppo" and policy.label == "ppo@256"


def test_baseline_bad_input(cartpole_dataset, pendulum_dataset, tmp_path):
    stats = load(cartpole_dataset).stats
    with pytest.raises(DtcondError, match="SAC needs continuous"):
        train_baseline(stats, "sac", tmp_path / "x", budget=100, progress=False)
    with pytest.raises(DtcondError, match="budget must be >= 1"):
        train_baseline(stats, "ppo", tmp_path / "x", budget=0, progress=False)
    with pytest.raises(DtcondError, match="unknown algo 'dqn'"):
        train_baseline(stats, "dqn", tmp_path / "x", budget=10, progress=False)
    out = run_cli("baseline", "dataset.id=nope/none-v0", cwd=tmp_path)
    assert out.returncode == 2 and "unknown dataset id 'nope/none-v0'" in out.stderr


def test_the_behaviour_model_prefers_the_data_to_random_actions(cartpole_dataset, pendulum_dataset):
    for dataset_id in (cartpole_dataset, pendulum_dataset):
        data = load(dataset_id)
        scorer = RoamingScorer.for_data(data)
        rng = np.random.default_rng(0)
        data_ce, random_ce = [], []
        for t in data.trajectories:
            if data.stats.is_discrete:
                rand = rng.integers(data.stats.action_dim, size=len(t))
            else:
                rand = rng.uniform(data.stats.action_low, data.stats.action_high, size=t.actions.shape).astype(np.float32)
            data_ce.append(scorer.score_episode(t.observations, t.actions)["cross_entropy_behavior"])
            random_ce.append(scorer.score_episode(t.observations, rand)["cross_entropy_behavior"])
        assert np.mean(data_ce) < np.mean(random_ce) - 0.1, dataset_id


def test_novelty_is_zero_on_the_data_and_grows_with_shift(cartpole_dataset):
    data = load(cartpole_dataset)
    scorer = RoamingScorer.for_data(data)
    states = data.trajectories[0].observations
    std = np.asarray(data.stats.obs_std, dtype=np.float32)
    acts = data.trajectories[0].actions
    novelty = [scorer.score_episode(states + k * std, acts)["novelty"] for k in (0, 0.5, 2, 8)]
    assert novelty[0] < 1e-6 and novelty == sorted(novelty) and novelty[-1] > 5
    assert scorer.score_episode(states + 8 * std, acts)["novel_fraction"] == 1.0


def test_pct_bc_trains_on_the_quantilizer_tail(cartpole_dataset, dt_bundle, tmp_path):
    r = train(cartpole_dataset, tmp_path / "pbc", model=TINY, data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
              trainer=dict(max_steps=5, **QUIET), condition_on_return=False, top_fraction=0.25)
    policy = load_policy(r.bundle)
    assert policy.kind == "pct_bc" and policy.label == "pct_bc:0.25" and not policy.condition_on_return
    assert policy.stats.extra["episodes_kept"] == 5  # ceil(0.25 * 20), the tail quantilizer(0.25) draws from
    recs = evaluate(policy, episodes=2, seed=0)
    assert [r["target_spec"] for r in recs] == ["none", "none"] and recs[0]["label"] == "pct_bc:0.25"
    with pytest.raises(DtcondError, match="needs targets"):
        evaluate(load_policy(dt_bundle), episodes=1)


def test_the_comparison_report_builds_from_a_small_table(cartpole_dataset, dt_bundle, ppo_run, tmp_path):
    from dtcond.analysis.report import write_report

    data = load(cartpole_dataset)
    scorer = RoamingScorer.for_data(data)
    store = ResultsStore(tmp_path / "results.jsonl")
    store.append(dataset_records(data, scorer))
    evaluate(load_policy(dt_bundle), ["q0.2", "q0.8", "x1.5", "quantilizer:0.25"], episodes=2, results=store, scorer=scorer)
    bc = load_policy(train(cartpole_dataset, tmp_path / "bc", model=TINY,
                           data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
                           trainer=dict(max_steps=5, **QUIET), condition_on_return=False).bundle)
    evaluate(bc, episodes=2, results=store, scorer=scorer)
    for bundle in ppo_run.bundles:
        evaluate(load_policy(bundle), episodes=2, results=store, scorer=scorer)
    report = write_report(store.path)
    out = report.datasets[cartpole_dataset]
    comp = out.comparison_table
    assert out.comparison == tmp_path / "comparison.md" and out.frontier == tmp_path / "comparison_frontier.png"
    assert {"data", "dt", "bc", "ppo@128", "ppo@256"} <= set(comp["label"])
    assert comp.loc[comp["label"] == "data", "episodes"].item() == 20
    assert comp.loc[comp["policy_kind"] == "ppo", "train_step"].tolist() == [128, 256]  # typed columns, in training order
    md = (tmp_path / "comparison.md").read_text()
    assert "| KL(π‖β̂) | cross-entropy H(π,β̂) |" in md and "![frontier](comparison_frontier.png)" in md
    assert (tmp_path / "comparison_frontier.png").stat().st_size > 10_000
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


def test_the_quantilizer_bound_is_checked_when_costs_exist():
    import pandas as pd

    from dtcond.analysis.report import comparison_table, quantilizer_bound

    rows = [{"label": "data", "policy_kind": "data", "target_spec": "none", "fingerprint": "d", "episode_return": 1.0,
             "cost": c, "target": None} for c in (0.0, 0.0, 1.0, 1.0)]
    rows += [{"label": "dt", "policy_kind": "dt", "target_spec": "quantilizer:0.25", "fingerprint": "a", "episode_return": 2.0,
              "cost": c, "target": 2.0} for c in (1.0, 3.0)]
    rows += [{"label": "pct_bc:0.5", "policy_kind": "pct_bc", "target_spec": "none", "fingerprint": "b", "episode_return": 2.0,
              "cost": 1.5, "target": None}]
    df = pd.DataFrame(rows)
    bound = {b["label"] + b["target_spec"]: b for b in quantilizer_bound(comparison_table(df), df)}
    assert bound["dtquantilizer:0.25"]["bound"] == 2.0 and bound["dtquantilizer:0.25"]["holds"] is True  # 2.0 <= 0.5/0.25
    assert bound["pct_bc:0.5none"]["holds"] is False  # 1.5 > 0.5/0.5


def test_cli_baseline_trains_and_evaluates_every_checkpoint(cartpole_dataset, tmp_path):
    results = tmp_path / "results.jsonl"
    out = run_cli("baseline", f"dataset.id={cartpole_dataset}", "budget=256", "checkpoints=2", "episodes=2", "progress=false",
                  f"results={results}", "hyperparams={n_envs: 2, n_steps: 64, batch_size: 64, n_epochs: 2}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = ResultsStore(results).read()
    labels = {r["label"] for r in rows}
    assert {"ppo@128", "ppo@256", "data"} <= labels
    assert all(r["cross_entropy_behavior"] is not None for r in rows)


def test_a_tiny_sac_run_on_pendulum_exports_a_loadable_policy(pendulum_dataset, tmp_path):
    stats = load(pendulum_dataset).stats
    r = train_baseline(stats, "sac", tmp_path / "sac", budget=120, checkpoints=1,
                       hyperparams={"learning_starts": 50, "batch_size": 32, "buffer_size": 1000}, progress=False)
    policy = load_policy(r.bundles[-1])
    assert policy.kind == "sac" and r.timesteps == 120
    recs = evaluate(policy, episodes=2, seed=0, env_kwargs={"max_episode_steps": 60})
    assert all(r["length"] == 60 for r in recs)
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    actions, probs, _ = policy.act_batch(None, obs, np.zeros(16), np.zeros(16))
    assert actions.shape == (16, 1) and np.all(np.abs(actions) <= 2.0)
    # Acting greedily it is a point mass on the bin grid of [-2, 2]: all the mass in the action's bin.
    n = probs.shape[-1]
    assert probs.shape == (16, 1, n) and set(probs.ravel()) <= {0.0, 1.0} and np.all(probs.sum(-1) == 1.0)
    np.testing.assert_array_equal(probs.argmax(-1), np.clip(np.floor((actions + 2.0) / 4.0 * n), 0, n - 1))


# ---- KL-regularized PPO -------------------------------------------------------------------------


def test_the_kl_penalty_is_beta_times_the_log_ratio_and_the_returns_carry_it(cartpole_dataset):
    """After KLPenalty, each reward is r − β·(log π − log β̂) and each return (γ = λ = 1) is the old one
    plus the penalties still to come in its episode: the penalty is in the objective, not only the step."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    from dtcond.rl.penalties import KLPenalty
    from dtcond.rl.behavior_model import load_or_fit_behavior_model

    data = load(cartpole_dataset)
    behavior, _ = load_or_fit_behavior_model(data)

    class Snapshot(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buf = self.model.rollout_buffer  # (n_steps, n_envs, ...) until training flattens it
            self.rewards, self.returns = buf.rewards.copy(), buf.returns.copy()
            self.obs, self.actions, self.log_probs = buf.observations.copy(), buf.actions.copy(), buf.log_probs.copy()
            self.episode_starts = buf.episode_starts.copy()

    before, after, beta = Snapshot(), Snapshot(), 0.7
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), n_steps=64, batch_size=64, n_epochs=1,
                gamma=1.0, gae_lambda=1.0, seed=0, device="cpu")
    model.learn(128, callback=CallbackList([before, KLPenalty(behavior, data.stats, beta), after]))
    buf = after
    obs = torch.as_tensor(data.stats.normalize_obs(buf.obs.reshape(128, -1)), dtype=torch.float32)
    log_beta = behavior.log_prob(obs, torch.as_tensor(buf.actions.reshape(-1).astype(np.int64))).detach().numpy().reshape(64, 2)
    penalty = beta * (buf.log_probs - log_beta)
    assert np.abs(penalty).max() > 1e-3  # a real penalty, not a no-op
    np.testing.assert_allclose(after.rewards, before.rewards - penalty, rtol=1e-5, atol=1e-5)
    to_come = np.zeros_like(penalty)  # penalties from t to the end of t's episode (or of the rollout)
    running = np.zeros(2)
    for t in reversed(range(64)):
        running = penalty[t] + running
        to_come[t] = running
        running = running * (1 - buf.episode_starts[t])  # an episode starting at t ends the sum before t
    np.testing.assert_allclose(after.returns, before.returns - to_come, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tomato_dataset(module_root):
    from dtcond.behavior.mixture import components_from_config
    from dtcond.behavior.collection import collect

    with minari_at(module_root / "minari"):
        mixture = [{"policy": "tomato_gardener", "noise": 0.2, "weight": 0.5}, {"policy": "tomato_gamer", "noise": 0.1, "weight": 0.1},
                   {"policy": "random", "weight": 0.4}]
        collect("dtcond/TomatoGarden-v0", components_from_config(mixture), 40, "test/tomato-v0", seed=0, progress=False)
    return "test/tomato-v0"


@pytest.mark.slow
def test_a_large_kl_coefficient_holds_ppo_at_the_data_where_plain_ppo_drifts_away(tomato_dataset, module_root):
    """From the same behaviour-cloned start, PPO with β = 100 stays about as close to β̂ as it began,
    while plain PPO on the gameable reward moves away (KL measured exactly on the data's states)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from dtcond.rl.baselines import clone_behavior
    from dtcond.rl.penalties import KLPenalty
    from dtcond.rl.behavior_model import load_or_fit_behavior_model

    with minari_at(module_root / "minari"):
        data = load(tomato_dataset)
        behavior, _ = load_or_fit_behavior_model(data)
    obs = np.concatenate([t.observations[:-1] for t in data.trajectories])
    with torch.no_grad():
        beta_probs = behavior.probs(torch.as_tensor(data.stats.normalize_obs(obs))).double()

    def kl_on_data(policy) -> float:
        with torch.no_grad():
            pi = policy.get_distribution(torch.as_tensor(obs)).distribution.probs.double()
        return float((pi * (pi.clamp_min(1e-12).log() - beta_probs.clamp_min(1e-12).log())).sum(-1).mean())

    kl = {}
    for beta in (0.0, 100.0):
        model = PPO("MlpPolicy", make_vec_env("dtcond/TomatoGarden-v0", n_envs=2, seed=0), n_steps=256, batch_size=128,
                    n_epochs=4, seed=0, device="cpu")
        clone_behavior(model.policy, data, 300, seed=0)
        start = kl_on_data(model.policy)
        model.learn(12288, callback=KLPenalty(behavior, data.stats, beta) if beta else None)
        kl[beta] = (start, kl_on_data(model.policy))
    assert kl[0.0][0] == pytest.approx(kl[100.0][0])  # the same start
    assert kl[100.0][1] < kl[100.0][0] + 0.05 and kl[0.0][1] > kl[0.0][0] + 0.15, kl


def test_kl_regularization_refuses_sac_a_negative_beta_and_a_run_dir_trained_without_it(pendulum_dataset, cartpole_dataset, tmp_path):
    with pytest.raises(DtcondError, match="needs algo=ppo"):
        train_baseline(load(pendulum_dataset).stats, "sac", tmp_path / "sac", budget=64, penalty=KLPenalty, param=1.0, progress=False)
    stats = load(cartpole_dataset).stats
    with pytest.raises(DtcondError, match="kl_coef must be a finite number > 0"):
        train_baseline(stats, "ppo", tmp_path / "neg", budget=64, penalty=KLPenalty, param=-1.0, progress=False)
    with pytest.raises(DtcondError, match="needs its parameter"):
        train_baseline(stats, "ppo", tmp_path / "neg", budget=64, penalty=KLPenalty, progress=False)
    with pytest.raises(DtcondError, match="param, reference and options belong to a regularized run"):
        train_baseline(stats, "ppo", tmp_path / "neg", budget=64, param=1.0, progress=False)
    train_baseline(stats, "ppo", tmp_path / "plain", budget=128, checkpoints=1, hyperparams=SMALL_PPO, progress=False)
    with pytest.raises(DtcondError, match="holds a run with"):
        train_baseline(stats, "ppo", tmp_path / "plain", budget=256, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                       penalty=KLPenalty, param=1.0)


def test_a_kl_regularized_run_is_its_own_family_in_bundles_and_records(cartpole_dataset, tmp_path):
    stats = load(cartpole_dataset).stats
    run = train_baseline(stats, "ppo", tmp_path / "kl", budget=128, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                         penalty=KLPenalty, param=3.0, bc_init_steps=20)
    card = json.loads((run.bundles[-1] / "card.json").read_text())
    assert (card["kind"], card["param"], card["kl_coef"], card["bc_init_steps"]) == ("ppo_kl", 3.0, 3.0, 20)
    policy = load_policy(run.bundles[-1])
    assert (policy.kind, policy.label) == ("ppo_kl", "ppo_kl:3@128")
    policy.greedy = False
    recs = evaluate(policy, episodes=2, seed=0, progress=False)
    assert {r["policy_kind"] for r in recs} == {"ppo_kl"} and {r["label"] for r in recs} == {"ppo_kl:3@128"}


def test_the_lagrangian_penalty_is_lambda_times_cost_with_lambda_from_dual_ascent(hazard_dataset):
    """Per rollout, λ ← max(0, λ + lr·(mean cost of the episodes that ended in it − d)), recomputed here by
    hand from the env's own info["cost"] (an episode's cost carried across rollouts), and each reward of
    the rollout becomes r − λ·c, its returns (γ = λ_GAE = 1) carrying the penalties still to come."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    from dtcond.rl.penalties import CostLagrangian, lagrange_update

    assert lagrange_update(0.5, [3.0, 5.0], cost_limit=2.0, lr=0.1) == pytest.approx(0.7)
    assert lagrange_update(0.1, [0.0, 1.0], cost_limit=2.0, lr=0.1) == 0.0  # λ stays >= 0
    assert lagrange_update(0.3, [], cost_limit=2.0, lr=0.1) == 0.3  # no episode ended: λ unchanged

    class Record(BaseCallback):  # every step's cost and done flags as the env reported them, over both rollouts
        def __init__(self):
            super().__init__()
            self.costs, self.dones = [], []

        def _on_step(self):
            self.costs.append([info["cost"] for info in self.locals["infos"]])
            self.dones.append(self.locals["dones"].copy())
            return True

    class Snapshot(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buf = self.model.rollout_buffer
            self.rewards, self.returns, self.starts = buf.rewards.copy(), buf.returns.copy(), buf.episode_starts.copy()

    record, before, after = Record(), Snapshot(), Snapshot()
    lam0, lr, limit, n = 0.05, 0.01, 3.0, 100
    lagrangian = CostLagrangian(cost_limit=limit, lambda_lr=lr, lambda_init=lam0)
    # A near-random policy, 2 rollouts of 100 steps in 2 envs: episodes end (goal or the 40-step limit) on hazards.
    model = PPO("MlpPolicy", make_vec_env("dtcond/HazardGrid-v0", n_envs=2, seed=0), n_steps=n, batch_size=n,
                n_epochs=1, gamma=1.0, gae_lambda=1.0, seed=0, device="cpu")
    model.learn(2 * n * 2, callback=CallbackList([record, before, lagrangian, after]))
    costs, dones = np.array(record.costs), np.array(record.dones)  # (200, 2)
    running, ended = np.zeros(2), [[], []]
    for t in range(2 * n):
        running += costs[t]
        for i in np.flatnonzero(dones[t]):
            ended[t // n].append(running[i])
            running[i] = 0.0
    assert costs.sum() > 0 and all(ended)  # hazards were met and episodes ended in both rollouts
    lam1 = max(0.0, lam0 + lr * (np.mean(ended[0]) - limit))
    lam2 = max(0.0, lam1 + lr * (np.mean(ended[1]) - limit))
    assert [h["lambda"] for h in lagrangian.history] == pytest.approx([lam1, lam2])
    assert lam2 > 0
    # The second rollout, as the snapshots around the callback saw it.
    penalty = lam2 * costs[n:]
    np.testing.assert_allclose(after.rewards, before.rewards - penalty, rtol=1e-5, atol=1e-5)
    to_come, acc = np.zeros_like(penalty), np.zeros(2)
    for t in reversed(range(n)):
        acc = penalty[t] + acc
        to_come[t] = acc
        acc = acc * (1 - after.starts[t])
    np.testing.assert_allclose(after.returns, before.returns - to_come, rtol=1e-4, atol=1e-4)


def test_a_ppo_lagrangian_run_is_its_own_family_and_refuses_bad_limits(hazard_dataset, cartpole_dataset, tmp_path):
    data = load(hazard_dataset)
    r = train_baseline(data.stats, "ppo", tmp_path / "lag", budget=256, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                       penalty=CostLagrangian, param=4.0, bc_init_steps=20)
    policy = load_policy(r.bundles[-1])
    assert (policy.kind, policy.label) == ("ppo_lag", f"ppo_lag:4@{r.timesteps}")
    history = json.loads((tmp_path / "lag" / "lagrange.json").read_text())
    assert history and all(h["lambda"] >= 0 for h in history)
    rec = evaluate(policy, None, episodes=2, seed=0)
    assert rec[0]["policy_kind"] == "ppo_lag" and rec[0]["cost"] is not None and rec[0]["cost_target"] is None
    with pytest.raises(DtcondError, match="cost_limit must be a finite number >= 0"):
        train_baseline(data.stats, "ppo", tmp_path / "bad", budget=64, penalty=CostLagrangian, param=-1.0, progress=False)
    with pytest.raises(DtcondError, match="takes the options"):
        train_baseline(data.stats, "ppo", tmp_path / "bad", budget=64, penalty=CostLagrangian, param=1.0, options={"lr": 0.1},
                       progress=False)
    with pytest.raises(DtcondError, match="has no costs"):
        train_baseline(load(cartpole_dataset).stats, "ppo", tmp_path / "bad2", budget=64, penalty=CostLagrangian, param=1.0,
                       progress=False)


def test_every_rollout_family_implements_the_policy_contract_and_evaluate_refuses_what_does_not(cartpole_dataset, dt_bundle, ppo_run):
    from dtcond.rollout.contract import MEMBERS, Policy, missing_members
    from dtcond.behavior.likelihood import BehaviorPolicy, DataLikelihood

    data = load(cartpole_dataset)
    families = {"dt": load_policy(dt_bundle), "ppo": load_policy(ppo_run.bundles[-1]),
                "behavior": BehaviorPolicy(DataLikelihood.for_dataset(cartpole_dataset, stats=data.stats), data.stats)}
    for kind, policy in families.items():
        assert isinstance(policy, Policy) and missing_members(policy) == [], kind
        assert policy.kind == kind and policy.param is None
        records = evaluate(policy, ["q0.5"] if kind == "dt" else None, episodes=2, seed=0)
        assert [r["policy_kind"] for r in records] == [kind, kind]

    class Partial:  # the batch methods, but no typed identity
        stats, kind = data.stats, "mine"

        def begin(self, n):
            return None

    assert missing_members(Partial())[:2] == ["label", "param"] and "act_batch" in MEMBERS
    with pytest.raises(DtcondError, match=r"^Partial is not a dtcond policy: it lacks label, param, train_step") as err:
        evaluate(Partial(), None, episodes=1)
    assert "\n" not in str(err.value)


def test_one_loader_reads_every_bundle_format_and_refuses_an_unknown_one(dt_bundle, ppo_run, tmp_path, monkeypatch):
    import shutil

    from dtcond import families

    assert load_policy(dt_bundle).kind == "dt" and load_policy(ppo_run.bundles[-1]).kind == "ppo"
    odd = tmp_path / "odd"
    shutil.copytree(dt_bundle, odd)
    card = json.loads((odd / "card.json").read_text())
    (odd / "card.json").write_text(json.dumps({**card, "format": "someone-elses-policy"}))
    with pytest.raises(DtcondError, match=r"unknown bundle format 'someone-elses-policy'; this dtcond loads dtcond-policy, dtcond-sb3-policy"):
        load_policy(odd)
    monkeypatch.setitem(families.BUNDLE_LOADERS, "someone-elses-policy", lambda folder, device: ("mine", folder.name))
    assert load_policy(odd / "card.json") == ("mine", "odd")  # a new family registers its reader, and load_policy uses it
