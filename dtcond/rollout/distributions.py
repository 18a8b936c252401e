"""Binned action distributions for Box actions: a piecewise-uniform density per action dimension.

Each dimension's range [low, high] is cut into ``n`` equal bins; a distribution is a vector of bin
masses, and the density is uniform inside a bin. Such a density can be noisy or multimodal (unlike a
Gaussian), its log-prob and entropy are exact, and two of them on the same grid have an exact KL —
which is why the DT's head and the behaviour model β̂ share this family. Dimensions are independent
given the context (the density is a product over dimensions).

Any other continuous policy (e.g. SB3's Gaussian) is compared through its *projection* on the grid:
bin masses from its CDF. KL between projections is a lower bound on the KL between the densities
(data processing), and equals it when both are piecewise uniform on the same grid.

>>> import torch
>>> low, high = torch.tensor([-1.0]), torch.tensor([1.0])
>>> bin_index(torch.tensor([[-1.0], [0.0], [1.0]]), low, high, 4).tolist()
[[0], [2], [3]]
"""

from __future__ import annotations

import numpy as np
import torch


def bin_width(low: torch.Tensor, high: torch.Tensor, n: int) -> torch.Tensor:
    return (high - low) / n  # (act_dim,)


def bin_index(actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor, n: int) -> torch.Tensor:
    """The bin of each action coordinate: (..., act_dim) long in [0, n); the upper bound falls in the last bin."""
    idx = torch.floor((actions - low) / bin_width(low, high, n)).long()
    return idx.clamp(0, n - 1)


def log_prob(logits: torch.Tensor, actions: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Log-density of ``actions`` (..., act_dim) under bin logits (..., act_dim, n), summed over dimensions."""
    n = logits.shape[-1]
    logp = torch.log_softmax(logits.float(), dim=-1)  # (..., act_dim, n)
    idx = bin_index(actions, low, high, n)[..., None]  # (..., act_dim, 1)
    per_dim = logp.gather(-1, idx)[..., 0] - torch.log(bin_width(low, high, n))  # (..., act_dim)
    return per_dim.sum(-1)


def sample(logits: torch.Tensor, uniforms: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
           temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions (B, act_dim) drawn by inverse CDF, and the bin masses (B, act_dim, n) they came from.

    ``uniforms`` (B, 2 * act_dim): the first half picks each dimension's bin, the second the point
    inside it, so an episode's draws come from its own stream whatever shares its batch.
    """
    B, d, n = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, d, n)
    u = uniforms.to(probs)  # (B, 2d)
    bins = (probs.cumsum(-1) < u[:, :d, None]).sum(-1).clamp(max=n - 1)  # (B, d)
    return low + (bins + u[:, d:]) * bin_width(low, high, n), probs


def mode(logits: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre of each dimension's most likely bin (B, act_dim), and that one-bin distribution."""
    n = logits.shape[-1]
    bins = logits.argmax(-1)  # (B, d)
    probs = torch.nn.functional.one_hot(bins, n).float()
    return low + (bins + 0.5) * bin_width(low, high, n), probs


def rebin(masses: np.ndarray, n_to: int) -> np.ndarray:
    """Masses (..., n_from) of a piecewise-uniform density → masses on ``n_to`` equal bins of the same range."""
    n_from = masses.shape[-1]
    if n_from == n_to:
        return masses
    cdf = np.concatenate([np.zeros(masses.shape[:-1] + (1,)), np.cumsum(masses, -1)], -1)  # (..., n_from + 1)
    grid_from, grid_to = np.linspace(0, 1, n_from + 1), np.linspace(0, 1, n_to + 1)
    flat = cdf.reshape(-1, n_from + 1)
    at = np.stack([np.interp(grid_to, grid_from, row) for row in flat]).reshape(masses.shape[:-1] + (n_to + 1,))
    return np.diff(at, axis=-1)


def gaussian_masses(mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray, n: int) -> np.ndarray:
    """Bin masses (..., act_dim, n) of N(mean, std²) clipped to [low, high] (tails fall in the edge bins)."""
    from scipy.stats import norm

    edges = low[:, None] + (high - low)[:, None] * np.linspace(0, 1, n + 1)  # (act_dim, n + 1)
    cdf = norm.cdf((edges - mean[..., None]) / np.maximum(std[..., None], 1e-12))  # (..., act_dim, n + 1)
    cdf[..., 0], cdf[..., -1] = 0.0, 1.0  # clipping puts the mass beyond the bounds on the bounds
    return np.diff(cdf, axis=-1)


def entropy(masses: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Differential entropy (nats) of the piecewise-uniform density, summed over dimensions: (...,)."""
    p = np.clip(masses, 1e-12, 1.0)
    n = masses.shape[-1]
    return (-(p * np.log(p)).sum(-1) + np.log((np.asarray(high) - np.asarray(low)) / n)).sum(-1)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p‖q) between piecewise-uniform densities on the same grid, summed over dimensions: (...,)."""
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    return (p * (np.log(p) - np.log(q))).sum(-1).sum(-1)

