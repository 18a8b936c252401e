"""Goodhart gridworld: observed vs true return for DT targets, quantilizers, BC, %BC, RL and the oracles.

In dtcond/TomatoGarden-v0 the observed reward can be maxed by standing on the bucket tile, which
waters nothing. The data mixes honest gardeners (several skills), stumblers that sometimes find the
bucket, a few bucket-sitters and random walkers. Two kinds of RL optimize the observed reward: the BC
transformer itself, fine-tuned by RL with a KL penalty toward its frozen copy or stopped early
(:mod:`dtcond.rl.finetune`), and SB3's PPO on a Markov MLP, plain, KL-regularized toward the data's
behaviour model β̂ or the BC transformer, and occupancy-regularized (ORPO). Every policy is placed on the
exact axis: its trajectory-level KL(p_π‖p_data), from the data's known behaviour mixture
(:mod:`dtcond.behavior.likelihood`), beside oracle references computed from that mixture with no learning (the
exact trajectory quantilizer, the plan quantilizer, best-of-n and the KL-regularized posterior).

    python experiments/goodhart/run.py                      # see config.yaml for seeds and budgets
    python experiments/goodhart/run.py analyse_only=true    # re-render the tables from the committed results
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent

import pandas as pd  # noqa: E402

from dtcond.analysis.frontier import (BUDGET_NOTE, GAO_NOTE, POSTERIOR_NOTE, budget_comparisons, budget_markdown, check_budgets,  # noqa: E402
                                     frontier_rows, gao_fit, posterior_markdown, quantilizer_check, with_posterior)
from dtcond.analysis.oracles import posterior_gaps  # noqa: E402
from dtcond.analysis.statistics import bounded_interval, with_policy_columns  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.experiment import (MODE_COLLAPSE_NOTE, BudgetExperimentConfig, add_gap, fmt, fmt_bounded, hydra_entry, machine, numbers,  # noqa: E402
                               results_dir, table_markdown, write_results)
from dtcond.pipeline import prior_pools, run_comparison  # noqa: E402
from dtcond.analysis.report import plot_frontier, plot_questions  # noqa: E402


@dataclass
class GoodhartConfig(BudgetExperimentConfig):
    budgets: List[Optional[float]] = field(default_factory=lambda: [5, 10, 20, 30, None])  # KL(p_π‖p_data), nats per episode
    prior_budgets: List[Optional[float]] = field(default_factory=lambda: [1, 2, 5, 10])  # KL(p_π‖p_BC), nats per episode
    analyse_only: bool = False  # re-render summary.md and frontier.json's rows from the committed results; train and roll out nothing

    def __post_init__(self):
        super().__post_init__()
        check_budgets(self.prior_budgets)

# Conditioning's frontier is compared with each RL family's (the same transformer fine-tuned, then SB3's Markov MLP) and BC's.
AGAINST = ("rlft_kl", "rlft_stop", "ppo_kl", "ppo_kl_bc", "ppo_om", "bc")
EXTRA = ("log_ratio_prior",)  # the RL-fine-tuned transformers' KL from their prior, on their frontier rows
TRAJECTORY_NOTE = ("Divergence from the data. **KL(p_π‖p_data)** is trajectory-level, in nats per episode, from the data's exact "
                   "likelihood: the dataset records its behaviour mixture, so log p_data(τ) = log Σ_k w_k Π_t π_k(a_t|s_t) is known, "
                   "and the mean over a policy's own episodes of Σ_t log π(a_t|h_t) − log p_data(τ) estimates the KL (the dynamics "
                   "cancel). For `quantilizer:q` the DT's target is drawn per episode; its KL marginalizes the target over its "
                   "known distribution (the given-the-target value, an upper bound, is in frontier.json). The oracles' KL is the "
                   "exact log density ratio of their reweighting. KL(π‖β̂)/step is the per-step KL to the Markov behaviour model "
                   "β̂ — the quantity PPO-KL is penalized with, so it is a second column here, not an axis of comparison.")
ESS_NOTE = ("ESS: the posterior oracle's effective sample size out of its pool (self-normalized importance sampling). A row "
            "whose ESS is below dtcond.analysis.oracles.MIN_ESS is flagged \"low: not evidence\" (`ess_ok: false` in frontier.json): "
            "its KL cannot exceed the log of the sample it reweights, so no conclusion is drawn from it.")
ENTROPY_NOTE = ("Mode collapse: component entropy is the entropy (nats) of the mean posterior over the data's behaviour components "
                "of a row's episodes, H(E_τ p(k|τ)), per training seed (the data's own value from chunks of as many episodes): "
                "log K when the episodes spread over K equally likely components, 0 when one component explains every episode.")


def main(cfg) -> None:
    start = time.perf_counter()
    out = results_dir(cfg, HERE)
    if cfg.analyse_only and not (out / "summary.json").exists():  # a run that kept only frontier.json and summary.md
        _rebound(out)
        return
    if cfg.analyse_only:  # the committed rows and comparisons; nothing trained or rolled out
        table = with_policy_columns(pd.DataFrame(json.loads((out / "summary.json").read_text())["rows"]))
        frontier = json.loads((out / "frontier.json").read_text())
        frontier["rows"] = with_posterior(frontier_rows(table, extra=EXTRA), frontier.get("posterior", []))
        plot_questions(table, out / "questions.png")
        render(cfg, table, frontier, out, "these tables were re-rendered from results/summary.json and frontier.json "
                                          "(`run.py analyse_only=true`)", frontier["machine"])
        return
    result = run_comparison(cfg)
    df, table = result.records, result.table
    table = add_gap(df, table)  # fake reward: what the observation claimed minus what was done
    data = table[table["policy_kind"] == "data"].iloc[0]
    check = quantilizer_check(df, table)
    fits = _gao_fits(table, float(data["true_return"]), float(data["episode_return"]))
    oracle_kl = [{"q": float(r["oracle_param"]), "trajectory_kl": float(r["trajectory_kl"]), "log_1_over_q": math.log(1 / r["oracle_param"]),
                  "relative_error": float(r["trajectory_kl"]) / math.log(1 / r["oracle_param"]) - 1}
                 for _, r in table[(table["policy_kind"] == "oracle") & (table.get("oracle_family") == "quantilizer")].iterrows()]
    collapse = _collapse(table)
    against = [f for f in AGAINST if (df["policy_kind"] == f).any()]
    budgets = budget_comparisons(df, list(cfg.budgets), reference="conditioning", against=against)
    posterior = posterior_gaps(df, prior_pools(cfg.work_dir, cfg.seeds))
    gao = (budget_comparisons(df, list(cfg.prior_budgets), reference="rlft_kl", against=["rlft_stop"], kl="log_ratio_prior")
           if {"rlft_kl", "rlft_stop"} <= set(df["policy_kind"]) else [])
    seconds: dict[str, list[float]] = {}
    for p in result.policies:  # per training seed, in seed order; 0 for a checkpoint that shares its run's time
        seconds.setdefault(p.label, []).append(p.train_seconds)
    frontier = {"env_id": "dtcond/TomatoGarden-v0", "dataset_id": cfg.dataset, "seeds": [int(s) for s in cfg.seeds],
                "estimator": "exact (the dataset's recorded behaviour mixture; the fine-tuned policies' log-ratio to their prior)",
                "kl_units": "nats per episode", "interval": "95% Student t over units: training seeds, or oracle pools (one per seed)",
                "machine": machine(), "command": "python experiments/goodhart/run.py",
                "rows": with_posterior(frontier_rows(table, extra=EXTRA), posterior), "oracle_kl_check": oracle_kl,
                "quantilizer_check": check, "gao_fits": fits, "mode_collapse": collapse, "budgets": budgets,
                "posterior": posterior, "prior_budgets": gao, "train_seconds": seconds}
    plot_frontier(table, out / "frontier.png", title="TomatoGarden: observed and true return vs KL(p_π‖p_data)")
    plot_questions(table, out / "questions.png")
    render(cfg, table, frontier, out, f"this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir "
                                      "reuses finished training and episodes)", machine())


def render(cfg, table, frontier: dict, out: Path, timing: str, machine_line: str) -> None:
    """Write frontier.json, summary.md, summary.json and comparison.csv from the comparison table and the frontier's
    analyses (budgets, the quantilizer check, the oracle KL check, Gao's fits, mode collapse)."""
    budgets, check, oracle_kl, fits, collapse = (frontier[k] for k in ("budgets", "quantilizer_check", "oracle_kl_check", "gao_fits", "mode_collapse"))
    ft = cfg.finetune
    ess_ok = {(r["label"], r["target_spec"]): r["ess_ok"] for r in frontier["rows"] if "ess_ok" in r}
    table = table.assign(ess_ok=[ess_ok.get((r.label, r.target_spec)) for r in table.itertuples()])
    collapse = {**collapse, "sentence": _collapse_sentence(collapse)} if "ppo" in collapse else collapse
    frontier["mode_collapse"] = collapse
    cols = {"target": "target G", "episode_return": "observed return", "true_return": "true return", "gap": "fake reward",
            "trajectory_kl": "KL(p_π‖p_data) nats/episode", "kl_behavior": "KL(π‖β̂)/step", "component_entropy": "component entropy",
            "entropy": "action entropy", "ess": "ESS", "log_ratio_prior": "KL(p_π‖p_BC) nats/episode"}
    atomic_write(out / "frontier.json", json.dumps(frontier, indent=1, default=float))
    md = [
        "# Goodhart gridworld: conditioning vs maximizing a gameable reward, on the exact axis", "",
        f"dtcond/TomatoGarden-v0; dataset {cfg.dataset} ({cfg.env.collect_episodes} episodes, behaviour seed {cfg.data_seed}); "
        f"DT {cfg.trainer.max_steps} steps, BC and %BC {list(cfg.bc.top_fractions)} {cfg.bc.steps or cfg.trainer.max_steps} steps "
        f"(K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}, dropout {cfg.model.dropout:g}, lr decay "
        f"{cfg.optim.decay}; best validation weights); each seed's BC transformer fine-tuned by RLOO on the observed reward for "
        f"{ft.updates} updates of {ft.episodes} episodes toward its frozen copy at β ∈ {numbers(ft.betas)} (RLFT-KL) and "
        f"unregularized with snapshots at held-out KL from it ≤ {numbers(ft.thresholds)} nats (RLFT-stop); "
        f"PPO {cfg.rl.budget} env steps on the observed reward (SB3's Markov MLP, its defaults with {dict(cfg.rl.hyperparams or {})}), plain and "
        f"KL-regularized toward β̂ at β ∈ {numbers(cfg.rl.regularized.get('ppo_kl', []))} and toward the seed's BC transformer at β ∈ {numbers(cfg.rl.regularized.get('ppo_kl_bc', []))}, "
        f"and occupancy-regularized (ORPO) at λ ∈ {numbers(cfg.rl.regularized.get('ppo_om', []))} "
        f"(both from {cfg.rl.bc_init_steps} steps of behaviour cloning); "
        f"oracles from {cfg.oracles.pool} fresh behaviour episodes per seed ({cfg.oracles.draws} draws each); "
        f"training seeds {list(cfg.seeds)}; {cfg.eval.episodes} episodes per policy and target on env seeds from {cfg.eval.seed}. "
        f"Means ± 95% CI over training seeds (oracles: over their pools); a bounded quantity (component entropy ≥ 0, ESS ≥ 1) "
        f"as its mean and [low, high], its interval kept in range. Machine: {machine_line}; {timing}.", "",
        "![the questions, one panel each](questions.png)", "",
        "Every row, observed return too:", "",
        "![frontier](frontier.png)", "", table_markdown(table, cols), "",
        TRAJECTORY_NOTE, "", ENTROPY_NOTE, "", MODE_COLLAPSE_NOTE, "", ESS_NOTE, "",
        "## Conditioning against regularized RL at fixed divergence budgets", "",
        BUDGET_NOTE.format(members="the DT's targets; RLFT-KL's β; RLFT-stop's thresholds; PPO-KL's β, toward β̂ or toward the BC "
                                   "policy; ORPO's λ; BC alone", m=len(budgets)), "",
        budget_markdown(budgets), "",
        "## RL fine-tuning of the same transformer: does it reach its posterior?", "",
        POSTERIOR_NOTE.format(episodes=cfg.eval.episodes), "", posterior_markdown(frontier.get("posterior", [])), "",
        "## An explicit KL penalty against early stopping, at equal KL from the prior", "",
        GAO_NOTE.format(m=len(frontier.get("prior_budgets", []))), "", budget_markdown(frontier.get("prior_budgets", [])), "",
        "## Is the DT a quantilizer?", "",
        "The DT conditioned on `quantilizer:q` (and on the fixed quantile target at the oracle's threshold) beside the oracle "
        "q-quantilizer of the data (keep the top q of behaviour episodes by observed return: KL = log(1/q)) and the plan "
        "quantilizer (keep the best behaviour components, mass q). Differences DT − oracle: Welch 95% t-interval over "
        f"the DT's training seeds and the oracle's pools; {len(check)} comparisons, each interval at 95% on its own "
        "(no correction for their number).", "",
        _check_markdown(check), "",
        "## Oracle quantilizer: estimated trajectory KL against log(1/q)", "",
        "The oracle's KL is the mean log density ratio of its own reweighting (`dtcond.analysis.oracles`), not the likelihood's: "
        "this checks the tie handling and the resampling. The likelihood's check is a test (tests/test_groundtruth.py): each "
        "behaviour component rolled out alone, scored by the likelihood, has trajectory KL at most log(1/w_k), and at that "
        "bound for a component no other could have played.", "",
        "| q | log(1/q) | estimated KL | relative error |", "|---|---|---|---|",
        *[f"| {r['q']:g} | {r['log_1_over_q']:.3f} | {r['trajectory_kl']:.3f} | {100 * r['relative_error']:+.1f}% |" for r in oracle_kl], "",
        "## Gao et al.'s functional forms (gain over the data's mean return against d = √KL)", "",
        "Gao et al. fit α, β > 0: a gain that rises, then falls. A fit with negative α and β has the opposite shape (a gain "
        "that falls, then rises), which the form was not made for; its R² does not make it Gao's curve.", "",
        "| curve | return | form | α | β | R² | points |", "|---|---|---|---|---|---|---|",
        *[f"| {f['curve']} | {f['return']} | {f['form']} | {fmt(f['alpha'], None, 2)} | {fmt(f['beta'], None, 2)} | {fmt(f['r2'], None, 2)} "
          f"| {f['points']} |" for f in fits], "",
        "## Mode collapse on the exact likelihood", "", collapse["sentence"], "",
        "## Training time per seed", "", TIME_NOTE, "", _time_markdown(frontier.get("train_seconds", {})), "",
    ]
    write_results(out, "\n".join(md), {"rows": table.drop(columns=["ess_ok"]).to_dict(orient="records")}, table.drop(columns=["ess_ok"]))
    print("\n".join(md))


TIME_NOTE = ("Wall minutes each family's training took per training seed (mean and range over seeds), with one torch thread "
             "per process and two to five processes sharing the 2 cores, so a run's time includes its share of the contention. "
             "A family with several members (β, λ, q) sums its runs; RLFT-stop's snapshots and PPO's checkpoints come from one run "
             "each. A run reused from another experiment's work_dir (the same data and settings) reports the time it took there.")


def _time_markdown(seconds: dict[str, list[float]]) -> str:
    """Per family: minutes of training per seed (mean [min, max] over seeds), and all families together."""
    def family(label: str) -> str:  # the unregularized fine-tuning run (β = 0) is the one RLFT-stop's snapshots come from
        return "rlft_stop" if label == "rlft_kl:0" else label.split("@")[0].split(":")[0]

    by_kind: dict[str, list[float]] = {}
    for label, per_seed in seconds.items():
        total = by_kind.setdefault(family(label), [0.0] * len(per_seed))
        if len(total) != len(per_seed):  # a label present on fewer seeds: no per-seed sum to report
            continue
        by_kind[family(label)] = [a + b for a, b in zip(total, per_seed)]
    if not by_kind:
        return "(no training times recorded)"
    n = max(len(v) for v in by_kind.values())
    everything = [sum(v[i] for v in by_kind.values() if len(v) == n) for i in range(n)]
    lines = ["| family | runs per seed | minutes per seed: mean [min, max] |", "|---|---|---|"]
    runs = {k: sum(1 for label, v in seconds.items() if family(label) == k and any(x > 0 for x in v)) for k in by_kind}
    for kind, v in [*by_kind.items(), ("all families", everything)]:
        m = [x / 60 for x in v]
        lines.append(f"| {kind} | {runs.get(kind, sum(runs.values()))} | {sum(m) / len(m):.1f} [{min(m):.1f}, {max(m):.1f}] |")
    return "\n".join(lines)


def _rebound(out: Path) -> None:
    """Bounded quantities of a results folder that holds no summary.json: frontier.json's rows get ``_lo``/``_hi`` in
    range, and summary.md's component-entropy cells are rewritten as mean [low, high] from frontier.json's exact
    means and half-widths (rows matched by policy and target)."""
    frontier = json.loads((out / "frontier.json").read_text())
    for r in frontier["rows"]:
        for m in ("component_entropy", "ess"):
            if r.get(m) is not None and r.get(f"{m}_ci95") is not None:
                r[f"{m}_lo"], r[f"{m}_hi"] = bounded_interval(m, r[m], r[f"{m}_ci95"])
    atomic_write(out / "frontier.json", json.dumps(frontier, indent=1, default=float))
    rows = {(r["label"], r["target_spec"]): r for r in frontier["rows"]}
    lines = (out / "summary.md").read_text().split("\n")
    head = next(i for i, line in enumerate(lines) if line.startswith("| policy |"))
    col = [c.strip() for c in lines[head].strip("|").split("|")].index("component entropy")
    for i in range(head + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        cells = [c.strip() for c in lines[i].strip("|").split("|")]
        r = rows.get((cells[0], cells[1]))
        if r and r.get("component_entropy_ci95") is not None:
            cells[col] = fmt_bounded(r["component_entropy"], r["component_entropy_lo"], r["component_entropy_hi"], 1)
            lines[i] = "| " + " | ".join(cells) + " |"
    atomic_write(out / "summary.md", "\n".join(lines))


def _check_markdown(check: list[dict]) -> str:
    lines = ["| q | DT target | oracle | log(1/q) | DT KL | oracle KL | DT true | oracle true | true: DT − oracle | DT observed | oracle observed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in check:
        lines.append(
            f"| {r['q']:g} | {r['dt']} | {r['oracle']} | {r['log_1_over_q']:.2f} | {fmt(r['dt_trajectory_kl'], r['dt_trajectory_kl_ci95'], 2)} "
            f"| {fmt(r['oracle_trajectory_kl'], r['oracle_trajectory_kl_ci95'], 2)} | {fmt(r['dt_true_return'], r['dt_true_return_ci95'])} "
            f"| {fmt(r['oracle_true_return'], r['oracle_true_return_ci95'])} | {fmt(r['difference_true_return'], r['difference_true_return_ci95'])} "
            f"({r['verdict_true_return']}) | {fmt(r['dt_observed_return'], r['dt_observed_return_ci95'])} "
            f"| {fmt(r['oracle_observed_return'], r['oracle_observed_return_ci95'])} |")
    return "\n".join(lines)


def _gao_fits(table, data_true: float, data_observed: float) -> list[dict]:
    """Best-of-n (the oracle's n sweep) in the BoN form, RLFT-KL's and PPO-KL's β sweeps and ORPO's λ sweep in the RL form,
    for both returns."""
    fits = []
    bon = table[(table["policy_kind"] == "oracle") & (table.get("oracle_family") == "best_of_n")]
    curves = [("oracle best-of-n", bon, "bon"), ("RLFT-KL over β", table[table["policy_kind"] == "rlft_kl"], "rl"),
              ("PPO-KL over β", table[table["policy_kind"] == "ppo_kl"], "rl"),
              ("PPO-KL toward BC over β", table[table["policy_kind"] == "ppo_kl_bc"], "rl"), ("ORPO over λ", table[table["policy_kind"] == "ppo_om"], "rl")]
    for curve, rows, form in curves:
        if not len(rows):
            continue
        for col, base, name in (("true_return", data_true, "true"), ("episode_return", data_observed, "observed")):
            fit = gao_fit(rows["trajectory_kl"], rows[col] - base, form)
            fits.append({"curve": curve, "return": name, **fit})
    return fits


def _collapse(table) -> dict:
    """Plain PPO's component entropy (final checkpoint) against the data's, and whether the intervals separate them."""
    data = table[table["policy_kind"] == "data"].iloc[0]
    ppo = table[(table["policy_kind"] == "ppo")]
    if not len(ppo):
        return {"sentence": "(no plain PPO rows)"}
    ppo = ppo.loc[ppo["train_step"].map(lambda s: -1 if s is None else s).idxmax()]
    d, dc, p, pc = (float(x) for x in (data["component_entropy"], data["component_entropy_ci95"], ppo["component_entropy"], ppo["component_entropy_ci95"]))
    separated = abs(d - p) > (dc if math.isfinite(dc) else 0) + (pc if math.isfinite(pc) else 0)
    out = {"data": d, "data_ci95": dc, "ppo": p, "ppo_ci95": pc, "ppo_label": ppo["label"], "separated": bool(separated)}
    return {**out, "sentence": _collapse_sentence(out)}


def _collapse_sentence(c: dict) -> str:
    def show(v, ci):
        span = bounded_interval("component_entropy", v, ci)
        return fmt_bounded(v, *span) if span else fmt(v, ci, 2)
    return (f"Component entropy: the data {show(c['data'], c['data_ci95'])} nats, plain PPO at its last checkpoint ({c['ppo_label']}) "
            f"{show(c['ppo'], c['ppo_ci95'])}; "
            + ("the two intervals do not overlap: PPO's episodes collapse onto fewer of the data's behaviours."
               if c["separated"] else "the intervals overlap: this measure does not separate PPO from the data here (unresolved)."))


if __name__ == "__main__":
    hydra_entry(HERE, main, GoodhartConfig)
