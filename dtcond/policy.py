"""A trained DT as a stateful, return-conditioned policy for one env."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from dtcond.data import DatasetStats, check_spaces
from dtcond.errors import DtcondError
from dtcond.model import DecisionTransformer


class ConditionedPolicy:
    """``reset(target)`` then ``act(obs, reward)`` each step; the return-to-go falls by each reward.

    Discrete actions are *sampled* from the model's distribution by default (``greedy=False``):
    conditioning imitates the data's episodes at that return, noise included; the argmax would
    play the most common action whatever the target. Continuous heads predict the mean action.

    Each ``act`` feeds one step to the model's key/value cache, so a step costs O(K) attention,
    not a recompute of the whole window.

    >>> policy = dtcond.load_policy("outputs/.../policy")          # doctest: +SKIP
    >>> env = policy.make_env(); obs, _ = env.reset(seed=0)         # doctest: +SKIP
    >>> policy.reset(target=400.0)                                  # doctest: +SKIP
    >>> action = policy.act(obs)                                    # doctest: +SKIP
    """

    def __init__(self, model: DecisionTransformer, stats: DatasetStats, condition_on_return: bool = True,
                 greedy: bool = False, temperature: float = 1.0, source: str | None = None):
        self.model = model.eval()
        self.stats = stats
        self.condition_on_return = condition_on_return
        self.greedy = greedy
        self.temperature = temperature
        self.source = source
        self._state = None
        self._rtg = None
        self._prev_action = None
        self._rng = np.random.default_rng()
        self._weights_hash = None
        if temperature <= 0 or not math.isfinite(temperature):
            raise DtcondError(f"temperature must be a positive number, got {temperature}")

    @property
    def config(self):
        return self.model.cfg

    @property
    def kind(self) -> str:
        """"dt" for a return-conditioned policy, "bc" for one trained without returns."""
        return "dt" if self.condition_on_return else "bc"

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and the decoding mode, so results tables key episodes by it."""
        if self._weights_hash is None:
            import hashlib

            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._weights_hash = h.hexdigest()[:12]
        if not self.config.discrete:
            return self._weights_hash
        return f"{self._weights_hash}-{'greedy' if self.greedy else f't{self.temperature:g}'}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def env_id(self) -> str | None:
        return self.stats.env_id

    def make_env(self, seed: int | None = None, **kwargs) -> gym.Env:
        """The env the policy's data came from, built from the id and kwargs in its card."""
        if self.stats.env_id is None:
            raise DtcondError("this policy's dataset recorded no env id; make the env yourself")
        env = gym.make(self.stats.env_id, **{**self.stats.env_kwargs, **kwargs})
        self.check_env(env)
        if seed is not None:
            env.action_space.seed(seed)
        return env

    def check_env(self, env) -> None:
        """Refuse an env whose spaces differ from the ones the policy was trained on."""
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        check_spaces(obs_space, act_space)
        obs_dim = int(np.prod(obs_space.shape)) if obs_space.shape else sum(int(np.prod(s.shape)) for s in obs_space.spaces.values())
        discrete = isinstance(act_space, gym.spaces.Discrete)
        act_dim = int(act_space.n) if discrete else int(act_space.shape[0])
        if (obs_dim, discrete, act_dim) != (self.stats.obs_dim, self.stats.is_discrete, self.stats.action_dim):
            raise DtcondError(
                f"env spaces {obs_space} / {act_space} do not match the policy's "
                f"(obs_dim {self.stats.obs_dim}, {self.stats.action_kind} actions of size {self.stats.action_dim})"
            )

    def reset(self, target: float, seed: int | None = None) -> None:
        """Start an episode conditioned on the return ``target``; ``seed`` seeds action sampling."""
        target = float(target)
        if not math.isfinite(target):
            raise DtcondError(f"target return must be finite, got {target}")
        self._rtg = target
        self._state = self.model.start(1, device=self.device)
        self._prev_action = None
        self._rng = np.random.default_rng(seed)

    @torch.inference_mode()
    def act(self, obs, reward: float | None = None):
        """The action for ``obs``; pass the reward the previous action earned (None on the first step)."""
        if self._state is None:
            raise DtcondError("call policy.reset(target=...) before policy.act(obs)")
        if reward is not None and self._state.step > 0:
            self._rtg -= float(reward)
        obs_t = torch.as_tensor(self._flat_obs(obs), device=self.device)[None]  # (1, obs_dim)
        rtg = self._rtg if self.condition_on_return else 0.0
        rtg_t = torch.tensor([rtg], dtype=torch.float32, device=self.device)  # (1,)
        out, self._state = self.model.step(self._state, rtg_t, obs_t, self._prev_action)
        action = self.select_action(out, self._rng.random(1))  # (1,) or (1, act_dim)
        self._prev_action = action
        if self.config.discrete:
            return int(action[0])
        return action[0].cpu().numpy()

    def select_action(self, out: torch.Tensor, uniforms: np.ndarray) -> torch.Tensor:
        """Actions from a batch of head outputs: continuous as is, discrete greedy or sampled.

        Sampling inverts the CDF at ``uniforms`` (one U(0,1) draw per row, from each episode's own
        stream), so an episode's actions do not depend on which other episodes share its batch.
        """
        if not self.config.discrete:
            return out
        if self.greedy:
            return out.argmax(-1)
        cdf = torch.softmax(out.float() / self.temperature, dim=-1).cumsum(-1)  # (B, n)
        u = torch.as_tensor(uniforms, dtype=cdf.dtype, device=cdf.device)[:, None]  # (B, 1)
        return (cdf < u).sum(-1).clamp(max=cdf.shape[-1] - 1)

    def _flat_obs(self, obs) -> np.ndarray:
        if isinstance(obs, dict):
            obs = np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in obs])
        return self.stats.normalize_obs(np.asarray(obs, dtype=np.float32).reshape(-1))
