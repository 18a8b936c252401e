"""Training throughput and peak memory: dtcond's DecisionTransformer vs Hugging Face's DecisionTransformerModel.

Both models get the same size (the DT paper's Gym config: K=20, width 128, 3 layers, 1 head,
dropout 0.1; and dtcond's CPU preset, width 64, no dropout), the same batches (B=64 windows of
K=20 steps of Hopper-sized data: obs 11, actions 3), an MSE loss on the actions and AdamW. Each
step is forward + backward + optimizer step. Throughput is measured in one process with the two
models interleaved (so machine noise hits both alike), medians over repeats; peak memory in one
fresh subprocess per model (max RSS above the RSS before the first step; CUDA: max allocated).

dtcond trains by default on 2K-step segments under its banded attention (each sample then
carries 2K predictions); the "windowed" rows use K-step windows exactly like HF's for a
like-for-like comparison per sample.

    pip install -e '.[bench]'            # transformers
    python benchmarks/train.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common import PAPER, SMALL, markdown_table, median, write

OBS, ACT, B = 11, 3, 64


def batch(T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        states=torch.randn(B, T, OBS, generator=g),
        actions=torch.rand(B, T, ACT, generator=g) * 2 - 1,
        rtg=torch.rand(B, T, generator=g) * 3000,
        timesteps=torch.randint(0, 980, (B, 1), generator=g) + torch.arange(T),
        mask=torch.ones(B, T, dtype=torch.bool),
    )


def make_dtcond(size: dict):
    from dtcond.model import DecisionTransformer, DTConfig, configure_optimizer

    cfg = DTConfig(obs_dim=OBS, act_dim=ACT, max_timestep=1000, return_scale=1000.0, **size)
    model = DecisionTransformer(cfg).train()
    opt = configure_optimizer(model, lr=1e-4, weight_decay=1e-4)

    def step(b):
        pred = model(b["rtg"], b["states"], b["actions"], b["timesteps"], b["mask"])  # (B, T, act)
        loss = F.mse_loss(pred, b["actions"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def make_hf(size: dict):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    cfg = DecisionTransformerConfig(state_dim=OBS, act_dim=ACT, hidden_size=size["n_embd"], n_layer=size["n_layer"],
                                    n_head=size["n_head"], n_inner=4 * size["n_embd"], max_ep_len=1000, action_tanh=True,
                                    resid_pdrop=size["dropout"], embd_pdrop=size["dropout"], attn_pdrop=size["dropout"],
                                    n_positions=3 * size["context_len"])
    model = DecisionTransformerModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def step(b):
        out = model(states=b["states"], actions=b["actions"], returns_to_go=b["rtg"][..., None] / 1000.0,
                    timesteps=b["timesteps"], attention_mask=b["mask"].long(), return_dict=True)
        loss = F.mse_loss(out.action_preds, b["actions"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def variants(size_name: str) -> list[tuple[str, str, int]]:
    K = 20
    return [(f"dtcond windowed ({size_name})", "dtcond", K), (f"dtcond 2K segments ({size_name})", "dtcond", 2 * K),
            (f"HF DecisionTransformerModel ({size_name})", "hf", K)]


SIZES = {"paper": PAPER, "cpu preset": SMALL}


def build(impl: str, size: dict):
    return (make_dtcond if impl == "dtcond" else make_hf)(size)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux: /proc/self/clear_refs) and return the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def memory_child(impl: str, size_name: str, T: int, steps: int) -> None:
    torch.manual_seed(0)
    model, step = build(impl, SIZES[size_name])
    b = batch(T)
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        b = {k: v.cuda() for k, v in b.items()}
    before = _reset_peak_rss()
    for _ in range(steps):
        step(b)
    peak = _status_kb("VmHWM")
    out = {"peak_rss_mb": peak / 1024, "train_rss_mb": (peak - before) / 1024}
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-child", nargs=3, metavar=("IMPL", "SIZE", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        impl, size_name, T = args.memory_child
        memory_child(impl, size_name, int(T), 5)
        return
    rows = []
    for size_name, size in SIZES.items():
        runs = []
        for label, impl, T in variants(size_name):
            torch.manual_seed(0)
            model, step = build(impl, size)
            b = batch(T)
            for _ in range(3):  # warm-up
                step(b)
            runs.append({"label": label, "impl": impl, "T": T, "step": step, "batch": b, "times": [],
                         "params": sum(p.numel() for p in model.parameters())})
        for _ in range(args.repeats):  # interleaved repeats
            for r in runs:
                start = time.perf_counter()
                for _ in range(args.steps):
                    r["step"](r["batch"])
                r["times"].append((time.perf_counter() - start) / args.steps)
        hf = next(r for r in runs if r["impl"] == "hf")
        for r in runs:
            ms = 1e3 * median(r["times"])
            mem = json.loads(subprocess.run([sys.executable, __file__, "--memory-child", r["impl"], size_name, str(r["T"])],
                                            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            rows.append({"model": r["label"], "params": r["params"], "T": r["T"], "ms_per_step": ms,
                         "samples_per_s": B / (ms / 1e3), "predictions_per_s": B * r["T"] / (ms / 1e3),
                         "vs_hf_samples": (1e3 * median(hf["times"])) / ms, **mem})
    print(markdown_table(rows, ["model", "params", "T", "ms_per_step", "samples_per_s", "predictions_per_s", "vs_hf_samples", "train_rss_mb"]))
    path = write("train", {"batch": B, "obs_dim": OBS, "act_dim": ACT, "steps": args.steps, "repeats": args.repeats, "rows": rows})
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
