"""The online RL baseline: Stable-Baselines3 PPO/SAC on a dataset's env, trained on the env's reward.

Training saves SB3 checkpoints at regular intervals (for resuming, and to plot return and divergence
against training progress). Each checkpoint is also exported as a *code-free* bundle: the policy's
weights in safetensors and a JSON card (:mod:`dtcond.rl.sb3_policy`, which also loads and runs them); loading
rebuilds the SB3 policy from primitive kwargs, because SB3 zips carry cloudpickled objects.

Default hyperparameters are the tuned ones of RL Baselines3 Zoo (``hyperparams/ppo.yml`` and
``sac.yml``) for the envs listed in :data:`TUNED`; SB3's defaults elsewhere.

Regularized PPO: a :class:`~dtcond.rl.penalties.Penalty` (PPO-KL's β toward the data's behaviour model β̂ or toward a
history-conditioned ``reference`` such as the seed's BC run, ORPO's λ on the occupancy measure, PPO-Lagrangian's cost
limit d), an SB3 callback that rewrites a rollout's rewards before the advantages are computed, named by its family
(``regularizer``, see :mod:`dtcond.families`) and built from one parameter. Each starts from ``bc_init_steps`` of
behaviour cloning on the data (:func:`clone_behavior`), as RLHF starts from the prior.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dtcond.envs  # noqa: F401  (registers the dtcond/* env ids)
from dtcond.common.errors import DtcondError
from dtcond.config import RL_ALGOS
from dtcond.datasets.loading import DatasetStats
from dtcond.rl.penalties import Penalty, PenaltyRun
from dtcond.rl.sb3_policy import export_sb3_bundle

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
    penalty: type[Penalty] | None = None,
    param: float | None = None,
    bc_init_steps: int = 2000,
    reference: str | Path | None = None,
    options: dict | None = None,
) -> BaselineResult:
    """Train ``algo`` on the env of the dataset ``stats`` describe; resume from the latest checkpoint.

    With a ``penalty`` (a :class:`~dtcond.rl.penalties.Penalty` class, PPO only; ``dtcond.families.get(kind).penalty``)
    it trains that regularized PPO at parameter ``param`` (PPO-KL's β, ORPO's λ, PPO-Lagrangian's cost limit d),
    starting from ``bc_init_steps`` steps of behaviour cloning on the data; ``reference`` is the policy bundle a
    penalty regularizes toward where it needs one (PPO-KL toward BC), ``options`` its fixed options
    (PPO-Lagrangian's ``lambda_lr`` and ``lambda_init``). A penalty's own state (ORPO's discriminator, the
    Lagrange multiplier per rollout) is kept beside the checkpoints and resumed with them.

    >>> from dtcond.rl.penalties import KLPenalty
    >>> small = {"n_envs": 2, "n_steps": 128, "batch_size": 64, "n_epochs": 1}   # a tiny run (the default: 100k steps)
    >>> r = train_baseline(stats, "ppo", "runs/ppo", budget=256, checkpoints=1, hyperparams=small, progress=False)
    >>> r = train_baseline(stats, "ppo", "runs/ppo_kl0.1", budget=256, hyperparams=small, progress=False,
    ...                    penalty=KLPenalty, param=0.1, bc_init_steps=20)
    >>> p = dtcond.load_policy(r.bundles[-1]); p.kind, p.param, p.label
    ('ppo_kl', 0.1, 'ppo_kl:0.1@256')
    """
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.env_util import make_vec_env

    from dtcond.datasets.loading import load
    from dtcond.datasets.recorded import check_env_spaces, make_env

    if algo not in ALGOS:
        raise DtcondError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    if stats.env_id is None:
        raise DtcondError(f"dataset {stats.dataset_id!r} recorded no env id, so there is no env to train on")
    if algo == "sac" and stats.is_discrete:
        raise DtcondError(f"SAC needs continuous (Box) actions; {stats.env_id} has Discrete actions: use algo=ppo")
    _check_penalty(algo, penalty, param, reference, options)
    if isinstance(bc_init_steps, bool) or not isinstance(bc_init_steps, int) or bc_init_steps < 0:
        raise DtcondError(f"bc_init_steps must be an integer >= 0, got {bc_init_steps!r}")
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
    env = make_vec_env(lambda: make_env(stats, evaluation=False), n_envs=n_envs, seed=seed)  # the env the dataset recorded
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
    callbacks, regularizer = [], None
    if penalty is not None:
        data = load(stats.dataset_id)
        if latest is None and bc_init_steps and penalty.from_behavior:  # a fresh run starts at the data's behaviour
            clone_behavior(model.policy, data, bc_init_steps, seed=seed)
        run = PenaltyRun(data, seed, out_dir, resuming=latest is not None,
                         reference=Path(reference) if reference is not None else None, options=dict(options or {}))
        regularizer = penalty.build(float(param), run)
        callbacks.append(regularizer)
    identity = {"algo": algo, "kl_coef": 0.0, **(regularizer.identity() if regularizer else {})}
    _check_same_run(out_dir, identity, resuming=latest is not None)
    save_every = max(1, budget // checkpoints // n_envs)
    remaining = budget - model.num_timesteps
    if remaining > 0:
        callbacks.append(CheckpointCallback(save_every, str(ckpt_dir), name_prefix=algo))
        model.learn(remaining, callback=callbacks, progress_bar=progress, reset_num_timesteps=latest is None)
        model.save(ckpt_dir / f"{algo}_{model.num_timesteps}_steps.zip")
        if regularizer is not None:
            regularizer.save_state(out_dir)
    env.close()

    card_base = {"algo": algo, "use_sde": bool(params.get("use_sde", False)), "policy_kwargs": policy_kwargs,
                 "stats": stats.to_dict(), "seed": seed, "budget": budget, "n_envs": n_envs}
    if regularizer is not None:
        card_base.update(kind=regularizer.kind, param=regularizer.param,
                         **regularizer.card(), bc_init_steps=bc_init_steps)
    bundles = []
    for step, path in _checkpoints(ckpt_dir, algo):
        bundle = out_dir / "policies" / f"step_{step:09d}"
        if not (bundle / "card.json").exists():
            m = cls.load(path, device="cpu")
            export_sb3_bundle(m.policy, bundle, {**card_base, "timesteps": step})
        bundles.append(bundle)
    return BaselineResult(out_dir, bundles, model.num_timesteps)


def _check_penalty(algo: str, penalty, param, reference, options) -> None:
    """One line for a regularizer asked for wrongly, before any work."""
    if penalty is None:
        if param is not None or reference is not None or options:
            raise DtcondError("param, reference and options belong to a regularized run: name its penalty (a registered family)")
        return
    if not (isinstance(penalty, type) and issubclass(penalty, Penalty)):
        raise DtcondError(f"penalty must be a dtcond.rl.penalties.Penalty class (dtcond.families.get(kind).penalty), got {penalty!r}")
    if param is None:
        raise DtcondError(f"{penalty.kind} needs its parameter ({penalty.param_key}): param=<value>")
    if algo != "ppo":
        raise DtcondError(f"{penalty.kind}: regularized RL needs algo=ppo, got algo={algo}")
    penalty.check_param(param)
    if penalty.needs_reference and reference is None:
        raise DtcondError(f"{penalty.kind} regularizes toward a policy: give its bundle as reference")
    if not penalty.needs_reference and reference is not None:
        raise DtcondError(f"{penalty.kind} takes no reference policy (reference names the policy PPO-KL-BC regularizes toward)")
    unknown = sorted(set(options or {}) - set(penalty.options))
    if unknown:
        raise DtcondError(f"{penalty.kind} takes the options {list(penalty.options) or 'none'}, not {', '.join(unknown)}")
    penalty.check_options(options or {})


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
    """Refuse to resume a run trained with another objective (a plain PPO run resumed as PPO-KL, say)."""
    path = out_dir / "run.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if resuming and isinstance(saved, dict) and saved != identity:
            raise DtcondError(f"{out_dir} holds a run with {saved}, not {identity}; use another out_dir (or remove it)")
    if not path.exists() or not resuming:
        from dtcond.common.fileio import atomic_write

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
