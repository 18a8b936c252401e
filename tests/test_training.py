"""Training, checkpoints and loading: learning happens, runs resume, loading runs no code."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import pytest
import torch

from conftest import run_cli
from dtcond.checkpoints import load_policy
from dtcond.errors import DtcondError
from dtcond.training import DTModule, model_config_for, train

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)


@pytest.fixture
def tiny_run(cartpole_dataset, tmp_path):
    return train(cartpole_dataset, tmp_path / "run", model=TINY, data=dict(batch_size=16, steps_per_epoch=10),
                 trainer=dict(max_steps=30, **QUIET), checkpoint_every=10)


def test_loss_falls_when_overfitting_one_batch(cartpole_dataset):
    from dtcond.data import load
    from dtcond.datamodule import WindowDataModule

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
    from dtcond.data import load

    data = load(cartpole_dataset)
    module = DTModule(model_config_for(data.stats, **TINY).to_dict(), data.stats.to_dict(), weight_decay=0.1)
    decayed, plain = module.configure_optimizers()["optimizer"].param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.dim() < 2 for p in plain["params"])


def test_fast_dev_run(cartpole_dataset, tmp_path):
    r = train(cartpole_dataset, tmp_path / "fdr", model=TINY, data=dict(batch_size=8), trainer=dict(fast_dev_run=True, **QUIET))
    assert r.global_step == 1 and (r.bundle / "card.json").exists()


def rollout_actions(policy, seed=3, steps=40, target=300.0):
    env = policy.make_env()
    obs, _ = env.reset(seed=seed)
    policy.reset(target=target, seed=seed)
    actions, reward = [], None
    for _ in range(steps):
        a = policy.act(obs, reward)
        actions.append(a)
        obs, reward, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    return actions


def test_save_load_gives_identical_actions_for_bundle_and_ckpt(tiny_run):
    from dtcond.policy import ConditionedPolicy

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
    args = dict(model=TINY, data=dict(batch_size=8, steps_per_epoch=10), checkpoint_every=10)
    first = train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=20, **QUIET), **args)
    assert first.global_step == 20
    resumed = train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=35, **QUIET), **args)
    assert resumed.global_step == 35
    assert torch.load(resumed.last_checkpoint, weights_only=True)["global_step"] == 35
    with pytest.raises(DtcondError, match="last.ckpt exists"):
        train(cartpole_dataset, tmp_path / "r", trainer=dict(max_steps=40, **QUIET), resume=False, **args)


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
            "checkpoint_every=10", "trainer.enable_progress_bar=false")
    out = run_cli(*base, "trainer.max_steps=20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "trained test/cartpole/mix-v0: 20 steps" in out.stdout
    out = run_cli(*base, "trainer.max_steps=30", cwd=tmp_path)
    assert out.returncode == 0 and "30 steps" in out.stdout, out.stderr
    assert load_policy(tmp_path / "hydra" / "policy").config.context_len == 4

    bad = run_cli(*base, "+model.widht=3", cwd=tmp_path)
    assert bad.returncode == 2 and "widht" in bad.stderr.strip().splitlines()[-1]
    bad = run_cli(*base, "trainer.max_stepz=3", cwd=tmp_path)
    assert bad.returncode != 0 and "max_stepz" in bad.stderr
    bad = run_cli(*base, "model=huge", cwd=tmp_path)
    assert bad.returncode != 0 and "huge" in bad.stderr


def test_every_config_group_composes():
    from hydra import compose, initialize_config_dir

    from dtcond.cli import conf_dir

    groups = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in conf_dir().iterdir() if g.is_dir()}
    assert {"env", "dataset", "model", "trainer", "experiment"} <= set(groups)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        for name in ("dataset", "model", "trainer"):
            for option in groups[name]:
                cfg = compose("train", overrides=[f"{name}={option}"])
                assert cfg[name] is not None
        for option in groups["experiment"]:
            assert compose("train", overrides=[f"experiment={option}"]).trainer.max_steps > 0
        for option in groups["env"]:
            assert compose("collect", overrides=[f"env={option}"]).behavior
        assert compose("demo").dataset_id


def test_rollout_callback_logs_achieved_returns(cartpole_dataset, tmp_path):
    import csv

    from dtcond.training import RolloutCallback

    train(cartpole_dataset, tmp_path / "cb", model=TINY, data=dict(batch_size=8, steps_per_epoch=10),
          trainer=dict(max_steps=10, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1),
          callbacks=[RolloutCallback(5, targets=["q0.2", "q0.9"], episodes=2)])
    rows = list(csv.DictReader(open(tmp_path / "cb" / "logs" / "metrics.csv")))
    logged = [r for r in rows if r.get("rollout/q0.9")]
    assert len(logged) == 2 and all(float(r["rollout/q0.9"]) > 0 for r in logged)
