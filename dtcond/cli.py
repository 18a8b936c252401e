"""``dtcond <command> [hydra overrides]``: one Hydra app per command, composed from ``conf/<command>.yaml``.

Hydra stays here. Each config's schema is its command's dataclass in :mod:`dtcond.config`, so Hydra
type-checks while composing; each command gets that dataclass (never a ``DictConfig``) and calls
library code. A :class:`~dtcond.common.errors.DtcondError` becomes one line on stderr and exit code 2.

Layer 14: may import common, envs, datasets, targets, config, rollout, behavior, dt, rl, families, analysis,
pipeline, experiment (the layers below it; the package docstring lists them).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from pathlib import Path
from typing import Callable

from dtcond.config import conf_dir  # noqa: F401  (re-exported: the CLI's config dir)
from dtcond.common.errors import DtcondError

USAGE = """usage: dtcond <command> [key=value ...] [-m] [--cfg job] [--help]

commands:
  collect   roll out a behaviour mixture and write a local Minari dataset
  train     fit a Decision Transformer on a dataset; writes last.ckpt and a policy bundle
  eval      roll out a policy at many target returns into a results table (+ calibration report)
  baseline  online RL (SB3 PPO/SAC) on a dataset's env; every checkpoint evaluated into the table
  finetune  RL fine-tuning of a BC transformer on its env's reward, KL-penalized toward its frozen copy
  report    calibration metrics, plot and markdown from a results table
  demo      end to end: collect -> DT, BC, %BC, PPO -> target sweep -> calibration and comparison report

