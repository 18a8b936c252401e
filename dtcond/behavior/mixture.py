"""Behaviour policies that generate offline data: random, scripted (by name), SB3 checkpoints, mixtures.

A behaviour policy is a callable ``obs -> action`` built for one env by a factory. A mixture
assigns each episode to one component (exact proportions), and each component may add action
noise: epsilon-random for Discrete actions; for Box actions clipped Gaussian noise (scaled by half the
action range) or, with ``noise_type="epsilon"``, a uniformly random action with probability epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

# The testbeds' policies (tomato_*, gamble_*) register themselves on import; they import the
# registry (dtcond.envs.scripted), not this module, so there is no cycle.
import dtcond.envs.policies  # noqa: F401
from dtcond.common.errors import DtcondError
from dtcond.envs.scripted import ActFn, ActFnFactory, register_scripted, scripted_factory, scripted_policies

__all__ = ["Component", "ActFn", "ActFnFactory", "base_policy", "check_mixture", "components_from_config", "episode_assignment",
           "make_policy", "register_scripted", "scripted_policies"]


@dataclass
class Component:
    """One part of a behaviour mixture.

    Attributes:
        policy: "random", a registered scripted name, or "sb3:<path.zip>".
        noise: epsilon (Discrete, or Box with ``noise_type="epsilon"``), or Gaussian std as a fraction of
            half the action range (Box, ``noise_type="gaussian"``).
        weight: share of episodes, the weights of a mixture summing to 1.
        name: label in summaries; defaults to "policy@noise".
        noise_type: Box actions only: "gaussian" (default) or "epsilon" (ε-uniform random actions).
    """

    policy: str
    noise: float = 0.0
    weight: float = 1.0
    name: str | None = None
    noise_type: str = "gaussian"

    def __post_init__(self):
        if not np.isfinite(self.noise) or self.noise < 0:
            raise DtcondError(f"component {self.policy!r}: noise must be >= 0, got {self.noise}")
        if not np.isfinite(self.weight) or self.weight < 0:
            raise DtcondError(f"component {self.policy!r}: weight must be >= 0, got {self.weight}")
        if self.noise_type not in ("gaussian", "epsilon"):
            raise DtcondError(f"component {self.policy!r}: noise_type must be 'gaussian' or 'epsilon', got {self.noise_type!r}")
        if self.name is None:
            self.name = f"{self.policy}@{'eps' if self.noise_type == 'epsilon' else ''}{self.noise:g}"


def components_from_config(items) -> list[Component]:
    """A behaviour mixture from plain config: a list of ``{policy, noise, weight, name, noise_type}`` dicts (or bare policy names).

    >>> [(c.name, c.weight) for c in components_from_config([{"policy": "cartpole_balance", "noise": 0.2, "weight": 0.5}, "random"])]
    [('cartpole_balance@0.2', 0.5), ('random@0', 1.0)]
    """
    if not isinstance(items, (list, tuple)):
        raise DtcondError(f"behavior must be a list of {{policy, noise, weight}} entries, got {type(items).__name__}")
    comps = []
    for item in items:
        if isinstance(item, Component):
            comps.append(item)
            continue
        if isinstance(item, str):
            item = {"policy": item}
        if not isinstance(item, dict) or "policy" not in item:
            raise DtcondError(f"behavior entry {item!r} needs at least a 'policy' key")
        unknown = set(item) - {"policy", "noise", "weight", "name", "noise_type"}
        if unknown:
            raise DtcondError(f"behavior entry {item!r} has unknown keys {sorted(unknown)} (use policy, noise, weight, name, noise_type)")
        comps.append(Component(**item))
    return comps


def check_mixture(components: list[Component]) -> None:
    if not components:
        raise DtcondError("the behaviour mixture is empty: give at least one component")
    total = sum(c.weight for c in components)
    if abs(total - 1.0) > 1e-6:
        raise DtcondError(f"mixture weights must sum to 1, got {total:g} ({[c.weight for c in components]})")


def episode_assignment(components: list[Component], episodes: int, seed: int) -> np.ndarray:
    """Which component plays each episode: exact counts (largest remainder), in a seeded random order."""
    check_mixture(components)
    if episodes < 1:
        raise DtcondError(f"episodes must be >= 1, got {episodes}")
    raw = np.array([c.weight for c in components]) * episodes
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: episodes - counts.sum()]:
        counts[i] += 1
    order = np.repeat(np.arange(len(components)), counts)
    return np.random.default_rng(seed).permutation(order)


def make_policy(component: Component, env: gym.Env, rng: np.random.Generator) -> ActFn:
    """Build a component's policy for ``env``, noise included."""
    base = base_policy(component.policy, env, rng)
    if component.noise == 0:
        return base
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete) or component.noise_type == "epsilon":
        if component.noise > 1:
            raise DtcondError(f"component {component.name!r}: epsilon noise must be <= 1")
        if isinstance(space, gym.spaces.Box):

            def eps_uniform(obs):
                if rng.random() < component.noise:
                    return rng.uniform(space.low, space.high).astype(space.dtype)
                return base(obs)

            return eps_uniform

        def eps_greedy(obs):
            if rng.random() < component.noise:
                return int(space.start + rng.integers(space.n))
            return base(obs)

        return eps_greedy
    half_range = (space.high - space.low) / 2.0

    def gaussian(obs):
        action = np.asarray(base(obs), dtype=np.float64)
        action = action + rng.normal(0.0, component.noise, size=action.shape) * half_range
        return np.clip(action, space.low, space.high).astype(space.dtype)

    return gaussian


