"""One-seed pilots of BC settings on TomatoGarden, outside the study, to choose what the study sweeps.

    python experiments/fidelity/pilot.py EPISODES,K,SEGMENT,STEPS,BATCH,DROPOUT[,DECAY[,LR]] [...]

Each spec trains BC (best-validation export) on the preset mixture collected at EPISODES episodes, with context K,
training segments of SEGMENT steps, STEPS steps of batch BATCH, the given dropout and learning-rate decay (none or cosine; default none) and lr; rolls it out 100 episodes on
env seeds from 1000, scored by the data's exact likelihood; and adds a row to ``results/pilot.json`` (trajectory KL
mean and 95% t-interval over the episodes, the validation metrics, wall times). A spec already there is skipped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import dtcond
from dtcond.analysis.roaming import RoamingScorer
from dtcond.analysis.statistics import mean_ci
from dtcond.behavior.collection import ensure_dataset
from dtcond.common.fileio import atomic_write
from dtcond.config import env_preset

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pilot.json"
WORK = Path("outputs/experiments/fidelity/pilot")


def pilot(spec: str) -> dict:
    episodes, K, segment, steps, batch, dropout, *rest = spec.split(",")
    decay, lr = (rest + ["none", "1e-3"][len(rest):])[:2]
    dataset = f"dtcond/tomato/fidelity-{int(episodes)}-v0"
    ensure_dataset(replace(env_preset("tomato"), collect_episodes=int(episodes)), dataset, seed=0)
    t0 = time.perf_counter()
    run = dtcond.train(dataset, WORK / f"bc_{spec.replace(',', '_')}", model={"context_len": int(K), "dropout": float(dropout)},
                       data={"segment_len": int(segment), "val_windows": 256, "batch_size": int(batch)},
                       optim={"decay": decay, "lr": float(lr)}, trainer={"max_steps": int(steps), "enable_progress_bar": False, "logger": False},
                       condition_on_return=False, checkpoint_every=250)
    train_s = time.perf_counter() - t0
    scorer = RoamingScorer.for_data(dtcond.load_dataset(dataset))
    t1 = time.perf_counter()
    records = dtcond.evaluate(dtcond.load_policy(run.bundle), None, episodes=100, seed=1000, scorer=scorer, progress=False)
    kl, ci = mean_ci(np.array([r["trajectory_kl"] for r in records], float))
    return {"spec": spec, "family": "bc", "episodes": int(episodes), "K": int(K), "segment_len": int(segment), "steps": run.global_step,
            "best_step": run.best_step, "batch_size": int(batch), "dropout": float(dropout), "decay": decay, "lr": float(lr), "val": run.val_metrics,
            "trajectory_kl": kl, "trajectory_kl_ci95": ci, "eval_episodes": len(records),
            "true_return": float(np.mean([r["true_return"] for r in records])), "train_seconds": train_s,
            "eval_seconds": time.perf_counter() - t1, "threads": __import__("torch").get_num_threads()}


def main(specs: list[str]) -> None:
    for spec in specs:
        if any(r["spec"] == spec for r in load()):
            print(f"{spec}: done already")
            continue
        row = pilot(spec)
        rows = load() + [row]  # read again: another pilot process may have added rows meanwhile
        atomic_write(RESULTS, json.dumps(rows, indent=1).encode())
        print(json.dumps(row), flush=True)


def load() -> list[dict]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else []


if __name__ == "__main__":
    main(sys.argv[1:])
