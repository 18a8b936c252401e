"""Fidelity to the data: the forward KL logged in training, the K-window references, the exported checkpoint,
and exact scoring of a per-episode target at any data size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import logsumexp

import dtcond
from dtcond.behavior.mixture import Component
from dtcond.dt.datamodule import WindowDataModule
from dtcond.rollout.evaluation import evaluate, marginal_over_targets
from dtcond.behavior.likelihood import DataLikelihood, WindowPosteriorPolicy
from dtcond.analysis.roaming import RoamingScorer, StateIndex
from dtcond.rl.behavior_model import fit_behavior_model
from dtcond.dt.training import DTModule, ground_truth_reference, model_config_for, train

from conftest import minari_at

TINY = dict(context_len=4, n_layer=1, n_head=1, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)
TOMATO = "test/tomato/fidelity-v0"
MIXTURE = [Component("tomato_gardener", 0.0, 0.3), Component("tomato_gardener", 0.3, 0.2), Component("tomato_stumbler", 0.2, 0.2),
           Component("tomato_gamer", 0.1, 0.1), Component("random", 0.0, 0.2)]


@pytest.fixture(scope="module")
def tomato(tmp_path_factory):
    root = tmp_path_factory.mktemp("tomato")
    with minari_at(root / "minari"):
        dtcond.collect("dtcond/TomatoGarden-v0", MIXTURE, episodes=40, dataset_id=TOMATO, seed=0, progress=False)
        data = dtcond.load_dataset(TOMATO)
        behavior, _ = fit_behavior_model(data, steps=20)
        scorer = RoamingScorer(data.stats, behavior, StateIndex(data), DataLikelihood.for_dataset(TOMATO, stats=data.stats))
    return root, data, scorer


def test_the_marginal_over_targets_takes_one_pass_per_distinct_return_and_equals_the_per_return_sum():
    rng = np.random.default_rng(0)
    support = np.sort(rng.integers(0, 12, size=500).astype(float))  # 500 targets, at most 12 distinct
    calls = []

    def log_prob(targets):
        calls.append(len(targets))
        return -0.3 * np.asarray(targets) ** 1.5

    deduplicated = marginal_over_targets(log_prob, support)
    per_return = float(logsumexp(-0.3 * support ** 1.5) - np.log(len(support)))
    assert deduplicated == pytest.approx(per_return, abs=1e-10)
    assert calls == [len(np.unique(support))]


def test_the_posterior_predictive_sums_to_the_trajectory_likelihood(tomato):
    _, data, scorer = tomato
    lik = scorer.likelihood
    for traj in data.trajectories[:5]:
        steps = lik.predictive_log_probs(traj.observations, traj.actions)
        assert steps.shape == (len(traj),) and (steps <= 1e-12).all()
        assert steps.sum() == pytest.approx(lik.log_prob(traj.observations, traj.actions), abs=1e-8)


def _val_batch(tomato, model_cfg):
    root, data, _ = tomato
    with minari_at(root / "minari"):
        reference, why = ground_truth_reference(TOMATO, data.stats, model_cfg)
    assert reference is not None, why
    dm = WindowDataModule(TOMATO, window_len=2 * model_cfg.context_len, data=data, val_reference=reference, val_windows=64,
                          val_fraction=0.25)
    dm.setup()
    return next(iter(dm.val_dataloader()))


def _logged_kl(module, batch) -> float:
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    module.validation_step(batch, 0)
    assert logged["val/nll"] - logged["val/data_nll"] == pytest.approx(logged["val/kl_data"], abs=1e-6)
    return logged["val/kl_data"]


def test_the_data_as_its_own_model_has_forward_kl_zero_and_an_untrained_model_does_not(tomato):
    """val/kl_data is the model's NLL less the data's exact conditional NLL on the same positions: the mixture's own
    posterior predictive as "the model" scores 0, an untrained network scores far above it."""
    _, data, _ = tomato
    torch.manual_seed(0)
    cfg = model_config_for(data.stats, **TINY)
    module = DTModule(cfg.to_dict(), data.stats.to_dict(), condition_on_return=False)
    batch = _val_batch(tomato, cfg)
    assert batch["mask"].sum() > 100
    untrained = _logged_kl(module, batch)
    assert untrained > 0.1
    module.step_losses = lambda b: -b["data_logp"]  # the data's own conditional as the model's prediction
    assert _logged_kl(module, batch) == pytest.approx(0.0, abs=1e-6)


def test_a_return_conditioned_model_logs_a_gap_not_a_kl(tomato):
    _, data, _ = tomato
    cfg = model_config_for(data.stats, **TINY)
    module = DTModule(cfg.to_dict(), data.stats.to_dict(), condition_on_return=True)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(torch.as_tensor(value).detach()))
    module.validation_step(_val_batch(tomato, cfg), 0)
    assert "val/nll_gap" in logged and "val/kl_data" not in logged


def test_the_window_reference_pays_less_as_the_window_grows_and_nothing_with_the_whole_episode(tomato):
    """The posterior predictive given the last K steps, rolled out on the same env seeds: 10 steps forget more
    than 50, and the whole episode is the data itself (KL exactly 0 on every episode)."""
    _, data, scorer = tomato
    kl = {}
    for K in (10, 50, None):
        records = evaluate(WindowPosteriorPolicy(scorer.likelihood, data.stats, K), None, episodes=40, seed=7, scorer=scorer)
        kl[K] = np.array([r["trajectory_kl"] for r in records], dtype=float)
    assert np.abs(kl[None]).max() < 1e-8
    assert kl[10].mean() > kl[50].mean() + 1.0
    assert kl[50].mean() < 2.0


def _spoiling_callback(after: int):
    """From step ``after`` on, noise on every weight each step: later validations only get worse."""
    import lightning as L

    class Spoil(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step > after:
                with torch.no_grad():
                    for p in pl_module.model.parameters():
                        p.add_(torch.randn_like(p) * 0.5)

    return Spoil()


def test_the_best_validation_checkpoint_is_the_one_exported(cartpole_dataset, tmp_path):
    run = train(cartpole_dataset, tmp_path / "run", model=TINY, data=dict(batch_size=16, steps_per_epoch=10),
                trainer=dict(max_steps=40, **QUIET), checkpoint_every=10, early_stopping=0, callbacks=[_spoiling_callback(12)])
    assert run.global_step == 40 and run.best_step == 10
    bundle = load_file(run.bundle / "model.safetensors")
    best = torch.load(run.out_dir / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    last = torch.load(run.last_checkpoint, weights_only=True)["state_dict"]
    for name, value in bundle.items():
        assert torch.equal(value, best[f"model.{name}"])
    assert any(not torch.equal(value, last[f"model.{name}"]) for name, value in bundle.items())
    card = json.loads((run.bundle / "card.json").read_text())
    assert card["extra"]["fidelity"]["best_step"] == 10 and card["extra"]["fidelity"]["export"] == "best"
    assert card["extra"]["fidelity"]["val"]["val/loss"] == pytest.approx(run.val_loss)
    assert card["extra"]["fidelity"]["val"] == _validate_again(run, cartpole_dataset, best)  # the exported weights' own


def _validate_again(run, dataset_id, state_dict) -> dict:
    """A fresh validation of ``state_dict`` on the run's own val windows (TINY, segment 2 x context, seed 0)."""
    import lightning as L

    from dtcond.datasets.loading import load

    module = DTModule(**torch.load(run.last_checkpoint, weights_only=True)["hyper_parameters"])
    module.load_state_dict(state_dict)
    data = load(dataset_id)
    reference, _ = ground_truth_reference(dataset_id, data.stats, module.config)
    dm = WindowDataModule(dataset_id, window_len=2 * module.config.context_len, batch_size=16, data=data, val_reference=reference)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}


