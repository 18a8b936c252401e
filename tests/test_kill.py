"""Kill -9 anywhere, lose nothing: collect, train and eval are SIGKILLed at random moments.

After each kill: no partial dataset is visible under its id, the last checkpoint is loadable, and the
run, started again, completes — training at the same final step, a sweep with exactly one record per
(target, episode). ``DTCOND_KILL_TRIALS`` sets the trials per command (default 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dtcond.checkpoints import load_policy
from dtcond.data import load, local_dataset_ids

TRIALS = int(os.environ.get("DTCOND_KILL_TRIALS", "1"))

pytestmark = pytest.mark.slow


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "dtcond", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_after(proc, seconds: float) -> bool:
    """SIGKILL the process group after ``seconds``; False if it had already finished."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def kill_during(proc, started, extra: float, timeout: float = 120) -> bool:
    """SIGKILL once ``started()`` is true (the work is under way) plus ``extra`` seconds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not started():
        if proc.poll() is not None or time.monotonic() > deadline:
            return kill_after(proc, 0)
        time.sleep(0.02)
    return kill_after(proc, extra)


def finish(args, cwd, timeout=600):
    out = subprocess.run([sys.executable, "-m", "dtcond", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_collect_leaves_no_partial_dataset(tmp_path, minari_root, trial):
    rng = np.random.default_rng(trial)
    args = ["collect", "episodes=600", "dataset_id=kill/cartpole-v0", "progress=false", f"hydra.run.dir={tmp_path}/h"]
    # Aim at the write: the moment the hidden staging folder appears, plus up to a fraction of a second.
    staging = lambda: minari_root.exists() and any(p.name.startswith(".staging-") for p in minari_root.iterdir())  # noqa: E731
    killed = kill_during(start(args, tmp_path), staging, float(rng.uniform(0.0, 0.3)))
    print(f"\nKILL collect trial {trial}: killed={killed}")
    if "kill/cartpole-v0" in local_dataset_ids():  # it finished writing before the kill: then it is complete
        assert load("kill/cartpole-v0").stats.num_episodes == 600
    else:
        assert not (minari_root / "kill/cartpole-v0").exists()
        finish(args, tmp_path)
        assert load("kill/cartpole-v0").stats.num_episodes == 600


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_training_resumes_to_the_same_final_step(tmp_path, cartpole_dataset, trial):
    rng = np.random.default_rng(100 + trial)
    args = ["train", "model=tiny", f"dataset.id={cartpole_dataset}", "trainer.max_steps=400", "checkpoint_every=20",
            "data.batch_size=16", "data.steps_per_epoch=50", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}/run"]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    killed = kill_during(start(args, tmp_path), last.exists, float(rng.uniform(0.0, 3.0)))
    step = None
    if last.exists():
        load_policy(last)  # atomic write: whenever it exists, it loads
        step = __import__("torch").load(last, weights_only=True)["global_step"]
    print(f"\nKILL train trial {trial}: killed={killed} last.ckpt step={step}")
    finish(args, tmp_path)
    import torch

    assert torch.load(last, weights_only=True)["global_step"] == 400
    assert load_policy(tmp_path / "run" / "policy").stats.dataset_id == cartpole_dataset


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_sweep_resumes_with_one_record_per_episode(tmp_path, cartpole_dataset, trial):
    from dtcond.training import train

    rng = np.random.default_rng(200 + trial)
    run = train(cartpole_dataset, tmp_path / "p", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                data=dict(batch_size=8, steps_per_epoch=5), trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
    results = tmp_path / "results.jsonl"
    args = ["eval", f"policy={run.bundle}", f"results={results}", "episodes=20", "progress=false", "report=false",
            "roaming=false", "sampler.n=9", "batch_size=20", f"hydra.run.dir={tmp_path}/h"]
    killed = kill_during(start(args, tmp_path), lambda: results.exists() and results.stat().st_size > 0,
                         float(rng.uniform(0.0, 1.0)))
    kept = len(results.read_bytes().split(b"\n")) - 1 if results.exists() else 0
    print(f"\nKILL eval trial {trial}: killed={killed} records kept={kept}")
    if results.exists():
        lines = results.read_bytes().split(b"\n")
        for line in lines[:-1]:  # every complete line is a whole record; only a torn tail may be partial
            json.loads(line)
    finish(args, tmp_path)
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(rows) == (9 + 3) * 20 and len({r["key"] for r in rows}) == len(rows)
    print(f"KILL eval trial {trial}: after resume {len(rows)} records, 0 lost, 0 duplicated")
