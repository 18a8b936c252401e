"""Reports over a results table: calibration of the DT, and the comparison of all policies.

- ``calibration.md``/``.png``/``.json``: per target, the achieved return (mean ± 95% CI), its mean
  absolute error and bias against the target; per policy, the calibration metrics of
  :func:`dtcond.analysis.statistics.calibration_metrics` (per-episode MAE and bias, slope, R², Spearman ρ, the
  saturation target, the paired OOD gain), each defined in :mod:`dtcond.analysis.statistics`.
- ``comparison.md`` and its frontier plot: every policy (data, DT per target, BC/%BC, RL checkpoints)
  with return, true return, cost, target error and how far it roamed from the data — the exact
  KL(π‖β̂) where the policy's action distribution is known, and the cross-entropy H(π,β̂).

Every interval is :func:`dtcond.analysis.statistics.ci95` (Student t), over training seeds where a row has
several and over episodes otherwise. Quantilizer specs draw a target per episode; they appear in
the per-target table, not in the fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dtcond import families
from dtcond.common.errors import DtcondError
from dtcond.common.fileio import atomic_write, save_figure
from dtcond.analysis.statistics import calibration_metrics, ci95, grouped_mean_ci, with_policy_columns

__all__ = ["calibration_metrics", "comparison_table", "console_summary", "per_target_table", "plot_frontier", "plot_questions", "quantilizer_bound",
           "write_report"]

CROSS_ENTROPY_LABEL = "cross-entropy H(π,β̂) under β̂ (nats/step)"
KL_LABEL = "KL(π‖β̂) (nats/step)"


def per_target_table(df):
    """One row per (policy, target spec): the achieved return's mean, std and 95% CI, and the
    per-episode error against the target: ``mae`` (mean |achieved − target|) and ``bias`` (mean
    achieved − target).

    >>> import pandas as pd
    >>> df = pd.DataFrame({"fingerprint": "f", "policy_kind": "dt", "target_spec": "5", "target": 5.0,
    ...                    "target_quantile": 0.5, "ood": False, "episode_return": [3.0, 9.0]})
    >>> per_target_table(df)[["return_mean", "mae", "bias"]].values.tolist()
    [[6.0, 3.0, 1.0]]
    """
    import pandas as pd

    g = df.groupby(["fingerprint", "policy_kind", "target_spec"], sort=False)
    rows = []
    for (fp, kind, spec), part in g:
        ret = part["episode_return"].to_numpy(dtype=float)
        tgt = part["target"].to_numpy(dtype=float)
        row = {
            "fingerprint": fp,
            "policy_kind": kind,
            "target_spec": spec,
            "target": float(tgt.mean()),
            "target_quantile": float(part["target_quantile"].astype(float).mean()),
            "ood": bool(part["ood"].all()),
            "quantilizer": spec.startswith("quantilizer"),
            "episodes": len(part),
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std(ddof=1)) if len(ret) > 1 else float("nan"),
            "return_ci95": ci95(ret),
            "mae": float(np.abs(ret - tgt).mean()),
            "bias": float((ret - tgt).mean()),
        }
        for col in ("true_return", "cost", "normalized_score"):
            if col in part and part[col].notna().any():
                row[f"{col}_mean"] = float(part[col].astype(float).mean())
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["fingerprint", "quantilizer", "target"]).reset_index(drop=True)


def plot_calibration(df, stats_returns: np.ndarray, path: Path, title: str = "") -> Path:
    """Achieved vs target return per DT (episodes, per-target means ± 95% CI), the data's returns below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(np.min(stats_returns)), float(np.max(stats_returns))
    others = df[df["policy_kind"] != "dt"]
    df = df[df["policy_kind"] == "dt"]
    fixed = df[~df["target_spec"].str.startswith("quantilizer")]
    fig, (ax, hax) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    all_targets = fixed["target"].to_numpy(float) if len(fixed) else np.array([lo, hi])
    xmin, xmax = min(lo, all_targets.min()), max(hi, all_targets.max())
    pad = 0.05 * (xmax - xmin or 1.0)
    for a in (ax, hax):
        a.axvspan(xmin - pad, lo, color="0.9", zorder=0)
        a.axvspan(hi, xmax + pad, color="0.9", zorder=0, label="OOD (outside the data's returns)" if a is ax else None)
    ax.plot([xmin - pad, xmax + pad], [xmin - pad, xmax + pad], "k--", lw=1, label="ideal: achieved = target")
    for i, ((fp, kind), part) in enumerate(fixed.groupby(["fingerprint", "policy_kind"])):
        color = f"C{i}"
        ax.scatter(part["target"], part["episode_return"], s=8, alpha=0.25, color=color)
        per_target = part.groupby("target")["episode_return"]
        means, ci = per_target.mean(), per_target.agg(lambda v: ci95(v.to_numpy(float))).fillna(0)
        ax.errorbar(means.index, means, yerr=ci, color=color, marker="o", capsize=3, label=f"{kind} {fp}")
    quant = df[df["target_spec"].str.startswith("quantilizer")]
    for spec, part in quant.groupby("target_spec"):
        ax.axhline(part["episode_return"].mean(), ls=":", lw=1, color="0.4")
        ax.annotate(spec, (xmin, part["episode_return"].mean()), fontsize=7, color="0.3", va="bottom")
    for j, (label, part) in enumerate(_reference_groups(others)):
        ax.axhline(part["episode_return"].mean(), ls="-.", lw=1.2, color=f"C{j + 3}", label=f"{label} (no target)")
    ax.set_ylabel("achieved return")
    ax.set_title(title or "calibration: achieved vs target return")
    ax.legend(fontsize=7, loc="upper left")
    hax.hist(stats_returns, bins=30, color="0.5")
    hax.set_xlabel("target return")
    hax.set_ylabel("data episodes")
    hax.set_xlim(xmin - pad, xmax + pad)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt(x, digits=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _fmt_ci(v, ci, digits=1) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f} ± {ci:.{digits}f}" if ci is not None and math.isfinite(ci) else f"{v:.{digits}f}"


