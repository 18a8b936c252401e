"""ESPER relabelling: labels that take the luck out of returns, carried by the bundle, resolved by target specs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import minari_at, run_cli

GAMBLE = "test/gamble/mix-v0"
SMALL = dict(clusters=8, hidden=32, cluster_steps=600, return_steps=600, batch_size=64)
QUICK = dict(hidden=16, cluster_steps=30, return_steps=60)  # where only the plumbing is under test


@pytest.fixture(scope="module")
def gamble(tmp_path_factory):
    """A Gamble dataset (always safe, always gamble, uniformly random) and its ESPER labels, made once."""
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect
    from dtcond.config import EsperConfig
    from dtcond.datasets.loading import load
    from dtcond.dt.relabel import esper_labels

    root = tmp_path_factory.mktemp("gamble")
    with minari_at(root / "minari"):
        collect("dtcond/Gamble-v0", [Component("gamble_safe", 0.0, 0.4), Component("gamble_gambler", 0.0, 0.3),
                                     Component("random", 0.0, 0.3)], 300, GAMBLE, seed=0, progress=False)
        data = load(GAMBLE)
    labels, info = esper_labels(data.trajectories, data.stats, EsperConfig(**SMALL), seed=0)
    return {"root": root, "data": data, "labels": labels, "info": info}


def test_labels_rank_the_safe_behaviour_above_every_lucky_gamble(gamble):
    data, labels = gamble["data"], gamble["labels"]
    first = np.array([a[0] for a in labels])
    raw = np.array([t.episode_return for t in data.trajectories])
    safe = np.array([np.all(t.actions == 0) for t in data.trajectories])
    gambler = np.array([np.all(t.actions == 1) for t in data.trajectories])
    assert safe.sum() > 50 and gambler.sum() > 50
    assert raw[gambler].max() > raw[safe].min()  # in the raw returns a lucky gambler beats playing safe
    # ... in the labels no gambler does: each episode is worth what its choices are worth on average
    assert first[gambler].max() < first[safe].min()
    assert abs(first[safe].mean() - 3.0) < 0.3  # always safe: 3 for sure
    # Always gamble is worth -1.2; its cluster may also hold random episodes that gamble first (-0.4), so the label sits between.
    assert -1.7 < first[gambler].mean() < -0.2
    assert first[gambler].std() < 0.25 * raw[gambler].std()  # whether the dice fell well hardly moves a gambler's label
    assert gamble["info"]["clusters_used"] >= 2


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_labels_keep_the_returns_of_a_deterministic_env(tmp_path):
    """Pendulum has no randomness after the reset, so there is no luck to remove: the labels should be the returns.
    With the reference's objective (clusters learn from actions only, return_weight 0) they kept R² 0.54 here."""
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect
    from dtcond.config import EsperConfig
    from dtcond.datasets.loading import load
    from dtcond.dt.relabel import esper_labels

    with minari_at(tmp_path / "minari"):
        collect("Pendulum-v1", [Component("pendulum_swingup", noise, 0.25) for noise in (0.0, 0.5, 1.0, 1.5)], 200,
                "test/pendulum/noise-v0", seed=0, max_episode_steps=60, progress=False)
        data = load("test/pendulum/noise-v0")
    labels, _ = esper_labels(data.trajectories, data.stats, EsperConfig(**SMALL), seed=0)
    raw = np.array([t.episode_return for t in data.trajectories])
    first = np.array([a[0] for a in labels])
    assert 1 - ((first - raw) ** 2).mean() / raw.var() > 0.85  # R² of the first-step labels against the returns


def test_labels_are_a_function_of_the_seed(gamble):
    from dtcond.config import EsperConfig
    from dtcond.dt.relabel import esper_labels

    data, cfg = gamble["data"], EsperConfig(hidden=16, cluster_steps=20, return_steps=20)
    a, _ = esper_labels(data.trajectories, data.stats, cfg, seed=3)
    b, _ = esper_labels(data.trajectories, data.stats, cfg, seed=3)
    c, _ = esper_labels(data.trajectories, data.stats, cfg, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))



def test_one_step_episodes_with_batch_size_one_get_a_one_line_error(gamble):
    import dataclasses

    from dtcond import DtcondError
    from dtcond.config import EsperConfig
    from dtcond.dt.relabel import esper_labels

    data = gamble["data"]
    first_steps = [dataclasses.replace(t, observations=t.observations[:1], actions=t.actions[:1], rewards=t.rewards[:1],
                                       returns_to_go=t.returns_to_go[:1], timesteps=t.timesteps[:1]) for t in data.trajectories[:4]]
    with pytest.raises(DtcondError, match="esper.batch_size=1 needs episodes of at least 2 steps"):
        esper_labels(first_steps, data.stats, EsperConfig(batch_size=1, hidden=8, cluster_steps=2, return_steps=2), seed=0)
    labels, _ = esper_labels(first_steps, data.stats, EsperConfig(batch_size=2, hidden=8, cluster_steps=2, return_steps=2), seed=0)
    assert [len(a) for a in labels] == [1, 1, 1, 1]

