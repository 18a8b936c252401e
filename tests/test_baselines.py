"""Online RL baseline, BC/%BC, roaming metrics and the comparison report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CARTPOLE, minari_at, run_cli
from dtcond.baselines import train_baseline
from dtcond.checkpoints import load_policy
from dtcond.data import load
from dtcond.errors import DtcondError
from dtcond.evaluation import evaluate
from dtcond.results import ResultsStore
from dtcond.roaming import RoamingScorer, dataset_records
from dtcond.training import train

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
        return train(CARTPOLE, module_root / "dt", model=TINY, data=dict(batch_size=8, steps_per_epoch=5),
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
    r = train(cartpole_dataset, tmp_path / "pbc", model=TINY, data=dict(batch_size=8, steps_per_epoch=5),
              trainer=dict(max_steps=5, **QUIET), condition_on_return=False, top_fraction=0.25)
    policy = load_policy(r.bundle)
    assert policy.kind == "pct_bc" and policy.label == "pct_bc:0.25" and not policy.condition_on_return
    assert policy.stats.extra["episodes_kept"] == 5  # ceil(0.25 * 20), the tail quantilizer(0.25) draws from
    recs = evaluate(policy, episodes=2, seed=0)
    assert [r["target_spec"] for r in recs] == ["none", "none"] and recs[0]["label"] == "pct_bc:0.25"
    with pytest.raises(DtcondError, match="needs targets"):
        evaluate(load_policy(dt_bundle), episodes=1)


def test_the_comparison_report_builds_from_a_small_table(cartpole_dataset, dt_bundle, ppo_run, tmp_path):
    from dtcond.report import write_report

    data = load(cartpole_dataset)
    scorer = RoamingScorer.for_data(data)
    store = ResultsStore(tmp_path / "results.jsonl")
    store.append(dataset_records(data, scorer))
    evaluate(load_policy(dt_bundle), ["q0.2", "q0.8", "x1.5", "quantilizer:0.25"], episodes=2, results=store, scorer=scorer)
    bc = load_policy(train(cartpole_dataset, tmp_path / "bc", model=TINY, data=dict(batch_size=8, steps_per_epoch=5),
                           trainer=dict(max_steps=5, **QUIET), condition_on_return=False).bundle)
    evaluate(bc, episodes=2, results=store, scorer=scorer)
    for bundle in ppo_run.bundles:
        evaluate(load_policy(bundle), episodes=2, results=store, scorer=scorer)
    report = write_report(store.path)
    out = report["outputs"][cartpole_dataset]
    comp = out["comparison_table"]
    assert {"data", "dt", "bc", "ppo@128", "ppo@256"} <= set(comp["label"])
    assert comp.loc[comp["label"] == "data", "episodes"].item() == 20
    assert comp.loc[comp["algo"] == "ppo", "train_step"].tolist() == [128, 256]  # typed columns, in training order
    md = (tmp_path / "comparison.md").read_text()
    assert "| KL(π‖β̂) | cross-entropy H(π,β̂) |" in md and "![frontier](comparison_frontier.png)" in md
    assert (tmp_path / "comparison_frontier.png").stat().st_size > 10_000
    assert (tmp_path / "calibration.png").stat().st_size > 10_000


def test_the_quantilizer_bound_is_checked_when_costs_exist():
    import pandas as pd

    from dtcond.report import comparison_table, quantilizer_bound

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
