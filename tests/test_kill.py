"""Kill -9 anywhere, lose nothing: collect, train and an eval sweep are each SIGKILLed ``DTCOND_KILL_TRIALS``
times (default 10) at random moments, and restarted after every kill.

The trials of a command form chains: each restart continues what the killed run left (the same
dataset id, run dir or results table) until a run completes; the next trial starts a new chain. After
every kill: no partial dataset is visible under its id, ``last.ckpt`` loads and never goes back, every
complete line of the results table is a whole record and no key appears twice. Each finished chain is
compared with an uninterrupted run: the same episodes in the dataset, the final training step, exactly
the records of an uninterrupted sweep (0 lost, 0 duplicated). Kills aim at the work rather than at
Python starting: at a random delay after the work is seen under way (a staging folder, a new
checkpoint, a new record), or, for collect and eval, at a uniform moment of an uninterrupted run's span.
Each run is a process forked from a warm interpreter (``conftest.WarmCli``) and killed with its group,
so a trial costs the command's work rather than Python's imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import WarmCli
from dtcond.families import load_policy
from dtcond.datasets.storage import local_dataset_ids
from dtcond.datasets.validation import check_dataset

TRIALS = int(os.environ.get("DTCOND_KILL_TRIALS", "10"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    server = WarmCli(tmp_path_factory.mktemp("warm-cli"))
    yield server
    server.close()


def kill_after(proc, seconds: float) -> bool:
    """SIGKILL the command's process group after ``seconds``; False if it had already finished."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended in between
            pass
        return proc.wait() == -signal.SIGKILL


