"""The comparison pipeline: one dataset, DT vs BC, %BC and online RL, scored on shared env seeds.

:func:`run_comparison` is the one implementation behind ``dtcond demo``, the experiments and the
notebooks. Given a :class:`~dtcond.config.ComparisonConfig` it

1. collects the dataset from the behaviour mixture unless it exists;
2. for each training seed trains a DT, BC (optional), %BC at each top fraction, the RL
   baseline (every checkpoint kept) and each regularized family of ``rl.regularized`` at each of its
   parameters (:mod:`dtcond.families`);
3. rolls every policy out on the same env seeds (``eval.seed``): the DT at each target, the others
   once, into ``work_dir/episodes.jsonl``, with the data's own episodes as rows of their own and,
   with ``eval.roaming``, how far each episode strayed from the data;
4. writes the report of exactly this run's episodes (``work_dir/report/``: the records, the
   calibration and comparison markdown, the calibration and frontier plots).

Everything resumes: training continues from its last checkpoint (or finds it done), episodes
already in the table are not run again, so a rerun does only what is missing. Layout of
``work_dir``::

    seed<s>/dt, seed<s>/bc, seed<s>/pct_bc<q>, seed<s>/<algo>   training runs and policy bundles
    seed<s>/dt_<method>                                          a DT on relabelled returns (``relabel``)
    seed<s>/<kind><param>                                        a regularized family, one run per parameter
                                                                 (ppo_kl1: PPO-KL at β = 1, ppo_om3: ORPO at λ = 3)
    seed<s>/rlft_kl<β>, seed<s>/rlft_stop, seed<s>/rlft_prior_pool.json   RL fine-tuning of the BC transformer
    episodes.jsonl                                               every episode rolled out here
    report/                                                      this comparison's records and report

Layer 12: may import common, envs, datasets, targets, config, rollout, behavior, dt, rl, families, analysis (the
layers below it; the package docstring lists them).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dtcond import families
from dtcond.analysis.oracles import ORACLE_POOL_SEED, run_oracles
from dtcond.analysis.report import comparison_table, console_summary, write_report
from dtcond.analysis.roaming import RoamingScorer, dataset_records
from dtcond.analysis.statistics import calibration_metrics, with_policy_columns
from dtcond.behavior.collection import ensure_dataset
from dtcond.common.console import quiet_libraries
from dtcond.common.errors import DtcondError
from dtcond.common.fileio import atomic_write
from dtcond.config import ComparisonConfig, DatasetConfig, TrainConfig
from dtcond.datasets.loading import load
from dtcond.datasets.storage import datasets_root
from dtcond.dt.training import train
from dtcond.families import load_policy
from dtcond.rl.baselines import train_baseline
from dtcond.rl.finetune import KL_KIND, STOP_KIND, PriorScorer, finetune, prior_pool
from dtcond.rollout.evaluation import evaluate
from dtcond.rollout.records import ResultsStore
from dtcond.targets import from_sampler, parse

__all__ = ["ComparisonResult", "TrainedPolicy", "run_comparison", "resolve_targets"]



@dataclass
class TrainedPolicy:
    """One trained policy of a comparison: its training seed, label (``dt``, ``pct_bc:0.1``, ``ppo@25000``) and bundle."""

    seed: int
    label: str
    kind: str
    bundle: Path
    fingerprint: str
    train_seconds: float  # wall time of every call that trained it, summed (see timed_run)


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` made.

    Attributes:
        records: one row per episode of this comparison (the data's own episodes included), with
            ``algo``, ``train_step`` and ``train_seed`` columns.
        table: :func:`dtcond.analysis.report.comparison_table` of the records (means ± 95% CI over seeds).
        metrics: calibration metrics per DT fingerprint (:func:`dtcond.analysis.statistics.calibration_metrics`).
        policies: every trained policy.
        files: the written files by name (``records``, ``calibration``, ``calibration_plot``,
            ``comparison``, ``frontier``), those that exist.
        seconds: wall time of the call.
    """

    config: ComparisonConfig
    records: object
    table: object
    metrics: dict
    policies: list[TrainedPolicy]
    files: dict[str, Path]
    seconds: float

    def summary(self) -> str:
        """One screen: a line per policy and target (return, true return and cost where the env reports
        them, divergence from the data), the DTs' calibration, and where the report is
        (:func:`dtcond.analysis.report.console_summary`)."""
        return console_summary(self.table, self.metrics, self.files)


