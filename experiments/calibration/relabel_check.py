"""Does ESPER relabelling harm calibration where there is no luck to remove?

On deterministic calibration datasets (``relabel_check.datasets`` in config.yaml: CartPole and Pendulum
mixtures, whose envs have no randomness after the reset), the plain DT and a DT trained on ESPER's
expected-return labels (``relabel=esper``) are trained per seed and rolled out on the same grid of
absolute targets (from the raw returns: the data's p5..p95, then OOD) and env seeds, through the same
pipeline as run.py (the plain DT's runs and episodes are those of run.py's work_dir, reused). Reported per
dataset and policy: mean ± 95% CI over seeds of the calibration metrics, the relabelled − plain difference
with its paired interval (the two DTs of one training seed share that seed and the env seeds), and whether the relabelled mean lies within the plain DT's interval.

    python experiments/calibration/relabel_check.py
    python experiments/calibration/relabel_check.py 'relabel_check.datasets=[cartpole_mixed]' 'seeds=[0]' train.steps=200   # a smoke run
    python experiments/calibration/relabel_check.py analyse_only=true   # re-render relabel_check.md's table from relabel_check.json
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent

from dtcond.experiment import esper_description, fmt, fmt_interval, hydra_entry, machine, replace_tables, results_dir  # noqa: E402
from run import CalibrationConfig, dataset_config, grid_description, is_continuous  # noqa: E402

import dtcond  # noqa: E402
from dtcond.common.errors import DtcondError  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.pipeline import run_comparison  # noqa: E402
from dtcond.analysis.statistics import ci95, mean_ci, paired_ci  # noqa: E402

METRICS = {"normalized_mae": "normalized MAE", "normalized_bias": "normalized bias", "spearman": "Spearman ρ", "slope": "slope",
           "best_mean_return": "best mean return"}


def main(cfg) -> None:
    start = time.perf_counter()
    if cfg.analyse_only:  # the committed summary; the page's header and notes are kept
        out = results_dir(cfg, HERE)
        summary = json.loads((out / "relabel_check.json").read_text())["summary"]
        atomic_write(out / "relabel_check.md", replace_tables((out / "relabel_check.md").read_text(), [summary_markdown(summary)]))
        return
    check = cfg.relabel_check
    unknown = set(check.datasets) - set(cfg.datasets)
    if unknown:
        raise DtcondError(f"unknown dataset(s) {sorted(unknown)}; choose from {list(cfg.datasets)}")
    rows, curves = [], []
    for name in check.datasets:
        head = str(check.head) if is_continuous(cfg.datasets[name]) else "bins"
        result = run_comparison(dataset_config(name, cfg.datasets[name], cfg, head, relabel=["esper"], esper=dataclasses.asdict(check.esper)))
        for policy in result.policies:
            m = result.metrics[policy.fingerprint]
            ind = m["in_distribution"] or {}
            relabel = dtcond.load_policy(policy.bundle).stats.extra.get("relabel") or {}
            rows.append({"dataset": name, "label": policy.label, "seed": policy.seed, **{k: ind.get(k) for k in METRICS if k in ind},
                         "best_mean_return": m.get("best_mean_return"), "train_s": policy.train_seconds,
                         "clusters_used": relabel.get("clusters_used"), "cluster_sizes": relabel.get("cluster_sizes")})
        dt = result.records[result.records["policy_kind"] == "dt"]
        per_target = dt.groupby(["label", "train_seed", "target"], as_index=False)["episode_return"].mean()
        returns = result.records.loc[result.records["policy_kind"] == "data", "episode_return"].astype(float)
        curves.append(per_target.assign(dataset=name, data_min=returns.min(), data_max=returns.max()))
    per_seed = pd.DataFrame(rows)
    summary = summarize(per_seed)
    out = results_dir(cfg, HERE)
    png = plot(pd.concat(curves, ignore_index=True), out / "relabel_check.png")
    md = ["# Calibration with and without ESPER relabelling (deterministic datasets)", "",
          f"DT (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}), {cfg.trainer.max_steps} steps per run, "
          f"plain and on ESPER labels (EsperConfig: {esper_description(check.esper)}); training seeds {list(cfg.seeds)}; the same "
          f"absolute targets for both ({grid_description(cfg.grid)} and n{list(cfg.normalized_ood)}), {cfg.eval.episodes} episodes per target on env seeds from {cfg.eval.seed}. Box actions: the {check.head} head. "
          f"Means ± 95% CI over seeds (Spearman ρ's shown as [low, high], kept in [−1, 1]); in-distribution metrics as in summary.md. Machine: {machine()}; this invocation took "
          f"{time.perf_counter() - start:.0f}s (a rerun reuses finished training and episodes; the first run took about 20 min).", "", f"![calibration, plain vs relabelled]({png.name})", "", summary_markdown(summary), "",
          "Within the plain CI: the relabelled DT's mean lies inside the plain DT's 95% interval; worse by more than the plain CI: it "
          "lies outside that interval on the harmful side (a higher MAE, a bias or slope further from 0 or 1, a lower Spearman ρ "
          "or best return). The difference is relabelled − plain "
          "with a paired 95% t-interval over training seeds (each seed's two DTs share its env seeds). In-distribution targets are those inside the range of what each DT was "
          "trained on: the raw returns for the plain DT, the labels for dt:esper, so where the labels span less than the "
          "returns the two are scored on different subsets of the same grid (the plot shows every target).", "",
          clusters_markdown(per_seed), ""]
    atomic_write(out / "relabel_check.md", "\n".join(md))
    atomic_write(out / "relabel_check.json", json.dumps({"per_seed": rows, "summary": summary}, indent=1, default=float))
    print("\n".join(md))


def summarize(per_seed: pd.DataFrame) -> list[dict]:
    out = []
    for name, part in per_seed.groupby("dataset", sort=False):
        base = part[part["label"] == "dt"]
        for label, rel in part[part["label"] != "dt"].groupby("label"):
            for key in METRICS:
                pm, pc = mean_ci(base[key].astype(float))
                rm, rc = mean_ci(rel[key].astype(float))
                pairs = rel.merge(base, on="seed", suffixes=("_rel", "_plain"))  # one pair per training seed
                diff, dci, _ = paired_ci(pairs[f"{key}_rel"].astype(float), pairs[f"{key}_plain"].astype(float))
                out.append({"dataset": name, "label": label, "metric": key, "plain": pm, "plain_ci95": pc, "relabelled": rm,
                            "relabelled_ci95": rc, "difference": diff, "difference_ci95": dci, "seeds": len(rel),
                            "within_plain_ci": bool(math.isfinite(pc) and abs(rm - pm) <= pc),
                            "worse_than_plain_ci": bool(math.isfinite(pc) and worse(key, rm, pm) > pc)})
    return out


def clusters_markdown(per_seed: pd.DataFrame) -> str:
    """How many ESPER clusters the episodes' first steps fell into, per dataset and seed: one cluster makes every
    label the behaviour mixture's expected return-to-go given (s_t, a_t), with nothing left of the skill levels."""
    rel = per_seed[per_seed["clusters_used"].notna()]
    parts = [f"{r.dataset} seed {r.seed}: {int(r.clusters_used)} ({', '.join(map(str, r.cluster_sizes))} episodes)" for r in rel.itertuples()]
    return "ESPER clusters at the episodes' first steps, of the 8 allowed: " + "; ".join(parts) + "."


