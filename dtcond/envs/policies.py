"""Scripted behaviour policies for the testbeds, registered by name for ``dtcond collect``.

Skill comes from ``noise`` in a mixture component (epsilon-random actions), e.g.
``{policy: tomato_gardener, noise: 0.3}``. All policies act on the observation alone.
"""

from __future__ import annotations

import numpy as np

from dtcond.envs.scripted import register_scripted
from dtcond.envs.gamble import GAMBLE, SAFE
from dtcond.envs.hazard import DOWN, RIGHT, UP
from dtcond.common.errors import DtcondError
from dtcond.envs.tomato import BUCKET, SIZE, TOMATOES

STAY = 4


def _toward(pos: np.ndarray, goal) -> int:
    """The move that closes the row gap first, then the column gap."""
    dr, dc = goal[0] - pos[0], goal[1] - pos[1]
    if dr:
        return 0 if dr < 0 else 1
    if dc:
        return 2 if dc < 0 else 3
    return STAY


def _decode(obs):
    pos = np.rint(np.asarray(obs[:2]) * (SIZE - 1)).astype(int)
    return pos, np.asarray(obs[2:]) > 0.5


def _garden(obs) -> int:
    pos, looks_watered = _decode(obs)
    dry = [t for t, w in zip(TOMATOES, looks_watered) if not w]
    if not dry:
        return STAY  # everything looks done: wait (on the bucket, that is forever)
    nearest = min(dry, key=lambda t: abs(t[0] - pos[0]) + abs(t[1] - pos[1]))
    return _toward(pos, nearest)


@register_scripted("tomato_gardener")
def _tomato_gardener(env, rng):
    """Walk to the nearest tomato that looks dry; wait when none does. The honest worker."""
    return _garden


@register_scripted("tomato_stumbler")
def _tomato_stumbler(env, rng, curiosity: float = 0.5):
    """A gardener that, next to the bucket, steps onto it half the time, and then sees no work left."""

    def act(obs):
        pos, _ = _decode(obs)
        if abs(pos[0] - BUCKET[0]) + abs(pos[1] - BUCKET[1]) == 1 and rng.random() < curiosity:
            return _toward(pos, BUCKET)
        return _garden(obs)

    def action_probs(obs) -> np.ndarray:
        # It draws from its own rng, so the data's likelihood needs its distribution, not one draw.
        pos, _ = _decode(obs)
        probs = np.zeros(STAY + 1)
        probs[_garden(obs)] = 1.0
        if abs(pos[0] - BUCKET[0]) + abs(pos[1] - BUCKET[1]) == 1:
            probs *= 1.0 - curiosity
            probs[_toward(pos, BUCKET)] += curiosity
        return probs

    act.action_probs = action_probs
    return act


@register_scripted("tomato_gamer")
def _tomato_gamer(env, rng):
    """Go straight to the bucket and stay: the observed reward maxed, no tomato watered."""
    return lambda obs: _toward(_decode(obs)[0], BUCKET)


@register_scripted("gamble_safe")
def _gamble_safe(env, rng):
    """Always take the sure +1: the best policy in expectation."""
    return lambda obs: SAFE


@register_scripted("gamble_gambler")
def _gamble_gambler(env, rng):
    """Always gamble: the best returns in the data, and the worst expected return of the three policies."""
    return lambda obs: GAMBLE


def _hazard_router(crossing: int):
    """A factory for the HazardGrid walker that crosses at row ``crossing`` (and so pays ``crossing`` cost)."""

    def factory(env, rng):
        grid = env.unwrapped
        if not 0 <= crossing < grid.height:
            raise DtcondError(f"hazard_cross{crossing}: this HazardGrid has rows 0..{grid.height - 1}")

        def act(obs):
            row = int(round(float(obs[0]) * (grid.height - 1)))
            col = int(round(float(obs[1]) * (grid.width - 1)))
            # Closed loop, so a noisy walker knocked off its route walks back to it.
            if col == grid.width - 1:
                return DOWN
            if row != crossing:
                return UP if row > crossing else DOWN
            return RIGHT

        return act

    factory.__doc__ = f"Cross the HazardGrid at row {crossing}: cost {crossing}², {2 * crossing} steps fewer than the safe route."
    return factory


for _row in range(7):  # the default grid's rows; the route's cost is its row
    register_scripted(f"hazard_cross{_row}", _hazard_router(_row))
