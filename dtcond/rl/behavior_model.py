"""The behaviour model β̂(a|s): a small MLP fitted once per dataset by maximum likelihood, and cached.

Categorical for Discrete actions; for Box actions the same piecewise-uniform family as the DT's head (``BINS``
equal bins per dimension, :mod:`dtcond.rollout.distributions`), so log-densities and KLs of the two are
comparable. PPO-KL's penalty toward the data (:mod:`dtcond.rl.penalties`) and the roaming scores
(:mod:`dtcond.analysis.roaming`) both read it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dtcond.datasets.loading import DatasetStats, OfflineData
from dtcond.datasets.storage import cache_dir
from dtcond.datasets.windows import split_by_episode
from dtcond.rollout import distributions

BINS = 64  # bins per Box action dimension for β̂; the DT's default action_bins, so their KL is exact
FORMAT = 2  # bump when β̂'s family changes, so stale cache entries are refitted



class BehaviorModel(nn.Module):
    """β̂(a|s): logits over actions (Discrete), or over ``bins`` equal bins per dimension (Box)."""

    def __init__(self, obs_dim: int, act_dim: int, discrete: bool, hidden: int = 128, bins: int = BINS,
                 action_low=None, action_high=None):
        super().__init__()
        self.discrete, self.act_dim, self.bins = discrete, act_dim, bins
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim if discrete else act_dim * bins))
        if not discrete:
            self.register_buffer("low", torch.tensor(action_low, dtype=torch.float32), persistent=False)
            self.register_buffer("high", torch.tensor(action_high, dtype=torch.float32), persistent=False)

    @classmethod
    def for_stats(cls, stats: DatasetStats, hidden: int = 128) -> BehaviorModel:
        return cls(stats.obs_dim, stats.action_dim, stats.is_discrete, hidden, action_low=stats.action_low,
                   action_high=stats.action_high)

    def logits(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs)  # (N, n) or (N, act_dim * bins)
        return out if self.discrete else out.view(len(out), self.act_dim, self.bins)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """log β̂(a|s) per row (a log-density for Box actions): obs (N, obs_dim) normalized, actions (N,) or (N, act_dim)."""
        if self.discrete:
            return -F.cross_entropy(self.net(obs), actions, reduction="none")
        return distributions.log_prob(self.logits(obs), actions, self.low, self.high)

    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        """Action probabilities (N, n), or bin masses (N, act_dim, bins)."""
        return torch.softmax(self.logits(obs), dim=-1)


def _dataset_fingerprint(stats: DatasetStats) -> str:
    payload = json.dumps([FORMAT, BINS, stats.dataset_id, stats.num_steps, stats.num_episodes, stats.episode_returns, stats.obs_mean])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _arrays(data: OfflineData, episodes) -> tuple[torch.Tensor, torch.Tensor]:
    obs = np.concatenate([data.stats.normalize_obs(data.trajectories[i].observations) for i in episodes])
    acts = np.concatenate([data.trajectories[i].actions for i in episodes])
    return torch.as_tensor(obs), torch.as_tensor(acts)


def fit_behavior_model(data: OfflineData, steps: int = 2000, batch_size: int = 512, hidden: int = 128,
                       seed: int = 0) -> tuple[BehaviorModel, dict]:
    """Fit β̂ by maximum likelihood on 90% of the episodes; report train and held-out NLL per step."""
    stats = data.stats
    torch.manual_seed(seed)
    model = BehaviorModel.for_stats(stats, hidden)
    train_idx, val_idx = split_by_episode(len(data.trajectories), 0.1, seed)
    obs, acts = _arrays(data, train_idx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(obs), (min(batch_size, len(obs)),), generator=gen)
        loss = -model.log_prob(obs[idx], acts[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        info = {"train_nll": float(-model.log_prob(obs, acts).mean())}
        if len(val_idx):
            vo, va = _arrays(data, val_idx)
            info["val_nll"] = float(-model.log_prob(vo, va).mean())
    return model, info


def load_or_fit_behavior_model(data: OfflineData, hidden: int = 128) -> tuple[BehaviorModel, dict]:
    """β̂ for this dataset from the cache, or fitted now and cached (safetensors + JSON)."""
    from safetensors.torch import load_file, save

    from dtcond.common.fileio import atomic_write

    stats = data.stats
    base = cache_dir() / "behavior" / f"{stats.dataset_id.replace('/', '__')}-{_dataset_fingerprint(stats)}"
    weights, meta = base.with_suffix(".safetensors"), base.with_suffix(".json")
    if weights.exists() and meta.exists():
        info = json.loads(meta.read_text())
        model = BehaviorModel.for_stats(stats, info.get("hidden", hidden))
        try:
            model.load_state_dict(load_file(str(weights)))
            return model.eval(), info
        except Exception:
            pass  # a damaged cache entry is refitted below
    model, info = fit_behavior_model(data, hidden=hidden)
    info["hidden"] = hidden
    base.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, save(model.state_dict()))
    atomic_write(meta, json.dumps(info))
    return model, info
