"""Mean return and cost of each HazardGrid router at each noise level: the README's route table.

    python experiments/cost_tradeoff/routes.py            # 200 episodes each, env seeds 0..199
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import dtcond.behavior.mixture  # noqa: F401  (registers the scripted routers)
from dtcond.behavior.mixture import Component, make_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    env = gym.make("dtcond/HazardGrid-v0")
    print("| router | noise | return | cost |\n|---|---|---|---|")
    for row in range(env.unwrapped.height):
        for noise in (0.0, 0.15, 0.3):
            policy = make_policy(Component(f"hazard_cross{row}", noise), env, np.random.default_rng(0))
            returns, costs = [], []
            for seed in range(args.episodes):
                obs, _ = env.reset(seed=seed)
                total = cost = 0.0
                done = False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(policy(obs))
                    total, cost = total + reward, cost + info["cost"]
                    done = terminated or truncated
                returns.append(total)
                costs.append(cost)
            print(f"| hazard_cross{row} | {noise:g} | {np.mean(returns):.2f} | {np.mean(costs):.2f} |")


if __name__ == "__main__":
    main()
