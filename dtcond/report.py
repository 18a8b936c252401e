"""Calibration: how well achieved return tracks the target, in and out of the data's range.

Metrics per policy (one fingerprint = one set of weights and decoding mode):

- per target: episodes, mean ± std and a 95% CI of the achieved return;
- over in-distribution targets: MAE normalized by the data's return range, slope and R² of
  achieved vs target (per episode), Spearman ρ;
- the saturation point: the lowest target whose mean achieved return is already within noise of the
  best mean achieved at any target — past it, asking for more gets no more (the elicitation frontier);
- over OOD targets: the same errors, and the mean achieved there vs the best in-distribution mean.

Quantilizer specs draw a target per episode; they appear in the per-target table, not in the fits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from dtcond.errors import DtcondError
from dtcond.fileio import atomic_write, save_figure


def _ci95(x: np.ndarray) -> float:
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


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


def per_target_table(df):
    """One row per (policy, target spec): the achieved return's mean, std, CI and the target error."""
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
            "target_quantile": float(part["target_quantile"].mean()),
            "ood": bool(part["ood"].all()),
            "quantilizer": spec.startswith("quantilizer"),
            "episodes": len(part),
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std(ddof=1)) if len(ret) > 1 else float("nan"),
            "return_ci95": _ci95(ret),
            "abs_error": float(np.abs(ret - tgt).mean()),
        }
        for col in ("true_return", "cost"):
            if col in part and part[col].notna().any():
                row[f"{col}_mean"] = float(part[col].astype(float).mean())
        rows.append(row)
    import pandas as pd

    return pd.DataFrame(rows).sort_values(["fingerprint", "quantilizer", "target"]).reset_index(drop=True)


def calibration_metrics(df, stats_returns: np.ndarray) -> dict:
    """Metrics for one policy's records against the data's episode returns (see module doc)."""
    lo, hi = float(np.min(stats_returns)), float(np.max(stats_returns))
    span = max(hi - lo, 1e-9)
    fixed = df[~df["target_spec"].str.startswith("quantilizer")]
    table = per_target_table(fixed) if len(fixed) else None
    out: dict = {"data_min_return": lo, "data_max_return": hi}
    for name, part in (("in_distribution", fixed[~fixed["ood"].astype(bool)]), ("ood", fixed[fixed["ood"].astype(bool)])):
        if not len(part):
            out[name] = None
            continue
        x, y = part["target"].to_numpy(float), part["episode_return"].to_numpy(float)
        means = part.groupby("target")["episode_return"].mean()
        slope, r2 = _fit(x, y)
        out[name] = {
            "targets": int(means.size),
            "episodes": int(len(part)),
            "normalized_mae": float(np.abs(means.to_numpy() - means.index.to_numpy()).mean() / span),
            "slope": slope,
            "r2": r2,
            "spearman": _spearman(x, y),
            "mean_return": float(y.mean()),
        }
    if table is not None and len(table):
        best = table["return_mean"].max()
        noise = np.nanmax([table["return_ci95"].max(), 0.02 * span])
        reached = table[table["return_mean"] >= best - noise]
        out["saturation_target"] = float(reached["target"].min())
        out["best_mean_return"] = float(best)
        ind = table[~table["ood"]]
        if len(ind) and out["ood"]:
            out["ood_minus_best_in_distribution"] = out["ood"]["mean_return"] - float(ind["return_mean"].max())
    return out


def plot_calibration(df, stats_returns: np.ndarray, path: Path, title: str = "") -> Path:
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
        means = part.groupby("target")["episode_return"].agg(["mean", "std", "count"])
        ci = 1.96 * means["std"].fillna(0) / np.sqrt(means["count"])
        ax.errorbar(means.index, means["mean"], yerr=ci, color=color, marker="o", capsize=3, label=f"{kind} {fp}")
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