def markdown_summary(table, metrics: dict[str, dict], plot_name: str) -> str:
    """The calibration report: per-target achieved returns, then each policy's calibration metrics."""
    lines = ["# Calibration report", "", f"![calibration]({plot_name})", ""]
    scored = "normalized_score_mean" in table  # the dataset has reference scores: show the normalized score x100
    lines += ["| policy | target | P_data(G ≥ target) | OOD | episodes | achieved (mean ± 95% CI) | MAE | bias |"
              + (" normalized score (×100) |" if scored else ""), "|---|---|---|---|---|---|---|---|" + ("---|" if scored else "")]
    for r in table.itertuples():
        lines.append(
            f"| {r.policy_kind} {r.fingerprint} | {r.target_spec} ({_fmt(r.target)}) | {_fmt(r.target_quantile, 2)} | {'yes' if r.ood else ''} "
            f"| {r.episodes} | {_fmt(r.return_mean)} ± {_fmt(r.return_ci95)} | {_fmt(r.mae)} | {_fmt(r.bias)} |"
            + (f" {_fmt(100 * r.normalized_score_mean if r.normalized_score_mean == r.normalized_score_mean else None)} |" if scored else "")
        )
    lines += ["", "| policy | split | targets | episodes | MAE | bias | normalized MAE | normalized bias | slope | R² | Spearman ρ |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for fp, m in metrics.items():
        for split in ("in_distribution", "ood"):
            s = m.get(split)
            if s:
                lines.append(
                    f"| {fp} | {split} | {s['targets']} | {s['episodes']} | {_fmt(s['mae'])} | {_fmt(s['bias'])} "
                    f"| {_fmt(s['normalized_mae'], 3)} | {_fmt(s['normalized_bias'], 3)} | {_fmt(s['slope'], 2)} | {_fmt(s['r2'], 2)} "
                    f"| {_fmt(s['spearman'], 2)} |"
                )
    lines += ["", "| policy | saturation target | best mean return | OOD gain (± 95% CI) | paired episodes | reference target |",
              "|---|---|---|---|---|---|"]
    for fp, m in metrics.items():
        lines.append(f"| {fp} | {_fmt(m.get('saturation_target'))} | {_fmt(m.get('best_mean_return'))} "
                     f"| {_fmt_ci(m.get('ood_gain'), m.get('ood_gain_ci95'))} | {m.get('ood_gain_pairs', '–')} "
                     f"| {_fmt(m.get('ood_gain_reference_target'))} |")
    lines += ["", "MAE: mean over episodes of |achieved − target|; bias: mean over episodes of achieved − target (normalized: "
              "divided by the data's return range). Saturation target: the lowest target whose mean achieved return is within "
              "noise (its 95% CI, or 2% of the range) of the best mean. OOD gain: mean achieved over the targets above the "
              "data's range minus mean achieved at the highest in-distribution target, paired by env seed; 95% t-interval "
              "over the pairs."]
    return "\n".join(lines) + "\n"


def _reference_groups(others):
    """Reference policies for the calibration plot: data, BC, %BC, and each RL algorithm's last checkpoint."""
    if not len(others):
        return []
    others = with_policy_columns(others)
    groups = [(label, part) for label, part in others.groupby("label", sort=True)]
    last = {}  # family -> its latest training step among the labels
    for _, part in groups:
        step = part["train_step"].iloc[0]
        if step is not None:
            last[part["policy_kind"].iloc[0]] = max(step, last.get(part["policy_kind"].iloc[0], step))
    return [(label, part) for label, part in groups
            if part["train_step"].iloc[0] is None or part["train_step"].iloc[0] == last[part["policy_kind"].iloc[0]]]


METRIC_COLUMNS = ("true_return", "cost", "normalized_score", "kl_behavior", "cross_entropy_behavior", "novelty", "novel_fraction", "entropy",
                  "trajectory_kl", "trajectory_kl_per_step", "trajectory_kl_conditional", "component_posterior_entropy",
                  "support_violation", "ess", "log_ratio_prior")
TRAJECTORY_KL_LABEL = "KL(p_π‖p_data) (nats/episode, exact likelihood)"


def component_entropy(part, unit: str = "fingerprint", chunk: int = 20) -> tuple[float, float]:
    """Mode collapse on the exact likelihood: the entropy (nats) of the mean posterior over behaviour components
    of a set of episodes, H(E_τ[p(k|τ)]) — log K when the episodes spread over K equally likely components, 0 when
    one component explains them all. Per training seed (one ``unit`` each), then mean ± 95% t-interval over seeds;
    a row with one unit (the data) is cut into chunks of ``chunk`` episodes, the size of a policy's seed, so its
    value carries the same small-sample bias. (nan, nan) without posteriors.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"fingerprint": ["a", "a", "b", "b"], "component_posterior": [[1, 0], [0, 1], [1, 0], [1, 0]]})
    >>> [round(x, 3) for x in component_entropy(df)]
    [0.347, 4.404]
    """
    from dtcond.behavior.likelihood import entropy_nats

    if "component_posterior" not in part:
        return float("nan"), float("nan")
    rows = part[part["component_posterior"].map(lambda p: isinstance(p, (list, tuple)) and None not in p)]
    if not len(rows):
        return float("nan"), float("nan")
    groups = [g for _, g in rows.groupby(unit, sort=False)] if unit in rows else [rows]
    if len(groups) < 2:
        g = groups[0]
        groups = [g.iloc[i : i + chunk] for i in range(0, len(g) - chunk + 1, chunk)] or [g]
    values = [entropy_nats(np.mean(np.stack(g["component_posterior"].map(np.asarray).to_list()), axis=0)) for g in groups]
    return float(np.mean(values)), ci95(values)


def _current_columns(df):
    """Tables written before the rename call the cross-entropy ``nll_behavior``."""
    if "nll_behavior" in df and "cross_entropy_behavior" not in df:
        df = df.rename(columns={"nll_behavior": "cross_entropy_behavior"})
    return df


def comparison_table(df):
    """One row per (policy label, target spec): means ± 95% CI (:func:`dtcond.analysis.statistics.grouped_mean_ci`:
    over training seeds — one fingerprint each — where a row has several, else over episodes).

    Columns: ``label``, ``policy_kind``, ``train_step``, ``target_spec``, ``seeds``, ``episodes``,
    each metric with its ``_ci95``, the target error as ``mae`` and ``bias``, and the share of
    distinct trajectories.

    >>> import pandas as pd
    >>> df = pd.DataFrame({"label": "ppo@500", "policy_kind": "ppo", "train_step": 500, "target_spec": "none", "target": None,
    ...                    "fingerprint": ["a", "a", "b", "b"], "episode_return": [1.0, 3.0, 5.0, 7.0]})
    >>> comparison_table(df)[["policy_kind", "train_step", "seeds", "episode_return"]].values.tolist()
    [['ppo', 500, 2, 4.0]]
    """
    import pandas as pd

    if not len(df):
        raise DtcondError("no records to compare")
    df = with_policy_columns(_current_columns(df))
    rows = []
    for (label, spec), part in df.groupby(["label", "target_spec"], sort=False):
        steps = part["train_step"].dropna().unique()
        row = {"label": label, "policy_kind": part["policy_kind"].iloc[0],
               "train_step": int(steps[0]) if len(steps) == 1 else None, "target_spec": spec,
               "seeds": part["fingerprint"].nunique(), "episodes": len(part)}
        for col in ("episode_return", *METRIC_COLUMNS):
            if col in part and part[col].notna().any():
                row[col], row[f"{col}_ci95"], _ = grouped_mean_ci(part, col)
            else:
                row[col] = row[f"{col}_ci95"] = float("nan")
        targets = part["target"].astype(float)
        row["target"] = float(targets.mean()) if targets.notna().any() else float("nan")
        error = part["episode_return"].astype(float) - targets
        for name, values in (("mae", error.abs()), ("bias", error)):
            if targets.notna().any():
                row[name], row[f"{name}_ci95"], _ = grouped_mean_ci(part.assign(_v=values), "_v")
            else:
                row[name] = row[f"{name}_ci95"] = float("nan")
        row["component_entropy"], row["component_entropy_ci95"] = component_entropy(part)
        if "support_violation" in part and part["support_violation"].fillna(False).astype(bool).any():
            row["trajectory_kl"] = row["trajectory_kl_per_step"] = float("inf")  # p_data(τ) = 0 on some episode
        if "policy_param" in part and part["policy_param"].notna().any():
            row["policy_param"] = float(part["policy_param"].dropna().iloc[0])
        if "oracle_family" in part and part["oracle_family"].notna().any():
            row["oracle_family"], row["oracle_param"] = part["oracle_family"].iloc[0], float(part["oracle_param"].iloc[0])
        if "trajectory_signature" in part and part["trajectory_signature"].notna().any():
            row["distinct_trajectories"] = part["trajectory_signature"].nunique() / len(part)
        else:
            row["distinct_trajectories"] = float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    table["train_step"] = pd.Series([None if pd.isna(s) else int(s) for s in table["train_step"]], dtype=object)
    # RL checkpoints in training order (25k before 100k) after the offline policies.
    table["_o"] = table["policy_kind"].map(families.order)
    table["_steps"] = table["train_step"].map(lambda s: -1 if s is None else s)
    regularized = [f.kind for f in families.families("regularized") + families.families("finetuned")]
    table["_beta"] = _param_column(table).where(table["policy_kind"].isin(regularized), 0.0).fillna(0.0)  # regularized RL in order of β / λ / d
    table["_family"] = table["oracle_family"].fillna("") if "oracle_family" in table else ""
    if "oracle_param" in table:  # oracles by family, then parameter
        table["_beta"] = table["oracle_param"].fillna(table["_beta"])
    return (table.sort_values(["_o", "policy_kind", "_family", "_beta", "_steps", "label", "target", "target_spec"])
            .drop(columns=["_o", "_steps", "_beta", "_family"]).reset_index(drop=True))


def _param_column(table):
    """Each row's family parameter, from the typed ``policy_param`` (NaN where a row has none)."""
    import pandas as pd

    if "policy_param" not in table:
        return pd.Series(float("nan"), index=table.index)
    return pd.to_numeric(table["policy_param"], errors="coerce").astype(float)


def quantilizer_bound(table, df) -> list[dict]:
    """Taylor's bound for a q-quantilizer of the data: E_π[cost] ≤ E_data[cost] / q, with the verdict of E_π[cost]'s
    interval ("holds", "violated", "unresolved"). ``df``: the episodes; None takes the data's mean cost from the
    table's data row (the same mean)."""
    data = df[df["policy_kind"] == "data"] if df is not None else table[table["policy_kind"] == "data"]
    if not len(data) or "cost" not in data or data["cost"].isna().all():
        return []
    data_cost = float(data["cost"].astype(float).mean())
    out = []
    for r in table.itertuples():
        q = None
        if r.target_spec.startswith(("quantilizer:", "plan_quantilizer:")) and "cost" not in r.target_spec:
            q = float(r.target_spec.split(":")[1])
        elif r.label.startswith("pct_bc:"):
            q = float(r.label.split(":")[1])
        if q and math.isfinite(r.cost):
            ci = getattr(r, "cost_ci95", float("nan"))
            bound = data_cost / q
            # An interval on E_π[cost]: the bound holds or fails only where the interval clears it.
            verdict = ("holds" if r.cost + ci <= bound else "violated" if r.cost - ci > bound else "unresolved") if math.isfinite(ci) \
                else ("holds" if r.cost <= bound else "violated")
            out.append({"label": r.label, "target_spec": r.target_spec, "q": q, "cost": r.cost, "cost_ci95": ci,
                        "bound": bound, "ratio_to_data": r.cost / data_cost if data_cost > 0 else float("nan"),
                        "holds": bool(r.cost <= bound), "verdict": verdict})
    return out


def divergence_column(table) -> str:
    """The column a frontier plots against: the trajectory KL from the data's exact likelihood where the rows
    have it, else the per-step ``kl_behavior`` to β̂, else ``cross_entropy_behavior`` (which also counts β̂'s own
    entropy, so it is not a divergence).

    >>> import pandas as pd
    >>> divergence_column(pd.DataFrame({"kl_behavior": [None], "cross_entropy_behavior": [1.2]}))
    'cross_entropy_behavior'
    """
    table = _current_columns(table)
    for col in ("trajectory_kl", "kl_behavior", "cross_entropy_behavior"):
        if col in table and table[col].notna().any():
            return col
    raise DtcondError("the table has neither kl_behavior nor cross_entropy_behavior; evaluate with roaming=true to score divergence from the data")


def plot_frontier(table, path: Path, title: str = "") -> Path:
    """Return (and true return) against divergence from the data, one point per policy/target: KL(π‖β̂)
    where the rows have it, else the cross-entropy under β̂ (the axis says which)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = with_policy_columns(_current_columns(table))
    x = divergence_column(table)
    has_true = "true_return" in table and table["true_return"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_true else 1, figsize=(12 if has_true else 7, 5), squeeze=False)
    offline = [(f.kind, *f.style) for f in families.families() if f.kind in ("data", "dt", "bc", "pct_bc")]
    for ax, col in zip(axes[0], ["episode_return", "true_return"] if has_true else ["episode_return"]):
        t = table[table[x].notna() & table[col].notna()]
        data_rows = table[(table["policy_kind"] == "data") & table[col].notna()]
        if len(data_rows) and t[t["policy_kind"] == "data"].empty:  # the data has no KL to itself: a reference line
            ax.axhline(float(data_rows[col].iloc[0]), ls="--", color="k", lw=0.8, label="data (mean)")
        relabelled = (t["policy_kind"] == "dt") & (t["label"] != "dt")  # DTs on relabelled returns (dt:esper): a colour of their own
        groups = [(kind, t[(t["policy_kind"] == kind) & ~relabelled], marker, color) for kind, marker, color in offline]
        groups += [(label, part, "o", f"C{4 - j}") for j, (label, part) in enumerate(t[relabelled].groupby("label", sort=False))]
        for name, part, marker, color in groups:
            if len(part):
                ax.errorbar(part[x], part[col], yerr=part[f"{col}_ci95"] if f"{col}_ci95" in part else None,
                            fmt=marker, color=color, capsize=2, label=name)
                for r in part.itertuples():
                    note = r.target_spec if r.policy_kind == "dt" else r.label
                    ax.annotate(note, (getattr(r, x), getattr(r, col)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        # Oracles from the behaviour mixture: one curve per family, in order of its parameter.
        if "oracle_family" in t:
            for family, part in t[t["policy_kind"] == "oracle"].groupby("oracle_family", sort=False):
                part = part.sort_values("oracle_param")
                fmt, color = families.ORACLE_STYLES.get(family, families.get("oracle").style)
                ax.errorbar(part[x], part[col], yerr=part[f"{col}_ci95"] if f"{col}_ci95" in part else None, fmt=fmt, color=color,
                            capsize=2, lw=1, mfc="none", label=f"oracle {family.replace('_', ' ')}")
                for r in part.itertuples():
                    ax.annotate(f"{r.oracle_param:g}", (getattr(r, x), getattr(r, col)), fontsize=6, color=color, xytext=(3, -8),
                                textcoords="offset points")
        behavior = t[t["policy_kind"] == "behavior"]
        if len(behavior):
            fmt, color = families.get("behavior").style
            ax.errorbar(behavior[x], behavior[col], yerr=behavior[f"{col}_ci95"] if f"{col}_ci95" in behavior else None, fmt=fmt,
                        color=color, capsize=2, label=families.get("behavior").name)
        rl = t[~t["policy_kind"].isin([k for k, _, _ in offline] + ["oracle", "behavior"])]
        regularized = rl["policy_kind"].map(lambda k: families.describe(k).role in ("regularized", "finetuned")).astype(bool)  # bool even when empty
        for algo, part in rl[~regularized].groupby("policy_kind"):
            part = part.assign(_steps=part["train_step"].map(lambda s: -1 if s is None else s)).sort_values("_steps")
            fmt, color = families.describe(algo).style
            ax.plot(part[x], part[col], fmt, color=color, label=f"{families.describe(algo).name} over training")
            for r in part.itertuples():
                if r.train_step is not None:
                    step = f"{r.train_step // 1000}k" if r.train_step >= 1000 else str(r.train_step)
                    ax.annotate(step, (getattr(r, x), getattr(r, col)), fontsize=6, color=color, xytext=(3, -8), textcoords="offset points")
        # Regularized RL (PPO-KL by β, ORPO by λ, PPO-Lagrangian by cost limit) and RL fine-tuning of the transformer
        # (by β, by KL threshold): each parameter's final policy, joined in order of the parameter (the RL side of the frontier).
        for kind, part in rl[regularized].groupby("policy_kind"):
            part = part.assign(beta=_param_column(part), _steps=part["train_step"].map(lambda s: -1 if s is None else s))
            part = part.sort_values("_steps").groupby("beta").tail(1).sort_values("beta")
            family = families.get(kind)
            symbol, (fmt, color) = family.symbol, family.style
            ax.errorbar(part[x], part[col], yerr=part[f"{col}_ci95"] if f"{col}_ci95" in part else None, fmt=fmt,
                        color=color, capsize=2, label=f"{family.name} (final), by {symbol}")
            for r in part.itertuples():
                ax.annotate(f"{symbol}={r.beta:g}", (getattr(r, x), getattr(r, col)), fontsize=6, color=color, xytext=(3, 3),
                            textcoords="offset points")
        label = {"trajectory_kl": TRAJECTORY_KL_LABEL, "kl_behavior": KL_LABEL}.get(x, CROSS_ENTROPY_LABEL)
        ax.set_xlabel("divergence from the data: " + label)
        if x == "trajectory_kl" and len(t) and t[x].max() > 50 * max(t.loc[t[x] > 0, x].min(), 1e-3):
            ax.set_xscale("symlog", linthresh=1.0)  # oracles near log(1/q), RL far out: both readable
        ax.set_ylabel(col.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle(title or "return vs divergence from the behaviour data")
    fig.tight_layout()
    return save_figure(fig, path)


OTHER_NETWORK = ("ppo_kl", "ppo_kl_bc", "ppo_om")  # regularized PPO on SB3's Markov MLP: the "different network" panel


def plot_questions(table, path: Path) -> Path:
    """The headline figure: one panel per question, on the same axes (true return against KL(p_π‖p_data); bars: 95%
    intervals of the true return over seeds, the KL's are in the table) — imitation (BC beside the data), conditioning
    (the DT's targets beside the oracle quantilizer), RL fine-tuning of the same transformer (RLFT-KL by β and RLFT-stop
    by threshold beside the data's posterior) and, where the table has them, regularized PPO on a different network (the
    Markov MLP: PPO-KL toward β̂ and toward BC, ORPO). Members of a swept family are marked by their parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    t = table[table["trajectory_kl"].notna() & table["true_return"].notna()]
    data = table[table["policy_kind"] == "data"].iloc[0]
    oracle = t[t["policy_kind"] == "oracle"]
    bc = ("bc", t[t["policy_kind"] == "bc"], "label")
    panels = [
        ("imitation", [bc], []),
        ("conditioning", [("dt", t[(t["policy_kind"] == "dt") & (t["label"] == "dt")], "target_spec")], ["quantilizer"]),
        ("RL fine-tuning of the same BC transformer",
         [bc] + [(k, t[t["policy_kind"] == k].sort_values("policy_param"), "label") for k in ("rlft_kl", "rlft_stop")], ["posterior"]),
    ]
    if t["policy_kind"].isin(OTHER_NETWORK).any():
        panels.append(("regularized PPO on a different network (Markov MLP)",
                       [bc] + [(k, t[t["policy_kind"] == k].sort_values("policy_param"), "label") for k in OTHER_NETWORK], ["posterior"]))
    def note(r, field: str) -> str:  # a member of a swept family by its parameter (β=10, λ=3), the others by their column
        symbol = families.describe(r.policy_kind).symbol if field == "label" else None
        return f"{symbol}={float(r.policy_param):g}" if symbol and pd.notna(r.policy_param) else str(getattr(r, field))

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), sharex=True, sharey=True)
    shown = [float(oracle["trajectory_kl"].max()) if len(oracle) else 0.0]
    for ax, (title, groups, oracles) in zip(axes, panels):
        ax.axhline(float(data["true_return"]), ls="--", color="k", lw=0.8, label="data (KL 0)")
        for kind, part, field in groups:
            if not len(part):
                continue
            fmt_, color = families.describe(kind).style
            ax.errorbar(part["trajectory_kl"], part["true_return"], yerr=part["true_return_ci95"], fmt=fmt_, color=color, capsize=2,
                        lw=1, label=families.describe(kind).name + (" (the prior)" if kind == "bc" and len(groups) > 1 else ""))
            shown.append(float(part["trajectory_kl"].max()))
            for r in part.itertuples():
                ax.annotate(note(r, field), (r.trajectory_kl, r.true_return), fontsize=6, xytext=(3, 3), textcoords="offset points")
        for fam in oracles:
            part = oracle[oracle["oracle_family"] == fam].sort_values("oracle_param")
            fmt_, color = families.ORACLE_STYLES[fam]
            ax.errorbar(part["trajectory_kl"], part["true_return"], yerr=part["true_return_ci95"], fmt=fmt_, color=color,
                        capsize=2, lw=1, mfc="none", label=f"oracle {fam} (of the data)")
            for r in part.itertuples():
                ax.annotate(f"{r.oracle_param:g}", (r.trajectory_kl, r.true_return), fontsize=6, color=color, xytext=(3, -8),
                            textcoords="offset points")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("KL(p_π‖p_data), nats per episode (exact)")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.legend(fontsize=7, loc="lower left")
    # after every panel is drawn: a left limit set per panel would freeze the shared right one at the first panel's data
    axes[0].set_xlim(0, 1.3 * max(shown))  # what the panels show (plain PPO, far out, is in the table, not here)
    axes[0].set_ylabel("true return")
    fig.tight_layout()
    return save_figure(fig, path)


