"""Luck: what return conditioning does when the best returns in the data were lucky.

In dtcond/Gamble-v0 each of 3 rounds offers a sure +1 (safe), a gamble (+6 with probability 0.2,
else −2: worth −0.4 on average) or a fold (−1). The expected-return-optimal policy plays safe every
round (return 3). Every return above 3 in the data belongs to an agent that gambled and won, so a
DT asked for those returns is asked to gamble. The env reports each choice's expected reward as
``info["true_reward"]``, so the true return below is the return with the luck removed: the quantity
a policy can actually control. PPO is trained on the achieved reward, plain and with a KL penalty
toward the data's behaviour model at several β, and the BC transformer is fine-tuned by RL on it (toward its frozen
copy at several β, and stopped early), whose promised posterior selects the lucky episodes: every Gamble episode can
be listed, so how much of the distance to that posterior no policy can close is summed exactly
(:mod:`dtcond.analysis.soft_optimum`). Beside the plain DT, a DT trained on ESPER's
expected-return labels (``relabel: [esper]``, dtcond/dt/relabel.py) is rolled out at the same target
specs, which resolve against its labels rather than the raw returns.

    python experiments/luck/run.py             # see config.yaml for seeds and budgets
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent

from dtcond.experiment import (DIVERGENCE, DIVERGENCE_NOTE, MODE_COLLAPSE, MODE_COLLAPSE_NOTE, BudgetExperimentConfig, add_gap, esper_description,  # noqa: E402
                    final_checkpoints, fmt, hydra_entry, machine, table_markdown, results_dir, write_results)
from dtcond.analysis.frontier import BUDGET_NOTE, budget_comparisons, budget_markdown  # noqa: E402
from dtcond.analysis.oracles import posterior_gaps  # noqa: E402
from dtcond.analysis.soft_optimum import exact_terms, policy_log_probs  # noqa: E402
from dtcond.analysis.statistics import mean_ci  # noqa: E402
from dtcond.pipeline import prior_pools, run_comparison  # noqa: E402
from dtcond.analysis.report import plot_frontier  # noqa: E402
from dtcond.analysis.statistics import paired_ci, verdict  # noqa: E402

OPTIMAL = 3.0  # always safe: 3 rounds × +1
AGAINST = ("ppo_kl", "rlft_kl", "rlft_stop")  # the RL families each DT is compared with at the budgets
BAR = 2.7  # the bar for relabelling: a relabelled DT's expected return at the top targets should reach this


@dataclass
class LuckConfig(BudgetExperimentConfig):
    budgets: List[Optional[float]] = field(default_factory=lambda: [0.25, 0.5, 1, 2, None])  # nats per episode (3 rounds)


def relabel_rows(df, table, high_specs):
    """Per target spec: the plain DT and each relabelled DT (``dt:<method>``), their resolved target and expected
    return (mean ± 95% CI over training seeds), and relabelled − plain with its paired t-interval (both DTs of a
    seed share the training seed and the env seeds)."""
    dt = table[table["policy_kind"] == "dt"]

    def per_seed(label, spec):
        part = df[(df["label"] == label) & (df["target_spec"] == spec)]
        return part["true_return"].astype(float).groupby(part["train_seed"]).mean()
    rows = []
    for label in [x for x in dt["label"].unique() if x != "dt"]:
        for r in dt[dt["label"] == label].itertuples():
            plain = dt[(dt["label"] == "dt") & (dt["target_spec"] == r.target_spec)]
            p = plain.iloc[0] if len(plain) else None
            a, b = per_seed(label, r.target_spec), per_seed("dt", r.target_spec)
            seeds = sorted(set(a.index) & set(b.index))
            diff, ci, _ = paired_ci(a.reindex(seeds).to_numpy(), b.reindex(seeds).to_numpy())
            rows.append({"label": label, "target_spec": r.target_spec, "top": r.target_spec in high_specs, "target": r.target,
                         "true_return": r.true_return, "true_return_ci95": r.true_return_ci95, "episode_return": r.episode_return,
                         "plain_target": p["target"] if p is not None else float("nan"),
                         "plain_true_return": p["true_return"] if p is not None else float("nan"),
                         "plain_true_return_ci95": p["true_return_ci95"] if p is not None else float("nan"),
                         "difference": diff, "difference_ci95": ci, "verdict": verdict(diff, ci, "relabelled higher", "plain higher")})
    return rows


def relabel_markdown(rows) -> list[str]:
    if not rows:
        return []
    lines = ["## Relabelled with ESPER: expected-return labels instead of returns", "",
             "The same target specs, resolved for each DT against the returns it was trained on: the raw returns for the plain DT, "
             "ESPER's expected-return labels for dt:esper (dtcond/dt/relabel.py). Expected return (luck removed), mean ± 95% CI over "
             "training seeds; the difference is relabelled − plain with a paired 95% t-interval over seeds (same seeds, same env "
             "seeds; one interval per target, no correction for their number). Top targets (*) are those "
             f"at which the plain DT is asked for more than {OPTIMAL:g}, which only lucky gamblers reached.", "",
             "| target | plain DT: target G | plain DT: expected return | relabelled: target G | relabelled: expected return "
             "| relabelled: achieved return | difference | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target_spec']}{' *' if r['top'] else ''} | {r['plain_target']:.2f} | {fmt(r['plain_true_return'], r['plain_true_return_ci95'], 2)} "
                     f"| {r['target']:.2f} | {fmt(r['true_return'], r['true_return_ci95'], 2)} | {r['episode_return']:.2f} "
                     f"| {fmt(r['difference'], r['difference_ci95'], 2)} | {r['verdict']} |")
    top = [r for r in rows if r["top"]]
    if top:
        low = min(top, key=lambda r: r["true_return"])
        met = all(r["true_return"] >= BAR for r in top)
        lines += ["", f"At the top targets ({', '.join(r['target_spec'] for r in top)}) the relabelled DT's expected return is "
                  f"{min(r['true_return'] for r in top):.2f} to {max(r['true_return'] for r in top):.2f} (lowest: {low['target_spec']}, "
                  f"{fmt(low['true_return'], low['true_return_ci95'], 2)}); the plain DT's {min(r['plain_true_return'] for r in top):.2f} "
                  f"to {max(r['plain_true_return'] for r in top):.2f}. The bar for relabelling, a mean of at least {BAR:g} at every top target: "
                  f"{'met' if met else 'not met'}" + ("" if met else f" (lowest {low['true_return']:.2f})")
                  + f"; with the lower end of each 95% interval: {'met' if all(r['true_return'] - r['true_return_ci95'] >= BAR for r in top) else 'not met'}."]
    return lines


def main(cfg) -> None:
    start = time.perf_counter()
    result = run_comparison(cfg)
    df, table = result.records, result.table
    table = add_gap(df, table, "luck")
    cols = {"target": "target G", "episode_return": "achieved return", "true_return": "expected return (luck removed)",
            "luck": "luck", "trajectory_kl": "KL(p_π‖p_data) nats/episode", **DIVERGENCE, **MODE_COLLAPSE}
    # The plain DT and each relabelled one (dt:esper) against the same PPO-KL frontier.
    references = ["conditioning", *[x for x in table["label"].unique() if x.startswith("dt:")]]
    against = [f for f in AGAINST if (df["policy_kind"] == f).any()]
    m = len(references) * len(cfg.budgets) * len(against)
    budgets = [e for ref in references for e in budget_comparisons(df, list(cfg.budgets), reference=ref, against=against, comparisons=m)]
    exact = luck_floor(cfg, df)
    betas = sorted(table.loc[table["policy_kind"] == "ppo_kl", "policy_param"].dropna().unique())
    dt = table[table["label"] == "dt"]  # the plain DT; relabelled DTs have a section of their own
    high = dt[dt["target"] > OPTIMAL]  # returns only lucky gamblers reached
    relabelled = relabel_rows(df, table, set(high["target_spec"]))
    rl = final_checkpoints(table)
    lines = [
        "# Luck: return conditioning in a gambling env", "",
        f"dtcond/Gamble-v0; dataset {cfg.dataset} ({cfg.env.collect_episodes} episodes, behaviour seed {cfg.data_seed}); "
        f"DT {cfg.trainer.max_steps} steps (K={cfg.model.context_len}, {cfg.model.n_layer} layers, width {cfg.model.n_embd}); "
        f"%BC {list(cfg.bc.top_fractions)} at {cfg.bc.steps} steps; PPO {cfg.rl.budget} env steps (SB3's defaults with "
        f"{dict(cfg.rl.hyperparams or {})}), plain and KL-regularized toward β̂ at "
        f"β ∈ {[float(b) for b in betas]}; training seeds {list(cfg.seeds)}; "
        + (f"DT on relabelled returns: {list(cfg.relabel)} (EsperConfig: {esper_description(cfg.esper)}); " if cfg.relabel else "") +
        f"{cfg.eval.episodes} episodes per policy and target. Means ± 95% CI over training seeds. "
        f"Machine: {machine()}; this invocation took {time.perf_counter() - start:.0f}s (a rerun on the same work_dir reuses finished training and episodes).", "",
        "![frontier](frontier.png)", "", table_markdown(table, cols), "",
        f"Expected-return-optimal (always safe): {OPTIMAL:.1f}. Plain-DT targets above {OPTIMAL:g}, which only lucky gamblers "
        f"reached in the data ({', '.join(high['target_spec'])}): expected return "
        f"{high['true_return'].min():.2f} to {high['true_return'].max():.2f}, a shortfall of "
        f"{OPTIMAL - high['true_return'].max():.2f} to {OPTIMAL - high['true_return'].min():.2f} "
        f"({(OPTIMAL - high['true_return'].max()) / OPTIMAL:.0%} to {(OPTIMAL - high['true_return'].min()) / OPTIMAL:.0%} of the optimum).",
    ]
    if len(rl):
        r = rl.iloc[0]
        lines.append(f"PPO ({r['label']}): expected return {fmt(r['true_return'], r['true_return_ci95'], 2)}.")
    lines += ["", *relabel_markdown(relabelled)]
    lines += ["", DIVERGENCE_NOTE, "", MODE_COLLAPSE_NOTE, "",
              "## At fixed divergence budgets: expected return, conditioning vs KL-regularized PPO", "",
              BUDGET_NOTE.format(members="each DT's targets; PPO-KL's β; RLFT-KL's β; RLFT-stop's thresholds", m=m)
              .replace("true return", "expected return"), "",
              budget_markdown(budgets, "expected return", digits=2)]
    if exact:
        lines += ["", "## RL fine-tuning, its posterior and the luck floor", "", FLOOR_NOTE, "", floor_markdown(exact)]
    md = "\n".join(lines) + "\n"
    plot_frontier(table, results_dir(cfg, HERE) / "frontier.png", title="Gamble: achieved and expected return vs divergence from the data")
    write_results(results_dir(cfg, HERE), md, {"optimal": OPTIMAL, "rows": table.to_dict(orient="records"), "budgets": budgets,
                                                  "relabelled": relabelled, "posterior": exact}, table)
    print(md)


FLOOR_NOTE = ("The BC transformer fine-tuned by RL toward its frozen copy at β promises the posterior P_β = p_BC·exp(R/β)/Z, "
              "which reweights whole episodes by their achieved return, luck included. Every Gamble episode can be listed (64 of "
              "them), so each term is an exact sum over them, per training seed, from the two transformers' action probabilities "
              "(dtcond.analysis.soft_optimum): KL(p_π‖P_β) = KL(p_π‖p_π*) + floor, where π* is the best any policy can do "
              "under the penalized objective (it averages the gamble's outcome, it cannot pick it) and the floor, "
              "log Z − V*/β, is what the posterior's selection on luck puts out of every policy's reach. \"sampled\" is the "
              "estimate the Goodhart and RL fine-tuning experiments use (the policy's evaluation episodes and a pool of the prior's "
              "own), beside the exact value it estimates. Expected return: luck removed. Means ± 95% t-interval over training seeds.")
EXACT = ("kl_to_posterior", "floor", "kl_to_soft_optimum", "kl_to_prior", "true_return", "soft_optimum_true_return",
         "posterior_true_return", "posterior_return", "soft_optimum_kl_to_prior")


def luck_floor(cfg, df) -> list[dict]:
    """Per β of RLFT-KL: the exact terms of :func:`dtcond.analysis.soft_optimum.exact_terms` per training seed (the seed's
    fine-tuned policy against its BC prior, over every Gamble episode), their means over seeds, and the sampled
    estimate of the distance to the posterior (:func:`dtcond.analysis.oracles.posterior_gaps`)."""
    import gymnasium as gym

    work = Path(cfg.work_dir).expanduser().resolve()
    sampled = {r["beta"]: r for r in posterior_gaps(df, prior_pools(work, cfg.seeds))}
    env = gym.make(cfg.env.id, **dict(cfg.env.kwargs)).unwrapped
    episodes = env.episodes()
    priors = {int(s): policy_log_probs(path, episodes) for s in cfg.seeds if (path := work / f"seed{s}" / "bc" / "policy").exists()}
    rows = []
    for beta in cfg.finetune.betas:
        per = []
        for s, prior in priors.items():
            policy = work / f"seed{s}" / f"rlft_kl{beta:g}" / "policy"
            if policy.exists():
                per.append({"seed": s, **exact_terms(episodes, policy_log_probs(policy, episodes), prior, beta)})
        if not per:
            continue
        row = {"beta": float(beta), "seeds": [p["seed"] for p in per]}
        for k in EXACT:
            row[k], row[f"{k}_ci95"] = mean_ci([p[k] for p in per])
            row[f"{k}_per_seed"] = [p[k] for p in per]
        got = sampled.get(float(beta))
        row["sampled_kl_to_posterior"], row["sampled_kl_to_posterior_ci95"] = (got["kl_to_posterior"], got["kl_to_posterior_ci95"]) if got else (None, None)
        row["sampled_low_ess_seeds"] = got["low_ess_seeds"] if got else []
        rows.append(row)
    return rows


def floor_markdown(rows: list[dict]) -> str:
    lines = ["| β | seeds | KL to the posterior (exact) | floor (no policy below) | KL to the best policy π* | sampled KL to the posterior "
             "| KL(p_π‖p_BC) | expected return: π | π* | posterior | posterior's achieved return |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        low = f" (low ESS on {len(r['sampled_low_ess_seeds'])} seeds)" if r["sampled_low_ess_seeds"] else ""
        lines.append(f"| {r['beta']:g} | {len(r['seeds'])} | {fmt(r['kl_to_posterior'], r['kl_to_posterior_ci95'], 2)} "
                     f"| {fmt(r['floor'], r['floor_ci95'], 2)} | {fmt(r['kl_to_soft_optimum'], r['kl_to_soft_optimum_ci95'], 2)} "
                     f"| {fmt(r['sampled_kl_to_posterior'], r['sampled_kl_to_posterior_ci95'], 2) if r['sampled_kl_to_posterior'] is not None else '–'}{low} "
                     f"| {fmt(r['kl_to_prior'], r['kl_to_prior_ci95'], 2)} | {fmt(r['true_return'], r['true_return_ci95'], 2)} "
                     f"| {fmt(r['soft_optimum_true_return'], r['soft_optimum_true_return_ci95'], 2)} "
                     f"| {fmt(r['posterior_true_return'], r['posterior_true_return_ci95'], 2)} | {fmt(r['posterior_return'], r['posterior_return_ci95'], 2)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    hydra_entry(HERE, main, LuckConfig)
