"""Does the banded attention pattern (needed for an exact key/value cache) cost quality?

For each env and seed, two models of the same size are trained on the same data for the same steps:

- ``windowed``: the original DT — trained on K-step windows, evaluated by recomputing the last K
  steps every step (``decode="window"``);
- ``banded``: dtcond's default — trained on 2K-step segments with banded attention, evaluated
  step by step from the key/value cache (``decode="cached"``).

Both are evaluated on the same target grid with the same episode seeds. Run from the repo root:

    python experiments/banded_vs_windowed/run.py                 # CartPole + Pendulum, seeds 0 1 2
    python experiments/banded_vs_windowed/run.py --seeds 0 --steps 500
    python experiments/banded_vs_windowed/run.py --from-summary   # re-render summary.md from results/summary.json

Datasets are made with `dtcond collect` defaults if missing (under $MINARI_DATASETS_PATH).
Writes results/<env>.jsonl, results/summary.md and results/summary.json beside this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import dtcond
from dtcond.behavior.collection import ensure_dataset
from dtcond.config import env_preset
from dtcond.experiment import fmt, fmt_bounded
from dtcond.analysis.statistics import bounded_interval, calibration_metrics, mean_ci, t_halfwidth, verdict
from dtcond.targets import grid

HERE = Path(__file__).resolve().parent
METRICS = ("normalized_mae", "spearman", "slope", "return_at_top_target")  # val loss and timings: per seed (a reuse has neither)
ENVS = {"cartpole": "dtcond/cartpole/mixture-v0", "pendulum": "dtcond/pendulum/mixture-v0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=list(ENVS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--work", default="outputs/experiments/banded_vs_windowed")
    ap.add_argument("--finished-only", action="store_true",
                    help="summarize the (env, seed) pairs whose two runs have finished; train nothing new")
    ap.add_argument("--from-summary", action="store_true",
                    help="re-render summary.md from the per-seed rows in results/summary.json; train and roll out nothing")
    args = ap.parse_args()
    if args.from_summary:
        rows = json.loads((HERE / "results" / "summary.json").read_text())
        (HERE / "results" / "summary.md").write_text(summary_markdown(pd.DataFrame(rows), args.steps, args.episodes))
        return
    # The CPU preset (ModelConfig, OptimConfig, DataConfig and TrainerConfig defaults: K=20, 3 layers, width 64, lr 1e-3,
    # batches of 64), with no dropout and a constant lr as its committed results were made; the two variants differ
    # only in segment length and decoding.
    trainer = dict(max_steps=args.steps, enable_progress_bar=False)
    (HERE / "results").mkdir(exist_ok=True)
    rows = []
    for env in args.envs:
        dataset_id = ENVS[env]
        ensure_dataset(env_preset(env), dataset_id)  # `dtcond collect env=<env>`'s dataset
        results = HERE / "results" / f"{env}.jsonl"
        for seed in args.seeds:
            if args.finished_only and not all((Path(args.work) / env / f"{v}_seed{seed}" / "policy" / "card.json").exists()
                                              for v in ("windowed", "banded")):
                continue
            for variant, segment, decode in (("windowed", 20, "window"), ("banded", 40, "cached")):
                out = Path(args.work) / env / f"{variant}_seed{seed}"
                start = time.perf_counter()
                run = dtcond.train(dataset_id, out, data=dict(segment_len=segment), trainer=trainer, seed=seed,
                                   model=dict(dropout=0.0), optim=dict(decay="none"))
                train_s = time.perf_counter() - start
                policy = dtcond.load_policy(run.bundle)
                policy.decode = decode
                start = time.perf_counter()
                recs = dtcond.evaluate(policy, grid(policy.stats, ood_scales=()), episodes=args.episodes, seed=100 + seed,
                                       results=results, run_id=f"{variant}_seed{seed}")
                eval_s = time.perf_counter() - start
                df = pd.DataFrame(recs)
                m = calibration_metrics(df, np.asarray(policy.stats.episode_returns))["in_distribution"]
                top = df[df["target"] == df["target"].max()]["episode_return"]
                rows.append({"env": env, "variant": variant, "seed": seed, "val_loss": run.val_loss,
                             "normalized_mae": m["normalized_mae"], "spearman": m["spearman"], "slope": m["slope"],
                             "return_at_top_target": float(top.mean()), "mean_return": m["mean_return"],
                             "train_s": train_s, "eval_s": eval_s})
                print(json.dumps(rows[-1]))
    table = pd.DataFrame(rows)
    (HERE / "results" / "summary.json").write_text(json.dumps(rows, indent=1))
    md = summary_markdown(table, args.steps, args.episodes)
    (HERE / "results" / "summary.md").write_text(md)
    print(md)


def summary_markdown(table: pd.DataFrame, steps: int, episodes: int) -> str:
    """The summary of the per-seed rows: each variant's mean and interval, and banded − windowed paired by seed, at
    95% and with a Bonferroni correction for the number of comparisons (one per env and metric). A bounded metric
    (Spearman ρ) shows its interval intersected with its range (``dtcond.analysis.statistics.bounded_interval``)."""
    m = table.groupby("env").ngroups * len(METRICS)
    level = 1 - 0.05 / m
    md = ["# Banded (cached) vs windowed (recompute) Decision Transformer", "",
          f"Same data, size (K=20, 3 layers, width 64), {steps} steps, lr 1e-3; grid of 7 targets p5..p95, "
          f"{episodes} episodes each; seeds " + "; ".join(f"{e} {sorted(set(table[table['env'] == e]['seed']))}" for e in table["env"].unique())
          + "; 2 CPU cores. Mean and 95% t interval over seeds (none with one seed); Spearman ρ's interval is shown as "
          "[low, high], kept inside [−1, 1]. The last columns are banded − windowed paired by seed: "
          f"{m} comparisons (one per env and metric), each at 95% on its own and, in the Bonferroni column, at "
          f"1 − 0.05/{m}; \"unresolved\": the interval contains 0.", "",
          "| env | metric | windowed (original) | banded + cache (dtcond) | banded − windowed (95%) | verdict | Bonferroni interval "
          "| verdict (Bonferroni) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for env, part in table.groupby("env", sort=False):
        w = part[part["variant"] == "windowed"].set_index("seed")
        b = part[part["variant"] == "banded"].set_index("seed").loc[w.index]
        for metric in METRICS:
            cells = [_level(metric, x[metric].to_numpy(float)) for x in (w, b)]
            diff = (b[metric] - w[metric]).to_numpy(float)
            d, h = mean_ci(diff)
            hb = t_halfwidth(diff, level)
            cells += [fmt(d, h, digits=3), verdict(d, h, "banded higher", "windowed higher"), f"± {hb:.3f}",
                      verdict(d, hb, "banded higher", "windowed higher")]
            md.append(f"| {env} | {metric} | " + " | ".join(cells) + " |")
    md += ["", "Per seed:", "", table.round(3).to_markdown(index=False), ""]
    return "\n".join(md)


def _level(metric: str, values) -> str:
    mean, half = mean_ci(values)
    bounded = bounded_interval(metric, mean, half)
    return fmt_bounded(mean, *bounded, digits=3) if bounded else fmt(mean, half, digits=3)


if __name__ == "__main__":
    main()