def worse(key: str, relabelled: float, plain: float) -> float:
    """How much worse the relabelled mean is than the plain one, in the metric's units (negative: better): a higher
    MAE, a bias or slope further from 0 / 1, a lower Spearman ρ or best return."""
    if key == "normalized_mae":
        return relabelled - plain
    if key == "normalized_bias":
        return abs(relabelled) - abs(plain)
    if key == "slope":
        return abs(relabelled - 1) - abs(plain - 1)
    return plain - relabelled


def summary_markdown(summary: list[dict]) -> str:
    lines = ["| dataset | metric | plain DT | dt:esper | difference | relabelled within the plain CI | worse by more than the plain CI |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        digits = 1 if r["metric"] == "best_mean_return" else 3
        lines.append(f"| {r['dataset']} | {METRICS[r['metric']]} | {fmt_interval(r['metric'], r['plain'], r['plain_ci95'], digits)} "
                     f"| {fmt_interval(r['metric'], r['relabelled'], r['relabelled_ci95'], digits)} | {fmt(r['difference'], r['difference_ci95'], digits)} "
                     f"| {'yes' if r['within_plain_ci'] else 'no'} | {'yes' if r['worse_than_plain_ci'] else 'no'} |")
    return "\n".join(lines)


def plot(curves: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dtcond.common.fileio import save_figure

    names = list(dict.fromkeys(curves["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        part = curves[curves["dataset"] == name]
        lo, hi = part["data_min"].iloc[0], part["data_max"].iloc[0]
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="achieved = target")
        for j, (label, p) in enumerate(part.groupby("label", sort=True)):
            agg = p.groupby("target")["episode_return"].agg(["mean", lambda v: ci95(v)]).reset_index()
            agg.columns = ["target", "mean", "ci"]
            ax.errorbar(agg["target"], agg["mean"], yerr=agg["ci"].fillna(0), fmt="o-", color=f"C{j}", capsize=2, ms=3,
                        label=f"{label}, mean over seeds")
        ax.axvline(hi, color="0.5", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("target return")
        ax.set_ylabel("achieved return")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    hydra_entry(HERE, main, CalibrationConfig)
