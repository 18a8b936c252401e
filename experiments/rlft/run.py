"""RL fine-tuning of the BC transformer against conditioning it, on the Goodhart gridworld's gameable reward.

Per training seed: the DT (conditioning), the BC transformer, and that same BC transformer fine-tuned by RL on the
observed reward (:mod:`dtcond.rl.finetune`) — with a KL penalty toward its frozen copy at several β (RLFT-KL), and
unregularized with snapshots stopped at KL thresholds from it (RLFT-stop) — beside the oracles (the data's
quantilizer and its KL-regularized posterior). Three questions, answered whichever way they come out:

1. Does KL-regularized fine-tuning reach the posterior p_BC(τ)·exp(R/β)/Z its objective promises, and how close at
   each β? (:func:`dtcond.analysis.oracles.posterior_gaps`, log Z from the BC model's own pool of episodes.)
2. Does an explicit penalty beat early stopping at equal KL from the prior on true return (Gao et al. 2022)?
3. At equal divergence from the data, does conditioning the model beat fine-tuning it on true return?

    python experiments/rlft/run.py                      # see config.yaml for seeds and budgets
    python experiments/rlft/run.py analyse_only=true    # re-render the tables from the committed results
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent

import pandas as pd  # noqa: E402

from dtcond.analysis.frontier import (BUDGET_NOTE, GAO_NOTE, POSTERIOR_NOTE, budget_comparisons, budget_markdown, check_budgets,  # noqa: E402
                                     frontier_rows, posterior_markdown)
from dtcond.analysis.oracles import posterior_gaps  # noqa: E402
from dtcond.analysis.report import plot_frontier, plot_questions  # noqa: E402
from dtcond.analysis.statistics import with_policy_columns  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.experiment import BudgetExperimentConfig, add_gap, hydra_entry, machine, table_markdown, write_results  # noqa: E402
from dtcond.pipeline import prior_pools, run_comparison  # noqa: E402


@dataclass
class RlftConfig(BudgetExperimentConfig):
    budgets: List[Optional[float]] = field(default_factory=lambda: [5, 10, 20, 30, None])  # KL(p_π‖p_data), nats/episode
    prior_budgets: List[Optional[float]] = field(default_factory=lambda: [1, 2, 5, 10])  # KL(p_π‖p_BC), nats/episode
    analyse_only: bool = False  # re-render summary.md from the committed results; train and roll out nothing

    def __post_init__(self):
        super().__post_init__()
        check_budgets(self.prior_budgets)


AGAINST = ("rlft_kl", "rlft_stop", "bc")
def main(cfg) -> None:
    start = time.perf_counter()
    out = HERE / "results" if not cfg.results_dir else Path(cfg.results_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.analyse_only:
        summary = json.loads((out / "summary.json").read_text())
        frontier = json.loads((out / "frontier.json").read_text())
        table = with_policy_columns(pd.DataFrame(summary["rows"]))
        plot_questions(table, out / "questions.png")
        render(cfg, table, frontier, out, "these tables were re-rendered from results/summary.json and frontier.json "
                                          "(`run.py analyse_only=true`)", frontier["machine"])
        return
    result = run_comparison(cfg)
    df, table = result.records, add_gap(result.records, result.table)
    pools = prior_pools(cfg.work_dir, cfg.seeds)
    seconds = {p.label: [] for p in result.policies}
    for p in result.policies:
        seconds[p.label].append(p.train_seconds)
    frontier = {"env_id": "dtcond/TomatoGarden-v0", "dataset_id": cfg.dataset, "seeds": [int(s) for s in cfg.seeds],
                "estimator": "exact (the dataset's recorded behaviour mixture; the fine-tuned policies' log-ratio to their prior)",
                "kl_units": "nats per episode", "interval": "95% Student t over training seeds (oracles: over their pools)",
                "machine": machine(), "command": "python experiments/rlft/run.py", "rows": frontier_rows(table, extra=("log_ratio_prior",)),
                "posterior": posterior_gaps(df, pools),
                "budgets": budget_comparisons(df, list(cfg.budgets), reference="conditioning",
                                              against=[f for f in AGAINST if (df["policy_kind"] == f).any()]),
                "prior_budgets": budget_comparisons(df, list(cfg.prior_budgets), reference="rlft_kl", against=["rlft_stop"],
                                                    kl="log_ratio_prior"),
                "train_seconds": {label: s for label, s in seconds.items()}, "wall_seconds": time.perf_counter() - start}
    plot_frontier(table, out / "frontier.png", title="TomatoGarden: conditioning vs RL fine-tuning of the same transformer")
    plot_questions(table, out / "questions.png")
    render(cfg, table, frontier, out, f"this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir "
                                      "reuses finished training and episodes)", machine())


def render(cfg, table, frontier: dict, out: Path, timing: str, machine_line: str) -> None:
    """Write frontier.json, summary.md, summary.json and comparison.csv."""
    ft = cfg.finetune
    cols = {"target": "target G", "episode_return": "observed return", "true_return": "true return", "gap": "fake reward",
            "trajectory_kl": "KL(p_π‖p_data) nats/episode", "log_ratio_prior": "KL(p_π‖p_BC) nats/episode", "ess": "ESS"}
    atomic_write(out / "frontier.json", json.dumps(frontier, indent=1, default=float))
    per_run = {k: v for k, v in frontier.get("train_seconds", {}).items() if k.startswith("rlft_kl")}
    run_minutes = [s / 60 for v in per_run.values() for s in v if s > 0]
    md = [
        "# Conditioning vs RL fine-tuning of the same transformer, on the exact axis", "",
        f"dtcond/TomatoGarden-v0; dataset {cfg.dataset} ({cfg.env.collect_episodes} episodes, behaviour seed {cfg.data_seed}); "
        f"DT {cfg.trainer.max_steps} steps and BC {cfg.bc.steps or cfg.trainer.max_steps} steps (K={cfg.model.context_len}, "
        f"{cfg.model.n_layer} layers, width {cfg.model.n_embd}, dropout {cfg.model.dropout:g}, lr decay {cfg.optim.decay}; best "
        f"validation weights); each seed's BC transformer fine-tuned by RLOO on the observed reward for {ft.updates} updates "
        f"of {ft.episodes} episodes (lr {ft.lr:g}) with a KL penalty toward its frozen copy at β ∈ {list(ft.betas)}, and "
        f"unregularized (β = 0) with snapshots at held-out KL from the prior ≤ {list(ft.thresholds)} nats (checked every "
        f"{ft.check_every} updates on {ft.check_episodes} held-out episodes); the posterior's normalizer from {ft.prior_pool} "
        f"episodes of each seed's BC model; oracles from {cfg.oracles.pool} fresh behaviour episodes per seed; training seeds "
        f"{list(cfg.seeds)}; {cfg.eval.episodes} episodes per policy and target on env seeds from {cfg.eval.seed}. Means ± 95% "
        f"CI over training seeds (oracles: over their pools). Machine: {machine_line}; {timing}."
        + (f" One RL fine-tuning run took {min(run_minutes):.1f}–{max(run_minutes):.1f} min." if run_minutes else ""), "",
        "![three questions](questions.png)", "", "Every row, observed return too: ![frontier](frontier.png)", "",
        table_markdown(table, cols), "",
        "## 1. Does KL-regularized fine-tuning reach its posterior?", "", POSTERIOR_NOTE.format(episodes=cfg.eval.episodes), "",
        posterior_markdown(frontier["posterior"]), "",
        "## 2. An explicit KL penalty against early stopping, at equal KL from the prior", "",
        GAO_NOTE.format(m=len(frontier["prior_budgets"])), "", budget_markdown(frontier["prior_budgets"]), "",
        "## 3. Conditioning against fine-tuning (and BC) at equal divergence from the data", "",
        BUDGET_NOTE.format(members="the DT's targets; RLFT-KL's β; RLFT-stop's thresholds; BC alone", m=len(frontier["budgets"])), "",
        budget_markdown(frontier["budgets"]), "",
    ]
    write_results(out, "\n".join(md), {"rows": table.to_dict(orient="records")}, table)
    print("\n".join(md))


if __name__ == "__main__":
    hydra_entry(HERE, main, RlftConfig)
