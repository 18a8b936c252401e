"""How much of a deterministic dataset's returns do ESPER's labels keep? (the diagnosis behind relabel_check's Pendulum row)

On a dataset whose env has no randomness after the reset there is no luck for ESPER to remove, so the
ideal label is the return itself. This script learns the labels (``dtcond.esper_labels``, no DT
trained) for a few ``EsperConfig`` variants and seeds and reports how well each episode's first-step
label matches its raw return (R² and Spearman ρ), how well every step's label matches its
return-to-go, and how many clusters the episodes fell into. Means ± 95% t-interval over seeds.

The datasets are calibration/run.py's (made by it; run it first). A rerun reuses the finished rows in
``--work``. Run from the repo root:

    python experiments/calibration/esper_label_quality.py --datasets pendulum_mixed      # the committed result: ~25 min, 1 shared core
    python experiments/calibration/esper_label_quality.py                                # and CartPole (default config only; slower)
    python experiments/calibration/esper_label_quality.py --datasets pendulum_mixed --seeds 0 --variants default
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import fmt, machine  # noqa: E402

import dtcond  # noqa: E402
from dtcond.config import EsperConfig  # noqa: E402
from dtcond.data import datasets_root  # noqa: E402
from dtcond.fileio import atomic_write  # noqa: E402
from dtcond.stats import mean_ci  # noqa: E402

VARIANTS = {  # EsperConfig fields over the defaults
    "default": {},
    "4x return steps, width 64": {"return_steps": 4000, "hidden": 64},
    "16 clusters": {"clusters": 16},
    "action weight 3": {"act_weight": 3.0},
}
METRICS = {"r2_first": "R² first-step label vs return", "spearman_first": "ρ first-step label vs return",
           "r2_all": "R² label vs return-to-go, every step", "clusters_used": "clusters used"}


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - ((y - pred) ** 2).mean() / y.var())


def quality(data, overrides: dict, seed: int) -> dict:
    labels, info = dtcond.esper_labels(data.trajectories, data.stats, EsperConfig(**overrides), seed=seed)
    raw = np.array([t.returns_to_go[0] for t in data.trajectories], dtype=float)
    first = np.array([a[0] for a in labels], dtype=float)
    every_rtg = np.concatenate([t.returns_to_go for t in data.trajectories]).astype(float)
    every_label = np.concatenate(labels).astype(float)
    return {"r2_first": r2(raw, first), "spearman_first": float(spearmanr(first, raw)[0]), "r2_all": r2(every_rtg, every_label),
            "clusters_used": info["clusters_used"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["pendulum_mixed", "cartpole_mixed"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--default-only", nargs="*", default=["cartpole_mixed"],
                    help="datasets that run only the default variant (CartPole's 500-step episodes are slow)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="outputs/experiments/calibration/esper_label_quality.jsonl",
                    help="finished (dataset, variant, seed) rows, reused by a rerun")
    args = ap.parse_args()
    start = time.perf_counter()
    work = Path(args.work)
    done = {}
    if work.is_file():
        for line in work.read_text().splitlines():
            row = json.loads(line)
            done[(row["dataset"], json.dumps(row["overrides"], sort_keys=True), row["seed"])] = row
    work.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        dataset_id = f"dtcond/calibration/{name}-v0"
        if not (datasets_root() / dataset_id).exists():
            sys.exit(f"esper_label_quality: error: no dataset {dataset_id}; make it with "
                     f"python experiments/calibration/run.py 'only=[{name}]' first")
        data = dtcond.load_dataset(dataset_id)
        variants = ["default"] if name in args.default_only else args.variants
        for variant in variants:
            for seed in args.seeds:
                key = (name, json.dumps(VARIANTS[variant], sort_keys=True), seed)
                if key in done:
                    rows.append({**done[key], "variant": variant})
                    continue
                t0 = time.perf_counter()
                rows.append({"dataset": name, "variant": variant, "overrides": VARIANTS[variant], "seed": seed,
                             **quality(data, VARIANTS[variant], seed), "seconds": time.perf_counter() - t0})
                with work.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    lines = ["| dataset | EsperConfig | " + " | ".join(METRICS.values()) + " |", "|---|---|" + "---|" * len(METRICS)]
    summary = []
    for (name, variant), g in table.groupby(["dataset", "variant"], sort=False):
        cells = {k: mean_ci(g[k]) for k in METRICS}
        summary.append({"dataset": name, "variant": variant, "overrides": VARIANTS[variant], "seeds": g["seed"].tolist(),
                        **{k: {"mean": m, "ci95": c} for k, (m, c) in cells.items()}})
        lines.append(f"| {name} | {variant} {VARIANTS[variant] or ''} | "
                     + " | ".join(fmt(m, c, 1 if k == "clusters_used" else 3) for k, (m, c) in cells.items()) + " |")
    out = HERE / "results"
    md = ["# How much of the returns ESPER's labels keep, on deterministic data", "",
          f"Labels from `dtcond.esper_labels` (no DT trained); seeds {args.seeds}; means ± 95% t-interval over seeds. "
          f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun reuses finished rows; one labelling took "
          f"{table['seconds'].min():.0f}-{table['seconds'].max():.0f}s on one thread of a shared core). "
          f"Command: `python experiments/calibration/esper_label_quality.py {' '.join(sys.argv[1:])}`.", "",
          *lines, "", "R² first-step label vs return: 1 − MSE / variance of the raw episode returns, with the label of each episode's "
          "first step as the prediction (1: the labels are the returns; 0: no better than their mean). The envs are "
          "deterministic after the reset, so every point below 1 is information ESPER's labels average away."]
    atomic_write(out / "esper_label_quality.md", "\n".join(md) + "\n")
    atomic_write(out / "esper_label_quality.json", json.dumps({"rows": rows, "summary": summary, "machine": machine()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