def markdown_summary(table, metrics: dict[str, dict], plot_name: str) -> str:
    lines = ["# Calibration report", "", f"![calibration]({plot_name})", ""]
    lines += ["| policy | target | P_data(G ≥ target) | OOD | episodes | achieved (mean ± 95% CI) | mean abs. error |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(
            f"| {r.policy_kind} {r.fingerprint} | {r.target_spec} ({_fmt(r.target)}) | {_fmt(r.target_quantile, 2)} | {'yes' if r.ood else ''} "
            f"| {r.episodes} | {_fmt(r.return_mean)} ± {_fmt(r.return_ci95)} | {_fmt(r.abs_error)} |"
        )
    lines += ["", "| policy | split | normalized MAE | slope | R² | Spearman ρ | saturation target | best mean return |", "|---|---|---|---|---|---|---|---|"]
    for fp, m in metrics.items():
        for split in ("in_distribution", "ood"):
            s = m.get(split)
            if not s:
                continue
            lines.append(
                f"| {fp} | {split} | {_fmt(s['normalized_mae'], 3)} | {_fmt(s['slope'], 2)} | {_fmt(s['r2'], 2)} | {_fmt(s['spearman'], 2)} "
                f"| {_fmt(m.get('saturation_target'))} | {_fmt(m.get('best_mean_return'))} |"
            )
    lines += ["", "Normalized MAE: mean |achieved − target| over in-distribution targets, divided by the data's return range. "
              "Saturation target: the lowest target whose mean achieved return is within noise (95% CI, or 2% of the range) of the best."]
    return "\n".join(lines) + "\n"


def _reference_groups(others):
    """Reference policies for the calibration plot: BC, %BC, data, and each RL algo's last checkpoint."""
    if not len(others):
        return []
    groups = []
    for label, part in others.groupby("label", sort=True):
        groups.append((label, part))
    rl = [(lab, p) for lab, p in groups if "@" in lab]
    last_rl = {}
    for lab, p in rl:
        algo, steps = lab.split("@")
        if algo not in last_rl or int(steps) > int(last_rl[algo][0].split("@")[1]):
            last_rl[algo] = (lab, p)
    return [(lab, p) for lab, p in groups if "@" not in lab] + list(last_rl.values())


METRIC_COLUMNS = ("true_return", "cost", "nll_behavior", "kl_behavior", "novelty", "novel_fraction", "entropy")


def comparison_table(df):
    """One row per (policy label, target spec): means with 95% CIs over seeds where there are several.

    A seed is one set of weights (fingerprint); with one, the CI is over episodes.
    """
    import pandas as pd

    rows = []
    for (label, spec), part in df.groupby(["label", "target_spec"], sort=False):
        seeds = part["fingerprint"].nunique()
        row = {"label": label, "kind": part["policy_kind"].iloc[0], "target_spec": spec, "seeds": seeds, "episodes": len(part)}
        for col in ("episode_return", *METRIC_COLUMNS):
            if col not in part or part[col].isna().all():
                row[col] = row[f"{col}_ci95"] = float("nan")
                continue
            vals = part[col].astype(float)
            row[col] = float(vals.mean())
            if seeds > 1:
                row[f"{col}_ci95"] = _ci95(part.groupby("fingerprint")[col].mean().astype(float).to_numpy())
            else:
                row[f"{col}_ci95"] = _ci95(vals.dropna().to_numpy())
        targets = part["target"].astype(float)
        row["target"] = float(targets.mean()) if targets.notna().any() else float("nan")
        row["abs_error"] = float((part["episode_return"] - targets).abs().mean()) if targets.notna().any() else float("nan")
        if "trajectory_signature" in part and part["trajectory_signature"].notna().any():
            row["distinct_trajectories"] = part["trajectory_signature"].nunique() / len(part)
        else:
            row["distinct_trajectories"] = float("nan")
        rows.append(row)
    order = {"data": 0, "dt": 1, "bc": 2, "pct_bc": 3}
    table = pd.DataFrame(rows)
    table["_o"] = table["kind"].map(lambda k: order.get(k, 4))
    # RL checkpoints in training order: "ppo@25000" before "ppo@100000"
    table["_steps"] = table["label"].map(lambda s: int(s.split("@")[1]) if "@" in s else 0)
    table["_name"] = table["label"].map(lambda s: s.split("@")[0])
    return table.sort_values(["_o", "_name", "_steps", "target"]).drop(columns=["_o", "_steps", "_name"]).reset_index(drop=True)