def test_early_stopping_ends_a_run_whose_validation_loss_stops_falling(cartpole_dataset, tmp_path):
    run = train(cartpole_dataset, tmp_path / "run", model=TINY, data=dict(batch_size=16, steps_per_epoch=10),
                trainer=dict(max_steps=200, **QUIET), checkpoint_every=10, early_stopping=2, callbacks=[_spoiling_callback(12)])
    assert run.global_step == 30  # best at 10, no better at 20 and 30: stopped
    assert run.best_step == 10


def test_a_rerun_of_an_early_stopped_run_stays_stopped(cartpole_dataset, tmp_path):
    """The rerun (no spoiling now, so a further validation could only look better) resumes the finished run and takes
    no step: Lightning alone trained on to the next validation and exported whatever was best by then."""
    kwargs = dict(model=TINY, data=dict(batch_size=16, steps_per_epoch=10), trainer=dict(max_steps=200, **QUIET),
                  checkpoint_every=10, early_stopping=2)
    first = train(cartpole_dataset, tmp_path / "run", callbacks=[_spoiling_callback(12)], **kwargs)
    exported = load_file(first.bundle / "model.safetensors")
    again = train(cartpole_dataset, tmp_path / "run", **kwargs)
    assert (first.global_step, again.global_step, again.best_step) == (30, 30, 10)
    assert all(torch.equal(v, load_file(again.bundle / "model.safetensors")[k]) for k, v in exported.items())
    # checkpoints written with Lightning's own EarlyStopping keep their state under its key: it must restore here too
    from lightning.pytorch.callbacks import EarlyStopping

    from dtcond.dt.training import ResumableEarlyStopping

    assert ResumableEarlyStopping(monitor="val/loss", mode="min").state_key == EarlyStopping(monitor="val/loss", mode="min").state_key