def kill_during(proc, started, extra: float, timeout: float = 120) -> bool:
    """SIGKILL once ``started()`` is true (the work is under way) plus ``extra`` seconds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while not started():
        if proc.poll() is not None or time.monotonic() > deadline:
            return kill_after(proc, 0)
        time.sleep(0.01)
    return kill_after(proc, extra)


def finish(cli, args, cwd) -> float:
    """Run to completion; returns the wall time."""
    t = time.monotonic()
    proc = cli.start(*args, cwd=cwd)
    assert proc.wait() == 0, proc.stderr.read_text()
    return time.monotonic() - t


def kill_trial(trial, rng, aimed: float, span: float | None) -> bool:
    """Start ``trial()``'s command and SIGKILL it: up to ``aimed`` s after its work is under way, or (a coin
    flip, when a ``span`` is given) at a uniform moment of ``span`` s from its start. True if it was killed."""
    proc, started = trial()
    if span is None or rng.integers(2) == 0:
        return kill_during(proc, started, float(rng.uniform(0.0, aimed)))
    return kill_after(proc, float(rng.uniform(0.0, span)))


def content(dataset_id: str) -> str:
    """A digest of every episode's arrays, to compare a dataset with an uninterrupted run's."""
    import minari

    h = hashlib.sha256()
    for ep in minari.load_dataset(dataset_id).iterate_episodes():
        for part in (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations):
            h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def test_collect_killed_at_random_never_shows_a_partial_dataset(cli, tmp_path, minari_root):
    rng = np.random.default_rng(0)
    base = ["collect", "episodes=400", "behavior=[{policy: random, weight: 1.0}]", "seed=3", "progress=false",
            f"hydra.run.dir={tmp_path}/h"]
    span = finish(cli, [*base, "dataset_id=kill/reference-v0"], tmp_path)
    reference = content("kill/reference-v0")

    chain, kills, starts = 0, 0, 0
    while kills < TRIALS:
        starts += 1
        assert starts <= 4 * TRIALS, f"only {kills} of {starts} runs were still running when killed"
        dataset_id = f"kill/chain{chain}-v0"

        def trial():
            before = {p.name for p in minari_root.iterdir() if p.name.startswith(".staging-")}
            staging = lambda: any(p.name.startswith(".staging-") and p.name not in before for p in minari_root.iterdir())  # noqa: E731
            return cli.start(*base, f"dataset_id={dataset_id}", cwd=tmp_path), staging

        killed = kill_trial(trial, rng, 0.5, span)
        kills += killed
        if dataset_id in local_dataset_ids():  # it finished before the kill: then it is whole
            assert check_dataset(dataset_id) == check_dataset("kill/reference-v0")
            chain += 1
        else:  # nothing of it under its id; a hidden staging folder may remain
            assert not (minari_root / dataset_id).exists()
    if f"kill/chain{chain}-v0" not in local_dataset_ids():
        finish(cli, [*base, f"dataset_id=kill/chain{chain}-v0"], tmp_path)
    for c in range(chain + 1):
        assert content(f"kill/chain{c}-v0") == reference  # the same 400 episodes as a run never killed
    print(f"\nKILL collect: {kills} kills in {starts} runs, {chain + 1} datasets completed by reruns, each identical "
          "to an uninterrupted run (0 episodes lost or duplicated)")


def test_training_killed_at_random_resumes_to_the_final_step(cli, tmp_path, cartpole_dataset):
    import torch

    rng = np.random.default_rng(1)
    max_steps, every = 500, 20
    base = ["train", "model=tiny", f"dataset.id={cartpole_dataset}", f"trainer.max_steps={max_steps}", f"checkpoint_every={every}",
            "data.batch_size=16", "data.steps_per_epoch=50", "trainer.enable_progress_bar=false", "early_stopping=0"]
    chain, kills, starts, steps_seen = 0, 0, 0, []
    step = 0
    while kills < TRIALS:
        starts += 1
        assert starts <= 4 * TRIALS, f"only {kills} of {starts} runs were still running when killed"
        run = tmp_path / f"run{chain}"
        last = run / "checkpoints" / "last.ckpt"

        def trial():
            stamp = last.stat().st_mtime_ns if last.exists() else None
            fresh = lambda: last.exists() and last.stat().st_mtime_ns != stamp  # noqa: E731  (a checkpoint written by this run)
            return cli.start(*base, f"hydra.run.dir={run}", cwd=tmp_path), fresh

        killed = kill_trial(trial, rng, 1.5, None)
        kills += killed
        if last.exists():
            load_policy(last)  # written atomically: whenever it exists, it loads
            now = torch.load(last, weights_only=True)["global_step"]
            assert now >= step and (now % every == 0 or now == max_steps)  # a kill never takes a checkpoint back
            step = now
            steps_seen.append(now)
        if (run / "policy" / "card.json").exists():  # completed before the kill
            assert step == max_steps
            chain, step = chain + 1, 0
    run = tmp_path / f"run{chain}"
    finish(cli, [*base, f"hydra.run.dir={run}"], tmp_path)
    for c in range(chain + 1):
        last = tmp_path / f"run{c}" / "checkpoints" / "last.ckpt"
        assert torch.load(last, weights_only=True)["global_step"] == max_steps
        assert load_policy(tmp_path / f"run{c}" / "policy").train_step == max_steps
    print(f"\nKILL train: {kills} kills in {starts} runs; last.ckpt loaded after every one (steps {steps_seen}); "
          f"{chain + 1} runs resumed to step {max_steps}")


def test_sweep_killed_at_random_resumes_with_exactly_the_records_of_an_uninterrupted_one(cli, tmp_path, cartpole_dataset):
    from dtcond.dt.training import train

    rng = np.random.default_rng(2)
    run = train(cartpole_dataset, tmp_path / "p", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                data=dict(batch_size=8, steps_per_epoch=5), trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
    base = ["eval", f"policy={run.bundle}", "episodes=40", "progress=false", "report=false", "roaming=false",
            "sampler.n=9", "batch_size=16", f"hydra.run.dir={tmp_path}/h"]
    reference_path = tmp_path / "reference.jsonl"
    span = finish(cli, [*base, f"results={reference_path}"], tmp_path)
    ignore = {"wall_time", "run_id"}
    reference = {r["key"]: {k: v for k, v in r.items() if k not in ignore}
                 for r in map(json.loads, reference_path.read_text().splitlines())}
    assert len(reference) == (9 + 3) * 40

    def whole_records(path: Path) -> list[dict]:
        if not path.exists():
            return []
        lines = path.read_bytes().split(b"\n")
        return [json.loads(line) for line in lines[:-1]]  # every complete line is a whole record; only a torn tail may not be

    chain, kills, starts, kept, before = 0, 0, 0, [], 0
    while kills < TRIALS:
        starts += 1
        assert starts <= 4 * TRIALS, f"only {kills} of {starts} runs were still running when killed"
        results = tmp_path / f"results{chain}.jsonl"

        def trial():
            size = results.stat().st_size if results.exists() else 0
            grew = lambda: results.exists() and results.stat().st_size > size  # noqa: E731  (this run appended a record)
            return cli.start(*base, f"results={results}", cwd=tmp_path), grew

        killed = kill_trial(trial, rng, 0.5, span)
        kills += killed
        rows = whole_records(results)
        keys = [r["key"] for r in rows]
        assert len(keys) == len(set(keys)) and set(keys) <= set(reference)
        assert len(rows) >= before  # a kill never loses a record written before it
        kept.append(len(rows))
        before = len(rows)
        if len(rows) == len(reference):
            chain, before = chain + 1, 0
    finish(cli, [*base, f"results={tmp_path / f'results{chain}.jsonl'}"], tmp_path)
    for c in range(chain + 1):
        rows = [json.loads(x) for x in (tmp_path / f"results{c}.jsonl").read_text().splitlines()]
        assert len(rows) == len(reference) and {r["key"] for r in rows} == set(reference)
        for r in rows:  # and each is the record an uninterrupted sweep writes for that episode
            assert {k: v for k, v in r.items() if k not in ignore} == reference[r["key"]]
    print(f"\nKILL eval: {kills} kills in {starts} runs (records kept after each: {kept}); {chain + 1} tables resumed to "
          f"{len(reference)} records each, 0 lost, 0 duplicated, equal to an uninterrupted sweep")
