"""The frontier on the exact axis: true and observed return against KL(p_π‖p_data), per family and parameter.

Built from a :func:`dtcond.report.comparison_table` whose rows carry ``trajectory_kl`` (the data's exact
likelihood, :mod:`dtcond.likelihood`):

- :func:`frontier_rows`: one typed row per family and parameter (``family``, ``param``, ``seeds``, and
  mean with its 95% interval for each metric), the content of an experiment's ``frontier.json``;
- :func:`quantilizer_check`: is the DT a quantilizer? ``quantilizer:q`` and the matching quantile target
  beside the oracle q-quantilizers, with the difference's interval;
- :func:`gao_fit`: Gao, Schulman & Hilton's (2022) functional forms of return gain against d = √KL.

Intervals are the table's (t over training seeds, or over oracle pools); differences between two families
are Welch t-intervals over their independent units (:func:`dtcond.stats.difference_ci`).
"""

from __future__ import annotations

import math

import numpy as np

from dtcond.oracles import MIN_ESS
from dtcond.stats import difference_ci, kl_coef_of

METRICS = ("true_return", "episode_return", "trajectory_kl", "trajectory_kl_per_step", "trajectory_kl_conditional", "kl_behavior",
           "component_entropy", "cost", "ess")
NAMES = {"episode_return": "observed_return"}  # the frontier's name for the reward the policy saw


def row_identity(row) -> tuple[str, object]:
    """(family, param) of a comparison-table row: typed columns first, the label only for tables without them.

    >>> row_identity({"kind": "oracle", "oracle_family": "quantilizer", "oracle_param": 0.1})
    ('oracle_quantilizer', 0.1)
    >>> row_identity({"kind": "dt", "label": "dt", "target_spec": "q0.5"})
    ('dt', 'q0.5')
    """
    kind, label = row.get("kind"), row.get("label")
    if kind == "oracle":
        return f"oracle_{row['oracle_family']}", float(row["oracle_param"])
    if kind == "dt":
        return str(label or "dt"), row.get("target_spec")
    param = row.get("policy_param")
    if param is None or (isinstance(param, float) and math.isnan(param)):
        param = kl_coef_of(label) if label else None
    algo = row.get("algo") or kind
    if kind in ("ppo", "sac") or (isinstance(algo, str) and algo in ("ppo", "sac") and param is None):
        return str(algo), row.get("train_step")
    if param is None and kind == "pct_bc" and label and ":" in label:
        param = float(label.split(":")[1])  # tables written before the typed column
    return str(kind), param


def frontier_rows(table) -> list[dict]:
    """One row per family and parameter: mean, ``_lo``/``_hi`` (95% interval) and ``_ci95`` for each metric."""
    rows = []
    for _, r in table.iterrows():
        r = r.to_dict()
        family, param = row_identity(r)
        out = {"family": family, "param": param, "label": r.get("label"), "target_spec": r.get("target_spec"),
               "seeds": int(r.get("seeds", 0)), "episodes": int(r.get("episodes", 0))}
        for m in METRICS:
            v, ci = r.get(m, float("nan")), r.get(f"{m}_ci95", float("nan"))
            name = NAMES.get(m, m)
            v = float(v) if v is not None else float("nan")
            ci = float(ci) if ci is not None else float("nan")
            out[name] = v if math.isfinite(v) else (v if v == float("inf") else None)
            out[f"{name}_ci95"] = ci if math.isfinite(ci) else None
            out[f"{name}_lo"] = v - ci if math.isfinite(v) and math.isfinite(ci) else None
            out[f"{name}_hi"] = v + ci if math.isfinite(v) and math.isfinite(ci) else None
        if r.get("kind") == "oracle" and r.get("oracle_family") == "posterior":
            out["ess_ok"] = bool(r.get("ess", 0) >= MIN_ESS)
        rows.append(out)
    return rows


