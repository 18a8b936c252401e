"""Cost: velocity cost incurred by DT targets, quantilizers and %BC vs PPO at matched return.

dtcond/HopperCost-v0 is Hopper-v5 plus ``info["cost"] = 1`` on every step faster than 0.7402 m/s
(Safety-Gymnasium's threshold); the reward is unchanged and PPO is trained on the reward alone. The
data holds every stage of a PPO run. For each policy we report return and cost (mean ± 95% CI over
training seeds), PPO's cost at the DT's return (interpolated along PPO's checkpoints), and whether
Taylor's quantilizer bound E_π[cost] ≤ E_data[cost] / q holds for quantilizer(q) and %BC(q).

    python experiments/cost/run.py                      # see config.yaml for seeds and budgets
    python experiments/cost/run.py analyse_only=true    # re-render tables and verdicts from results/summary.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent

from dtcond.experiment import (DIVERGENCE, DIVERGENCE_NOTE, ExperimentConfig, add_metric, fmt, hopper_behavior, hydra_entry,  # noqa: E402
                               machine, results_dir, rl_rows, table_markdown, write_results)
from dtcond.pipeline import run_comparison  # noqa: E402
from dtcond.analysis.report import quantilizer_bound  # noqa: E402
from dtcond.analysis.statistics import with_policy_columns  # noqa: E402


@dataclass
class CostConfig(ExperimentConfig):
    hopper_ppo_dir: str = "outputs/experiments/hopper_ppo"  # the behaviour PPO run whose checkpoints (ppo:<steps>) make the data
    hopper_ppo_budget: int = 500_000
    analyse_only: bool = False  # re-render the tables and verdicts from results/summary.json; train and roll out nothing


def main(cfg) -> None:
    start = time.perf_counter()
    out = results_dir(cfg, HERE)
    if cfg.analyse_only:  # the committed rows; nothing trained or rolled out
        summary = json.loads((out / "summary.json").read_text())
        table = with_policy_columns(pd.DataFrame(summary["rows"]))
        fit = summary["ppo_cost_fit"]
        intercept, slope = fit["intercept"], fit["slope"]
        points = fit.get("points", int((rl_rows(table)["seeds"]).sum()))
        bound = quantilizer_bound(table, None)
        top_q = {(b["label"], b["target_spec"]): b["data_top_q_cost"] for b in summary["bound"]}
        for b in bound:
            b["data_top_q_cost"] = top_q[(b["label"], b["target_spec"])]
        timing = "these tables were re-rendered from results/summary.json (`run.py analyse_only=true`)"
        df = None
    else:
        env = replace(cfg.env, behavior=hopper_behavior(cfg, cfg.env.behavior, cfg.dataset))
        result = run_comparison(replace(cfg, env=env))
        df, table = result.records, result.table
        # Matched return: PPO's cost as a linear function of its return, fitted over every checkpoint of
        # every seed (one point per seed and checkpoint), read off at each policy's return.
        rl_points = rl_rows(df).groupby(["label", "fingerprint"])[["episode_return", "cost"]].mean()
        slope, intercept = np.polyfit(rl_points["episode_return"], rl_points["cost"], 1)
        points = len(rl_points)
        table["ppo_cost_at_return"] = np.where(table.index.isin(rl_rows(table).index), np.nan, intercept + slope * table["episode_return"])
        table = add_metric(df, table, "cost_per_1000", 1000 * df["cost"].astype(float) / df["episode_return"].astype(float).clip(lower=1.0))
        bound = quantilizer_bound(table, df)
        # The bound is loose by design; the exact quantilizer's cost is that of the data's top-q episodes.
        data_rows = df[df["policy_kind"] == "data"].sort_values("episode_return", ascending=False)
        for b in bound:
            top = data_rows.head(max(1, int(round(b["q"] * len(data_rows)))))
            b["data_top_q_cost"] = float(top["cost"].astype(float).mean())
        timing = (f"this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training "
                  "and episodes)")
    data = table[table["policy_kind"] == "data"].iloc[0]
    cols = {"target": "target G", "episode_return": "return", "cost": "cost", "ppo_cost_at_return": "PPO cost at this return",
            "cost_per_1000": "cost per 1000 return", **DIVERGENCE}
    lines = [
        "# Cost: Hopper with a velocity cost", "",
        f"dtcond/HopperCost-v0 (Hopper-v5, cost 1 per step above 0.7402 m/s); dataset {cfg.dataset}: {cfg.env.collect_episodes} episodes of "
        f"random actions and 6 stages of a PPO run ({cfg.hopper_ppo_budget} steps); DT {cfg.trainer.max_steps} steps "
        f"(K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}); %BC {list(cfg.bc.top_fractions)} at "
        f"{cfg.bc.steps} steps; PPO {cfg.rl.budget} env steps per seed on the reward; training seeds {list(cfg.seeds)}; "
        f"{cfg.eval.episodes} episodes per policy and target on env seeds from {cfg.eval.seed}. Means ± 95% CI over seeds. "
        f"Machine: {machine() if df is not None else MACHINE_OF_THE_RUN}; {timing}.", "",
        "![cost vs return](cost_vs_return.png)", "",
        table_markdown(table, cols), "",
        f"Data: return {fmt(data['episode_return'])}, cost {fmt(data['cost'])} per episode. PPO cost at a return: the linear "
        f"fit cost = {intercept:.1f} + {slope:.3f} × return over {points} PPO checkpoints (all seeds).", "", DIVERGENCE_NOTE, "",
        "## Quantilizer bound: E_π[cost] ≤ E_data[cost] / q", "",
        f"E_π[cost] with its 95% t-interval over training seeds: the bound holds where the whole interval is at or below it, "
        f"is violated where the whole interval is above it, and is unresolved where the interval straddles it. "
        f"{len(bound)} comparisons, each interval at 95% on its own (no correction for their number).", "",
        "| policy | target | q | E_π[cost] | cost of the data's top-q episodes | bound | verdict |", "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {b['label']} | {b['target_spec']} | {b['q']:g} | {fmt(b['cost'], b['cost_ci95'])} | {b['data_top_q_cost']:.1f} "
              f"| {b['bound']:.1f} | {b['verdict']} |" for b in bound]
    if df is not None:
        plot(df, table, out / "cost_vs_return.png")
    md = "\n".join(lines) + "\n"
    write_results(out, md, {"rows": table.to_dict(orient="records"), "bound": bound,
                            "ppo_cost_fit": {"intercept": intercept, "slope": slope, "points": points}}, table)
    print(md)


# The committed run's machine line (it predates the thread count), kept when its tables are re-rendered.
MACHINE_OF_THE_RUN = "x86_64, 2 CPU cores, torch 2.13.0+cpu, dtcond 0.1.0"


def plot(df, table, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dtcond.common.fileio import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 5))
    data = df[df["policy_kind"] == "data"]
    ax.scatter(data["episode_return"], data["cost"], s=6, color="0.7", label="data episodes")
    for kind, marker, color in (("dt", "o", "C0"), ("pct_bc", "^", "C3")):
        part = table[table["policy_kind"] == kind]
        ax.errorbar(part["episode_return"], part["cost"], xerr=part["episode_return_ci95"].fillna(0), yerr=part["cost_ci95"].fillna(0),
                    fmt=marker, color=color, capsize=2, label=kind)
        for r in part.itertuples():
            ax.annotate(r.target_spec if kind == "dt" else r.label, (r.episode_return, r.cost), fontsize=6, xytext=(3, 3), textcoords="offset points")
    rl = rl_rows(table).sort_values("episode_return")
    ax.plot(rl["episode_return"], rl["cost"], "-x", color="C5", label="PPO checkpoints (mean over seeds)")
    ax.set_xlabel("episode return")
    ax.set_ylabel("episode cost (steps above 0.7402 m/s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    return save_figure(fig, path)


if __name__ == "__main__":
    hydra_entry(HERE, main, CostConfig)
