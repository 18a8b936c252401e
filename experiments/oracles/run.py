"""Oracle references on every testbed, from the behaviour mixture alone: see config.yaml for the questions.

    python experiments/oracles/run.py
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent

from dtcond.experiment import fmt, hydra_entry, machine, results_dir, table_markdown, write_results  # noqa: E402
import dtcond  # noqa: E402
from dtcond.behavior.collection import ensure_dataset  # noqa: E402
from dtcond.config import EnvConfig, OracleConfig, env_preset  # noqa: E402
from dtcond.analysis.oracles import ORACLE_POOL_SEED  # noqa: E402
from dtcond.analysis.report import comparison_table, quantilizer_bound  # noqa: E402
from dtcond.analysis.roaming import RoamingScorer, dataset_records  # noqa: E402

COLUMNS = {"episode_return": "observed return", "true_return": "true return", "cost": "cost", "trajectory_kl": "KL(Q‖p_data) nats/episode",
           "component_entropy": "component entropy", "ess": "ESS"}


@dataclass
class OraclesConfig:
    """Which testbeds, and the oracles (dtcond.config.OracleConfig) resampled from each one's behaviour mixture."""

    name: str = "oracles"
    testbeds: List[str] = field(default_factory=lambda: ["gamble", "hazard_grid"])  # conf/env/<name>.yaml
    data_seed: int = 0
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # one pool per seed: intervals are t over pools
    eval_seed: int = 1000  # pools roll out on env seeds from eval_seed + ORACLE_POOL_SEED + seed
    oracles: OracleConfig = field(default_factory=OracleConfig)
    results_dir: Optional[str] = None  # None: results/ beside this file (committed)


def testbed(cfg, env: EnvConfig) -> list[str]:
    dataset_id = f"dtcond/{env.name}/mixture-v0"
    ensure_dataset(env, dataset_id, seed=cfg.data_seed)
    data = dtcond.load_dataset(dataset_id)
    scorer = RoamingScorer.for_data(data)
    records = dataset_records(data, scorer) + dtcond.run_oracles(data, scorer, cfg.oracles, list(cfg.seeds),
                                                                 pool_seed=cfg.eval_seed + ORACLE_POOL_SEED)
    import pandas as pd

    df = pd.DataFrame(records)
    table = comparison_table(df)
    cols = {c: h for c, h in COLUMNS.items() if c in table and table[c].notna().any()}
    lines = [f"## {env.id}", "", f"Dataset {dataset_id} ({data.stats.num_episodes} episodes, behaviour seed {cfg.data_seed}); "
             f"{len(cfg.seeds)} pools of {cfg.oracles.pool} behaviour episodes, {cfg.oracles.draws} draws per oracle and pool.", "",
             table_markdown(table, cols), ""]
    bound = quantilizer_bound(table, df)
    if bound:
        lines += ["Taylor's bound E_Q[cost] ≤ E_data[cost] / q (95% t-interval over pools on E_Q[cost]):", "",
                  "| oracle | q | E_Q[cost] | E_Q[cost] / E_data[cost] | bound | verdict |", "|---|---|---|---|---|---|"]
        lines += [f"| {b['target_spec']} | {b['q']:g} | {fmt(b['cost'], b['cost_ci95'], 2)} | {b['ratio_to_data']:.2f} | {b['bound']:.2f} "
                  f"| {b['verdict']} |" for b in bound]
        lines.append("")
    return lines


def main(cfg) -> None:
    start = time.perf_counter()
    envs = [env_preset(str(name)) for name in cfg.testbeds]  # conf/env/<name>.yaml; an unknown name fails before any work
    body = []
    for env in envs:
        body += testbed(cfg, env)
    md = ["# Oracle references from the behaviour mixture", "",
          "No learning: each testbed's behaviour mixture, rolled out fresh and scored by the data's exact likelihood, then "
          "reweighted (`dtcond.analysis.oracles`). Rows: the data's own episodes, the mixture's fresh rollouts (`behavior`), and the "
          "oracles (`quantilizer:q` keeps the top q by observed return, `plan_quantilizer:q` the best behaviour components of "
          "mass q, `best_of_n:n`, `posterior:β` ∝ p_data·exp(R/β) with its effective sample size). Means ± 95% t-interval over "
          f"pools. Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s.", "", *body]
    out = results_dir(cfg, HERE)
    write_results(out, "\n".join(md), {"testbeds": list(cfg.testbeds)})
    print("\n".join(md))


if __name__ == "__main__":
    hydra_entry(HERE, main, OraclesConfig)