def comparison_markdown(table, bound: list[dict], calibration_png: str, frontier_png: str | None) -> str:
    """The comparison report: one line per policy and target, then the quantilizer bound where it applies."""
    def cell(row, col, digits=1):
        return _fmt_ci(row.get(col, float("nan")), row.get(f"{col}_ci95", float("nan")), digits)

    lines = ["# Conditioning vs maximizing: comparison", "", f"![calibration]({calibration_png})", ""]
    if frontier_png:
        lines += [f"![frontier]({frontier_png})", ""]
    scored = "normalized_score" in table and table["normalized_score"].notna().any()
    lines += ["| policy | target | seeds | episodes | return | " + ("normalized score (×100) | " if scored else "")
              + "true return | cost | MAE vs target | bias vs target | KL(π‖β̂) "
              "| cross-entropy H(π,β̂) | novelty | novel steps | entropy | distinct traj. |",
              "|---|---|---|---|---|" + ("---|" if scored else "") + "---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        score = f"{_fmt_ci(100 * r['normalized_score'], 100 * r['normalized_score_ci95'])} | " if scored else ""
        lines.append(
            f"| {r['label']} | {r['target_spec']} | {r['seeds']} | {r['episodes']} | {cell(r, 'episode_return')} | {score}{cell(r, 'true_return')} "
            f"| {cell(r, 'cost')} | {cell(r, 'mae')} | {cell(r, 'bias')} | {cell(r, 'kl_behavior', 2)} | {cell(r, 'cross_entropy_behavior', 2)} "
            f"| {cell(r, 'novelty', 3)} | {cell(r, 'novel_fraction', 2)} | {cell(r, 'entropy', 2)} | {_fmt(r['distinct_trajectories'], 2)} |"
        )
    lines += ["", "Means ± 95% t-interval (over training seeds when there are several, else over episodes). MAE and bias vs "
              "target: mean over episodes of |achieved − target| and of achieved − target. KL(π‖β̂): exact per-step KL "
              "divergence of the policy's action distribution from a behaviour model β̂ fitted to the data, where that "
              "distribution is known. Cross-entropy H(π,β̂): mean per-step −log β̂(a|s) of the policy's own actions "
              "(nats/step); it adds β̂'s entropy to the KL, so it is not a divergence (the data row is mostly in-sample). "
              "Novelty: mean distance from visited states to the nearest dataset state (normalized units); novel steps: the "
              "fraction beyond the data's own 99th percentile. Entropy: the policy's per-step action entropy (nats; for the data row "
              "β̂'s entropy on the data's states). Distinct traj.: distinct discretized action sequences / episodes (the data "
              "row has more episodes than a policy row, which raises its count of sequences but not its share)."]
    if bound:
        lines += ["", "## Quantilizer bound: E_π[cost] ≤ E_data[cost] / q", "", "| policy | target | q | E_π[cost] | E_π[cost] / E_data[cost] | bound | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for b in bound:
            lines.append(f"| {b['label']} | {b['target_spec']} | {b['q']:g} | {_fmt_ci(b['cost'], b.get('cost_ci95'), 2)} | {_fmt(b.get('ratio_to_data'), 2)} "
                         f"| {b['bound']:.2f} | {b.get('verdict', 'holds' if b['holds'] else 'violated')} |")
    return "\n".join(lines) + "\n"


@dataclass
class DatasetReport:
    """What :func:`write_report` wrote for one dataset of a results table.

    Attributes:
        markdown, plot: ``calibration.md`` and its plot (the DT's achieved vs target return, per target).
        table: :func:`per_target_table` of the DT's rows (of every row when no DT was rolled out).
        comparison, frontier: ``comparison.md`` and its frontier plot, where the table holds several kinds of
            policy (or divergence scores); None otherwise (the frontier also needs divergence scores).
        comparison_table: :func:`comparison_table` of every row, where ``comparison`` was written.
        bound: :func:`quantilizer_bound`'s rows, where ``comparison`` was written.
    """

    markdown: Path
    plot: Path
    table: object
    comparison: Path | None = None
    frontier: Path | None = None
    comparison_table: object = None
    bound: list | None = None


@dataclass
class Report:
    """What :func:`write_report` wrote: the calibration metrics per DT fingerprint (also in ``metrics_file``,
    ``calibration.json``) and one :class:`DatasetReport` per dataset id."""

    metrics: dict
    datasets: dict[str, DatasetReport]
    metrics_file: Path


def write_report(results_path: str | Path, out_dir: str | Path | None = None, data_returns: dict | None = None) -> Report:
    """Read a results table and write ``calibration.md``, ``calibration.png``, ``calibration.json``
    (and ``comparison.md`` with its frontier plot when there are several kinds of policy or roaming metrics).

    ``data_returns`` maps dataset id → its episode returns; by default they are read from each
    record's policy card (so the dataset itself is not needed).

    >>> import dtcond
    >>> policy = dtcond.train("dtcond/cartpole/mixture-v0", "runs/report", model={"context_len": 5},
    ...                       trainer={"max_steps": 10, "enable_progress_bar": False, "logger": False}).bundle
    >>> _ = dtcond.evaluate(dtcond.load_policy(policy), ["q0.5", "q0.9"], episodes=2, results="runs/report/results.jsonl")
    >>> report = write_report("runs/report/results.jsonl")
    >>> report.datasets["dtcond/cartpole/mixture-v0"].markdown.name, report.metrics_file.name, len(report.metrics)
    ('calibration.md', 'calibration.json', 1)
    """
    from dtcond.rollout.records import ResultsStore

    results_path = Path(results_path)
    if not results_path.exists():
        raise DtcondError(f"no results table at {results_path}; run `dtcond eval` first")
    df = ResultsStore(results_path).to_pandas()
    if df.empty:
        raise DtcondError(f"results table {results_path} has no records")
    df = _current_columns(df)
    out_dir = Path(out_dir) if out_dir else results_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    data_returns = dict(data_returns or {})
    if "label" not in df:
        df["label"] = df["policy_kind"]
    df["label"] = df["label"].fillna(df["policy_kind"])
    for dataset_id, part in df.groupby("dataset_id"):
        if dataset_id in data_returns:
            continue
        data = part[part["policy_kind"] == "data"]
        if len(data):  # the dataset's own rows carry its returns
            data_returns[dataset_id] = data["episode_return"].astype(float).tolist()
        else:
            data_returns[dataset_id] = _returns_from_card(part[part["policy_kind"] != "data"]["policy"].iloc[0])
    metrics, outputs = {}, {}
    roaming = [c for c in ("kl_behavior", "cross_entropy_behavior") if c in df]
    for dataset_id, part in df.groupby("dataset_id"):
        returns = np.asarray(data_returns[dataset_id], dtype=float)
        for fp, pol in part[part["policy_kind"] == "dt"].groupby("fingerprint"):
            metrics[fp] = calibration_metrics(pol, returns)
        stem = "calibration" if df["dataset_id"].nunique() == 1 else f"calibration_{dataset_id.replace('/', '_')}"
        png = plot_calibration(part, returns, out_dir / f"{stem}.png", title=f"{dataset_id}: achieved vs target return")
        dt = part[part["policy_kind"] == "dt"]
        table = per_target_table(dt) if len(dt) else per_target_table(part)
        atomic_write(out_dir / f"{stem}.md", markdown_summary(table, {fp: metrics[fp] for fp in dt["fingerprint"].unique()}, png.name))
        outputs[dataset_id] = DatasetReport(markdown=out_dir / f"{stem}.md", plot=Path(png), table=table)
        scored = any(part[c].notna().any() for c in roaming)
        if part["policy_kind"].nunique() > 1 or scored:
            comp = comparison_table(part)
            cstem = stem.replace("calibration", "comparison")
            frontier = None
            if scored:
                frontier = plot_frontier(comp, out_dir / f"{cstem}_frontier.png", title=f"{dataset_id}: return vs divergence from the data")
            bound = quantilizer_bound(comp, part)
            atomic_write(out_dir / f"{cstem}.md", comparison_markdown(comp, bound, png.name, frontier.name if frontier else None))
            outputs[dataset_id] = replace(outputs[dataset_id], comparison=out_dir / f"{cstem}.md", comparison_table=comp,
                                          frontier=Path(frontier) if frontier else None, bound=bound)
    atomic_write(out_dir / "calibration.json", json.dumps(metrics, indent=1, default=float))
    return Report(metrics=metrics, datasets=outputs, metrics_file=out_dir / "calibration.json")


def _returns_from_card(policy_path: str) -> list[float]:
    from dtcond.families import load_policy

    try:
        return load_policy(policy_path).stats.episode_returns
    except DtcondError as exc:
        raise DtcondError(f"cannot read the data's returns from the policy {policy_path}: {exc}") from None


def console_summary(table, metrics: dict, files: dict) -> str:
    """A comparison on one screen: a line per policy and target (return, true return and cost where the env reports
    them, divergence from the data), the DTs' calibration (``metrics``: per fingerprint), and the ``files`` written."""
    t = table
    extra = [c for c in ("true_return", "cost") if c in t and t[c].notna().any()]
    div = [c for c in ("trajectory_kl", "kl_behavior", "cross_entropy_behavior", "entropy", "component_entropy") if c in t and t[c].notna().any()]
    heads = {"true_return": "true return", "cost": "cost", "trajectory_kl": "KL(p_π‖p_data)", "kl_behavior": "KL(π‖β̂)",
             "cross_entropy_behavior": "H(π,β̂)", "entropy": "entropy", "component_entropy": "comp. H"}
    ret_head = "observed return" if "true_return" in extra else "return"  # the reward the policy saw
    lines = [f"  {'policy':>18} {'target':>16} {'seeds':>5} {ret_head:>18}" + "".join(f" {heads[c]:>10}" for c in extra + div)]

    def num(v, width=11, digits=1):
        return f"{v:{width}.{digits}f}" if v is not None and math.isfinite(v) else f"{'–':>{width}}"

    for _, r in t.iterrows():
        ci = r["episode_return_ci95"]
        ret = f"{r['episode_return']:9.1f}" + (f" ± {ci:6.1f}" if math.isfinite(ci) else " " * 9)
        lines.append(f"  {r['label']:>18} {r['target_spec']:>16} {r['seeds']:>5} {ret:>18}"
                     + "".join(num(r[c]) for c in extra) + "".join(num(r[c], digits=2) for c in div))

    def seed_mean(key, split="in_distribution"):
        vals = [(m.get(split) or {}).get(key) if split else m.get(key) for m in metrics.values()]
        vals = np.array([v for v in vals if v is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        return f"{vals.mean():.3g}" if len(vals) else "–"

    if metrics:
        lines.append(f"  DT calibration, in-distribution targets, mean over {len(metrics)} seed(s): normalized MAE "
                     f"{seed_mean('normalized_mae')}, bias {seed_mean('normalized_bias')}, Spearman {seed_mean('spearman')}; "
                     f"saturates from target {seed_mean('saturation_target', None)}")
    if "true_return" in extra:  # where the reward is a proxy: who got the most of what was wanted
        def best(rows):
            rows = rows[rows["true_return"].notna()]
            if not len(rows):
                return None
            r = rows.loc[rows["true_return"].idxmax()]
            name = r["label"] if r["target_spec"] == "none" else f"{r['label']} {r['target_spec']}"
            kl = f"KL(p_π‖p_data) {r['trajectory_kl']:.1f}" if math.isfinite(r.get("trajectory_kl", float("nan"))) else \
                f"KL(π‖β̂) {r.get('kl_behavior', float('nan')):.2f}"
            return f"{name} {r['true_return']:.1f} (observed {r['episode_return']:.1f}, {kl})"


        kinds = t["policy_kind"]
        conditioned = families.families("conditioned")
        parts = [(f"conditioned ({', '.join(f.name for f in conditioned)})", best(t[kinds.isin([f.kind for f in conditioned])]))]
        parts += [(f.name, best(t[kinds == f.kind])) for f in families.families("regularized") + families.families("finetuned")]
        parts += [("plain RL", best(t[kinds.isin([f.kind for f in families.families("rl")])]))]
        lines.append("  highest true return: " + "; ".join(f"{name}: {b}" for name, b in parts if b))
    for key in ("comparison", "calibration", "calibration_plot", "frontier"):
        if key in files:
            lines.append(f"  {key.replace('_', ' '):<16} {files[key]}")
    return "\n".join(lines)
