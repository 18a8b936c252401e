"""The frontier on the exact axis: true and observed return against KL(p_π‖p_data), per family and parameter.

Built from a :func:`dtcond.analysis.report.comparison_table` whose rows carry ``trajectory_kl`` (the data's exact
likelihood, :mod:`dtcond.behavior.likelihood`):

- :func:`frontier_rows`: one typed row per family and parameter (``family``, ``param``, ``seeds``, and
  mean with its 95% interval for each metric), the content of an experiment's ``frontier.json``;
- :func:`quantilizer_check`: is the DT a quantilizer? ``quantilizer:q`` and the matching quantile target
  beside the oracle q-quantilizers, with the difference's interval;
- :func:`gao_fit`: Gao, Schulman & Hilton's (2022) functional forms of return gain against d = √KL;
- :func:`budget_comparisons`: two families compared at fixed divergence budgets, each family's frontier
  interpolated per training seed, chosen on half of the env seeds and scored on the other half;
- :func:`with_posterior` and :func:`posterior_markdown`: an RL-fine-tuned family's distance to the posterior its
  objective promises (:func:`dtcond.analysis.oracles.posterior_gaps`), on its frontier rows and as a table.

Intervals are the table's (t over training seeds, or over oracle pools); differences between two families
are Welch t-intervals over their independent units (:func:`dtcond.analysis.statistics.difference_ci`).
"""

from __future__ import annotations

import math

import numpy as np

from dtcond import families
from dtcond.analysis.oracles import MIN_ESS
from dtcond.analysis.statistics import bounded_interval, difference_ci, mean_ci, paired_ci, verdict
from dtcond.common.errors import DtcondError

METRICS = ("true_return", "episode_return", "trajectory_kl", "trajectory_kl_per_step", "trajectory_kl_conditional", "kl_behavior",
           "component_entropy", "cost", "ess")
NAMES = {"episode_return": "observed_return"}  # the frontier's name for the reward the policy saw


def row_identity(row) -> tuple[str, object]:
    """(family, param) of a comparison-table row, from its typed columns (the label is display only).

    >>> row_identity({"policy_kind": "oracle", "oracle_family": "quantilizer", "oracle_param": 0.1})
    ('oracle_quantilizer', 0.1)
    >>> row_identity({"policy_kind": "dt", "label": "dt", "target_spec": "q0.5"})
    ('dt', 'q0.5')
    """
    kind, label = row.get("policy_kind"), row.get("label")
    if kind == "oracle":
        return f"oracle_{row['oracle_family']}", float(row["oracle_param"])
    if kind == "dt":
        return str(label or "dt"), row.get("target_spec")
    param = row.get("policy_param")
    if isinstance(param, float) and math.isnan(param):
        param = None
    if kind in ("ppo", "sac"):  # plain RL: its checkpoints are its members
        return str(kind), row.get("train_step")
    return str(kind), param


def frontier_rows(table, extra: tuple[str, ...] = ()) -> list[dict]:
    """One row per family and parameter: mean, ``_lo``/``_hi`` (95% interval, inside a bounded quantity's range:
    :func:`dtcond.analysis.statistics.bounded_interval`) and ``_ci95`` (the t half-width) for each metric
    (:data:`METRICS`, and the ``extra`` columns an experiment reports, such as ``log_ratio_prior``)."""
    rows = []
    for _, r in table.iterrows():
        r = r.to_dict()
        family, param = row_identity(r)
        out = {"family": family, "param": param, "label": r.get("label"), "target_spec": r.get("target_spec"),
               "seeds": int(r.get("seeds", 0)), "episodes": int(r.get("episodes", 0))}
        for m in (*METRICS, *extra):
            v, ci = r.get(m, float("nan")), r.get(f"{m}_ci95", float("nan"))
            name = NAMES.get(m, m)
            v = float(v) if v is not None else float("nan")
            ci = float(ci) if ci is not None else float("nan")
            out[name] = v if math.isfinite(v) else (v if v == float("inf") else None)
            out[f"{name}_ci95"] = ci if math.isfinite(ci) else None
            span = bounded_interval(m, v, ci) if math.isfinite(v) and math.isfinite(ci) else None  # in the quantity's range
            out[f"{name}_lo"] = (span[0] if span else v - ci) if math.isfinite(v) and math.isfinite(ci) else None
            out[f"{name}_hi"] = (span[1] if span else v + ci) if math.isfinite(v) and math.isfinite(ci) else None
        if r.get("policy_kind") == "oracle" and r.get("oracle_family") == "posterior":
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


