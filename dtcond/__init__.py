"""dtcond: condition decision transformers on any target return.

Importing dtcond has no side effects and stays light: heavy modules (torch, lightning, minari)
load when first used.
"""

from dtcond.errors import DtcondError

__version__ = "0.1.0"

# name -> (module, attribute); resolved on first use so `import dtcond` stays light.
_LAZY = {
    "collect": ("dtcond.collection", "collect"),
    "ensure_dataset": ("dtcond.collection", "ensure_dataset"),
    "env_preset": ("dtcond.config", "env_preset"),
    "load_dataset": ("dtcond.data", "load"),
    "DatasetStats": ("dtcond.data", "DatasetStats"),
    "DTConfig": ("dtcond.model", "DTConfig"),
    "DecisionTransformer": ("dtcond.model", "DecisionTransformer"),
    "train": ("dtcond.training", "train"),
    "esper_labels": ("dtcond.relabel", "esper_labels"),
    "load_labels": ("dtcond.relabel", "load_labels"),
    "load_policy": ("dtcond.checkpoints", "load_policy"),
    "Policy": ("dtcond.contract", "Policy"),
    "ConditionedPolicy": ("dtcond.policy", "ConditionedPolicy"),
    "evaluate": ("dtcond.evaluation", "evaluate"),
    "ResultsStore": ("dtcond.results", "ResultsStore"),
    "write_report": ("dtcond.report", "write_report"),
    "comparison_table": ("dtcond.report", "comparison_table"),
    "plot_frontier": ("dtcond.report", "plot_frontier"),
    "train_baseline": ("dtcond.baselines", "train_baseline"),
    "RoamingScorer": ("dtcond.roaming", "RoamingScorer"),
    "DataLikelihood": ("dtcond.likelihood", "DataLikelihood"),
    "BehaviorPolicy": ("dtcond.likelihood", "BehaviorPolicy"),
    "run_oracles": ("dtcond.oracles", "run_oracles"),
    "dataset_records": ("dtcond.roaming", "dataset_records"),
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
    "EsperConfig": ("dtcond.config", "EsperConfig"),
    "merge": ("dtcond.config", "merge"),
    "targets": ("dtcond.targets", None),
    "stats": ("dtcond.stats", None),
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
