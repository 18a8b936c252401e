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
import os
import tempfile
from pathlib import Path

import numpy as np

from dtcond.errors import DtcondError


def _ci95(x: np.ndarray) -> float:
    return float(1.96 * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    import pandas as pd

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and R² of the least-squares line y ~ x."""
    if len(x) < 2 or np.ptp(x) == 0:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    return float(slope), float(1 - (resid**2).sum() / total) if total > 0 else float("nan")


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


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def plot_calibration(df, stats_returns: np.ndarray, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = float(np.min(stats_returns)), float(np.max(stats_returns))
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
    ax.set_ylabel("achieved return")
    ax.set_title(title or "calibration: achieved vs target return")
    ax.legend(fontsize=7, loc="upper left")
    hax.hist(stats_returns, bins=30, color="0.5")
    hax.set_xlabel("target return")
    hax.set_ylabel("data episodes")
    hax.set_xlim(xmin - pad, xmax + pad)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


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
    for dataset_id, part in df.groupby("dataset_id"):
        if dataset_id not in data_returns:
            data_returns[dataset_id] = _returns_from_card(part["policy"].iloc[0])
    metrics, outputs = {}, {}
    for dataset_id, part in df.groupby("dataset_id"):
        returns = np.asarray(data_returns[dataset_id], dtype=float)
        for fp, pol in part.groupby("fingerprint"):
            metrics[fp] = calibration_metrics(pol, returns)
        stem = "calibration" if df["dataset_id"].nunique() == 1 else f"calibration_{dataset_id.replace('/', '_')}"
        png = plot_calibration(part, returns, out_dir / f"{stem}.png", title=f"{dataset_id}: achieved vs target return")
        table = per_target_table(part)
        _atomic_write_text(out_dir / f"{stem}.md", markdown_summary(table, {fp: metrics[fp] for fp in part["fingerprint"].unique()}, png.name))
        outputs[dataset_id] = {"plot": str(png), "markdown": str(out_dir / f"{stem}.md"), "table": table}
    _atomic_write_text(out_dir / "calibration.json", json.dumps(metrics, indent=1, default=float))
    return {"metrics": metrics, "outputs": outputs}


def _returns_from_card(policy_path: str) -> list[float]:
    from dtcond.checkpoints import load_policy

    try:
        return load_policy(policy_path).stats.episode_returns
    except DtcondError as exc:
        raise DtcondError(f"cannot read the data's returns from the policy {policy_path}: {exc}") from None
