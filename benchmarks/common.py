"""Helpers for the benchmarks: a policy of a given size for an env, medians, tables and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PAPER = dict(context_len=20, n_layer=3, n_head=1, n_embd=128, dropout=0.1)  # the DT paper's Gym config
SMALL = dict(context_len=20, n_layer=3, n_head=1, n_embd=64, dropout=0.0)  # dtcond's CPU preset (conf/model/small.yaml)


def machine() -> dict:
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def random_policy(env_id: str, model: dict, seed: int = 0, env_kwargs: dict | None = None):
    """A ConditionedPolicy with freshly initialised weights, its stats taken from a few random episodes.

    Throughput does not depend on what the weights learned, so no training is needed; a tiny random
    dataset in a temp dir gives the real normalization stats and spaces (and records ``env_kwargs``,
    which every rollout of the policy then uses).
    """
    from dtcond.behavior import Component
    from dtcond.collection import collect, minari_root
    from dtcond.data import load
    from dtcond.model import DecisionTransformer
    from dtcond.policy import ConditionedPolicy
    from dtcond.training import model_config_for

    with tempfile.TemporaryDirectory() as root, minari_root(root):
        collect(env_id, [Component("random")], 5, "bench/random-v0", seed=seed, env_kwargs=env_kwargs, progress=False)
        stats = load("bench/random-v0").stats
    torch.manual_seed(seed)
    cfg = model_config_for(stats, **{**model, "max_timestep": 1001})
    return ConditionedPolicy(DecisionTransformer(cfg), stats)




def median(values) -> float:
    return float(statistics.median(values))


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, payload: dict) -> Path:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({**payload, "machine": machine()}, indent=1, default=float))
    return path
