"""The exact KL-regularized optimum on an env whose episodes can all be listed, and the posterior's luck floor.

KL-regularized RL maximizes J(π) = E_π[R] − β·KL(p_π‖p_ref). Over trajectory distributions the maximum is the posterior
P_β = p_ref·exp(R/β)/Z, and J(π) = β·log Z − β·KL(p_π‖P_β). Over *policies* in a stochastic env the maximum is the
soft-optimal policy π*(a|h) ∝ π_ref(a|h)·exp(Q*(h, a)/β), with Q*(h, a) = E[r + V*(h')] and
V*(h) = β·log Σ_a π_ref(a|h)·exp(Q*(h, a)/β), and J(π) = V*(h₀) − β·KL(p_π‖p_π*). Equating the two:

    KL(p_π‖P_β) = KL(p_π‖p_π*) + [log Z − V*(h₀)/β]

— the fine-tuned policy's optimization error plus a floor no policy can go below: the posterior's selection on the
env's luck, which a policy cannot make. On an env that lists its episodes (``env.episodes()``, with each step's
outcome log-probability; :class:`dtcond.envs.GambleEnv` has 64 of them), every term is an exact sum, with no sampling.

>>> from dtcond.envs import GambleEnv
>>> eps = GambleEnv().episodes()
>>> uniform = [np.full(3, np.log(1 / 3)) for _ in eps]              # per-step log π(a_t|h_t) of a uniform prior
>>> r = exact_terms(eps, uniform, uniform, beta=1.0)
>>> round(r["kl_to_posterior"], 6) == round(r["kl_to_soft_optimum"] + r["floor"], 6), r["floor"] > 0
(True, True)
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from dtcond.common.errors import DtcondError


def _histories(episodes: list[dict]):
    """Each step's history key (the actions and rewards before it) per episode."""
    keys = []
    for e in episodes:
        steps = list(zip(np.asarray(e["actions"]).tolist(), np.asarray(e["rewards"], dtype=float).tolist()))
        keys.append([tuple(steps[:t]) for t in range(len(steps))])
    return keys


def soft_optimum(episodes: list[dict], logp_ref: list[np.ndarray], beta: float) -> tuple[list[np.ndarray], float]:
    """Per-step log π*(a_t|h_t) of the soft-optimal policy on each listed episode, and V*(h₀)/β.

    ``logp_ref``: per episode, the prior's log π_ref(a_t|h_t) at each step. The recursion runs over the histories the
    episodes share (an env lists every outcome of every action, so each history's actions and outcomes are complete).
    """
    keys = _histories(episodes)
    prior: dict[tuple, dict[int, float]] = {}  # history -> action -> log π_ref
    outcome: dict[tuple, dict[int, dict[float, tuple[float, tuple | None]]]] = {}  # history -> action -> reward -> (log p, child)
    for e, ks, lp in zip(episodes, keys, logp_ref):
        T = len(ks)
        for t, h in enumerate(ks):
            a, r = int(e["actions"][t]), float(e["rewards"][t])
            prior.setdefault(h, {})[a] = float(lp[t])
            child = ks[t + 1] if t + 1 < T else None  # None: the episode ends after this step
            outcome.setdefault(h, {}).setdefault(a, {})[r] = (float(e["outcome_log_probs"][t]), child)
    for h, acts in prior.items():
        mass = sum(math.exp(v) for v in acts.values())
        if not math.isclose(mass, 1.0, abs_tol=1e-4):
            raise DtcondError(f"soft_optimum: the prior's actions at history {h} carry mass {mass:.6f}, not 1: the episodes "
                              "do not list every action of every history")
    v: dict[tuple, float] = {}  # V*(h)/β

    # The env's outcome is averaged (E[r + V*(h')]), not soft-maxed: a policy chooses its actions, not its luck. A
    # log E exp over the outcomes instead would be the posterior's own recursion, which selects the lucky ones.
    def q_over_beta(h, a) -> float:
        return sum(math.exp(lo) * (r / beta + (value(c) if c is not None else 0.0)) for r, (lo, c) in outcome[h][a].items())

    def value(h) -> float:
        if h not in v:
            v[h] = float(logsumexp([prior[h][a] + q_over_beta(h, a) for a in outcome[h]]))
        return v[h]

    v0 = value(())
    logp_star = [np.array([prior[h][int(e["actions"][t])] + q_over_beta(h, int(e["actions"][t])) - value(h) for t, h in enumerate(ks)])
                 for e, ks in zip(episodes, keys)]
    return logp_star, v0


