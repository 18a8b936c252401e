"""The comparison pipeline: one dataset, DT vs BC, %BC and online RL, scored on shared env seeds.

:func:`run_comparison` is the one implementation behind ``dtcond demo``, the experiments and the
notebooks. Given a :class:`ComparisonSpec` it

1. collects the dataset from the behaviour mixture unless it exists;
2. for each training seed trains a DT, BC (optional), %BC at each top fraction, the RL
   baseline (every checkpoint kept) and KL-regularized PPO at each β of ``rl_kl_coefs``;
3. rolls every policy out on the same env seeds (``eval_seed``): the DT at each target, the others
   once, into ``work_dir/episodes.jsonl``, with the data's own episodes as rows of their own and,
   with ``roaming``, how far each episode strayed from the data;
4. writes the report of exactly this run's episodes (``work_dir/report/``: the records, the
   calibration and comparison markdown, the calibration and frontier plots).

Everything resumes: training continues from its last checkpoint (or finds it done), episodes
already in the table are not run again, so a rerun does only what is missing. Layout of
``work_dir``::

    seed<s>/dt, seed<s>/bc, seed<s>/pct_bc<q>, seed<s>/<algo>   training runs and policy bundles
    seed<s>/dt_<method>                                          a DT on relabelled returns (``relabel``)
    seed<s>/ppo_kl<β>                                            KL-regularized PPO, one run per β
    seed<s>/ppo_kl_bc<β>                                         KL-regularized PPO toward the seed's BC policy, per β
    seed<s>/ppo_om<λ>                                            occupancy-regularized PPO (ORPO), one run per λ
    episodes.jsonl                                               every episode rolled out here
    report/                                                      this comparison's records and report
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from dtcond.errors import DtcondError

__all__ = ["ComparisonSpec", "ComparisonResult", "TrainedPolicy", "run_comparison", "resolve_targets", "quiet_libraries"]

OFFLINE_KINDS = ("data", "behavior", "oracle", "dt", "bc", "pct_bc")


@dataclass
class ComparisonSpec:
    """What to compare, on which data, at what budget. Plain values only (the CLI and Hydra configs map onto it).

    Attributes:
        env_id, env_kwargs, max_episode_steps: the env the dataset is collected in.
        dataset_id: the local Minari dataset; collected when missing.
        behavior: the behaviour mixture (:class:`dtcond.behavior.Component` or ``{policy, noise, weight}``
            dicts); read only when the dataset has to be collected.
        work_dir: where training runs, the episode table and the report go.
        episodes, data_seed: episodes to collect and the collection seed.
        seeds: training seeds; each trains its own DT, BC, %BC and RL run.
        model, data, optim, trainer, checkpoint_every: passed to :func:`dtcond.train` (``trainer`` must
            set ``max_steps``); ``checkpoint_every`` None saves at the end only.
        bc, pct_bc, bc_steps: train plain BC; %BC at these top fractions; their steps (None: the DT's).
        relabel, esper: also train a DT on relabelled returns per method (``["esper"]``: ESPER's expected-return
            labels, :mod:`dtcond.relabel`), with these :class:`~dtcond.config.EsperConfig` fields; labelled
            ``dt:esper`` in the tables, rolled out at the same target specs, resolved against its labels.
        rl_algo, rl_budget, rl_checkpoints, rl_hyperparams: :func:`dtcond.train_baseline` (algo None: no RL).
        rl_kl_coefs: KL-regularized PPO, one run per β (same budget; its final policy is rolled out).
        rl_kl_bc_coefs: KL-regularized PPO toward the seed's BC policy (history-conditioned) instead of the Markov β̂,
            one run per β (needs ``bc``): the reference as a choice.
        rl_om_coefs: occupancy-measure-regularized PPO (ORPO), one run per λ (same budget; final policy rolled out).
        rl_bc_init_steps: behaviour-cloning steps PPO-KL and occupancy-regularized PPO start from (0: from scratch).
        rl_greedy: RL policies act by their distribution's mode; False (default) samples, as they
            were trained and as the DT does, so entropies and KLs compare like with like.
        targets: the DT's targets: spec strings (``"q0.9"``, ``"x1.5"``, ``"quantilizer:0.1"``), numbers,
            or sampler dicts (``{"name": "grid", "n": 7}``, ``{"name": "quantilizer", "qs": [0.1]}``).
        eval_episodes, eval_seed: episodes per policy and target, and the env seeds every policy meets.
        roaming: score each episode's divergence from the data (fits a behaviour model once, and uses the
            data's exact likelihood where the dataset recorded its behaviour mixture).
        oracles: oracle references from the behaviour mixture itself (:mod:`dtcond.oracles`), per training
            seed one pool of behaviour episodes and the oracles resampled from it: ``{"pool": 500, "draws": 100,
            "quantilizer": [q...], "plan_quantilizer": [q...], "best_of_n": [n...], "posterior": [β...]}``;
            empty: none. Needs ``roaming`` and a dataset that recorded its behaviour.
        report: write the markdown report and plots.
        name: run id prefix in the episode table.
        fresh: remake the dataset and everything under ``work_dir`` the pipeline made.
        progress: progress bars for collection, training, RL and evaluation.

    >>> spec = ComparisonSpec("CartPole-v1", "doc/cartpole/mixture-v0", ["random"], "runs/compare",
    ...                       trainer={"max_steps": 200}, pct_bc=[0.1], rl_budget=10_000)
    >>> spec.seeds, spec.eval_seed
    ([0], 1000)
    """

    env_id: str
    dataset_id: str
    behavior: list
    work_dir: str | Path
    episodes: int = 300
    env_kwargs: dict = field(default_factory=dict)
    max_episode_steps: int | None = None
    data_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    model: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    trainer: dict = field(default_factory=lambda: {"max_steps": 1000})
    checkpoint_every: int | None = None
    bc: bool = True
    pct_bc: list[float] = field(default_factory=list)
    bc_steps: int | None = None
    relabel: list[str] = field(default_factory=list)
    esper: dict = field(default_factory=dict)
    rl_algo: str | None = "ppo"
    rl_budget: int | None = None
    rl_checkpoints: int = 4
    rl_hyperparams: dict | None = None
    rl_kl_coefs: list[float] = field(default_factory=list)
    rl_kl_bc_coefs: list[float] = field(default_factory=list)
    rl_om_coefs: list[float] = field(default_factory=list)
    rl_bc_init_steps: int = 2000
    rl_greedy: bool = False
    targets: list = field(default_factory=lambda: [{"name": "grid"}, {"name": "quantilizer", "qs": [0.5, 0.25, 0.1]}])
    eval_episodes: int = 20
    eval_seed: int = 1000
    roaming: bool = True
    oracles: dict = field(default_factory=dict)
    report: bool = True
    name: str = "comparison"
    fresh: bool = False
    progress: bool = False

    def __post_init__(self):
        from dtcond.baselines import ALGOS
        from dtcond.collection import check_dataset_id
        from dtcond.targets import parse

        def positive_int(name, value, allow_none=False):
            if value is None and allow_none:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value < 1:
                raise DtcondError(f"{name} must be a positive integer, got {value!r}")
            return int(value)

        check_dataset_id(self.dataset_id)
        self.work_dir = Path(self.work_dir).expanduser()
        self.episodes = positive_int("episodes", self.episodes)
        self.eval_episodes = positive_int("eval_episodes", self.eval_episodes)
        self.checkpoint_every = positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        self.bc_steps = positive_int("bc_steps", self.bc_steps, allow_none=True)
        self.trainer = dict(self.trainer or {})
        self.trainer["max_steps"] = positive_int("trainer.max_steps", self.trainer.get("max_steps"))
        self.seeds = [int(s) for s in (self.seeds or [])]
        if not self.seeds:
            raise DtcondError("seeds is empty: give at least one training seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise DtcondError(f"seeds must be distinct, got {self.seeds}")
        self.pct_bc = [float(q) for q in (self.pct_bc or [])]
        for q in self.pct_bc:
            if not 0 < q <= 1:
                raise DtcondError(f"pct_bc top fractions must be in (0, 1], got {q}")
        from dtcond.config import RELABELS, EsperConfig, merge

        self.relabel = [str(m) for m in (self.relabel or [])]
        bad = [m for m in self.relabel if m not in RELABELS or m == "none"]
        if bad or len(set(self.relabel)) != len(self.relabel):
            raise DtcondError(f"relabel must list distinct methods from {', '.join(m for m in RELABELS if m != 'none')}, got {self.relabel}")
        self.esper = dict(self.esper or {})
        merge(EsperConfig, self.esper)  # a typo or a bad value fails here, before any training
        if self.rl_algo is not None:
            if self.rl_algo not in ALGOS:
                raise DtcondError(f"unknown rl_algo {self.rl_algo!r}; choose one of {', '.join(ALGOS)} (or None for no RL)")
            self.rl_budget = positive_int("rl_budget", self.rl_budget, allow_none=True)
            self.rl_checkpoints = positive_int("rl_checkpoints", self.rl_checkpoints)
        for key, what in (("rl_kl_coefs", "KL-regularized PPO; β = 0 is plain PPO"), ("rl_kl_bc_coefs", "KL-regularized PPO; β = 0 is plain PPO"),
                          ("rl_om_coefs", "occupancy-regularized PPO; λ = 0 is plain PPO")):
            coefs = [float(b) for b in (getattr(self, key) or [])]
            setattr(self, key, coefs)
            if not coefs:
                continue
            if self.rl_algo != "ppo":
                raise DtcondError(f"{key} ({what.split(';')[0]}) needs rl_algo='ppo', got {self.rl_algo!r}")
            bad = [b for b in coefs if not (b > 0 and b < float("inf"))]
            if bad:
                raise DtcondError(f"{key} must be finite numbers > 0 ({what}), got {bad}")
            if len(set(coefs)) != len(coefs):
                raise DtcondError(f"{key} must be distinct, got {coefs}")
        if self.rl_kl_bc_coefs and not self.bc:
            raise DtcondError("rl_kl_bc_coefs (PPO-KL toward the BC policy) needs bc=true: each seed's BC run is the reference")
        if isinstance(self.rl_bc_init_steps, bool) or not isinstance(self.rl_bc_init_steps, int) or self.rl_bc_init_steps < 0:
            raise DtcondError(f"rl_bc_init_steps must be an integer >= 0, got {self.rl_bc_init_steps!r}")
        self.oracles = check_oracles(self.oracles)
        if self.oracles and not self.roaming:
            raise DtcondError("oracles need roaming=true: their divergence is scored by the data's likelihood")
        if not self.targets:
            raise DtcondError("targets is empty: the DT needs at least one target, e.g. ['q0.5', 'q0.9', 'x1.5']")
        for t in self.targets:
            if isinstance(t, dict):
                if not ({"name", "target", "targets"} & set(t)):
                    raise DtcondError(f"target sampler {t!r} needs a name (grid, quantilizer), target or targets")
            else:
                parse(t)  # a typo fails here, before any training


ORACLE_DEFAULTS = {"pool": 500, "draws": 100}
ORACLE_POOL_SEED = 100_000  # pools roll out on env seeds of their own: eval_seed + this + training seed


def check_oracles(oracles: dict | None) -> dict:
    """The oracle settings with their defaults, or a one-line error naming what is wrong.

    >>> check_oracles({"quantilizer": [0.5, 0.1]})["pool"]
    500
    >>> check_oracles({})
    {}
    """
    from dtcond.oracles import FAMILIES

    oracles = dict(oracles or {})
    if not oracles:
        return {}
    unknown = set(oracles) - set(FAMILIES) - set(ORACLE_DEFAULTS)
    if unknown:
        raise DtcondError(f"oracles has unknown keys {sorted(unknown)}; use {', '.join(FAMILIES + tuple(ORACLE_DEFAULTS))}")
    out = {**ORACLE_DEFAULTS, **oracles}
    for key in ORACLE_DEFAULTS:
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise DtcondError(f"oracles.{key} must be an integer >= 2, got {value!r}")
    for family in FAMILIES:
        values = [float(v) for v in out.get(family) or []]
        bad = [v for v in values if not (v > 0 and math.isfinite(v)) or (family.endswith("quantilizer") and v > 1)
               or (family == "best_of_n" and (v < 1 or not v.is_integer()))]
        if bad:
            raise DtcondError(f"oracles.{family} has invalid values {bad} (quantilizers: q in (0, 1]; best_of_n: integers >= 1; "
                              "posterior: β > 0)")
        out[family] = values
    return out


@dataclass
class TrainedPolicy:
    """One trained policy of a comparison: its training seed, label (``dt``, ``pct_bc:0.1``, ``ppo@25000``) and bundle."""

    seed: int
    label: str
    kind: str
    bundle: Path
    fingerprint: str
    train_seconds: float  # wall time of every call that trained it, summed (see _timed)


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` made.

    Attributes:
        records: one row per episode of this comparison (the data's own episodes included), with
            ``algo``, ``train_step`` and ``train_seed`` columns.
        table: :func:`dtcond.report.comparison_table` of the records (means ± 95% CI over seeds).
        metrics: calibration metrics per DT fingerprint (:func:`dtcond.stats.calibration_metrics`).
        policies: every trained policy.
        files: the written files by name (``records``, ``calibration``, ``calibration_plot``,
            ``comparison``, ``frontier``), those that exist.
        seconds: wall time of the call.
    """

    spec: ComparisonSpec
    records: object
    table: object
    metrics: dict
    policies: list[TrainedPolicy]
    files: dict[str, Path]
    seconds: float

    def summary(self) -> str:
        """One screen: a line per policy and target (return, true return and cost where the env reports
        them, divergence from the data), the DTs' calibration, and where the report is."""
        import math

        import numpy as np

        t = self.table
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
            vals = [(m.get(split) or {}).get(key) if split else m.get(key) for m in self.metrics.values()]
            vals = np.array([v for v in vals if v is not None], dtype=float)
            vals = vals[np.isfinite(vals)]
            return f"{vals.mean():.3g}" if len(vals) else "–"

        if self.metrics:
            lines.append(f"  DT calibration, in-distribution targets, mean over {len(self.metrics)} seed(s): normalized MAE "
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

            from dtcond.baselines import ALGOS

            kinds = t["kind"]
            parts = [("conditioned (DT, BC, %BC)", best(t[kinds.isin(["dt", "pct_bc", "bc"])])),
                     ("KL-regularized RL", best(t[kinds.astype(str).str.endswith("_kl")])),
                     ("occupancy-regularized RL", best(t[kinds.astype(str).str.endswith("_om")])),
                     ("plain RL", best(t[kinds.isin(ALGOS)]))]  # ALGOS: the unregularized kinds
            lines.append("  highest true return: " + "; ".join(f"{name}: {b}" for name, b in parts if b))
        for key in ("comparison", "calibration", "calibration_plot", "frontier"):
            if key in self.files:
                lines.append(f"  {key.replace('_', ' '):<16} {self.files[key]}")
        return "\n".join(lines)


def quiet_libraries() -> None:
    """Keep Lightning's device banners and tips and Minari's metadata nudges out of the progress lines."""
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO; quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", module="minari")


def resolve_targets(targets: list, stats) -> list:
    """The DT's target specs: spec strings and numbers parsed, sampler dicts expanded against ``stats``.

    >>> [str(s) for s in resolve_targets(["q0.9", 3000, {"name": "quantilizer", "qs": [0.1]}, "q0.9"], stats=None)]
    ['q0.9', '3000', 'quantilizer:0.1']
    """
    from dtcond.targets import from_sampler, parse

    specs = []
    for t in targets:
        specs += from_sampler(dict(t), stats) if isinstance(t, dict) else [parse(t)]
    return list(dict.fromkeys(specs))  # a target asked for twice is rolled out once


def run_comparison(spec: ComparisonSpec) -> ComparisonResult:
    """Collect (if missing) → train DT, BC, %BC, RL per seed → roll out on shared env seeds → report.

    See the module doc for the steps and the layout of ``spec.work_dir``. Prints one short line per
    step; reruns do only what is missing.

    >>> spec = ComparisonSpec("CartPole-v1", "dtcond/cartpole/mixture-v0", ["cartpole_balance", "random"], "runs/compare",
    ...                       model={"context_len": 10}, trainer={"max_steps": 20}, pct_bc=[0.25], rl_budget=256,
    ...                       rl_hyperparams={"n_envs": 2, "n_steps": 128, "n_epochs": 1}, targets=["q0.5", "q0.9"],
    ...                       eval_episodes=2, roaming=False, report=False)   # a tiny run on the existing dataset
    >>> result = run_comparison(spec)                                                       # doctest: +ELLIPSIS
    [1/3] dataset dtcond/cartpole/mixture-v0...
    >>> sorted(set(result.records["policy_kind"]))
    ['bc', 'data', 'dt', 'pct_bc', 'ppo']
    """
    import pandas as pd

    from dtcond.checkpoints import load_policy
    from dtcond.data import load
    from dtcond.evaluation import evaluate
    from dtcond.results import ResultsStore
    from dtcond.roaming import RoamingScorer, dataset_records
    from dtcond.stats import with_policy_columns

    if not isinstance(spec, ComparisonSpec):
        raise DtcondError(f"run_comparison takes a ComparisonSpec, got {type(spec).__name__}")
    quiet_libraries()
    start = time.perf_counter()
    work = spec.work_dir.resolve()
    if spec.fresh:
        _remove_outputs(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DtcondError(f"cannot create work_dir {work}: {exc.strerror}") from None
    store = ResultsStore(work / "episodes.jsonl")  # fails now, not after training, if unwritable
    steps = 3 + spec.report

    print(f"[1/{steps}] dataset {spec.dataset_id}")
    _ensure_dataset(spec)
    data = load(spec.dataset_id)
    targets = resolve_targets(spec.targets, data.stats)
    # The data's own episodes are rows of the table too, scored like every policy's.
    scorer = RoamingScorer.for_data(data) if spec.roaming else None
    records = dataset_records(data, scorer)
    store.append(records)

    offline = ["DT"] + [f"DT({m})" for m in spec.relabel] + (["BC"] if spec.bc else []) + [f"%BC({q:g})" for q in spec.pct_bc]
    rl_names = (([spec.rl_algo] if spec.rl_algo else []) + [f"PPO-KL(β={b:g})" for b in spec.rl_kl_coefs]
                + [f"PPO-KL-BC(β={b:g})" for b in spec.rl_kl_bc_coefs] + [f"PPO-OM(λ={c:g})" for c in spec.rl_om_coefs])
    print(f"[2/{steps}] per seed {spec.seeds}: train {', '.join(offline + rl_names)}"
          + f"; roll out on env seeds from {spec.eval_seed}: DT at {len(targets)} targets, {spec.eval_episodes} episodes each")
    known = store.keys()
    policies: list[TrainedPolicy] = []
    for seed in spec.seeds:
        trained = _train_seed(spec, data.stats, seed, work / f"seed{seed}")
        t0, fresh = time.perf_counter(), 0
        for bundle, seconds in trained:
            policy = load_policy(bundle)
            if policy.kind not in OFFLINE_KINDS:
                policy.greedy = spec.rl_greedy
            recs = evaluate(policy, targets if policy.kind == "dt" else None, episodes=spec.eval_episodes, seed=spec.eval_seed,
                            results=store, run_id=f"{spec.name}_seed{seed}", progress=spec.progress, scorer=scorer)
            fresh += sum(r["key"] not in known for r in recs)
            records += [{**r, "train_seed": seed} for r in recs]
            policies.append(TrainedPolicy(seed, policy.label, policy.kind, Path(bundle), policy.fingerprint, seconds))
        print(f"  seed {seed}: rolled out {len(trained)} policies, {fresh} new episodes ({time.perf_counter() - t0:.0f}s)")

    if spec.oracles:
        records += _oracle_records(spec, data, scorer, store)

    # Checkpoints with identical weights (RL saved before its first update) share a fingerprint, so
    # their episodes are the same records: keep each once.
    unique: dict[str, dict] = {}
    for r in records:
        unique.setdefault(r["key"], r)
    records = list(unique.values())
    df = with_policy_columns(pd.DataFrame(records))
    df["label"] = df["label"].fillna(df["policy_kind"])
    report_dir = work / "report"
    print(f"[3/{steps}] this comparison: {len(df)} episodes ({int((df['policy_kind'] == 'data').sum())} of them the data's) "
          f"-> {report_dir / 'results.jsonl'}")
    report_dir.mkdir(parents=True, exist_ok=True)
    # The report covers exactly this run's episodes (episodes.jsonl may also hold those of weights a
    # changed budget has since replaced), saved beside it so `dtcond report` can remake it.
    snapshot = report_dir / "results.jsonl"
    snapshot.unlink(missing_ok=True)
    ResultsStore(snapshot).append(records)
    files: dict[str, Path] = {"records": snapshot}
    metrics, table = {}, None
    if spec.report:
        from dtcond.report import write_report

        print(f"[4/{steps}] report")
        report = write_report(snapshot, data_returns={spec.dataset_id: list(data.stats.episode_returns)})
        metrics = report["metrics"]
        out = report["outputs"][spec.dataset_id]
        table = out.get("comparison_table")
        files.update({"calibration": Path(out["markdown"]), "calibration_plot": Path(out["plot"])})
        if out.get("comparison"):
            files["comparison"] = Path(out["comparison"])
        if out.get("frontier"):
            files["frontier"] = Path(out["frontier"])
    else:
        from dtcond.stats import calibration_metrics

        returns = list(data.stats.episode_returns)
        metrics = {fp: calibration_metrics(part, returns) for fp, part in df[df["policy_kind"] == "dt"].groupby("fingerprint")}
    if table is None:
        from dtcond.report import comparison_table

        table = comparison_table(df)
    return ComparisonResult(spec, df, table, metrics, policies, files, time.perf_counter() - start)


def _oracle_records(spec: ComparisonSpec, data, scorer, store) -> list[dict]:
    from dtcond.oracles import run_oracles

    if scorer is None or scorer.likelihood is None:
        print(f"  oracles skipped: dataset {spec.dataset_id} recorded no behaviour mixture, so p_data is unknown")
        return []
    t0 = time.perf_counter()
    out = run_oracles(data, scorer, spec.oracles, spec.seeds, pool_seed=spec.eval_seed + ORACLE_POOL_SEED, store=store, name=spec.name)
    print(f"  oracles: {len({r['target_spec'] for r in out if r['policy_kind'] == 'oracle'})} per seed from pools of "
          f"{spec.oracles['pool']} behaviour episodes ({time.perf_counter() - t0:.0f}s)")
    return out


def _remove_outputs(work: Path) -> None:
    """What ``fresh`` remakes: the training runs, the episode table and the report, nothing else in ``work``."""
    for path in [*work.glob("seed*"), work / "report"]:
        if path.is_dir():
            shutil.rmtree(path)
    (work / "episodes.jsonl").unlink(missing_ok=True)


def _ensure_dataset(spec: ComparisonSpec) -> None:
    from dtcond.behavior import components_from_config
    from dtcond.collection import collect
    from dtcond.data import datasets_root

    if (datasets_root() / spec.dataset_id).exists() and not spec.fresh:
        print(f"  exists, reused ({datasets_root() / spec.dataset_id})")
        return
    summary = collect(spec.env_id, components_from_config(list(spec.behavior)), spec.episodes, spec.dataset_id,
                      seed=spec.data_seed, env_kwargs=dict(spec.env_kwargs or {}), max_episode_steps=spec.max_episode_steps,
                      overwrite=spec.fresh, progress=spec.progress)
    print("  " + summary.format().replace("\n", "\n  "))


def _train_seed(spec: ComparisonSpec, stats, seed: int, out: Path) -> list[tuple[Path, float]]:
    """Train (or resume, or find done) one seed's policies: (bundle, training seconds) pairs, RL checkpoints in
    training order (the RL run's time is on its last)."""
    from dtcond.baselines import train_baseline
    from dtcond.training import train

    trainer = {"enable_progress_bar": spec.progress, "enable_model_summary": False, **spec.trainer}
    steps = trainer["max_steps"]
    bc_steps = spec.bc_steps or steps
    common = dict(model=dict(spec.model), data=dict(spec.data), optim=dict(spec.optim), seed=seed)
    runs = [("dt", dict(trainer=trainer, checkpoint_every=spec.checkpoint_every or steps))]
    runs += [(f"dt_{m}", dict(trainer=trainer, checkpoint_every=spec.checkpoint_every or steps, relabel=m, esper=dict(spec.esper)))
             for m in spec.relabel]
    bc = dict(trainer={**trainer, "max_steps": bc_steps}, checkpoint_every=min(spec.checkpoint_every or bc_steps, bc_steps),
              condition_on_return=False)
    if spec.bc:
        runs.append(("bc", bc))
    runs += [(f"pct_bc{q:g}", {**bc, "top_fraction": q}) for q in spec.pct_bc]
    out_bundles = []
    for name, kwargs in runs:
        run, seconds = _timed(out / name, lambda: train(spec.dataset_id, out / name, **common, **kwargs))
        val = f"{run.val_loss:.4f}" if run.val_loss is not None else "n/a"
        print(f"  seed {seed} {name}: {run.global_step} steps, val/loss {val} ({seconds:.0f}s)")
        out_bundles.append((run.bundle, seconds))
    if spec.rl_algo:
        rl, seconds = _timed(out / spec.rl_algo, lambda: train_baseline(
            stats, spec.rl_algo, out / spec.rl_algo, budget=spec.rl_budget, checkpoints=spec.rl_checkpoints,
            hyperparams=spec.rl_hyperparams, seed=seed, progress=spec.progress))
        print(f"  seed {seed} {spec.rl_algo}: {rl.timesteps} env steps, {len(rl.bundles)} checkpoints ({seconds:.0f}s)")
        out_bundles += [(b, 0.0) for b in rl.bundles[:-1]] + [(rl.bundles[-1], seconds)]
    # Regularized PPO, one run per parameter, each rolled out at its final policy: (run name, symbol, parameter,
    # train_baseline's arguments). PPO-KL toward the BC policy uses this seed's BC run, trained above.
    regularized = ([("ppo_kl", "β", b, dict(kl_coef=b)) for b in spec.rl_kl_coefs]
                   + [("ppo_kl_bc", "β", b, dict(kl_coef=b, kl_reference=out / "bc" / "policy")) for b in spec.rl_kl_bc_coefs]
                   + [("ppo_om", "λ", c, dict(om_coef=c)) for c in spec.rl_om_coefs])
    for name, symbol, param, kwargs in regularized:
        run_dir = out / f"{name}{param:g}"
        rl, seconds = _timed(run_dir, lambda: train_baseline(
            stats, "ppo", run_dir, budget=spec.rl_budget, checkpoints=1, hyperparams=spec.rl_hyperparams, seed=seed,
            progress=spec.progress, bc_init_steps=spec.rl_bc_init_steps, **kwargs))
        print(f"  seed {seed} {name} {symbol}={param:g}: {rl.timesteps} env steps ({seconds:.0f}s)")
        out_bundles.append((rl.bundles[-1], seconds))
    return out_bundles


TRAIN_SECONDS = "train_seconds.json"


def _timed(run_dir: Path, call):
    """``call()`` (a training call that writes ``run_dir``) and the wall seconds spent training that run dir.

    Each call adds its own time to ``run_dir/checkpoints/train_seconds.json``, so a rerun that finds the
    run done reports what training it took (plus the second or so of finding it done), not about 0, and
    a run resumed after a kill sums its calls (less the killed call's time, which nothing recorded).
    The record lives with the checkpoints it describes: remove them and training starts again at 0 s.
    """
    import json

    from dtcond.fileio import atomic_write

    record = Path(run_dir) / "checkpoints" / TRAIN_SECONDS
    try:
        before = float(json.loads(record.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet (or unreadable): this call's time alone
        before = 0.0
    t0 = time.perf_counter()
    result = call()
    total = before + time.perf_counter() - t0
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(record, json.dumps({"seconds": total}))
    return result, total
