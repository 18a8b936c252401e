"""Calibration: how well achieved return tracks the target, across envs and skill mixes.

For each dataset (CartPole, Pendulum and Hopper at several behaviour mixes) and each training seed,
a DT is trained and rolled out on a grid of targets from the data's 5th to 95th return percentile
plus OOD targets beyond the data's best; every seed meets the same env seeds. Reported per dataset,
mean ± 95% CI over seeds: normalized MAE and bias (in-distribution), Spearman ρ and slope of
achieved on target, the best mean return reached vs the data's best, where achieved return
saturates, and the OOD gain (asking beyond the data vs at its top in-distribution target).
The training and rollouts are dtcond.pipeline.run_comparison with the DT alone.

    python experiments/calibration/run.py             # see config.yaml for datasets, seeds and budgets
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING

HERE = Path(__file__).resolve().parent

from dtcond.experiment import fmt, fmt_interval, hopper_behavior, hydra_entry, machine, results_dir, write_results  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402

from dtcond.config import (ComparisonConfig, ComparisonEvalConfig, DataConfig, EsperConfig, ModelConfig, OptimConfig,  # noqa: E402
                           TrainerConfig, env_preset, merge)
from dtcond.common.errors import DtcondError  # noqa: E402
from dtcond.pipeline import run_comparison  # noqa: E402
from dtcond.analysis.statistics import ci95, mean_ci  # noqa: E402

@dataclass
class CalibrationDataset:
    """One dataset of the experiment: an env, a behaviour mix, and what differs from the experiment's training."""

    env: str = MISSING  # conf/env/<env>.yaml
    episodes: int = MISSING
    behavior: Optional[List[Any]] = None  # None: the env's own mixture; ppo:<steps> names a Hopper behaviour PPO checkpoint
    dataset: Optional[str] = None  # another entry's name: share its dataset
    heads: Optional[List[str]] = None  # Box actions: the DT heads to train (None: the experiment's)
    seeds: Optional[List[int]] = None  # None: the experiment's
    data: Dict[str, Any] = field(default_factory=dict)  # DataConfig fields over the experiment's
    trainer: Dict[str, Any] = field(default_factory=dict)  # TrainerConfig fields over the experiment's


@dataclass
class RelabelCheckConfig:
    """relabel_check.py: the plain DT against one on ESPER's labels, on these (deterministic) datasets."""

    datasets: List[str] = field(default_factory=lambda: ["cartpole_mixed", "pendulum_mixed"])
    head: str = "bins"  # Box-action datasets: one head only
    esper: EsperConfig = field(default_factory=EsperConfig)


@dataclass
class CalibrationConfig:
    """The calibration experiment: training sections shared by every dataset, each dataset's differences."""

    name: str = "calibration"
    work_dir: str = "outputs/experiments/calibration"
    hopper_ppo_dir: str = "outputs/experiments/hopper_ppo"  # shared with experiments/cost
    hopper_ppo_budget: int = 500_000
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    results_dir: Optional[str] = None  # None: results/ beside this file (committed)
    only: Optional[List[str]] = None  # dataset names to run; None: all
    analyse_only: bool = False  # re-render summary.md's table from results/summary.json (relabel_check.py: relabel_check.md from relabel_check.json); train and roll out nothing
    heads: List[str] = field(default_factory=lambda: ["bins", "mse"])  # Box-action datasets run once per head (Discrete once)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: ComparisonEvalConfig = field(default_factory=ComparisonEvalConfig)
    grid: Dict[str, Any] = field(default_factory=lambda: {"name": "grid"})  # the target sampler (dtcond.targets.grid)
    normalized_ood: List[float] = field(default_factory=list)  # targets n<x> too: x-multiples degenerate when the best return is near 0
    relabel_check: RelabelCheckConfig = field(default_factory=RelabelCheckConfig)
    datasets: Dict[str, CalibrationDataset] = field(default_factory=dict)


METRICS = ("normalized_mae", "normalized_bias", "spearman", "slope", "best_mean_return", "saturation_target", "ood_gain", "train_s")


def is_continuous(spec) -> bool:
    import gymnasium as gym

    env = env_preset(spec.env)
    made = gym.make(env.id, **env.kwargs)
    try:
        return isinstance(made.action_space, gym.spaces.Box)
    finally:
        made.close()


