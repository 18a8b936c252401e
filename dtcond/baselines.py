"""The online RL baseline: Stable-Baselines3 PPO/SAC on a dataset's env, trained on the env's reward.

Training saves SB3 checkpoints at regular intervals (for resuming, and to plot return and divergence
against training progress). Each checkpoint is also exported as a *code-free* bundle: the policy's
weights in safetensors and a JSON card (:mod:`dtcond.sb3_policy`, which also loads and runs them); loading
rebuilds the SB3 policy from primitive kwargs, because SB3 zips carry cloudpickled objects.

Default hyperparameters are the tuned ones of RL Baselines3 Zoo (``hyperparams/ppo.yml`` and
``sac.yml``) for the envs listed in :data:`TUNED`; SB3's defaults elsewhere.

**KL-regularized PPO** (``kl_coef`` β > 0) maximizes E[Σ r_t − β·KL(π(·|s_t)‖β̂(·|s_t))], the RLHF
objective with the data's behaviour model β̂ (:mod:`dtcond.roaming`) as the reference policy: its
optimum is the posterior β̂(τ)·exp(r(τ)/β) (Korbak, Perez & Buckley 2022). As in RLHF (TRL's PPO
trainer), each sampled step's reward gets the penalty −β·(log π(a|s) − log β̂(a|s)), whose expectation
under π is −β·KL; :class:`KLPenalty` applies it to every rollout before the advantages are computed,
so the penalty on future steps is in the returns, as the objective asks. The policy starts from
behaviour cloning on the data (``bc_init_steps``), as RLHF starts from the prior: a large β then
stays at the data and β → 0 is plain PPO.

**PPO-Lagrangian** (``cost_limit`` d, for envs that report ``info["cost"]``) maximizes E[Σ r_t] subject
to E[Σ c_t] <= d through the Lagrangian E[Σ r_t − λ·c_t], with the multiplier λ >= 0 moved by dual
ascent on the episode cost, in the one-critic form of RCPO (Tessler et al. 2019): :class:`CostLagrangian`
updates λ after each rollout, then subtracts λ·c_t from its rewards before the advantages are computed.
``lambda_lr=0`` keeps λ at ``lambda_init``: PPO with a fixed cost penalty. It too starts from
``bc_init_steps`` of behaviour cloning on the data: from a random policy, the early episodes' high
cost drives λ up before the goal is ever reached, and PPO settles on never moving.

**Occupancy-measure-regularized PPO** (``om_coef`` λ > 0; ORPO, Laidlaw, Singhal & Dragan 2024) regularizes
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

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

from dtcond.config import RL_ALGOS, check_regularizer
from dtcond.data import DatasetStats
from dtcond.errors import DtcondError
from dtcond.sb3_policy import export_sb3_bundle
import dtcond.envs  # noqa: F401  (registers the dtcond/* env ids)

ALGOS = RL_ALGOS

# RL Baselines3 Zoo, hyperparams/{ppo,sac}.yml ("# Tuned" entries); n_timesteps becomes the budget.
TUNED: dict[tuple[str, str], dict] = {
    ("ppo", "CartPole-v1"): dict(n_envs=8, budget=100_000, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
                                 n_epochs=20, ent_coef=0.0, learning_rate="lin_0.001", clip_range="lin_0.2"),
    ("ppo", "Pendulum-v1"): dict(n_envs=4, budget=100_000, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10,
                                 ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4),
    ("sac", "Pendulum-v1"): dict(n_envs=1, budget=20_000, learning_rate=1e-3),
}
OM_CLIP = 10.0  # |d(s, a)| cap in nats: a step the data never shows would otherwise get an unbounded penalty


def _schedule(value):
    """Zoo's "lin_0.001" → a linear schedule from 0.001 to 0 over training."""
    if isinstance(value, str):
        m = re.fullmatch(r"lin_([0-9.eE+-]+)", value)
        if not m:
            raise DtcondError(f"cannot read schedule {value!r}; use a number or 'lin_<start>'")
        start = float(m.group(1))
        return lambda progress_remaining: progress_remaining * start
    return value