Each command is a Hydra app: `dtcond collect env=pendulum episodes=50`, `dtcond collect --help`."""


def fail(command: str, message: str) -> None:
    print(f"dtcond {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------
# Commands: a typed config (dtcond.config) in, library calls out.


def _set_datasets_path(cfg) -> None:
    path = getattr(cfg, "datasets_path", None)
    if path:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(path).expanduser().resolve())


def _components(behavior) -> list:
    from omegaconf import OmegaConf

    from dtcond.behavior.mixture import components_from_config

    return components_from_config(OmegaConf.to_container(behavior, resolve=True) if OmegaConf.is_config(behavior) else behavior)


def collect_command(cfg) -> None:
    from dtcond.behavior.collection import collect

    _set_datasets_path(cfg)
    summary = collect(
        env_id=cfg.env.id,
        behavior=_components(cfg.behavior),
        episodes=cfg.episodes,
        dataset_id=cfg.dataset_id,
        seed=cfg.seed,
        env_kwargs=dict(cfg.env.kwargs),
        max_episode_steps=cfg.env.max_episode_steps,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    print(summary.format())


def train_command(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dtcond.dt.training import train

    _set_datasets_path(cfg)
    result = train(cfg.dataset.id, HydraConfig.get().runtime.output_dir, config=cfg)
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    print(f"trained {cfg.dataset.id}: {result.global_step} steps, val/loss {val}")
    print("  " + fidelity_line(result))
    print(f"  policy bundle  {result.bundle}")
    print(f"  checkpoint     {result.last_checkpoint}")


def fidelity_line(result) -> str:
    """How close the exported weights are to the data, in one line: the forward KL per step where the dataset
    recorded its behaviour (plain BC), the NLL gap for a conditioned or filtered model, or why neither."""
    import json

    card = json.loads((result.bundle / "card.json").read_text())
    fid = card.get("extra", {}).get("fidelity") or {}
    val = fid.get("val") or {}
    chosen = f"best val/loss at step {fid['best_step']}" if fid.get("best_step") is not None else "last step"
    if "val/kl_data" in val:
        return (f"fidelity       forward KL to the data {val['val/kl_data']:.4f} nats/step (NLL {val['val/nll']:.4f}, the data's "
                f"exact conditional {val['val/data_nll']:.4f}); exported the {chosen}")
    if "val/nll_gap" in val:
        return (f"fidelity       NLL {val['val/nll']:.4f} nats/step against the data's exact conditional {val['val/data_nll']:.4f} "
                f"(a conditioned or filtered model may go below it); exported the {chosen}")
    return f"fidelity       no exact reference: {fid.get('reference_note') or 'no validation episodes'}; exported the {chosen}"


def _scorer(dataset_id: str, enabled: bool, store=None, data_rows: bool = False):
    """A roaming scorer for ``dataset_id`` (needs the dataset locally), and its data rows if asked."""
    if not enabled:
        return None
    from dtcond.datasets.loading import load
    from dtcond.analysis.roaming import RoamingScorer, applies_to, dataset_records

    try:
        data = load(dataset_id)
    except DtcondError as exc:
        raise DtcondError(f"roaming metrics need the policy's dataset ({exc}); pass roaming=false to skip them") from None
    if not applies_to(data.stats):
        print(f"roaming metrics skipped: {dataset_id!r} has image observations")
        return None
    scorer = RoamingScorer.for_data(data)
    if store is not None and data_rows:
        store.append(dataset_records(data, scorer))
    return scorer


def baseline_command(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dtcond import families
    from dtcond.families import load_policy
    from dtcond.rl.baselines import train_baseline
    from dtcond.datasets.loading import load
    from dtcond.rollout.evaluation import evaluate
    from dtcond.rollout.records import ResultsStore

    _set_datasets_path(cfg)
    store = ResultsStore(Path(cfg.results).expanduser()) if cfg.evaluate else None
    stats = load(cfg.dataset.id).stats
    penalty = families.get(cfg.regularizer).penalty if cfg.regularizer else None
    if cfg.regularizer and penalty is None:
        raise DtcondError(f"regularizer={cfg.regularizer} is not a regularized RL family; those are "
                          f"{', '.join(f.kind for f in families.families('regularized'))}")
    result = train_baseline(
        stats, cfg.algo, HydraConfig.get().runtime.output_dir, budget=cfg.budget, checkpoints=cfg.checkpoints,
        hyperparams=cfg.hyperparams or {}, seed=cfg.seed, progress=cfg.progress, penalty=penalty, param=cfg.param,
        bc_init_steps=cfg.bc_init_steps, reference=cfg.reference, options=dict(cfg.options) if cfg.options else None,
    )
    print(f"{cfg.algo} on {stats.env_id}: {result.timesteps} env steps; {len(result.bundles)} checkpoints in {result.out_dir / 'policies'}")
    if store is None:
        return
    scorer = _scorer(cfg.dataset.id, cfg.roaming, store, data_rows=True)
    for bundle in result.bundles:
        policy = load_policy(bundle)
        policy.greedy = cfg.greedy
        recs = evaluate(policy, episodes=cfg.episodes, seed=cfg.seed, results=store, run_id=f"{cfg.algo}_seed{cfg.seed}", scorer=scorer)
        ret = np.mean([r["episode_return"] for r in recs])
        ce = [r.get("cross_entropy_behavior") for r in recs if r.get("cross_entropy_behavior") is not None]
        print(f"  {policy.label:>16}: return {ret:9.1f}" + (f"   cross-entropy under the data's behaviour {np.mean(ce):.2f}/step" if ce else ""))
    print(f"  results: {store.path}")


def finetune_command(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from dtcond.families import load_policy
    from dtcond.rl.finetune import PriorScorer, finetune
    from dtcond.rollout.evaluation import evaluate
    from dtcond.rollout.records import ResultsStore

    _set_datasets_path(cfg)
    store = ResultsStore(Path(cfg.results).expanduser()) if cfg.evaluate else None
    prior = Path(cfg.policy).expanduser()
    result = finetune(prior, HydraConfig.get().runtime.output_dir, beta=cfg.beta, config=cfg.finetune, seed=cfg.seed,
                      progress=cfg.progress)
    last = result.history[-1]
    print(f"fine-tuned {prior} at β={cfg.beta:g}: {result.updates} updates ({result.seconds:.0f}s), held-out KL to the prior "
          f"{last['kl']:.2f} ± {1.96 * last['kl_se']:.2f} nats, return {last['return']:.1f}; policy {result.bundle}")
    for threshold, path in result.snapshots.items():
        print(f"  stopped at KL ≤ {threshold:g}: {path}")
    if store is None:
        return
    policy = load_policy(result.bundle)
    scorer = _scorer(policy.stats.dataset_id, cfg.roaming, store, data_rows=True)
    for bundle in [result.bundle, *result.snapshots.values()]:
        policy = load_policy(bundle)
        recs = evaluate(policy, episodes=cfg.episodes, seed=cfg.seed, results=store, run_id=f"rlft_seed{cfg.seed}",
                        scorer=PriorScorer(policy, prior, scorer))
        kl = [r["trajectory_kl"] for r in recs if r.get("trajectory_kl") is not None]
        print(f"  {policy.label:>16}: return {np.mean([r['episode_return'] for r in recs]):9.1f}   KL to the prior "
              f"{np.mean([r['log_ratio_prior'] for r in recs]):.2f}" + (f"   KL(p_π‖p_data) {np.mean(kl):.1f}" if kl else ""))
    print(f"  results: {store.path}")


def eval_command(cfg) -> None:
    from dtcond.families import load_policy
    from dtcond.rollout.evaluation import evaluate, make_vector_env
    from dtcond.analysis.report import per_target_table, write_report
    from dtcond.rollout.records import ResultsStore
    from dtcond.targets import from_sampler

    _set_datasets_path(cfg)
    store = ResultsStore(Path(cfg.results).expanduser())  # fails now, not after an hour, if unwritable
    policy = load_policy(Path(cfg.policy).expanduser())
    policy.greedy, policy.temperature, policy.decode = cfg.greedy, cfg.temperature, cfg.decode
    make_vector_env(policy, 1, None, cfg.env_id).close()  # an env that cannot be made: refused before any data rows
    specs = from_sampler(dict(cfg.sampler), policy.stats) if policy.kind == "dt" else None
    scorer = _scorer(policy.stats.dataset_id, cfg.roaming, store, data_rows=cfg.data_rows)
    records = evaluate(
        policy, specs, episodes=cfg.episodes, seed=cfg.seed, results=store, run_id=cfg.run_id,
        batch_size=cfg.batch_size, progress=cfg.progress, env_kwargs=None, env_id=cfg.env_id, scorer=scorer,
    )
    import pandas as pd

    table = per_target_table(pd.DataFrame(records))
    print(f"{policy.label} {policy.fingerprint} on {policy.env_id}: {len(records)} episodes -> {store.path}")
    for r in table.itertuples():
        flag = " OOD" if r.ood else ""
        score = getattr(r, "normalized_score_mean", None)  # where the dataset has reference scores
        print(f"  {r.target_spec:>18} target {r.target:9.1f} (P_data {r.target_quantile:4.2f}{flag:4}) "
              f"achieved {r.return_mean:9.1f} +- {r.return_ci95:6.1f}" + (f"  normalized score {100 * score:6.1f}" if score == score and score is not None else ""))
    if cfg.report:
        report = write_report(store.path)
        for out in report.datasets.values():
            print(f"  report {out.markdown}  plot {out.plot}")


def report_command(cfg) -> None:
    from dtcond.analysis.report import write_report

    report = write_report(Path(cfg.results).expanduser(), cfg.out_dir)
    for dataset_id, out in report.datasets.items():
        print(f"{dataset_id}: {out.markdown}  {out.plot}")
    for fp, m in report.metrics.items():
        ind = m.get("in_distribution") or {}
        print(f"  {fp}: in-distribution normalized MAE {ind.get('normalized_mae', float('nan')):.3f}, "
              f"Spearman {ind.get('spearman', float('nan')):.2f}, saturation at target {m.get('saturation_target', float('nan')):.1f}")


def demo_command(cfg) -> None:
    """collect -> DT, BC, %BC, PPO -> sweep targets (grid, OOD, quantilizers) -> calibration and comparison report.

    A thin wrapper: ``cfg`` is a :class:`~dtcond.config.ComparisonConfig` and the work is :func:`dtcond.pipeline.run_comparison`.
    """
    from dtcond.pipeline import run_comparison

    _set_datasets_path(cfg)
    result = run_comparison(cfg)
    print(result.summary())
    print(f"demo done in {result.seconds:.0f}s (a rerun reuses the dataset, training and episodes; fresh=true remakes them)")


COMMANDS: dict[str, Callable] = {
    "collect": collect_command,
    "train": train_command,
    "eval": eval_command,
    "baseline": baseline_command,
    "finetune": finetune_command,
    "report": report_command,
    "demo": demo_command,
}


def run(command: str, overrides: list[str]) -> None:
    import hydra

    from dtcond.config import from_hydra, register_schemas

    task = COMMANDS[command]
    register_schemas()

    @hydra.main(config_path=str(conf_dir()), config_name=command, version_base="1.3")
    def app(cfg) -> None:
        if command in ("train", "demo"):
            from dtcond.common.console import quiet_libraries

            quiet_libraries()  # Lightning's banners, doubled by Hydra's log handler, would drown the progress bar
        sys.argv[0] = program
        try:
            config = from_hydra(cfg)  # the one check: types, unknown keys, ranges
            task(config)
        except DtcondError as exc:
            fail(command, str(exc))
        except KeyboardInterrupt:
            fail(command, "interrupted; nothing partial was kept")

    _check_overrides(command, overrides)
    # Lightning's DDP starts each further rank by rerunning sys.argv: it needs a real program in
    # argv[0] (restored once Hydra has parsed) and DTCOND_COMMAND to know the overrides' command.
    program = sys.argv[0]
    os.environ["DTCOND_COMMAND"] = command
    sys.argv = [f"dtcond {command}", *overrides]
    app()


def _check_overrides(command: str, args: list[str]) -> None:
    """Compose the config once up front so a typo fails in one line, before any work."""
    from dtcond.config import override_error, register_schemas

    register_schemas()
    check = None
    if command == "demo":
        from dtcond.pipeline import check_comparison as check
    message = override_error(conf_dir(), command, args, hint=f"see `dtcond {command} --cfg job` for the keys it takes", check=check)
    if message:
        fail(command, message)



def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if argv else 2)
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS and "LOCAL_RANK" in os.environ and os.environ.get("DTCOND_COMMAND") in COMMANDS:
        command, overrides = os.environ["DTCOND_COMMAND"], argv  # a DDP rank Lightning started: the command is inherited
    if command not in COMMANDS:
        print(f"dtcond: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    run(command, overrides)


if __name__ == "__main__":
    main()
