"""The data's exact trajectory likelihood, for datasets dtcond collects from a known behaviour mixture.

A dataset made by ``dtcond collect`` records its behaviour mixture in its Minari metadata
(:data:`METADATA_KEY`: the components, their weights and noise). Each component k is a policy of the
observation, so for any trajectory τ = (s_0, a_0, s_1, ...)

    log p_data(τ) = log Σ_k w_k Π_t π_k(a_t | s_t)  + (the dynamics' terms, which cancel in every KL)

and for any policy whose action log-probabilities are known, Σ_t log π(a_t|h_t) − log p_data(τ) over its
own episodes is an unbiased estimate of KL(p_π‖p_data) in nats per episode.

Per-step distributions of a component:

- ``random``: uniform (Discrete), or uniform on [low, high] (Box);
- a scripted controller or an SB3 checkpoint (played deterministically) with noise: ε-random
  ((1 − ε)·base + ε·uniform) for Discrete; for Box, ε-uniform (the whole action vector uniform with
  probability ε) or a Gaussian of std ``noise × half range`` around the base action, clipped to the bounds.
  A scripted policy that draws from its own rng declares its distribution (``action_probs``).
- A component without full support (noise 0) gives log-probability −∞ to actions it never takes: such a
  trajectory has p_k(τ) = 0, never NaN.

Box actions use the piecewise-uniform density of the DT's binned head (:mod:`dtcond.rollout.distributions`):
each dimension cut into ``bins`` equal bins, a component's density the bin masses of its (clipped)
distribution divided by the bin width. A policy scored on the same grid then has an exact KL to the
data's *projection* on that grid, a lower bound on the KL between the continuous densities.

>>> import gymnasium as gym
>>> from dtcond.behavior.mixture import Component
>>> env = gym.make("CartPole-v1")
>>> lik = DataLikelihood([Component("random", weight=0.5), Component("cartpole_balance", noise=0.2, weight=0.5)], env)
>>> obs = np.zeros((2, 4), dtype=np.float32)          # upright and still: the balancer pushes left (0)
>>> lik.step_log_probs(obs, np.array([1, 0])).round(3).tolist()   # (T, K): log 0.5; log 0.1, then log 0.9
[[-0.693, -2.303], [-0.693, -0.105]]
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import gymnasium as gym
import numpy as np
from scipy.special import logsumexp

from dtcond.rollout import distributions
from dtcond.behavior.mixture import Component, base_policy, check_mixture
from dtcond.common.errors import DtcondError

METADATA_KEY = "dtcond_behavior"  # the Minari metadata entry that records a collected dataset's mixture
FORMAT = 1
BINS = 64  # bins per Box action dimension: the DT head's default, so log-densities compare on one grid


def behavior_metadata(components: list[Component], seed: int) -> dict:
    """What ``dtcond collect`` writes under :data:`METADATA_KEY`: enough to rebuild every component."""
    return {"format": FORMAT, "seed": int(seed), "components": [asdict(c) for c in components]}


def recorded_behavior(dataset_id: str) -> list[Component] | None:
    """The behaviour mixture a local dataset recorded, or None (a user's dataset, or one from Minari's catalogue).

    >>> recorded_behavior("no/such/dataset-v0") is None
    True
    """
    from minari.dataset.minari_storage import MinariStorage

    from dtcond.datasets.storage import datasets_root

    path = datasets_root() / dataset_id / "data"
    if not (path / "metadata.json").exists():
        return None
    entry = MinariStorage.read_raw_metadata(path).get(METADATA_KEY)
    if isinstance(entry, str):  # Minari may store nested values as JSON text
        entry = json.loads(entry)
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return None
    return [Component(**c) for c in entry["components"]]


class DataLikelihood:
    """log π_k(a|s) per component, and log p_data(τ) = log Σ_k w_k Π_t π_k(a_t|s_t), for one env's spaces.

    ``obs`` are the flat observations dtcond stores (Box observation spaces: the raw observation);
    ``actions`` (T,) ints for Discrete, (T, act_dim) for Box.
    """

    def __init__(self, components: list[Component], env: gym.Env, bins: int = BINS, seed: int = 0):
        check_mixture(components)
        self.components = list(components)
        self.log_weights = np.log(np.array([c.weight for c in components], dtype=np.float64))  # -inf for weight 0
        self.action_space = env.action_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.bins = int(bins)
        # The base policies act on the observation alone; rng only feeds "random" (never called here).
        rng = np.random.default_rng(seed)
        self._bases = [None if c.policy == "random" else base_policy(c.policy, env, rng) for c in components]
        self._cache: dict[int, dict] = {}
        if not self.discrete:
            self.low = np.asarray(self.action_space.low, dtype=np.float64)
            self.high = np.asarray(self.action_space.high, dtype=np.float64)
            self.log_width = float(np.log((self.high - self.low) / self.bins).sum())

    @classmethod
    def for_dataset(cls, dataset_id: str, env: gym.Env | None = None, stats=None) -> DataLikelihood | None:
        """The exact likelihood of a dataset that recorded its behaviour, else None."""
        components = recorded_behavior(dataset_id)
        if components is None:
            return None
        if env is None:
            if stats is None or stats.env_id is None:
                raise DtcondError(f"dataset {dataset_id!r}: the likelihood needs its env (none recorded)")
            from dtcond.datasets.recorded import make_env

            env = make_env(stats, stats.env_id, **stats.env_kwargs)
        try:
            return cls(components, env)
        except DtcondError as exc:  # e.g. an SB3 checkpoint of the mixture no longer on disk
            raise DtcondError(f"dataset {dataset_id!r} recorded its behaviour, but it cannot be rebuilt: {exc}") from None

    @property
    def fingerprint(self) -> str:
        text = json.dumps([asdict(c) for c in self.components], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def _base_actions(self, k: int, obs: np.ndarray) -> np.ndarray:
        base = self._bases[k]
        batch = getattr(base, "batch", None)
        if batch is not None:
            return np.asarray(batch(obs))
        return np.stack([np.asarray(base(o)) for o in obs])

    def step_probs(self, obs: np.ndarray) -> np.ndarray:
        """Discrete actions: every component's action distribution at each state, (T, K, n)."""
        if not self.discrete:
            raise DtcondError("step_probs is for Discrete actions; Box actions have step_log_probs")
        n, start = int(self.action_space.n), int(self.action_space.start)
        T = len(obs)
        out = np.empty((T, len(self.components), n))
        for k, c in enumerate(self.components):
            if c.policy == "random":
                out[:, k] = 1.0 / n
                continue
            out[:, k] = (1.0 - c.noise) * self._base_probs(k, obs, n, start) + c.noise / n
        return out

    def _base_probs(self, k: int, obs: np.ndarray, n: int, start: int) -> np.ndarray:
        """(T, n): component k's noise-free distribution; scripted ones memoized by state (gridworlds revisit states)."""
        base = self._bases[k]
        if getattr(base, "batch", None) is not None:
            return np.eye(n)[self._base_actions(k, obs).reshape(-1).astype(np.int64) - start]
        probs_of = getattr(base, "action_probs", None)
        cache = self._cache.setdefault(k, {})
        rows = []
        for o in obs:
            key = o.tobytes()
            row = cache.get(key)
            if row is None:
                row = np.asarray(probs_of(o), dtype=np.float64) if probs_of is not None else np.eye(n)[int(base(o)) - start]
                if len(cache) < 200_000:
                    cache[key] = row
            rows.append(row)
        return np.stack(rows) if rows else np.zeros((0, n))

    def step_log_probs(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log π_k(a_t|s_t) for every step and component, (T, K); a log-density for Box actions (see the module doc)."""
        obs = np.asarray(obs)
        T = len(obs)
        if self.discrete:
            idx = np.asarray(actions).reshape(-1).astype(np.int64) - int(self.action_space.start)
            with np.errstate(divide="ignore"):
                return np.log(self.step_probs(obs)[np.arange(T), :, idx])
        actions = np.asarray(actions, dtype=np.float64).reshape(T, -1)
        d = actions.shape[1]
        bins = self._bins(actions)  # (T, d)
        out = np.empty((T, len(self.components)))
        for k, c in enumerate(self.components):
            if c.policy == "random":
                out[:, k] = -d * np.log(self.bins)
                continue
            base = self._base_actions(k, obs).astype(np.float64).reshape(T, d)
            same = (self._bins(base) == bins).all(-1)  # (T,)
            with np.errstate(divide="ignore"):
                if c.noise == 0:
                    out[:, k] = np.log(same.astype(np.float64))
                elif c.noise_type == "epsilon":
                    out[:, k] = np.log((1.0 - c.noise) * same + c.noise * float(self.bins) ** -d)
                else:
                    std = np.broadcast_to(c.noise * (self.high - self.low) / 2.0, base.shape)
                    masses = distributions.gaussian_masses(base, std, self.low, self.high, self.bins)  # (T, d, bins)
                    out[:, k] = np.log(np.take_along_axis(masses, bins[..., None], -1)[..., 0]).sum(-1)
        return out - self.log_width

    def _bins(self, actions: np.ndarray) -> np.ndarray:
        idx = np.floor((actions - self.low) / (self.high - self.low) * self.bins).astype(np.int64)
        return np.clip(idx, 0, self.bins - 1)

    def component_log_likelihoods(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Σ_t log π_k(a_t|s_t) per component, (K,): −∞ where a component never takes one of the actions."""
        return self.step_log_probs(obs, actions).sum(0)

    def log_prob(self, obs: np.ndarray, actions: np.ndarray) -> float:
        """log p_data(τ) (up to the dynamics' terms): log Σ_k w_k Π_t π_k(a_t|s_t)."""
        return float(logsumexp(self.log_weights + self.component_log_likelihoods(obs, actions)))

    def predictive_log_probs(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """log p_data(a_t | h_t) at every step of one episode, (T,): the mixture's posterior predictive given the
        episode so far, Σ_k p(k | h_t) π_k(a_t|s_t) with p(k | h_t) ∝ w_k Π_{j<t} π_k(a_j|s_j). By the chain rule
        the steps sum to :meth:`log_prob`; their mean over a data episode's steps estimates the data's conditional
        entropy per step, the floor of any model's NLL on the same positions.

        >>> import gymnasium as gym
        >>> lik = DataLikelihood([Component("random", weight=0.5), Component("cartpole_balance", noise=0.2, weight=0.5)],
        ...                      gym.make("CartPole-v1"))
        >>> obs, acts = np.zeros((3, 4), dtype=np.float32), np.array([0, 0, 1])
        >>> bool(np.isclose(lik.predictive_log_probs(obs, acts).sum(), lik.log_prob(obs, acts)))
        True
        """
        steps = self.step_log_probs(obs, actions)  # (T, K)
        before = np.concatenate([np.zeros((1, steps.shape[1])), np.cumsum(steps, 0)[:-1]])  # Σ_{j<t}, (T, K)
        with np.errstate(invalid="ignore"):
            prior = self.log_weights + before
            return logsumexp(prior + steps, axis=1) - logsumexp(prior, axis=1)

    def posterior(self, component_ll: np.ndarray, log_weights: np.ndarray | None = None) -> np.ndarray:
        """p(k | τ) ∝ w_k p_k(τ) from :meth:`component_log_likelihoods`, (K,)."""
        z = (self.log_weights if log_weights is None else log_weights) + np.asarray(component_ll, dtype=np.float64)
        if not np.isfinite(z).any():
            return np.full(len(z), np.nan)
        return np.exp(z - logsumexp(z))


def entropy_nats(p) -> float:
    """Shannon entropy (nats) of a probability vector; 0·log 0 = 0.

    >>> round(entropy_nats([0.5, 0.5, 0.0]), 4)
    0.6931
    """
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class BehaviorPolicy:
    """The behaviour mixture as a policy (:class:`dtcond.rollout.contract.Policy`): each episode draws
    its component by the mixture's weights (``weights`` to reweight them, e.g. one component alone), then
    plays it with its noise.

    For Discrete actions the distribution it reports each step is its posterior predictive
    π(a_t|h_t) = Σ_k p(k|h_t) π_k(a_t|s_t), so Σ_t log π(a_t|h_t) = log Σ_k w_k p_k(τ) exactly: the
    mixture's trajectory likelihood by the chain rule. For Box actions it reports none (a mixture over
    components is not a product over action dimensions).
    """

    kind = "behavior"
    param = None
    condition_on_return = False
    cost_conditioned = False
    train_step = None
    greedy = False

    def __init__(self, likelihood: DataLikelihood, stats, weights=None, label: str = "behavior"):
        self.likelihood = likelihood
        self.stats = stats
        w = np.array([c.weight for c in likelihood.components] if weights is None else weights, dtype=np.float64)
        if w.shape != (len(likelihood.components),) or (w < 0).any() or not np.isclose(w.sum(), 1.0):
            raise DtcondError(f"behaviour weights must be {len(likelihood.components)} numbers >= 0 summing to 1, got {list(w)}")
        self.weights = w
        with np.errstate(divide="ignore"):
            self.log_weights = np.log(w)
        self.label = label
        self.source = stats.dataset_id
        space = likelihood.action_space
        self.draws_per_step = 2 if likelihood.discrete else 2 + int(np.prod(space.shape))

    env_id = property(lambda self: self.stats.env_id)

    @property
    def fingerprint(self) -> str:
        w = ",".join(f"{x:.6g}" for x in self.weights)
        return f"behavior-{self.likelihood.fingerprint}-{hashlib.sha256(w.encode()).hexdigest()[:8]}"

    def check_env(self, env) -> None:
        from dtcond.datasets.recorded import check_env_spaces

        check_env_spaces(env, self.stats)

    def begin(self, n: int):
        return {"component": np.full(n, -1), "log_post": np.tile(self.log_weights, (n, 1))}

    def keep(self, state, rows):
        return {key: value[rows] for key, value in state.items()}

    def act_batch(self, state, obs: np.ndarray, rtg: np.ndarray, uniforms: np.ndarray, ctg: np.ndarray | None = None):
        lik, A = self.likelihood, len(obs)
        u = np.asarray(uniforms, dtype=np.float64).reshape(A, -1)
        comp = state["component"].copy()
        new = comp < 0
        if new.any():  # the first step draws the episode's component from its own stream
            cdf = np.cumsum(self.weights)
            comp[new] = np.minimum((cdf[None, :] < u[new, :1]).sum(-1), len(cdf) - 1)
        if lik.discrete:
            probs = lik.step_probs(obs)  # (A, K, n)
            mine = probs[np.arange(A), comp]  # (A, n)
            actions = np.minimum((np.cumsum(mine, -1) < u[:, 1:2]).sum(-1), mine.shape[-1] - 1)
            post = np.exp(state["log_post"] - logsumexp(state["log_post"], axis=1, keepdims=True))  # p(k | h_t)
            predictive = np.einsum("ak,akn->an", post, probs)
            with np.errstate(divide="ignore"):
                log_post = state["log_post"] + np.log(probs[np.arange(A), :, actions])
            actions = actions + int(lik.action_space.start)
            return actions, predictive, {"component": comp, "log_post": log_post}
        actions = np.stack([self._box_action(int(k), o, row) for k, o, row in zip(comp, obs, u)])
        return actions.astype(lik.action_space.dtype), None, {"component": comp, "log_post": state["log_post"]}

    def _box_action(self, k: int, obs: np.ndarray, u: np.ndarray) -> np.ndarray:
        from scipy.stats import norm

        lik, c = self.likelihood, self.likelihood.components[k]
        low, high = lik.low, lik.high
        uniform = low + u[2:] * (high - low)
        if c.policy == "random" or (c.noise_type == "epsilon" and u[1] < c.noise):
            return uniform
        base = np.asarray(lik._base_actions(k, obs[None])[0], dtype=np.float64)
        if c.noise == 0 or c.noise_type == "epsilon":
            return base
        noise = norm.ppf(np.clip(u[2:], 1e-12, 1 - 1e-12)) * c.noise * (high - low) / 2.0
        return np.clip(base + noise, low, high)


class WindowPosteriorPolicy(BehaviorPolicy):
    """The data's posterior predictive given only the last ``window`` steps, as a policy: no learning.

    At step t it samples from Σ_k p(k | s_{t-K+1..t}, a_{t-K+1..t-1}) π_k(·|s_t) with
    p(k | ...) ∝ w_k Π_{j=t-K+1}^{t-1} π_k(a_j|s_j): the component evidence of the K − 1 actions a K-step
    window holds (the DT's band: a token at step t sees steps t−K+1 … t). ``window=1`` is the Markov marginal
    Σ_k w_k π_k(·|s_t); ``window=None`` keeps the whole episode, which is the data itself (its per-episode
    trajectory KL is exactly 0). It reports its per-step distribution, so the exact trajectory KL of its
    episodes shows what forgetting older evidence costs. It is a reference, not a strict floor: a learned
    K-context model also sees the window's first state and the timestep, which carry some evidence of the
    component that this posterior ignores. Discrete actions only.

    >>> import gymnasium as gym
    >>> from dtcond.behavior.mixture import Component
    >>> lik = DataLikelihood([Component("random", weight=0.5), Component("cartpole_balance", noise=0.2, weight=0.5)],
    ...                      gym.make("CartPole-v1"))
    >>> WindowPosteriorPolicy(lik, stats=None, window=1).label
    'window K=1'
    """

    kind = "window_posterior"

    def __init__(self, likelihood: DataLikelihood, stats, window: int | None, label: str | None = None):
        if window is not None and int(window) < 1:
            raise DtcondError(f"window must be >= 1 (or None: the whole episode), got {window}")
        if not likelihood.discrete:
            raise DtcondError("WindowPosteriorPolicy reports its predictive for Discrete actions only")
        self.window = None if window is None else int(window)
        self.likelihood = likelihood
        self.stats = stats
        self.weights = np.array([c.weight for c in likelihood.components], dtype=np.float64)
        with np.errstate(divide="ignore"):
            self.log_weights = np.log(self.weights)
        self.label = label or f"window K={'all' if window is None else window}"
        self.param = None if window is None else float(window)
        self.source = getattr(stats, "dataset_id", None)
        self.draws_per_step = 2

    @property
    def fingerprint(self) -> str:
        return f"window{self.window}-{self.likelihood.fingerprint}"

    def begin(self, n: int):
        keep = 0 if self.window is None else self.window - 1
        return {"total": np.zeros((n, len(self.weights))),  # whole episode: Σ_j log π_k(a_j|s_j)
                "recent": np.zeros((n, keep, len(self.weights)))}  # the last K − 1 steps' terms, oldest first

    def act_batch(self, state, obs: np.ndarray, rtg: np.ndarray, uniforms: np.ndarray, ctg: np.ndarray | None = None):
        lik, A = self.likelihood, len(obs)
        u = np.asarray(uniforms, dtype=np.float64).reshape(A, -1)
        evidence = state["total"] if self.window is None else state["recent"].sum(1)  # (A, K)
        z = self.log_weights + evidence
        post = np.exp(z - logsumexp(z, axis=1, keepdims=True))  # p(k | window)
        probs = lik.step_probs(obs)  # (A, K, n)
        predictive = np.einsum("ak,akn->an", post, probs)
        actions = np.minimum((np.cumsum(predictive, -1) < u[:, 1:2]).sum(-1), predictive.shape[-1] - 1)
        with np.errstate(divide="ignore"):
            step = np.log(probs[np.arange(A), :, actions])  # (A, K)
        recent = state["recent"]
        if recent.shape[1]:
            recent = np.concatenate([recent[:, 1:], step[:, None]], axis=1)
        new = {"total": state["total"] + step, "recent": recent}
        return actions + int(lik.action_space.start), predictive, new