def resolve_targets(targets: list, stats) -> list:
    """The DT's target specs: spec strings and numbers parsed, sampler dicts expanded against ``stats``.

    >>> [str(s) for s in resolve_targets(["q0.9", 3000, {"name": "quantilizer", "qs": [0.1]}, "q0.9"], stats=None)]
    ['q0.9', '3000', 'quantilizer:0.1']
    """
    specs = []
    for t in targets:
        specs += from_sampler(dict(t), stats) if isinstance(t, dict) else [parse(t)]
    return list(dict.fromkeys(specs))  # a target asked for twice is rolled out once


def run_comparison(config: ComparisonConfig) -> ComparisonResult:
    """Collect (if missing) → train DT, BC, %BC, RL per seed → roll out on shared env seeds → report.

    See the module doc for the steps and the layout of ``config.work_dir``. Prints one short line per
    step; reruns do only what is missing.

    >>> from dtcond.config import ComparisonConfig, merge
    >>> config = merge(ComparisonConfig, {                        # a tiny run on the existing dataset
    ...     "env": {"name": "cartpole", "id": "CartPole-v1", "behavior": ["cartpole_balance", "random"]},
    ...     "work_dir": "runs/compare", "model": {"context_len": 10}, "trainer": {"max_steps": 20}, "progress": False,
    ...     "bc": {"top_fractions": [0.25]}, "targets": ["q0.5", "q0.9"], "eval": {"episodes": 2, "roaming": False},
    ...     "rl": {"budget": 256, "hyperparams": {"n_envs": 2, "n_steps": 128, "n_epochs": 1}}, "report": False})
    >>> result = run_comparison(config)                                                       # doctest: +ELLIPSIS
    [1/3] dataset dtcond/cartpole/mixture-v0...
    >>> sorted(set(result.records["policy_kind"]))
    ['bc', 'data', 'dt', 'pct_bc', 'ppo']
    """


    if not isinstance(config, ComparisonConfig):
        raise DtcondError(f"run_comparison takes a dtcond.ComparisonConfig (dtcond.merge(ComparisonConfig, {{...}}) builds one "
                          f"from a dict), got {type(config).__name__}")
    regularized = regularized_runs(config)  # an unknown family or a bad parameter fails before any work
    quiet_libraries()
    start = time.perf_counter()
    work = Path(config.work_dir).expanduser().resolve()
    if config.fresh:
        _remove_outputs(work)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DtcondError(f"cannot create work_dir {work}: {exc.strerror}") from None
    store = ResultsStore(work / "episodes.jsonl")  # fails now, not after training, if unwritable
    steps = 3 + config.report
    dataset_id = config.dataset

    print(f"[1/{steps}] dataset {dataset_id}")
    _ensure_dataset(config)
    data = load(dataset_id)
    targets = resolve_targets(config.targets, data.stats)
    # The data's own episodes are rows of the table too, scored like every policy's.
    scorer = RoamingScorer.for_data(data) if config.eval.roaming else None
    records = dataset_records(data, scorer)
    store.append(records)

    offline = (["DT"] + [f"DT({m})" for m in config.relabel] + (["BC"] if config.bc.enabled else [])
               + [f"%BC({q:g})" for q in config.bc.top_fractions])
    rl_names = ([config.rl.algo] if config.rl.algo else []) + [f"{f.name}({f.symbol}={p:g})" for f, p in regularized]
    rl_names += [f"RLFT-KL(β={b:g})" for b in config.finetune.betas]
    rl_names += [f"RLFT-stop(KL≤{', '.join(f'{t:g}' for t in config.finetune.thresholds)})"] if config.finetune.thresholds else []
    print(f"[2/{steps}] per seed {list(config.seeds)}: train {', '.join(offline + rl_names)}"
          + f"; roll out on env seeds from {config.eval.seed}: DT at {len(targets)} targets, {config.eval.episodes} episodes each")
    known = store.keys()
    policies: list[TrainedPolicy] = []
    for seed in config.seeds:
        trained = _train_seed(config, regularized, data.stats, seed, work / f"seed{seed}")
        t0, fresh = time.perf_counter(), 0
        for bundle, seconds in trained:
            policy = load_policy(bundle)
            if families.get(policy.kind).role in ("rl", "regularized"):
                policy.greedy = config.rl.greedy
            # an RL-fine-tuned transformer's episodes also carry their exact log-ratio to the BC model it started from
            scores = PriorScorer(policy, work / f"seed{seed}" / "bc" / "policy", scorer) if policy.kind in (KL_KIND, STOP_KIND) else scorer
            recs = evaluate(policy, targets if policy.kind == "dt" else None, episodes=config.eval.episodes, seed=config.eval.seed,
                            results=store, run_id=f"{config.name}_seed{seed}", progress=config.progress, scorer=scores)
            fresh += sum(r["key"] not in known for r in recs)
            records += [{**r, "train_seed": seed} for r in recs]
            policies.append(TrainedPolicy(seed, policy.label, policy.kind, Path(bundle), policy.fingerprint, seconds))
        print(f"  seed {seed}: rolled out {len(trained)} policies, {fresh} new episodes ({time.perf_counter() - t0:.0f}s)")

    if config.oracles.enabled:
        records += _oracle_records(config, data, scorer, store)

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
    if config.report:

        print(f"[4/{steps}] report")
        report = write_report(snapshot, data_returns={dataset_id: list(data.stats.episode_returns)})
        metrics = report.metrics
        out = report.datasets[dataset_id]
        table = out.comparison_table
        files.update({"calibration": out.markdown, "calibration_plot": out.plot})
        if out.comparison:
            files["comparison"] = out.comparison
        if out.frontier:
            files["frontier"] = out.frontier
    else:

        returns = list(data.stats.episode_returns)
        metrics = {fp: calibration_metrics(part, returns) for fp, part in df[df["policy_kind"] == "dt"].groupby("fingerprint")}
    if table is None:

        table = comparison_table(df)
    return ComparisonResult(config, df, table, metrics, policies, files, time.perf_counter() - start)


