"""The safety testbeds: Gymnasium's env checker, the gaming tile, luck, the velocity cost, and
scripted behaviour whose mean returns follow its skill level."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import dtcond.envs
from conftest import run_cli
from dtcond.behavior.mixture import Component, make_policy
from dtcond.behavior.collection import collect
from dtcond.datasets.loading import load
from dtcond.envs.tomato import BUCKET, START
from dtcond.common.errors import DtcondError

# Every testbed dtcond registers, read from Gymnasium's registry (not a hand-kept list).
ENV_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("dtcond/"))


def test_the_checked_testbeds_are_every_registered_one():
    assert {"dtcond/TomatoGarden-v0", "dtcond/Gamble-v0", "dtcond/HazardGrid-v0", "dtcond/HopperCost-v0",
            "dtcond/HalfCheetahCost-v0", "dtcond/Walker2dCost-v0"} <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_envs_pass_the_gymnasium_checker(env_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings (MUJOCO_LOG.TXT) into the working directory
    env = gym.make(env_id)
    # MuJoCo's renderer needs a display
    check_env(env.unwrapped, skip_render_check=env_id.endswith("Cost-v0"))
    obs, info = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert np.array_equal(obs, again)


def mean_returns(env_id: str, component: Component, episodes: int = 60) -> tuple[float, float]:
    env = gym.make(env_id)
    policy = make_policy(component, env, np.random.default_rng(0))
    observed, true = [], []
    for seed in range(episodes):
        obs, _ = env.reset(seed=seed)
        total = true_total = 0.0
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += reward
            true_total += info["true_reward"]
            done = terminated or truncated
        observed.append(total)
        true.append(true_total)
    return float(np.mean(observed)), float(np.mean(true))


def test_tomato_gardeners_are_ordered_by_skill_and_the_gamer_games():
    skill = [mean_returns("dtcond/TomatoGarden-v0", Component("tomato_gardener", eps)) for eps in (0.0, 0.2, 0.5)]
    rand = mean_returns("dtcond/TomatoGarden-v0", Component("random"))
    observed = [s[0] for s in skill] + [rand[0]]
    true = [s[1] for s in skill] + [rand[1]]
    assert observed == sorted(observed, reverse=True) and true == sorted(true, reverse=True)
    # An honest gardener's observed and true returns agree; the gamer's observed return beats every
    # gardener's while it waters nothing, and the stumbler sits in between on the true return.
    assert skill[0][0] == pytest.approx(skill[0][1])
    gamer_obs, gamer_true = mean_returns("dtcond/TomatoGarden-v0", Component("tomato_gamer"))
    assert gamer_obs > skill[0][0] + 10 and gamer_true == 0.0
    stumbler = mean_returns("dtcond/TomatoGarden-v0", Component("tomato_stumbler", 0.2))
    assert stumbler[1] < skill[1][1] and stumbler[0] > stumbler[1] + 5


def test_the_bucket_makes_every_tomato_look_watered():
    env = gym.make("dtcond/TomatoGarden-v0")
    obs, _ = env.reset(seed=0)
    assert tuple(np.rint(obs[:2] * 6).astype(int)) == START and not obs[2:].any()
    for _ in range(START[0] - BUCKET[0]):
        obs, reward, _, _, info = env.step(0)
    assert info["on_bucket"] and obs[2:].all() and reward == 1.0 and info["true_reward"] == 0.0
    obs, reward, _, _, info = env.step(1)  # off the bucket: the truth shows again
    assert not info["on_bucket"] and not obs[2:].any() and reward == 0.0


def test_gamble_high_returns_come_from_luck():
    safe_obs, safe_true = mean_returns("dtcond/Gamble-v0", Component("gamble_safe"))
    gambler_obs, gambler_true = mean_returns("dtcond/Gamble-v0", Component("gamble_gambler"), episodes=400)
    assert safe_obs == safe_true == 3.0
    assert gambler_true == pytest.approx(3 * (0.2 * 6 - 0.8 * 2))  # the expected value, luck removed
    levels = [mean_returns("dtcond/Gamble-v0", Component("gamble_safe", eps), episodes=400)[1] for eps in (0.0, 0.3, 0.6)]
    assert levels == sorted(levels, reverse=True)
    env = gym.make("dtcond/Gamble-v0")
    best = 0.0
    for seed in range(200):
        env.reset(seed=seed)
        best = max(best, sum(env.step(1)[1] for _ in range(3)))
    assert best > 3.0  # some gamblers beat the safe policy's return, by luck alone


def test_velocity_cost_flags_fast_steps_and_keeps_the_reward():
    plain, costed = gym.make("Hopper-v5"), gym.make("dtcond/HopperCost-v0")
    plain.reset(seed=1)
    costed.reset(seed=1)
    action = np.full(3, 0.8, dtype=np.float32)
    for _ in range(20):
        _, r1, _, _, i1 = plain.step(action)
        _, r2, _, _, i2 = costed.step(action)
        assert r1 == r2
        assert i2["cost"] == float(i1["x_velocity"] > dtcond.envs.VELOCITY_THRESHOLDS["Hopper"])
    with pytest.raises(DtcondError, match="threshold"):
        dtcond.envs.VelocityCost(gym.make("Hopper-v5"), threshold=0)


def test_bad_env_arguments_fail_clearly():
    with pytest.raises(DtcondError, match="p_dry"):
        gym.make("dtcond/TomatoGarden-v0", p_dry=2.0)
    with pytest.raises(DtcondError, match="p_win"):
        gym.make("dtcond/Gamble-v0", p_win=0.0)
    with pytest.raises(DtcondError, match="invalid action"):
        env = gym.make("dtcond/Gamble-v0")
        env.reset(seed=0)
        env.unwrapped.step(7)


def test_collect_keeps_a_true_reward_of_zero():
    # The gamer's true reward is 0 at every step; it must be stored as zeros, not dropped.
    collect("dtcond/TomatoGarden-v0", [Component("tomato_gamer", weight=0.5), Component("tomato_gardener", weight=0.5)],
            4, "test/tomato-v0", progress=False)
    data = load("test/tomato-v0")
    assert all(t.true_rewards is not None for t in data.trajectories)
    assert sorted(float(t.true_rewards.sum()) == 0.0 for t in data.trajectories) == [False, False, True, True]


def test_cli_collects_the_testbed_mixtures(tmp_path):
    out = run_cli("collect", "env=gamble", "episodes=40", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "gamble_gambler@0" in out.stdout
    data = load("dtcond/gamble/mixture-v0")
    assert data.stats.env_id == "dtcond/Gamble-v0" and len(data.trajectories) == 40
    # Minari recovers the env from the dataset's spec alone.
    import minari

    env = minari.load_dataset("dtcond/gamble/mixture-v0").recover_environment()
    assert env.spec.id == "dtcond/Gamble-v0" and env.action_space == gym.spaces.Discrete(3)


def run_episode(env, policy, seed=0):
    obs, info = env.reset(seed=seed)
    total = cost = 0.0
    assert info["cost"] == 0.0
    while True:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total, cost = total + reward, cost + info["cost"]
        if terminated or truncated:
            return total, cost, terminated, truncated


def test_hazard_routes_trade_return_for_cost():
    env = gym.make("dtcond/HazardGrid-v0")
    grid = env.unwrapped
    outcomes = []
    for row in range(grid.height):
        policy = make_policy(Component(f"hazard_cross{row}"), env, np.random.default_rng(0))
        total, cost, terminated, truncated = run_episode(env, policy)
        assert (cost, total) == pytest.approx(grid.route(row)[::2]) and terminated and not truncated
        outcomes.append((cost, total))
    assert outcomes[0] == (0.0, 5.0) and outcomes[-1] == (36.0, 8.0)
    costs, returns = zip(*outcomes)
    assert list(costs) == sorted(costs) and list(returns) == sorted(returns)  # each unit of return costs more
    # Noise spreads cost at similar return: a noisy short-cutter and a careful detour land near the same return.
    noisy = [run_episode(env, make_policy(Component("hazard_cross5", 0.3), env, np.random.default_rng(s)), seed=s) for s in range(60)]
    assert abs(np.mean([n[0] for n in noisy]) - 5.0) < 2.0 and np.mean([n[1] for n in noisy]) > 25
    # The registered time limit truncates a walker that never arrives.
    total, cost, terminated, truncated = run_episode(env, lambda obs: 2)  # always left: stays at the start
    assert truncated and not terminated and total == pytest.approx(-0.25 * 40) and cost == 0.0
    with pytest.raises(DtcondError, match="invalid action"):
        env.unwrapped.step(7)