def family_records(df, family: str):
    """The records of ``family`` (a budget-comparison group of the registry, :func:`dtcond.families.frontier_groups`:
    ``conditioning`` is the plain, not relabelled, DT at every target; or ``dt:<method>`` for a DT on relabelled
    returns) with a ``member`` column: the DT's target spec, or the family's parameter (β, λ, the cost limit)."""
    if family.startswith("dt:"):  # a relabelled DT, by its label
        part = df[(df["policy_kind"] == "dt") & (df["label"] == family)]
        return part.assign(member=part["target_spec"].astype(str))
    groups = families.frontier_groups()
    if family not in groups:
        raise DtcondError(f"unknown family {family!r}; choose one of {', '.join(groups)} or dt:<relabel method>")
    part = df[df["policy_kind"].isin(groups[family])]
    if family == "conditioning":
        part = part[part["label"] == "dt"]
        return part.assign(member=part["target_spec"].astype(str))
    member = part["policy_param"] if "policy_param" in part else part["label"]
    return part.assign(member=member.where(member.notna(), part["label"]).astype(str))


def envelope_choice(kl, value, budget: float):
    """The best mixture of a family's members whose KL stays within ``budget``: ``(i, j, p)``, member i with
    probability p and member j with 1 − p (i == j for a single member), or None when no member is within it.

    Choosing a member at the start of each episode with probability p gives the mixture of their returns,
    and KL(p_mix‖p_data) ≤ p·KL_i + (1 − p)·KL_j by convexity, so the upper concave envelope of the
    (KL, value) points is achievable at every budget between them.

    >>> envelope_choice([1.0, 3.0, 5.0], [10.0, 30.0, 20.0], 2.0)
    (0, 1, 0.5)
    >>> envelope_choice([1.0, 3.0], [10.0, 30.0], 4.0), envelope_choice([1.0], [10.0], 0.5)
    ((1, 1, 1.0), None)
    """
    kl, value = np.asarray(kl, dtype=float), np.asarray(value, dtype=float)
    ok = np.isfinite(kl) & np.isfinite(value)
    best, choice = -np.inf, None
    for i in np.flatnonzero(ok & (kl <= budget)):
        if value[i] > best:
            best, choice = value[i], (int(i), int(i), 1.0)
        for j in np.flatnonzero(ok & (kl > budget) & (kl < math.inf)):
            p = float((kl[j] - budget) / (kl[j] - kl[i]))
            v = p * value[i] + (1 - p) * value[j]
            if v > best:
                best, choice = v, (int(i), int(j), p)
    return choice


def _seed_frontier(part, budget: float, kl: str, column: str, others: tuple[str, ...]):
    """One seed of one family: the envelope choice made on the even-numbered episodes and its ``column``,
    ``kl`` (and ``others``) on the odd-numbered ones; None where no member is within the budget."""
    import pandas as pd

    cols = [kl, column, *others]
    frame = part[["member", "episode", *cols]].copy()
    for c in cols:
        frame[c] = pd.to_numeric(frame[c], errors="coerce").astype(float)
    half = frame["episode"].astype(int) % 2
    pick = frame[half == 0].groupby("member", sort=False)[cols].mean()
    score = frame[half == 1].groupby("member", sort=False)[cols].mean().reindex(pick.index)
    choice = envelope_choice(pick[kl], pick[column], budget)
    if choice is None:
        return None
    i, j, p = choice
    out = {c: float(p * score[c].iloc[i] + (1 - p) * score[c].iloc[j]) for c in cols}
    members = [(str(pick.index[i]), p)] + ([(str(pick.index[j]), 1 - p)] if j != i else [])
    out["mixture"] = " + ".join(f"{m} ({w:.2f})" for m, w in members)
    return out


