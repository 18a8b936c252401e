"""How much of the returns do ESPER's labels keep, and how much of the luck do they remove? (behind relabel_check's Pendulum row)

On a dataset whose env has no randomness after the reset (the calibration datasets) there is no luck
to remove, so the ideal label is the return itself. On Gamble (the luck experiment's dataset) the
ideal label is the return with the luck taken out: the sum of each choice's expected reward. This
script learns the labels (``dtcond.esper_labels``, no DT trained) for a few ``EsperConfig`` variants
and seeds and reports, per dataset, how well each episode's first-step label matches its raw return
(R² and Spearman ρ) or, on Gamble, its luck-free return (R²) and how much it still follows the luck
(correlation of the label's error with the luck). Means ± 95% t-interval over seeds (R² and ρ: [low, high], kept in
their range).

The calibration datasets are made by calibration/run.py, Gamble's by luck/run.py (run them first). A
rerun reuses the finished rows in ``--work``, keyed by the full EsperConfig. Run from the repo root:

    python experiments/calibration/esper_label_quality.py                       # the committed result: ~35 min, 1 shared core
    python experiments/calibration/esper_label_quality.py --datasets pendulum_mixed --seeds 0 --variants default
    python experiments/calibration/esper_label_quality.py --from-summary   # re-render the tables from esper_label_quality.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent

from dtcond.experiment import fmt_interval, machine, replace_tables  # noqa: E402

import dtcond  # noqa: E402
from dtcond.config import EsperConfig  # noqa: E402
from dtcond.datasets.storage import datasets_root  # noqa: E402
from dtcond.envs.gamble import GAMBLE, SAFE, GambleEnv  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.analysis.statistics import mean_ci  # noqa: E402

REFERENCE = {"return_weight": 0.0, "adv_weight": 1.0}  # the reference's objective: clusters learn from actions only
VARIANTS = {  # EsperConfig fields over the defaults
    "reference objective": REFERENCE,
    "reference, 4x return steps, width 64": {**REFERENCE, "return_steps": 4000, "hidden": 64},
    "reference, 16 clusters": {**REFERENCE, "clusters": 16},
    "reference, action weight 3": {**REFERENCE, "act_weight": 3.0},
    "return_weight 1, adv_weight 1": {"return_weight": 1.0, "adv_weight": 1.0},
    "return_weight 3, adv_weight 1": {"return_weight": 3.0, "adv_weight": 1.0},
    "return_weight 1, adv_weight 3": {"return_weight": 1.0, "adv_weight": 3.0},
    "default": {},
}
DATASETS = {"pendulum_mixed": "dtcond/calibration/pendulum_mixed-v0", "cartpole_mixed": "dtcond/calibration/cartpole_mixed-v0",
            "gamble": "dtcond/gamble/mixture-v0"}
MAKERS = {"gamble": "python experiments/luck/run.py"}
METRICS = {"r2_first": "R² first-step label vs return", "spearman_first": "ρ first-step label vs return",
           "r2_all": "R² label vs return-to-go, every step", "clusters_used": "clusters used"}
LUCK_METRICS = {"r2_true": "R² first-step label vs luck-free return", "luck_corr": "corr(label − luck-free return, luck)",
                "clusters_used": "clusters used"}


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(1 - ((y - pred) ** 2).mean() / y.var())


def quality(name: str, data, overrides: dict, seed: int) -> dict:
    labels, info = dtcond.esper_labels(data.trajectories, data.stats, EsperConfig(**overrides), seed=seed)
    raw = np.array([t.returns_to_go[0] for t in data.trajectories], dtype=float)
    first = np.array([a[0] for a in labels], dtype=float)
    every_rtg = np.concatenate([t.returns_to_go for t in data.trajectories]).astype(float)
    every_label = np.concatenate(labels).astype(float)
    row = {"r2_first": r2(raw, first), "spearman_first": float(spearmanr(first, raw)[0]), "r2_all": r2(every_rtg, every_label),
           "clusters_used": info["clusters_used"]}
    if name == "gamble":  # each choice's expected reward, summed: the return with the luck taken out
        env = GambleEnv()
        value = np.array([1.0 if a == SAFE else env.gamble_value if a == GAMBLE else -1.0 for a in range(3)])
        true = np.array([value[np.asarray(t.actions, dtype=int)].sum() for t in data.trajectories])
        row.update(r2_true=r2(true, first), luck_corr=float(np.corrcoef(first - true, raw - true)[0, 1]))
    return row


def config_key(overrides: dict) -> str:
    return json.dumps(asdict(EsperConfig(**overrides)), sort_keys=True)


def table(rows: pd.DataFrame, metrics: dict) -> tuple[list[str], list[dict]]:
    summary = []
    for (name, variant), g in rows.groupby(["dataset", "variant"], sort=False):
        cells = {k: mean_ci(g[k]) for k in metrics}
        summary.append({"dataset": name, "variant": variant, "overrides": VARIANTS[variant], "config": json.loads(config_key(VARIANTS[variant])),
                        "seeds": g["seed"].tolist(), **{k: {"mean": m, "ci95": c} for k, (m, c) in cells.items()}})
    return table_lines(summary, metrics), summary


def table_lines(summary: list[dict], metrics: dict) -> list[str]:
    """The markdown table of ``summary``'s rows: a bounded quantity (R², ρ, by its header) as mean [low, high] in its range."""
    lines = ["| dataset | EsperConfig | " + " | ".join(metrics.values()) + " |", "|---|---|" + "---|" * len(metrics)]
    for r in summary:
        lines.append(f"| {r['dataset']} | {r['variant']} {r['overrides'] or ''} | "
                     + " | ".join(fmt_interval(head, r[k]["mean"], r[k]["ci95"], 1 if k == "clusters_used" else 3)
                                  for k, head in metrics.items()) + " |")
    return lines


