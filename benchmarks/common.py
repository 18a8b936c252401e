"""Helpers for the benchmarks: a policy of a given size for an env, medians, tables and JSON output."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import torch

from dtcond.experiment import machine_info

HERE = Path(__file__).resolve().parent
ARCHITECTURE = ("context_len", "n_layer", "n_head", "n_embd", "dropout", "activation")


def model_preset(name: str) -> dict:
    """The architecture a ``conf/model/<name>.yaml`` preset gives: ModelConfig's defaults with the preset on top."""
    import dataclasses

    import yaml

    from dtcond.config import ModelConfig, conf_dir

    preset = yaml.safe_load((conf_dir() / "model" / f"{name}.yaml").read_text()) or {}
    full = {**dataclasses.asdict(ModelConfig()), **preset}
    return {k: full[k] for k in ARCHITECTURE}


PAPER = model_preset("paper")  # the DT paper's Gym config
SMALL = {**model_preset("small"), "dropout": 0.0}  # dtcond's CPU preset without dropout, as its committed results measured it


def pick_device(name: str | None = None) -> torch.device:
    """``name``, or the GPU when there is one, else the CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_tag(device: torch.device) -> str:
    """``cpu`` or ``cuda``: results files are written per device kind (``train_cpu.json``, ``train_cuda.json``)."""
    return device.type


def synthetic_stats(obs_dim: int, act_dim: int, max_episode_length: int = 1000):
    """DatasetStats for Box data of these sizes (actions in [-1, 1]), for timing code that needs stats only."""
    from dtcond.datasets.loading import DatasetStats

    return DatasetStats(dataset_id="bench/synthetic-v0", env_id=None, env_kwargs={}, max_episode_steps=None,
                        obs_dim=obs_dim, action_kind="continuous", action_dim=act_dim, action_low=[-1.0] * act_dim,
                        action_high=[1.0] * act_dim, obs_mean=[0.0] * obs_dim, obs_std=[1.0] * obs_dim,
                        episode_returns=[0.0, 3000.0], max_episode_length=max_episode_length, num_episodes=2,
                        num_steps=2 * max_episode_length)


def random_policy(env_id: str, model: dict, seed: int = 0, env_kwargs: dict | None = None):
    """A ConditionedPolicy with freshly initialised weights, its stats taken from a few random episodes.

    Throughput does not depend on what the weights learned, so no training is needed; a tiny random
    dataset in a temp dir gives the real normalization stats and spaces (and records ``env_kwargs``,
    which every rollout of the policy then uses).
    """
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect, minari_root
    from dtcond.datasets.loading import load
    from dtcond.dt.model import DecisionTransformer
    from dtcond.dt.policy import ConditionedPolicy
    from dtcond.dt.training import model_config_for

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


def write(name: str, payload: dict, note: str | None = None) -> Path:
    """``results/<name>.json``: the payload, the machine it ran on, and ``note`` (e.g. "shared with other jobs")."""
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}.json"
    extra = {"note": note} if note else {}
    path.write_text(json.dumps({**payload, **extra, "machine": machine_info()}, indent=1, default=float))
    return path
