"""A trained DT as a return-conditioned policy: one env at a time, or a batch of episodes at once.

Every policy dtcond evaluates (this one, the SB3 baselines in ``dtcond.rl.baselines``, the behaviour
mixture in ``dtcond.behavior.likelihood``) implements :class:`dtcond.rollout.contract.Policy`, whose batch methods
``dtcond.evaluate`` drives:

- ``begin(n)`` → a state for ``n`` episodes starting together;
- ``act_batch(state, obs, rtg, uniforms, ctg=None)`` → actions, the action distribution each was drawn from
  where the policy has one (else None), and the new state. ``obs`` are raw flat observations
  (A, obs_dim), ``rtg`` the returns-to-go (A,), ``uniforms`` (A, ``draws_per_step``) U(0,1) draws,
  each episode's from its own stream; a cost-conditioned policy (``cost_conditioned``) also takes
  ``ctg``, the costs-to-go (A,). The distribution is probabilities (A, n) for Discrete
  actions, or bin masses (A, act_dim, n) on equal bins of [low, high] for Box actions
  (see :mod:`dtcond.rollout.distributions`);
- ``keep(state, rows)`` → the state with only the episodes ``rows`` still running.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from dtcond.rollout import distributions
from dtcond.datasets.loading import DatasetStats
from dtcond.common.errors import DtcondError
from dtcond.datasets.recorded import check_env_spaces, make_env
from dtcond.dt.model import DecisionTransformer
import dtcond.envs  # noqa: F401  (registers the dtcond/* env ids)


def sample_discrete(logits: torch.Tensor, uniforms: np.ndarray, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF samples at ``uniforms`` and the probabilities they were drawn from.

    One draw per row from each episode's own stream, so an episode's actions do not depend on which
    other episodes share its batch.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, n)
    u = torch.as_tensor(uniforms, dtype=probs.dtype, device=probs.device)[:, None]  # (B, 1)
    return (probs.cumsum(-1) < u).sum(-1).clamp(max=probs.shape[-1] - 1), probs


def weights_hash(module: torch.nn.Module) -> str:
    """12 hex digits identifying a module's weights (names and values)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]




def action_log_probs(model: DecisionTransformer, rtg: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor,
                     timesteps: torch.Tensor, mask: torch.Tensor | None = None, temperature: float = 1.0,
                     greedy: bool = False) -> torch.Tensor:
    """log π(a_t | h_t) at every step of a batch of teacher-forced sequences: (B, T), differentiable.

    The full forward, which cached decoding equals, so these are the log-probabilities of the actions the policy
    sampled. Box actions score as the binned head samples them: a log-density on its bins (the log of each bin's
    mass minus the log of its width). ``greedy``: the policy that plays the mode, log 1 at the argmax, else −inf.
    """
    cfg = model.cfg
    if not (cfg.discrete or cfg.binned):
        raise DtcondError("a deterministic action head (action_head='mse') gives no action likelihood")
    pred = model(rtg, obs, actions, timesteps, mask)  # (B, T, n) or (B, T, d, bins)
    if cfg.discrete:
        idx = actions.long()[..., None]  # (B, T, 1)
    else:
        low, high = model.action_bounds
        idx = distributions.bin_index(actions, low, high, pred.shape[-1])[..., None]  # (B, T, d, 1)
    if greedy:
        logp = torch.where(pred.argmax(-1, keepdim=True) == idx, 0.0, -math.inf)[..., 0]
    else:
        logp = torch.log_softmax(pred.float() / temperature, -1).gather(-1, idx)[..., 0]
    if not cfg.discrete:
        low, high = model.action_bounds
        logp = (logp - torch.log(distributions.bin_width(low, high, pred.shape[-1]))).sum(-1)  # (B, T)
    return logp


