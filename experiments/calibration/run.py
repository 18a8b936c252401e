"""Calibration: how well achieved return tracks the target, across envs and skill mixes.

For each dataset (CartPole, Pendulum and Hopper at several behaviour mixes) and each training seed,
a DT is trained and rolled out on a grid of targets from the data's 5th to 95th return percentile
plus OOD targets beyond the data's best; every seed meets the same env seeds. Reported per dataset,
mean ± 95% CI over seeds: normalized MAE (in-distribution), Spearman ρ and slope of achieved on
target, the best mean return reached vs the data's best, and where achieved return saturates.

    python experiments/calibration/run.py             # see config.yaml for datasets, seeds and budgets
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (ci95, ensure_hopper_ppo, fmt, hydra_entry, machine, plain, resolve_behavior, train_kwargs,  # noqa: E402
                    results_dir, write_results)

import dtcond  # noqa: E402
from dtcond.cli import _components, conf_dir  # noqa: E402
from dtcond.data import datasets_root, load  # noqa: E402
from dtcond.errors import DtcondError  # noqa: E402
from dtcond.report import calibration_metrics  # noqa: E402
from dtcond.targets import grid, normalized  # noqa: E402


def make_dataset(name: str, spec, cfg) -> str:
    env = OmegaConf.load(conf_dir() / "env" / f"{spec.env}.yaml")
    dataset_id = f"dtcond/calibration/{name}-v0"
    if (datasets_root() / dataset_id).exists():
        return dataset_id
    items = plain(spec.behavior) if spec.behavior is not None else plain(env.behavior)
    ppo_dir = ensure_hopper_ppo(cfg.hopper_ppo_dir, int(cfg.hopper_ppo_budget)) if any(
        str(i["policy"]).startswith("ppo:") for i in items) else None
    summary = dtcond.collect(env.id, _components(OmegaConf.create(resolve_behavior(items, ppo_dir))), int(spec.episodes),
                             dataset_id, seed=0, progress=False)
    print(summary.format())
    return dataset_id


def main(cfg) -> None:
    start = time.perf_counter()
    names = list(cfg.only) if cfg.only else list(cfg.datasets)
    unknown = set(names) - set(cfg.datasets)
    if unknown:
        raise DtcondError(f"unknown dataset(s) {sorted(unknown)}; choose from {list(cfg.datasets)}")
    work = Path(cfg.work_dir).expanduser().resolve()
    rows, curves = [], []
    for name in names:
        dataset_id = make_dataset(name, cfg.datasets[name], cfg)
        stats = load(dataset_id).stats
        returns = np.asarray(stats.episode_returns, dtype=float)
        targets = grid(stats, n=int(cfg.grid.n), low=float(cfg.grid.low), high=float(cfg.grid.high),
                       ood_scales=list(cfg.grid.ood_scales)) + [normalized(float(x)) for x in cfg.normalized_ood]
        for seed in cfg.seeds:
            t0 = time.perf_counter()
            run = dtcond.train(dataset_id, work / name / f"seed{seed}", seed=int(seed), **train_kwargs(cfg))
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            recs = pd.DataFrame(dtcond.evaluate(dtcond.load_policy(run.bundle), targets, episodes=int(cfg.eval_episodes),
                                                seed=int(cfg.eval_seed), results=work / "results.jsonl", run_id=f"{name}_seed{seed}"))
            m = calibration_metrics(recs, returns)
            ind = m["in_distribution"] or {}
            rows.append({"dataset": name, "seed": int(seed), "normalized_mae": ind.get("normalized_mae"), "spearman": ind.get("spearman"),
                         "slope": ind.get("slope"), "best_mean_return": m.get("best_mean_return"), "data_best": float(returns.max()),
                         "data_p95": float(np.quantile(returns, 0.95)), "saturation_target": m.get("saturation_target"),
                         "ood_minus_best_in_distribution": m.get("ood_minus_best_in_distribution"),
                         "train_s": train_s, "eval_s": time.perf_counter() - t0})
            print(f"  {name} seed {seed}: MAE {rows[-1]['normalized_mae']:.3f}, ρ {rows[-1]['spearman']:.2f}, "
                  f"best {rows[-1]['best_mean_return']:.1f} (data best {returns.max():.1f}); train {train_s:.0f}s")
            per_target = recs.groupby(["target_spec", "target", "ood"], as_index=False)["episode_return"].mean()
            curves.append(per_target.assign(dataset=name, seed=int(seed), data_min=float(returns.min()), data_max=float(returns.max())))
    per_seed = pd.DataFrame(rows)
    curves = pd.concat(curves, ignore_index=True)
    summary = summarize(per_seed)
    png = plot(curves, results_dir(cfg, HERE) / "calibration.png")
    md = ["# Calibration: achieved vs target return", "",
          f"DT (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}), {cfg.train.steps} steps per run; "
          f"training seeds {list(cfg.seeds)}; targets: {cfg.grid.n} evenly spaced from the data's p{cfg.grid.low * 100:g} to "
          f"p{cfg.grid.high * 100:g} return, then x{list(cfg.grid.ood_scales)} and n{list(cfg.normalized_ood)} (OOD); "
          f"{cfg.eval_episodes} episodes per target on env seeds from {cfg.eval_seed}. Means ± 95% CI over seeds. "
          f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training and episodes).", "",
          f"![calibration]({png.name})", "", summary_markdown(summary), ""]
    curves_csv = results_dir(cfg, HERE) / "curves.csv"
    curves.round(3).to_csv(curves_csv, index=False)
    write_results(results_dir(cfg, HERE), "\n".join(md), {"per_seed": rows, "summary": summary.to_dict(orient="records")}, per_seed)
    print("\n".join(md))


def summarize(per_seed: pd.DataFrame) -> pd.DataFrame:
    out = []
    for name, part in per_seed.groupby("dataset", sort=False):
        row = {"dataset": name, "seeds": len(part), "data_p95": part["data_p95"].iloc[0], "data_best": part["data_best"].iloc[0]}
        for col in ("normalized_mae", "spearman", "slope", "best_mean_return", "saturation_target", "ood_minus_best_in_distribution", "train_s"):
            vals = part[col].astype(float)
            row[col], row[f"{col}_ci95"] = float(vals.mean()), ci95(vals)
        out.append(row)
    return pd.DataFrame(out)


def summary_markdown(s: pd.DataFrame) -> str:
    lines = ["| dataset | seeds | normalized MAE | Spearman ρ | slope | best mean return | data p95 / best | saturates from target | OOD − best in-dist. | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in s.iterrows():
        lines.append(f"| {r['dataset']} | {r['seeds']} | {fmt(r['normalized_mae'], r['normalized_mae_ci95'], 3)} "
                     f"| {fmt(r['spearman'], r['spearman_ci95'], 2)} | {fmt(r['slope'], r['slope_ci95'], 2)} "
                     f"| {fmt(r['best_mean_return'], r['best_mean_return_ci95'])} | {r['data_p95']:.1f} / {r['data_best']:.1f} "
                     f"| {fmt(r['saturation_target'], r['saturation_target_ci95'])} "
                     f"| {fmt(r['ood_minus_best_in_distribution'], r['ood_minus_best_in_distribution_ci95'])} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dtcond.fileio import save_figure

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
    hydra_entry(HERE, main)
