"""The registry of scripted behaviour policies, by name.

A leaf module: :mod:`dtcond.behavior.mixture` (classic-control controllers) and :mod:`dtcond.envs.policies`
(the testbeds' policies) both register here, and neither imports the other's registrations back.
Importing :mod:`dtcond.behavior.mixture` loads both sets.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

# A behaviour as a function obs -> action (not a dtcond.Policy, the rollout contract: no batch, no distribution).
ActFn = Callable[[np.ndarray], "np.ndarray | int"]
# factory(env, rng) -> policy
ActFnFactory = Callable[[gym.Env, np.random.Generator], ActFn]

_SCRIPTED: dict[str, ActFnFactory] = {}


def register_scripted(name: str, factory: ActFnFactory | None = None):
    """Register a scripted behaviour policy under ``name`` (usable as a decorator).

    The factory's policy maps an observation to an action. One that draws from ``rng`` must also
    carry ``action_probs(obs) -> probabilities`` (Discrete actions), so that the data's exact
    likelihood (:mod:`dtcond.behavior.likelihood`) knows its distribution; one without it is taken to be
    deterministic given the observation.

    >>> @register_scripted("always_left")
    ... def always_left(env, rng):
    ...     return lambda obs: 0
    >>> "always_left" in scripted_policies()
    True
    """

    def add(f: ActFnFactory) -> ActFnFactory:
        _SCRIPTED[name] = f
        return f

    return add(factory) if factory is not None else add


def scripted_policies() -> list[str]:
    """The registered names, sorted.

    >>> import dtcond.behavior.mixture  # registers the built-in controllers and the testbeds' policies
    >>> {"cartpole_balance", "tomato_gardener"} <= set(scripted_policies())
    True
    """
    return sorted(_SCRIPTED)


def scripted_factory(name: str) -> ActFnFactory | None:
    """The factory registered under ``name``, or None.

    >>> scripted_factory("no_such_policy") is None
    True
    """
    return _SCRIPTED.get(name)
