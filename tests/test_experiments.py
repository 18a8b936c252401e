"""The experiment scripts run end to end (tiny budgets) and write their result files where told."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_luck_experiment_runs_end_to_end(tmp_path, minari_root):
    committed = REPO / "experiments" / "luck" / "results" / "summary.json"
    before = committed.read_bytes() if committed.exists() else None
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "luck" / "run.py"), "seeds=[0,1]", "env.collect_episodes=300", "trainer.max_steps=30",
         "bc.steps=20", "rl.budget=512", "rl.regularized={ppo_kl: [1, 10]}", "rl.bc_init_steps=50", "eval.episodes=8",
         "esper.cluster_steps=100", "esper.return_steps=100", "finetune.betas=[1]", "finetune.thresholds=[0.5]", "finetune.updates=4",
         "finetune.episodes=8", "finetune.check_every=2", "finetune.check_episodes=8", "finetune.prior_pool=200",
         f"work_dir={tmp_path / 'work'}", f"results_dir={tmp_path / 'results'}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    rows = {(r["label"], r["target_spec"]): r for r in summary["rows"]}
    assert {"data", "dt", "dt:esper", "pct_bc:0.1"} <= {label for label, _ in rows}
    # the relabelled DT at every target the plain one met, each resolved against its own returns
    assert {r["target_spec"] for r in summary["relabelled"]} == {spec for label, spec in rows if label == "dt"}
    assert any(r["policy_kind"] == "ppo" and r["train_step"] > 0 for r in summary["rows"])
    assert all(r["seeds"] == 2 for r in summary["rows"] if r["policy_kind"] != "data")
    # one PPO rollout (2048 steps) is the least a run takes, whatever the budget
    assert {r["label"].split("@")[0] for r in summary["rows"] if r["policy_kind"] == "ppo_kl"} == {"ppo_kl:1", "ppo_kl:10"}
    # plain and relabelled DT each against PPO-KL and RL fine-tuning at every budget of the config, the Bonferroni count over all of them
    budgets = [None if b is None else float(b) for b in (0.25, 0.5, 1, 2, None)]
    assert [(e["reference"]["family"], e["other"]["family"], e["budget"]) for e in summary["budgets"]] == [
        (f, o, b) for f in ("conditioning", "dt:esper") for o in ("ppo_kl", "rlft_kl", "rlft_stop") for b in budgets]
    assert {e["comparisons"] for e in summary["budgets"]} == {30} and all(e["seeds"] == [0, 1] for e in summary["budgets"])
    # the fine-tuned policy's exact distance to its posterior splits into the part a policy can close and the luck floor
    [floor] = summary["posterior"]
    assert floor["beta"] == 1.0 and floor["seeds"] == [0, 1] and floor["floor"] > 0
    for s in range(2):
        assert abs(floor["kl_to_posterior_per_seed"][s] - floor["kl_to_soft_optimum_per_seed"][s] - floor["floor_per_seed"][s]) < 1e-6
    assert floor["sampled_kl_to_posterior"] is not None
    for e in summary["budgets"]:  # each side's reported value is the mean of its per-seed held-out values
        for side in ("reference", "other"):
            per = [v for v in e[side]["per_seed"] if v is not None and v == v]
            assert e[side]["reached"] == len(per) and (not per or abs(e[side]["true_return"] - sum(per) / len(per)) < 1e-9)
    data = rows[("data", "none")]
    # Over the dataset's episodes luck averages out: observed and expected returns agree.
    assert abs(data["episode_return"] - data["true_return"]) < 0.5
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "expected return (luck removed)" in text and "quantilizer:0.1" in text and "KL(π‖β̂)" in text
    assert "At fixed divergence budgets" in text and "action entropy" in text and "Relabelled with ESPER" in text
    assert "the luck floor" in text
    assert committed.read_bytes() == before if committed.exists() else before is None  # the committed results untouched


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_experiment_typo_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "goodhart" / "run.py"), "seedz=[0]", f"work_dir={tmp_path / 'work'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["goodhart: error: unknown config key seedz; GoodhartConfig takes: env, dataset_id, "
                                               "data_seed, work_dir, seeds, model, data, optim, trainer, checkpoint_every, bc, relabel, "
                                               "esper, rl, finetune, targets, eval, oracles, report, name, fresh, progress, datasets_path, "
                                               "results_dir, budgets, prior_budgets, analyse_only"]
    assert not (tmp_path / "work").exists()  # refused before any work
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "goodhart" / "run.py"), "rl.regularized={ppo_kl: [0]}", f"work_dir={tmp_path / 'work'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["goodhart: error: rl.regularized.ppo_kl: ppo_kl: kl_coef must be a finite number > 0, got 0.0"]
    assert not (tmp_path / "work").exists()  # a value out of range too, before Hydra makes a run dir


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_an_unknown_testbed_is_one_line_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "oracles" / "run.py"), "testbeds=[gamble,hazrd_grid]",
                          f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
                         cwd=tmp_path, env={**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["oracles: error: unknown env preset 'hazrd_grid'; choose from cartpole, gamble, hazard_grid, "
                                               "hopper_cost, inverted_pendulum, pendulum, tomato"]
    assert not (tmp_path / "minari").exists() and not (tmp_path / "results").exists()  # gamble was not collected first


def test_rerun_check_counts_means_inside_the_committed_intervals_and_changed_verdicts(tmp_path):
    committed = {"rows": [{"label": "dt", "target_spec": "q0.5", "true_return": 10.0, "true_return_ci95": 2.0},
                          {"label": "ppo", "target_spec": "none", "true_return": 5.0, "true_return_ci95": 1.0}],
                 "budgets": [{"budget": 5.0, "difference": 3.0, "difference_ci95": 1.0, "verdict": "conditioning higher"}]}
    rerun = {"rows": [{"label": "ppo", "target_spec": "none", "true_return": 7.5, "true_return_ci95": 1.0},  # rows matched by
                      {"label": "dt", "target_spec": "q0.5", "true_return": 10.0, "true_return_ci95": 1.0}],    # what they are about
             "budgets": [{"budget": 5.0, "difference": 2.5, "difference_ci95": 3.0, "verdict": "unresolved"}]}
    for name, payload in (("committed", committed), ("rerun", rerun)):
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    script = str(REPO / "experiments" / "rerun_check.py")
    out = subprocess.run([sys.executable, script, str(tmp_path / "committed.json"), str(tmp_path / "rerun.json")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 means with a committed 95% interval: 1 the same to rounding, 2 inside the committed interval, 1 outside" in out.stdout
    assert "outside: /rows[ppo none] true_return: committed 5 [4, 6], rerun 7.5" in out.stdout
    assert "1 verdicts: 0 the same, 1 changed" in out.stdout and "committed 'conditioning higher', rerun 'unresolved'" in out.stdout
    missing = subprocess.run([sys.executable, script, str(tmp_path / "nope.json"), str(tmp_path / "rerun.json")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "nope.json" in missing.stderr


@pytest.mark.slow
def test_cost_tradeoff_experiment_runs_end_to_end(tmp_path, minari_root):
    committed = REPO / "experiments" / "cost_tradeoff" / "results" / "summary.json"
    before = committed.read_bytes() if committed.exists() else None
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "cost_tradeoff" / "run.py"), "seeds=[0,1]", "env.collect_episodes=300", "trainer.max_steps=30",
         "rl.budget=1024", "rl.bc_init_steps=50", "eval.episodes=4", "cost_targets=[0,4,16,36]",
         "return_only_targets=[5,8]", f"work_dir={tmp_path / 'work'}", f"results_dir={tmp_path / 'results'}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert set(summary["tracking"]) == {"dt_cost", "dt_cost_high", "dt_cost_quantilizer", "ppo_lag"}
    assert all(t["seeds"] == 2 and t["targets"] == 4 for t in summary["tracking"].values())
    assert [r["cost_target"] for r in summary["dt_cost"]] == [0, 4, 16, 36] and [r["cost_limit"] for r in summary["ppo_lag"]] == [0, 4, 16, 36]
    for t in summary["tracking"].values():  # bounded quantities: intervals inside their range, around the mean
        for col, (low, high) in (("spearman", (-1, 1)), ("satisfied", (0, 1))):
            assert low <= t[f"{col}_lo"] <= t[col] <= t[f"{col}_hi"] <= high, (col, t)
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "Spearman ρ(requested, achieved cost)" in text and (tmp_path / "results" / "cost_tracking.png").stat().st_size > 10_000
    assert committed.read_bytes() == before if committed.exists() else before is None  # the committed results untouched


@pytest.mark.slow
def test_goodhart_experiment_writes_its_frontier_on_the_exact_axis(tmp_path, minari_root):
    committed = REPO / "experiments" / "goodhart" / "results" / "frontier.json"
    before = committed.read_bytes() if committed.exists() else None
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "goodhart" / "run.py"), "seeds=[0,1]", "env.collect_episodes=60", "trainer.max_steps=20",
         "bc.steps=10", "rl.budget=512", "rl.regularized={ppo_kl: [10], ppo_kl_bc: [10], ppo_om: [3]}",
         "rl.bc_init_steps=20", "eval.episodes=4", "budgets=[20,null]", "oracles.pool=60", "oracles.draws=20", "finetune.betas=[10]",
         "finetune.thresholds=[1]", "finetune.updates=2", "finetune.episodes=4", "finetune.check_every=1", "finetune.check_episodes=4",
         "finetune.prior_pool=20", "prior_budgets=[5,null]", f"work_dir={tmp_path / 'work'}", f"results_dir={tmp_path / 'results'}",
         f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    frontier = json.loads((tmp_path / "results" / "frontier.json").read_text())
    families = {r["family"] for r in frontier["rows"]}
    assert {"data", "behavior", "dt", "bc", "pct_bc", "ppo", "ppo_kl", "ppo_kl_bc", "ppo_om", "rlft_kl", "rlft_stop", "oracle_quantilizer",
            "oracle_plan_quantilizer", "oracle_best_of_n", "oracle_posterior"} <= families
    # the DT against each RL family (the fine-tuned transformer first, then SB3's) and BC at each budget, paired over the 2 seeds
    assert [(e["budget"], e["other"]["family"]) for e in frontier["budgets"]] == [
        (b, f) for f in ("rlft_kl", "rlft_stop", "ppo_kl", "ppo_kl_bc", "ppo_om", "bc") for b in (20.0, None)]
    assert all(e["comparisons"] == 12 and e["seeds"] == [0, 1] and e["reference"]["family"] == "conditioning" for e in frontier["budgets"])
    # the fine-tuned β row carries its distance to the posterior it promises; Gao's comparison is on the KL from the prior
    beta = next(r for r in frontier["rows"] if r["family"] == "rlft_kl" and r["param"] == 10)
    assert beta["kl_to_posterior"] is not None and beta["kl_to_posterior_ci95"] is not None and beta["log_ratio_prior"] is not None
    assert [p["beta"] for p in frontier["posterior"]] == [10.0]
    assert [(e["budget"], e["reference"]["family"], e["other"]["family"]) for e in frontier["prior_budgets"]] == [
        (5.0, "rlft_kl", "rlft_stop"), (None, "rlft_kl", "rlft_stop")]
    assert set(frontier["train_seconds"]) >= {"dt", "bc", "rlft_kl:10"} and all(len(v) == 2 for v in frontier["train_seconds"].values())
    unlimited = [e for e in frontier["budgets"] if e["budget"] is None]
    assert all(e["reference"]["reached"] == 2 and e["pairs"] == 2 for e in unlimited)  # no budget: every seed has a choice
    # every row has a trajectory KL from the exact likelihood, with its interval over the 2 seeds
    assert all(r["trajectory_kl"] is not None for r in frontier["rows"])
    assert all(r["seeds"] == 2 and r["trajectory_kl_lo"] is not None for r in frontier["rows"] if r["family"] not in ("data", "behavior"))
    assert {round(r["q"], 2) for r in frontier["oracle_kl_check"]} == {0.5, 0.25, 0.1}
    assert {r["dt"] for r in frontier["quantilizer_check"]} >= {"quantilizer:0.25", "q0.75"}
    assert (tmp_path / "results" / "frontier.png").exists() and (tmp_path / "results" / "questions.png").exists()
    assert "| all families | " in (tmp_path / "results" / "summary.md").read_text()
    assert committed.read_bytes() == before if committed.exists() else before is None


@pytest.mark.slow
def test_oracles_experiment_reports_the_oracles_and_the_cost_bound(tmp_path, minari_root):
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "oracles" / "run.py"), "testbeds=[gamble,hazard_grid]", "seeds=[0,1]", "oracles.pool=80",
         "oracles.draws=30", f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "results" / "summary.md").read_text()
    assert "## dtcond/Gamble-v0" in text and "## dtcond/HazardGrid-v0" in text
    assert "plan_quantilizer:0.1" in text and "posterior:0.3" in text
    assert "Taylor's bound" in text and "| quantilizer:0.1 |" in text  # HazardGrid reports cost, so its bound is checked


SCHEMAS = {"goodhart": "GoodhartConfig", "luck": "LuckConfig", "cost": "CostConfig", "cost_tradeoff": "CostTradeoffConfig",
           "oracles": "OraclesConfig", "calibration": "CalibrationConfig", "rlft": "RlftConfig"}


def compose_experiment(name: str):
    """``experiments/<name>/config.yaml`` composed under the schema its run.py defines, as that dataclass."""
    import importlib.util

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    from dtcond.config import conf_dir, from_hydra
    from dtcond.experiment import SCHEMA

    folder = REPO / "experiments" / name
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", folder / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through the module
    sys.path.insert(0, str(folder))  # run.py may import a sibling script, as it does when run
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    schema = getattr(module, SCHEMAS[name])
    ConfigStore.instance().store(name=SCHEMA, node=schema)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base=None):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{conf_dir()}]"])
    GlobalHydra.instance().clear()
    return from_hydra(cfg), module


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_experiment_config_composes_into_its_typed_schema(name):
    """Each config.yaml composes under its script's dataclass, and every value it writes reaches the typed config."""
    import dataclasses

    import yaml

    cfg, _ = compose_experiment(name)
    assert type(cfg).__name__ == SCHEMAS[name]
    written = yaml.safe_load((REPO / "experiments" / name / "config.yaml").read_text())

    def check(node, value, path):
        if dataclasses.is_dataclass(node) and isinstance(value, dict):
            for key, v in value.items():
                check(getattr(node, key), v, f"{path}.{key}")
        elif isinstance(node, dict) and isinstance(value, dict):
            for key, v in value.items():
                check(node[key], v, f"{path}[{key}]")
        elif not (isinstance(value, str) and "${" in value):  # interpolations resolve to another key's value
            plain = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in node] if isinstance(node, list) else node
            assert plain == value, f"{path}: the config says {value!r}, the typed config has {plain!r}"

    for key, value in written.items():
        if key not in ("defaults", "hydra"):
            check(getattr(cfg, key), value, key)


