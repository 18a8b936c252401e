"""The comparison pipeline: its config refuses bad inputs up front, and a tiny run is shared-seed, per-seed and resumable."""

from __future__ import annotations

import re

import pytest

from dtcond.config import ComparisonConfig, merge
from dtcond.common.errors import DtcondError
from dtcond.pipeline import run_comparison
from dtcond.rollout.records import ResultsStore

BEHAVIOR = [{"policy": "cartpole_balance", "noise": 0.5, "weight": 0.5}, {"policy": "random", "weight": 0.5}]


def spec(tmp_path, **kw) -> ComparisonConfig:
    fields = dict(env={"name": "cartpole", "id": "CartPole-v1", "behavior": BEHAVIOR, "collect_episodes": 12},
                  dataset_id="test/cartpole/pipeline-v0", work_dir=str(tmp_path / "work"), seeds=[0, 1],
                  model=dict(context_len=5, n_layer=1, n_head=1, n_embd=16), data=dict(batch_size=16, steps_per_epoch=10),
                  trainer=dict(max_steps=10, logger=False), bc={"enabled": False, "top_fractions": [0.5]}, rl={"algo": None},
                  targets=["q0.5", "x1.5", {"name": "quantilizer", "qs": [0.5]}], eval={"episodes": 2, "roaming": False},
                  report=False, progress=False)
    return merge(ComparisonConfig, {**fields, **kw})


@pytest.mark.parametrize("bad, message", [
    (dict(seeds=[]), "seeds is empty"),
    (dict(seeds=[0, 0]), "seeds must be distinct"),
    (dict(bc={"top_fractions": [1.5]}), "bc.top_fractions must be in (0, 1], got [1.5]"),
    (dict(bc={"top_fractions": [0.1, 0.1]}), "bc.top_fractions must be distinct"),
    (dict(rl={"algo": "dqn"}), "rl.algo must be one of ppo, sac or null"),
    (dict(rl={"algo": "ppo", "budget": 0}), "rl.budget must be >= 1, got 0"),
    (dict(trainer={"max_steps": 0}), "trainer.max_steps must be a positive integer"),
    (dict(eval={"episodes": 0}), "eval.episodes must be >= 1, got 0"),
    (dict(targets=[]), "targets is empty"),
    (dict(targets=["q0.5", "qq"]), "cannot parse target 'qq'"),
    (dict(targets=[{"n": 3}]), "needs a name"),
    (dict(dataset_id="no-version"), "invalid dataset id"),
    (dict(rl={"algo": "sac", "regularized": {"ppo_kl": [1.0]}}), "rl.regularized.ppo_kl: regularized RL needs algo=ppo"),
    (dict(rl={"algo": "ppo", "regularized": {"ppo_kl": [0.0]}}), "rl.regularized.ppo_kl: ppo_kl: kl_coef must be a finite number > 0"),
    (dict(rl={"algo": "ppo", "regularized": {"ppo_kl": [1.0, 1.0]}}), "rl.regularized.ppo_kl must be distinct"),
    (dict(rl={"algo": "ppo", "regularized": {"ppo_lag": [-1.0]}}), "ppo_lag: cost_limit must be a finite number >= 0"),
    (dict(rl={"algo": "ppo", "regularized": {"ppo_xx": [1.0]}}), "unknown policy family 'ppo_xx'; registered: data"),
    (dict(rl={"algo": "ppo", "regularized": {"bc": [1.0]}}), "rl.regularized.bc: bc is not a regularized RL family"),
    (dict(rl={"algo": "ppo", "options": {"ppo_lag": {"lr": 1.0}}}), "rl.options.ppo_lag: ppo_lag takes the options ['lambda_lr', 'lambda_init'], not lr"),
    (dict(rl={"algo": None, "options": {"ppo_lag": {"lambda_lr": -1.0}}}), "rl.options.ppo_lag: lambda_lr must be a finite number >= 0, got -1.0"),
    (dict(rl={"algo": "ppo", "bc_init_steps": -1}), "rl.bc_init_steps must be >= 0"),
    (dict(rl={"algo": "ppo", "regularized": {"ppo_kl_bc": [10.0]}}), "needs bc.enabled=true"),
    (dict(oracles={"quantilizer": [0.5]}), "oracles need eval.roaming=true"),
    (dict(oracles={"quantilizer": [1.5]}), "oracles.quantilizer must be in (0, 1]"),
    (dict(oracles={"best_of_n": [0]}), "oracles.best_of_n must be >= 1"),
    (dict(oracles={"pool": 1}), "oracles.pool must be >= 2"),
    (dict(relabel=["magic"]), "relabel must list distinct methods from esper"),
    (dict(esper={"clusters": 1}), "esper.clusters must be >= 2"),
    (dict(epsiodes=3), "unknown config key epsiodes; ComparisonConfig takes: env, dataset_id"),
    (dict(rl={"kl_coefs": [1.0]}), "unknown config key rl.kl_coefs; RlConfig takes: algo, budget"),
])
def test_config_refuses_bad_inputs_before_any_work(tmp_path, bad, message):
    """Each bad input fails in one line, from the config or from run_comparison's checks, before the work dir exists."""
    with pytest.raises(DtcondError, match=re.escape(message)):
        run_comparison(spec(tmp_path, **bad))
    assert not (tmp_path / "work").exists()


