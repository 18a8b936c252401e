"""A gridworld where return and cost trade off: short routes cross hazard tiles, long ones go round.

The agent starts in the bottom-left corner and is rewarded for reaching the bottom-right corner
(+``goal_reward``), paying ``step_penalty`` per step. Between the two lies a triangle of hazard tiles,
widest and most dangerous at the bottom: tile (row, col) is a hazard when ``1 <= col <= row``, and
a step onto it costs ``row``. Crossing at row r (go up to row r, right, then down) steps on r hazard
tiles of cost r and takes ``(W-1) + 2·(H-1-r)`` steps:

========  ====  ======  =====================================
crossing  cost  length  return (defaults: +10, −0.25 per step)
========  ====  ======  =====================================
row 6     36    8       8.0
row 3     9     14      6.5
row 1     1     18      5.5
row 0     0     20      5.0
========  ====  ======  =====================================

The best return at a cost budget C is 5 + 0.5·√C (the routes' frontier is concave), so each route is
the best one for some price of cost λ, the one a Lagrangian method settles at. Each step reports
``info["cost"]`` (the tile's cost, 0.0 off the hazards), as dtcond's HopperCost does. Observation: (row, col) scaled to [0, 1]. Actions: 0 up, 1 down, 2 left,
3 right; a move into a wall stays put. The episode terminates at the goal; the registered id adds a
time limit (truncation).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dtcond.common.errors import DtcondError

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}


class HazardGridEnv(gym.Env):
    """Reach the far corner; the short way crosses hazard tiles (``info["cost"]``).

    >>> env = HazardGridEnv()
    >>> obs, info = env.reset(seed=0)
    >>> obs.tolist(), info["cost"]
    ([1.0, 0.0], 0.0)
    >>> _, reward, terminated, _, info = env.step(3)  # right, onto the hazard triangle's bottom row
    >>> float(reward), info["cost"], terminated
    (-0.25, 6.0, False)
    """

    metadata = {"render_modes": []}

    def __init__(self, height: int = 7, width: int = 9, goal_reward: float = 10.0, step_penalty: float = 0.25):
        if height < 2 or width < height + 1:
            raise DtcondError(f"HazardGrid needs height >= 2 and width >= height + 1, got height={height}, width={width}")
        if not goal_reward > 0 or step_penalty < 0:
            raise DtcondError(f"goal_reward must be > 0 and step_penalty >= 0, got {goal_reward}, {step_penalty}")
        self.height, self.width = int(height), int(width)
        self.goal_reward, self.step_penalty = float(goal_reward), float(step_penalty)
        self.start = (self.height - 1, 0)
        self.goal = (self.height - 1, self.width - 1)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self._pos = self.start

    def tile_cost(self, row: int, col: int) -> float:
        """The triangle ``1 <= col <= row`` costs ``row`` per step onto it: crossing at row r costs r·r."""
        return float(row) if 1 <= col <= row else 0.0

    def route(self, crossing: int) -> tuple[float, int, float]:
        """(cost, length, return) of the error-free route that crosses at row ``crossing``."""
        length = (self.width - 1) + 2 * (self.height - 1 - crossing)
        return float(crossing * crossing), length, self.goal_reward - self.step_penalty * length

    def _obs(self) -> np.ndarray:
        return np.array([self._pos[0] / (self.height - 1), self._pos[1] / (self.width - 1)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = self.start
        return self._obs(), {"cost": 0.0}

    def step(self, action):
        if not self.action_space.contains(action):
            raise DtcondError(f"HazardGrid: invalid action {action!r}; use 0 up, 1 down, 2 left or 3 right")
        dr, dc = MOVES[int(action)]
        row = min(max(self._pos[0] + dr, 0), self.height - 1)
        col = min(max(self._pos[1] + dc, 0), self.width - 1)
        self._pos = (row, col)
        at_goal = self._pos == self.goal
        reward = -self.step_penalty + (self.goal_reward if at_goal else 0.0)
        return self._obs(), reward, at_goal, False, {"cost": self.tile_cost(row, col)}
