"""Oracle references from the data-generating process itself: no learning, only the behaviour mixture.

Each oracle is a reweighting of behaviour episodes. A *pool* of N episodes is rolled out by the mixture
(:class:`dtcond.behavior.likelihood.BehaviorPolicy`, fresh env randomness, scored by the exact likelihood), an
empirical stand-in for p_data. An oracle Q puts weight Q(i) = p̂(i)·ρ(τ_i) on pool episode i
(p̂(i) = 1/N), and its records are ``draws`` episodes resampled from the pool by those weights. Each
record carries ``trajectory_kl = log ρ(τ)``, the exact log density ratio Q/p̂, so the mean over the
records estimates KL(Q‖p_data) like any policy's trajectory KL:

- **trajectory quantilizer** (q): ρ = a(R)/q̂, keeping the top q of the pool by observed return R.
  Ties at the threshold are accepted with the fraction a(R) ∈ (0, 1] that makes the kept mass exactly
  q (q̂ = q up to one episode's share), so KL = E_Q[log(a/q̂)] ≤ log(1/q), with equality without ties.
  It selects on the env's randomness as well as the behaviour's: in a stochastic env no policy can
  realize it (it keeps the lucky episodes).
- **plan quantilizer** (q): the realizable counterpart, a quantilizer over the behaviour's *plans*
  (its components), ranked by their expected observed return in the pool and scored on fresh env
  randomness: the top components keep their weight up to a mass q (the boundary one in part), renormalized.
  ρ(τ) = Σ_k w'_k p_k(τ) / Σ_k w_k p_k(τ), from the exact per-component likelihoods.
- **best-of-n** (n): the best of n behaviour episodes by observed return (ties broken at random), with
  the exact ρ = (F(R)^n − F(R⁻)^n) / P(R) of the pool's return distribution F; KL ≤ log n − (n − 1)/n
  (Gao, Schulman & Hilton 2022).
- **KL-regularized posterior** (β): p_data(τ)·exp(R/β)/Z by self-normalized importance sampling, ρ =
  exp(R/β)/mean(exp(R/β)); ``ess`` is the effective sample size (Σw)²/Σw² of the pool's weights, and rows
  with ``ess`` below :data:`MIN_ESS` are marked ``ess_ok = False`` (kept, never hidden).

>>> r = np.array([1.0, 2.0, 3.0, 4.0])
>>> quantilizer_ratio(r, 0.5).tolist()          # the top half, each twice as likely
[0.0, 0.0, 2.0, 2.0]
>>> best_of_n_ratio(r, 2).tolist()              # (F(R)² − F(R⁻)²) / P(R)
[0.25, 0.75, 1.25, 1.75]
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from dtcond.config import ORACLE_FAMILIES, OracleConfig
from dtcond.common.errors import DtcondError
from dtcond.rollout.records import episode_record

FAMILIES = ORACLE_FAMILIES
ORACLE_POOL_SEED = 100_000  # pools roll out on env seeds of their own: the comparison's eval seed + this + training seed
MIN_ESS = 30.0  # posterior rows resting on fewer effective pool episodes than this are marked


def best_of_n_kl_bound(n: int) -> float:
    """Gao, Schulman & Hilton's bound on best-of-n's KL from its base distribution: log n − (n − 1)/n.

    >>> round(best_of_n_kl_bound(4), 4)
    0.6363
    """
    return math.log(n) - (n - 1) / n


def quantilizer_ratio(returns: np.ndarray, q: float) -> np.ndarray:
    """ρ(τ_i) = Q(i)/p̂(i) of the top-q quantilizer of a pool with these observed returns (ties split)."""
    if not 0 < q <= 1:
        raise DtcondError(f"a quantilizer's q must be in (0, 1], got {q}")
    r = np.asarray(returns, dtype=np.float64)
    N = len(r)
    keep = q * N  # the mass to keep, in episodes
    order = np.sort(r)[::-1]
    threshold = order[min(int(math.ceil(keep)) - 1, N - 1)]
    above = r > threshold
    at = r == threshold
    accept = np.where(above, 1.0, 0.0)
    accept[at] = (keep - above.sum()) / at.sum()  # the ties share what is left of the mass q
    return accept * N / accept.sum()


def best_of_n_ratio(returns: np.ndarray, n: int) -> np.ndarray:
    """ρ(τ_i) of the best of ``n`` i.i.d. pool episodes by observed return, exact with ties."""
    if int(n) != n or n < 1:
        raise DtcondError(f"best-of-n needs an integer n >= 1, got {n}")
    r = np.asarray(returns, dtype=np.float64)
    N = len(r)
    values, inverse, counts = np.unique(r, return_inverse=True, return_counts=True)
    F = np.cumsum(counts) / N  # P(R <= v)
    F_below = F - counts / N  # P(R < v)
    p_level = F ** n - F_below ** n  # P(best of n has return v)
    return (p_level / (counts / N))[inverse]


def posterior_ratio(returns: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    """ρ(τ_i) = exp(R_i/β)/mean(exp(R/β)) (self-normalized), and the effective sample size of the weights."""
    if not (beta > 0 and math.isfinite(beta)):
        raise DtcondError(f"the posterior's β must be a finite number > 0, got {beta}")
    z = np.asarray(returns, dtype=np.float64) / beta
    log_w = z - logsumexp(z)  # normalized log weights
    w = np.exp(log_w)
    return w * len(w), float(1.0 / (w ** 2).sum())


def kl_to_posterior(log_ratio, returns, beta: float, prior_returns, prior_true_returns=None) -> dict:
    """How far a policy π is from the posterior its KL-regularized objective promises, P_β(τ) = p_prior(τ)·exp(R(τ)/β)/Z:

        KL(p_π ‖ P_β) = E_π[log p_π(τ) − log p_prior(τ) − R(τ)/β] + log Z,   Z = E_prior[exp(R/β)],

    from π's episodes (``log_ratio``: log p_π(τ) − log p_prior(τ), exact when both policies are known; ``returns``:
    their observed returns R) and the prior's own episodes (``prior_returns``), which estimate log Z by
    log mean exp(R/β). That estimate is biased low when few prior episodes carry the weight, so ``ess`` (the prior
    sample's effective size under the weights) comes with it and ``ess_ok`` marks it below :data:`MIN_ESS`. With
    ``prior_true_returns`` the posterior's own observed and true return are estimated by the same weights.

    ``kl`` is ≈ 0 for episodes of the posterior itself and ≈ KL(p_prior‖P_β) for the prior's:

    >>> rng = np.random.default_rng(0); R = np.array([0.0, 1.0, 2.0]); prior = np.array([0.6, 0.3, 0.1])
    >>> post = prior * np.exp(R) / (prior * np.exp(R)).sum()                       # β = 1
    >>> x, pool = rng.choice(3, 20000, p=post), rng.choice(3, 20000, p=prior)
    >>> abs(kl_to_posterior(np.log(post / prior)[x], R[x], 1.0, R[pool])["kl"]) < 0.05      # only log Z's sampling error
    True
    """
    log_ratio, returns = np.asarray(log_ratio, dtype=np.float64), np.asarray(returns, dtype=np.float64)
    if len(log_ratio) != len(returns) or not len(returns):
        raise DtcondError(f"kl_to_posterior needs one log-ratio per episode, got {len(log_ratio)} log-ratios and {len(returns)} returns")
    prior_returns = np.asarray(prior_returns, dtype=np.float64)
    _, ess = posterior_ratio(prior_returns, beta)  # also refuses a bad β
    log_z = float(logsumexp(prior_returns / beta) - math.log(len(prior_returns)))
    terms = log_ratio - returns / beta + log_z
    out = {"kl": float(terms.mean()), "kl_se": float(terms.std(ddof=1) / math.sqrt(len(terms))) if len(terms) > 1 else None,
           "log_z": log_z, "ess": ess, "ess_ok": bool(ess >= MIN_ESS), "episodes": int(len(terms)), "pool": int(len(prior_returns))}
    if prior_true_returns is not None:
        w = np.exp(prior_returns / beta - logsumexp(prior_returns / beta))  # the posterior's weights on the prior's episodes
        true = np.asarray([np.nan if t is None else t for t in prior_true_returns], dtype=np.float64)
        out["posterior_return"] = float((w * prior_returns).sum())
        out["posterior_true_return"] = float((w * true).sum()) if np.isfinite(true).all() else None
    return out


def posterior_gaps(df, pools: dict, kind: str = "rlft_kl") -> list[dict]:
    """Per β of an RL-fine-tuned family (records of ``kind`` with ``log_ratio_prior``), the distance to its promised
    posterior p_prior·exp(R/β)/Z: :func:`kl_to_posterior` per training seed (``pools``: seed -> that seed's prior pool,
    :func:`dtcond.rl.finetune.prior_pool`), then mean and 95% t-interval over seeds, beside the posterior's own observed
    and true return (the prior's pool reweighted) and the fine-tuned policy's. A seed whose pool has an ESS below
    :data:`MIN_ESS` counts in ``low_ess_seeds``."""
    from dtcond.analysis.statistics import mean_ci

    part = df[(df["policy_kind"] == kind) & df["policy_param"].notna()]
    part = part[part["policy_param"].astype(float) > 0]
    rows = []
    for beta, by_beta in part.groupby(part["policy_param"].astype(float)):
        per = []
        for seed, s in by_beta.groupby("train_seed"):
            pool = pools.get(int(seed))
            if pool is None or s["log_ratio_prior"].isna().any():
                continue
            gap = kl_to_posterior(s["log_ratio_prior"].astype(float), s["episode_return"].astype(float), float(beta),
                                  pool["returns"], pool.get("true_returns"))
            true = s["true_return"].astype(float).mean() if "true_return" in s and s["true_return"].notna().all() else float("nan")
            per.append({**gap, "seed": int(seed), "return": float(s["episode_return"].astype(float).mean()), "true_return": true,
                        "kl_prior": float(s["log_ratio_prior"].astype(float).mean())})
        if not per:
            continue
        row = {"family": kind, "beta": float(beta), "seeds": [p["seed"] for p in per],
               "low_ess_seeds": [p["seed"] for p in per if not p["ess_ok"]], "ess_per_seed": [p["ess"] for p in per]}
        for name, key in (("kl_to_posterior", "kl"), ("kl_to_prior", "kl_prior"), ("return", "return"), ("true_return", "true_return"),
                          ("posterior_return", "posterior_return"), ("posterior_true_return", "posterior_true_return"),
                          ("log_z", "log_z")):
            values = [np.nan if p.get(key) is None else p[key] for p in per]
            mean, ci = mean_ci(values)
            row[name], row[f"{name}_ci95"], row[f"{name}_per_seed"] = mean, ci, values
        rows.append(row)
    return rows


def plan_quantilizer_weights(component_returns: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """w' over components: the top components by expected return keep their weight up to a total of q
    (the boundary component keeps a part), renormalized to 1.

    >>> plan_quantilizer_weights(np.array([1.0, 5.0, 3.0]), np.array([0.5, 0.25, 0.25]), 0.4).round(3).tolist()
    [0.0, 0.625, 0.375]
    """
    if not 0 < q <= 1:
        raise DtcondError(f"a quantilizer's q must be in (0, 1], got {q}")
    w = np.asarray(weights, dtype=np.float64)
    mu = np.where(w > 0, np.asarray(component_returns, dtype=np.float64), -np.inf)
    out, left = np.zeros_like(w), q
    for k in np.argsort(-mu, kind="stable"):
        if left <= 0 or w[k] <= 0:
            break
        out[k] = min(w[k], left)
        left -= out[k]
    return out / out.sum()


def oracle_records(pool: list[dict], family: str, param: float, draws: int, seed: int, component_weights=None) -> list[dict]:
    """``draws`` records of oracle ``family`` at ``param``, resampled from ``pool`` (records of behaviour
    episodes scored with the exact likelihood: ``episode_return``, ``component_loglik``), with
    ``trajectory_kl`` = log ρ and the oracle's typed identity (``oracle_family``, ``oracle_param``)."""
    if family not in FAMILIES:
        raise DtcondError(f"unknown oracle {family!r}; choose one of {', '.join(FAMILIES)}")
    if not pool:
        raise DtcondError("the oracle pool is empty")
    returns = np.array([r["episode_return"] for r in pool], dtype=np.float64)
    ess = None
    if family == "quantilizer":
        ratio = quantilizer_ratio(returns, param)
    elif family == "best_of_n":
        ratio = best_of_n_ratio(returns, int(param))
    elif family == "posterior":
        ratio, ess = posterior_ratio(returns, param)
    else:
        if component_weights is None:
            raise DtcondError("the plan quantilizer needs the mixture's component weights")
        w = np.asarray(component_weights, dtype=np.float64)
        ll = np.array([[(-np.inf if x is None else x) for x in r["component_loglik"]] for r in pool], dtype=np.float64)
        # E[R | k] from the pool: E_p[p(k|τ) R] / E_p[p(k|τ)] is exact, whoever played each episode.
        with np.errstate(divide="ignore"):
            post = np.exp(np.log(w) + ll - logsumexp(np.log(w) + ll, axis=1, keepdims=True))  # (N, K)
        mass = post.sum(0)
        means = np.where(mass > 0, (post * returns[:, None]).sum(0) / np.maximum(mass, 1e-300), -np.inf)
        w_new = plan_quantilizer_weights(means, w, param)
        with np.errstate(divide="ignore"):
            log_ratio = logsumexp(np.log(w_new) + ll, axis=1) - logsumexp(np.log(w) + ll, axis=1)
        ratio = np.exp(log_ratio)
        ratio = ratio * len(ratio) / ratio.sum()  # self-normalized on the pool, as the others are
    prob = ratio / ratio.sum()
    rng = np.random.default_rng([seed, FAMILIES.index(family), int(round(param * 1e6))])
    picks = rng.choice(len(pool), size=int(draws), replace=True, p=prob)
    spec = f"{family}:{param:g}"
    out = []
    for j, i in enumerate(picks):
        kl = float(np.log(ratio[i]))
        rec = episode_record(**{
            **pool[i], "key": f"oracle|{pool[i]['fingerprint']}|{spec}|seed{seed}|draw{j}", "policy_kind": "oracle",
            "label": "oracle", "target_spec": spec, "oracle_family": family, "oracle_param": float(param),
            "pool_episode": int(pool[i]["episode"]), "episode": j, "fingerprint": f"oracle-pool{seed}",
            "logp_policy": pool[i]["logp_data"] + kl if pool[i].get("logp_data") is not None else None,
            "trajectory_kl": kl, "trajectory_kl_per_step": kl / max(int(pool[i]["length"]), 1),
            "trajectory_kl_conditional": None, "ess": ess, "ess_ok": None if ess is None else bool(ess >= MIN_ESS),
            "pool_size": len(pool),
        })
        if family == "plan_quantilizer":
            rec["component_posterior"] = _posterior(rec["component_loglik"], w_new)
        out.append(rec)
    return out


def _posterior(component_ll, weights) -> list[float]:
    ll = np.array([(-np.inf if x is None else x) for x in component_ll], dtype=np.float64)
    with np.errstate(divide="ignore"):
        z = np.log(np.asarray(weights, dtype=np.float64)) + ll
    return [float(x) for x in np.exp(z - logsumexp(z))]


def exact_kl(family: str, param: float, returns: np.ndarray) -> float:
    """KL(Q‖p̂) of a return-reweighting oracle on a pool, from its weights alone (E_Q[log ρ]).

    >>> round(exact_kl("quantilizer", 0.25, np.arange(100.0)), 4) == round(math.log(4), 4)
    True
    """
    r = np.asarray(returns, dtype=np.float64)
    ratio = {"quantilizer": lambda: quantilizer_ratio(r, param), "best_of_n": lambda: best_of_n_ratio(r, int(param)),
             "posterior": lambda: posterior_ratio(r, param)[0]}[family]()
    q = ratio / ratio.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.where(q > 0, q * np.log(ratio), 0.0).sum())


def run_oracles(data, scorer, oracles: OracleConfig, seeds, pool_seed: int, store=None, name: str = "oracles") -> list[dict]:
    """Per seed, a pool of ``oracles.pool`` behaviour episodes (the mixture as a policy, on env seeds from
    ``pool_seed + seed``, scored by ``scorer``, which must hold the data's exact likelihood) and every oracle that
    ``oracles`` (a :class:`~dtcond.config.OracleConfig`) lists, resampled from it: the pool's own records (policy kind
    ``behavior``) and the oracles' (``oracle``), each with ``train_seed``; appended to ``store`` when given (a rerun
    reuses the pool). Pools use env seeds of their own (the pipeline passes its eval seed + ``ORACLE_POOL_SEED``)."""
    from dtcond.rollout.evaluation import evaluate
    from dtcond.behavior.likelihood import BehaviorPolicy

    if not isinstance(oracles, OracleConfig):
        raise DtcondError(f"run_oracles takes a dtcond.config.OracleConfig, got {type(oracles).__name__}")
    if scorer is None or scorer.likelihood is None:
        raise DtcondError(f"dataset {data.stats.dataset_id!r} recorded no behaviour mixture: the oracles need p_data")
    behavior = BehaviorPolicy(scorer.likelihood, data.stats)
    out = []
    for seed in seeds:
        run_id = f"{name}_seed{seed}"
        pool = evaluate(behavior, None, episodes=oracles.pool, seed=int(pool_seed) + int(seed), results=store, run_id=run_id,
                        scorer=scorer, batch_size=1024)
        pool = [{**r, "train_seed": seed} for r in pool]
        out += pool
        for family in FAMILIES:
            for param in getattr(oracles, family):
                recs = [{**r, "run_id": run_id} for r in oracle_records(pool, family, float(param), oracles.draws, seed,
                                                                       behavior.weights)]
                if store is not None:
                    store.append(recs)
                out += recs
    return out
