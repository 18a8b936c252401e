"""Conditioning on return and cost together: the data's costs, training, the single-env and batched
rollouts with a cost-to-go, and bundles written without cost conditioning."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HAZARD, minari_at
from dtcond.families import load_policy
from dtcond.datasets.loading import load
from dtcond.datasets.windows import WindowDataset, make_window
from dtcond.common.errors import DtcondError
from dtcond.rollout.evaluation import evaluate, make_jobs
from dtcond.targets import parse
from dtcond.dt.training import train

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)
JOINT = ["6,cost=4", "8,cost<=q0.5", "quantilizer:0.5,cost<=9", "quantilizer:0.5,cost=1"]


@pytest.fixture(scope="module")
def cost_bundle(module_root):
    """One tiny cost-conditioned DT on the HazardGrid data: the module's tests only read it."""
    with minari_at(module_root / "minari"):
        return train(HAZARD, module_root / "cost", model={**TINY, "cost_conditioned": True},
                     data=dict(batch_size=16, steps_per_epoch=20, val_windows=32),
                     trainer=dict(max_steps=40, **QUIET)).bundle


@pytest.fixture
def cost_policy(cost_bundle, hazard_dataset):
    return load_policy(cost_bundle)


def test_the_stats_pair_each_episode_cost_with_its_return_and_windows_carry_cost_to_go(hazard_dataset):
    data = load(hazard_dataset)
    pairs = sorted((float(t.rewards.astype(np.float64).sum()), float(t.costs.astype(np.float64).sum())) for t in data.trajectories)
    np.testing.assert_allclose(np.array([data.stats.episode_returns, data.stats.episode_costs]).T, np.array(pairs))
    assert data.stats.cost_quantile(1.0) == max(c for _, c in pairs)
    ds = WindowDataset(data.trajectories, data.stats, length=6, epoch_size=64, seed=0, batch_size=64)
    batch = ds[0]
    episodes, ends = ds.draw(0)
    expected = np.stack([make_window(data.trajectories[e], int(t), 6, data.stats).costs_to_go for e, t in zip(episodes, ends)])
    np.testing.assert_array_equal(batch["costs_to_go"].numpy(), expected)
    traj = data.trajectories[0]
    assert make_window(traj, len(traj) - 1, len(traj), data.stats).costs_to_go[0] == pytest.approx(traj.costs.sum())


def one_at_a_time(policy, specs, episodes, seed):
    """The reference: ``reset(target, cost=...)`` then ``act(obs, reward, cost)``, with the evaluator's seeds."""
    out = []
    for job in make_jobs(specs, episodes, seed):
        env = policy.make_env()
        target = job.spec.resolve(policy.stats, job.target_rng())
        obs, _ = env.reset(seed=job.env_seed)
        policy.reset(target.value, seed=job.sampling_rng(), cost=target.cost)
        total, cost, length, reward, step_cost = 0.0, 0.0, 0, None, None
        while True:
            obs, reward, term, trunc, info = env.step(policy.act(obs, reward, step_cost))
            step_cost = info["cost"]
            total, cost, length = total + reward, cost + step_cost, length + 1
            if term or trunc:
                break
        out.append((str(job.spec), job.episode, total, cost, length))
    return out


def test_batched_cost_conditioned_rollouts_equal_the_single_env_api(cost_policy):
    records = evaluate(cost_policy, JOINT, episodes=3, seed=2)
    assert [(r["target_spec"], r["episode"], r["episode_return"], r["cost"], r["length"]) for r in records] == \
        one_at_a_time(cost_policy, JOINT, 3, 2)
    by_spec = {r["target_spec"]: r for r in records}
    assert by_spec["6,cost=4"]["cost_target"] == 4.0 and by_spec["6,cost=4"]["target"] == 6.0
    stats = cost_policy.stats
    assert by_spec["8,cost<=q0.5"]["cost_target"] == pytest.approx(stats.cost_quantile(0.5))
    # The feasible quantilizer conditions on a data episode's own (return, cost) pair, within the budget.
    pairs = set(zip(stats.episode_returns, stats.episode_costs))
    drawn = [r for r in records if r["target_spec"] == "quantilizer:0.5,cost<=9"]
    assert all((r["target"], r["cost_target"]) in pairs and r["cost_target"] <= 9 for r in drawn)
    assert all(0 <= r["cost_target_quantile"] <= 1 and 0 <= r["joint_quantile"] <= r["cost_target_quantile"] for r in records)


def test_the_cost_to_go_changes_what_the_policy_does(cost_policy):
    # Same return target, other budgets, same env seeds: the conditioning input reaches the actions.
    low = evaluate(cost_policy, ["7,cost=0"], episodes=4, seed=0)
    high = evaluate(cost_policy, ["7,cost=36"], episodes=4, seed=0)
    assert [r["length"] for r in low] != [r["length"] for r in high] or [r["cost"] for r in low] != [r["cost"] for r in high]


