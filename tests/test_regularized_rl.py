"""Regularized RL beyond the per-step KL to β̂ (occupancy-measure regularization, PPO-KL toward the BC policy),
fixed-budget frontier comparisons, and the interval helpers."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

from conftest import write_buffers
from dtcond.rl.baselines import train_baseline
from dtcond.rl.penalties import HistoryKLPenalty, KLPenalty, OccupancyPenalty
from dtcond.families import load_policy
from dtcond.datasets.loading import load
from dtcond.common.errors import DtcondError
from dtcond.rollout.evaluation import evaluate
from dtcond.analysis.frontier import budget_comparisons, envelope_choice
from dtcond.analysis.statistics import bounded_mean_ci, paired_ci, wilson_interval

SMALL_PPO = {"n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2}
P_DATA, P_POLICY = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5])


@pytest.fixture
def three_action_data():
    """Observations N(0, I) independent of the action; actions drawn from P_DATA."""
    rng = np.random.default_rng(0)
    episodes = [{"observations": rng.normal(size=(201, 2)).astype(np.float32), "actions": rng.choice(3, size=200, p=P_DATA),
                 "rewards": np.zeros(200)} for _ in range(20)]
    write_buffers("test/occupancy-v0", episodes, observation_space=gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
                  action_space=gym.spaces.Discrete(3))
    return load("test/occupancy-v0")


def test_the_discriminator_learns_the_log_density_ratio_of_the_two_occupancies(three_action_data):
    """Same state distribution on both sides, actions from P_POLICY against P_DATA: at the logistic optimum
    d(s, a) = log P_POLICY(a)/P_DATA(a), and its mean over the policy's steps is the KL."""
    rng = np.random.default_rng(1)
    penalty = OccupancyPenalty(three_action_data, om_coef=1.0, seed=0)
    obs, actions = rng.normal(size=(4000, 2)), rng.choice(3, size=4000, p=P_POLICY)
    feats = penalty.features(obs, actions)
    for _ in range(4):
        penalty.fit(feats)
    d = penalty.log_ratio(penalty.features(np.zeros((3, 2)), np.arange(3))).numpy()
    np.testing.assert_allclose(d, np.log(P_POLICY / P_DATA), atol=0.2)
    kl = float((P_POLICY * np.log(P_POLICY / P_DATA)).sum())
    assert float(penalty.log_ratio(feats).mean()) == pytest.approx(kl, abs=0.1)


