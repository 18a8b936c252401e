"""The online RL baseline: Stable-Baselines3 PPO/SAC on a dataset's env, trained on the env's reward.

Training saves SB3 checkpoints at regular intervals (for resuming, and to plot return and divergence
against training progress). Each checkpoint is also exported as a *code-free* bundle: the policy's
weights in safetensors and a JSON card (:mod:`dtcond.sb3_policy`, which also loads and runs them); loading
rebuilds the SB3 policy from primitive kwargs, because SB3 zips carry cloudpickled objects.

Default hyperparameters are the tuned ones of RL Baselines3 Zoo (``hyperparams/ppo.yml`` and
``sac.yml``) for the envs listed in :data:`TUNED`; SB3's defaults elsewhere.

Regularized PPO: ``kl_coef`` β toward the data's behaviour model β̂ (or ``kl_reference``, a history-conditioned
policy such as the seed's BC run), ``om_coef`` λ on the occupancy measure (ORPO), and ``cost_limit`` d with a
Lagrange multiplier (PPO-Lagrangian); each is an SB3 callback of :mod:`dtcond.penalties` that rewrites a rollout's
rewards before the advantages are computed. Each starts from ``bc_init_steps`` of behaviour cloning on the data
(:func:`clone_behavior`), as RLHF starts from the prior.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dtcond.config import RL_ALGOS, check_regularizer
from dtcond.data import DatasetStats
from dtcond.errors import DtcondError
from dtcond.penalties import DISCRIMINATOR_FILE, OM_CLIP, CostLagrangian, HistoryKLPenalty, KLPenalty, OccupancyPenalty, check_lagrangian
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
