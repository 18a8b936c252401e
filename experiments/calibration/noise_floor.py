"""The calibration floor of a dataset whose skill levels come from its behaviour mixture.

A policy that, per episode, plays one of the data's behaviour components (or any random mixture of
them) has expected |G − g| at target g no lower than the best single component's, because the
expectation is linear in the mixture weights. Averaged over the calibration's in-distribution
targets (7 quantiles from p5 to p95) and divided by the data's return range, that is the lowest
normalized MAE an imitation of the data's behaviour levels can reach without steering its return
step by step. Computed from the dataset alone: no training.

    python experiments/calibration/noise_floor.py dtcond/calibration/inverted_pendulum_eps-v0
"""

from __future__ import annotations

import sys
from collections import defaultdict

import minari
import numpy as np

import dtcond


def noise_floor(dataset_id: str, n_targets: int = 7, low: float = 0.05, high: float = 0.95) -> dict:
    stats = dtcond.load_dataset(dataset_id).stats
    returns = np.asarray(stats.episode_returns, dtype=float)
    episodes = minari.load_dataset(dataset_id).iterate_episodes()
    components = [int(np.asarray(ep.infos["behavior_component"])[0]) for ep in episodes]
    by_component = defaultdict(list)
    for c, r in zip(components, returns):
        by_component[c].append(r)
    span = returns.max() - returns.min()
    targets = np.quantile(returns, np.linspace(low, high, n_targets))
    per_target = [min(np.abs(np.asarray(v) - g).mean() for v in by_component.values()) / span for g in targets]
    return {"dataset": dataset_id, "components": {c: (len(v), float(np.mean(v)), float(np.std(v))) for c, v in sorted(by_component.items())},
            "targets": targets.tolist(), "per_target": per_target, "floor": float(np.mean(per_target))}


if __name__ == "__main__":
    result = noise_floor(sys.argv[1] if len(sys.argv) > 1 else "dtcond/calibration/inverted_pendulum_eps-v0")
    for c, (n, mean, std) in result["components"].items():
        print(f"component {c}: {n} episodes, return {mean:.1f} ± {std:.1f} (sd)")
    for g, f in zip(result["targets"], result["per_target"]):
        print(f"target {g:9.1f}: best single component's E|G − g| / range = {f:.3f}")
    print(f"floor of the normalized MAE over these targets: {result['floor']:.3f}")