def test_the_occupancy_penalty_is_lambda_times_the_discriminator_and_the_returns_carry_it(cartpole_dataset):
    """After OccupancyPenalty each reward is r − λ·clip(d(s, a)) with the discriminator as fitted on that
    rollout, and each return (γ = λ_GAE = 1) carries the penalties still to come in its episode."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.env_util import make_vec_env

    data = load(cartpole_dataset)

    class Snapshot(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buf = self.model.rollout_buffer
            self.rewards, self.returns = buf.rewards.copy(), buf.returns.copy()
            self.obs, self.actions, self.episode_starts = buf.observations.copy(), buf.actions.copy(), buf.episode_starts.copy()

    before, after, lam = Snapshot(), Snapshot(), 0.7
    penalty = OccupancyPenalty(data, lam, seed=0)
    model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), n_steps=64, batch_size=64, n_epochs=1,
                gamma=1.0, gae_lambda=1.0, seed=0, device="cpu")
    model.learn(128, callback=CallbackList([before, penalty, after]))
    d = penalty.log_ratio(penalty.features(after.obs.reshape(128, -1), after.actions.reshape(128, -1))).numpy().reshape(64, 2)
    pen = lam * d
    assert np.abs(pen).max() > 1e-3  # a real penalty, not a no-op
    np.testing.assert_allclose(after.rewards, before.rewards - pen, rtol=1e-5, atol=1e-5)
    to_come, running = np.zeros_like(pen), np.zeros(2)
    for t in reversed(range(64)):
        running = pen[t] + running
        to_come[t] = running
        running = running * (1 - after.episode_starts[t])
    np.testing.assert_allclose(after.returns, before.returns - to_come, rtol=1e-4, atol=1e-4)


def test_an_occupancy_regularized_run_is_its_own_family_and_resumes_its_discriminator(cartpole_dataset, tmp_path):
    stats = load(cartpole_dataset).stats
    run = train_baseline(stats, "ppo", tmp_path / "om", budget=128, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                         penalty=OccupancyPenalty, param=3.0, bc_init_steps=20)
    card = json.loads((run.bundles[-1] / "card.json").read_text())
    assert (card["kind"], card["om_coef"], card["bc_init_steps"]) == ("ppo_om", 3.0, 20)
    policy = load_policy(run.bundles[-1])
    assert (policy.kind, policy.label, policy.param) == ("ppo_om", "ppo_om:3@128", 3.0)
    policy.greedy = False
    recs = evaluate(policy, episodes=2, seed=0, progress=False)
    assert {r["policy_kind"] for r in recs} == {"ppo_om"} and {r["policy_param"] for r in recs} == {3.0}
    saved = (tmp_path / "om" / "discriminator.safetensors").read_bytes()
    train_baseline(stats, "ppo", tmp_path / "om", budget=256, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                   penalty=OccupancyPenalty, param=3.0, bc_init_steps=20)
    assert (tmp_path / "om" / "discriminator.safetensors").read_bytes() != saved  # trained on, from where it was


def test_occupancy_regularization_refuses_bad_input(cartpole_dataset, pendulum_dataset, tmp_path):
    from dtcond.config import ComparisonConfig, merge
    from dtcond.pipeline import run_comparison

    stats = load(cartpole_dataset).stats
    for param, message in ((-1.0, "om_coef must be a finite number > 0"), (float("nan"), "om_coef must be a finite number > 0")):
        with pytest.raises(DtcondError, match=message):
            train_baseline(stats, "ppo", tmp_path / "bad", budget=64, progress=False, penalty=OccupancyPenalty, param=param)
    with pytest.raises(DtcondError, match="takes no reference policy"):
        train_baseline(stats, "ppo", tmp_path / "bad", budget=64, progress=False, penalty=OccupancyPenalty, param=1.0, reference="x")
    with pytest.raises(DtcondError, match="needs algo=ppo"):
        train_baseline(load(pendulum_dataset).stats, "sac", tmp_path / "sac", budget=64, penalty=OccupancyPenalty, param=1.0, progress=False)
    train_baseline(stats, "ppo", tmp_path / "plain", budget=128, checkpoints=1, hyperparams=SMALL_PPO, progress=False)
    with pytest.raises(DtcondError, match="holds a run with"):
        train_baseline(stats, "ppo", tmp_path / "plain", budget=256, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                       penalty=OccupancyPenalty, param=1.0)
    base = {"env": {"name": "cartpole", "id": "CartPole-v1"}, "work_dir": str(tmp_path / "w")}
    with pytest.raises(DtcondError, match="rl.regularized.ppo_om: ppo_om: om_coef must be a finite number > 0"):
        run_comparison(merge(ComparisonConfig, base, {"rl": {"regularized": {"ppo_om": [0.0]}}}))
    with pytest.raises(DtcondError, match="rl.regularized.ppo_om: regularized RL needs algo=ppo"):
        merge(ComparisonConfig, base, {"rl": {"algo": "sac", "regularized": {"ppo_om": [1.0]}}})
    assert not (tmp_path / "w").exists()


@pytest.fixture
def bc_bundle(cartpole_dataset, tmp_path):
    from dtcond.dt.training import train

    return train(cartpole_dataset, tmp_path / "bc", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=16, dropout=0.0),
                 data=dict(batch_size=8, steps_per_epoch=5, val_windows=32), condition_on_return=False,
                 trainer=dict(max_steps=5, enable_progress_bar=False, enable_model_summary=False, logger=False)).bundle


def test_the_history_reference_scores_each_step_with_the_context_it_had_in_the_whole_episode(cartpole_dataset, bc_bundle):
    """Episodes cut across two rollouts score as the whole episodes do: the last K − 1 steps and the episode
    timestep are carried over the boundary."""
    from dtcond.rl.penalties import HistoryKLPenalty

    ref = load_policy(bc_bundle)
    penalty = HistoryKLPenalty(ref, kl_coef=1.0)
    rng = np.random.default_rng(0)
    lengths = {0: [7, 9, 30], 1: [25, 21]}  # per env: episode lengths, laid end to end over 2 rollouts of 23 steps
    n_steps, total = 23, 46
    obs, act, starts = np.zeros((total, 2, 4), np.float32), np.zeros((total, 2, 1), np.float32), np.zeros((total, 2))
    whole = {}
    for e, ls in lengths.items():
        t = 0
        for L in ls:
            o, a = rng.normal(size=(L, 4)).astype(np.float32), rng.integers(2, size=L)
            stop = min(t + L, total)
            obs[t:stop, e], act[t:stop, e, 0], starts[t, e] = o[: stop - t], a[: stop - t], 1
            whole[(e, t)] = ref.step_log_probs(o[: stop - t], a[: stop - t], np.zeros(stop - t), [0.0])[0]
            t = stop
            if t >= total:
                break
    got = np.concatenate([penalty.reference_log_probs(obs[i:i + n_steps], act[i:i + n_steps], starts[i:i + n_steps])
                          for i in (0, n_steps)])
    for (e, t), lp in whole.items():
        np.testing.assert_allclose(got[t:t + len(lp), e], lp, rtol=1e-5, atol=1e-5)


def test_ppo_kl_toward_the_bc_policy_is_its_own_family(cartpole_dataset, bc_bundle, tmp_path):
    stats = load(cartpole_dataset).stats
    run = train_baseline(stats, "ppo", tmp_path / "klbc", budget=128, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                         penalty=HistoryKLPenalty, param=10.0, bc_init_steps=20, reference=bc_bundle)
    policy = load_policy(run.bundles[-1])
    assert (policy.kind, policy.label, policy.param) == ("ppo_kl_bc", "ppo_kl_bc:10@128", 10.0)
    with pytest.raises(DtcondError, match="belong to a regularized run"):
        train_baseline(stats, "ppo", tmp_path / "x", budget=64, progress=False, reference=bc_bundle)
    with pytest.raises(DtcondError, match="give its bundle as reference"):
        train_baseline(stats, "ppo", tmp_path / "x", budget=64, progress=False, penalty=HistoryKLPenalty, param=10.0)
    with pytest.raises(DtcondError, match="holds a run with"):  # the same dir under the Markov reference is another run
        train_baseline(stats, "ppo", tmp_path / "klbc", budget=256, checkpoints=1, hyperparams=SMALL_PPO, progress=False,
                       penalty=KLPenalty, param=10.0)


def test_a_box_policy_draws_its_noise_from_the_episode_generator(pendulum_dataset, tmp_path):
    """The same env seeds give the same sampled episodes whatever torch's global generator holds; other seeds differ."""
    import torch

    run = train_baseline(load(pendulum_dataset).stats, "ppo", tmp_path / "ppo", budget=128, checkpoints=1,
                         hyperparams={"n_envs": 1, "n_steps": 64, "batch_size": 64, "n_epochs": 1}, progress=False)
    policy = load_policy(run.bundles[-1])
    policy.greedy = False
    returns = []
    for torch_seed, env_seed in ((0, 5), (123, 5), (0, 6)):
        torch.manual_seed(torch_seed)
        returns.append([r["episode_return"] for r in evaluate(policy, episodes=2, seed=env_seed, progress=False)])
    assert returns[0] == returns[1]
    assert returns[0] != returns[2]


