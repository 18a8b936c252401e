"""Image datasets: peak memory when training on 500k 84×84 uint8 frames, and the conv encoder's training step.

``rss``: a synthetic Atari-sized dataset (500 episodes of 1,000 steps, 84×84 grayscale uint8 frames,
Discrete(6) actions; 500k frames are 3.53 GB as uint8, 14.1 GB as float32) is written with Minari's
writer (``jpeg_encoding=False``, so the file holds the raw bytes) into a temp dir, in a process of its
own. A second process runs ``dtcond.train`` on it (the conv encoder, chosen by ``model.encoder=auto``)
and reports its peak resident set (``VmHWM``), the time to read the dataset into dtcond's frame store,
and the training steps' time. Target: peak RSS <= 2x the frames' uint8 size.

``step``: the DT paper's Atari model (K=30, 6 layers, 8 heads, width 128, the Nature-DQN encoder on
4×84×84 stacked frames) against the same transformer with a linear embedding of the flattened frames:
parameters, and the median forward+backward+AdamW step, model only, at a batch that fits the device
(the paper trains at B=128 on a GPU).

    python benchmarks/frames.py rss                    # ~5 min on 2 CPU cores, ~11 GB of temp disk
    python benchmarks/frames.py step --batch 8         # CPU; --batch 128 on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write

DATASET = "bench/frames-v0"
ATARI = dict(context_len=30, n_layer=6, n_head=8, n_embd=128, dropout=0.1, activation="relu")  # the DT paper's Atari model


def write_dataset(episodes: int, steps: int, seed: int = 0) -> None:
    """``episodes`` episodes of ``steps`` random frames, written 10 episodes at a time (this process's memory: ~10 episodes)."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(seed)

    def episode(i):
        rewards = rng.choice([-1.0, 0.0, 1.0], size=steps, p=[0.01, 0.98, 0.01])
        return EpisodeBuffer(id=i, seed=i, observations=rng.integers(0, 256, (steps + 1, 84, 84), dtype=np.uint8),
                             actions=rng.integers(6, size=steps), rewards=list(rewards),
                             terminations=[False] * (steps - 1) + [True], truncations=[False] * steps, infos={})

    chunk = 10
    ds = minari.create_dataset_from_buffers(DATASET, [episode(i) for i in range(min(chunk, episodes))],
                                            observation_space=gym.spaces.Box(0, 255, (84, 84), np.uint8),
                                            action_space=gym.spaces.Discrete(6), jpeg_encoding=False)
    for start in range(chunk, episodes, chunk):
        ds.storage.update_episodes([episode(i) for i in range(start, min(start + chunk, episodes))])


def peak_rss() -> int:
    """This process's peak resident set in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def train_child(out_dir: str, steps: int, batch: int) -> None:
    """Train on the dataset and print one JSON line: peak RSS, load time, step time."""
    import lightning as L

    from dtcond.datasets.loading import load
    from dtcond.dt.training import train

    t0 = time.perf_counter()
    data = load(DATASET)
    load_s = time.perf_counter() - t0
    rss_after_load = peak_rss()

    class Timer(L.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_start(self, *args):
            self._t = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self._t)

    timer = Timer()
    model = dict(context_len=8, n_layer=2, n_head=1, n_embd=64, dropout=0.0)
    result = train(DATASET, out_dir, model=model, data=dict(batch_size=batch, steps_per_epoch=steps, val_windows=batch),
                   trainer=dict(max_steps=steps, enable_progress_bar=False, enable_model_summary=False, logger=False,
                                num_sanity_val_steps=0), callbacks=[timer])
    frames = data.stats.num_steps
    print(json.dumps({"frames": frames, "episodes": data.stats.num_episodes, "uint8_bytes": frames * 84 * 84,
                      "peak_rss_bytes": peak_rss(), "peak_rss_after_load_bytes": rss_after_load, "load_s": load_s,
                      "train_steps": result.global_step, "batch": batch, "segment": 2 * model["context_len"],
                      "model": model, "encoder": "cnn (model.encoder=auto)",
                      "median_step_s": float(np.median(timer.times[2:] or timer.times))}))


def rss(args) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as root:
        env = {**os.environ, "MINARI_DATASETS_PATH": str(Path(root) / "minari"), "DTCOND_CACHE": str(Path(root) / "cache")}
        here = Path(__file__).resolve().parent
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "_write", str(args.episodes), str(args.steps_per_episode)], env=env,
                       cwd=here, check=True)
        write_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "_train", str(Path(root) / "run"), str(args.train_steps), str(args.batch)],
                             env=env, cwd=here, check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
    row["write_s"] = write_s
    row["peak_rss_over_uint8"] = row["peak_rss_bytes"] / row["uint8_bytes"]
    row["target"] = "peak RSS <= 2x the uint8 size"
    row["met"] = row["peak_rss_over_uint8"] <= 2.0
    command = f"python benchmarks/frames.py rss --episodes {args.episodes} --steps-per-episode {args.steps_per_episode} " \
              f"--train-steps {args.train_steps} --batch {args.batch}"
    path = write("frames_rss", {"command": command, **row})
    print(json.dumps(row, indent=1))
    print(f"-> {path}")


def step(args) -> None:
    import torch
    import torch.nn.functional as F

    from dtcond.dt.model import DecisionTransformer, DTConfig, configure_optimizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape, K, B = [4, 84, 84], ATARI["context_len"], args.batch
    rows = []
    for encoder in ("cnn", "mlp"):
        torch.manual_seed(0)
        cfg = DTConfig(obs_dim=int(np.prod(shape)), act_dim=18, discrete=True, obs_shape=shape, encoder=encoder, max_timestep=10000, **ATARI)
        model = DecisionTransformer(cfg).to(device).train()
        opt = configure_optimizer(model, 6e-4, 0.1)
        frames = torch.randint(0, 256, (B, K, *shape), dtype=torch.uint8, device=device)
        actions = torch.randint(18, (B, K), device=device)
        rtg, ts = torch.rand(B, K, device=device) * 20, torch.arange(K, device=device).expand(B, K)
        times = []
        for i in range(args.repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            loss = F.cross_entropy(model(rtg, frames, actions, ts).flatten(0, 1), actions.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t)
        encoder_params = sum(p.numel() for p in model.embed_state.parameters())
        rows.append({"encoder": encoder, "params": sum(p.numel() for p in model.parameters()), "state_encoder_params": encoder_params,
                     "batch": B, "context_len": K, "frames_per_step": B * K, "median_step_ms": 1000 * float(np.median(times)),
                     "device": device.type})
        print(rows[-1])
    command = f"python benchmarks/frames.py step --batch {B} --repeats {args.repeats}" + (f" --device {args.device}" if args.device else "")
    path = write(f"frames_step_{device.type}", {"command": command, "config": {**ATARI, "obs_shape": shape, "act_dim": 18}, "rows": rows})
    print(f"-> {path}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_write":
        return write_dataset(int(sys.argv[2]), int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "_train":
        return train_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rss")
    r.add_argument("--episodes", type=int, default=500)
    r.add_argument("--steps-per-episode", type=int, default=1000)
    r.add_argument("--train-steps", type=int, default=20)
    r.add_argument("--batch", type=int, default=16)
    r.add_argument("--tmp", default=None, help="where the temp dataset goes (needs ~2x 3.5 GB free)")
    s = sub.add_parser("step")
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--device", default=None)
    args = parser.parse_args()
    rss(args) if args.what == "rss" else step(args)


if __name__ == "__main__":
    main()
