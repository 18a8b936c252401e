"""Training, checkpoints and loading: learning happens, runs resume, loading runs no code."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import lightning as L
import pytest
import torch

from conftest import rollout_actions, run_cli
from dtcond.families import load_policy
from dtcond.common.errors import DtcondError
from dtcond.dt.training import DTModule, model_config_for, train

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)


@pytest.fixture
def tiny_run(cartpole_dataset, tmp_path):
    return train(cartpole_dataset, tmp_path / "run", model=TINY, data=dict(batch_size=16, steps_per_epoch=10, val_windows=32),
                 trainer=dict(max_steps=30, **QUIET), checkpoint_every=10, export="last")  # the bundle is last.ckpt's weights


def test_loss_falls_when_overfitting_one_batch(cartpole_dataset):
    from dtcond.datasets.loading import load
    from dtcond.dt.datamodule import WindowDataModule

    data = load(cartpole_dataset)
    dm = WindowDataModule(cartpole_dataset, window_len=8, batch_size=32, data=data)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(0)
    module = DTModule(model_config_for(data.stats, **TINY).to_dict(), data.stats.to_dict(), lr=3e-3, warmup_steps=1)
    opt = module.configure_optimizers()["optimizer"]
    first = module.action_loss(batch).item()
    for _ in range(150):
        loss = module.action_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_weight_decay_applies_to_matrices_only(cartpole_dataset):
    from dtcond.datasets.loading import load

    data = load(cartpole_dataset)
    module = DTModule(model_config_for(data.stats, **TINY).to_dict(), data.stats.to_dict(), weight_decay=0.1)
    decayed, plain = module.configure_optimizers()["optimizer"].param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])


@pytest.mark.parametrize("decay, final", [("cosine", 0.2), ("none", 1.0)])
def test_the_learning_rate_decays_to_its_floor_only_when_asked(cartpole_dataset, tmp_path, decay, final):
    r = train(cartpole_dataset, tmp_path / decay, model=TINY, data=dict(batch_size=8, steps_per_epoch=10, val_windows=32),
              optim=dict(lr=1e-2, warmup_steps=4, decay=decay, min_lr_ratio=0.2), trainer=dict(max_steps=20, **QUIET),
              checkpoint_every=10)
    ckpt = torch.load(r.last_checkpoint, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 20
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-2 * final)


def test_fast_dev_run(cartpole_dataset, tmp_path):
    r = train(cartpole_dataset, tmp_path / "fdr", model=TINY, data=dict(batch_size=8), trainer=dict(fast_dev_run=True, **QUIET))
    assert r.global_step == 1 and (r.bundle / "card.json").exists()


def test_save_load_gives_identical_actions_for_bundle_and_ckpt(tiny_run):
    from dtcond.dt.policy import ConditionedPolicy

    ckpt = torch.load(tiny_run.last_checkpoint, weights_only=True)
    module = DTModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    in_memory = ConditionedPolicy(module.model, module.stats)
    reference = rollout_actions(in_memory)
    assert rollout_actions(load_policy(tiny_run.bundle)) == reference
    assert rollout_actions(load_policy(tiny_run.bundle / "card.json")) == reference
    assert rollout_actions(load_policy(tiny_run.last_checkpoint)) == reference


def test_the_bundle_describes_itself(tiny_run, cartpole_dataset):
    card = json.loads((tiny_run.bundle / "card.json").read_text())
    assert card["format"] == "dtcond-policy" and card["env"]["id"] == "CartPole-v1"
    assert card["stats"]["dataset_id"] == cartpole_dataset and len(card["stats"]["episode_returns"]) == 20
    assert card["model"]["context_len"] == 4 and card["model"]["return_scale"] == 500.0
    policy = load_policy(tiny_run.bundle)
    assert policy.stats.return_quantile(1.0) == card["stats"]["episode_returns"][-1]


def test_resume_continues_the_step_count(cartpole_dataset, tmp_path):
    args = dict(model=TINY, data=dict(batch_size=8, steps_per_epoch=10, val_windows=32), checkpoint_every=10)
    first = train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=20, **QUIET), **args)
    assert first.global_step == 20
    resumed = train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=35, **QUIET), **args)
    assert resumed.global_step == 35
    assert torch.load(resumed.last_checkpoint, weights_only=True)["global_step"] == 35
    with pytest.raises(DtcondError, match="last.ckpt exists"):
        train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=40, **QUIET), resume=False, **args)


def test_a_rerun_with_the_same_seed_and_threads_gives_the_same_weights_and_another_seed_does_not(cartpole_dataset, tmp_path):
    from safetensors.torch import load_file

    args = dict(model=TINY, data=dict(batch_size=8, steps_per_epoch=10, val_windows=32), trainer=dict(max_steps=20, **QUIET))
    weights = {name: load_file(str(train(cartpole_dataset, tmp_path / name, seed=seed, **args).bundle / "model.safetensors"))
               for name, seed in (("a", 3), ("b", 3), ("c", 4))}
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])  # bitwise: a committed result reruns exactly
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_a_policy_refuses_an_env_with_other_spaces(tiny_run):
    policy = load_policy(tiny_run.bundle)
    with pytest.raises(DtcondError, match="do not match the policy"):
        policy.check_env(gym.make("Pendulum-v1"))
    with pytest.raises(DtcondError, match="do not match the policy"):
        policy.check_env(gym.make("Acrobot-v1"))  # Discrete too, but 6-d observations and 3 actions


def test_truncated_and_corrupt_files_are_refused(tiny_run, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_run.bundle, bundle)
    weights = (bundle / "model.safetensors").read_bytes()
    (bundle / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(DtcondError, match="corrupt or truncated"):
        load_policy(bundle)
    (bundle / "model.safetensors").write_bytes(weights)
    (bundle / "card.json").write_text("{not json")
    with pytest.raises(DtcondError, match="not valid JSON"):
        load_policy(bundle)
    ckpt = tmp_path / "cut.ckpt"
    ckpt.write_bytes(tiny_run.last_checkpoint.read_bytes()[:5000])
    with pytest.raises(DtcondError, match="corrupt or truncated"):
        load_policy(ckpt)
    with pytest.raises(DtcondError, match="no policy at"):
        load_policy(tmp_path / "missing")


def test_a_bundle_whose_card_and_weights_disagree_is_refused(tiny_run, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_run.bundle, bundle)
    card = json.loads((bundle / "card.json").read_text())
    card["model"]["n_embd"] = 32
    (bundle / "card.json").write_text(json.dumps(card))
    with pytest.raises(DtcondError, match="weights do not match the model config"):
        load_policy(bundle)


def test_a_pickle_payload_in_a_checkpoint_runs_no_code(tiny_run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = torch.load(tiny_run.last_checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["evil"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    with pytest.raises(DtcondError, match="refusing .*pickled objects"):
        load_policy(evil)
    assert not marker.exists()


def test_context_longer_than_any_episode_is_refused(cartpole_dataset, tmp_path):
    with pytest.raises(DtcondError, match="exceeds the dataset's longest episode"):
        train(cartpole_dataset, tmp_path / "x", model={**TINY, "context_len": 100000}, trainer=dict(max_steps=1, **QUIET))


def test_cli_trains_resumes_and_rejects_unknown_keys(tmp_path, cartpole_dataset):
    base = ("train", "model=tiny", f"dataset.id={cartpole_dataset}", "data.batch_size=8", "data.steps_per_epoch=10",
            "data.val_windows=32", "checkpoint_every=10", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5")
    out = run_cli(*base, "trainer.max_steps=20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trained test/cartpole/mix-v0: 20 steps" in out.stdout
    out = run_cli(*base, "trainer.max_steps=30", cwd=tmp_path)
    assert out.returncode == 0 and "30 steps" in out.stdout, out.stderr
    assert out.stderr.strip() == "", out.stderr  # resuming its own run dir is what the user asked for: no warnings
    assert load_policy(tmp_path / "hydra" / "policy").config.context_len == 4

    bad = run_cli(*base, "+model.widht=3", cwd=tmp_path)
    assert bad.returncode == 2 and "widht" in bad.stderr.strip().splitlines()[-1]
    bad = run_cli(*base, "trainer.max_stepz=3", cwd=tmp_path)
    assert bad.returncode != 0 and "max_stepz" in bad.stderr
    bad = run_cli(*base, "model=huge", cwd=tmp_path)
    assert bad.returncode != 0 and "huge" in bad.stderr


def compose_config(name: str, overrides=()):
    """``conf/<name>.yaml`` composed by Hydra with the command line ``overrides``."""
    from hydra import compose, initialize_config_dir

    from dtcond.cli import conf_dir
    from dtcond.config import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_every_config_group_composes_into_its_dataclass():
    from dtcond.cli import conf_dir
    from dtcond.config import CollectConfig, ComparisonConfig, TrainConfig, from_hydra

    groups = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in conf_dir().iterdir() if g.is_dir()}
    assert {"env", "dataset", "model", "trainer", "logger", "experiment"} <= set(groups)
    import yaml

    for name in ("dataset", "model", "trainer", "logger"):
        for option in groups[name]:
            cfg = from_hydra(compose_config("train", [f"{name}={option}"]))
            assert isinstance(cfg, TrainConfig)
            preset = yaml.safe_load((conf_dir() / name / f"{option}.yaml").read_text()) or {}
            section = getattr(cfg, name)
            for key, value in preset.items():  # every value the preset writes reaches its typed section
                if key == "defaults":
                    continue
                got = getattr(section, key)
                got = got if not hasattr(got, "__dataclass_fields__") else {k: getattr(got, k) for k in value}
                assert got == value, f"{name}={option}: {key} is {got!r}, the preset says {value!r}"
    assert {from_hydra(compose_config("train", [f"logger={k}"])).logger.kind for k in groups["logger"]} == set(groups["logger"])
    for option in groups["experiment"]:
        assert from_hydra(compose_config("train", [f"experiment={option}"])).trainer.max_steps > 0
    for option in groups["env"]:
        cfg = from_hydra(compose_config("collect", [f"env={option}"]))
        assert isinstance(cfg, CollectConfig) and cfg.behavior and cfg.dataset_id == f"dtcond/{option}/mixture-v0"
    assert isinstance(from_hydra(compose_config("demo")), ComparisonConfig)


def test_the_library_defaults_are_the_cli_defaults():
    import inspect

    from dtcond.config import DataConfig, OptimConfig, TrainConfig, from_hydra
    from dtcond.dt.datamodule import WindowDataModule

    assert from_hydra(compose_config("train")) == TrainConfig()
    defaults = TrainConfig()
    assert (defaults.model.n_embd, defaults.trainer.accelerator, defaults.trainer.max_steps) == (64, "cpu", 3000)  # small, cpu
    module_defaults = {k: p.default for k, p in inspect.signature(DTModule.__init__).parameters.items()}
    optim_keys = ("lr", "weight_decay", "warmup_steps", "decay", "min_lr_ratio")
    assert {k: module_defaults[k] for k in optim_keys} == {k: getattr(OptimConfig(), k) for k in optim_keys}
    assert list(module_defaults["betas"]) == OptimConfig().betas
    from dtcond.config import ModelConfig
    from dtcond.dt.model import DTConfig

    shared = [k for k, v in vars(ModelConfig()).items() if v is not None and k != "encoder"]  # "auto"/None resolve per dataset
    assert len(shared) >= 9
    assert {k: getattr(DTConfig(obs_dim=1, act_dim=1), k) for k in shared} == {k: getattr(ModelConfig(), k) for k in shared}
    dm_defaults = {k: p.default for k, p in inspect.signature(WindowDataModule.__init__).parameters.items()}
    data = DataConfig()
    assert all(dm_defaults[k] == getattr(data, k) for k in ("batch_size", "steps_per_epoch", "val_windows", "val_fraction", "num_workers",
                                                          "episode_weighting", "on_device"))


def test_the_schemas_name_only_real_lightning_and_model_arguments():
    import inspect

    import lightning as L

    from dtcond.config import TRAINER_LOOP_KEYS, ModelConfig, TrainerConfig
    from dtcond.dt.model import DTConfig

    lightning_args = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(TrainerConfig.__dataclass_fields__) - set(TRAINER_LOOP_KEYS) <= lightning_args
    assert not set(TRAINER_LOOP_KEYS) & lightning_args and set(TRAINER_LOOP_KEYS) <= set(TrainerConfig.__dataclass_fields__)
    assert set(ModelConfig.__dataclass_fields__) <= set(DTConfig.__dataclass_fields__)


def test_progress_bar_counts_epochs_out_of_a_finite_total(cartpole_dataset, tmp_path):
    import lightning as L

    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append((trainer.max_epochs, trainer.progress_bar_callback.train_progress_bar.desc))

    r = train(cartpole_dataset, tmp_path / "bar", model=TINY, data=dict(batch_size=8, steps_per_epoch=10, val_windows=32),
              trainer=dict(max_steps=25, enable_model_summary=False, logger=False), callbacks=[Watch()])
    assert r.global_step == 25
    assert {m for m, _ in seen} == {3} and [d.rstrip(": ") for _, d in seen][::10] == ["Epoch 0/2", "Epoch 1/2", "Epoch 2/2"]


def test_train_refuses_unknown_options_and_wrong_types_in_one_line(cartpole_dataset, tmp_path):
    with pytest.raises(DtcondError, match=r"unknown options \['trianer'\]"):
        train(cartpole_dataset, tmp_path / "x", trianer={"max_steps": 1})
    with pytest.raises(DtcondError, match="unknown config key model.widht; ModelConfig takes: context_len"):
        train(cartpole_dataset, tmp_path / "x", model={"widht": 3})
    with pytest.raises(DtcondError, match="config key trainer.max_steps: Value 'many'"):
        train(cartpole_dataset, tmp_path / "x", trainer={"max_steps": "many"})
    with pytest.raises(DtcondError, match="trainer.max_steps must be a positive integer"):
        train(cartpole_dataset, tmp_path / "x", trainer={"max_steps": -1})
    assert not (tmp_path / "x").exists()


def test_a_discount_is_refused_everywhere_in_one_line(cartpole_dataset):
    from dtcond.config import DatasetConfig
    from dtcond.datasets.loading import load

    with pytest.raises(DtcondError, match="dataset.gamma=0.99 is not supported: targets, return quantiles and rollouts use undiscounted"):
        DatasetConfig(gamma=0.99)
    with pytest.raises(DtcondError, match="gamma=0.9 is not supported"):
        load(cartpole_dataset, gamma=0.9)


def test_train_takes_a_typed_config_and_overrides_on_top(cartpole_dataset, tmp_path):
    from dtcond.config import DataConfig, ModelConfig, TrainConfig, TrainerConfig

    config = TrainConfig(model=ModelConfig(**TINY), data=DataConfig(batch_size=8, steps_per_epoch=5),
                         trainer=TrainerConfig(max_steps=50, enable_progress_bar=False, logger=False))
    r = train(cartpole_dataset, tmp_path / "typed", config=config, trainer={"max_steps": 7})
    assert r.global_step == 7 and load_policy(r.bundle).config.n_embd == 16


@pytest.mark.slow
def test_train_with_no_options_trains_the_cpu_preset_and_stops(cartpole_dataset, tmp_path):
    from dtcond.config import TrainConfig

    r = train(cartpole_dataset, tmp_path / "default")
    preset = TrainConfig()
    assert (preset.trainer.max_steps, preset.export, preset.early_stopping) == (3000, "best", 4)
    assert r.best_step <= r.global_step <= 3000  # up to the preset's steps, or stopped early; the best step exported
    policy = load_policy(r.bundle)
    assert (policy.config.n_embd, policy.config.context_len) == (64, 20)
    assert (tmp_path / "default" / "logs" / "metrics.csv").exists()


def two_steps(dataset: str, out, logger: dict):
    return train(dataset, out, model=TINY, data=dict(batch_size=8, steps_per_epoch=2, val_windows=8),
                 trainer=dict(max_steps=2, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False),
                 logger=logger)


def test_csv_logger_is_the_default(cartpole_dataset, tmp_path):
    import csv

    two_steps(cartpole_dataset, tmp_path / "csv", {})
    rows = list(csv.DictReader(open(tmp_path / "csv" / "logs" / "metrics.csv")))
    assert [r["step"] for r in rows if r.get("train/loss")] == ["0", "1"]
    assert any(r.get("val/loss") for r in rows)


def test_tensorboard_logger_writes_event_files(cartpole_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    two_steps(cartpole_dataset, tmp_path / "tb", {"kind": "tensorboard"})
    events = EventAccumulator(str(tmp_path / "tb" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]


def test_mlflow_logger_writes_a_local_store(cartpole_dataset, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    two_steps(cartpole_dataset, tmp_path / "ml", {"kind": "mlflow", "project": "test-dtcond"})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test-dtcond")
    (run,) = client.search_runs([experiment.experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1]
    assert run.info.status == "FINISHED"


def test_wandb_logger_runs_offline(cartpole_dataset, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # not the user's ~/.config/wandb
    first = two_steps(cartpole_dataset, tmp_path / "wb", {"kind": "wandb"})
    second = two_steps(cartpole_dataset, tmp_path / "wb2", {"kind": "wandb"})  # a new run, not the first one reused
    assert first.global_step == second.global_step == 2
    for out in (tmp_path / "wb", tmp_path / "wb2"):
        (run_dir,) = (out / "wandb").glob("offline-run-*")
        assert list(run_dir.glob("run-*.wandb"))


def test_rollout_callback_logs_what_evaluate_returns(cartpole_dataset, tmp_path):
    import csv

    import numpy as np

    from dtcond.rollout.evaluation import evaluate

    run = train(cartpole_dataset, tmp_path / "cb", model=TINY, data=dict(batch_size=8, steps_per_epoch=10, val_windows=32),
                seed=3,
                trainer=dict(max_steps=10, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1),
                rollouts=dict(every_n_steps=5, targets=["q0.2", "q0.9"], episodes=2))  # as `dtcond train rollouts.every_n_steps=5`
    rows = list(csv.DictReader(open(tmp_path / "cb" / "logs" / "metrics.csv")))
    logged = {(int(r["step"]), spec): float(r[f"rollout/{spec}"])
              for r in rows for spec in ("q0.2", "q0.9") if r.get(f"rollout/{spec}")}
    assert sorted(logged) == [(5, "q0.2"), (5, "q0.9"), (10, "q0.2"), (10, "q0.9")]  # each target, every 5 steps, once
    # The last rollout ran the final weights with the run's seed: the exported policy, evaluated alike, returns the same.
    final = evaluate(load_policy(run.bundle), ["q0.2", "q0.9"], episodes=2, seed=3)
    for spec in ("q0.2", "q0.9"):
        assert logged[(10, spec)] == pytest.approx(np.mean([r["episode_return"] for r in final if r["target_spec"] == spec]))


@pytest.mark.parametrize("head", ["bins", "mse"])
def test_the_binned_head_imitates_action_noise_at_the_requested_return(tmp_path, head):
    # Half the episodes play a = 0.5 every step and return 20; the other half play uniform noise and
    # return 0. Conditioned on 20 the policy should play 0.5; conditioned on 0 it should be as noisy as
    # the data. A deterministic mean head cannot be noisy: it is the case the binned head exists for.
    import gymnasium as gym
    import numpy as np

    from conftest import write_buffers

    rng = np.random.default_rng(0)
    episodes = []
    for i in range(40):
        skilled = i % 2 == 0
        actions = np.full((20, 1), 0.5, np.float32) if skilled else rng.uniform(-1, 1, (20, 1)).astype(np.float32)
        episodes.append({"observations": rng.normal(size=(21, 2)).astype(np.float32), "actions": actions,
                         "rewards": np.full(20, 1.0 if skilled else 0.0)})
    write_buffers("test/noise/mix-v0", episodes, observation_space=gym.spaces.Box(-10, 10, (2,)),
                  action_space=gym.spaces.Box(-1, 1, (1,)))
    run = train("test/noise/mix-v0", tmp_path / head, model={**TINY, "action_head": head, "action_bins": 16},
                data=dict(batch_size=32, steps_per_epoch=100), optim=dict(lr=3e-3, warmup_steps=20),
                trainer=dict(max_steps=300, enable_progress_bar=False))
    policy = load_policy(run.bundle)
    obs = rng.normal(size=(64, 2)).astype(np.float32)
    actions = {}
    for target in (20.0, 0.0):
        a, _, _ = policy.act_batch(policy.begin(64), obs, np.full(64, target), rng.random((64, 2)))
        actions[target] = np.asarray(a).reshape(-1)
    skilled, noisy = actions[20.0], actions[0.0]
    near = 0.15  # a bin is 0.125 wide, and the binned head samples uniformly inside its bin
    assert np.mean(np.abs(skilled - 0.5) < near) > 0.8  # imitates the skilled episodes
    if head == "bins":  # imitates the noise: spread like U(-1, 1) (std 0.58), not a point
        assert noisy.std() > 0.4 and np.mean(np.abs(noisy - 0.5) < near) < 0.35
    else:  # the mean head regresses the noise to its mean: nothing like the data's spread
        assert noisy.std() < 0.35  # 0.16-0.30 over training seeds 0-3 (the binned head: 0.52-0.59)


def test_a_bundle_written_before_the_binned_head_loads_as_the_mean_head(pendulum_dataset, tmp_path):
    # Cards written before `action_head` existed describe the deterministic head; they must still load.
    import numpy as np

    run = train(pendulum_dataset, tmp_path / "old", model={**TINY, "action_head": "mse"},
                data=dict(batch_size=8, steps_per_epoch=5, val_windows=32), trainer=dict(max_steps=5, enable_progress_bar=False))
    card_path = run.bundle / "card.json"
    card = json.loads(card_path.read_text())
    del card["model"]["action_head"], card["model"]["action_bins"]
    card_path.write_text(json.dumps(card))
    old, new = load_policy(run.bundle), load_policy(run.last_checkpoint)
    assert old.config.action_head == "mse" and old.draws_per_step == 0
    obs = np.zeros(3, dtype=np.float32)
    old.reset(target=-200.0)
    new.reset(target=-200.0)
    np.testing.assert_array_equal(old.act(obs), new.act(obs))


class GradNorm(L.Callback):
    """The gradient norm each optimizer step applied (gradients stay in place until the next step's zero_grad)."""

    def __init__(self):
        self.norms, self.fused = [], set()

    def on_train_batch_end(self, trainer, pl_module, *args):
        grads = [p.grad.float().norm() for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.stack(grads).norm().item())
        self.fused |= {bool(o.defaults.get("fused")) for o in trainer.optimizers}


@pytest.mark.parametrize("precision, dataset", [("bf16-mixed", "cartpole_dataset"), ("bf16-mixed", "pendulum_dataset"),
                                                ("32-true", "pendulum_dataset")])
def test_every_precision_trains_with_gradient_clipping(request, tmp_path, precision, dataset):
    # Lightning refuses to clip a fused AdamW's gradients under mixed precision; dtcond must pick one it can clip.
    clip = 1e-3  # far below any gradient norm at init, so every step is clipped
    norms = GradNorm()
    r = train(request.getfixturevalue(dataset), tmp_path / precision, model=TINY,
              data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
              trainer=dict(max_steps=4, precision=precision, gradient_clip_val=clip, **QUIET), callbacks=[norms])
    assert r.global_step == 4 and len(norms.norms) == 4
    assert max(norms.norms) <= clip * 1.01
    assert norms.fused == {precision == "32-true"}  # the fused kernel wherever Lightning can clip it
    policy = load_policy(r.bundle)
    assert torch.isfinite(torch.cat([p.flatten() for p in policy.model.parameters()])).all()


def test_fp16_with_a_grad_scaler_clips_unscaled_gradients(cartpole_dataset):
    # Lightning turns precision="16-mixed" on CPU into bf16, so the scaler's path (unscale, then clip)
    # is run through its plugin directly: the same code a GPU's 16-mixed runs.
    from lightning.pytorch.plugins.precision import MixedPrecision

    from dtcond.datasets.loading import load
    from dtcond.dt.datamodule import WindowDataModule

    data = load(cartpole_dataset)
    dm = WindowDataModule(cartpole_dataset, window_len=8, batch_size=8, steps_per_epoch=5, data=data)
    module = DTModule(model_config_for(data.stats, **TINY).to_dict(), data.stats.to_dict())
    norms = GradNorm()
    trainer = L.Trainer(accelerator="cpu", plugins=[MixedPrecision("16-mixed", "cpu")], gradient_clip_val=1e-3, max_steps=4,
                        enable_checkpointing=False, callbacks=[norms], **QUIET)
    trainer.fit(module, datamodule=dm)
    assert trainer.precision == "16-mixed" and trainer.global_step == 4
    assert max(norms.norms) <= 1e-3 * 1.01 and norms.fused == {False}


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_ddp_on_two_cpu_processes_trains_and_writes_one_bundle(tmp_path, cartpole_dataset):
    # `trainer=ddp` as on GPUs, but 2 CPU processes talking over gloo; Lightning reruns the CLI for rank 1.
    import csv

    out = run_cli("train", "model=tiny", f"dataset.id={cartpole_dataset}", "trainer=ddp", "trainer.accelerator=cpu",
                  "trainer.devices=2", "trainer.max_steps=6", "data.batch_size=8", "data.steps_per_epoch=4",
                  "data.val_windows=16", "checkpoint_every=3", "trainer.enable_progress_bar=false",
                  "trainer.log_every_n_steps=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(f"trained {cartpole_dataset}: 6 steps") == 2  # each rank finished the run
    run = tmp_path / "hydra"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    policy = load_policy(run / "policy")
    assert rollout_actions(policy) == rollout_actions(load_policy(run / "checkpoints" / "last.ckpt"))
    # The distributed sampler gave each rank half of an epoch's 4 batches (different windows: test_data.py),
    # so an epoch is 2 steps.
    rows = [r for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r["train/loss"]]
    assert [int(r["epoch"]) for r in rows] == [0, 0, 1, 1, 2, 2]
