"""The package contract: a light, side-effect-free import and a working CLI entry point."""

import subprocess
import sys

from conftest import REPO


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, os; before = set(os.listdir('.')); import dtcond; "
        "heavy = [m for m in ('torch', 'lightning', 'minari', 'hydra') if m in sys.modules]; "
        "assert not heavy, heavy; assert set(os.listdir('.')) == before; "
        "assert set(dtcond.__all__) <= set(dir(dtcond))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


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


def test_every_public_name_resolves():
    import dtcond

    for name in dtcond.__all__:
        assert getattr(dtcond, name) is not None, name


def test_public_functions_survive_importing_every_submodule():
    # Importing a submodule binds it on the package: a function sharing a submodule's name
    # (dtcond.collect vs a dtcond/collect.py) would turn into the module.
    import importlib
    import inspect
    import pkgutil

    import dtcond

    for info in pkgutil.walk_packages(dtcond.__path__, "dtcond."):
        if info.name != "dtcond.__main__":
            importlib.import_module(info.name)
    for name, (module, attr) in dtcond._LAZY.items():
        if attr is not None:
            assert not inspect.ismodule(getattr(dtcond, name)), f"dtcond.{name} is a module, not {module}.{attr}"
