"""The comparison pipeline: its spec refuses bad inputs up front, and a tiny run is shared-seed, per-seed and resumable."""

from __future__ import annotations

import pytest

from dtcond.errors import DtcondError
from dtcond.pipeline import ComparisonSpec, run_comparison
from dtcond.results import ResultsStore

BEHAVIOR = [{"policy": "cartpole_balance", "noise": 0.5, "weight": 0.5}, {"policy": "random", "weight": 0.5}]


def spec(tmp_path, **kw) -> ComparisonSpec:
    fields = dict(env_id="CartPole-v1", dataset_id="test/cartpole/pipeline-v0", behavior=BEHAVIOR, work_dir=tmp_path / "work",
                  episodes=12, seeds=[0, 1], model=dict(context_len=5, n_layer=1, n_head=1, n_embd=16),
                  data=dict(batch_size=16, steps_per_epoch=10), trainer=dict(max_steps=10, logger=False),
                  bc=False, pct_bc=[0.5], rl_algo=None, targets=["q0.5", "x1.5", {"name": "quantilizer", "qs": [0.5]}],
                  eval_episodes=2, roaming=False, report=False)
    return ComparisonSpec(**{**fields, **kw})


@pytest.mark.parametrize("bad, message", [
    (dict(seeds=[]), "seeds is empty"),
    (dict(seeds=[0, 0]), "seeds must be distinct"),
    (dict(pct_bc=[1.5]), "pct_bc top fractions must be in (0, 1]"),
    (dict(rl_algo="dqn"), "unknown rl_algo 'dqn'"),
    (dict(rl_algo="ppo", rl_budget=0), "rl_budget must be a positive integer"),
    (dict(trainer={}), "trainer.max_steps must be a positive integer"),
    (dict(eval_episodes=0), "eval_episodes must be a positive integer"),
    (dict(targets=["q0.5", "qq"]), "cannot parse target 'qq'"),
    (dict(targets=[{"n": 3}]), "needs a name"),
    (dict(dataset_id="no-version"), "invalid dataset id"),
    (dict(rl_algo="sac", rl_kl_coefs=[1.0]), "needs rl_algo='ppo'"),
    (dict(rl_algo="ppo", rl_kl_coefs=[0.0]), "rl_kl_coefs must be finite numbers > 0"),
    (dict(rl_algo="ppo", rl_kl_coefs=[1.0, 1.0]), "rl_kl_coefs must be distinct"),
    (dict(rl_algo="ppo", rl_bc_init_steps=-1), "rl_bc_init_steps must be an integer >= 0"),
])
def test_spec_refuses_bad_inputs_before_any_work(tmp_path, bad, message):
    with pytest.raises(DtcondError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec(tmp_path, **bad)
    assert not (tmp_path / "work").exists()


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
    assert set(first.table.loc[first.table["kind"] != "data", "seeds"]) == {2}
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

    # More training steps continue the runs: new weights, whose episodes alone make the result.
    longer = run_comparison(spec(tmp_path, trainer=dict(max_steps=12, logger=False)))
    fingerprints = set(longer.records.loc[longer.records["policy_kind"] != "data", "fingerprint"])
    assert fingerprints == {p.fingerprint for p in longer.policies}
    assert not fingerprints & set(policies["fingerprint"])
    assert len(longer.records) == len(df) and len(episodes.read()) == stored + len(policies)