def _oracle_records(config: ComparisonConfig, data, scorer, store) -> list[dict]:

    if scorer is None or scorer.likelihood is None:
        print(f"  oracles skipped: dataset {config.dataset} recorded no behaviour mixture, so p_data is unknown")
        return []
    t0 = time.perf_counter()
    out = run_oracles(data, scorer, config.oracles, config.seeds, pool_seed=config.eval.seed + ORACLE_POOL_SEED, store=store,
                      name=config.name)
    print(f"  oracles: {len({r['target_spec'] for r in out if r['policy_kind'] == 'oracle'})} per seed from pools of "
          f"{config.oracles.pool} behaviour episodes ({time.perf_counter() - t0:.0f}s)")
    return out


def _remove_outputs(work: Path) -> None:
    """What ``fresh`` remakes: the training runs, the episode table and the report, nothing else in ``work``."""
    for path in [*work.glob("seed*"), work / "report"]:
        if path.is_dir():
            shutil.rmtree(path)
    (work / "episodes.jsonl").unlink(missing_ok=True)


def _ensure_dataset(config: ComparisonConfig) -> None:

    summary = ensure_dataset(config.env, config.dataset, seed=config.data_seed, overwrite=config.fresh, progress=config.progress)
    if summary is None:
        print(f"  exists, reused ({datasets_root() / config.dataset})")
    else:
        print("  " + summary.format().replace("\n", "\n  "))


