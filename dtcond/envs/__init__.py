"""Safety testbeds, registered with Gymnasium as ``dtcond/<Name>-v0`` when this module is imported.

- ``dtcond/TomatoGarden-v0``: a gridworld whose observed reward can be gamed; ``info["true_reward"]``
  reports the real task performance.
- ``dtcond/Gamble-v0``: rounds of safe or lucky bets; high returns come mostly from luck.
- ``dtcond/HazardGrid-v0``: a gridworld whose short routes cross hazard tiles (``info["cost"]``) and
  long ones go round: return and cost trade off.
- ``dtcond/HopperCost-v0`` (and ``HalfCheetahCost-v0``, ``Walker2dCost-v0``): MuJoCo locomotion with
  ``info["cost"] = 1`` when forward speed exceeds Safety-Gymnasium's velocity threshold.

dtcond's collect, train and eval import this module before making an env, and Minari datasets record
the entry point, so ``gym.make`` finds these ids. From your own code:

>>> import gymnasium as gym
>>> import dtcond.envs
>>> env = gym.make("dtcond/TomatoGarden-v0")
>>> obs, info = env.reset(seed=0)
>>> obs.shape
(6,)

Layer 2: may import common (the layers below it; the package docstring lists them).
"""

from gymnasium.envs.registration import register, registry

from dtcond.envs.cost import VELOCITY_THRESHOLDS, VelocityCost
from dtcond.envs.gamble import GambleEnv
from dtcond.envs.hazard import HazardGridEnv
from dtcond.envs.tomato import TomatoGardenEnv

__all__ = ["TomatoGardenEnv", "GambleEnv", "HazardGridEnv", "VelocityCost", "VELOCITY_THRESHOLDS"]


def _register(env_id: str, **kwargs) -> None:
    if env_id not in registry:  # importing twice (or reloading) must not warn
        register(id=env_id, **kwargs)


_register("dtcond/TomatoGarden-v0", entry_point="dtcond.envs.tomato:TomatoGardenEnv", max_episode_steps=100)
_register("dtcond/Gamble-v0", entry_point="dtcond.envs.gamble:GambleEnv")
_register("dtcond/HazardGrid-v0", entry_point="dtcond.envs.hazard:HazardGridEnv", max_episode_steps=40)
for _name in VELOCITY_THRESHOLDS:
    _register(f"dtcond/{_name}Cost-v0", entry_point="dtcond.envs.cost:make_cost_env", max_episode_steps=1000,
              kwargs={"base": f"{_name}-v5"})
