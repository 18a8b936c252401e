"""Faults beyond a kill: several processes writing one results table at once, and a disk that fills up
while a checkpoint is being written.

The full disk is real at the system-call level but needs no root: the training process runs under
``RLIMIT_FSIZE`` set below the checkpoint's size, so the kernel stops the checkpoint write partway
(``EFBIG``, "File too large", where a full disk gives ``ENOSPC``) exactly as a disk that fills up in the
middle of the file would; every smaller file the run writes (logs, Hydra's config) still goes through.
The training runs are processes forked from a warm interpreter (``conftest.WarmCli``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import WarmCli

pytestmark = pytest.mark.slow

WRITERS = 4

# One appender: waits for the start signal, then appends its records in batches of 1-4. Each record
# carries a payload larger than a pipe buffer (so unlocked writes could interleave) and its digest;
# every writer also appends the same "shared" keys, which the table must hold once each. The records use the schema's
# columns (run_id: the writer, policy: the payload, fingerprint: its digest), which the table checks.
APPENDER = r"""
import hashlib, os, sys, time
from dtcond.rollout.records import ResultsStore
path, writer, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
store = ResultsStore(path)
def record(key, i):
    payload = f"{key}:" + str(i) * (6000 + 97 * i)
    return {"key": key, "run_id": str(writer), "policy": payload, "fingerprint": hashlib.sha256(payload.encode()).hexdigest()}
mine = [record(f"w{writer}-r{i}", i) for i in range(n)] + [record(f"shared-{i}", i) for i in range(n // 4)]
i = 0
while i < len(mine):
    k = 1 + (i * 7 + writer) % 4
    store.append(mine[i:i + k])
    i += k
"""


def test_four_processes_appending_to_one_table_lose_interleave_and_duplicate_nothing(tmp_path):
    path, go, n = tmp_path / "results.jsonl", tmp_path / "go", 150
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w), str(n), str(go)]) for w in range(WRITERS)]
    time.sleep(1.0)  # every writer imported and waiting
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0] * WRITERS
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the table ends with a whole line
    rows = [json.loads(line) for line in lines[:-1]]  # every line one whole record: nothing interleaved
    keys = [r["key"] for r in rows]
    expected = {f"w{w}-r{i}" for w in range(WRITERS) for i in range(n)} | {f"shared-{i}" for i in range(n // 4)}
    assert len(keys) == len(set(keys))  # nothing duplicated, the shared keys included
    assert set(keys) == expected  # nothing lost
    assert all(hashlib.sha256(r["policy"].encode()).hexdigest() == r["fingerprint"] for r in rows)  # nothing torn or mixed
    writers = {int(r["run_id"]) for r in rows if r["key"].startswith("shared-")}
    print(f"\nCONCURRENT appends: {WRITERS} processes, {len(rows)} records of {len(expected)} expected, 0 lost, 0 interleaved, "
          f"0 duplicated; the shared keys were won by writers {sorted(writers)}")


SWEEP = r"""
import sys
import dtcond
policy = dtcond.load_policy(sys.argv[1])
dtcond.evaluate(policy, ["q0.2", "q0.5", "q0.8", "x1.5"], episodes=12, seed=int(sys.argv[2]), results=sys.argv[3], batch_size=8)
"""


def test_four_sweeps_into_one_table_at_once_write_each_episode_once(tmp_path, cartpole_dataset):
    from dtcond.dt.training import train

    run = train(cartpole_dataset, tmp_path / "p", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
                trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
    path = tmp_path / "results.jsonl"
    # Two sweeps per seed: the pairs race to run and write the very same episodes.
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP, str(run.bundle), str(seed), str(path)]) for seed in (0, 1, 0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 4 * 12
    assert {(r["seed"], r["target_spec"], r["episode"]) for r in rows} == {
        (s, t, e) for s in (0, 1) for t in ("q0.2", "q0.5", "q0.8", "x1.5") for e in range(12)}
    print(f"\nCONCURRENT sweeps: 4 processes (2 per seed) into one table: {len(rows)} records, 0 lost, 0 duplicated")


def test_a_disk_full_during_a_checkpoint_write_leaves_the_previous_last_ckpt_loadable(tmp_path, cartpole_dataset):
    cli = WarmCli(tmp_path)
    import torch

    from dtcond.families import load_policy
    from dtcond.dt.training import train

    tiny = dict(context_len=4, n_layer=2, n_head=2, n_embd=16, dropout=0.0)  # conf/model/tiny.yaml, which the CLI run resumes
    options = dict(model=tiny, data=dict(batch_size=8, steps_per_epoch=50), checkpoint_every=10)
    run = train(cartpole_dataset, tmp_path / "run", trainer=dict(max_steps=20, enable_progress_bar=False), **options)
    last = run.last_checkpoint
    before = last.read_bytes()
    args = ["train", f"dataset.id={cartpole_dataset}", "model=tiny", "trainer.max_steps=60", "checkpoint_every=10",
            "data.batch_size=8", "data.steps_per_epoch=50", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'run'}"]
    for fraction in (0.1, 0.99):  # the disk fills up this far into the next checkpoint
        full = cli.start(*args, cwd=tmp_path, max_file_size=int(len(before) * fraction))
        stderr = (full.wait(), full.stderr.read_text())[1]
        assert full.returncode == 2 and "File too large" in stderr, stderr[-2000:]
        # One line, not a traceback (after Lightning's own warning that a mid-epoch resume restarts the epoch's batches).
        assert "Traceback" not in stderr and "the last complete checkpoint" in stderr.strip().splitlines()[-1]
        assert last.read_bytes() == before  # the failed write never reached last.ckpt
        assert load_policy(last).train_step == 20
        assert sorted(os.listdir(last.parent)) == ["last.ckpt"]  # and left no half-written file beside it
        print(f"\nDISK FULL at {fraction:.0%} of a {len(before)}-byte checkpoint write: the run stopped; last.ckpt "
              "(step 20) unchanged and loadable, no stray file")
    # Resuming with another model than the checkpoint's is refused in one line, and changes nothing.
    other = cli.start(*[a if a != "model=tiny" else "model=small" for a in args], cwd=tmp_path)
    stderr = (other.wait(), other.stderr.read_text())[1]
    assert other.returncode == 2 and "Traceback" not in stderr and "another shape" in stderr.strip().splitlines()[-1], stderr[-2000:]
    assert last.read_bytes() == before
    # Space freed: the run resumes from the checkpoint the full disk left alone and finishes.
    done = train(cartpole_dataset, tmp_path / "run", trainer=dict(max_steps=60, enable_progress_bar=False), **options)
    assert done.global_step == 60 and torch.load(last, weights_only=True)["global_step"] == 60
    cli.close()
