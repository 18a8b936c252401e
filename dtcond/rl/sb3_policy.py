"""SB3 policies as dtcond policies: the bundle format ``dtcond-sb3-policy`` (weights and a card) and the adapter
that rolls an SB3 policy out behind :class:`dtcond.rollout.contract.Policy`.

Training lives in :mod:`dtcond.rl.baselines`; this module only writes, reads and runs what it trained, so loading a
bundle (:func:`dtcond.load_policy`) never imports the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from dtcond.datasets.loading import DatasetStats
from dtcond.common.errors import DtcondError

CARD_FORMAT = "dtcond-sb3-policy"
BIN_GRID = 64  # bins per Box action dimension on which a Gaussian policy is projected for KL/entropy


def export_sb3_bundle(policy: torch.nn.Module, folder: Path, card: dict) -> Path:
    from safetensors.torch import save

    import dtcond
    from dtcond.common.fileio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    atomic_write(folder / "policy.safetensors", save(state))
    full = {"format": CARD_FORMAT, "dtcond_version": dtcond.__version__, **card}
    atomic_write(folder / "card.json", json.dumps(full, indent=1).encode())
    return folder


class SB3Policy:
    """An SB3 policy behind dtcond's policy contract (:class:`dtcond.rollout.contract.Policy`); ``deterministic`` as in
    SB3's ``evaluate_policy``, kept as the contract's ``greedy``."""

    def __init__(self, policy, stats: DatasetStats, algo: str, timesteps: int, source: str, deterministic: bool = True,
                 kind: str | None = None, param: float | None = None):
        self.policy = policy.eval()
        self.stats = stats
        self.algo = algo
        # Each regularized PPO is its own family, one policy per parameter (its card's kind and param): PPO-KL per
        # β toward β̂ ("ppo_kl:0.1@100000") or toward the BC policy ("ppo_kl_bc:0.1@100000"), ORPO per λ
        # ("ppo_om:1@100000"), PPO-Lagrangian per cost limit d ("ppo_lag:2@100000"); plain RL is its algo.
        self.kind = kind or algo
        self.param = None if param is None else float(param)
        self.timesteps = timesteps
        self.source = source
        self.greedy = bool(deterministic)
        self.condition_on_return = False
        self.cost_conditioned = False
        self._hash = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.param:g}@{self.timesteps}" if self.param is not None else f"{self.algo}@{self.timesteps}"

    env_id = property(lambda self: self.stats.env_id)
    train_step = property(lambda self: self.timesteps)

    @property
    def draws_per_step(self) -> int:
        """Uniforms per step from the evaluation's per-episode generator: one picks a Discrete action, one per
        dimension draws a Box action's Gaussian noise."""
        return 1 if self.stats.is_discrete else int(self.stats.action_dim)

    @property
    def fingerprint(self) -> str:
        if self._hash is None:
            from dtcond.dt.policy import weights_hash

            self._hash = weights_hash(self.policy)
        return f"{self._hash}-{'det' if self.greedy else 'stoch'}"

    def check_env(self, env) -> None:
        from dtcond.datasets.recorded import check_env_spaces

        check_env_spaces(env, self.stats)

    def make_env(self, **kwargs) -> gym.Env:
        from dtcond.datasets.recorded import make_env

        env = make_env(self.stats, **{**self.stats.env_kwargs, **kwargs})
        self.check_env(env)
        return env

    def begin(self, n: int):
        return None

    def keep(self, state, rows):
        return None

    @torch.no_grad()
    def act_batch(self, state, obs: np.ndarray, rtg: np.ndarray, uniforms: np.ndarray, ctg: np.ndarray | None = None):
        probs = None
        if self.stats.is_discrete:
            obs_t, _ = self.policy.obs_to_tensor(obs)
            probs_t = self.policy.get_distribution(obs_t).distribution.probs  # (A, n)
            probs = probs_t.cpu().numpy()
            if self.greedy:  # acting by the argmax: report the one-hot policy it actually runs
                actions = probs.argmax(-1)
                probs = np.eye(probs.shape[-1], dtype=probs.dtype)[actions]
            else:
                cdf = np.cumsum(probs, -1)
                u = np.asarray(uniforms).reshape(len(probs), -1)[:, :1]  # (A, 1)
                actions = np.minimum((cdf < u).sum(-1), probs.shape[-1] - 1)
            return actions, probs, None
        if self.greedy:  # SB3 rescales and clips the mode for us
            actions, _ = self.policy.predict(obs, deterministic=True)
            return actions, self._bin_masses(obs, np.asarray(actions)), None
        # Sampled from the episode's own uniforms (not torch's global generator), so the same env seeds
        # give the same noise whatever else ran before: z = Φ⁻¹(u) per dimension.
        from scipy.stats import norm

        u = np.clip(np.asarray(uniforms, dtype=np.float64).reshape(len(obs), -1), 1e-12, 1 - 1e-12)
        z = norm.ppf(u[:, : int(self.stats.action_dim)])
        low, high = np.asarray(self.stats.action_low), np.asarray(self.stats.action_high)
        obs_t, _ = self.policy.obs_to_tensor(obs)
        if self.algo == "sac":  # tanh-squashed Gaussian, rescaled from [-1, 1] to [low, high]
            mean, log_std, _ = self.policy.actor.get_action_dist_params(obs_t)
            squashed = np.tanh(mean.cpu().numpy() + log_std.exp().cpu().numpy() * z)
            actions = low + (squashed + 1) / 2 * (high - low)
        else:  # PPO: the per-step Gaussian (gSDE's marginal where use_sde), clipped to the bounds as SB3 does
            normal = self.policy.get_distribution(obs_t).distribution
            actions = np.clip(normal.mean.cpu().numpy() + normal.stddev.cpu().numpy() * z, low, high)
        actions = actions.astype(np.float32)
        return actions, self._bin_masses(obs, actions), None

    def _bin_masses(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The Box policy projected on equal bins of [low, high] (A, act_dim, n): see dtcond.rollout.distributions."""
        from dtcond.rollout import distributions

        low, high = np.asarray(self.stats.action_low), np.asarray(self.stats.action_high)
        n = BIN_GRID
        if self.greedy:  # a point mass: all of it in the action's bin
            idx = np.clip(np.floor((actions - low) / (high - low) * n).astype(np.int64), 0, n - 1)
            return np.eye(n)[idx]
        obs_t, _ = self.policy.obs_to_tensor(obs)
        if self.algo == "sac":  # tanh-squashed Gaussian, rescaled from [-1, 1] to [low, high]
            mean, log_std, _ = self.policy.actor.get_action_dist_params(obs_t)
            mean, std = mean.cpu().numpy(), log_std.exp().cpu().numpy()
            edges = np.clip(np.linspace(-1, 1, n + 1), -1 + 1e-7, 1 - 1e-7)
            from scipy.stats import norm

            cdf = norm.cdf((np.arctanh(edges)[None, None, :] - mean[..., None]) / std[..., None])
            cdf[..., 0], cdf[..., -1] = 0.0, 1.0
            return np.diff(cdf, axis=-1)
        # PPO: a Gaussian in action units, clipped to the bounds
        normal = self.policy.get_distribution(obs_t).distribution
        return distributions.gaussian_masses(normal.mean.cpu().numpy(), normal.stddev.cpu().numpy(), low, high, n)


def load_sb3_bundle(folder: Path) -> SB3Policy:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.sac.policies import SACPolicy

    card = json.loads((folder / "card.json").read_text())
    stats = DatasetStats.from_dict(card["stats"])
    from dtcond.datasets.recorded import make_env

    env = make_env(stats)
    cls = {"ppo": ActorCriticPolicy, "sac": SACPolicy}.get(card.get("algo"))
    if cls is None:
        raise DtcondError(f"{folder}: unknown baseline algo {card.get('algo')!r}")
    kwargs = dict(card.get("policy_kwargs") or {})
    if card.get("use_sde"):
        kwargs["use_sde"] = True
    policy = cls(env.observation_space, env.action_space, lambda _: 0.0, **kwargs)
    try:
        state = load_file(str(folder / "policy.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise DtcondError(f"{folder / 'policy.safetensors'} is corrupt or truncated ({exc})") from None
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DtcondError(f"{folder}: the weights do not match the card ({str(exc).splitlines()[0]})") from None
    env.close()
    kind, param = card_identity(card)
    return SB3Policy(policy, stats, card["algo"], int(card.get("timesteps", 0)), str(folder), kind=kind, param=param)


def card_identity(card: dict) -> tuple[str, float | None]:
    """(kind, parameter) of an SB3 bundle: as its card says, or, for a card written before cards named them,
    from its regularizer's keys.

    >>> card_identity({"algo": "ppo", "kl_coef": 1.0, "kl_reference": "runs/bc/policy"})
    ('ppo_kl_bc', 1.0)
    >>> card_identity({"algo": "ppo", "kind": "ppo_om", "param": 3.0})
    ('ppo_om', 3.0)
    """
    algo = card["algo"]
    if "kind" in card:
        return card["kind"], None if card.get("param") is None else float(card["param"])
    if card.get("cost_limit") is not None:
        return f"{algo}_lag", float(card["cost_limit"])
    if float(card.get("kl_coef", 0.0)) > 0:
        return (f"{algo}_kl_bc" if card.get("kl_reference") else f"{algo}_kl"), float(card["kl_coef"])
    if float(card.get("om_coef", 0.0)) > 0:
        return f"{algo}_om", float(card["om_coef"])
    return algo, None
