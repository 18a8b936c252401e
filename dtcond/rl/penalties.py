"""Reward penalties for PPO's rollouts: the regularizers of dtcond's regularized RL, as SB3 callbacks.

Each rewrites a finished rollout's rewards and recomputes its returns and advantages, so the penalty on later
steps is in every return, as the objective asks. :func:`dtcond.rl.baselines.train_baseline` attaches them.

**KL-regularized PPO** (family ``ppo_kl``, its ``kl_coef`` β > 0) maximizes E[Σ r_t − β·KL(π(·|s_t)‖β̂(·|s_t))], the RLHF
objective with the data's behaviour model β̂ (:mod:`dtcond.rl.behavior_model`) as the reference policy: its
optimum is the posterior β̂(τ)·exp(r(τ)/β) (Korbak, Perez & Buckley 2022). As in RLHF (TRL's PPO
trainer), each sampled step's reward gets the penalty −β·(log π(a|s) − log β̂(a|s)), whose expectation
under π is −β·KL; :class:`KLPenalty` applies it to every rollout before the advantages are computed,
so the penalty on future steps is in the returns, as the objective asks. The policy starts from
behaviour cloning on the data (``bc_init_steps``), as RLHF starts from the prior: a large β then
stays at the data and β → 0 is plain PPO.

**PPO-Lagrangian** (family ``ppo_lag``, its ``cost_limit`` d, for envs that report ``info["cost"]``) maximizes E[Σ r_t] subject
to E[Σ c_t] <= d through the Lagrangian E[Σ r_t − λ·c_t], with the multiplier λ >= 0 moved by dual
ascent on the episode cost, in the one-critic form of RCPO (Tessler et al. 2019): :class:`CostLagrangian`
updates λ after each rollout, then subtracts λ·c_t from its rewards before the advantages are computed.
``lambda_lr=0`` keeps λ at ``lambda_init``: PPO with a fixed cost penalty. It too starts from
``bc_init_steps`` of behaviour cloning on the data: from a random policy, the early episodes' high
cost drives λ up before the goal is ever reached, and PPO settles on never moving.

**Occupancy-measure-regularized PPO** (family ``ppo_om``, its ``om_coef`` λ > 0; ORPO, Laidlaw, Singhal & Dragan 2024) regularizes
the policy's state–action *occupancy* μ_π toward the data's μ_D instead of its per-step action distribution:
it maximizes E[Σ r_t] − λ·KL(μ_π‖μ_D). As in the reference implementation (cassidylaidlaw/orpo, its
``om_divergence_type="kl"``), a discriminator d(s, a) is trained by logistic regression to tell the
policy's rollout steps from the data's (loss softplus(−d(policy)) + softplus(d(data))), so that at its
optimum d = log μ_π(s,a)/μ_D(s,a); each rollout step's reward then gets −λ·d(s, a), whose expectation
under π is −λ·KL(μ_π‖μ_D). :class:`OccupancyPenalty` trains d on each rollout before penalizing it. Unlike
the reference, the data side is the offline dataset's steps (dtcond has no safe policy to roll out), and
d is clipped to ±``OM_CLIP`` nats. It starts from behaviour cloning, as PPO-KL does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from dtcond.common.errors import DtcondError
from dtcond.datasets.loading import DatasetStats, OfflineData

OM_CLIP = 10.0  # |d(s, a)| cap in nats: a step the data never shows would otherwise get an unbounded penalty
DISCRIMINATOR_FILE = "discriminator.safetensors"  # ORPO's d(s, a), beside a run's checkpoints
LAGRANGE_FILE = "lagrange.json"  # PPO-Lagrangian's λ per rollout


@dataclass
class PenaltyRun:
    """What one regularized PPO run gives its penalty to build from."""

    data: OfflineData  # the dataset the run regularizes toward
    seed: int
    out_dir: Path  # the run's folder: a penalty with state of its own keeps it here
    resuming: bool  # the run continues from a checkpoint: restore the penalty's state
    reference: Path | None = None  # a policy bundle to regularize toward (PPO-KL toward the seed's BC policy)
    options: dict = field(default_factory=dict)  # the family's fixed options (PPO-Lagrangian's lambda_lr, lambda_init)


class Penalty(BaseCallback):
    """A regularizer of PPO's rollouts: an SB3 callback that rewrites each finished rollout's rewards and
    recomputes its returns and advantages.

    A regularized-RL family is one subclass and one registration (:func:`dtcond.families.register`). The class
    says its records' ``kind`` and the key of its parameter (``param_key``, as the run and the bundle card record
    it), builds itself from one parameter value (:meth:`build`), and keeps any state of its own across a resume
    (:meth:`save_state`). :func:`dtcond.rl.baselines.train_baseline` starts the policy from behaviour cloning on
    the data when ``from_behavior`` (as RLHF starts from the prior), then builds the penalty.
    """

    kind: ClassVar[str]  # the records' policy_kind, e.g. "ppo_kl"
    param_key: ClassVar[str]  # the parameter's key in run.json and the bundle card, e.g. "kl_coef"
    from_behavior: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False  # it regularizes toward a policy bundle (PenaltyRun.reference)
    options: ClassVar[tuple[str, ...]] = ()  # the names of its fixed options

    @classmethod
    def build(cls, param: float, run: PenaltyRun) -> Penalty:
        raise NotImplementedError

    @classmethod
    def check_param(cls, param) -> None:
        """Refuse a parameter outside the family's range (by default a finite number > 0)."""
        if isinstance(param, bool) or not isinstance(param, (int, float)) or not (math.isfinite(param) and param > 0):
            raise DtcondError(f"{cls.kind}: {cls.param_key} must be a finite number > 0, got {param!r}")

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Refuse a bad value of one of its fixed options (the names are checked against ``options`` elsewhere)."""

    @property
    def param(self) -> float:
        return float(getattr(self, self.param_key))

    def identity(self) -> dict:
        """What makes two runs the same objective: checked before a resume (``run.json``) and written to the card."""
        return {self.param_key: self.param, **{k: float(getattr(self, k)) for k in self.options}}

    def card(self) -> dict:
        """What the policy bundle's card records of the penalty: its identity, and any fixed setting worth knowing."""
        return self.identity()

    def save_state(self, out_dir: Path) -> None:
        """Keep what a resume needs beside the run's checkpoints (nothing, unless the penalty learns)."""