def quantilizer_bound(table, df) -> list[dict]:
    """Taylor's bound for a q-quantilizer of the data: E_π[cost] ≤ E_data[cost] / q."""
    data = df[df["policy_kind"] == "data"]
    if not len(data) or "cost" not in data or data["cost"].isna().all():
        return []
    data_cost = float(data["cost"].astype(float).mean())
    out = []
    for r in table.itertuples():
        q = None
        if r.target_spec.startswith("quantilizer:"):
            q = float(r.target_spec.split(":")[1])
        elif r.label.startswith("pct_bc:"):
            q = float(r.label.split(":")[1])
        if q and math.isfinite(r.cost):
            out.append({"label": r.label, "target_spec": r.target_spec, "q": q, "cost": r.cost,
                        "bound": data_cost / q, "holds": bool(r.cost <= data_cost / q)})
    return out


def plot_frontier(table, path: Path, title: str = "") -> Path:
    """Return (and true return) against divergence from the data (NLL under β̂), one point per policy/target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_true = table["true_return"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_true else 1, figsize=(12 if has_true else 7, 5), squeeze=False)
    for ax, col in zip(axes[0], ["episode_return", "true_return"] if has_true else ["episode_return"]):
        t = table[table["nll_behavior"].notna() & table[col].notna()]
        for kind, marker, color in (("data", "s", "k"), ("dt", "o", "C0"), ("bc", "D", "C2"), ("pct_bc", "^", "C3")):
            part = t[t["kind"] == kind]
            if len(part):
                ax.errorbar(part["nll_behavior"], part[col], yerr=part[f"{col}_ci95"] if f"{col}_ci95" in part else None,
                            fmt=marker, color=color, capsize=2, label=kind)
                for r in part.itertuples():
                    name = r.target_spec if kind == "dt" else r.label
                    ax.annotate(name, (r.nll_behavior, getattr(r, col)), fontsize=6, xytext=(3, 3), textcoords="offset points")
        rl = t[t["label"].str.contains("@")]
        for j, (algo, part) in enumerate(rl.groupby(rl["label"].str.split("@").str[0])):
            part = part.assign(train_steps=part["label"].str.split("@").str[1].astype(int)).sort_values("train_steps")
            ax.plot(part["nll_behavior"], part[col], "-x", color=f"C{5 + j}", label=f"{algo} over training")
            for r in part.itertuples():
                ax.annotate(f"{r.train_steps // 1000}k" if r.train_steps >= 1000 else str(r.train_steps), (r.nll_behavior, getattr(r, col)), fontsize=6, color=f"C{5 + j}",
                            xytext=(3, -8), textcoords="offset points")
        ax.set_xlabel("divergence from the data: NLL of actions under β̂ (nats/step)")
        ax.set_ylabel(col.replace("_", " "))
        ax.legend(fontsize=7)
    fig.suptitle(title or "return vs divergence from the behaviour data")
    fig.tight_layout()
    return save_figure(fig, path)


def comparison_markdown(table, bound: list[dict], calibration_png: str, frontier_png: str | None) -> str:
    def cell(row, col, digits=1):
        v, ci = row.get(col, float("nan")), row.get(f"{col}_ci95", float("nan"))
        if v is None or not math.isfinite(v):
            return "–"
        return f"{v:.{digits}f} ± {ci:.{digits}f}" if ci is not None and math.isfinite(ci) else f"{v:.{digits}f}"

    lines = ["# Conditioning vs maximizing: comparison", "", f"![calibration]({calibration_png})", ""]
    if frontier_png:
        lines += [f"![frontier]({frontier_png})", ""]
    lines += ["| policy | target | seeds | episodes | return | true return | cost | target error | NLL under β̂ | KL(π‖β̂) | novelty | novel steps | entropy | distinct traj. |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(
            f"| {r['label']} | {r['target_spec']} | {r['seeds']} | {r['episodes']} | {cell(r, 'episode_return')} | {cell(r, 'true_return')} "
            f"| {cell(r, 'cost')} | {_fmt(r['abs_error'])} | {cell(r, 'nll_behavior', 2)} | {cell(r, 'kl_behavior', 2)} "
            f"| {cell(r, 'novelty', 3)} | {cell(r, 'novel_fraction', 2)} | {cell(r, 'entropy', 2)} | {_fmt(r['distinct_trajectories'], 2)} |"
        )
    lines += ["", "Means ± 95% CI (over seeds when there are several, else over episodes). NLL under β̂: mean per-step negative "
              "log-likelihood of the policy's actions under a behaviour model fitted to the data (the data row is mostly in-sample). "
              "KL(π‖β̂): exact per-step KL where the policy's action distribution is known (discrete). Novelty: mean distance "
              "from visited states to the nearest dataset state (normalized units); novel steps: the fraction beyond the data's "
              "own 99th percentile. Distinct traj.: distinct discretized action sequences / episodes."]
    if bound:
        lines += ["", "## Quantilizer bound: E_π[cost] ≤ E_data[cost] / q", "", "| policy | target | q | E_π[cost] | bound | holds |", "|---|---|---|---|---|---|"]
        for b in bound:
            lines.append(f"| {b['label']} | {b['target_spec']} | {b['q']:g} | {b['cost']:.2f} | {b['bound']:.2f} | {'yes' if b['holds'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def write_report(results_path: str | Path, out_dir: str | Path | None = None, data_returns: dict | None = None) -> dict:
    """Read a results table and write ``calibration.md``, ``calibration.png``, ``calibration.json``.

    ``data_returns`` maps dataset id → its episode returns; by default they are read from each
    record's policy card (so the dataset itself is not needed).
    """
    from dtcond.results import ResultsStore

    results_path = Path(results_path)
    if not results_path.exists():
        raise DtcondError(f"no results table at {results_path}; run `dtcond eval` first")
    df = ResultsStore(results_path).to_pandas()
    if df.empty:
        raise DtcondError(f"results table {results_path} has no records")
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
    for dataset_id, part in df.groupby("dataset_id"):
        returns = np.asarray(data_returns[dataset_id], dtype=float)
        for fp, pol in part[part["policy_kind"] == "dt"].groupby("fingerprint"):
            metrics[fp] = calibration_metrics(pol, returns)
        stem = "calibration" if df["dataset_id"].nunique() == 1 else f"calibration_{dataset_id.replace('/', '_')}"
        png = plot_calibration(part, returns, out_dir / f"{stem}.png", title=f"{dataset_id}: achieved vs target return")
        dt = part[part["policy_kind"] == "dt"]
        table = per_target_table(dt) if len(dt) else per_target_table(part)
        atomic_write(out_dir / f"{stem}.md", markdown_summary(table, {fp: metrics[fp] for fp in dt["fingerprint"].unique()}, png.name))
        outputs[dataset_id] = {"plot": str(png), "markdown": str(out_dir / f"{stem}.md"), "table": table}
        if part["policy_kind"].nunique() > 1 or ("nll_behavior" in part and part["nll_behavior"].notna().any()):
            comp = comparison_table(part)
            cstem = stem.replace("calibration", "comparison")
            frontier = None
            if comp["nll_behavior"].notna().any():
                frontier = plot_frontier(comp, out_dir / f"{cstem}_frontier.png", title=f"{dataset_id}: return vs divergence from the data")
            bound = quantilizer_bound(comp, part)
            atomic_write(out_dir / f"{cstem}.md", comparison_markdown(comp, bound, png.name, frontier.name if frontier else None))
            outputs[dataset_id].update({"comparison": str(out_dir / f"{cstem}.md"), "comparison_table": comp,
                                        "frontier": str(frontier) if frontier else None, "bound": bound})
    atomic_write(out_dir / "calibration.json", json.dumps(metrics, indent=1, default=float))
    return {"metrics": metrics, "outputs": outputs}


def _returns_from_card(policy_path: str) -> list[float]:
    from dtcond.checkpoints import load_policy

    try:
        return load_policy(policy_path).stats.episode_returns
    except DtcondError as exc:
        raise DtcondError(f"cannot read the data's returns from the policy {policy_path}: {exc}") from None
