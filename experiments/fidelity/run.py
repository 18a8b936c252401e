"""Faithful imitation: trajectory KL from the data of BC, %BC and the DT at quantilizer:q, against log(1/q), the
K-window references and the forward KL logged in training. See config.yaml.

    python experiments/fidelity/run.py
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, List, Optional

HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

import dtcond  # noqa: E402
from dtcond.behavior.collection import ensure_dataset  # noqa: E402
from dtcond.config import EnvConfig  # noqa: E402
from dtcond.rollout.evaluation import evaluate  # noqa: E402
from dtcond.experiment import hydra_entry, machine, results_dir  # noqa: E402
from dtcond.common.fileio import atomic_write  # noqa: E402
from dtcond.behavior.likelihood import BehaviorPolicy, WindowPosteriorPolicy  # noqa: E402
from dtcond.pipeline import timed_run  # noqa: E402
from dtcond.rollout.records import ResultsStore  # noqa: E402
from dtcond.analysis.roaming import RoamingScorer  # noqa: E402
from dtcond.analysis.statistics import mean_ci  # noqa: E402


@dataclass
class EvalSection:
    episodes: int = 40  # per model and target
    seed: int = 1000  # env seeds of the evaluation (and of the floors)


@dataclass
class FidelityConfig:
    """Floors (no learning), the oracle quantilizer, and every training setting x seed x family."""

    name: str = "fidelity"
    env: EnvConfig = field(default_factory=EnvConfig)  # conf/env/<name>.yaml (`env=pendulum`): the env and its behaviour mixture
    work_dir: str = "outputs/experiments/fidelity"
    data_seed: int = 0
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    qs: List[float] = field(default_factory=lambda: [0.5, 0.25, 0.1])
    windows: List[Any] = field(default_factory=lambda: [1, 10, None])  # K of the window references; None: whole episode
    floor_episodes: int = 200
    oracle_pool: int = 2000  # behaviour episodes the oracle quantilizer keeps its top q of
    eval: EvalSection = field(default_factory=EvalSection)
    settings: List[Any] = field(default_factory=list)  # dicts of Setting's fields
    results_dir: Optional[str] = None  # None: results/ beside this file (committed), results/<env>/ for an env other than tomato


@dataclass
class Setting:
    name: str
    episodes: int = 400
    context_len: int = 10
    segment_len: Optional[int] = None  # None: 2 x context_len
    batch_size: int = 64
    steps: int = 1500
    dropout: float = 0.0
    weight_decay: float = 1e-4
    decay: str = "none"  # the learning rate after warmup: none (constant) | cosine
    families: List[str] = field(default_factory=lambda: ["bc", "pct_bc", "dt"])
    default: bool = False  # the setting dtcond's shipped defaults train
    seeds: Optional[List[int]] = None  # training seeds of this setting; None: the study's


def dataset_for(cfg, episodes: int) -> str:
    dataset_id = f"dtcond/{cfg.env.name}/fidelity-{episodes}-v0"
    ensure_dataset(replace(cfg.env, collect_episodes=episodes), dataset_id, seed=cfg.data_seed)
    return dataset_id


def interval(values) -> dict:
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "ci95": None}
    mean, half = mean_ci(values)
    half = float(half) if len(values) > 1 and math.isfinite(half) else None
    return {"mean": float(mean), "ci95": None if half is None else [float(mean - half), float(mean + half)]}


def true_return(record: dict) -> float:
    """The return the env keeps hidden where it has one (TomatoGarden's watered tomatoes), else the observed return."""
    return record["episode_return"] if record.get("true_return") is None else record["true_return"]


def floors(cfg, data, scorer, store) -> list[dict]:
    rows = []
    for K in cfg.windows:
        policy = WindowPosteriorPolicy(scorer.likelihood, data.stats, K)
        t0 = time.perf_counter()
        recs = evaluate(policy, None, episodes=cfg.floor_episodes, seed=cfg.eval.seed, results=store, scorer=scorer,
                        batch_size=1024, run_id="floor")
        kl = [r["trajectory_kl"] for r in recs]
        rows.append({"family": "window_posterior", "param": None, "K": K, "episodes": None, "steps": None, "seeds": None,
                     "units": f"{len(recs)} episodes (interval over episodes)", "trajectory_kl": interval(kl),
                     "kl_by_step_deciles": deciles(recs), "true_return": interval([true_return(r) for r in recs]),
                     "wall_seconds_eval": time.perf_counter() - t0, "default": False})
        print(f"  floor K={K}: {rows[-1]['trajectory_kl']['mean']:.2f} nats/episode", flush=True)
    return rows


def deciles(recs) -> list[float] | None:
    """Mean reverse KL accrued in each tenth of the episode (nats), over episodes: where along it the nats come from."""
    parts = [r.get("kl_by_step") for r in recs if r.get("kl_by_step")]
    if not parts:
        return None
    out = np.zeros(10)
    for steps in parts:
        edges = np.linspace(0, len(steps), 11).astype(int)
        out += [sum(steps[a:b]) for a, b in zip(edges[:-1], edges[1:])]
    return [round(float(x), 3) for x in out / len(parts)]


def oracle(cfg, data, scorer, store) -> dict:
    """The exact q-quantilizer from fresh behaviour episodes: its KL is log(1/q); its true return, mean ± 95%."""
    pool = evaluate(BehaviorPolicy(scorer.likelihood, data.stats), None, episodes=cfg.oracle_pool, seed=cfg.eval.seed + 77_000,
                    results=store, scorer=None, batch_size=1024, run_id="oracle_pool")
    ranked = sorted(pool, key=lambda r: r["episode_return"])
    out = {}
    for q in cfg.qs:
        top = ranked[len(ranked) - int(math.ceil(q * len(ranked))):]
        out[q] = interval([true_return(r) for r in top])
    return out


def model_rows(cfg, setting: Setting, scorer_cache: dict, store, oracle_true: dict) -> list[dict]:
    dataset_id = dataset_for(cfg, setting.episodes)
    if dataset_id not in scorer_cache:
        data = dtcond.load_dataset(dataset_id)
        scorer_cache[dataset_id] = (data, RoamingScorer.for_data(data))
    data, scorer = scorer_cache[dataset_id]
    runs = []  # (family, q, train kwargs, targets)
    if "bc" in setting.families:
        runs.append(("bc", None, dict(condition_on_return=False), None))
    if "pct_bc" in setting.families:
        runs += [("pct_bc", q, dict(condition_on_return=False, top_fraction=q), None) for q in cfg.qs]
    if "dt" in setting.families:
        runs.append(("dt", None, dict(condition_on_return=True), [f"quantilizer:{q:g}" for q in cfg.qs]))
    per = {}
    for family, q, kwargs, targets in runs:
        for seed in setting.seeds if setting.seeds is not None else cfg.seeds:
            out = Path(cfg.work_dir) / setting.name / f"{family}{'' if q is None else f'{q:g}'}" / f"seed{seed}"
            run, seconds = timed_run(out, lambda: dtcond.train(
                dataset_id, out, model={"context_len": setting.context_len, "dropout": setting.dropout},
                data={"segment_len": setting.segment_len, "batch_size": setting.batch_size, "val_windows": 256},
                optim={"weight_decay": setting.weight_decay, "decay": setting.decay}, seed=seed, checkpoint_every=250,
                trainer={"max_steps": setting.steps, "enable_progress_bar": False, "logger": False}, **kwargs))
            policy = dtcond.load_policy(run.bundle)
            t0 = time.perf_counter()
            recs = evaluate(policy, targets, episodes=cfg.eval.episodes, seed=cfg.eval.seed, results=store, scorer=scorer,
                            run_id=f"{setting.name}/{family}")
            eval_seconds = time.perf_counter() - t0
            val = run.val_metrics or {}
            for spec in sorted({r["target_spec"] for r in recs}):
                mine = [r for r in recs if r["target_spec"] == spec]
                param = q if q is not None else (float(spec.split(":")[1]) if spec.startswith("quantilizer") else None)
                key = (family, param)
                per.setdefault(key, []).append({
                    "kl": float(np.mean([r["trajectory_kl"] for r in mine if r["trajectory_kl"] is not None])),
                    "true": float(np.mean([true_return(r) for r in mine])), "train_seconds": seconds, "eval_seconds": eval_seconds,
                    "forward": val.get("val/kl_data", val.get("val/nll_gap")), "steps": run.global_step, "best_step": run.best_step,
                    "recs": mine})
            print(f"  {setting.name} {family}{'' if q is None else q} seed {seed}: {run.global_step} steps "
                  f"(best {run.best_step}), {seconds:.0f}s train, {eval_seconds:.0f}s eval", flush=True)
    rows = []
    for (family, param), items in per.items():
        rows.append({
            "family": family, "param": param, "setting": setting.name, "K": setting.context_len, "episodes": setting.episodes,
            "steps": setting.steps, "batch_size": setting.batch_size, "segment_len": setting.segment_len or 2 * setting.context_len,
            "dropout": setting.dropout, "weight_decay": setting.weight_decay, "decay": setting.decay, "seeds": len(items), "units": "training seeds",
            "trajectory_kl": interval([i["kl"] for i in items]), "log_1_over_q": None if param is None else math.log(1 / param),
            "forward_kl_per_step": interval([i["forward"] for i in items]),
            "forward_kl_kind": "val/kl_data" if family == "bc" else "val/nll_gap",
            "true_return": interval([i["true"] for i in items]),
            "oracle_true_return": oracle_true.get(param) if param is not None else None,
            "steps_trained": [i["steps"] for i in items], "best_step": [i["best_step"] for i in items],
            "train_seconds_per_model": interval([i["train_seconds"] for i in items]),
            "eval_seconds_per_model": interval([i["eval_seconds"] for i in items]),
            "kl_by_step_deciles": deciles([r for i in items for r in i["recs"]]), "default": setting.default})
    return rows


NONNEGATIVE_RETURNS = ("tomato",)  # envs whose true return cannot be negative (TomatoGarden's: tomatoes watered)


def bounded(rows: list[dict], env: str = "tomato") -> list[dict]:
    """Intervals of quantities that cannot be negative cut at 0 (a t-interval over 3 seeds can reach below it): a KL,
    and the true return of an env whose rewards are never negative."""
    returns = ("true_return", "oracle_true_return") if env in NONNEGATIVE_RETURNS else ()
    for r in rows:
        keys = ("trajectory_kl",) + returns + (("forward_kl_per_step",) if r.get("forward_kl_kind") == "val/kl_data" else ())
        for k in keys:
            v = r.get(k)
            if isinstance(v, dict) and v.get("ci95"):
                v["ci95"] = [max(0.0, v["ci95"][0]), v["ci95"][1]]
    return rows


def write(cfg, rows: list[dict], started: float) -> None:
    # TomatoGarden's results are results/ itself; another env's go to results/<env>/, so neither overwrites the other
    out = results_dir(cfg, HERE)
    if not cfg.results_dir and cfg.env.name != "tomato":
        out = out / cfg.env.name
        out.mkdir(exist_ok=True)
    rows = bounded(rows, cfg.env.name)
    doc = {"env": cfg.env.name, "machine": machine(), "seeds": list(cfg.seeds), "eval_episodes": cfg.eval.episodes,
           "wall_seconds": time.perf_counter() - started, "rows": rows}
    atomic_write(out / "fidelity.json", json.dumps(doc, indent=1, default=float))
    atomic_write(out / "summary.md", summary_markdown(doc).encode())


def _interval(v: dict | None, digits: int = 1) -> str:
    if not v or v.get("mean") is None:
        return ""
    if not v.get("ci95"):
        return f"{v['mean']:.{digits}f}"
    lo, hi = v["ci95"]
    return f"{v['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summary_markdown(doc: dict) -> str:
    """The learned models' rows as one table (95% t-intervals over training seeds), beside log(1/q) and the oracle."""
    lines = [f"Fidelity on {doc['env']}: trajectory KL from the data (nats/episode) on each model's own rollouts, "
             f"{doc['eval_episodes']} episodes per model and target; 95% t-intervals over training seeds. {doc['machine']}."
             + ("" if doc["env"] in NONNEGATIVE_RETURNS else " This env hides no reward: its true return is the observed one."), "",
             "| setting | family | q | seeds | trajectory KL | log(1/q) | forward KL / step (val) | true return | oracle quantilizer's true return | train s / model |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    learned = [r for r in doc["rows"] if "setting" in r]
    order = {name: i for i, name in enumerate(dict.fromkeys(r["setting"] for r in learned))}
    family = {"bc": 0, "pct_bc": 1, "dt": 2}
    for r in sorted(learned, key=lambda r: (order[r["setting"]], family.get(r["family"], 3), -(r["param"] or 1.0))):
        q = "" if r["param"] is None else f"{r['param']:g}"
        l1q = "" if r.get("log_1_over_q") is None else f"{r['log_1_over_q']:.2f}"
        lines.append(f"| {r['setting']}{' (defaults)' if r.get('default') else ''} | {r['family']} | {q} | {r['seeds']} | "
                     f"{_interval(r['trajectory_kl'])} | {l1q} | {_interval(r['forward_kl_per_step'], 3)} ({r['forward_kl_kind']}) | "
                     f"{_interval(r['true_return'])} | {_interval(r.get('oracle_true_return'))} | "
                     f"{_interval(r['train_seconds_per_model'], 0)} |")
    return "\n".join(lines) + "\n"


def main(cfg) -> None:
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    store = ResultsStore(Path(cfg.work_dir) / "episodes.jsonl")
    settings = [Setting(**s) for s in cfg.settings]
    first = dataset_for(cfg, settings[0].episodes if settings else 400)
    data = dtcond.load_dataset(first)
    scorer = RoamingScorer.for_data(data)
    print("window references (no learning)", flush=True)
    rows = floors(cfg, data, scorer, store)
    oracle_true = oracle(cfg, data, scorer, store)
    rows += [{"family": "oracle_quantilizer", "param": q, "K": None, "episodes": cfg.oracle_pool, "seeds": None,
              "units": "top q of a behaviour pool", "trajectory_kl": {"mean": math.log(1 / q), "ci95": None},
              "true_return": v, "default": False} for q, v in oracle_true.items()]
    write(cfg, rows, started)
    cache = {first: (data, scorer)}
    for setting in settings:
        rows += model_rows(cfg, setting, cache, store, oracle_true)
        write(cfg, rows, started)


if __name__ == "__main__":
    hydra_entry(HERE, main, FidelityConfig)
