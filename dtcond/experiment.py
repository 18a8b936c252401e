"""Writing an experiment: the Hydra entry, its typed config, table helpers, results files.

Each folder under ``experiments/`` holds a ``config.yaml`` and a ``run.py``. The config's schema is a dataclass
the script defines, usually :class:`ExperimentConfig` (a :class:`~dtcond.config.ComparisonConfig` with a results
folder) plus the experiment's own keys; its defaults list starts with ``base_experiment`` and composes dtcond's
config groups (``env``, ``model``), so the YAML holds only what differs from the library's defaults. ``run.py``
calls :func:`hydra_entry`, which hands ``main`` the checked dataclass; its imports come from here, so a script
needs no path tricks. The comparison itself (dataset, per-seed training of DT, %BC and PPO, rollouts on shared
env seeds, scoring) is :func:`dtcond.pipeline.run_comparison`; heavy files (datasets, checkpoints, the
per-episode table) go under ``work_dir``, and the small tables and plots that state the result go to the
folder's ``results/``, which is committed.

Layer 13: may import common, envs, datasets, targets, config, rollout, behavior, dt, rl, families, analysis,
pipeline (the layers below it; the package docstring lists them).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from dataclasses import dataclass, field
from typing import List, Optional

import dtcond
from dtcond import families
from dtcond.analysis.frontier import check_budgets
from dtcond.analysis.oracles import MIN_ESS
from dtcond.analysis.statistics import bounded_interval, grouped_mean_ci, with_policy_columns
from dtcond.common.console import quiet_libraries
from dtcond.common.errors import DtcondError
from dtcond.common.fileio import atomic_write
from dtcond.config import ComparisonConfig, conf_dir, from_hydra, override_error
from dtcond.datasets.loading import load
from dtcond.datasets.storage import datasets_root
from dtcond.pipeline import check_comparison

SCHEMA = "base_experiment"  # the name an experiment's config.yaml starts its defaults list with


@dataclass
class ExperimentConfig(ComparisonConfig):
    """A comparison experiment: :class:`~dtcond.config.ComparisonConfig` and where its small results go.

    Experiments subclass it with their own keys (a dataclass field each), and quiet progress bars: their logs
    are files.
    """

    results_dir: Optional[str] = None  # None: results/ beside the experiment's run.py (committed)
    progress: bool = False


@dataclass
class BudgetExperimentConfig(ExperimentConfig):
    """An experiment that compares families at fixed divergence budgets (:func:`dtcond.analysis.frontier.budget_comparisons`)."""

    # Trajectory-KL budgets in nats per episode, declared before the run; None: no budget (each family's best member).
    budgets: List[Optional[float]] = field(default_factory=lambda: [None])

    def __post_init__(self):
        super().__post_init__()
        check_budgets(self.budgets)  # a bad budget fails here, before any training


def hydra_entry(experiment_dir: Path, main, schema: type = ExperimentConfig) -> None:
    """Run ``main(config)`` as a Hydra app on ``experiment_dir/config.yaml``, with dtcond's config groups reachable.

    ``schema`` (a dataclass, stored as ``base_experiment``) types the composed config; ``main`` gets it as that
    dataclass, checked, never a ``DictConfig``.
    """
    import hydra
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA, node=schema)
    # Only the primary config or the command line may extend the search path; the command line
    # needs no file:// path relative to the caller's working directory.
    searchpath = f"hydra.searchpath=[file://{conf_dir()}]"
    message = override_error(experiment_dir, "config", sys.argv[1:], hint=f"see {experiment_dir.name}/config.yaml for the keys",
                             extra=[searchpath], check=check_comparison)
    if message:  # a typo fails in one line, before any work
        print(f"{experiment_dir.name}: error: {message}", file=sys.stderr)
        sys.exit(2)
    if not any(a.startswith("hydra.searchpath") for a in sys.argv[1:]):
        sys.argv.insert(1, searchpath)

    def wrapped(cfg):
        quiet_libraries()
        try:
            main(from_hydra(cfg))
        except DtcondError as exc:
            print(f"{experiment_dir.name}: error: {exc}", file=sys.stderr)
            sys.exit(2)

    hydra.main(version_base=None, config_path=str(experiment_dir), config_name="config")(wrapped)()


def plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def esper_description(overrides) -> str:
    """Every :class:`~dtcond.config.EsperConfig` field a run used (a config, or its defaults with ``overrides``), for a
    results header."""
    from dataclasses import asdict, is_dataclass

    from dtcond.config import EsperConfig, merge

    esper = overrides if is_dataclass(overrides) else merge(EsperConfig, overrides)
    return ", ".join(f"{k}={v}" for k, v in asdict(esper).items())


def add_metric(df: pd.DataFrame, table: pd.DataFrame, name: str, values: pd.Series) -> pd.DataFrame:
    """Add a per-episode quantity to ``table`` as ``name`` and ``name_ci95``, per (policy, target) row, the
    way :func:`dtcond.analysis.report.comparison_table` aggregates: mean and 95% CI over training seeds where a
    row has several (each seed's episodes averaged first), else over episodes."""
    df = df.assign(_value=values.astype(float))
    cells = {key: grouped_mean_ci(part, "_value")[:2] for key, part in df.groupby(["label", "target_spec"], sort=False)}
    per_row = [cells.get((r.label, r.target_spec), (float("nan"), float("nan"))) for r in table.itertuples()]
    return table.assign(**{name: [m for m, _ in per_row], f"{name}_ci95": [ci for _, ci in per_row]})


def add_gap(df: pd.DataFrame, table: pd.DataFrame, name: str = "gap") -> pd.DataFrame:
    """Add observed − true return per row of ``table`` (mean and 95% CI over training seeds)."""
    return add_metric(df, table, name, df["episode_return"].astype(float) - df["true_return"].astype(float))


def rl_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of online-RL policies (every checkpoint), from records or a comparison table."""
    frame = with_policy_columns(frame)
    return frame[frame["policy_kind"].isin([f.kind for f in families.families("rl")])]


def final_checkpoints(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of RL policies at their algorithm's last checkpoint."""
    rl = rl_rows(table)
    if not len(rl):
        return rl
    last = rl.groupby("policy_kind")["train_step"].transform(lambda s: max(int(x) for x in s))
    return rl[rl["train_step"].astype(int) == last]


def numbers(values) -> str:
    """A list of numbers as a results header writes it, each in its shortest form.

    >>> numbers([0.3, 1.0, 100.0])
    '[0.3, 1, 100]'
    """
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def fmt(v: float, ci: float | None = None, digits: int = 1) -> str:
    """A mean and its 95% half-width as a results table writes them; the mean alone without an interval.

    >>> fmt(2.345, 0.5), fmt(2.345, None, 2), fmt(float("nan"))
    ('2.3 ± 0.5', '2.35', '–')
    """
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f} ± {ci:.{digits}f}" if ci is not None and math.isfinite(ci) else f"{v:.{digits}f}"