class KLPenalty(Penalty):
    """Subtract β·(log π(a|s) − log β̂(a|s)) from each step's reward of a PPO rollout, then recompute
    its returns and advantages: the per-step KL penalty of RLHF toward the behaviour model β̂.

    log π is the log-probability the rollout sampled the action with (a constant here, as in TRL);
    β̂ sees the action the env ran (clipped to the bounds for Box actions). The rollout's mean penalty
    per step is logged as ``kl/penalty`` and its mean log-ratio as ``kl/log_ratio`` (a KL estimate).

    >>> behavior, _ = load_or_fit_behavior_model(data)                               # doctest: +SKIP
    >>> PPO("MlpPolicy", env).learn(100_000, callback=KLPenalty(behavior, data.stats, kl_coef=10.0))  # doctest: +SKIP
    """

    kind, param_key = "ppo_kl", "kl_coef"

    def __init__(self, behavior, stats: DatasetStats, kl_coef: float):
        super().__init__()
        self.behavior, self.stats, self.kl_coef = behavior, stats, float(kl_coef)

    @classmethod
    def build(cls, param: float, run: PenaltyRun) -> KLPenalty:
        from dtcond.rl.behavior_model import load_or_fit_behavior_model

        behavior, _ = load_or_fit_behavior_model(run.data)
        return cls(behavior, run.data.stats, param)

    def _on_step(self) -> bool:
        return True

    @torch.no_grad()
    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        n_steps, n_envs = buf.rewards.shape
        obs = self.stats.normalize_obs(buf.observations.reshape(n_steps * n_envs, -1))
        actions = buf.actions.reshape(n_steps * n_envs, -1)
        if self.stats.is_discrete:
            act_t = torch.as_tensor(actions[:, 0].astype(np.int64))
        else:
            act_t = torch.as_tensor(np.clip(actions, self.stats.action_low, self.stats.action_high).astype(np.float32))
        log_beta = self.behavior.log_prob(torch.as_tensor(obs, dtype=torch.float32), act_t).numpy().reshape(n_steps, n_envs)
        log_ratio = buf.log_probs - log_beta
        buf.rewards -= self.kl_coef * log_ratio
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        self.logger.record("kl/log_ratio", float(log_ratio.mean()))
        self.logger.record("kl/penalty", float(self.kl_coef * log_ratio.mean()))


