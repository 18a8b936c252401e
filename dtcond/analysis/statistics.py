"""Statistics over results tables: the one 95% interval, calibration metrics, and policy columns.

Intervals. Every "± 95% CI" in dtcond is :func:`ci95`: the half-width of the Student-t interval
of a mean, ``t(0.975, n−1) · s / √n``. Over training seeds when a row has several (the seed is the
unit: :func:`grouped_mean_ci` averages each seed's episodes first), else over episodes.

Calibration (:func:`calibration_metrics`), per split of the fixed targets (in-distribution: inside
the data's [min, max] episode return; OOD: outside it). Quantilizer specs draw a target per
episode and are left out. Per episode, e = achieved return − target:

- ``mae``: mean |e| over episodes (how far a typical episode lands from its target);
- ``bias``: mean e over episodes (signed; over- and under-shooting cancel, so read it with ``mae``);
- ``normalized_mae``, ``normalized_bias``: the same divided by the data's return range (max − min);
- ``slope``, ``r2``: least-squares fit of achieved on target over episodes; ``spearman``: rank
  correlation of the same pairs; ``mean_return``: mean achieved return; ``targets``, ``episodes``.

Over all fixed targets: ``best_mean_return`` (the highest per-target mean; a max of noisy means, so
optimistic) and ``saturation_target``: the lowest target whose mean is within noise (its 95% CI, or
2% of the range) of that best — past it, asking for more gets no more.

:func:`difference_ci` compares two groups of training seeds (say a DT target and PPO-KL at one β):
the difference of their means with the Welch t-interval, the same t over seeds for unequal spreads.
Where the design is paired — two families trained on the same seeds and rolled out on the same env
seeds — :func:`paired_ci` is the t-interval of the per-unit differences instead. ``level`` widens an
interval for several comparisons at once (Bonferroni: 1 − 0.05/m for m comparisons).

Bounded quantities (fractions, probabilities) keep their intervals in bounds: :func:`wilson_interval`
for a fraction of episodes (one unit), :func:`bounded_mean_ci` for a mean over seeds — the t-interval
intersected with the quantity's range, which loses no coverage because the true mean lies in it.

One rule for every bounded quantity (:data:`BOUNDED`: a rank correlation in [−1, 1], an entropy ≥ 0, an effective
sample size in [1, n], a fraction in [0, 1]; not an action entropy, which for a Box action is a differential entropy
and can be negative): its interval is the t-interval intersected with that range
(:func:`bounded_interval`, by column name through :func:`bounds_of`), shown as ``mean [low, high]``, never as
``mean ± half`` reaching outside the range. Every results table goes through it.

``ood_gain``: mean achieved over the OOD targets above the data's range minus mean achieved at the
highest in-distribution target (fixed before looking at the results, unlike the best of several
means, whose max is biased upwards and would bias the gain down). Episodes are paired: evaluation
gives episode j of every target the same env seed, so each pair is one env seed (and one
fingerprint); ``ood_gain_ci95`` is the t-interval over those pairs, ``ood_gain_pairs`` their count.

Policy columns. Records carry the policy's typed identity (:class:`dtcond.rollout.contract.Policy`):
``policy_kind`` ("dt", "bc", "pct_bc", "ppo", "ppo_kl", ..., "data", "oracle"), ``policy_param`` (β, λ,
q, a cost limit) and ``train_step``; ``label`` is for display only and is never parsed.
"""

from __future__ import annotations

import math
import re

import numpy as np

from dtcond.common.errors import DtcondError


def ci95(values) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``values`` (non-finite values dropped).

    NaN with fewer than two finite values.

    >>> round(ci95([1.0, 2.0, 3.0]), 3)
    2.484
    >>> ci95([1.0])
    nan
    """
    from scipy.stats import t

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    return float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def mean_ci(values) -> tuple[float, float]:
    """Mean of the finite ``values`` and the half-width of its 95% t-interval (NaN, NaN when empty).

    >>> [round(x, 3) for x in mean_ci([1.0, 2.0, 3.0, float("nan")])]
    [2.0, 2.484]
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), ci95(v)