def fmt_bounded(v: float, lo: float | None, hi: float | None, digits: int = 2) -> str:
    """A bounded quantity (a fraction, a correlation): its mean and the [low, high] of its 95% interval, which
    :func:`dtcond.analysis.statistics.bounded_mean_ci` keeps inside the quantity's range; the mean alone without an interval.

    >>> fmt_bounded(0.7, 0.61, 0.8), fmt_bounded(1.0, None, None)
    ('0.70 [0.61, 0.80]', '1.00')
    """
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and math.isfinite(lo) else f"{v:.{digits}f}"


def fmt_interval(name: str, v: float, ci: float | None, digits: int = 1, n: float | None = None) -> str:
    """A mean and its 95% interval as a results table writes them: the quantity ``name`` (a column or a header) if
    bounded as ``mean [low, high]`` inside its range (:func:`dtcond.analysis.statistics.bounded_interval`), else as
    ``mean ± half`` (:func:`fmt`).

    >>> fmt_interval("spearman", 0.93, 0.12, 2), fmt_interval("R² label vs return", 0.892, 0.157, 3), fmt_interval("slope", 0.85, 0.1, 2)
    ('0.93 [0.81, 1.00]', '0.892 [0.735, 1.000]', '0.85 ± 0.10')
    """
    span = bounded_interval(name, v, ci, n) if v is not None and ci is not None else None
    return fmt_bounded(v, *span, digits) if span else fmt(v, ci, digits)


def replace_tables(markdown: str, tables: list[str]) -> str:
    r"""``markdown`` with its tables (runs of lines starting with "|"), in order, replaced by ``tables``: a page
    re-rendered from its committed results keeps its header and notes.

    >>> replace_tables("# t\n\n| a |\n|---|\n| 1 ± 2 |\n\nnote", ["| a |\n|---|\n| 1 [0, 3] |"])
    '# t\n\n| a |\n|---|\n| 1 [0, 3] |\n\nnote'
    """
    lines, out, i, k = markdown.split("\n"), [], 0, 0
    while i < len(lines):
        if lines[i].startswith("|"):
            if k >= len(tables):
                raise DtcondError(f"the page has more tables than the {len(tables)} given")
            out += tables[k].split("\n")
            k += 1
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            continue
        out.append(lines[i])
        i += 1
    if k != len(tables):
        raise DtcondError(f"the page has {k} tables, not {len(tables)}")
    return "\n".join(out)


DIVERGENCE = {"kl_behavior": "KL(π‖β̂)", "cross_entropy_behavior": "cross-entropy under β̂"}  # nats/step
DIVERGENCE_NOTE = ("Divergence from the data, in nats per step, against a behaviour model β̂ fitted to the data: KL(π‖β̂) is the "
                   "exact KL from the policy's action distribution to β̂'s (– where that distribution is unknown, as for the "
                   "data's own episodes); the cross-entropy is the mean −log β̂(a|s) of the actions taken, which includes "
                   "β̂'s own entropy, so it is an average negative log-likelihood, not a divergence.")