def _records(values: dict, episodes: int = 4) -> pd.DataFrame:
    """Records for budget comparisons: values[(kind, member, seed)] = (kl on even episodes, value on even, kl odd, value odd)."""
    rows = []
    for (kind, member, seed), (kl_e, v_e, kl_o, v_o) in values.items():
        for ep in range(episodes):
            even = ep % 2 == 0
            rows.append({"policy_kind": kind, "label": "dt" if kind == "dt" else f"{kind}:{member}@1", "target_spec": member if kind == "dt" else "none",
                         "policy_param": None if kind == "dt" else float(member), "train_seed": seed, "episode": ep,
                         "trajectory_kl": kl_e if even else kl_o, "true_return": v_e if even else v_o, "episode_return": 0.0})
    return pd.DataFrame(rows)


def test_budget_comparisons_choose_on_one_half_of_the_episodes_and_score_on_the_other():
    """Member "lucky" looks best on the even episodes and is poor on the odd ones: the comparison reports
    its odd-episode value, and the difference is the paired one over seeds."""
    values = {}
    for s in range(3):
        values[("dt", "lucky", s)] = (4.0, 50.0, 4.0, 10.0 + s)
        values[("dt", "steady", s)] = (4.0, 30.0, 4.0, 30.0)
        values[("ppo_kl", "1", s)] = (2.0, 20.0, 2.0, 20.0 + 2 * s)
        values[("ppo_kl", "10", s)] = (50.0, 90.0, 50.0, 90.0)  # beyond every budget below 50
    df = _records(values)
    out = budget_comparisons(df, [5.0, 1.0], against=("ppo_kl",))
    at5, at1 = out
    assert at5["reference"]["per_seed"] == [10.0, 11.0, 12.0]  # "lucky" chosen, scored where it was not chosen
    # PPO-KL at budget 5: the mixture of β=1 (KL 2) and β=10 (KL 50) with weight (50 − 5)/48 on β=1.
    p = 45 / 48
    np.testing.assert_allclose(at5["other"]["per_seed"], [p * (20 + 2 * s) + (1 - p) * 90 for s in range(3)])
    d, ci, n = paired_ci(at5["reference"]["per_seed"], at5["other"]["per_seed"])
    assert (at5["difference"], at5["difference_ci95"], at5["pairs"]) == pytest.approx((d, ci, 3))
    assert at5["comparisons"] == 2 and at5["difference_ci_bonferroni"] > at5["difference_ci95"]
    assert at1["reference"]["reached"] == 0 and at1["verdict"] == at1["verdict_bonferroni"] == "not reached by conditioning or ppo_kl"


