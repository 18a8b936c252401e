"""Calibration with nothing but the CLI's defaults, as a new user runs it.

For each env: `dtcond collect env=<env>`, then `dtcond train dataset=<env> seed=<s>` for each seed (the
default CPU preset and training), then `dtcond eval` on the default grid (7 in-distribution targets from
the data's p5 to p95, plus OOD multiples), 10 episodes per target, and `dtcond report`'s metrics per seed.
Every command runs in a subprocess; datasets live under the work dir, not in ~/.minari.

    python experiments/calibration/cli_defaults.py                       # pendulum, inverted_pendulum; seeds 0 1 2
    python experiments/calibration/cli_defaults.py --envs pendulum --seeds 0
    python experiments/calibration/cli_defaults.py --from-summary   # re-render the table of cli_defaults.md from cli_defaults.json

Results: results/cli_defaults.{md,json} beside this file. A rerun reuses finished datasets and runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.experiment import fmt, fmt_interval, machine, replace_tables  # noqa: E402

import dtcond  # noqa: E402
from dtcond.analysis.statistics import calibration_metrics, mean_ci  # noqa: E402

DTCOND = str(Path(sys.executable).with_name("dtcond"))


def run(*args: str) -> None:
    print("$ dtcond " + " ".join(args), flush=True)
    subprocess.run([DTCOND, *args], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["pendulum", "inverted_pendulum"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work-dir", default="outputs/experiments/calibration_cli")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--results-dir", default=str(HERE / "results"))
    p.add_argument("--from-summary", action="store_true",
                   help="re-render the table of cli_defaults.md from the per-env summary in cli_defaults.json (the page's header "
                        "and notes kept); train and roll out nothing")
    args = p.parse_args()
    out = Path(args.results_dir)
    if args.from_summary:
        per_env = json.loads((out / "cli_defaults.json").read_text())["summary"]
        atomic_write(out / "cli_defaults.md", replace_tables((out / "cli_defaults.md").read_text(), [table(per_env)]))
        return
    work = Path(args.work_dir).resolve()
    data_root = work / "datasets"
    rows, start = [], time.perf_counter()
    for env in args.envs:
        dataset_id = f"dtcond/{env}/mixture-v0"
        if not (data_root / dataset_id).exists():
            run("collect", f"env={env}", f"datasets_path={data_root}", f"hydra.run.dir={work}/{env}/collect")
        for seed in args.seeds:
            run_dir = work / env / f"seed{seed}"
            if not (run_dir / "policy" / "card.json").exists():
                run("train", f"dataset={env}", f"seed={seed}", f"datasets_path={data_root}", f"hydra.run.dir={run_dir}")
            results = run_dir / "eval.jsonl"
            run("eval", f"policy={run_dir}/policy", f"episodes={args.episodes}", "seed=1000", f"results={results}",
                f"datasets_path={data_root}", f"hydra.run.dir={run_dir}/eval", "report=false")
            df = pd.DataFrame([json.loads(line) for line in results.read_text().splitlines() if line.strip()])
            returns = dtcond.load_policy(run_dir / "policy").stats.episode_returns  # the data's, carried by the bundle
            ind = calibration_metrics(df, returns)["in_distribution"]
            rows.append({"env": env, "seed": seed, "normalized_mae": ind["normalized_mae"], "spearman": ind["spearman"],
                         "normalized_bias": ind["normalized_bias"]})
            print(rows[-1], flush=True)
    per_env = []
    for env, part in pd.DataFrame(rows).groupby("env", sort=False):
        summary = {"env": env, "seeds": part["seed"].tolist()}
        for m in ("normalized_mae", "normalized_bias", "spearman"):
            summary[m], summary[f"{m}_ci95"] = mean_ci(part[m].to_numpy(float))
        per_env.append(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cli_defaults.json").write_text(json.dumps({"rows": rows, "summary": per_env}, indent=1) + "\n")
    lines = ["# Calibration with the CLI's defaults", "",
             f"`python experiments/calibration/cli_defaults.py --envs {' '.join(args.envs)} --seeds {' '.join(map(str, args.seeds))}`: "
             "`dtcond collect env=<env>`, `dtcond train dataset=<env> seed=<s>` (the default CPU preset and training), "
             f"`dtcond eval` on the default grid, {args.episodes} episodes per target, eval seed 1000. In-distribution targets "
             "(the 7 grid targets from the data's p5 to p95); ρ is Spearman over episodes; ± is the 95% t interval over seeds, "
             "for ρ shown as [low, high] and kept in [−1, 1].",
             f"Machine: {machine()}; {time.perf_counter() - start:.0f}s (reusing finished runs).", "", table(per_env)]
    (out / "cli_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def table(per_env: list[dict]) -> str:
    lines = ["| env | seeds | normalized MAE | normalized bias | Spearman ρ |", "| --- | --- | --- | --- | --- |"]
    for s in per_env:
        lines.append(f"| {s['env']} | {len(s['seeds'])} | {fmt(s['normalized_mae'], s['normalized_mae_ci95'], 3)} "
                     f"| {fmt(s['normalized_bias'], s['normalized_bias_ci95'], 3)} | {fmt_interval('spearman', s['spearman'], s['spearman_ci95'], 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
