"""How far a policy roams from its data: divergence from the behaviour model β̂(a|s) (:mod:`dtcond.rl.behavior_model`), state novelty, and mode collapse.

- **Divergence from the behaviour data.** β̂ is a small MLP fitted once per dataset by maximum
  likelihood and cached: categorical for Discrete actions, and for Box actions the same
  piecewise-uniform family as the DT's head (``BINS`` equal bins per dimension,
  :mod:`dtcond.rollout.distributions`), so log-densities and KLs of the two are comparable.
  Per episode:
  - ``kl_behavior``: the mean per-step KL(π(·|s)‖β̂(·|s)), exact where the policy's action
    distribution is known (Discrete heads, the binned DT head with the same grid); for other Box
    policies (SB3 Gaussians) it is the KL of their projection on the grid, a lower bound.
    Deterministic policies are one-hot (on the grid): their KL is −log β̂ of the action (bin).
  - ``cross_entropy_behavior``: the mean of −log β̂(a_t|s_t) over the actions taken, a Monte Carlo
    estimate of the cross-entropy H(π, β̂) = H(π) + KL(π‖β̂). It is *not* a divergence: a policy that
    always plays β̂'s mode scores below the data itself. It is the only column for the data's own rows.
- **State novelty.** The distance, in normalized observation space, from each visited state to its
  nearest dataset state (a k-d tree), and the fraction of steps farther than the dataset's own 99th
  percentile of nearest-other-state distances.
- **Mode collapse.** The policy's action entropy where its distribution is known (nats per step; for
  Box actions the differential entropy of the binned density; for the data's own episodes, β̂'s
  entropy on their states, the data's behaviour as far as a state-conditioned model sees it), and a signature of each episode's
  discretized action sequence, so a report can count distinct trajectories per target.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from dtcond.datasets.loading import DatasetStats, OfflineData
from dtcond.rl.behavior_model import BINS, BehaviorModel, load_or_fit_behavior_model
from dtcond.rollout import distributions
from dtcond.rollout.records import check_columns, episode_record


def applies_to(stats) -> bool:
    """Whether roaming metrics apply to a dataset: vector observations. The behaviour model and the
    novelty tree work on vectors; image frames are skipped (``dtcond eval`` says so)."""
    return stats.codec.kind != "image"


class StateIndex:
    """Nearest dataset states in normalized observation space (a k-d tree over up to ``max_points``)."""

    def __init__(self, data: OfflineData, max_points: int = 50_000, seed: int = 0):
        from scipy.spatial import cKDTree

        obs = np.concatenate([data.stats.normalize_obs(t.observations) for t in data.trajectories])
        if len(obs) > max_points:
            obs = obs[np.random.default_rng(seed).choice(len(obs), max_points, replace=False)]
        self.points = obs
        self.tree = cKDTree(obs)
        # The data's own spread: distance from a dataset state to its nearest *other* dataset state.
        sample = obs[np.random.default_rng(seed + 1).choice(len(obs), min(5000, len(obs)), replace=False)]
        self.p99 = float(np.quantile(self.tree.query(sample, k=2)[0][:, 1], 0.99)) if len(obs) > 1 else 0.0

    def distances(self, obs_normalized: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        if exclude_self:
            return self.tree.query(obs_normalized, k=2)[0][:, 1]
        return self.tree.query(obs_normalized, k=1)[0]


@dataclass
class RoamingScorer:
    """Scores one episode (states, actions, the policy's action probabilities if known) against the data.

    With ``likelihood`` (the data's exact one, :class:`dtcond.behavior.likelihood.DataLikelihood`, for datasets
    that recorded their behaviour) every episode also gets its trajectory-level divergence from the data:

    - ``logp_data``: log p_data(τ), up to the dynamics' terms;
    - ``logp_policy``: Σ_t log π(a_t|h_t) of the policy's own actions, where its distribution is known
      (for a target drawn per episode, given the drawn target);
    - ``trajectory_kl``: log p_π(τ) − log p_data(τ) in nats per episode, whose mean over a policy's episodes
      estimates KL(p_π‖p_data). For a target drawn per episode (``quantilizer:q``) ``log p_π(τ)`` is the
      marginal over the target's known distribution where the policy can score other targets
      (``logp_policy_marginal``), and ``trajectory_kl_conditional`` keeps the given-the-target value, whose
      mean over-estimates the KL by the mutual information between target and trajectory;
    - ``support_violation``: the episode took an action no behaviour component takes (p_data(τ) = 0, so
      the KL is infinite); ``trajectory_kl`` is then None;
    - ``kl_by_step``: log π(a_t|h_t) − log p_data(a_t|h_t) at each step (given the target; p_data's the mixture's
      posterior predictive), summing to ``trajectory_kl_conditional`` (``trajectory_kl`` for a fixed target): its
      mean over episodes at step t is where along the episode the trajectory KL accrues;
    - ``component_loglik`` and ``component_posterior``: log p_k(τ) and p(k|τ) per behaviour component, and
      ``component_posterior_entropy`` (nats): how ambiguous the episode's component is.
    ``kl_estimator`` says which estimator the numbers come from ("exact"), None without a likelihood.
    """

    stats: DatasetStats
    behavior: BehaviorModel
    index: StateIndex
    likelihood: object | None = None  # dtcond.behavior.likelihood.DataLikelihood

    @classmethod
    def for_data(cls, data: OfflineData, exact: bool = True) -> RoamingScorer:
        """β̂ and the state index for ``data``, and its exact likelihood where it recorded its behaviour (``exact``)."""
        from dtcond.behavior.likelihood import DataLikelihood

        behavior, _ = load_or_fit_behavior_model(data)
        likelihood = DataLikelihood.for_dataset(data.stats.dataset_id, stats=data.stats) if exact else None
        return cls(data.stats, behavior, StateIndex(data), likelihood)

    def trajectory_scores(self, obs: np.ndarray, actions: np.ndarray, probs: np.ndarray | None = None,
                          logp_policy_marginal: float | None = None, in_data: bool = False) -> dict:
        """The trajectory-level fields of the class doc for one episode (all None without a likelihood)."""
        out = dict.fromkeys(("logp_data", "logp_policy", "logp_policy_marginal", "trajectory_kl", "trajectory_kl_conditional",
                             "trajectory_kl_per_step", "support_violation", "kl_estimator", "component_loglik",
                             "component_posterior", "component_posterior_entropy", "kl_by_step"))
        lik = self.likelihood
        if lik is None:
            return out
        from dtcond.behavior.likelihood import entropy_nats

        ll = lik.component_log_likelihoods(obs, actions)
        logp_data = float(np.logaddexp.reduce(lik.log_weights + ll))
        post = lik.posterior(ll)
        out.update(logp_data=logp_data, kl_estimator="exact", component_loglik=[float(x) for x in ll],
                   component_posterior=[float(x) for x in post], support_violation=not np.isfinite(logp_data),
                   component_posterior_entropy=entropy_nats(post) if np.isfinite(post).all() else None)
        if in_data:  # the data's own episodes: the policy is p_data itself
            out.update(logp_policy=logp_data, trajectory_kl=0.0, trajectory_kl_per_step=0.0)
            return out
        if probs is None:
            return out
        logp_steps = action_log_probs(probs, actions, self.stats, lik.bins)  # (T,) log π(a_t|h_t)
        logp = float(logp_steps.sum())
        out["logp_policy"] = logp
        if np.isfinite(logp_data):  # where along the episode the nats accrue: log π(a_t|h_t) − log p_data(a_t|h_t)
            out["kl_by_step"] = [round(float(x), 5) for x in logp_steps - lik.predictive_log_probs(obs, actions)]
        if logp_policy_marginal is not None:
            out["logp_policy_marginal"] = float(logp_policy_marginal)
        if np.isfinite(logp_data):
            joint = logp_policy_marginal if logp_policy_marginal is not None else logp
            out["trajectory_kl"] = float(joint - logp_data)
            out["trajectory_kl_per_step"] = out["trajectory_kl"] / max(len(obs), 1)
            if logp_policy_marginal is not None:
                out["trajectory_kl_conditional"] = float(logp - logp_data)
        return out

    @torch.no_grad()
    def score_episode(self, obs: np.ndarray, actions: np.ndarray, probs: np.ndarray | None = None,
                      in_data: bool = False, logp_policy_marginal: float | None = None) -> dict:
        """Per-episode roaming metrics; ``obs`` raw (T, obs_dim), ``actions`` (T,) or (T, act_dim)."""
        traj = self.trajectory_scores(obs, actions, probs, logp_policy_marginal, in_data)
        out = self._step_scores(obs, actions, probs, in_data)
        out.update(traj)
        return out

    def _step_scores(self, obs: np.ndarray, actions: np.ndarray, probs: np.ndarray | None, in_data: bool) -> dict:
        obs_n = self.stats.normalize_obs(obs)
        obs_t = torch.as_tensor(obs_n)
        if self.stats.is_discrete:
            act_t = torch.as_tensor(np.asarray(actions).reshape(-1).astype(np.int64))
        else:
            act_t = torch.as_tensor(np.asarray(actions, dtype=np.float32).reshape(len(obs), -1))
        out = {"cross_entropy_behavior": float(-self.behavior.log_prob(obs_t, act_t).mean())}
        out["kl_behavior"] = out["entropy"] = None  # the policy's distribution is unknown (the data's own rows)
        if probs is None and in_data:
            # The data's own action entropy, estimated by β̂'s on the data's states: what to hold a
            # policy's entropy against when asking whether it collapsed onto fewer modes than the data.
            probs = self.behavior.probs(obs_t).double().numpy()
            kl_known = False
        else:
            kl_known = True
        if probs is not None:
            pi = np.asarray(probs, dtype=np.float64)
            beta = self.behavior.probs(obs_t).double().numpy()
            if self.stats.is_discrete:
                pi, beta = pi[..., None, :], beta[..., None, :]  # one "dimension"
                low, high = np.zeros(1), np.ones(1) * pi.shape[-1]  # unit-width bins: entropy is the discrete one
            else:
                pi = distributions.rebin(pi, beta.shape[-1])
                low, high = np.asarray(self.stats.action_low), np.asarray(self.stats.action_high)
            out["kl_behavior"] = float(distributions.kl(pi, beta).mean()) if kl_known else None
            out["entropy"] = float(distributions.entropy(pi, low, high).mean())
        dist = self.index.distances(obs_n, exclude_self=in_data)
        out["novelty"] = float(dist.mean())
        out["novel_fraction"] = float((dist > self.index.p99).mean())
        out["trajectory_signature"] = self.signature(actions)
        return out

    def signature(self, actions: np.ndarray) -> str:
        """A hash of the discretized action sequence (3 bins per dimension for Box actions)."""
        a = np.asarray(actions)
        if not self.stats.is_discrete:
            low, high = np.asarray(self.stats.action_low), np.asarray(self.stats.action_high)
            a = np.clip(((a.reshape(len(a), -1) - low) / (high - low) * 3).astype(np.int64), 0, 2)
        return hashlib.sha1(np.ascontiguousarray(a.astype(np.int64)).tobytes()).hexdigest()[:12]


def action_log_probs(probs: np.ndarray, actions: np.ndarray, stats: DatasetStats, bins: int = BINS) -> np.ndarray:
    """log π(a_t|h_t) per step (T,) from the distributions a policy reported: probabilities (T, n) for
    Discrete actions, or bin masses (T, act_dim, m) for Box actions, rebinned to ``bins`` equal bins so the
    log-density is on the grid the data's likelihood uses (exact for piecewise-uniform policies).

    >>> action_log_probs(np.array([[0.25, 0.75]]), np.array([1]), None).round(4).tolist()
    [-0.2877]
    """
    probs = np.asarray(probs, dtype=np.float64)
    T = len(probs)
    with np.errstate(divide="ignore"):
        if probs.ndim == 2:
            return np.log(probs[np.arange(T), np.asarray(actions).reshape(-1).astype(np.int64)])
        masses = distributions.rebin(probs, bins)  # (T, d, bins)
        low, high = np.asarray(stats.action_low), np.asarray(stats.action_high)
        idx = np.clip(np.floor((np.asarray(actions, dtype=np.float64).reshape(T, -1) - low) / (high - low) * bins).astype(np.int64),
                      0, bins - 1)
        per_dim = np.log(np.take_along_axis(masses, idx[..., None], -1)[..., 0]) - np.log((high - low) / bins)
    return per_dim.sum(-1)


def dataset_records(data: OfflineData, scorer: RoamingScorer | None = None) -> list[dict]:
    """The dataset itself as rows of the results table (policy kind "data"), one per episode."""
    records = []
    for i, traj in enumerate(data.trajectories):
        rec = episode_record(
            f"data|{data.stats.dataset_id}|ep{i}", "data", "data", "data",
            run_id="data",
            train_step=None,
            policy=data.stats.dataset_id,
            env_id=data.stats.env_id,
            dataset_id=data.stats.dataset_id,
            target_spec="none",
            target=None,
            target_quantile=None,
            ood=False,
            seed=None,
            episode=i,
            episode_return=traj.episode_return,
            length=len(traj),
            terminated=traj.terminated,
            truncated=traj.truncated,
            true_return=float(traj.true_rewards.sum()) if traj.true_rewards is not None else None,
            cost=float(traj.costs.sum()) if traj.costs is not None else None,
        )
        if scorer is not None:
            rec.update(check_columns(scorer.score_episode(traj.observations, traj.actions, in_data=True)))
        records.append(rec)
    return records