def t_halfwidth(values, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval at ``level`` of the mean of the finite ``values``.

    >>> round(t_halfwidth([1.0, 2.0, 3.0]), 3) == round(ci95([1.0, 2.0, 3.0]), 3)
    True
    """
    from scipy.stats import t

    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    return float(t.ppf(1 - (1 - level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def paired_ci(a, b, level: float = 0.95) -> tuple[float, float, int]:
    """mean(a − b) over the units where both are finite, the half-width of its t-interval at ``level``, and
    the number of pairs: ``a[i]`` and ``b[i]`` are one unit (one training seed on the same env seeds).

    >>> [round(x, 3) for x in paired_ci([3.0, 4.0, 6.0], [1.0, 2.0, 3.0])]
    [2.333, 1.434, 3]
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise DtcondError(f"paired_ci needs as many values on each side, got {len(a)} and {len(b)}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if not len(d):
        return float("nan"), float("nan"), 0
    return float(d.mean()), t_halfwidth(d, level), int(len(d))


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for a fraction ``successes / n``: inside [0, 1] at every n.

    >>> [round(x, 3) for x in wilson_interval(0, 10)]
    [0.0, 0.278]
    >>> [round(x, 3) for x in wilson_interval(7, 10)]
    [0.397, 0.892]
    """
    from scipy.stats import norm

    if n < 1:
        return float("nan"), float("nan")
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bounded_mean_ci(values, low: float = 0.0, high: float = 1.0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite ``values`` and its t-interval at ``level`` intersected with
    [low, high], the range the quantity lives in (a fraction per seed, say).

    >>> [round(x, 3) for x in bounded_mean_ci([1.0, 1.0, 0.3])]
    [0.767, 0.0, 1.0]
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    m, h = float(v.mean()), t_halfwidth(v, level)
    if not math.isfinite(h):
        return m, float("nan"), float("nan")
    return m, max(low, m - h), min(high, m + h)


INF = float("inf")
# The range of each bounded quantity, by its column name in records, tables and summaries. An ESS's upper end is the
# pool size it was computed over (``n`` in :func:`bounds_of`).
BOUNDED: dict[str, tuple[float, float]] = {
    "spearman": (-1.0, 1.0), "spearman_of_means": (-1.0, 1.0), "r2": (-INF, 1.0),  # an out-of-sample R² can be < 0
    "component_entropy": (0.0, INF), "component_posterior_entropy": (0.0, INF),  # over the data's components (discrete)
    "ess": (1.0, INF),
    "satisfied": (0.0, 1.0), "novel_fraction": (0.0, 1.0), "distinct_trajectories": (0.0, 1.0), "support_violation": (0.0, 1.0),
}
_HEADERS = ((("spearman", "ρ"), "spearman"), (("r²",), "r2"), (("component entropy",), "component_entropy"), (("ess",), "ess"),
            (("satisfied", "within the requested", "fraction", "share", "distinct traj"), "satisfied"))


def bounds_of(name: str, n: float | None = None) -> tuple[float, float] | None:
    """The range of the bounded quantity a column (or a table header) names, None for an unbounded one.

    >>> bounds_of("spearman"), bounds_of("Spearman ρ"), bounds_of("component entropy"), bounds_of("ess", 1000)
    ((-1.0, 1.0), (-1.0, 1.0), (0.0, inf), (1.0, 1000.0))
    >>> bounds_of("true_return") is None, bounds_of("spearman_ci95") is None
    (True, True)
    """
    key = str(name).strip()
    if key.endswith(("_ci95", "_lo", "_hi")):
        return None
    found = BOUNDED.get(key)
    if found is None and "cross" not in key.lower():  # a cross-entropy of densities can be negative
        low = key.lower()
        words = set(re.split(r"[^a-zα-ω²]+", low))
        for needles, column in _HEADERS:
            if any((w in words) if w in ("ess", "ρ", "r²") else (w in low) for w in needles):
                found = BOUNDED[column]
                break
    if found is None:
        return None
    if key.lower().split()[0:1] == ["ess"] or key == "ess":
        return (found[0], float(n) if n else found[1])
    return found


def bounded_interval(name: str, mean: float, half: float, n: float | None = None) -> tuple[float, float] | None:
    """The interval ``mean ± half`` of the quantity ``name`` intersected with its range (:data:`BOUNDED`); None when
    the quantity is unbounded or the interval is not finite. It loses no coverage: the true mean lies in the range.

    >>> bounded_interval("spearman", 0.81, 0.28)
    (0.53, 1.0)
    >>> bounded_interval("true_return", 1.0, 2.0) is None
    True
    """
    bounds = bounds_of(name, n)
    if bounds is None or not (math.isfinite(mean) and math.isfinite(half)):
        return None
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def verdict(diff: float, halfwidth: float, higher: str, lower: str) -> str:
    """``higher`` / ``lower`` where the interval diff ± halfwidth excludes 0, else "unresolved" (never "no effect").

    >>> verdict(2.0, 1.0, "DT higher", "PPO higher"), verdict(0.5, 1.0, "DT higher", "PPO higher")
    ('DT higher', 'unresolved')
    """
    if not (math.isfinite(diff) and math.isfinite(halfwidth)) or abs(diff) <= halfwidth:
        return "unresolved"
    return higher if diff > 0 else lower


def difference_ci(a, b) -> tuple[float, float]:
    """mean(a) − mean(b) and the half-width of its 95% Welch t-interval: two independent groups of
    units (e.g. the training seeds of two policy families), each unit one value. NaN with fewer than
    two finite values in either group.

    >>> [round(x, 3) for x in difference_ci([3.0, 4.0, 5.0], [1.0, 2.0, 3.0])]
    [2.0, 2.267]
    """
    from scipy.stats import t

    a, b = (np.asarray(x, dtype=float).ravel() for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(a.mean() - b.mean())
    if va + vb == 0:
        return diff, 0.0
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff, float(t.ppf(0.975, dof) * math.sqrt(va + vb))


def grouped_mean_ci(df, column: str, unit: str = "fingerprint") -> tuple[float, float, int]:
    """Mean and 95% CI of ``df[column]`` over units (training seeds: one fingerprint each) when there
    are at least two, from each unit's own mean; otherwise over episodes. Returns (mean, ci, units).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"fingerprint": ["a", "a", "b", "b"], "r": [1.0, 3.0, 5.0, 7.0]})
    >>> [round(x, 2) for x in grouped_mean_ci(df, "r")]
    [4.0, 25.41, 2]
    """
    if column not in df:
        raise DtcondError(f"no column {column!r} in the table; it has {sorted(map(str, df.columns))}")
    import pandas as pd

    vals = pd.to_numeric(df[column], errors="coerce").astype(float)
    finite = np.isfinite(vals.to_numpy())
    if unit not in df:
        return (*mean_ci(vals), int(finite.any()))
    units = df[unit][finite]
    if units.nunique() >= 2:
        per_unit = vals[finite].groupby(units, sort=False).mean()
        return (*mean_ci(per_unit), int(per_unit.size))
    return (*mean_ci(vals), int(units.nunique()))


def with_policy_columns(df):
    """``df`` with its typed policy columns checked: the family from ``policy_kind`` (in records and tables alike),
    and ``train_step`` as an int or None (None where a record has none). A table without the family is refused:
    labels are never parsed. Tables written before their family column was named ``policy_kind`` (``kind``) are
    read with it renamed, and the ``algo`` column of older records (a repeat of ``policy_kind``) is dropped.

    >>> import pandas as pd
    >>> with_policy_columns(pd.DataFrame({"policy_kind": ["ppo", "dt"], "train_step": [500, None]}))[["policy_kind", "train_step"]].values.tolist()
    [['ppo', 500], ['dt', None]]
    """
    import pandas as pd

    if "policy_kind" not in df and "kind" in df:  # a comparison table written before the column had one name
        df = df.rename(columns={"kind": "policy_kind"})
    if "policy_kind" not in df:
        raise DtcondError("the table has no policy_kind column, so its policies are unknown (records written by "
                          "dtcond.evaluate carry it; labels are not parsed): evaluate the policies again")
    df = df.drop(columns=["algo"], errors="ignore")  # copies
    step = df["train_step"] if "train_step" in df else pd.Series([None] * len(df), index=df.index, dtype=object)
    df["train_step"] = pd.Series([int(s) if _finite(s) else None for s in step], index=df.index, dtype=object)
    return df


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and R² of the least-squares line y ~ x."""
    from scipy.stats import linregress

    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    fit = linregress(x, y)
    return float(fit.slope), float(fit.rvalue**2)


def _pair_keys(df) -> list[str]:
    """Columns identifying one episode's env across targets: its env seed (or seed and index) per fingerprint."""
    keys = ["fingerprint"] if "fingerprint" in df else []
    if "env_seed" in df and df["env_seed"].notna().all():
        return keys + ["env_seed"]
    if "episode" in df:
        return keys + [c for c in ("seed", "episode") if c in df]
    raise DtcondError("the records have neither env_seed nor episode, so OOD and in-distribution episodes cannot be paired")


def _split_metrics(part, span: float) -> dict:
    x, y = part["target"].to_numpy(float), part["episode_return"].to_numpy(float)
    err = y - x
    slope, r2 = _fit(x, y)
    return {
        "targets": int(np.unique(x).size),
        "episodes": int(len(part)),
        "mae": float(np.abs(err).mean()),
        "bias": float(err.mean()),
        "normalized_mae": float(np.abs(err).mean() / span),
        "normalized_bias": float(err.mean() / span),
        "slope": slope,
        "r2": r2,
        "spearman": _spearman(x, y),
        "mean_return": float(y.mean()),
    }


def ood_gain(fixed, data_max: float) -> dict:
    """Paired OOD gain (see the module doc) of fixed-target records; empty when there is no OOD
    target above the data's range or no in-distribution target.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"target": [5.0, 5.0, 20.0, 20.0], "ood": [False, False, True, True],
    ...                    "episode_return": [4.0, 6.0, 5.0, 8.0], "env_seed": [1, 2, 1, 2]})
    >>> ood_gain(df, data_max=10.0)["ood_gain"]
    1.5
    """
    ood = fixed["ood"].astype(bool).to_numpy()
    ind = fixed[~ood]
    if not len(ind):
        return {}
    reference = float(ind["target"].astype(float).max())
    above = fixed[ood & (fixed["target"].astype(float).to_numpy() > max(reference, data_max))]
    if not len(above):
        return {}
    keys = _pair_keys(fixed)
    ref = ind[ind["target"].astype(float) == reference].groupby(keys)["episode_return"].mean()
    out = above.groupby(keys)["episode_return"].mean()  # one value per env seed: mean over the OOD targets
    diff = (out - ref).dropna()
    gain, ci = mean_ci(diff.to_numpy(float))
    return {"ood_gain": gain, "ood_gain_ci95": ci, "ood_gain_pairs": int(diff.size),
            "ood_gain_reference_target": reference, "ood_gain_targets": int(above["target"].nunique())}


def cost_tracking(df, requested: str = "cost_target") -> dict:
    """How one policy's achieved episode costs follow the requested ones (``requested``: a column of
    records, e.g. the joint target's ``cost_target``, or a PPO-Lagrangian's cost limit).

    ``spearman``: Spearman ρ between requested and achieved cost over episodes; ``spearman_of_means``:
    over the per-target mean costs; ``mae``/``bias``: achieved − requested; ``satisfied``: the share
    of episodes whose cost is at most the requested one.

    >>> import pandas as pd
    >>> m = cost_tracking(pd.DataFrame({"cost_target": [0.0, 0.0, 4.0, 4.0, 9.0, 9.0], "cost": [0.0, 1.0, 4.0, 3.0, 9.0, 12.0]}))
    >>> round(m["spearman"], 3), round(m["satisfied"], 3), m["targets"]
    (0.956, 0.667, 3)
    """
    missing = {requested, "cost"} - set(df.columns)
    if missing:
        raise DtcondError(f"the records lack the columns {sorted(missing)} that cost tracking needs (a cost-reporting env?)")
    x, y = df[requested].to_numpy(float), df["cost"].to_numpy(float)
    means = df.groupby(requested)["cost"].mean()
    return {
        "targets": int(np.unique(x).size),
        "episodes": int(len(x)),
        "spearman": _spearman(x, y),
        "spearman_of_means": _spearman(means.index.to_numpy(float), means.to_numpy(float)),
        "mae": float(np.abs(y - x).mean()),
        "bias": float((y - x).mean()),
        "satisfied": float((y <= x + 1e-9).mean()),
    }


def calibration_metrics(df, data_returns) -> dict:
    """Calibration of one policy's records against the data's episode returns (see the module doc).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"target_spec": ["5", "5"], "target": [5.0, 5.0], "ood": [False, False],
    ...                    "episode_return": [3.0, 9.0], "episode": [0, 1]})
    >>> m = calibration_metrics(df, [0.0, 10.0])["in_distribution"]
    >>> m["mae"], m["bias"]
    (3.0, 1.0)
    """
    returns = np.asarray(data_returns, dtype=float).ravel()
    returns = returns[np.isfinite(returns)]
    if not returns.size:
        raise DtcondError("the data's episode returns are empty, so calibration has no range to measure against")
    missing = {"target", "episode_return", "ood"} - set(df.columns)
    if missing:
        raise DtcondError(f"the records lack the columns {sorted(missing)} that calibration needs")
    lo, hi = float(returns.min()), float(returns.max())
    span = max(hi - lo, 1e-9)
    targets = df["target"].astype(float)
    fixed = df[np.isfinite(targets.to_numpy())]
    if "target_spec" in fixed:
        fixed = fixed[~fixed["target_spec"].astype(str).str.startswith("quantilizer")]
    out: dict = {"data_min_return": lo, "data_max_return": hi}
    ood = fixed["ood"].astype(bool)
    for name, part in (("in_distribution", fixed[~ood]), ("ood", fixed[ood])):
        out[name] = _split_metrics(part, span) if len(part) else None
    if len(fixed):
        per_target = fixed.groupby(fixed["target"].astype(float))["episode_return"]
        means = per_target.mean()
        cis = per_target.agg(lambda v: ci95(v.to_numpy(float)))
        best = float(means.max())
        noise = np.nanmax([cis.max(), 0.02 * span])
        out["saturation_target"] = float(means.index[means.to_numpy() >= best - noise].min())
        out["best_mean_return"] = best
        out.update(ood_gain(fixed, hi))
    return out