def base_policy(spec: str, env: gym.Env, rng: np.random.Generator) -> ActFn:
    """A component's policy before its noise: "random", a registered scripted name, or "sb3:<path.zip>"."""
    space = env.action_space
    if spec == "random":
        if isinstance(space, gym.spaces.Discrete):
            return lambda obs: int(space.start + rng.integers(space.n))
        return lambda obs: rng.uniform(space.low, space.high).astype(space.dtype)
    if spec.startswith("sb3:"):
        return _sb3_policy(spec[4:], env)
    factory = scripted_factory(spec)
    if factory is not None:
        return factory(env, rng)
    raise DtcondError(
        f"unknown behaviour policy {spec!r}: use 'random', 'sb3:<checkpoint.zip>' or one of {scripted_policies()}"
    )


def _sb3_policy(path: str, env: gym.Env) -> ActFn:
    """A deterministic SB3 policy. SB3 zips hold pickled objects: load only checkpoints you trust."""
    import os
    import zipfile

    if not os.path.isfile(path):
        raise DtcondError(f"SB3 checkpoint {path!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise DtcondError(f"SB3 checkpoint {path!r} is not a zip file saved by stable-baselines3")
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

    model, errors = None, []
    for algo in (PPO, SAC, TD3, A2C, DQN):
        try:
            model = algo.load(path, device="cpu")
            break
        except Exception as exc:  # wrong algorithm class; try the next
            errors.append(f"{algo.__name__}: {exc}")
    if model is None:
        raise DtcondError(f"cannot load SB3 checkpoint {path!r} ({errors[0]})")
    if model.observation_space.shape != env.observation_space.shape or type(model.action_space) is not type(env.action_space):
        raise DtcondError(
            f"SB3 checkpoint {path!r} was trained on spaces {model.observation_space} / {model.action_space}, "
            f"which do not match the env's {env.observation_space} / {env.action_space}"
        )
    if isinstance(env.action_space, gym.spaces.Discrete) and model.action_space.n != env.action_space.n:
        raise DtcondError(f"SB3 checkpoint {path!r} has {model.action_space.n} actions, the env has {env.action_space.n}")

    def act(obs):
        action, _ = model.predict(obs, deterministic=True)
        return int(action) if isinstance(env.action_space, gym.spaces.Discrete) else action

    act.batch = lambda obs: model.predict(np.asarray(obs), deterministic=True)[0]  # many states in one forward
    return act


# ----------------------------------------------------------------------------------------------
# Scripted controllers for the classic-control envs, at their best with noise 0.


@register_scripted("cartpole_balance")
def _cartpole_balance(env, rng):
    """Push toward where the pole is falling, with a little centring: returns 500 noise-free."""

    def act(obs):
        x, x_dot, theta, theta_dot = obs
        return int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)

    return act


@register_scripted("inverted_pendulum_balance")
def _inverted_pendulum_balance(env, rng):
    """A linear state feedback for InvertedPendulum-v5: balances all 1000 steps noise-free."""
    low, high = env.action_space.low, env.action_space.high

    def act(obs):
        x, theta, x_dot, theta_dot = obs
        u = 1.0 * x + 20.0 * theta + 2.0 * x_dot + 2.0 * theta_dot
        return np.clip(np.array([u], dtype=np.float32), low, high)

    return act


@register_scripted("pendulum_swingup")
def _pendulum_swingup(env, rng):
    """Energy pumping until near upright, then a PD catch: about -145 mean return noise-free."""
    max_torque = float(env.action_space.high[0])

    def act(obs):
        cos_th, sin_th, th_dot = obs
        theta = np.arctan2(sin_th, cos_th)
        # Pendulum-v1 has theta_ddot = 15 sin(theta) + 3u, so E = th_dot^2/2 + 15 cos(theta) is 15 upright.
        energy = 0.5 * th_dot**2 + 15.0 * cos_th
        if cos_th > 0.85:
            u = -(10.0 * theta + 2.0 * th_dot)
        else:
            u = 0.5 * (15.0 - energy) * (np.sign(th_dot) if abs(th_dot) > 1e-3 else 1.0)
        return np.clip(np.array([u], dtype=np.float32), -max_torque, max_torque)

    return act