class _Window:
    """The last K steps of every running episode, recomputed in full each step (``decode="window"``)."""

    def __init__(self, model: DecisionTransformer):
        self.model, self.K = model, model.cfg.context_len
        self.rtg = self.obs = self.act = self.ts = self.ctg = None
        self.step_count = 0

    def step(self, rtg_t, obs_t, ctg_t=None):
        ts_t = torch.full_like(rtg_t, self.step_count, dtype=torch.long)
        cfg = self.model.cfg
        A = rtg_t.shape[0]
        blank = torch.zeros(A, dtype=torch.long) if cfg.discrete else torch.zeros(A, cfg.act_dim)
        blank = blank.to(rtg_t.device)
        if ctg_t is not None:
            self.ctg = ctg_t[:, None] if self.rtg is None else torch.cat([self.ctg, ctg_t[:, None]], 1)[:, -self.K :]  # (A, <=K)
        if self.rtg is None:
            self.rtg, self.obs, self.act, self.ts = rtg_t[:, None], obs_t[:, None], blank[:, None], ts_t[:, None]
        else:
            self.rtg = torch.cat([self.rtg, rtg_t[:, None]], 1)[:, -self.K :]  # (A, <=K)
            self.obs = torch.cat([self.obs, obs_t[:, None]], 1)[:, -self.K :]  # (A, <=K, obs_dim)
            self.act = torch.cat([self.act, blank[:, None]], 1)[:, -self.K :]  # (A, <=K[, act_dim])
            self.ts = torch.cat([self.ts, ts_t[:, None]], 1)[:, -self.K :]  # (A, <=K)
        self.step_count += 1
        ctg = self.ctg if ctg_t is not None else None
        return self.model(self.rtg, self.obs, self.act, self.ts, costs_to_go=ctg)[:, -1]  # (A, act_dim)

    def record(self, action) -> None:
        self.act[:, -1] = action

    def select(self, rows) -> None:
        self.rtg, self.obs, self.act, self.ts = self.rtg[rows], self.obs[rows], self.act[rows], self.ts[rows]
        if self.ctg is not None:
            self.ctg = self.ctg[rows]