def hyperparameters(algo: str, env_id: str, overrides: dict | None = None) -> dict:
    """Tuned defaults for (algo, env) with ``overrides`` on top; includes n_envs and budget."""
    params = {"n_envs": 1, "budget": 100_000, **TUNED.get((algo, env_id), {}), **(overrides or {})}
    return params


def _algo_class(algo: str):
    from stable_baselines3 import PPO, SAC

    return {"ppo": PPO, "sac": SAC}[algo]


@dataclass
class BaselineResult:
    out_dir: Path
    bundles: list[Path]  # one per checkpoint, in training order; the last is the final policy
    timesteps: int


def train_baseline(
    stats: DatasetStats,
    algo: str,
    out_dir: str | Path,
    budget: int | None = None,
    checkpoints: int = 5,
    hyperparams: dict | None = None,
    seed: int = 0,
    progress: bool = True,
    kl_coef: float = 0.0,
    bc_init_steps: int = 2000,
    cost_limit: float | None = None,
    lambda_lr: float = 0.01,
    lambda_init: float = 0.0,
    om_coef: float = 0.0,
    kl_reference: str | Path | None = None,
) -> BaselineResult:
    """Train ``algo`` on the env of the dataset ``stats`` describe; resume from the latest checkpoint.

    ``kl_coef`` β > 0 (PPO only) trains KL-regularized PPO toward the data's behaviour model, starting
    from ``bc_init_steps`` steps of behaviour cloning on the data (see the module doc); toward the Markov
    model β̂ by default, or with ``kl_reference`` (a dtcond BC bundle) toward that history-conditioned policy
    (:class:`HistoryKLPenalty`). ``cost_limit`` d
    (PPO only, an env with ``info["cost"]``) trains PPO-Lagrangian toward episode cost <= d, λ's dual-ascent
    step ``lambda_lr`` per unit of cost over d per rollout, also from behaviour cloning; λ per rollout is
    written to ``out_dir/lagrange.json``. ``om_coef`` λ > 0 (PPO only) trains occupancy-measure-regularized
    PPO (ORPO) toward the data's state–action occupancy, also from behaviour cloning; its discriminator is
    saved beside the checkpoints (``out_dir/discriminator.safetensors``) and resumed with them.

    >>> small = {"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 1}   # a tiny run (the default: 100k steps)
    >>> r = train_baseline(stats, "ppo", "runs/ppo", budget=256, checkpoints=1, hyperparams=small, progress=False)
    >>> r = train_baseline(stats, "ppo", "runs/ppo_kl0.1", budget=256, hyperparams=small, progress=False,
    ...                    kl_coef=0.1, bc_init_steps=20)
    >>> p = dtcond.load_policy(r.bundles[-1]); p.kind, p.param, p.label
    ('ppo_kl', 0.1, 'ppo_kl:0.1@256')
    """
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.env_util import make_vec_env

    if algo not in ALGOS:
        raise DtcondError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    if stats.env_id is None:
        raise DtcondError(f"dataset {stats.dataset_id!r} recorded no env id, so there is no env to train on")
    if algo == "sac" and stats.is_discrete:
        raise DtcondError(f"SAC needs continuous (Box) actions; {stats.env_id} has Discrete actions: use algo=ppo")
    kl_coef, om_coef = float(kl_coef), float(om_coef)
    check_regularizer(algo, "kl_coef", kl_coef, allow_zero=True)
    check_regularizer(algo, "om_coef", om_coef, allow_zero=True)
    if kl_reference is not None and not kl_coef > 0:
        raise DtcondError("kl_reference names PPO-KL's reference policy: it needs kl_coef > 0")
    if om_coef > 0 and (kl_coef > 0 or cost_limit is not None):
        raise DtcondError("om_coef (occupancy-regularized PPO) cannot be combined with kl_coef or cost_limit: one regularizer per run")
    if isinstance(bc_init_steps, bool) or not isinstance(bc_init_steps, int) or bc_init_steps < 0:
        raise DtcondError(f"bc_init_steps must be an integer >= 0, got {bc_init_steps!r}")
    if cost_limit is not None:
        check_lagrangian(cost_limit, lambda_lr, lambda_init)
        if algo != "ppo" or kl_coef > 0:
            raise DtcondError(f"cost_limit (PPO-Lagrangian) needs algo=ppo without kl_coef, got algo={algo}, kl_coef={kl_coef:g}")
        if stats.episode_costs is None:
            raise DtcondError(f"cost_limit needs an env that reports info['cost']; dataset {stats.dataset_id!r} has no costs")
    params = hyperparameters(algo, stats.env_id, hyperparams)
    n_envs = int(params.pop("n_envs"))
    budget = int(budget if budget is not None else params.pop("budget"))
    params.pop("budget", None)
    if budget < 1:
        raise DtcondError(f"budget must be >= 1 env step, got {budget}")
    if checkpoints < 1:
        raise DtcondError(f"checkpoints must be >= 1, got {checkpoints}")
    policy_kwargs = dict(params.pop("policy_kwargs", None) or {})
    for key in ("learning_rate", "clip_range"):
        if key in params:
            params[key] = _schedule(params[key])

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    from dtcond.recorded import make_env

    env = make_vec_env(lambda: make_env(stats, evaluation=False), n_envs=n_envs, seed=seed)  # the env the dataset recorded
    from dtcond.policy import check_env_spaces

    check_env_spaces(env, stats)
    cls = _algo_class(algo)
    latest = _latest_checkpoint(ckpt_dir, algo)
    if latest is not None:
        model = cls.load(latest, env=env, device="cpu")  # our own file, written by this function
    else:
        try:
            model = cls("MlpPolicy", env, seed=seed, device="cpu", policy_kwargs=policy_kwargs or None, **params)
        except TypeError as exc:
            raise DtcondError(f"bad {algo} hyperparameters: {exc}") from None
    identity = {"algo": algo, "kl_coef": kl_coef}
    if om_coef > 0:
        identity["om_coef"] = om_coef
    if kl_reference is not None:
        identity["kl_reference"] = str(Path(kl_reference).resolve())
    if cost_limit is not None:
        identity.update(cost_limit=float(cost_limit), lambda_lr=float(lambda_lr), lambda_init=float(lambda_init))
    _check_same_run(out_dir, identity, resuming=latest is not None)
    callbacks = []
    lagrangian = None
    if cost_limit is not None:
        if latest is None and bc_init_steps:  # from the data's behaviour: from scratch, λ rises before the goal is found
            from dtcond.data import load

            clone_behavior(model.policy, load(stats.dataset_id), bc_init_steps, seed=seed)
        lagrangian = CostLagrangian(cost_limit, lambda_lr, _resumed_lambda(out_dir, lambda_init) if latest is not None else lambda_init)
        callbacks.append(lagrangian)
    if kl_coef > 0:
        from dtcond.data import load
        from dtcond.roaming import load_or_fit_behavior_model

        data = load(stats.dataset_id)
        if latest is None and bc_init_steps:
            clone_behavior(model.policy, data, bc_init_steps, seed=seed)
        if kl_reference is None:
            behavior, _ = load_or_fit_behavior_model(data)
            callbacks.append(KLPenalty(behavior, stats, kl_coef))
        else:
            from dtcond.checkpoints import load_policy

            callbacks.append(HistoryKLPenalty(load_policy(kl_reference), kl_coef))
    occupancy = None
    if om_coef > 0:
        from dtcond.data import load

        data = load(stats.dataset_id)
        if latest is None and bc_init_steps:
            clone_behavior(model.policy, data, bc_init_steps, seed=seed)
        occupancy = OccupancyPenalty(data, om_coef, seed=seed)
        if latest is not None:
            occupancy.load(out_dir / DISCRIMINATOR_FILE)
        callbacks.append(occupancy)
    save_every = max(1, budget // checkpoints // n_envs)
    remaining = budget - model.num_timesteps
    if remaining > 0:
        callbacks.append(CheckpointCallback(save_every, str(ckpt_dir), name_prefix=algo))
        model.learn(remaining, callback=callbacks, progress_bar=progress, reset_num_timesteps=latest is None)
        model.save(ckpt_dir / f"{algo}_{model.num_timesteps}_steps.zip")
        if lagrangian is not None:  # λ per rollout, appended across resumes; a resume starts from the last λ
            from dtcond.fileio import atomic_write

            path = out_dir / "lagrange.json"
            history = (json.loads(path.read_text()) if path.exists() else []) + lagrangian.history
            atomic_write(path, json.dumps(history).encode())
        if occupancy is not None:
            occupancy.save(out_dir / DISCRIMINATOR_FILE)
    env.close()

    card_base = {"algo": algo, "use_sde": bool(params.get("use_sde", False)), "policy_kwargs": policy_kwargs,
                 "stats": stats.to_dict(), "seed": seed, "budget": budget, "n_envs": n_envs}
    if kl_coef > 0:
        card_base.update(kl_coef=kl_coef, bc_init_steps=bc_init_steps)
        if kl_reference is not None:
            card_base.update(kl_reference=str(Path(kl_reference).resolve()))
    if om_coef > 0:
        card_base.update(om_coef=om_coef, om_clip=OM_CLIP, bc_init_steps=bc_init_steps)
    if cost_limit is not None:
        card_base.update(cost_limit=float(cost_limit), lambda_lr=float(lambda_lr), lambda_init=float(lambda_init),
                         bc_init_steps=bc_init_steps)
    bundles = []
    for step, path in _checkpoints(ckpt_dir, algo):
        bundle = out_dir / "policies" / f"step_{step:09d}"
        if not (bundle / "card.json").exists():
            m = cls.load(path, device="cpu")
            export_sb3_bundle(m.policy, bundle, {**card_base, "timesteps": step})
        bundles.append(bundle)
    return BaselineResult(out_dir, bundles, model.num_timesteps)


class KLPenalty(BaseCallback):
    """Subtract β·(log π(a|s) − log β̂(a|s)) from each step's reward of a PPO rollout, then recompute
    its returns and advantages: the per-step KL penalty of RLHF toward the behaviour model β̂.

    log π is the log-probability the rollout sampled the action with (a constant here, as in TRL);
    β̂ sees the action the env ran (clipped to the bounds for Box actions). The rollout's mean penalty
    per step is logged as ``kl/penalty`` and its mean log-ratio as ``kl/log_ratio`` (a KL estimate).

    >>> behavior, _ = load_or_fit_behavior_model(data)                               # doctest: +SKIP
    >>> PPO("MlpPolicy", env).learn(100_000, callback=KLPenalty(behavior, data.stats, kl_coef=10.0))  # doctest: +SKIP
    """

    def __init__(self, behavior, stats: DatasetStats, kl_coef: float):
        super().__init__()
        self.behavior, self.stats, self.kl_coef = behavior, stats, float(kl_coef)

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


class HistoryKLPenalty(BaseCallback):
    """:class:`KLPenalty` toward a history-conditioned reference: β·(log π(a_t|s_t) − log π_ref(a_t|h_t)), with
    π_ref a dtcond policy bundle (the data's BC policy, returns switched off) that sees the last K steps of
    the episode under way, as it does when it acts. Episodes span rollouts, so each env's last K − 1 steps
    and its episode timestep are carried from one rollout to the next. The rollout's mean log-ratio is
    logged as ``kl/log_ratio``.

    >>> PPO("MlpPolicy", env).learn(100_000, callback=HistoryKLPenalty(load_policy("runs/bc/policy"), 10.0))   # doctest: +SKIP
    """

    def __init__(self, reference, kl_coef: float):
        super().__init__()
        if reference.condition_on_return:
            raise DtcondError("the PPO-KL reference must be a BC policy (trained with condition_on_return=false)")
        self.reference, self.kl_coef = reference, float(kl_coef)
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


DISCRIMINATOR_FILE = "discriminator.safetensors"


class OccupancyPenalty(BaseCallback):
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

        from dtcond.fileio import atomic_write

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


class CostLagrangian(BaseCallback):
    """PPO-Lagrangian: after each rollout, λ ← max(0, λ + lr·(J_c − d)), with J_c the mean total cost of the
    episodes that ended during the rollout (λ unchanged if none did); then each step's reward becomes
    r_t − λ·c_t, c_t = ``info["cost"]``, and the rollout's returns and advantages are recomputed.

    ``history`` keeps (timesteps, λ, J_c) per rollout; the logger gets ``cost/lambda`` and ``cost/episode_cost``.

    >>> PPO("MlpPolicy", env).learn(50_000, callback=CostLagrangian(cost_limit=2.0))   # doctest: +SKIP
    """

    def __init__(self, cost_limit: float, lambda_lr: float = 0.01, lambda_init: float = 0.0):
        super().__init__()
        check_lagrangian(cost_limit, lambda_lr, lambda_init)
        self.cost_limit, self.lambda_lr, self.lam = float(cost_limit), float(lambda_lr), float(lambda_init)
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
    path = out_dir / "lagrange.json"
    try:
        history = json.loads(path.read_text())
        return float(history[-1]["lambda"]) if history else default
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return default


def clone_behavior(policy, data, steps: int, seed: int = 0, batch_size: int = 256, lr: float = 1e-3) -> float:
    """Fit an SB3 actor-critic policy's action distribution to the data by maximum likelihood; returns
    the final batch's NLL per step. RLHF's starting point: the policy begins at the data's behaviour.

    >>> clone_behavior(PPO("MlpPolicy", env).policy, load("dtcond/cartpole/mixture-v0"), 500)   # doctest: +SKIP
    """
    obs = torch.as_tensor(np.concatenate([t.observations for t in data.trajectories]), dtype=torch.float32)
    acts = np.concatenate([t.actions for t in data.trajectories])
    acts = torch.as_tensor(acts.astype(np.int64) if data.stats.is_discrete else acts.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    policy.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        idx = torch.randint(len(obs), (min(batch_size, len(obs)),), generator=gen)
        _, log_prob, _ = policy.evaluate_actions(obs[idx].to(policy.device), acts[idx].to(policy.device))
        loss = -log_prob.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def _check_same_run(out_dir: Path, identity: dict, resuming: bool) -> None:
    """Refuse to resume a run trained with another objective (a plain PPO run under kl_coef=1, say)."""
    path = out_dir / "run.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if resuming and isinstance(saved, dict) and saved != identity:
            raise DtcondError(f"{out_dir} holds a run with {saved}, not {identity}; use another out_dir (or remove it)")
    if not path.exists() or not resuming:
        from dtcond.fileio import atomic_write

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(identity).encode())


def _checkpoints(ckpt_dir: Path, algo: str) -> list[tuple[int, Path]]:
    found = []
    for p in ckpt_dir.glob(f"{algo}_*_steps.zip"):
        m = re.fullmatch(rf"{algo}_(\d+)_steps\.zip", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _latest_checkpoint(ckpt_dir: Path, algo: str) -> Path | None:
    found = _checkpoints(ckpt_dir, algo)
    return found[-1][1] if found else None