def from_summary(out: Path) -> None:
    """Re-render esper_label_quality.md's tables from the committed summary; the page's header and notes are kept."""
    summary = json.loads((out / "esper_label_quality.json").read_text())["summary"]
    deterministic = [r for r in summary if r["dataset"] != "gamble"]
    luck = [r for r in summary if r["dataset"] == "gamble"]
    tables = ["\n".join(table_lines(part, metrics)) for part, metrics in ((deterministic, METRICS), (luck, LUCK_METRICS)) if part]
    atomic_write(out / "esper_label_quality.md", replace_tables((out / "esper_label_quality.md").read_text(), tables))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["pendulum_mixed", "gamble"], choices=list(DATASETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--default-only", nargs="*", default=["cartpole_mixed"],
                    help="datasets that run only the default variant (CartPole's 500-step episodes are slow)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--work", default="outputs/experiments/calibration/esper_label_quality.jsonl",
                    help="finished (dataset, EsperConfig, seed) rows, reused by a rerun")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    ap.add_argument("--from-summary", action="store_true",
                    help="re-render the tables of esper_label_quality.md from the summary in esper_label_quality.json (the "
                         "page's header and notes kept); learn no labels")
    args = ap.parse_args()
    out = Path(args.results_dir)
    if args.from_summary:
        from_summary(out)
        return
    start = time.perf_counter()
    work = Path(args.work)
    done = {}
    if work.is_file():
        for line in work.read_text().splitlines():
            row = json.loads(line)
            done[(row["dataset"], json.dumps(row["config"], sort_keys=True), row["seed"])] = row
    work.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.datasets:
        dataset_id = DATASETS[name]
        if not (datasets_root() / dataset_id).exists():
            maker = MAKERS.get(name, f"python experiments/calibration/run.py 'only=[{name}]'")
            sys.exit(f"esper_label_quality: error: no dataset {dataset_id}; make it with {maker} first")
        data = dtcond.load_dataset(dataset_id)
        variants = ["default"] if name in args.default_only else args.variants
        for variant in variants:
            for seed in args.seeds:
                key = (name, config_key(VARIANTS[variant]), seed)
                if key in done:
                    rows.append({**done[key], "variant": variant, "overrides": VARIANTS[variant]})
                    continue
                t0 = time.perf_counter()
                rows.append({"dataset": name, "variant": variant, "overrides": VARIANTS[variant], "config": json.loads(key[1]),
                             "seed": seed, **quality(name, data, VARIANTS[variant], seed), "seconds": time.perf_counter() - t0})
                with work.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(json.dumps(rows[-1]), flush=True)
    frame = pd.DataFrame(rows)
    deterministic, luck = frame[frame["dataset"] != "gamble"], frame[frame["dataset"] == "gamble"]
    lines, summary = table(deterministic, METRICS) if len(deterministic) else ([], [])
    luck_lines, luck_summary = table(luck, LUCK_METRICS) if len(luck) else ([], [])
    out.mkdir(parents=True, exist_ok=True)
    md = ["# How much of the returns ESPER's labels keep, and how much of the luck they remove", "",
          f"Labels from `dtcond.esper_labels` (no DT trained); seeds {args.seeds}; means ± 95% t-interval over seeds (R² and ρ: [low, high], kept in their range). "
          f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun reuses finished rows; one labelling took "
          f"{frame['seconds'].min():.0f}-{frame['seconds'].max():.0f}s on one thread of a shared core). "
          f"Command: `python experiments/calibration/esper_label_quality.py {' '.join(sys.argv[1:])}`. "
          f"The defaults: {config_key({})}.", ""]
    if lines:
        md += ["## Deterministic data: the labels should be the returns", "", *lines, "",
               "R² first-step label vs return: 1 − MSE / variance of the raw episode returns, with the label of each episode's "
               "first step as the prediction (1: the labels are the returns; 0: no better than their mean). The envs are "
               "deterministic after the reset, so every point below 1 is information the labels average away.", ""]
    if luck_lines:
        md += ["## Gamble: the labels should be the returns with the luck taken out", "", *luck_lines, "",
               "Luck-free return: the sum of each round's expected reward for the choice made (safe +1, gamble −0.4, fold −1); "
               "luck: the raw return minus it. corr(label − luck-free return, luck) near 0: the labels do not follow the dice; "
               "near 1: lucky gamblers' labels rise with their winnings, and a DT conditioned on a high label is asked to gamble.", ""]
    atomic_write(out / "esper_label_quality.md", "\n".join(md))
    atomic_write(out / "esper_label_quality.json", json.dumps({"rows": rows, "summary": summary + luck_summary, "machine": machine()}, indent=1))
    print("\n".join(lines + [""] + luck_lines))


if __name__ == "__main__":
    main()