class HistoryKLPenalty(Penalty):
    """:class:`KLPenalty` toward a history-conditioned reference: β·(log π(a_t|s_t) − log π_ref(a_t|h_t)), with
    π_ref a dtcond policy bundle (the data's BC policy, returns switched off) that sees the last K steps of
    the episode under way, as it does when it acts. Episodes span rollouts, so each env's last K − 1 steps
    and its episode timestep are carried from one rollout to the next. The rollout's mean log-ratio is
    logged as ``kl/log_ratio``.

    >>> PPO("MlpPolicy", env).learn(100_000, callback=HistoryKLPenalty(load_policy("runs/bc/policy"), 10.0))   # doctest: +SKIP
    """

    kind, param_key, needs_reference = "ppo_kl_bc", "kl_coef", True

    @classmethod
    def build(cls, param: float, run: PenaltyRun) -> HistoryKLPenalty:
        from dtcond.dt.checkpoints import load_dt_policy

        if run.reference is None:
            raise DtcondError("PPO-KL toward a BC policy needs that policy's bundle (the seed's BC run)")
        return cls(load_dt_policy(run.reference), param, reference_path=str(Path(run.reference).resolve()))

    def identity(self) -> dict:
        return {**super().identity(), "kl_reference": self.reference_path}

    def __init__(self, reference, kl_coef: float, reference_path: str | None = None):
        super().__init__()
        if reference.condition_on_return:
            raise DtcondError("the PPO-KL reference must be a BC policy (trained with condition_on_return=false)")
        self.reference, self.kl_coef = reference, float(kl_coef)
        self.reference_path = reference_path or getattr(reference, "source", None)  # what the card records
        self.K = int(reference.model.cfg.context_len)
        self._carry: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # env -> (obs, actions, timestep of the next step)

    def _on_step(self) -> bool:
        return True

    def reference_log_probs(self, observations: np.ndarray, actions: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
        """log π_ref(a_t | h_t) for a rollout's (n_steps, n_envs, ...) arrays; updates the carried histories."""
        n_steps, n_envs = episode_starts.shape
        out = np.zeros((n_steps, n_envs))
        discrete = self.reference.stats.is_discrete
        for e in range(n_envs):
            obs = observations[:, e].reshape(n_steps, -1)
            act = actions[:, e].reshape(n_steps, -1)
            act = act[:, 0].astype(np.int64) if discrete else act.astype(np.float32)
            cuts = [0, *[t for t in range(1, n_steps) if episode_starts[t, e]], n_steps]
            for a, b in zip(cuts[:-1], cuts[1:]):
                carry = self._carry.get(e) if a == 0 and not episode_starts[0, e] else None
                p_obs, p_act, t0 = carry if carry is not None else (obs[:0], act[:0], 0)
                lp = self.reference.step_log_probs(np.concatenate([p_obs, obs[a:b]]), np.concatenate([p_act, act[a:b]]),
                                                   np.zeros(len(p_obs) + b - a), [0.0], t0=t0 - len(p_obs))[0]
                out[a:b, e] = lp[len(p_obs):]
                keep = self.K - 1  # the history the next step would see
                h_obs, h_act = np.concatenate([p_obs, obs[a:b]])[-keep:], np.concatenate([p_act, act[a:b]])[-keep:]
                self._carry[e] = (h_obs, h_act, t0 + b - a)
        return out

    @torch.no_grad()
    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        log_ref = self.reference_log_probs(buf.observations, buf.actions, buf.episode_starts)
        log_ratio = buf.log_probs - log_ref
        buf.rewards -= (self.kl_coef * log_ratio).astype(buf.rewards.dtype)
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        self.logger.record("kl/log_ratio", float(log_ratio.mean()))
        self.logger.record("kl/penalty", float(self.kl_coef * log_ratio.mean()))




class OccupancyPenalty(Penalty):
    """ORPO's occupancy-measure penalty for a PPO rollout: train a discriminator d(s, a) to tell the
    rollout's steps from the data's, then subtract λ·clip(d(s, a)) from each step's reward and recompute
    the rollout's returns and advantages.

    d is trained by logistic regression (policy steps labelled 1, as many data steps drawn uniformly
    labelled 0), ``epochs`` passes of minibatches of ``batch_size`` per rollout, so it tracks the policy
    as it moves; at its optimum d = log μ_π/μ_D and the mean penalty per step, logged as ``om/log_ratio``,
    estimates KL(μ_π‖μ_D) per step. Inputs: the data-standardized observation and the action (one-hot
    for Discrete, scaled to [−1, 1] for Box). ``save``/``load`` keep d across a resume.

    >>> PPO("MlpPolicy", env).learn(100_000, callback=OccupancyPenalty(data, om_coef=1.0))   # doctest: +SKIP
    """

    kind, param_key = "ppo_om", "om_coef"

    @classmethod
    def build(cls, param: float, run: PenaltyRun) -> OccupancyPenalty:
        penalty = cls(run.data, param, seed=run.seed)
        if run.resuming:
            penalty.load(Path(run.out_dir) / DISCRIMINATOR_FILE)
        return penalty

    def card(self) -> dict:
        return {**self.identity(), "om_clip": self.clip}

    def save_state(self, out_dir: Path) -> None:
        self.save(Path(out_dir) / DISCRIMINATOR_FILE)

    def __init__(self, data, om_coef: float, seed: int = 0, hidden: int = 64, epochs: int = 10, batch_size: int = 256,
                 lr: float = 1e-3, clip: float = OM_CLIP):
        super().__init__()
        self.stats, self.om_coef, self.clip = data.stats, float(om_coef), float(clip)
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        obs = np.concatenate([t.observations for t in data.trajectories])
        acts = np.concatenate([t.actions for t in data.trajectories])
        self._data = self.features(obs, acts)
        self.gen = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))  # the discriminator's initial weights, reproducible per seed
        self.net = torch.nn.Sequential(torch.nn.Linear(self._data.shape[1], hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)

    def features(self, obs: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        """(N, obs features + action features) float32: what d sees of a step."""
        obs = self.stats.normalize_obs(np.asarray(obs).reshape(len(obs), -1)).reshape(len(obs), -1)
        if self.stats.is_discrete:
            n = int(self.stats.action_dim)
            act = np.eye(n, dtype=np.float32)[np.asarray(actions).reshape(len(actions), -1)[:, 0].astype(np.int64)]
        else:
            low, high = np.asarray(self.stats.action_low), np.asarray(self.stats.action_high)
            a = np.clip(np.asarray(actions, dtype=np.float32).reshape(len(actions), -1), low, high)
            act = (2 * (a - low) / (high - low) - 1).astype(np.float32)
        return torch.as_tensor(np.concatenate([obs, act], axis=1), dtype=torch.float32)

    def log_ratio(self, features: torch.Tensor) -> torch.Tensor:
        """d(s, a) clipped to ±clip: the estimate of log μ_π(s,a)/μ_D(s,a)."""
        with torch.no_grad():
            return self.net(features)[:, 0].clamp(-self.clip, self.clip)

    def fit(self, policy_features: torch.Tensor) -> float:
        """``epochs`` passes of logistic regression, policy steps against as many data steps; the last loss."""
        F = torch.nn.functional
        n = len(policy_features)
        loss = torch.tensor(float("nan"))
        for _ in range(self.epochs):
            data = self._data[torch.randint(len(self._data), (n,), generator=self.gen)]
            order = torch.randperm(n, generator=self.gen)
            for i in range(0, n, self.batch_size):
                idx = order[i:i + self.batch_size]
                loss = F.softplus(-self.net(policy_features[idx])).mean() + F.softplus(self.net(data[idx])).mean()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
        return loss.item()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        n_steps, n_envs = buf.rewards.shape
        feats = self.features(buf.observations.reshape(n_steps * n_envs, -1), buf.actions.reshape(n_steps * n_envs, -1))
        loss = self.fit(feats)
        d = self.log_ratio(feats).numpy().reshape(n_steps, n_envs)
        buf.rewards -= (self.om_coef * d).astype(buf.rewards.dtype)
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        self.logger.record("om/log_ratio", float(d.mean()))
        self.logger.record("om/penalty", float(self.om_coef * d.mean()))
        self.logger.record("om/discriminator_loss", loss)

    def save(self, path: Path) -> None:
        from safetensors.torch import save

        from dtcond.common.fileio import atomic_write

        atomic_write(Path(path), save({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}))

    def load(self, path: Path) -> None:
        """Resume d from ``path`` where it exists (a run killed before its first save starts d afresh)."""
        from safetensors.torch import load_file

        if Path(path).exists():
            self.net.load_state_dict(load_file(str(path)))


def check_lagrangian(cost_limit: float, lambda_lr: float, lambda_init: float) -> None:
    for name, value in (("cost_limit", cost_limit), ("lambda_lr", lambda_lr), ("lambda_init", lambda_init)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise DtcondError(f"{name} must be a finite number >= 0, got {value!r}")


def lagrange_update(lam: float, episode_costs, cost_limit: float, lr: float) -> float:
    """One dual-ascent step: ``max(0, λ + lr·(mean(episode_costs) − cost_limit))``; λ as it was with no episode.

    >>> lagrange_update(0.5, [3.0, 5.0], cost_limit=2.0, lr=0.1)
    0.7
    >>> lagrange_update(0.1, [0.0], cost_limit=2.0, lr=0.1)
    0.0
    """
    if len(episode_costs) == 0:
        return float(lam)
    return max(0.0, float(lam) + lr * (float(np.mean(episode_costs)) - cost_limit))


class CostLagrangian(Penalty):
    """PPO-Lagrangian: after each rollout, λ ← max(0, λ + lr·(J_c − d)), with J_c the mean total cost of the
    episodes that ended during the rollout (λ unchanged if none did); then each step's reward becomes
    r_t − λ·c_t, c_t = ``info["cost"]``, and the rollout's returns and advantages are recomputed.

    ``history`` keeps (timesteps, λ, J_c) per rollout; the logger gets ``cost/lambda`` and ``cost/episode_cost``.

    >>> PPO("MlpPolicy", env).learn(50_000, callback=CostLagrangian(cost_limit=2.0))   # doctest: +SKIP
    """

    kind, param_key, options = "ppo_lag", "cost_limit", ("lambda_lr", "lambda_init")

    @classmethod
    def check_param(cls, param) -> None:
        if isinstance(param, bool) or not isinstance(param, (int, float)) or not (math.isfinite(param) and param >= 0):
            raise DtcondError(f"{cls.kind}: cost_limit must be a finite number >= 0, got {param!r}")

    @classmethod
    def check_options(cls, options: dict) -> None:
        check_lagrangian(0.0, options.get("lambda_lr", 0.0), options.get("lambda_init", 0.0))  # an absent one: a valid stand-in

    @classmethod
    def build(cls, param: float, run: PenaltyRun) -> CostLagrangian:
        if run.data.stats.episode_costs is None:
            raise DtcondError(f"PPO-Lagrangian needs an env that reports info['cost']; dataset {run.data.stats.dataset_id!r} has no costs")
        lambda_lr, lambda_init = float(run.options.get("lambda_lr", 0.01)), float(run.options.get("lambda_init", 0.0))
        check_lagrangian(param, lambda_lr, lambda_init)
        start = _resumed_lambda(Path(run.out_dir), lambda_init) if run.resuming else lambda_init
        penalty = cls(param, lambda_lr, start)
        penalty.lambda_init = lambda_init  # the run's identity is its starting λ, not the resumed one
        return penalty

    def save_state(self, out_dir: Path) -> None:
        """λ per rollout, appended across resumes (``lagrange.json``); a resume starts from the last λ."""
        import json

        from dtcond.common.fileio import atomic_write

        path = Path(out_dir) / LAGRANGE_FILE
        history = (json.loads(path.read_text()) if path.exists() else []) + self.history
        atomic_write(path, json.dumps(history).encode())
        self.history = []

    def __init__(self, cost_limit: float, lambda_lr: float = 0.01, lambda_init: float = 0.0):
        super().__init__()
        check_lagrangian(cost_limit, lambda_lr, lambda_init)
        self.cost_limit, self.lambda_lr, self.lam = float(cost_limit), float(lambda_lr), float(lambda_init)
        self.lambda_init = float(lambda_init)
        self.history: list[dict] = []
        self._running = None  # per env: the cost of the episode under way (episodes span rollouts)

    def _on_rollout_start(self) -> None:
        self._costs, self._ended = [], []

    def _on_step(self) -> bool:
        # Called after env.step and before the step enters the buffer, once per step: row i of the buffer.
        cost = np.array([float(info.get("cost", 0.0)) for info in self.locals["infos"]])  # (n_envs,)
        if self._running is None:
            self._running = np.zeros_like(cost)
        self._costs.append(cost)
        self._running += cost
        for i in np.flatnonzero(self.locals["dones"]):
            self._ended.append(float(self._running[i]))
            self._running[i] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        costs = np.stack(self._costs)  # (n_steps, n_envs)
        if costs.shape != buf.rewards.shape:
            raise DtcondError(f"CostLagrangian saw {costs.shape} costs for a {buf.rewards.shape} rollout")
        self.lam = lagrange_update(self.lam, self._ended, self.cost_limit, self.lambda_lr)
        buf.rewards -= (self.lam * costs).astype(buf.rewards.dtype)
        buf.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])
        episode_cost = float(np.mean(self._ended)) if self._ended else None
        self.history.append({"timesteps": int(self.num_timesteps), "lambda": self.lam, "episode_cost": episode_cost})
        self.logger.record("cost/lambda", self.lam)
        if episode_cost is not None:
            self.logger.record("cost/episode_cost", episode_cost)


def _resumed_lambda(out_dir: Path, default: float) -> float:
    import json

    try:
        history = json.loads((out_dir / LAGRANGE_FILE).read_text())
        return float(history[-1]["lambda"]) if history else default
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return default
