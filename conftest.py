"""The docstring examples in dtcond/ run (pytest --doctest-modules) on a tiny world made once per session.

Each doctest runs in its own temp dir with ``$MINARI_DATASETS_PATH`` pointing at a CartPole mixture collected by
dtcond (``dtcond/cartpole/mixture-v0``, 20 episodes); its namespace has ``dtcond``, ``np``, ``data``, ``stats`` and
a fresh ``policy`` loaded from a tiny DT trained on it, so the entry points' examples execute instead of being
skipped. Tests under tests/ are untouched (they have their own conftest).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DOC_DATASET = "dtcond/cartpole/mixture-v0"


@pytest.fixture(scope="session")
def doc_world(tmp_path_factory) -> dict:
    import dtcond
    from dtcond.behavior.mixture import Component

    root = tmp_path_factory.mktemp("doctest-world")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
    try:
        mixture = [Component("cartpole_balance", 0.0, 0.3), Component("cartpole_balance", 0.5, 0.4), Component("random", weight=0.3)]
        dtcond.collect("CartPole-v1", mixture, episodes=20, dataset_id=DOC_DATASET, seed=0, progress=False)
        run = dtcond.train(DOC_DATASET, root / "dt", model={"context_len": 4, "n_layer": 1, "n_embd": 16},
                           data={"batch_size": 8, "steps_per_epoch": 5},
                           trainer={"max_steps": 5, "enable_progress_bar": False, "enable_model_summary": False, "logger": False})
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return {"minari": root / "minari", "bundle": run.bundle}


@pytest.fixture(autouse=True)
def _doctest_world(request, tmp_path, monkeypatch):
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        yield
        return
    import numpy as np

    import dtcond

    world = request.getfixturevalue("doc_world")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world["minari"]))
    monkeypatch.setenv("DTCOND_CACHE", str(world["minari"].parent / "cache"))  # fitted behaviour models
    monkeypatch.chdir(tmp_path)  # "runs/..." in an example lands here
    data = dtcond.load_dataset(DOC_DATASET)
    request.node.dtest.globs.update(dtcond=dtcond, np=np, data=data, stats=data.stats,
                                    policy=dtcond.load_policy(world["bundle"]), Path=Path)
    yield
