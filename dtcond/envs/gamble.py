"""Rounds of bets where high returns come from luck (after ESPER's gambling task, Paster et al. 2022).

Each of ``rounds`` rounds the agent picks one of three actions:

- 0 ``safe``: +1 for sure;
- 1 ``gamble``: +``win`` with probability ``p_win``, else −``loss`` (expected value below ``safe``);
- 2 ``fold``: −1 for sure.

The best returns in any dataset belong to lucky gamblers, so conditioning on them asks the policy
to gamble, which is worse in expectation than playing safe. Observation: the fraction of rounds left
and the last round's reward (scaled by ``win``), so the env is a fully observed MDP.
``info["true_reward"]`` is the chosen action's expected reward: the return with the luck removed.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dtcond.common.errors import DtcondError

SAFE, GAMBLE, FOLD = 0, 1, 2


class GambleEnv(gym.Env):
    """Repeated safe-or-gamble choices with a lucky-but-bad gamble.

    >>> env = GambleEnv()
    >>> obs, _ = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(0)
    >>> float(reward), terminated
    (1.0, False)
    """

    metadata = {"render_modes": []}

    def __init__(self, rounds: int = 3, p_win: float = 0.2, win: float = 6.0, loss: float = 2.0):
        if rounds < 1:
            raise DtcondError(f"rounds must be >= 1, got {rounds}")
        if not 0 < p_win < 1:
            raise DtcondError(f"p_win must be in (0, 1), got {p_win}")
        if win <= 0 or loss < 0:
            raise DtcondError(f"win must be > 0 and loss >= 0, got win={win}, loss={loss}")
        self.rounds, self.p_win, self.win, self.loss = int(rounds), float(p_win), float(win), float(loss)
        self.observation_space = gym.spaces.Box(low=np.array([0.0, -1.0], dtype=np.float32), high=np.ones(2, dtype=np.float32))
        self.action_space = gym.spaces.Discrete(3)
        self._left = self.rounds
        self._last = 0.0

    def outcomes(self, action: int) -> list[tuple[float, float, float]]:
        """(probability, reward, true reward) of each outcome of ``action``: the env's dynamics, for exact sums."""
        if action == SAFE:
            return [(1.0, 1.0, 1.0)]
        if action == GAMBLE:
            return [(self.p_win, self.win, self.gamble_value), (1 - self.p_win, -self.loss, self.gamble_value)]
        return [(1.0, -1.0, -1.0)]

    def episodes(self) -> list[dict]:
        """Every episode the env can produce (each action sequence, each outcome of its gambles): ``obs`` (T, 2), the
        observation before each action, ``actions``, ``rewards``, ``true_rewards`` and ``outcome_log_probs`` (T,),
        the log-probability of each step's outcome given its action. 4 outcomes a round: 64 episodes at 3 rounds.

        >>> eps = GambleEnv().episodes()
        >>> len(eps), round(float(sum(np.exp(e["outcome_log_probs"].sum()) for e in eps if (e["actions"] == GAMBLE).all())), 12)
        (64, 1.0)
        """
        out = []

        def grow(prefix: list[tuple[np.ndarray, int, float, float, float]]) -> None:
            if len(prefix) == self.rounds:
                obs, actions, rewards, true, logp = zip(*prefix)
                out.append({"obs": np.stack(obs), "actions": np.array(actions), "rewards": np.array(rewards),
                            "true_rewards": np.array(true), "outcome_log_probs": np.log(np.array(logp))})
                return
            self._left, self._last = self.rounds - len(prefix), prefix[-1][2] if prefix else 0.0
            obs = self._obs()
            for action in (SAFE, GAMBLE, FOLD):
                for prob, reward, true in self.outcomes(action):
                    grow(prefix + [(obs, action, reward, true, prob)])

        left, last = self._left, self._last
        grow([])
        self._left, self._last = left, last  # enumerating leaves a running episode as it was
        return out

    @property
    def gamble_value(self) -> float:
        """Expected reward of one gamble."""
        return self.p_win * self.win - (1 - self.p_win) * self.loss

    def _obs(self) -> np.ndarray:
        return np.array([self._left / self.rounds, np.clip(self._last / self.win, -1.0, 1.0)], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._left, self._last = self.rounds, 0.0
        return self._obs(), {"true_reward": 0.0}

    def step(self, action):
        if not self.action_space.contains(action):
            raise DtcondError(f"GambleEnv: invalid action {action!r}; use 0 (safe), 1 (gamble) or 2 (fold)")
        if self._left <= 0:
            raise DtcondError("GambleEnv: step() after the episode ended; call reset()")
        options = self.outcomes(int(action))
        _, reward, expected = options[0] if len(options) == 1 or self.np_random.random() < options[0][0] else options[1]
        self._left -= 1
        self._last = reward
        # The true reward is what the choice is worth on average: the reward with the luck taken out.
        return self._obs(), reward, self._left == 0, False, {"true_reward": expected}