DIGITS_2 = ("kl_behavior", "cross_entropy_behavior", "novel_fraction", "entropy", "distinct_trajectories")
MODE_COLLAPSE = {"entropy": "action entropy", "distinct_trajectories": "distinct traj."}
MODE_COLLAPSE_NOTE = ("Mode collapse: action entropy is the policy's mean per-step entropy in nats (for the data, that of β̂ on the "
                      "data's states); distinct traj. is the share of a row's episodes whose discretized action sequences differ "
                      "(pooled over seeds). RL policies act by sampling, as they were trained and as the DT does.")


def table_markdown(table: pd.DataFrame, columns: dict[str, str]) -> str:
    """A compact markdown table of the comparison: ``columns`` maps column → header; CIs shown where present, a bounded
    quantity's as ``mean [low, high]`` inside its range (:func:`dtcond.analysis.statistics.bounded_interval`), and an ESS below
    :data:`dtcond.analysis.oracles.MIN_ESS` flagged."""
    head = ["policy", "target", "seeds", *columns.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["label"], r["target_spec"], str(r["seeds"])]
        for col in columns:
            digits = 2 if col in DIGITS_2 else 1
            v, ci = r.get(col, float("nan")), r.get(f"{col}_ci95")
            cell = fmt_interval(col, v, ci, digits)
            if col == "ess" and (r.get("ess_ok") is False or (v is not None and math.isfinite(v) and v < MIN_ESS)):
                cell += " (low: not evidence)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_dir(cfg, experiment_dir: Path) -> Path:
    """Where the small result files go: ``cfg.results_dir``, by default the experiment's committed results/."""
    out = Path(cfg.results_dir).expanduser().resolve() if cfg.results_dir else experiment_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_results(out: Path, markdown: str, summary: dict, table: pd.DataFrame | None = None) -> Path:
    """Write summary.md, summary.json (and the comparison as CSV) into ``out``."""
    atomic_write(out / "summary.md", markdown)
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=float))
    if table is not None:
        atomic_write(out / "comparison.csv", table.round(4).to_csv(index=False))
    return out / "summary.md"


LIBRARIES = ("numpy", "gymnasium", "stable-baselines3", "lightning", "minari")  # what else decides a rerun's numbers


def machine_info() -> dict:
    """What a result was measured on: architecture, CPU cores, torch's build and threads, the libraries whose versions
    decide the numbers, Python, dtcond, the load average (a shared machine says so) and the GPU when there is one.
    Benchmarks store it whole. Training is bitwise repeatable for a seed only with the same torch threads and
    library versions: the thread count changes the order of float sums."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    out = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           **{name: installed(name) for name in LIBRARIES}, "python": platform.python_version(), "dtcond": dtcond.__version__,
           "load_average": os.getloadavg()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    return out


def machine() -> str:
    """:func:`machine_info` in the words of a results page.

    >>> machine()                                                                                  # doctest: +ELLIPSIS
    '... CPU cores, torch ... (... thread...), numpy ..., SB3 ..., gymnasium ..., dtcond ...'
    """
    m = machine_info()
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    threads = f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}"
    return (f"{m['machine']}, {m['cpus']} CPU cores{gpu}, torch {m['torch']} ({threads}), numpy {m['numpy']}, "
            f"SB3 {m['stable-baselines3']}, gymnasium {m['gymnasium']}, dtcond {m['dtcond']}")


def ensure_hopper_ppo(ppo_dir: str | Path, budget: int, checkpoints: int = 10) -> Path:
    """PPO on dtcond/HopperCost-v0 whose checkpoints are the Hopper behaviour policies; resumes, or no-ops when done."""
    ppo_dir = Path(ppo_dir).expanduser().resolve()
    random_id = "dtcond/hopper_cost/random-v0"
    if not (datasets_root() / random_id).exists():  # the baseline reads the env and spaces from a dataset
        from dtcond.behavior.mixture import Component

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
            steps = int(item["policy"][4:])
            path = ppo_dir / "checkpoints" / f"ppo_{steps}_steps.zip"
            if not path.exists():
                raise DtcondError(f"no PPO checkpoint {path}; the run saves every budget/checkpoints steps")
            item["policy"] = f"sb3:{path}"
            item.setdefault("name", f"ppo@{steps}+{item.get('noise', 0):g}")
        out.append(item)
    return out


def hopper_behavior(cfg, items: list[dict], dataset_id: str) -> list[dict]:
    """``items`` with ``ppo:<steps>`` turned into checkpoints of the Hopper behaviour PPO run (trained first
    if missing), only when ``dataset_id`` has yet to be collected: the pipeline reads the mixture only then."""
    if (datasets_root() / dataset_id).exists() or not any(str(i["policy"]).startswith("ppo:") for i in map(dict, items)):
        return items
    return resolve_behavior([dict(i) for i in items], ensure_hopper_ppo(cfg.hopper_ppo_dir, int(cfg.hopper_ppo_budget)))