class ConditionedPolicy:
    """``reset(target)`` then ``act(obs, reward)`` each step; the return-to-go falls by each reward.

    Actions are *sampled* from the model's distribution by default (``greedy=False``): conditioning
    imitates the data's episodes at that return, noise included; the argmax would play the most
    common action whatever the target. ``greedy=True`` plays the mode (the most likely action, or
    for Box actions the centre of each dimension's most likely bin). A model with the deterministic
    ``action_head="mse"`` plays its predicted mean either way.

    ``decode="cached"`` (default) feeds one step at a time through the key/value cache, so a step
    costs O(K) attention; ``decode="window"`` recomputes the last K steps every step, as the
    original DT does (the reference for models trained on K-step windows).

    >>> policy = dtcond.load_policy(policy.source)                  # a bundle folder
    >>> env = policy.make_env(); obs, _ = env.reset(seed=0)
    >>> policy.reset(target=400.0)
    >>> action = policy.act(obs)                                    # then policy.act(obs, reward)
    """

    def __init__(self, model: DecisionTransformer, stats: DatasetStats, condition_on_return: bool = True,
                 greedy: bool = False, temperature: float = 1.0, source: str | None = None, decode: str = "cached",
                 kind: str | None = None, train_step: int | None = None, param: float | None = None):
        self.model = model.eval()
        self.stats = stats
        self.condition_on_return = condition_on_return
        self.greedy = greedy
        self.temperature = temperature  # validated by the property below
        self.source = source
        self.decode = decode
        self._kind = kind
        self._param = None if param is None else float(param)  # a family's own parameter (fine-tuning's β), from its card
        self.train_step = train_step  # optimizer steps the weights were trained for, when known
        self._weights_hash = None
        self._episode = None
        self._rng = np.random.default_rng()
        if decode not in ("cached", "window"):
            raise DtcondError(f"decode must be 'cached' or 'window', got {decode!r}")

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        value = float(value)
        if value <= 0 or not math.isfinite(value):
            raise DtcondError(f"temperature must be a positive number, got {value}")
        self._temperature = value

    @property
    def config(self):
        return self.model.cfg

    @property
    def kind(self) -> str:
        """"dt" for a return-conditioned policy; "bc" (or "pct_bc") for one trained without returns."""
        return self._kind or ("dt" if self.condition_on_return else "bc")

    @property
    def label(self) -> str:
        """What the policy is, for tables: "dt", "dt:esper" (trained on relabelled returns), "bc" or "pct_bc:<q>"."""
        q = self.stats.extra.get("top_fraction")
        relabel = (self.stats.extra.get("relabel") or {}).get("method")
        if self.kind == "dt" and relabel:
            return f"dt:{relabel}"
        if self._param is not None:
            return f"{self.kind}:{self._param:g}"
        return f"{self.kind}:{q:g}" if self.kind == "pct_bc" and q else self.kind

    @property
    def param(self) -> float | None:
        """The family's parameter: the one its card names (an RL-fine-tuned transformer's β or KL threshold), else
        %BC's top fraction q, else None."""
        if self._param is not None:
            return self._param
        q = self.stats.extra.get("top_fraction")
        return float(q) if self.kind == "pct_bc" and q else None

    @property
    def fingerprint(self) -> str:
        """Identifies the weights, the decoding mode and a card-named family, so results tables key episodes by it."""
        if self._weights_hash is None:
            self._weights_hash = weights_hash(self.model)
        fp = self._weights_hash
        if self._param is not None:  # a family named by its card (an RL-fine-tuned snapshot may hold its prior's weights)
            fp += f"-{self.kind}{self._param:g}"
        if self.config.discrete or self.config.binned:
            fp += "-greedy" if self.greedy else f"-t{self.temperature:g}"
        return fp + ("-window" if self.decode == "window" else "")

    @property
    def cost_conditioned(self) -> bool:
        """Whether the policy takes a cost-to-go besides the return-to-go (joint targets, ``q0.9,cost<=2``)."""
        return bool(self.config.cost_conditioned)

    @property
    def draws_per_step(self) -> int:
        """U(0,1) draws one episode's action takes: 1 (Discrete), 2 per dimension (binned Box), else 0."""
        return 1 if self.config.discrete else (2 * self.config.act_dim if self.config.binned else 0)

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
        env = make_env(self.stats, self.stats.env_id, **{**self.stats.env_kwargs, **kwargs})
        self.check_env(env)
        if seed is not None:
            env.action_space.seed(seed)
        return env

    def check_env(self, env) -> None:
        check_env_spaces(env, self.stats)

    # ------------------------------------------------------------------ batch protocol

    def begin(self, n: int):
        # (decoder, previous actions, the last k-1 frames of each episode when the model stacks frames)
        if self.decode == "window":
            return (_Window(self.model), None, None)
        return (self.model.start(n, device=self.device), None, None)

    def _stack_frames(self, frames: torch.Tensor, history: torch.Tensor | None):
        """(A, k*C, H, W): each episode's frame after its k-1 previous ones (zeros before its first), and the new history."""
        k = self.config.frame_stack
        if history is None:
            history = frames.new_zeros((frames.shape[0], k - 1, *frames.shape[1:]))  # (A, k-1, C, H, W)
        stack = torch.cat([history, frames[:, None]], dim=1)  # (A, k, C, H, W), oldest first
        return stack.flatten(1, 2), stack[:, 1:]

    @torch.inference_mode()
    def act_batch(self, state, obs: np.ndarray, rtg: np.ndarray, uniforms: np.ndarray, ctg: np.ndarray | None = None):
        decoder, prev, history = state
        obs_t = torch.as_tensor(self.stats.normalize_obs(obs), device=self.device)  # (A, obs_dim), or (A, C, H, W) uint8 frames
        if self.config.frame_stack > 1:
            obs_t, history = self._stack_frames(obs_t, history)
        cond = rtg if self.condition_on_return else np.zeros_like(rtg)
        rtg_t = torch.as_tensor(cond, dtype=torch.float32, device=self.device)  # (A,)
        ctg_t = None
        if self.cost_conditioned:
            if ctg is None:
                raise DtcondError("this policy is cost-conditioned: give it a cost target too, e.g. 'q0.9,cost<=q0.2'")
            ctg_t = torch.as_tensor(ctg if self.condition_on_return else np.zeros_like(ctg), dtype=torch.float32, device=self.device)  # (A,)
        elif ctg is not None:
            raise DtcondError("this policy was not trained with cost conditioning (model.cost_conditioned=false): give it a return target only")
        if isinstance(decoder, _Window):
            out = decoder.step(rtg_t, obs_t, ctg_t)
        else:
            out, decoder = self.model.step(decoder, rtg_t, obs_t, prev, costs_to_go=ctg_t)
        probs = None
        if self.config.binned:
            low, high = self.model.action_bounds
            if self.greedy:  # the policy it runs is the mode: one bin per dimension
                action, probs = distributions.mode(out, low, high)
            else:
                u = torch.as_tensor(np.asarray(uniforms).reshape(len(out), -1), device=self.device)
                action, probs = distributions.sample(out, u, low, high, self.temperature)
        elif not self.config.discrete:
            action = out
        elif self.greedy:  # the policy it runs is the argmax: its distribution is one-hot
            action = out.argmax(-1)
            probs = torch.nn.functional.one_hot(action, out.shape[-1]).float()
        else:
            action, probs = sample_discrete(out, np.asarray(uniforms).reshape(-1), self.temperature)
        if isinstance(decoder, _Window):
            decoder.record(action)
        actions = action.cpu().numpy()
        return actions, (probs.cpu().numpy() if probs is not None else None), (decoder, action, history)

    @torch.inference_mode()
    def episode_log_prob(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, targets) -> np.ndarray:
        """Σ_t log π(a_t | h_t, g) of one finished episode for each starting target g in ``targets``: (len(targets),).

        The episode is teacher-forced through the full forward (which cached decoding equals): the
        return-to-go starts at g and falls by each reward, as in a rollout. With it the exact trajectory
        KL of a per-episode target marginalizes the target. ``obs`` raw (T, obs_dim), ``actions`` (T,)
        or (T, act_dim), ``rewards`` (T,). Box actions score as the binned head samples them (a
        log-density on its bins); a deterministic head has no likelihood.
        """
        return self.step_log_probs(obs, actions, rewards, targets).sum(-1)

    @torch.no_grad()
    def step_log_probs(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, targets, t0: int = 0) -> np.ndarray:
        """log π(a_t | h_t, g) at every step of an episode (or of a stretch of one) for each starting target g:
        (len(targets), T); see :meth:`episode_log_prob`. ``t0`` is the episode timestep of the first row: a
        stretch cut from a longer episode with at least K − 1 steps before the first one scored gives each of
        those the same context it had in the whole episode.
        """
        cfg = self.config
        if cfg.cost_conditioned:
            raise DtcondError("episode_log_prob scores return-conditioned policies; this one is cost-conditioned too")
        T = len(obs)
        obs_t = torch.as_tensor(self.stats.normalize_obs(obs), device=self.device)[None]  # (1, T, obs_dim)
        spent = np.concatenate([[0.0], np.cumsum(np.asarray(rewards, dtype=np.float64))[:-1]])  # (T,)
        act_t = torch.as_tensor(np.asarray(actions), device=self.device)[None]
        act_t = act_t.long().reshape(1, T) if cfg.discrete else act_t.float().reshape(1, T, -1)
        ts = torch.arange(int(t0), int(t0) + T, device=self.device)[None]  # the model clamps past its table
        out = []
        for start in range(0, len(targets), 64):
            g = np.asarray(targets[start : start + 64], dtype=np.float64)
            rtg = (g[:, None] - spent[None]) if self.condition_on_return else np.zeros((len(g), T))
            B = len(g)
            logp = action_log_probs(self.model, torch.as_tensor(rtg, dtype=torch.float32, device=self.device),
                                    obs_t.expand(B, -1, -1), act_t.expand(B, *act_t.shape[1:]), ts.expand(B, -1),
                                    temperature=self.temperature, greedy=self.greedy)  # (B, T)
            out.append(logp.double().cpu().numpy())
        return np.concatenate(out)

    def keep(self, state, rows: np.ndarray):
        decoder, prev, history = state
        idx = torch.as_tensor(rows, device=self.device)
        if isinstance(decoder, _Window):
            decoder.select(idx)
        else:
            decoder = decoder.select(idx)
        return (decoder, prev[idx] if prev is not None else None, history[idx] if history is not None else None)

    # ------------------------------------------------------------------ one env

    def reset(self, target, seed: int | np.random.Generator | None = None, cost: float | None = None) -> None:
        """Start an episode conditioned on ``target``: whatever :func:`dtcond.evaluate` accepts, a return
        (``300.0``), a spec string (``"q0.9"``, ``"quantilizer:0.1"``, ``"q0.9,cost<=q0.2"``) or a
        :class:`~dtcond.targets.TargetSpec`. A cost-conditioned policy also takes the episode ``cost`` it may
        incur (or a joint spec's cost part). ``seed`` (or a Generator) drives action sampling and a
        quantilizer's per-episode draw of its return.

        >>> policy.reset(target="q0.9", seed=0)
        >>> policy.reset(target=dtcond.targets.quantilizer(0.1), seed=0)
        >>> policy.reset(target=[1, 2])
        Traceback (most recent call last):
        dtcond.common.errors.DtcondError: target must be a return, a target spec such as 'q0.9' or a TargetSpec, got list
        """
        from dtcond import targets

        self._rng = np.random.default_rng(seed)
        if isinstance(target, (np.integer, np.floating)):
            target = float(target)
        if isinstance(target, bool) or not isinstance(target, (int, float, str, targets.TargetSpec)):
            raise DtcondError(f"target must be a return, a target spec such as 'q0.9' or a TargetSpec, got {type(target).__name__}")
        spec = targets.parse(target)
        if spec.kind == "none":
            raise DtcondError("target 'none' is for unconditioned policies; this one is conditioned on a return: reset(target=...)")
        resolved = spec.resolve(self.stats, self._rng)
        if resolved.cost is not None:
            if cost is not None:
                raise DtcondError(f"target {spec} already names its cost ({spec.cost}); pass cost= only with a return-only target")
            cost = resolved.cost
        target = resolved.value
        if not math.isfinite(target):
            raise DtcondError(f"target return must be finite, got {target}")
        if cost is not None and not self.cost_conditioned:
            raise DtcondError("this policy was not trained with cost conditioning (model.cost_conditioned=false): reset it without cost=")
        if cost is None and self.cost_conditioned:
            raise DtcondError("this policy is cost-conditioned: reset(target=..., cost=...) with the episode cost it may incur")
        if cost is not None and not math.isfinite(float(cost)):
            raise DtcondError(f"target cost must be finite, got {cost}")
        self._episode = {"rtg": target, "ctg": None if cost is None else float(cost), "state": self.begin(1), "started": False}

    def act(self, obs, reward: float | None = None, cost: float | None = None):
        """The action for ``obs``; pass the reward the previous action earned (None on the first step), and
        for a cost-conditioned policy the cost it incurred (``info["cost"]``): the cost-to-go falls by it."""
        if self._episode is None:
            raise DtcondError("call policy.reset(target=...) before policy.act(obs)")
        ep = self._episode
        if reward is not None and ep["started"]:
            ep["rtg"] -= float(reward)
        if cost is not None and ep["started"] and ep["ctg"] is not None:
            ep["ctg"] -= float(cost)
        ep["started"] = True
        ctg = None if ep["ctg"] is None else np.array([ep["ctg"]])
        actions, _, ep["state"] = self.act_batch(ep["state"], self.stats.codec.encode_one(obs)[None], np.array([ep["rtg"]]),
                                                 self._rng.random((1, max(1, self.draws_per_step))), ctg)
        return int(actions[0]) if self.config.discrete else actions[0]
