"""The demo end to end at a tiny budget, and its reuse of what a first run made."""

import pytest

from conftest import run_cli
from dtcond.rollout.records import ResultsStore

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, minari_root):
    args = ("demo", "env=cartpole", "model=tiny", "trainer.max_steps=20", "data.steps_per_epoch=10", "env.collect_episodes=12", "eval.episodes=2",
            "targets=[{name: grid, n: 3}, {name: quantilizer, qs: [0.5]}]", "bc.steps=5", "bc.top_fractions=[0.25]", "rl.budget=256",
            "rl.checkpoints=2", "rl.hyperparams={n_envs: 2, n_steps: 64, batch_size: 64, n_epochs: 2}",
            f"work_dir={tmp_path}/demo", "progress=false")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "demo done" in first.stdout and "normalized MAE" in first.stdout
    results = tmp_path / "demo" / "episodes.jsonl"
    rows = ResultsStore(results).read()
    labels = [r["label"] for r in rows]
    assert labels.count("dt") == (3 + 3 + 1) * 2 and labels.count("bc") == 2 and labels.count("pct_bc:0.25") == 2
    assert labels.count("data") == 12 and {"ppo@128", "ppo@256"} <= set(labels)
    assert {r["train_seed"] for r in ResultsStore(tmp_path / "demo" / "report" / "results.jsonl").read() if r["label"] != "data"} == {0}
    for name in ("calibration.png", "comparison.md", "comparison_frontier.png"):
        assert (tmp_path / "demo" / "report" / name).exists()
    # Every policy met the same env seeds.
    seeds = {}
    for r in rows:
        if r["label"] != "data":
            seeds.setdefault((r["label"], r["target_spec"]), set()).add(r["env_seed"])
    assert len({frozenset(s) for s in seeds.values()}) == 1

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "exists, reused" in second.stdout and "20 steps" in second.stdout
    assert len(ResultsStore(results).read()) == len(rows)  # nothing run twice


def test_the_default_demo_sets_conditioning_beside_kl_regularized_ppo_on_a_gameable_reward(tmp_path, minari_root):
    """`dtcond demo` with no env is TomatoGarden: DT targets, a quantilizer, %BC, PPO and PPO-KL at three β,
    and a summary of observed vs true return and KL for each (tiny budgets here)."""
    result = run_cli("demo", "model=tiny", "trainer.max_steps=20", "data.steps_per_epoch=10", "env.collect_episodes=12", "eval.episodes=2",
                     "bc.steps=5", "rl.budget=256", "rl.bc_init_steps=20",
                     # the TomatoGarden demo sets n_envs, n_steps and batch_size: a key it does not set is added with +
                     "rl.hyperparams={n_envs: 2, n_steps: 64, batch_size: 64}", "+rl.hyperparams.n_epochs=2", f"work_dir={tmp_path}/demo",
                     "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "observed return" in line)
    assert "true return" in header and "KL(p_π‖p_data)" in header and "KL(π‖β̂)" in header and "entropy" in header
    best = next(line for line in result.stdout.splitlines() if "highest true return" in line)
    assert "conditioned (DT, BC, %BC)" in best and "PPO-KL: ppo_kl:" in best and "plain RL: ppo@" in best
    labels = {r["label"] for r in ResultsStore(tmp_path / "demo" / "episodes.jsonl").read()}
    assert {"ppo_kl:1@256", "ppo_kl:10@256", "ppo_kl:100@256", "ppo@256", "pct_bc:0.1"} <= labels
    rows = [r for r in ResultsStore(tmp_path / "demo" / "episodes.jsonl").read() if r["label"].startswith("ppo")]
    assert all(r["true_return"] is not None and r["kl_behavior"] is not None for r in rows)
    # the demo collects its data, so the data's exact likelihood is known: every row has a trajectory KL
    assert all(r["trajectory_kl"] is not None and r["kl_estimator"] == "exact" for r in rows)
    assert (tmp_path / "demo" / "report" / "comparison_frontier.png").exists()
