"""What the experiments share: Hydra entry, dataset, per-seed training (DT, %BC, PPO), evaluation, report.

Each experiment folder holds a ``config.yaml`` that composes dtcond's own config groups (``env``,
``model``) and a ``run.py`` that calls :func:`hydra_entry`. Heavy files (datasets, checkpoints, the
per-episode results table) go under ``work_dir``; the small tables and plots that state the result
go to the folder's ``results/``, which is committed.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

import dtcond
from dtcond.cli import _components, _quiet_libraries, conf_dir, override_error
from dtcond.data import datasets_root, load
from dtcond.errors import DtcondError
from dtcond.fileio import atomic_write


def hydra_entry(experiment_dir: Path, main) -> None:
    """Run ``main(cfg)`` as a Hydra app on ``experiment_dir/config.yaml``, with dtcond's config groups reachable."""
    import hydra

    # Only the primary config or the command line may extend the search path; the command line
    # needs no file:// path relative to the caller's working directory.
    searchpath = f"hydra.searchpath=[file://{conf_dir()}]"
    message = override_error(experiment_dir, "config", sys.argv[1:], hint=f"see {experiment_dir.name}/config.yaml for the keys",
                             extra=[searchpath])
    if message:  # a typo fails in one line, before any work
        print(f"{experiment_dir.name}: error: {message}", file=sys.stderr)
        sys.exit(2)
    if not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
        sys.argv.insert(1, searchpath)

    def wrapped(cfg):
        _quiet_libraries("train")
        try:
            main(cfg)
        except DtcondError as exc:
            print(f"{experiment_dir.name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    hydra.main(version_base=None, config_path=str(experiment_dir), config_name="config")(wrapped)()


def plain(node):
    return OmegaConf.to_container(node, resolve=True) if node is not None else None


def ensure_dataset(cfg) -> str:
    """Collect ``cfg.dataset_id`` from the env's behaviour mixture unless it already exists."""
    if not (datasets_root() / cfg.dataset_id).exists():
        summary = dtcond.collect(cfg.env.id, _components(cfg.behavior), int(cfg.episodes), cfg.dataset_id,
                                 seed=int(cfg.data_seed), env_kwargs=plain(cfg.env.kwargs) or {}, progress=False)
        print(summary.format())
    return cfg.dataset_id


def train_kwargs(cfg) -> dict:
    t = cfg.train
    return dict(
        model=plain(cfg.model),
        data=dict(batch_size=int(t.batch_size), steps_per_epoch=250, val_windows=256),
        optim=dict(lr=float(t.lr), weight_decay=1e-4, warmup_steps=int(t.warmup_steps)),
        trainer=dict(max_steps=int(t.steps), enable_progress_bar=False, enable_model_summary=False, logger=False),
        checkpoint_every=int(t.steps),
    )


def train_policies(cfg, dataset_id: str, seed: int, work: Path) -> list[tuple[str, Path]]:
    """The DT, %BC at each top fraction, and every PPO checkpoint for one seed: (label, bundle) pairs."""
    out = []
    kw = train_kwargs(cfg)
    start = time.perf_counter()
    run = dtcond.train(dataset_id, work / f"dt_seed{seed}", seed=seed, **kw)
    print(f"  seed {seed}: DT {run.global_step} steps, val/loss {run.val_loss or float('nan'):.4f} ({time.perf_counter() - start:.0f}s)")
    out.append(("dt", run.bundle))
    for q in cfg.pct_bc or []:
        bc_kw = {**kw, "trainer": {**kw["trainer"], "max_steps": int(cfg.train.bc_steps)}, "checkpoint_every": int(cfg.train.bc_steps)}
        run = dtcond.train(dataset_id, work / f"pct_bc{q:g}_seed{seed}", seed=seed, condition_on_return=False,
                           top_fraction=float(q), **bc_kw)
        out.append((f"pct_bc:{q:g}", run.bundle))
    if cfg.baseline.get("algo"):
        start = time.perf_counter()
        rl = dtcond.train_baseline(load(dataset_id).stats, str(cfg.baseline.algo), work / f"{cfg.baseline.algo}_seed{seed}",
                                   budget=int(cfg.baseline.budget), checkpoints=int(cfg.baseline.checkpoints),
                                   hyperparams=plain(cfg.baseline.hyperparams), seed=seed, progress=False)
        print(f"  seed {seed}: {cfg.baseline.algo} {rl.timesteps} env steps ({time.perf_counter() - start:.0f}s)")
        out += [("rl", b) for b in rl.bundles]
    return out


def run_comparison(cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Dataset → per seed: DT, %BC, PPO → roll out all on the same episode seeds → comparison table.

    Returns (per-episode records, comparison table with 95% CIs over seeds).
    """
    from dtcond.report import comparison_table
    from dtcond.results import ResultsStore

    work = Path(cfg.work_dir).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    dataset_id = ensure_dataset(cfg)
    data = load(dataset_id)
    store = ResultsStore(work / "results.jsonl")
    scorer = None
    if cfg.roaming:
        scorer = dtcond.RoamingScorer.for_data(data)
        store.append(dtcond.dataset_records(data, scorer))
    for seed in cfg.seeds:
        for label, bundle in train_policies(cfg, dataset_id, int(seed), work):
            policy = dtcond.load_policy(bundle)
            targets = list(cfg.targets) if policy.kind == "dt" else None
            # Every policy meets the same env seeds (cfg.eval_seed), so seeds differ only in the weights.
            dtcond.evaluate(policy, targets, episodes=int(cfg.eval_episodes), seed=int(cfg.eval_seed), results=store,
                            run_id=f"{cfg.name}_seed{seed}", scorer=scorer)
    df = store.to_pandas()
    df = df[df["dataset_id"] == dataset_id]
    df["label"] = df["label"].fillna(df["policy_kind"])
    return df, comparison_table(df)


def add_per_seed(df: pd.DataFrame, table: pd.DataFrame, name: str, values: pd.Series) -> pd.DataFrame:
    """Add a per-episode quantity to ``table`` as ``name`` and ``name_ci95``: its mean per training seed,
    then the mean and 95% CI over seeds for each (policy, target) row."""
    per_seed = values.astype(float).groupby([df["label"], df["target_spec"], df["fingerprint"]], sort=False).mean().sort_index()
    per_row = [per_seed.loc[(r.label, r.target_spec)] for r in table.itertuples()]
    return table.assign(**{name: [float(g.mean()) for g in per_row],
                           f"{name}_ci95": [ci95(g) if r.seeds > 1 else float("nan") for g, r in zip(per_row, table.itertuples())]})


def add_gap(df: pd.DataFrame, table: pd.DataFrame, name: str = "gap") -> pd.DataFrame:
    """Add observed − true return per row of ``table`` (mean and 95% CI over training seeds)."""
    return add_per_seed(df, table, name, df["episode_return"].astype(float) - df["true_return"].astype(float))


def final_checkpoints(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of RL policies at their last checkpoint ("ppo@100000" of "ppo@25000", ...)."""
    rl = table[table["label"].str.contains("@")]
    steps = rl["label"].str.split("@").str[1].astype(int)
    return rl[steps == steps.max()]


def ci95(values) -> float:
    """Half-width of a t-interval for the mean (NaN for fewer than two values)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def fmt(v: float, ci: float | None = None, digits: int = 1) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f} ± {ci:.{digits}f}" if ci is not None and math.isfinite(ci) else f"{v:.{digits}f}"


def table_markdown(table: pd.DataFrame, columns: dict[str, str]) -> str:
    """A compact markdown table of the comparison: ``columns`` maps column → header; CIs shown where present."""
    head = ["policy", "target", "seeds", *columns.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["label"], r["target_spec"], str(r["seeds"])]
        for col in columns:
            digits = 2 if col in ("nll_behavior", "kl_behavior", "novel_fraction") else 1
            cells.append(fmt(r.get(col, float("nan")), r.get(f"{col}_ci95"), digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_dir(cfg, experiment_dir: Path) -> Path:
    """Where the small result files go: ``cfg.results_dir``, by default the experiment's committed results/."""
    out = Path(cfg.results_dir).expanduser().resolve() if cfg.get("results_dir") else experiment_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(out: Path, markdown: str, summary: dict, table: pd.DataFrame | None = None) -> Path:
    """Write summary.md, summary.json (and the comparison as CSV) into ``out``."""
    atomic_write(out / "summary.md", markdown)
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=float))
    if table is not None:
        atomic_write(out / "comparison.csv", table.round(4).to_csv(index=False))
    return out / "summary.md"


def machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {__import__('torch').__version__}, dtcond {dtcond.__version__}"


def ensure_hopper_ppo(ppo_dir: str | Path, budget: int, checkpoints: int = 10) -> Path:
    """PPO on dtcond/HopperCost-v0 whose checkpoints are the Hopper behaviour policies; resumes, or no-ops when done."""
    ppo_dir = Path(ppo_dir).expanduser().resolve()
    random_id = "dtcond/hopper_cost/random-v0"
    if not (datasets_root() / random_id).exists():  # the baseline reads the env and spaces from a dataset
        from dtcond.behavior import Component

        dtcond.collect("dtcond/HopperCost-v0", [Component("random")], 50, random_id, progress=False)
    start = time.perf_counter()
    rl = dtcond.train_baseline(load(random_id).stats, "ppo", ppo_dir, budget=budget, checkpoints=checkpoints, progress=False)
    if time.perf_counter() - start > 5:
        print(f"Hopper behaviour PPO: {rl.timesteps} env steps in {time.perf_counter() - start:.0f}s -> {ppo_dir}")
    return ppo_dir


def resolve_behavior(items: list[dict], ppo_dir: Path | None) -> list[dict]:
    """Turn ``ppo:<steps>`` into that SB3 checkpoint of the behaviour PPO run."""
    out = []
    for item in items:
        item = dict(item)
        if str(item["policy"]).startswith("ppo:"):
            if ppo_dir is None:
                raise DtcondError(f"behaviour {item['policy']!r} needs the Hopper PPO run")
            path = ppo_dir / "checkpoints" / f"ppo_{int(item['policy'][4:])}_steps.zip"
            if not path.exists():
                raise DtcondError(f"no PPO checkpoint {path}; the run saves every budget/checkpoints steps")
            item["policy"] = f"sb3:{path}"
            item.setdefault("name", f"ppo@{path.stem.split('_')[1]}+{item.get('noise', 0):g}")
        out.append(item)
    return out