def check_budgets(budgets) -> list:
    """Divergence budgets as floats > 0 (None: no budget), or a one-line error naming the bad value.

    >>> check_budgets([5, "10", None])
    [5.0, 10.0, None]
    """
    out = []
    for b in list(budgets or []):
        try:
            value = None if b is None else float(b)
        except (TypeError, ValueError):
            raise DtcondError(f"budgets must be numbers > 0 (nats per episode) or null, got {b!r}") from None
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise DtcondError(f"budgets must be numbers > 0 (nats per episode) or null, got {b!r}")
        out.append(value)
    if not out:
        raise DtcondError("budgets is empty: give at least one divergence budget, e.g. [5, 10, 20]")
    return out


def budget_comparisons(df, budgets, reference: str = "conditioning", against=("ppo_kl", "ppo_om"), column: str = "true_return",
                       kl: str = "trajectory_kl", unit: str = "train_seed", others=("episode_return",),
                       comparisons: int | None = None) -> list[dict]:
    """Family ``reference`` against each family in ``against`` at each divergence budget (nats per episode).

    Per training seed and family, the members' (KL, ``column``) points are averaged over the even-numbered
    episodes (env seeds) and the best mixture within the budget chosen on them (:func:`envelope_choice`);
    its ``column`` and KL are then read off the odd-numbered episodes, which played no part in the choice
    (held-out selection: no family gains from being a max over more noisy members). The two families share
    training seeds and env seeds, so the difference is a paired t-interval over the seeds where both
    families reach the budget; each entry also carries the Bonferroni-widened interval for all
    ``len(budgets) · len(against)`` comparisons. A family that reaches the budget on fewer than two seeds
    leaves the entry unresolved; one that reaches it on no seed makes the verdict "not reached by <family>".
    A budget of None is no budget: each family's best member, chosen held out.
    ``comparisons`` counts the comparisons a report makes in all, where it makes more than this call's.
    """
    budgets, against = check_budgets(budgets), list(against)
    m = int(comparisons or len(budgets) * len(against))
    fams = {f: family_records(df, f) for f in [reference, *against]}
    out = []
    for other in against:
        for b in budgets:
            per = {}
            for f in (reference, other):
                part = fams[f]
                limit = math.inf if b is None else b
                per[f] = {int(s): _seed_frontier(p, limit, kl, column, tuple(others)) for s, p in part.groupby(unit)} if len(part) else {}
            seeds = sorted(set(per[reference]) | set(per[other]))

            def values(f, c):
                return [per[f].get(s)[c] if per[f].get(s) else float("nan") for s in seeds]

            entry = {"budget": b, "kl": kl, "metric": column, "families": [reference, other], "seeds": seeds,
                     "selection": "held out: chosen on even-numbered env episodes, scored on odd-numbered ones",
                     "comparisons": m}
            for f, name in ((reference, "reference"), (other, "other")):
                v = values(f, column)
                mean, ci = mean_ci(v)
                held_out_kl = values(f, kl)
                entry[name] = {"family": f, column: mean, f"{column}_ci95": ci, "per_seed": v,
                               "reached": int(np.isfinite(v).sum()), "trajectory_kl_per_seed": held_out_kl,
                               "within_budget_held_out": within_budget(held_out_kl, b),
                               "mixtures": [per[f].get(s)["mixture"] if per[f].get(s) else None for s in seeds]}
                for c in others:
                    entry[name][c] = mean_ci(values(f, c))[0]
            d, ci, n = paired_ci(values(reference, column), values(other, column))
            _, ci_b, _ = paired_ci(values(reference, column), values(other, column), level=1 - 0.05 / m)
            short = [f for f, name in ((reference, "reference"), (other, "other")) if entry[name]["reached"] == 0]
            if short:  # a family with no member inside the budget: nothing to compare, and that is the finding
                v = v_b = f"not reached by {' or '.join(short)}"
            else:
                v = verdict(d, ci, f"{reference} higher", f"{other} higher")
                v_b = verdict(d, ci_b, f"{reference} higher", f"{other} higher")
            entry.update(difference=d, difference_ci95=ci, difference_ci_bonferroni=ci_b, pairs=n, verdict=v, verdict_bonferroni=v_b)
            out.append(_finite_or_none(entry))
    return out