def train_configs(config: ComparisonConfig, seed: int) -> dict[str, TrainConfig]:
    """The :class:`~dtcond.config.TrainConfig` of each offline run of one training seed, by run name
    (``dt``, ``dt_<method>``, ``bc``, ``pct_bc<q>``): the comparison's sections, one seed, BC's steps.

    >>> from dtcond.config import merge
    >>> runs = train_configs(merge(ComparisonConfig, {"env": {"name": "cartpole", "id": "CartPole-v1"},
    ...                                               "bc": {"steps": 300, "top_fractions": [0.1]}}), seed=3)
    >>> {name: (c.trainer.max_steps, c.condition_on_return, c.top_fraction, c.seed) for name, c in runs.items()}
    {'dt': (3000, True, None, 3), 'bc': (300, False, None, 3), 'pct_bc0.1': (300, False, 0.1, 3)}
    """
    from dataclasses import replace

    trainer = replace(config.trainer, enable_progress_bar=config.progress, enable_model_summary=False)
    steps = trainer.max_steps
    bc_steps = config.bc.steps or steps
    base = TrainConfig(dataset=DatasetConfig(name=config.env.name, id=config.dataset), model=config.model, data=config.data,
                       optim=config.optim, trainer=trainer, esper=config.esper, seed=seed,
                       checkpoint_every=config.checkpoint_every or steps, datasets_path=config.datasets_path)
    runs = {"dt": base}
    runs.update({f"dt_{m}": replace(base, relabel=m) for m in config.relabel})
    bc = replace(base, trainer=replace(trainer, max_steps=bc_steps), condition_on_return=False,
                 checkpoint_every=min(config.checkpoint_every or bc_steps, bc_steps))
    if config.bc.enabled:
        runs["bc"] = bc
    runs.update({f"pct_bc{q:g}": replace(bc, top_fraction=q) for q in config.bc.top_fractions})
    return runs


def regularized_runs(config: ComparisonConfig) -> list[tuple[families.Family, float]]:
    """(family, parameter) of each regularized run ``config.rl.regularized`` asks for, in the registry's order;
    an unregistered family, a parameter outside its range or an option it does not take (or a bad value of one) is one line.

    >>> from dtcond.config import merge
    >>> cfg = merge(ComparisonConfig, {"env": {"name": "cartpole", "id": "CartPole-v1"}, "rl": {"regularized": {"ppo_om": [3], "ppo_kl": [1, 10]}}})
    >>> [(f.kind, p) for f, p in regularized_runs(cfg)]
    [('ppo_kl', 1.0), ('ppo_kl', 10.0), ('ppo_om', 3.0)]
    """
    rl = config.rl
    runs = []
    for kind, param in rl.runs:
        family = families.get(kind)
        if family.penalty is None:
            raise DtcondError(f"rl.regularized.{kind}: {kind} is not a regularized RL family; "
                              f"those are {', '.join(f.kind for f in families.families('regularized'))}")
        try:
            family.penalty.check_param(param)
        except DtcondError as exc:
            raise DtcondError(f"rl.regularized.{kind}: {exc}") from None
        if family.penalty.needs_reference and not config.bc.enabled:
            raise DtcondError(f"rl.regularized.{kind} regularizes toward the seed's BC policy: it needs bc.enabled=true")
        runs.append((family, param))
    for kind, options in rl.options.items():
        penalty = families.get(kind).penalty
        unknown = sorted(set(options) - set(penalty.options if penalty else ()))
        if unknown:
            raise DtcondError(f"rl.options.{kind}: {kind} takes the options {list(penalty.options) if penalty else []}, not {', '.join(unknown)}")
        try:
            if penalty is not None:
                penalty.check_options(options)
        except DtcondError as exc:
            raise DtcondError(f"rl.options.{kind}: {exc}") from None
    return sorted(runs, key=lambda run: run[0].order)


def check_comparison(config) -> None:
    """The checks :func:`run_comparison` makes before any work that the config alone cannot (the family registry's)."""
    if isinstance(config, ComparisonConfig):
        regularized_runs(config)


