"""Goodhart gridworld: observed vs true return for DT targets, quantilizers, %BC and PPO.

In dtcond/TomatoGarden-v0 the observed reward can be maxed by standing on the bucket tile, which
waters nothing. The data mixes honest gardeners (several skills), stumblers that sometimes find the
bucket, a few bucket-sitters and random walkers. PPO is trained on the observed reward. For every
policy we report the observed return, the true return (tomatoes really watered), the gap between
them (reward that is fake), and divergence from the data: KL(π‖β̂) from a behaviour model β̂ fitted to
the data, and the cross-entropy of its actions under β̂.

    python experiments/goodhart/run.py             # see config.yaml for seeds and budgets
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import DIVERGENCE, DIVERGENCE_NOTE, add_gap, compare, final_checkpoints, fmt, hydra_entry, machine, table_markdown, results_dir, write_results  # noqa: E402
from dtcond.report import plot_frontier  # noqa: E402


def main(cfg) -> None:
    start = time.perf_counter()
    result = compare(cfg)
    df, table = result.records, result.table
    table = add_gap(df, table)  # fake reward: what the observation claimed minus what was done
    cols = {"target": "target G", "episode_return": "observed return", "true_return": "true return", "gap": "fake reward",
            **DIVERGENCE}
    body = table_markdown(table, cols)
    data = table[table["kind"] == "data"].iloc[0]
    final_rl = final_checkpoints(table)
    md = [
        "# Goodhart gridworld: conditioning vs maximizing a gameable reward", "",
        f"dtcond/TomatoGarden-v0; dataset {cfg.dataset_id} ({cfg.episodes} episodes, behaviour seed {cfg.data_seed}); "
        f"DT {cfg.train.steps} steps (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}); "
        f"%BC {list(cfg.pct_bc)} at {cfg.train.bc_steps} steps; PPO {cfg.baseline.budget} env steps on the observed reward; "
        f"training seeds {list(cfg.seeds)}; {cfg.eval_episodes} episodes per policy and target on env seeds from {cfg.eval_seed}. "
        f"Means ± 95% CI over training seeds. Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training and episodes).", "",
        "![frontier](frontier.png)", "", body, "",
        f"Data: observed {fmt(data['episode_return'])}, true {fmt(data['true_return'])}. "
        + (f"PPO final: observed {fmt(final_rl.iloc[0]['episode_return'], final_rl.iloc[0]['episode_return_ci95'])}, "
           f"true {fmt(final_rl.iloc[0]['true_return'], final_rl.iloc[0]['true_return_ci95'])}." if len(final_rl) else ""),
        "", DIVERGENCE_NOTE, "",
    ]
    plot_frontier(table, results_dir(cfg, HERE) / "frontier.png", title="TomatoGarden: observed and true return vs divergence from the data")
    write_results(results_dir(cfg, HERE), "\n".join(md), {"rows": table.to_dict(orient="records")}, table)
    print("\n".join(md))


if __name__ == "__main__":
    hydra_entry(HERE, main)