def within_budget(held_out_kl, budget) -> int:
    """The seeds whose chosen mixture's KL, read off the held-out episodes it is scored on, is within ``budget``
    (None: every seed that reached a choice). The choice is made on the other half of the episodes, so a mixture
    at the budget there can land above it here: this count says how often.

    >>> within_budget([4.0, 6.0, None, float("nan")], 5.0), within_budget([4.0, 6.0], None)
    (1, 2)
    """
    kl = np.array([np.nan if k is None else k for k in held_out_kl], dtype=float)
    reached = np.isfinite(kl)
    return int(reached.sum() if budget is None else (reached & (kl <= budget)).sum())


def _finite_or_none(value):
    """NaN and ±inf floats as None, recursively: the entries go to JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


BUDGET_NOTE = ("Each family's frontier (true return against KL(p_π‖p_data)) per training seed: the best mixture of its members "
               "({members}) whose KL stays within the budget, mixing two members per episode (the KL of a mixture is at most "
               "the mixture of their KLs). The mixture is chosen on the even-numbered evaluation episodes and scored on the "
               "odd-numbered ones, so no family gains from being a max over more rows; \"none\" is no budget, the family's best "
               "member chosen the same way. \"Within held out\": of the seeds that reached the budget, those whose chosen mixture's "
               "KL on the odd-numbered episodes (where it is scored) is still within it; the rest exceed it by noise or by "
               "selection, so their verdict rests partly on a larger divergence than the budget names. Differences are paired over training seeds (same seeds, same env seeds), 95% "
               "t-intervals; {m} comparisons, so the Bonferroni column widens each to 1 − 0.05/{m}. \"unresolved\": the interval "
               "contains 0. \"reached\": the seeds on which some member of the family is within the budget; \"not reached by\" a "
               "family: none of its members is within the budget on any seed.")


def _pm(v, ci, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f} ± {ci:.{digits}f}" if ci is not None and math.isfinite(ci) else f"{v:.{digits}f}"


def budget_markdown(budgets: list[dict], what: str = "true return", digits: int = 1) -> str:
    """The :func:`budget_comparisons` entries as a markdown table, one line per budget and pair of families."""
    lines = [f"| budget (nats/episode) | families | {what}: first | {what}: second | seeds reached | within held out "
             "| first − second (95%) | verdict | Bonferroni interval | verdict (Bonferroni) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for e in budgets:
        ref, oth = e["reference"], e["other"]
        col = e["metric"]
        budget = "none" if e["budget"] is None else f"{e['budget']:g}"
        bonf = e["difference_ci_bonferroni"] if e["difference_ci_bonferroni"] is not None else float("nan")
        lines.append(f"| {budget} | {ref['family']} vs {oth['family']} | {_pm(ref[col], ref[f'{col}_ci95'], digits)} "
                     f"| {_pm(oth[col], oth[f'{col}_ci95'], digits)} | {ref['reached']} / {oth['reached']} "
                     f"| {within_budget(ref['trajectory_kl_per_seed'], e['budget'])} / {within_budget(oth['trajectory_kl_per_seed'], e['budget'])} "
                     f"| {_pm(e['difference'], e['difference_ci95'], digits)} | {e['verdict']} "
                     f"| {'± ' + format(bonf, f'.{digits}f') if math.isfinite(bonf) else '–'} | {e['verdict_bonferroni']} |")
    return "\n".join(lines)


POSTERIOR_NOTE = ("Distance to the promised posterior P_β = p_BC(τ)·exp(R(τ)/β)/Z: KL(p_π‖P_β) = E_π[log p_π/p_BC − R/β] + log Z "
                  "(nats per episode), per training seed from the fine-tuned policy's {episodes} evaluation episodes (their exact "
                  "log-ratio to the seed's BC model) and log Z from the BC model's own pool of episodes; mean and 95% t-interval over seeds. "
                  "The posterior's own observed and true return are the pool reweighted by exp(R/β). A seed whose pool has an "
                  f"effective sample size below {MIN_ESS:g} under those weights is listed: its log Z is biased low, and so is its "
                  "distance. TomatoGarden's env is stochastic, so P_β also selects on the env's luck, which no policy can: the "
                  "distance has a floor above 0 that this run does not separate from optimization error (on Gamble, whose episodes "
                  "can all be listed, the luck experiment separates them exactly: dtcond.analysis.soft_optimum). Snapshots with the same "
                  "weights (thresholds crossed between the same two checks, or never crossed: the run's end) act identically and "
                  "share one row, the first of them.")
GAO_NOTE = ("Gao et al.'s comparison: RLFT-KL's members (β, β = 0 included) against RLFT-stop's (the thresholds), each family's "
            "best mixture within a budget on **KL(p_π‖p_BC), the divergence from the prior that the penalty and the stopping "
            "rule both control** (the episodes' `log_ratio_prior`), chosen on the even-numbered episodes and scored on the "
            "odd-numbered ones; true return, paired over training seeds, 95% t-intervals; {m} comparisons (Bonferroni column).")
POSTERIOR_FIELDS = ("kl_to_posterior", "kl_to_posterior_ci95", "posterior_return", "posterior_return_ci95", "posterior_true_return",
                    "posterior_true_return_ci95", "low_ess_seeds")


def with_posterior(rows: list[dict], posterior: list[dict]) -> list[dict]:
    """:func:`frontier_rows` with each RL-fine-tuned β row carrying its distance to the promised posterior (and the
    posterior's own returns) from :func:`dtcond.analysis.oracles.posterior_gaps`, matched on family and β."""
    by_beta = {(p["family"], float(p["beta"])): p for p in posterior}
    out = []
    for r in rows:
        gap = by_beta.get((r["family"], float(r["param"]))) if isinstance(r.get("param"), (int, float)) else None
        out.append({**r, **({k: gap[k] for k in POSTERIOR_FIELDS} if gap else {})})
    return out


def posterior_markdown(posterior: list[dict]) -> str:
    """The :func:`dtcond.analysis.oracles.posterior_gaps` rows as a markdown table, one line per β."""
    lines = ["| β | seeds | KL to the posterior | KL(p_π‖p_BC) | observed return | true return | posterior's observed return "
             "| posterior's true return | low-ESS seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in posterior:
        low = f" (low ESS on {len(r['low_ess_seeds'])} of {len(r['seeds'])} seeds: not evidence)" if r["low_ess_seeds"] else ""
        lines.append(f"| {r['beta']:g} | {len(r['seeds'])} | {_pm(r['kl_to_posterior'], r['kl_to_posterior_ci95'])}{low} "
                     f"| {_pm(r['kl_to_prior'], r['kl_to_prior_ci95'])} | {_pm(r['return'], r['return_ci95'])} "
                     f"| {_pm(r['true_return'], r['true_return_ci95'])} | {_pm(r['posterior_return'], r['posterior_return_ci95'])} "
                     f"| {_pm(r['posterior_true_return'], r['posterior_true_return_ci95'])} | {r['low_ess_seeds'] or 'none'} |")
    return "\n".join(lines)