def test_the_cost_tradeoff_experiment_trains_through_the_pipeline():
    """Its two comparisons train the cost-conditioned DT with PPO-Lagrangian at each cost limit, and the return-only DT,
    from the config's sections: nothing else (no BC, no plain PPO)."""
    from dtcond.pipeline import regularized_runs, train_configs

    cfg, _ = compose_experiment("cost_tradeoff")
    cost, return_only = cfg.comparisons().values()
    for comparison, conditioned in ((cost, True), (return_only, False)):
        runs = train_configs(comparison, seed=3)
        assert list(runs) == ["dt"] and comparison.rl.algo is None
        dt = runs["dt"]
        assert (dt.model.cost_conditioned, dt.seed, dt.trainer.max_steps, dt.checkpoint_every, dt.model.context_len) == (conditioned, 3, 1500, 250, 10)
    assert [(f.kind, p) for f, p in regularized_runs(cost)] == [("ppo_lag", c) for c in (0, 1, 4, 9, 16, 25, 36)]
    assert cost.rl.options == {"ppo_lag": {"lambda_lr": 0.001}} and (cost.rl.budget, cost.rl.bc_init_steps) == (100_000, 2000)
    assert regularized_runs(return_only) == [] and return_only.targets == ["5", "5.5", "6", "6.5", "7", "7.5", "8"]
    assert cost.targets[:2] == ["5,cost=0", "5,cost=1"] and "quantilizer:0.25,cost<=36" in cost.targets


def test_an_experiment_trains_what_its_config_says():
    """The Goodhart config reaches each training run unchanged: no translator sits between YAML and train()."""
    from dtcond.pipeline import train_configs

    cfg, _ = compose_experiment("goodhart")
    runs = train_configs(cfg, seed=3)
    assert list(runs) == ["dt", "bc", "pct_bc0.1", "pct_bc0.25"]
    assert {name: (c.trainer.max_steps, c.top_fraction, c.condition_on_return) for name, c in runs.items()} == {
        "dt": (3000, None, True), "bc": (3000, None, False), "pct_bc0.1": (3000, 0.1, False), "pct_bc0.25": (3000, 0.25, False)}
    assert all(c.seed == 3 and c.model.context_len == 20 and c.data.val_windows == 256 and c.trainer.logger is False
               and c.dataset.id == "dtcond/tomato/mixture-v0" for c in runs.values())
    assert cfg.rl.runs[:2] == [("ppo_kl", 0.3), ("ppo_kl", 1.0)] and len(cfg.rl.runs) == 13
