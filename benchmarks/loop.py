"""The whole ``dtcond train`` loop: samples/s against HF's model-only step, and the share of a step spent on data.

A Hopper-sized synthetic dataset (observations 11, actions 3 in [-1, 1], 200 episodes of 50-1000
steps, ~100k steps; what is in it does not change the cost) is written with Minari's writer into a
temp dir. Each loop row runs ``dtcond.train`` (the paper's model, logger and progress bar off, no
validation) and times the optimizer steps after a warm-up from a callback. Its **data wait** is
``1 - t_const / t_real``: the same loop fed one constant batch already where the model is (no
sampling, gathering or copying) against the real pipeline. The host time between two steps (fetching
the next batch plus Lightning's bookkeeping) is reported too. HF's ``DecisionTransformerModel``
model-only step at B=64 on K=20 windows (as in ``benchmarks/train.py``) is timed in the same process,
interleaved with the loop rows, as the reference. A data-only table compares one batch gathered from
the flat episode tensors with the per-window path dtcond used before (a Python loop of ``make_window``
calls and a collate).

    python benchmarks/loop.py                                  # CPU, or the GPU when there is one
    python benchmarks/loop.py --batch 64 256 --compile none reduce-overhead     # e.g. on CUDA
    python benchmarks/loop.py --precision 32-true bf16-mixed --workers 0 1     # the CPU rows in the README
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from dataclasses import asdict

import lightning as L
import numpy as np
import torch

from common import PAPER, device_tag, markdown_table, median, pick_device, sync, write

OBS, ACT, K = 11, 3, 20
CONFIGS = {"windows": (K, "mse"), "segments": (2 * K, "bins")}  # (segment length, action head)
DATASET = "bench/hopper-like-v0"


def write_dataset(episodes: int = 200, seed: int = 0) -> None:
    """Hopper-sized episodes of random numbers, written by Minari's own writer under $MINARI_DATASETS_PATH."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(seed)
    buffers = []
    for i in range(episodes):
        T = int(rng.integers(50, 1001))
        buffers.append(EpisodeBuffer(
            id=i, seed=i, observations=rng.normal(size=(T + 1, OBS)).astype(np.float32),
            actions=rng.uniform(-1, 1, (T, ACT)).astype(np.float32), rewards=list(rng.uniform(0, 3, T)),
            terminations=[False] * (T - 1) + [True], truncations=[False] * T, infos={}))
    minari.create_dataset_from_buffers(DATASET, buffers, observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32),
                                       action_space=gym.spaces.Box(-1.0, 1.0, (ACT,), np.float32))


class StepTimer(L.Callback):
    """Wall time of optimizer steps ``skip+1 .. skip+steps``, and the host time between consecutive steps."""

    def __init__(self, skip: int, steps: int):
        self.skip, self.steps = skip, steps
        self.start = self.end = self.last_end = None
        self.gaps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.last_end is not None and trainer.global_step > self.skip:
            self.gaps.append(time.perf_counter() - self.last_end)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in (self.skip, self.skip + self.steps):
            sync(pl_module.device)
            now = time.perf_counter()
            self.start, self.end = (now, self.end) if step == self.skip else (self.start, now)
        self.last_end = time.perf_counter()

    @property
    def ms_per_step(self) -> float:
        return 1e3 * (self.end - self.start) / self.steps


@contextlib.contextmanager
def constant_batches():
    """Every WindowDataset item is its batch 0, gathered once: the loop with no data cost."""
    from dtcond.datasets.windows import WindowDataset

    original, cache = WindowDataset.__getitem__, {}

    def first_batch(self, index):
        if id(self) not in cache:
            cache[id(self)] = original(self, 0)
        return cache[id(self)]

    WindowDataset.__getitem__ = first_batch
    try:
        yield
    finally:
        WindowDataset.__getitem__ = original


