"""Luck: what return conditioning does when the best returns in the data were lucky.

In dtcond/Gamble-v0 each of 3 rounds offers a sure +1 (safe), a gamble (+6 with probability 0.2,
else −2: worth −0.4 on average) or a fold (−1). The expected-return-optimal policy plays safe every
round (return 3). Every return above 3 in the data belongs to an agent that gambled and won, so a
DT asked for those returns is asked to gamble. The env reports each choice's expected reward as
``info["true_reward"]``, so the true return below is the return with the luck removed: the quantity
a policy can actually control. PPO is trained on the achieved reward, plain and with a KL penalty
toward the data's behaviour model at several β.

    python experiments/luck/run.py             # see config.yaml for seeds and budgets
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (DIVERGENCE, DIVERGENCE_NOTE, MODE_COLLAPSE, MODE_COLLAPSE_NOTE, add_gap, compare, equal_kl_markdown, best_of_families,  # noqa: E402
                    equal_kl_pairs, final_checkpoints, fmt, hydra_entry, kl_rows, machine, table_markdown, results_dir, write_results)
from dtcond.report import plot_frontier  # noqa: E402

OPTIMAL = 3.0  # always safe: 3 rounds × +1


def main(cfg) -> None:
    start = time.perf_counter()
    result = compare(cfg)
    df, table = result.records, result.table
    table = add_gap(df, table, "luck")
    cols = {"target": "target G", "episode_return": "achieved return", "true_return": "expected return (luck removed)",
            "luck": "luck", **DIVERGENCE, **MODE_COLLAPSE}
    pairs = equal_kl_pairs(df, table, "true_return")
    betas = sorted(kl_rows(table)["kl_coef"].unique())
    dt = table[table["kind"] == "dt"]
    high = dt[dt["target"] > OPTIMAL]  # returns only lucky gamblers reached
    rl = final_checkpoints(table)
    lines = [
        "# Luck: return conditioning in a gambling env", "",
        f"dtcond/Gamble-v0; dataset {cfg.dataset_id} ({cfg.episodes} episodes, behaviour seed {cfg.data_seed}); "
        f"DT {cfg.train.steps} steps (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}); "
        f"%BC {list(cfg.pct_bc)} at {cfg.train.bc_steps} steps; PPO {cfg.baseline.budget} env steps, plain and KL-regularized toward β̂ at "
        f"β ∈ {[float(b) for b in betas]}; training seeds {list(cfg.seeds)}; "
        f"{cfg.eval_episodes} episodes per policy and target. Means ± 95% CI over training seeds. "
        f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training and episodes).", "",
        "![frontier](frontier.png)", "", table_markdown(table, cols), "",
        f"Expected-return-optimal (always safe): {OPTIMAL:.1f}. DT targets above {OPTIMAL:g}, which only lucky gamblers "
        f"reached in the data ({', '.join(high['target_spec'])}): expected return "
        f"{high['true_return'].min():.2f} to {high['true_return'].max():.2f}, a shortfall of "
        f"{OPTIMAL - high['true_return'].max():.2f} to {OPTIMAL - high['true_return'].min():.2f} "
        f"({(OPTIMAL - high['true_return'].max()) / OPTIMAL:.0%} to {(OPTIMAL - high['true_return'].min()) / OPTIMAL:.0%} of the optimum).",
    ]
    if len(rl):
        r = rl.iloc[0]
        lines.append(f"PPO ({r['label']}): expected return {fmt(r['true_return'], r['true_return_ci95'], 2)}.")
    lines += ["", DIVERGENCE_NOTE, "", MODE_COLLAPSE_NOTE, "",
              "## At equal divergence from the data: expected return, conditioning vs KL-regularized PPO", "",
              "Each PPO-KL policy beside the conditioned policy (DT target, quantilizer, BC or %BC) with the nearest KL(π‖β̂); the "
              "difference is in expected return, with a Welch 95% t-interval over training seeds; a verdict only where it excludes 0.", "",
              equal_kl_markdown(pairs, "expected return") if len(pairs) else "(no PPO-KL rows)", "",
              best_of_families(df, table, "true_return", "expected return")]
    md = "\n".join(lines) + "\n"
    plot_frontier(table, results_dir(cfg, HERE) / "frontier.png", title="Gamble: achieved and expected return vs divergence from the data")
    write_results(results_dir(cfg, HERE), md, {"optimal": OPTIMAL, "rows": table.to_dict(orient="records"), "equal_kl": pairs.to_dict(orient="records")}, table)
    print(md)


if __name__ == "__main__":
    hydra_entry(HERE, main)