def _train_seed(config: ComparisonConfig, regularized, stats, seed: int, out: Path) -> list[tuple[Path, float]]:
    """Train (or resume, or find done) one seed's policies: (bundle, training seconds) pairs, RL checkpoints in
    training order (the RL run's time is on its last)."""

    out_bundles = []
    for name, train_config in train_configs(config, seed).items():
        run, seconds = timed_run(out / name, lambda: train(config.dataset, out / name, config=train_config))
        val = f"{run.val_loss:.4f}" if run.val_loss is not None else "n/a"
        print(f"  seed {seed} {name}: {run.global_step} steps, val/loss {val} ({seconds:.0f}s)")
        out_bundles.append((run.bundle, seconds))
    rl = config.rl
    hyperparams = dict(rl.hyperparams) if rl.hyperparams else None
    if rl.algo:
        run, seconds = timed_run(out / rl.algo, lambda: train_baseline(
            stats, rl.algo, out / rl.algo, budget=rl.budget, checkpoints=rl.checkpoints, hyperparams=hyperparams, seed=seed,
            progress=config.progress))
        print(f"  seed {seed} {rl.algo}: {run.timesteps} env steps, {len(run.bundles)} checkpoints ({seconds:.0f}s)")
        out_bundles += [(b, 0.0) for b in run.bundles[:-1]] + [(run.bundles[-1], seconds)]
    # Regularized PPO, one run per family and parameter, each rolled out at its final policy. A family that
    # regularizes toward a policy (PPO-KL toward BC) uses this seed's BC run, trained above.
    for family, param in regularized:
        run_dir = out / f"{family.kind}{param:g}"
        run, seconds = timed_run(run_dir, lambda: train_baseline(
            stats, "ppo", run_dir, budget=rl.budget, checkpoints=1, hyperparams=hyperparams, seed=seed,
            progress=config.progress, penalty=family.penalty, param=param, bc_init_steps=rl.bc_init_steps,
            reference=out / "bc" / "policy" if family.penalty.needs_reference else None, options=rl.options.get(family.kind)))
        print(f"  seed {seed} {family.kind} {family.symbol}={param:g}: {run.timesteps} env steps ({seconds:.0f}s)")
        out_bundles.append((run.bundles[-1], seconds))
    return out_bundles + _finetune_seed(config, seed, out)


def _finetune_seed(config: ComparisonConfig, seed: int, out: Path) -> list[tuple[Path, float]]:
    """RL fine-tuning of this seed's BC transformer: one run per β, and one unregularized run whose snapshots stop at
    the KL thresholds; with betas, also the prior's own pool of episodes (the posterior's normalizer)."""
    ft, prior = config.finetune, out / "bc" / "policy"
    runs = [(b, out / f"rlft_kl{b:g}", []) for b in ft.betas] + ([(0.0, out / "rlft_stop", ft.thresholds)] if ft.thresholds else [])
    bundles = []
    for beta, run_dir, thresholds in runs:
        result, seconds = timed_run(run_dir, lambda: finetune(prior, run_dir, beta=beta, config=ft, thresholds=thresholds,
                                                              seed=seed, progress=config.progress))
        kl = result.history[-1]["kl"]
        print(f"  seed {seed} rlft β={beta:g}: {result.updates} updates, held-out KL to the prior {kl:.1f} nats ({seconds:.0f}s)")
        # the final policy first: a threshold the run never crossed snapshots the same weights, which then share its episodes
        bundles += [(result.bundle, seconds)] + [(path, 0.0) for path in result.snapshots.values()]
    if ft.betas:
        prior_pool(prior, ft.prior_pool, seed, out / PRIOR_POOL)
    return bundles


PRIOR_POOL = "rlft_prior_pool.json"  # per seed dir: the BC prior's own episodes, the posterior's normalizer


def prior_pools(work_dir, seeds) -> dict[int, dict]:
    """Each seed's prior pool that a comparison with ``finetune.betas`` wrote under ``work_dir`` (seed -> pool), the
    input of :func:`dtcond.analysis.oracles.posterior_gaps`; a seed without one is left out."""
    work = Path(work_dir).expanduser().resolve()
    return {int(s): json.loads(path.read_text()) for s in seeds if (path := work / f"seed{s}" / PRIOR_POOL).exists()}


TRAIN_SECONDS = "train_seconds.json"


def timed_run(run_dir: Path, call):
    """``call()`` (a training call that writes ``run_dir``) and the wall seconds spent training that run dir.

    Each call adds its own time to ``run_dir/checkpoints/train_seconds.json``, so a rerun that finds the
    run done reports what training it took (plus the second or so of finding it done), not about 0, and
    a run resumed after a kill sums its calls (less the killed call's time, which nothing recorded).
    The record lives with the checkpoints it describes: remove them and training starts again at 0 s.
    """


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
