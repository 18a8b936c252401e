"""dtcond collect: mixtures, SB3 behaviour, reproducibility, atomic writes, and bad input."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import run_cli
from dtcond.behavior.mixture import Component, episode_assignment
from dtcond.behavior.collection import collect
from dtcond.datasets.loading import load
from dtcond.common.errors import DtcondError


def tree_digest(path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def visible_entries(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_mixture_assignment_has_exact_proportions():
    comps = [Component("random", weight=0.5), Component("random", 0.1, 0.3), Component("random", 0.2, 0.2)]
    counts = np.bincount(episode_assignment(comps, 10, seed=0), minlength=3)
    assert counts.tolist() == [5, 3, 2]
    assert np.bincount(episode_assignment(comps, 7, seed=1), minlength=3).sum() == 7


def test_same_seed_same_dataset():
    comps = [Component("cartpole_balance", 0.5, 0.5), Component("random", weight=0.5)]
    collect("CartPole-v1", comps, 6, "test/a-v0", seed=4, progress=False)
    collect("CartPole-v1", comps, 6, "test/b-v0", seed=4, progress=False)
    collect("CartPole-v1", comps, 6, "test/c-v0", seed=5, progress=False)
    a, b, c = (load(f"test/{x}-v0").trajectories for x in "abc")
    assert all(np.array_equal(x.actions, y.actions) and np.array_equal(x.observations, y.observations) for x, y in zip(a, b))
    assert [len(t) for t in a] != [len(t) for t in c]


def test_skill_levels_are_ordered_and_recorded(minari_root):
    import minari

    comps = [Component("cartpole_balance", 0.0, 0.5), Component("random", weight=0.5)]
    summary = collect("CartPole-v1", comps, 8, "test/skills-v0", seed=0, progress=False)
    by_name = {c["name"]: c for c in summary.per_component}
    assert by_name["cartpole_balance@0"]["mean_return"] == 500.0
    assert by_name["random@0"]["mean_return"] < 60
    labels = [int(e.infos["behavior_component"][0]) for e in minari.load_dataset("test/skills-v0").iterate_episodes()]
    assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1, 1]


def test_cli_collects_the_default_mixtures_across_the_return_range(tmp_path, minari_root):
    out = run_cli("collect", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "dataset dtcond/cartpole/mixture-v0" in out.stdout and "p95" in out.stdout
    cart = load("dtcond/cartpole/mixture-v0").stats
    assert cart.num_episodes == 300 and cart.min_return < 20 and cart.max_return == 500
    assert cart.return_quantile(0.25) < 100 < 300 < cart.return_quantile(0.75)  # not just the two ends

    out = run_cli("collect", "env=pendulum", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    pend = load("dtcond/pendulum/mixture-v0").stats
    assert pend.min_return < -1300 and pend.max_return > -150
    assert pend.return_quantile(0.25) < -600 < -300 < pend.return_quantile(0.75)


def test_cli_never_overwrites_silently(tmp_path, minari_root):
    args = ("collect", "episodes=4", "dataset_id=test/keep-v0")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    before = tree_digest(minari_root / "test/keep-v0")
    again = run_cli(*args, "seed=1", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        f"dtcond collect: error: dataset 'test/keep-v0' already exists at {minari_root / 'test/keep-v0'}; "
        "pass overwrite=true or choose another id"
    ]
    assert tree_digest(minari_root / "test/keep-v0") == before
    assert run_cli(*args, "seed=1", "overwrite=true", cwd=tmp_path).returncode == 0
    assert tree_digest(minari_root / "test/keep-v0") != before
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".")]  # no staging or trash left


def test_crash_while_writing_leaves_nothing_under_the_id(minari_root, monkeypatch):
    import minari

    comps = [Component("random")]
    collect("CartPole-v1", comps, 3, "test/old-v0", seed=0, progress=False)
    before = tree_digest(minari_root / "test/old-v0")
    real = minari.create_dataset_from_buffers

    def write_then_crash(*args, **kwargs):
        real(*args, **kwargs)  # the dataset is fully written in staging ...
        raise KeyboardInterrupt  # ... and the process is interrupted before it is moved into place

    monkeypatch.setattr(minari, "create_dataset_from_buffers", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        collect("CartPole-v1", comps, 3, "test/new-v0", seed=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        collect("CartPole-v1", comps, 3, "test/old-v0", seed=9, progress=False, overwrite=True)
    assert not (minari_root / "test/new-v0").exists()
    assert tree_digest(minari_root / "test/old-v0") == before
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def cartpole_ppo(tmp_path_factory):
    from stable_baselines3 import PPO

    path = tmp_path_factory.mktemp("sb3") / "ppo_cartpole.zip"
    PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu").learn(64).save(path)
    return path


def test_sb3_checkpoint_as_behaviour(cartpole_ppo):
    summary = collect("CartPole-v1", [Component(f"sb3:{cartpole_ppo}")], 3, "test/sb3-v0", progress=False)
    assert summary.episodes == 3 and load("test/sb3-v0").stats.num_episodes == 3


def test_sb3_checkpoint_with_other_spaces_is_refused(cartpole_ppo, minari_root):
    with pytest.raises(DtcondError, match="do not match the env"):
        collect("Pendulum-v1", [Component(f"sb3:{cartpole_ppo}")], 2, "test/bad-v0", progress=False)
    assert not (minari_root / "test/bad-v0").exists()


def test_an_overwrite_swaps_the_dataset_in_one_step_so_the_id_is_never_empty(tmp_path, minari_root):
    """collect overwrite=true exchanges the new dataset with the old atomically (renameat2 on Linux):
    there is no moment, and so no kill, at which the id names nothing."""
    import sys

    from dtcond.behavior.mixture import components_from_config
    from dtcond.behavior.collection import collect, exchange_dirs
    from dtcond.datasets.loading import load

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "which").write_text("a"), (b / "which").write_text("b")
    swapped = exchange_dirs(a, b)
    if sys.platform.startswith("linux"):
        assert swapped  # Linux with a modern libc and a local filesystem: the atomic path is the one taken
    if swapped:
        assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
    comps = components_from_config([{"policy": "random", "weight": 1.0}])
    collect("CartPole-v1", comps, 3, "test/swap-v0", seed=0, progress=False)
    collect("CartPole-v1", comps, 5, "test/swap-v0", seed=1, progress=False, overwrite=True)
    assert len(load("test/swap-v0").trajectories) == 5
    assert not [p.name for p in minari_root.iterdir() if p.name.startswith((".trash-", ".staging-"))]