def test_regularized_runs_need_no_plain_rl_run(tmp_path):
    """rl.algo=null trains no plain RL run; the regularized runs are PPO either way."""
    from dtcond.pipeline import regularized_runs

    config = spec(tmp_path, rl={"algo": None, "regularized": {"ppo_lag": [0, 4]}, "options": {"ppo_lag": {"lambda_lr": 0.001}}})
    assert [(f.kind, p) for f, p in regularized_runs(config)] == [("ppo_lag", 0.0), ("ppo_lag", 4.0)]


def test_run_comparison_takes_a_comparison_config(tmp_path):
    with pytest.raises(DtcondError, match="run_comparison takes a dtcond.ComparisonConfig"):
        run_comparison({"env": {"name": "cartpole", "id": "CartPole-v1"}})


def test_the_dataset_id_defaults_to_the_envs_mixture(tmp_path):
    assert spec(tmp_path, dataset_id=None).dataset == "dtcond/cartpole/mixture-v0"
    assert spec(tmp_path).dataset == "test/cartpole/pipeline-v0"


def test_comparison_is_per_seed_on_shared_env_seeds_and_resumes(tmp_path, capsys):
    first = run_comparison(spec(tmp_path))
    out = capsys.readouterr().out
    assert "[1/3] dataset test/cartpole/pipeline-v0" in out and "exists, reused" not in out  # collected: it was missing
    df = first.records
    policies = df[df["policy_kind"] != "data"]
    assert set(policies["label"]) == {"dt", "pct_bc:0.5"} and set(policies["train_seed"]) == {0, 1}
    assert (df["policy_kind"] == "data").sum() == 12
    assert len(policies) == 2 * (3 * 2 + 2)  # per seed: DT at 3 targets and %BC, 2 episodes each
    # Every policy and target met the same env seeds, whatever its training seed.
    assert policies.groupby(["train_seed", "label", "target_spec"])["env_seed"].apply(frozenset).nunique() == 1
    assert set(first.table.loc[first.table["policy_kind"] != "data", "seeds"]) == {2}
    assert set(first.metrics) == set(policies.loc[policies["policy_kind"] == "dt", "fingerprint"])
    episodes = ResultsStore(tmp_path / "work" / "episodes.jsonl")
    stored = len(episodes.read())

    again = run_comparison(spec(tmp_path))
    out = capsys.readouterr().out
    assert "exists, reused" in out and "0 new episodes" in out
    assert len(episodes.read()) == stored and len(again.records) == len(df)
    # A rerun reports the training time recorded with each run's checkpoints, not the second of finding the run done.
    assert len(list((tmp_path / "work").rglob("checkpoints/train_seconds.json"))) == 4  # 2 seeds x (DT, %BC)
    took = {(p.seed, p.label): p.train_seconds for p in first.policies}
    assert all(p.train_seconds >= took[(p.seed, p.label)] > 0 for p in again.policies)

    # More training steps continue the runs from their checkpoints; each exports its best-validation weights (new
    # ones, or the earlier best), and only weights not rolled out before get new episodes.
    longer = run_comparison(spec(tmp_path, trainer=dict(max_steps=12, logger=False)))
    import torch

    last = sorted((tmp_path / "work").rglob("checkpoints/last.ckpt"))
    assert len(last) == 4 and {torch.load(p, weights_only=True)["global_step"] for p in last} == {12}
    fingerprints = set(longer.records.loc[longer.records["policy_kind"] != "data", "fingerprint"])
    assert fingerprints == {p.fingerprint for p in longer.policies}
    fresh = longer.records["fingerprint"].isin(fingerprints - set(policies["fingerprint"]))
    assert len(longer.records) == len(df) and len(episodes.read()) == stored + int(fresh.sum())