def _units(df, label: str, target_spec: str, column: str):
    """One value per unit (training seed or oracle pool: a fingerprint each) of a row's ``column``."""
    import pandas as pd

    part = df[(df["label"] == label) & (df["target_spec"] == target_spec)]
    return pd.to_numeric(part[column], errors="coerce").groupby(part["fingerprint"]).mean()


QUANTILE_TARGET = {0.5: "q0.5", 0.25: "q0.75", 0.1: "q0.9"}  # the fixed target at the oracle's threshold quantile


def quantilizer_check(df, table, qs=(0.5, 0.25, 0.1), dt_label: str = "dt") -> list[dict]:
    """Per q: the DT at ``quantilizer:q`` and at the matching quantile target beside the oracle trajectory
    quantilizer and plan quantilizer at q, with log(1/q), and the DT − oracle difference (Welch t over units)
    in true return, observed return and trajectory KL. ``verdict`` says "unresolved" where the interval
    contains 0."""
    out = []
    for q in qs:
        oracle_spec = f"quantilizer:{q:g}"
        for dt_spec in (f"quantilizer:{q:g}", QUANTILE_TARGET.get(q)):
            have = table[(table["label"] == dt_label) & (table["target_spec"] == dt_spec)]
            if dt_spec is None or not len(have):
                continue
            for oracle in ("quantilizer", "plan_quantilizer"):
                spec = f"{oracle}:{q:g}" if oracle == "plan_quantilizer" else oracle_spec
                o = table[(table["label"] == "oracle") & (table["target_spec"] == spec)]
                if not len(o):
                    continue
                row = {"q": q, "log_1_over_q": math.log(1 / q), "dt": dt_spec, "oracle": spec}
                for col in ("true_return", "episode_return", "trajectory_kl"):
                    name = NAMES.get(col, col)
                    row[f"dt_{name}"], row[f"dt_{name}_ci95"] = float(have[col].iloc[0]), float(have[f"{col}_ci95"].iloc[0])
                    row[f"oracle_{name}"], row[f"oracle_{name}_ci95"] = float(o[col].iloc[0]), float(o[f"{col}_ci95"].iloc[0])
                    d, ci = difference_ci(_units(df, dt_label, dt_spec, col), _units(df, "oracle", spec, col))
                    row[f"difference_{name}"], row[f"difference_{name}_ci95"] = d, ci
                    row[f"verdict_{name}"] = ("unresolved" if not math.isfinite(ci) or abs(d) <= ci else
                                              ("DT higher" if d > 0 else "oracle higher"))
                out.append(row)
    return out


def gao_fit(kl, gain, form: str) -> dict:
    """Least-squares fit of Gao et al.'s forms of return gain against d = √KL, through the origin:
    ``"bon"`` R(d) = d(α − βd), ``"rl"`` R(d) = d(α − β log d). Returns α, β, R² and the number of points
    (R² is of the gain around its mean; with fewer than 3 points the fit is not reported).

    >>> d = np.array([0.5, 1.0, 1.5, 2.0]); fit = gao_fit(d ** 2, d * (3 - 1 * d), "bon")
    >>> round(fit["alpha"], 6), round(fit["beta"], 6), round(fit["r2"], 6)
    (3.0, 1.0, 1.0)
    """
    kl, gain = np.asarray(kl, dtype=float), np.asarray(gain, dtype=float)
    keep = np.isfinite(kl) & np.isfinite(gain) & (kl > 0)
    kl, gain = kl[keep], gain[keep]
    if len(kl) < 3:
        return {"form": form, "alpha": None, "beta": None, "r2": None, "points": int(len(kl))}
    d = np.sqrt(kl)
    X = np.stack([d, -(d * d if form == "bon" else d * np.log(d))], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(X, gain, rcond=None)
    resid = gain - X @ np.array([alpha, beta])
    ss = ((gain - gain.mean()) ** 2).sum()
    return {"form": form, "alpha": float(alpha), "beta": float(beta), "r2": float(1 - (resid ** 2).sum() / ss) if ss > 0 else None,
            "points": int(len(kl))}