def test_relabelled_bundle_keeps_labels_and_resolves_targets_against_them(gamble, tmp_path):
    import dtcond
    from dtcond.datasets.loading import load
    from dtcond.rollout.evaluation import evaluate
    from dtcond.dt.relabel import LABELS_FILE, load_labels
    from dtcond.targets import parse

    with minari_at(gamble["root"] / "minari"):
        run = dtcond.train(GAMBLE, tmp_path / "run", relabel="esper", esper=QUICK, model=dict(context_len=3, n_layer=1, n_embd=16),
                           data=dict(batch_size=16, steps_per_epoch=10), trainer=dict(max_steps=10, enable_progress_bar=False, logger=False))
        raw = load(GAMBLE).stats.episode_returns
    labels, meta = load_labels(run.bundle)
    assert (run.bundle / LABELS_FILE).is_file() and meta["key"]["method"] == "esper"
    assert [len(a) for a in labels] == [len(t) for t in gamble["data"].trajectories]
    policy = dtcond.load_policy(run.bundle)
    assert policy.kind == "dt" and policy.label == "dt:esper"
    assert policy.stats.episode_returns == sorted(float(a[0]) for a in labels)
    assert policy.stats.extra["relabel"]["raw_episode_returns"] == raw
    best = parse("n1.0").resolve(policy.stats)
    assert best.value == pytest.approx(max(a[0] for a in labels)) and best.value < max(raw)
    # the Lightning checkpoint carries the same stats
    assert dtcond.load_policy(run.last_checkpoint).stats.episode_returns == policy.stats.episode_returns
    # rollouts count the env's own rewards, not labels
    recs = evaluate(policy, ["n1.0"], episodes=20, seed=0)
    assert {r["target"] for r in recs} == {best.value}
    real = {a + b + c for a, b, c in itertools.product([1.0, 6.0, -2.0, -1.0], repeat=3)}  # what 3 rounds can pay
    assert all(r["episode_return"] in real for r in recs)


def test_a_resumed_run_reuses_its_labels_and_a_plain_bundle_has_none(gamble, tmp_path):
    import dtcond
    from dtcond.dt.relabel import LABELS_FILE, load_labels

    tiny = dict(model=dict(context_len=3, n_layer=1, n_embd=16), data=dict(batch_size=16, steps_per_epoch=5))
    with minari_at(gamble["root"] / "minari"):
        dtcond.train(GAMBLE, tmp_path / "r", relabel="esper", esper=dict(hidden=16, cluster_steps=10, return_steps=10),
                     trainer=dict(max_steps=5, enable_progress_bar=False, logger=False), **tiny)
        first = (tmp_path / "r" / LABELS_FILE).stat().st_mtime_ns
        dtcond.train(GAMBLE, tmp_path / "r", relabel="esper", esper=dict(hidden=16, cluster_steps=10, return_steps=10),
                     trainer=dict(max_steps=10, enable_progress_bar=False, logger=False), **tiny)
        assert (tmp_path / "r" / LABELS_FILE).stat().st_mtime_ns == first
        # a checkpoint trained on these labels is never resumed on other labels, or on none
        with pytest.raises(dtcond.DtcondError, match="holds a checkpoint trained on other labels"):
            dtcond.train(GAMBLE, tmp_path / "r", relabel="esper", esper=dict(hidden=16, cluster_steps=11, return_steps=10),
                         trainer=dict(max_steps=15, enable_progress_bar=False, logger=False), **tiny)
        with pytest.raises(dtcond.DtcondError, match="was trained on relabelled returns"):
            dtcond.train(GAMBLE, tmp_path / "r", trainer=dict(max_steps=15, enable_progress_bar=False, logger=False), **tiny)
        assert (tmp_path / "r" / LABELS_FILE).stat().st_mtime_ns == first
        plain = dtcond.train(GAMBLE, tmp_path / "p", trainer=dict(max_steps=5, enable_progress_bar=False, logger=False), **tiny)
    policy = dtcond.load_policy(plain.bundle)
    assert policy.label == "dt" and "relabel" not in policy.stats.extra
    with pytest.raises(dtcond.DtcondError, match="only a policy trained with relabel=esper"):
        load_labels(plain.bundle)


def test_cli_trains_a_relabelled_dt(gamble, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(gamble["root"] / "minari"))
    out = run_cli("train", f"dataset.id={GAMBLE}", "dataset.name=gamble", "relabel=esper", "esper.cluster_steps=20",
                  "esper.return_steps=20", "esper.hidden=16", "model=tiny", "model.context_len=3", "trainer.max_steps=5",
                  "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hydra" / "policy" / "labels.safetensors").is_file()


def test_comparison_config_checks_relabel_options(tmp_path):
    from dtcond import DtcondError
    from dtcond.config import ComparisonConfig, merge

    base = {"env": {"name": "gamble", "id": "dtcond/Gamble-v0"}, "dataset_id": GAMBLE, "work_dir": str(tmp_path)}
    config = merge(ComparisonConfig, base, {"relabel": ["esper"], "esper": {"clusters": 4}})
    assert config.relabel == ["esper"] and config.esper.clusters == 4
    with pytest.raises(DtcondError, match="relabel must list distinct methods"):
        merge(ComparisonConfig, base, {"relabel": ["magic"]})
    with pytest.raises(DtcondError, match="esper.clusters must be >= 2"):
        merge(ComparisonConfig, base, {"relabel": ["esper"], "esper": {"clusters": 1}})