def test_envelope_choice_never_exceeds_the_budget_and_beats_every_single_member_within_it():
    rng = np.random.default_rng(0)
    for _ in range(200):
        kl, value = rng.uniform(0, 10, 5), rng.normal(size=5)
        budget = rng.uniform(0, 10)
        choice = envelope_choice(kl, value, budget)
        if not (kl <= budget).any():
            assert choice is None
            continue
        i, j, p = choice
        assert p * kl[i] + (1 - p) * kl[j] <= budget + 1e-9
        assert p * value[i] + (1 - p) * value[j] >= value[kl <= budget].max() - 1e-9


def test_bounded_intervals_stay_in_bounds_and_cover():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        k = rng.binomial(20, 0.1)
        lo, hi = wilson_interval(int(k), 20)
        assert 0.0 <= lo <= hi <= 1.0
        covered += lo <= 0.1 <= hi
    assert covered / 2000 >= 0.93
    m, lo, hi = bounded_mean_ci([1.0, 0.95, 0.1])
    assert 0.0 <= lo <= m <= hi <= 1.0
    assert bounded_mean_ci([1.0, 1.0])[1:] == (1.0, 1.0)


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_a_bad_budget_is_refused_in_one_line_before_any_work(tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    from dtcond.analysis.frontier import check_budgets

    for bad in (["x"], [-1], [float("inf")], []):
        with pytest.raises(DtcondError, match="budgets"):
            check_budgets(bad)
    for bad, message in (("[5,oops]", "config key budgets[1]: Value 'oops' of type 'str' could not be converted to Float"),
                         ("[5,-1]", "budgets must be numbers > 0 (nats per episode) or null, got -1.0")):
        out = subprocess.run([sys.executable, str(REPO / "experiments" / "goodhart" / "run.py"), f"budgets={bad}",
                              f"work_dir={tmp_path / 'work'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [f"goodhart: error: {message}"]
        assert not (tmp_path / "work").exists() and not (tmp_path / "hydra").exists()