def dataset_config(name: str, entry: CalibrationDataset, cfg: CalibrationConfig, head: str, **fields) -> ComparisonConfig:
    """The comparison for one dataset and action head: DT only, on this experiment's target grid, no roaming scores;
    ``fields`` are ComparisonConfig fields over these."""
    env = asdict(env_preset(entry.env))
    dataset_id = f"dtcond/calibration/{entry.dataset or name}-v0"  # entries may share a dataset
    env["collect_episodes"] = entry.episodes
    env["behavior"] = hopper_behavior(cfg, entry.behavior if entry.behavior is not None else env["behavior"], dataset_id)
    return merge(ComparisonConfig, {
        "env": env, "dataset_id": dataset_id, "work_dir": str(Path(cfg.work_dir) / name / head), "seeds": entry.seeds or cfg.seeds,
        "name": f"{name}_{head}", "model": {**asdict(cfg.model), "action_head": head}, "data": {**asdict(cfg.data), **entry.data},
        "optim": asdict(cfg.optim), "trainer": {**asdict(cfg.trainer), **entry.trainer}, "bc": {"enabled": False}, "rl": {"algo": None},
        "targets": [dict(cfg.grid), *(f"n{float(x):g}" for x in cfg.normalized_ood)], "eval": {**asdict(cfg.eval), "roaming": False},
        "report": False, "progress": False}, fields)


def main(cfg) -> None:
    start = time.perf_counter()
    if cfg.analyse_only:  # the committed per-dataset summary; the page's header and notes are kept
        out = results_dir(cfg, HERE)
        summary = pd.DataFrame(json.loads((out / "summary.json").read_text())["summary"])
        lines = (out / "summary.md").read_text().split("\n")
        first = next(i for i, line in enumerate(lines) if line.startswith("| dataset |"))
        last = next(i for i in range(first, len(lines)) if not lines[i].startswith("|"))
        atomic_write(out / "summary.md", "\n".join([*lines[:first], summary_markdown(summary), *lines[last:]]))
        return
    names = list(cfg.only) if cfg.only else list(cfg.datasets)
    unknown = set(names) - set(cfg.datasets)
    if unknown:
        raise DtcondError(f"unknown dataset(s) {sorted(unknown)}; choose from {list(cfg.datasets)}")
    rows, curves = [], []
    for name, head in [(n, h) for n in names for h in (list(cfg.datasets[n].heads or cfg.heads) if is_continuous(cfg.datasets[n]) else ["–"])]:
        result = run_comparison(dataset_config(name, cfg.datasets[name], cfg, "bins" if head == "–" else head))
        returns = np.asarray(result.records.loc[result.records["policy_kind"] == "data", "episode_return"], dtype=float)
        for policy in result.policies:
            m = result.metrics[policy.fingerprint]
            ind = m["in_distribution"] or {}
            rows.append({"dataset": name, "head": head, "seed": policy.seed, "normalized_mae": ind.get("normalized_mae"),
                         "normalized_bias": ind.get("normalized_bias"), "spearman": ind.get("spearman"), "slope": ind.get("slope"),
                         "best_mean_return": m.get("best_mean_return"), "data_best": float(returns.max()),
                         "data_p95": float(np.quantile(returns, 0.95)), "saturation_target": m.get("saturation_target"),
                         "ood_gain": m.get("ood_gain"), "train_s": policy.train_seconds, "budget": budget(cfg, cfg.datasets[name])})
            print(f"  {name} ({head} head) seed {policy.seed}: normalized MAE {rows[-1]['normalized_mae']:.3f}, ρ {rows[-1]['spearman']:.2f}, "
                  f"best {rows[-1]['best_mean_return']:.1f} (data best {returns.max():.1f})")
        dt = result.records[result.records["policy_kind"] == "dt"]
        per_target = dt.groupby(["train_seed", "target_spec", "target", "ood"], as_index=False)["episode_return"].mean()
        curves.append(per_target.rename(columns={"train_seed": "seed"}).assign(
            dataset=name if head == "–" else f"{name} ({head})", head=head, data_min=float(returns.min()), data_max=float(returns.max())))
    per_seed = pd.DataFrame(rows)
    curves = pd.concat(curves, ignore_index=True)
    summary = summarize(per_seed)
    png = plot(curves, results_dir(cfg, HERE) / "calibration.png")
    md = ["# Calibration: achieved vs target return", "",
          f"DT (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}), {cfg.trainer.max_steps} steps x batch {cfg.data.batch_size} per run unless the table says otherwise; "
          f"training seeds {list(cfg.seeds)}; targets: {grid_description(cfg.grid)}, then n{list(cfg.normalized_ood)} (OOD); "
          f"{cfg.eval.episodes} episodes per target on env seeds from {cfg.eval.seed}. Means ± 95% CI over seeds. "
          f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training and episodes).", "",
          f"![calibration]({png.name})", "", summary_markdown(summary), "",
          "Normalized MAE and bias: mean over episodes at in-distribution targets of |achieved − target| and of achieved − target, "
          "divided by the data's return range. OOD gain: mean achieved at the targets above the data's best minus mean achieved "
          "at the highest in-distribution target, paired by env seed (dtcond.analysis.statistics.calibration_metrics). Train s: training wall time, "
          "summed over the calls that trained each run (recorded in its run folder; a run trained before that record existed "
          "reports only the second of finding it done).", ""]
    curves_csv = results_dir(cfg, HERE) / "curves.csv"
    curves.round(3).to_csv(curves_csv, index=False)
    write_results(results_dir(cfg, HERE), "\n".join(md), {"per_seed": rows, "summary": summary.to_dict(orient="records")}, per_seed)
    print("\n".join(md))


