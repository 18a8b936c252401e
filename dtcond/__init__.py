"""dtcond: condition decision transformers on any target return.

Importing dtcond has no side effects and stays light: heavy modules (torch, lightning, minari)
load when first used.

The package in layers, lowest first; a module imports only from its own layer and the ones below it (each
layer's docstring says so, and ``tests/test_imports.py`` checks it):

==============  ==============================================================================================
``common``      the error type, atomic writes, console quieting
``envs``        the safety testbeds and their scripted behaviours
``datasets``    local Minari datasets: storage, validation, observations, loading, windows, the recorded env
``targets``     target specs: how a user names the return to condition on
``config``      one typed config per command and concept
``rollout``     the policy contract, action distributions, batched evaluation, the results table
``behavior``    behaviour mixtures, collection, the data's exact likelihood
``dt``          the Decision Transformer: model, training, relabelling, the conditioned policy, bundles
``rl``          SB3 PPO/SAC, the regularizers' penalties, the behaviour model β̂, SB3 bundles, RL fine-tuning of the transformer
``families``    the family registry, and loading any family's policy
``analysis``    statistics, roaming scores, oracles, frontiers, reports
``pipeline``    the comparison pipeline (``run_comparison``)
``experiment``  what an experiment script is built from
``cli``         the ``dtcond`` command
==============  ==============================================================================================
"""

from dtcond.common.errors import DtcondError

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first use so `import dtcond` stays light.
_LAZY = {
    "collect": ("dtcond.behavior.collection", "collect"),
    "ensure_dataset": ("dtcond.behavior.collection", "ensure_dataset"),
    "env_preset": ("dtcond.config", "env_preset"),
    "load_dataset": ("dtcond.datasets.loading", "load"),
    "DatasetStats": ("dtcond.datasets.loading", "DatasetStats"),
    "DTConfig": ("dtcond.dt.model", "DTConfig"),
    "DecisionTransformer": ("dtcond.dt.model", "DecisionTransformer"),
    "train": ("dtcond.dt.training", "train"),
    "esper_labels": ("dtcond.dt.relabel", "esper_labels"),
    "load_labels": ("dtcond.dt.relabel", "load_labels"),
    "load_policy": ("dtcond.families", "load_policy"),
    "Policy": ("dtcond.rollout.contract", "Policy"),
    "ConditionedPolicy": ("dtcond.dt.policy", "ConditionedPolicy"),
    "evaluate": ("dtcond.rollout.evaluation", "evaluate"),
    "ResultsStore": ("dtcond.rollout.records", "ResultsStore"),
    "write_report": ("dtcond.analysis.report", "write_report"),
    "comparison_table": ("dtcond.analysis.report", "comparison_table"),
    "plot_frontier": ("dtcond.analysis.report", "plot_frontier"),
    "train_baseline": ("dtcond.rl.baselines", "train_baseline"),
    "finetune": ("dtcond.rl.finetune", "finetune"),
    "kl_to_posterior": ("dtcond.analysis.oracles", "kl_to_posterior"),
    "RoamingScorer": ("dtcond.analysis.roaming", "RoamingScorer"),
    "DataLikelihood": ("dtcond.behavior.likelihood", "DataLikelihood"),
    "BehaviorPolicy": ("dtcond.behavior.likelihood", "BehaviorPolicy"),
    "run_oracles": ("dtcond.analysis.oracles", "run_oracles"),
    "dataset_records": ("dtcond.analysis.roaming", "dataset_records"),
    "run_comparison": ("dtcond.pipeline", "run_comparison"),
    # The typed configs that train, train_baseline's CLI and run_comparison take, and merge to build one from dicts.
    "ComparisonConfig": ("dtcond.config", "ComparisonConfig"),
    "TrainConfig": ("dtcond.config", "TrainConfig"),
    "ModelConfig": ("dtcond.config", "ModelConfig"),
    "DataConfig": ("dtcond.config", "DataConfig"),
    "OptimConfig": ("dtcond.config", "OptimConfig"),
    "TrainerConfig": ("dtcond.config", "TrainerConfig"),
    "EnvConfig": ("dtcond.config", "EnvConfig"),
    "BcConfig": ("dtcond.config", "BcConfig"),
    "RlConfig": ("dtcond.config", "RlConfig"),
    "OracleConfig": ("dtcond.config", "OracleConfig"),
    "FinetuneConfig": ("dtcond.config", "FinetuneConfig"),
    "EsperConfig": ("dtcond.config", "EsperConfig"),
    "merge": ("dtcond.config", "merge"),
    "targets": ("dtcond.targets", None),
    "stats": ("dtcond.analysis.statistics", None),
}

__all__ = ["DtcondError", "__version__", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'dtcond' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    return mod if attr is None else getattr(mod, attr)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
