"""A velocity cost for MuJoCo locomotion, as in Safety-Gymnasium's velocity tasks.

The reward is unchanged; each step also reports ``info["cost"]``: 1.0 when the forward speed
(``info["x_velocity"]``) exceeds the robot's threshold, else 0.0. The thresholds are
Safety-Gymnasium's (``SafetyHopperVelocity-v1`` etc.): a fraction of what a trained PPO agent reaches.
"""

from __future__ import annotations

import gymnasium as gym

from dtcond.common.errors import DtcondError

# Safety-Gymnasium, safe_velocity tasks (m/s).
VELOCITY_THRESHOLDS = {"Hopper": 0.7402, "HalfCheetah": 3.2096, "Walker2d": 2.3415}


class VelocityCost(gym.Wrapper):
    """Add ``info["cost"] = float(x_velocity > threshold)`` to a locomotion env's steps.

    >>> import gymnasium as gym
    >>> env = VelocityCost(gym.make("Hopper-v5"), threshold=0.7402)
    >>> _ = env.reset(seed=0)
    >>> _, _, _, _, info = env.step(env.action_space.sample())
    >>> info["cost"] in (0.0, 1.0)
    True
    """

    def __init__(self, env: gym.Env, threshold: float):
        super().__init__(env)
        if not threshold > 0:
            raise DtcondError(f"velocity threshold must be > 0, got {threshold}")
        self.threshold = float(threshold)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "cost": 0.0}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "x_velocity" not in info:
            raise DtcondError(f"{self.env.spec.id if self.env.spec else self.env} reports no info['x_velocity'] to cost")
        return obs, reward, terminated, truncated, {**info, "cost": float(info["x_velocity"] > self.threshold)}


def make_cost_env(base: str = "Hopper-v5", threshold: float | None = None, **kwargs) -> gym.Env:
    """``base`` (a MuJoCo locomotion id) with the velocity cost; ``threshold`` defaults to Safety-Gymnasium's."""
    robot = base.split("-")[0]
    if threshold is None:
        if robot not in VELOCITY_THRESHOLDS:
            raise DtcondError(f"no default velocity threshold for {base!r}; pass threshold= (known: {sorted(VELOCITY_THRESHOLDS)})")
        threshold = VELOCITY_THRESHOLDS[robot]
    # The registered id carries the time limit; the inner env must not add a second one.
    return VelocityCost(gym.make(base, max_episode_steps=None, disable_env_checker=True, **kwargs).unwrapped, threshold)
