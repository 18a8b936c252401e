"""The package contract: a light, side-effect-free import and a working CLI entry point."""

import importlib
import importlib.metadata
import inspect
import subprocess
import sys

from conftest import REPO

# What each public name is and which module defines it (the README's Library use and Where things live).
PUBLIC = {
    "DtcondError": ("class", "dtcond.common.errors"),
    "collect": ("function", "dtcond.behavior.collection"),
    "ensure_dataset": ("function", "dtcond.behavior.collection"),
    "env_preset": ("function", "dtcond.config"),
    "load_dataset": ("function", "dtcond.datasets.loading"),
    "DatasetStats": ("class", "dtcond.datasets.loading"),
    "DTConfig": ("class", "dtcond.dt.model"),
    "DecisionTransformer": ("class", "dtcond.dt.model"),
    "train": ("function", "dtcond.dt.training"),
    "esper_labels": ("function", "dtcond.dt.relabel"),
    "load_labels": ("function", "dtcond.dt.relabel"),
    "load_policy": ("function", "dtcond.families"),
    "Policy": ("class", "dtcond.rollout.contract"),
    "ConditionedPolicy": ("class", "dtcond.dt.policy"),
    "evaluate": ("function", "dtcond.rollout.evaluation"),
    "ResultsStore": ("class", "dtcond.rollout.records"),
    "write_report": ("function", "dtcond.analysis.report"),
    "comparison_table": ("function", "dtcond.analysis.report"),
    "plot_frontier": ("function", "dtcond.analysis.report"),
    "train_baseline": ("function", "dtcond.rl.baselines"),
    "finetune": ("function", "dtcond.rl.finetune"),
    "kl_to_posterior": ("function", "dtcond.analysis.oracles"),
    "RoamingScorer": ("class", "dtcond.analysis.roaming"),
    "DataLikelihood": ("class", "dtcond.behavior.likelihood"),
    "BehaviorPolicy": ("class", "dtcond.behavior.likelihood"),
    "run_oracles": ("function", "dtcond.analysis.oracles"),
    "dataset_records": ("function", "dtcond.analysis.roaming"),
    "run_comparison": ("function", "dtcond.pipeline"),
    **{name: ("class", "dtcond.config") for name in ("ComparisonConfig", "TrainConfig", "ModelConfig", "DataConfig", "OptimConfig",
                                                      "TrainerConfig", "EnvConfig", "BcConfig", "RlConfig", "OracleConfig", "EsperConfig",
                                                      "FinetuneConfig")},
    "merge": ("function", "dtcond.config"),
    "targets": ("module", "dtcond.targets"),
    "stats": ("module", "dtcond.analysis.statistics"),
}


def kind(obj) -> str:
    return "module" if inspect.ismodule(obj) else "class" if inspect.isclass(obj) else "function" if inspect.isfunction(obj) else type(obj).__name__


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, os; before = set(os.listdir('.')); import dtcond; "
        "heavy = [m for m in ('torch', 'lightning', 'minari', 'hydra', 'stable_baselines3') if m in sys.modules]; "
        "assert not heavy, heavy; assert set(os.listdir('.')) == before; "
        "loaded = sorted(m for m in sys.modules if m.startswith('dtcond.') and m not in ('dtcond.common', 'dtcond.common.errors')); "
        "assert not loaded, loaded"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_cli_usage_and_unknown_command(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "dtcond", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0 and "collect" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "dtcond", "colect"], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("dtcond: error: unknown command 'colect'; choose one of collect")
    assert not list(tmp_path.iterdir())


def test_configs_ship_with_the_package():
    from dtcond.cli import conf_dir

    assert (conf_dir() / "collect.yaml").is_file()
    assert conf_dir() in (REPO / "conf", REPO / "dtcond" / "conf")


def check_public_names(dtcond) -> None:
    assert set(dtcond.__all__) == {"__version__", *PUBLIC}, "a new public name needs its entry in PUBLIC"
    for name, (expected, module) in PUBLIC.items():
        obj = getattr(dtcond, name)
        assert kind(obj) == expected, f"dtcond.{name} is a {kind(obj)}, not a {expected}"
        if expected == "module":
            assert obj is importlib.import_module(module), name
        else:
            assert obj.__module__ == module and getattr(importlib.import_module(module), obj.__name__) is obj, name
            assert inspect.getdoc(obj), f"dtcond.{name} has no docstring"


def test_every_public_name_is_what_the_docs_say():
    import torch

    import dtcond

    check_public_names(dtcond)
    assert issubclass(dtcond.DtcondError, Exception) and issubclass(dtcond.DecisionTransformer, torch.nn.Module)
    assert dtcond.__version__ == importlib.metadata.version("dtcond")


def test_public_functions_survive_importing_every_submodule():
    # Importing a submodule binds it on the package: a function sharing a submodule's name
    # (dtcond.collect vs a dtcond/collect.py) would turn into the module.
    import pkgutil

    import dtcond

    for info in pkgutil.walk_packages(dtcond.__path__, "dtcond."):
        if info.name != "dtcond.__main__":
            importlib.import_module(info.name)
    check_public_names(dtcond)