def test_export_last_keeps_the_final_weights(cartpole_dataset, tmp_path):
    run = train(cartpole_dataset, tmp_path / "run", model=TINY, data=dict(batch_size=16, steps_per_epoch=10),
                trainer=dict(max_steps=20, **QUIET), checkpoint_every=10, export="last", early_stopping=0)
    bundle = load_file(run.bundle / "model.safetensors")
    last = torch.load(run.last_checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(v, last[f"model.{k}"]) for k, v in bundle.items())
    assert run.best_step is None


def test_the_per_step_decomposition_sums_to_the_trajectory_kl(tomato):
    """kl_by_step, the reverse KL by step, adds up to each episode's trajectory KL (the K=1 reference: the data's
    Markov marginal, which pays at some steps and not others)."""
    _, data, scorer = tomato
    records = evaluate(WindowPosteriorPolicy(scorer.likelihood, data.stats, 1), None, episodes=10, seed=3, scorer=scorer)
    for r in records:
        assert len(r["kl_by_step"]) == r["length"]
        assert sum(r["kl_by_step"]) == pytest.approx(r["trajectory_kl"], abs=1e-3)
    assert np.mean([r["trajectory_kl"] for r in records]) > 0.1


def test_the_fidelity_study_s_default_row_trains_what_dtcond_ships():
    """The study's row marked `default: true` is what `dtcond train` trains on `dtcond collect env=tomato`: change a
    training default or the preset's data size without rerunning the study and this fails."""
    import sys
    from pathlib import Path

    from dtcond.config import TrainConfig, env_preset

    here = Path(__file__).resolve().parents[1] / "experiments" / "fidelity"
    sys.path.insert(0, str(here))
    try:
        from run import Setting
    finally:
        sys.path.remove(str(here))
    import yaml

    settings = [Setting(**s) for s in yaml.safe_load((here / "config.yaml").read_text())["settings"]]
    (shipped,) = [s for s in settings if s.default]
    d = TrainConfig()
    assert shipped.episodes == env_preset("tomato").collect_episodes
    assert (shipped.context_len, shipped.segment_len or 2 * shipped.context_len, shipped.batch_size, shipped.steps) == \
        (d.model.context_len, d.data.segment_len or 2 * d.model.context_len, d.data.batch_size, d.trainer.max_steps)
    assert (shipped.dropout, shipped.weight_decay, shipped.decay) == (d.model.dropout, d.optim.weight_decay, d.optim.decay)
    assert set(shipped.families) == {"bc", "pct_bc", "dt"}