def exact_terms(episodes: list[dict], logp_policy: list[np.ndarray], logp_ref: list[np.ndarray], beta: float) -> dict:
    """Exact sums over every episode of an env that lists them (``env.episodes()``), for a policy π fine-tuned from a
    prior π_ref at β: ``kl_to_posterior`` KL(p_π‖P_β) = ``kl_to_soft_optimum`` KL(p_π‖p_π*) + ``floor``; ``log_z``;
    ``kl_to_prior``; the observed and true return of π, of the posterior P_β and of the soft optimum π*, and π*'s KL
    from the prior. ``logp_policy`` and ``logp_ref``: per episode, log π(a_t|h_t) and log π_ref(a_t|h_t) per step."""
    if not (beta > 0 and math.isfinite(beta)):
        raise DtcondError(f"exact_terms: β must be finite and > 0, got {beta}")
    env = np.array([float(np.sum(e["outcome_log_probs"])) for e in episodes])
    lp = np.array([float(np.sum(x)) for x in logp_policy])
    lr = np.array([float(np.sum(x)) for x in logp_ref])
    R = np.array([float(np.sum(e["rewards"])) for e in episodes])
    true = np.array([float(np.sum(e.get("true_rewards", e["rewards"]))) for e in episodes])
    star_steps, v0 = soft_optimum(episodes, logp_ref, beta)
    ls = np.array([float(np.sum(x)) for x in star_steps])
    log_z = float(logsumexp(env + lr + R / beta))
    p_pi, p_post, p_star = np.exp(env + lp), np.exp(env + lr + R / beta - log_z), np.exp(env + ls)
    for name, p in (("the policy", p_pi), ("the prior", np.exp(env + lr)), ("the soft optimum", p_star)):
        if not math.isclose(p.sum(), 1.0, abs_tol=1e-4):
            raise DtcondError(f"exact_terms: {name}'s episode probabilities sum to {p.sum():.6f}, not 1: the episodes are not "
                              "every episode of the env")

    def expect(p, x):
        keep = p > 0
        return float((p[keep] * x[keep]).sum())

    return {"beta": float(beta), "log_z": log_z, "floor": log_z - v0,
            "kl_to_posterior": expect(p_pi, lp - lr - R / beta) + log_z, "kl_to_soft_optimum": expect(p_pi, lp - ls),
            "kl_to_prior": expect(p_pi, lp - lr), "return": expect(p_pi, R), "true_return": expect(p_pi, true),
            "posterior_return": expect(p_post, R), "posterior_true_return": expect(p_post, true),
            "soft_optimum_return": expect(p_star, R), "soft_optimum_true_return": expect(p_star, true),
            "soft_optimum_kl_to_prior": expect(p_star, ls - lr)}


def policy_log_probs(policy, episodes: list[dict]) -> list[np.ndarray]:
    """Per-step log π(a_t|h_t) of a return-free dtcond transformer (BC, or BC fine-tuned by RL) on listed episodes."""
    import torch

    from dtcond.rl.finetune import episode_tensors, load_prior, sequence_log_probs

    policy = load_prior(policy)
    batch = episode_tensors(policy, episodes)
    with torch.no_grad():
        logp = sequence_log_probs(policy.model, batch).double().cpu().numpy()
    return [logp[i, :len(e["rewards"])] for i, e in enumerate(episodes)]