def run_loop(v: dict, device, out_dir: str, warmup: int, steps: int) -> StepTimer:
    from dtcond.dt.training import train

    timer = StepTimer(warmup, steps)
    total = warmup + steps
    with constant_batches() if v["data"] == "constant" else contextlib.nullcontext():
        train(DATASET, out_dir, model={**PAPER, "action_head": v["head"]}, seed=0, checkpoint_every=10 * total,
              data=dict(batch_size=v["batch"], segment_len=v["T"], steps_per_epoch=total + 1, val_fraction=0.0,
                        num_workers=v.get("workers", 0)),
              trainer=dict(accelerator=device.type, precision=v["precision"], max_steps=total, logger=False,
                           enable_progress_bar=v.get("bar", False),
                           enable_model_summary=False, compile=v.get("compile"),
                           matmul_precision="high" if device.type == "cuda" else None),
              callbacks=[timer])
    return timer


def fetch_table(device, batches: list[int], repeats: int) -> list[dict]:
    """ms to produce one batch: gathered from flat tensors (on ``device``) vs the per-window loop used before."""
    from dtcond.datasets.loading import load
    from dtcond.datasets.windows import WindowDataset, make_window

    data = load(DATASET)
    rows = []
    for B in batches:
        for T in (K, 2 * K):
            ds = WindowDataset(data.trajectories, data.stats, T, epoch_size=B * 1000, batch_size=B).to(device)

            def per_window(index):  # the pipeline before: a generator, a locate and a make_window per window, then a stack
                items = []
                for i in range(index * B, (index + 1) * B):
                    rng = np.random.default_rng((0, 0, i))
                    episode, step = ds.locate(int(rng.integers(ds.pad_row)))
                    items.append(asdict(make_window(data.trajectories[episode], int(step), T, data.stats)))
                batch = {k: torch.from_numpy(np.stack([it[k] for it in items])) for k, v in items[0].items() if v is not None}
                return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

            times = {"gather": [], "per-window": []}
            for r in range(repeats):
                for name, fetch in (("gather", ds.__getitem__), ("per-window", per_window)):
                    n = 20
                    sync(device)
                    start = time.perf_counter()
                    for j in range(n):
                        fetch(r * n + j)
                    sync(device)
                    times[name].append(1e3 * (time.perf_counter() - start) / n)
            g, w = median(times["gather"]), median(times["per-window"])
            rows.append({"batch": B, "T": T, "gather_ms": g, "per_window_ms": w, "speedup": w / g, "device": str(device)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="loop batch sizes (default: 64 on CPU, 64 and 256 on CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 20 on CPU, 300 on CUDA)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CPU, 50 on CUDA)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", nargs="+", default=["none"], help="trainer.compile modes for rows: none default reduce-overhead ...")
    ap.add_argument("--workers", type=int, nargs="+", default=[0], help="data.num_workers values for rows (real data)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    help="windows: K-step windows with HF's tanh (mse) head, like for like; segments: dtcond's default")
    ap.add_argument("--precision", nargs="+", default=["32-true"], help="trainer.precision values for rows, e.g. 32-true bf16-mixed")
    ap.add_argument("--bar", action="store_true", help="add rows with the progress bar on (its loss readout syncs every step)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--note", default=None, help="recorded in the JSON, e.g. 'machine shared with other jobs'")
    ap.add_argument("--name", default=None, help="results/<name>.json (default: loop_<cpu|cuda>)")
    args = ap.parse_args()
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    batches = args.batch or ([64, 256] if cuda else [64])
    steps, warmup = args.steps or (300 if cuda else 20), args.warmup or (50 if cuda else 5)

    variants = []
    for B in batches:
        for config in args.configs:
            T, head = CONFIGS[config]
            for precision in args.precision:
                for mode in args.compile:
                    base = dict(batch=B, T=T, head=head, precision=precision, compile=None if mode == "none" else mode, workers=0)
                    variants += [{**base, "data": "real"}, {**base, "data": "constant"}]
                    variants += [{**base, "data": "real", "workers": w} for w in args.workers if w]
                    if args.bar:
                        variants.append({**base, "data": "real", "bar": True})

    from train import batch as hf_batch
    from train import make_hf

    with tempfile.TemporaryDirectory() as root:
        os.environ["MINARI_DATASETS_PATH"] = root
        write_dataset()
        fetch = fetch_table(device, batches, args.repeats)
        print(markdown_table(fetch, ["batch", "T", "gather_ms", "per_window_ms", "speedup", "device"]), "\n", flush=True)

        torch.manual_seed(0)
        _, hf_step = make_hf(PAPER, device)
        hf_b = hf_batch(64, K, device)
        for _ in range(3):
            hf_step(hf_b)
        hf_times = []
        for v in variants:
            v["ms"], v["gap_ms"] = [], []
        for r in range(args.repeats):  # interleaved: HF, then every loop row, per repeat
            n = max(10, steps // 4)
            sync(device)
            start = time.perf_counter()
            for _ in range(n):
                hf_step(hf_b)
            sync(device)
            hf_times.append(1e3 * (time.perf_counter() - start) / n)
            for i, v in enumerate(variants):
                timer = run_loop(v, device, f"{root}/run{r}_{i}", warmup, steps)
                v["ms"].append(timer.ms_per_step)
                v["gap_ms"].append(1e3 * median(timer.gaps))
                print(f"repeat {r}: B={v['batch']} T={v['T']} {v['head']} {v['precision']} compile={v['compile']} {v['data']} "
                      f"workers={v['workers']} bar={v.get('bar', False)}: {timer.ms_per_step:.1f} ms/step", flush=True)

    hf_ms = median(hf_times)
    hf_sps = 64 / (hf_ms / 1e3)
    rows = []
    for v in variants:
        ms = median(v["ms"])
        row = {"loop": f"dtcond train, {'windows' if v['T'] == K else '2K segments'}, {v['head']} head"
                       + (f", {v['precision']}" if v["precision"] != "32-true" else "")
                       + (f", compile={v['compile']}" if v["compile"] else "") + (f", {v['workers']} workers" if v["workers"] else "") + (", progress bar" if v.get("bar") else ""),
               "data": v["data"], "batch": v["batch"], "T": v["T"], "head": v["head"], "precision": v["precision"],
               "compile": v["compile"],
               "workers": v["workers"], "bar": v.get("bar", False), "ms_per_step": ms, "samples_per_s": v["batch"] / (ms / 1e3),
               "vs_hf_model_only_b64": v["batch"] / (ms / 1e3) / hf_sps, "host_gap_ms": median(v["gap_ms"]),
               "ms_repeats": v["ms"], "device": str(device)}
        if v["data"] == "constant":
            real = next(r for r in rows if r["data"] == "real" and all(r[k] == row[k] for k in ("batch", "T", "head", "precision", "compile"))
                        and r["workers"] == 0 and not r["bar"])
            real["data_wait_share"] = 1 - ms / real["ms_per_step"]
            # The fetch's own host time per step; all of it waits on a CPU, where nothing overlaps it.
            real["fetch_share_host"] = (real["host_gap_ms"] - row["host_gap_ms"]) / real["ms_per_step"]
        rows.append(row)
    print(markdown_table(rows, ["loop", "data", "batch", "ms_per_step", "samples_per_s", "vs_hf_model_only_b64", "host_gap_ms",
                                "data_wait_share", "fetch_share_host"]))
    print(f"\nHF DecisionTransformerModel, model-only step, B=64, K=20: {hf_ms:.1f} ms ({hf_sps:.0f} samples/s)")
    payload = {"device": str(device), "model": PAPER, "steps": steps, "warmup": warmup, "repeats": args.repeats,
               "hf_model_only_b64": {"ms_per_step": hf_ms, "samples_per_s": hf_sps, "ms_repeats": hf_times},
               "fetch": fetch, "rows": rows}
    path = write(args.name or f"loop_{device_tag(device)}", payload, note=args.note)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