def test_window_decoding_equals_cached_decoding_with_a_cost_to_go(hazard_dataset, tmp_path):
    r = train(hazard_dataset, tmp_path / "one", model={**TINY, "n_layer": 1, "cost_conditioned": True},
              data=dict(batch_size=16, steps_per_epoch=20, val_windows=32), trainer=dict(max_steps=20, **QUIET))
    policy = load_policy(r.bundle)
    cached = evaluate(policy, JOINT, episodes=2, seed=5)
    policy.decode = "window"
    window = evaluate(policy, JOINT, episodes=2, seed=5)
    assert [(r["episode_return"], r["cost"], r["length"]) for r in cached] == [(r["episode_return"], r["cost"], r["length"]) for r in window]


def test_cost_and_return_only_policies_refuse_each_others_targets(cost_policy, hazard_dataset, tmp_path):
    with pytest.raises(DtcondError, match="needs a cost part too"):
        evaluate(cost_policy, ["q0.9"], episodes=1)
    with pytest.raises(DtcondError, match="reset\\(target=..., cost=...\\)"):
        cost_policy.reset(5.0)
    r = train(hazard_dataset, tmp_path / "plain", model=TINY, data=dict(batch_size=16, steps_per_epoch=5, val_windows=32),
              trainer=dict(max_steps=5, **QUIET))
    plain = load_policy(r.bundle)
    assert not plain.cost_conditioned
    assert evaluate(plain, ["q0.9"], episodes=1)[0]["cost_target"] is None  # costs still recorded, no cost target
    with pytest.raises(DtcondError, match="not trained with cost conditioning"):
        evaluate(plain, ["q0.9,cost<=1"], episodes=1)
    with pytest.raises(DtcondError, match="not trained with cost conditioning"):
        plain.reset(5.0, cost=1.0)


def test_a_bundle_written_without_cost_fields_loads_and_acts_unchanged(hazard_dataset, tmp_path):
    # A bundle as the code before cost conditioning wrote it: no cost keys in the model config or the stats.
    r = train(hazard_dataset, tmp_path / "plain", model=TINY, data=dict(batch_size=16, steps_per_epoch=5, val_windows=32),
              trainer=dict(max_steps=5, **QUIET))
    card_path = r.bundle / "card.json"
    card = json.loads(card_path.read_text())
    before = evaluate(load_policy(r.bundle), ["q0.5", "q0.9"], episodes=2, seed=1)
    for key in ("cost_conditioned", "cost_scale"):
        card["model"].pop(key)
    card["stats"].pop("episode_costs")
    card_path.write_text(json.dumps(card))
    old = load_policy(r.bundle)
    assert not old.cost_conditioned and old.stats.episode_costs is None
    after = evaluate(old, ["q0.5", "q0.9"], episodes=2, seed=1)
    assert [(a["episode_return"], a["cost"]) for a in after] == [(b["episode_return"], b["cost"]) for b in before]
    with pytest.raises(DtcondError, match="needs a dataset with costs"):  # its stats no longer know the costs
        parse("q0.5,cost<=1").resolve(old.stats)


def test_cost_conditioning_needs_a_dataset_with_costs(cartpole_dataset, tmp_path):
    with pytest.raises(DtcondError, match="cost_conditioned=true needs a dataset with costs"):
        train(cartpole_dataset, tmp_path / "x", model={**TINY, "cost_conditioned": True}, trainer=dict(max_steps=1, **QUIET))


def test_cli_eval_takes_joint_targets(cost_policy, tmp_path):
    from conftest import run_cli
    from dtcond.rollout.records import ResultsStore

    results = tmp_path / "results.jsonl"
    out = run_cli("eval", f"policy={cost_policy.source}", f"results={results}", "episodes=2", "progress=false", "roaming=false",
                  'sampler.targets=["6,cost=4","quantilizer:0.5,cost<=9"]', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [r for r in ResultsStore(results).read() if r["policy_kind"] == "dt"]
    assert sorted({r["target_spec"] for r in rows}) == ["6,cost=4", "quantilizer:0.5,cost<=9"] and len(rows) == 4
    assert all(r["cost_target"] is not None and r["cost"] is not None for r in rows)
    results = tmp_path / "quantilizer.jsonl"
    out = run_cli("eval", f"policy={cost_policy.source}", f"results={results}", "episodes=1", "progress=false", "roaming=false",
                  "sampler=quantilizer", "sampler.cost='cost<=9'", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [r for r in ResultsStore(results).read() if r["policy_kind"] == "dt"]
    assert sorted(r["target_spec"] for r in rows) == sorted(f"quantilizer:{q},cost<=9" for q in ("0.5", "0.25", "0.1", "0.05"))
    assert all(r["cost_target"] <= 9 for r in rows)  # qs 0.5, 0.25, 0.1, 0.05, each within the budget
