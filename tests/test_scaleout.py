"""Scaling out with existing engines: a Hydra sweep through submitit (SLURM's code path, run locally) and a compiled step.

Lightning DDP on 2 CPU processes is in test_training.py (fast tier); these are end to end and slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dtcond.families import load_policy

TINY = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.mark.slow
def test_a_sweep_through_submitits_local_executor_trains_every_seed(tmp_path, cartpole_dataset):
    # submitit_local pickles each job and runs it in its own process, as submitit_slurm does on a node.
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    out = subprocess.run(
        [sys.executable, "-m", "dtcond", "train", "-m", "hydra/launcher=submitit_local", "seed=0,1", "model=tiny",
         f"dataset.id={cartpole_dataset}", "trainer.max_steps=5", "data.batch_size=8", "data.steps_per_epoch=5",
         "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    bundles = sorted(sweep.glob("*/policy"))
    assert [b.parent.name for b in bundles] == ["cartpole_seed0_0", "cartpole_seed1_1"]
    for seed, bundle in enumerate(bundles):
        card = json.loads((bundle / "card.json").read_text())
        assert (card["extra"]["global_step"], card["extra"]["seed"]) == (5, seed)
        assert torch.load(bundle.parent / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    weights = [load_policy(b).model.state_dict() for b in bundles]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # two seeds, two models
    logs = sorted(sweep.glob(".submitit/*/*_log.out"))  # each job ran under submitit
    assert len(logs) == 2 and all("trained" in log.read_text() for log in logs)


@pytest.mark.slow
def test_a_compiled_training_step_trains_the_same_weights(tmp_path, pendulum_dataset):
    # trainer.compile=default runs the loss through torch.compile (inductor); the result must be eager's.
    from dtcond.dt.training import train

    common = dict(model=TINY, data=dict(batch_size=8, steps_per_epoch=5), seed=0)
    quiet = dict(max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False)
    import lightning as L

    class Mode(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            modes.append(pl_module.compile_mode)

    modes = []
    eager = train(pendulum_dataset, tmp_path / "eager", trainer=quiet, callbacks=[Mode()], **common)
    compiled = train(pendulum_dataset, tmp_path / "compiled", trainer={**quiet, "compile": "default"}, callbacks=[Mode()], **common)
    assert modes == [None] * 6 + ["default"] * 6
    a, b = load_policy(eager.bundle).model.state_dict(), load_policy(compiled.bundle).model.state_dict()
    assert a.keys() == b.keys()  # the plain module's weights: no _orig_mod. prefix
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert compiled.val_loss == pytest.approx(eager.val_loss, rel=1e-4)
