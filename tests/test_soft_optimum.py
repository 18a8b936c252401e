"""The exact KL-regularized optimum on a listed env: the decomposition KL(p_π‖P_β) = KL(p_π‖p_π*) + floor, the floor
(the posterior's selection on luck), and the listed episodes against the real env's dynamics."""

import math

import gymnasium as gym
import numpy as np
import pytest

import dtcond.envs  # noqa: F401  (registers dtcond/Gamble-v0)
from dtcond.analysis.oracles import kl_to_posterior
from dtcond.analysis.soft_optimum import exact_terms, soft_optimum
from dtcond.common.errors import DtcondError
from dtcond.envs import GambleEnv

EPISODES = GambleEnv().episodes()


def tabular(table: np.ndarray, episodes=EPISODES) -> list[np.ndarray]:
    """Per-step log-probabilities of a policy that plays round t's actions with probabilities table[t]."""
    return [np.log(table[np.arange(len(e["actions"])), e["actions"]]) for e in episodes]


def random_table(rng, n_actions: int = 3) -> np.ndarray:
    return rng.dirichlet(np.ones(n_actions), size=3)


def test_every_episode_of_the_gamble_is_listed_with_the_env_s_own_observations():
    assert len(EPISODES) == 64 and len({(tuple(e["actions"]), tuple(e["rewards"])) for e in EPISODES}) == 64
    for e in EPISODES[::7]:  # replay each action sequence in the env until its gambles land as listed
        for seed in range(200):
            env = GambleEnv()
            obs, _ = env.reset(seed=seed)
            seen = [obs]
            rewards = []
            for a in e["actions"]:
                obs, r, *_ = env.step(int(a))
                seen.append(obs)
                rewards.append(r)
            if rewards == e["rewards"].tolist():
                np.testing.assert_allclose(np.stack(seen[:-1]), e["obs"])
                break
        else:
            pytest.fail(f"no env seed reproduced the listed episode {e['actions']}, {e['rewards']}")


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0, 10.0])
def test_the_distance_to_the_posterior_is_the_distance_to_the_soft_optimum_plus_the_floor(beta):
    rng = np.random.default_rng(int(beta * 10))
    prior = tabular(random_table(rng))
    star, _ = soft_optimum(EPISODES, prior, beta)
    floor = exact_terms(EPISODES, star, prior, beta)
    assert floor["kl_to_soft_optimum"] == pytest.approx(0.0, abs=1e-9)
    assert floor["kl_to_posterior"] == pytest.approx(floor["floor"], abs=1e-9) and floor["floor"] > 0  # the gamble's luck
    for _ in range(5):  # any policy: the decomposition holds, and none gets below the floor
        r = exact_terms(EPISODES, tabular(random_table(rng)), prior, beta)
        assert r["kl_to_posterior"] == pytest.approx(r["kl_to_soft_optimum"] + r["floor"], abs=1e-9)
        assert r["kl_to_soft_optimum"] > 0 and r["kl_to_posterior"] > floor["floor"]
        # J(π) = E_π[R] − β·KL(p_π‖p_prior) = β·log Z − β·KL(p_π‖P_β): the posterior's identity, summed exactly
        assert r["return"] - beta * r["kl_to_prior"] == pytest.approx(beta * (r["log_z"] - r["kl_to_posterior"]), abs=1e-8)


def test_the_soft_optimum_plays_safe_where_the_posterior_gambles():
    prior = tabular(np.full((3, 3), 1 / 3))
    r = exact_terms(EPISODES, prior, prior, beta=0.3)
    assert r["soft_optimum_true_return"] > 2.9  # near the optimum of 3: always safe
    assert r["posterior_true_return"] < -1.0 and r["posterior_return"] > 17  # the posterior keeps the lucky gamblers


def test_the_floor_vanishes_where_the_env_has_no_luck():
    safe_or_fold = [e for e in EPISODES if not (e["actions"] == 1).any()]  # deterministic: no gamble
    assert len(safe_or_fold) == 8
    rng = np.random.default_rng(0)
    prior_table = rng.dirichlet(np.ones(2), size=3)
    to_two = lambda eps: [{**e, "actions": np.where(e["actions"] == 2, 1, 0)} for e in eps]  # noqa: E731
    eps = to_two(safe_or_fold)
    prior = tabular(prior_table, eps)
    for beta in (0.3, 1.0, 10.0):
        assert exact_terms(eps, prior, prior, beta)["floor"] == pytest.approx(0.0, abs=1e-9)


def test_the_sampled_estimate_agrees_with_the_exact_sum_on_the_real_env():
    """kl_to_posterior from sampled episodes of the real env (and a sampled prior pool) against the exact sum over the
    listed episodes: if the listing's outcome probabilities were not the env's, the two would disagree."""
    rng = np.random.default_rng(1)
    prior_table, policy_table, beta, n = random_table(rng), random_table(rng), 3.0, 20000

    def sample(table, seed):
        env = gym.make("dtcond/Gamble-v0")
        gen = np.random.default_rng(seed)
        out = []
        for i in range(n):
            env.reset(seed=seed * n + i)
            acts, rews = [], []
            for t in range(3):
                a = int(gen.choice(3, p=table[t]))
                _, r, *_ = env.step(a)
                acts.append(a)
                rews.append(r)
            out.append((np.array(acts), float(sum(rews))))
        return out

    episodes, pool = sample(policy_table, 1), sample(prior_table, 2)
    log_ratio = [float(np.sum(np.log(policy_table[np.arange(3), a]) - np.log(prior_table[np.arange(3), a]))) for a, _ in episodes]
    est = kl_to_posterior(log_ratio, [r for _, r in episodes], beta, [r for _, r in pool])
    exact = exact_terms(EPISODES, tabular(policy_table), tabular(prior_table), beta)
    assert est["ess_ok"]
    assert abs(est["kl"] - exact["kl_to_posterior"]) < 4 * est["kl_se"] + 0.05, (est, exact)
    assert est["log_z"] == pytest.approx(exact["log_z"], abs=0.05)


def test_episodes_that_miss_an_action_are_refused():
    prior = tabular(np.full((3, 3), 1 / 3))
    with pytest.raises(DtcondError, match="do not list every action"):
        soft_optimum(EPISODES[1:], prior[1:], 1.0)
    with pytest.raises(DtcondError, match="β must be finite"):
        exact_terms(EPISODES, prior, prior, math.inf)
