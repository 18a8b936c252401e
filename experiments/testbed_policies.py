"""Mean observed and true return of each scripted testbed policy: the README's skill table.

    python experiments/testbed_policies.py            # 200 episodes each, env seeds 0..199
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from dtcond.behavior.mixture import Component, make_policy

POLICIES = [
    ("dtcond/TomatoGarden-v0", [("tomato_gardener", 0.0), ("tomato_gardener", 0.2), ("tomato_gardener", 0.5),
                                ("tomato_stumbler", 0.2), ("tomato_gamer", 0.0), ("random", 0.0)]),
    ("dtcond/Gamble-v0", [("gamble_safe", 0.0), ("gamble_safe", 0.3), ("gamble_safe", 0.6), ("random", 0.0),
                          ("gamble_gambler", 0.0)]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    print("| env | policy | noise | observed return | true return |\n|---|---|---|---|---|")
    for env_id, policies in POLICIES:
        env = gym.make(env_id)
        for name, noise in policies:
            policy = make_policy(Component(name, noise), env, np.random.default_rng(0))
            observed, true = [], []
            for seed in range(args.episodes):
                obs, _ = env.reset(seed=seed)
                total = true_total = 0.0
                done = False
                while not done:
                    obs, reward, terminated, truncated, info = env.step(policy(obs))
                    total, true_total = total + reward, true_total + info["true_reward"]
                    done = terminated or truncated
                observed.append(total)
                true.append(true_total)
            print(f"| {env_id} | {name} | {noise:g} | {np.mean(observed):.1f} | {np.mean(true):.1f} |")


if __name__ == "__main__":
    main()