def grid_description(grid: dict) -> str:
    """The grid sampler of config.yaml in words."""
    return (f"{grid['n']} evenly spaced from the data's p{grid['low_quantile'] * 100:g} to p{grid['high_quantile'] * 100:g} "
            f"return, then x{list(grid['ood_scales'])}")


def budget(cfg: CalibrationConfig, entry: CalibrationDataset) -> str:
    """Training steps x batch size of one dataset's runs (a dataset entry's ``trainer``/``data`` override the experiment's)."""
    return f"{int(entry.trainer.get('max_steps', cfg.trainer.max_steps))} x {int(entry.data.get('batch_size', cfg.data.batch_size))}"


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (name, head), part in per_seed.groupby(["dataset", "head"], sort=False):
        row = {"dataset": name, "head": head, "budget": part["budget"].iloc[0], "seeds": len(part), "data_p95": part["data_p95"].iloc[0], "data_best": part["data_best"].iloc[0]}
        for col in METRICS:
            row[col], row[f"{col}_ci95"] = mean_ci(part[col].astype(float))
        out.append(row)
    return pd.DataFrame(out)


def summary_markdown(s: pd.DataFrame) -> str:
    lines = ["| dataset | Box head | steps x batch | seeds | normalized MAE | normalized bias | Spearman ρ | slope | best mean return | data p95 / best "
             "| saturates from target | OOD gain | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {r['dataset']} | {r['head']} | {r['budget']} | {r['seeds']} | {fmt(r['normalized_mae'], r['normalized_mae_ci95'], 3)} "
                     f"| {fmt(r['normalized_bias'], r['normalized_bias_ci95'], 3)} "
                     f"| {fmt_interval('spearman', r['spearman'], r['spearman_ci95'], 2)} | {fmt(r['slope'], r['slope_ci95'], 2)} "
                     f"| {fmt(r['best_mean_return'], r['best_mean_return_ci95'])} | {r['data_p95']:.1f} / {r['data_best']:.1f} "
                     f"| {fmt(r['saturation_target'], r['saturation_target_ci95'])} "
                     f"| {fmt(r['ood_gain'], r['ood_gain_ci95'])} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dtcond.common.fileio import save_figure

    names = list(dict.fromkeys(curves["dataset"]))
    cols = min(3, len(names))
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(4.5 * cols, 3.8 * ((len(names) + cols - 1) // cols)), squeeze=False)
    for ax, name in zip(axes.flat, names):
        part = curves[curves["dataset"] == name]
        lo, hi = part["data_min"].iloc[0], part["data_max"].iloc[0]
        agg = part.groupby("target").agg(mean=("episode_return", "mean"), ood=("ood", "first"),
                                         ci=("episode_return", lambda v: ci95(v))).reset_index()
        ax.axvspan(hi, max(hi, agg["target"].max()) + 1e-9, color="0.92", zorder=0, label="beyond the data (OOD)")
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="achieved = target")
        ax.axhline(hi, color="0.5", lw=0.8, ls=":", label="data best")
        for seed, s in part.groupby("seed"):
            s = s.sort_values("target")
            ax.plot(s["target"], s["episode_return"], "-", color="C0", alpha=0.25, lw=0.8)
        ax.errorbar(agg["target"], agg["mean"], yerr=agg["ci"].fillna(0), fmt="o-", color="C0", capsize=2, ms=3, label="DT, mean over seeds")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("target return")
        ax.set_ylabel("achieved return")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    return save_figure(fig, path)


if __name__ == "__main__":
    hydra_entry(HERE, main, CalibrationConfig)
