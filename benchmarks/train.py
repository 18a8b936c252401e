"""Model-only training throughput and peak memory: dtcond's DecisionTransformer vs Hugging Face's DecisionTransformerModel.

Both models get the same size (the DT paper's Gym config: K=20, width 128, 3 layers, 1 head,
dropout 0.1; and dtcond's CPU preset, width 64, no dropout), the same batches (B windows of K=20
steps of Hopper-sized data: obs 11, actions 3) and AdamW. Each step is forward + loss + backward +
optimizer step, on the GPU when there is one. dtcond's step is its training loss
(``DTModule.action_loss``) and its optimizer (``configure_optimizer``: fused AdamW); HF's is an MSE
loss on its tanh actions. Throughput is measured in one process with the models interleaved (so
machine noise hits all alike), medians over repeats; peak memory in one fresh subprocess per model
(max RSS above the RSS before the first step; CUDA: max allocated).

Rows: dtcond with the same deterministic tanh head as HF (``mse``) on K-step windows, like for
like; the same on its default 2K-step segments (each sample then carries 2K predictions); and its
default binned head on 2K segments (what ``dtcond train`` runs). ``--compile`` adds rows with the
loss under ``torch.compile`` (what ``trainer.compile=<mode>`` does); ``--precision bf16-mixed`` rows
run every model's forward under bf16 autocast, as Lightning's ``bf16-mixed`` does (``vs_hf`` compares
with HF at the same precision). The whole ``dtcond train`` loop is ``benchmarks/loop.py``.

    pip install -e '.[bench]'            # transformers
    python benchmarks/train.py                                           # CPU, or the GPU when there is one
    python benchmarks/train.py --batch 64 512 --compile default reduce-overhead   # e.g. on CUDA
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common import PAPER, SMALL, device_tag, markdown_table, median, pick_device, sync, synthetic_stats, write

OBS, ACT = 11, 3


def batch(B: int, T: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = dict(
        observations=torch.randn(B, T, OBS, generator=g),
        actions=torch.rand(B, T, ACT, generator=g) * 2 - 1,
        returns_to_go=torch.rand(B, T, generator=g) * 3000,
        timesteps=torch.randint(0, 980, (B, 1), generator=g) + torch.arange(T),
        mask=torch.ones(B, T, dtype=torch.bool),
    )
    return {k: v.to(device) for k, v in b.items()}


def autocast(device, precision: str):
    """Lightning's ``bf16-mixed``: the forward under bf16 autocast, weights and optimizer in fp32."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_dtcond(size: dict, device, head: str = "mse", compile_mode: str | None = None, precision: str = "32-true"):
    from dtcond.dt.model import configure_optimizer
    from dtcond.dt.training import DTModule, model_config_for

    cfg = model_config_for(synthetic_stats(OBS, ACT), **size, max_timestep=1000, return_scale=1000.0, action_head=head)
    module = DTModule(cfg.to_dict(), synthetic_stats(OBS, ACT).to_dict()).to(device).train()
    # As dtcond.train: the fused AdamW, except under mixed precision, where Lightning can only clip an unfused one.
    opt = configure_optimizer(module.model, lr=1e-4, weight_decay=1e-4, fused=False if precision.endswith("mixed") else None)
    loss_fn = torch.compile(module.action_loss, mode=compile_mode) if compile_mode else module.action_loss

    def step(b):
        with autocast(device, precision):
            loss = loss_fn(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return module.model, step


def make_hf(size: dict, device, precision: str = "32-true"):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    cfg = DecisionTransformerConfig(state_dim=OBS, act_dim=ACT, hidden_size=size["n_embd"], n_layer=size["n_layer"],
                                    n_head=size["n_head"], n_inner=4 * size["n_embd"], max_ep_len=1000, action_tanh=True,
                                    resid_pdrop=size["dropout"], embd_pdrop=size["dropout"], attn_pdrop=size["dropout"],
                                    n_positions=3 * size["context_len"])
    model = DecisionTransformerModel(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)

    def step(b):
        with autocast(device, precision):
            out = model(states=b["observations"], actions=b["actions"], returns_to_go=b["returns_to_go"][..., None] / 1000.0,
                        timesteps=b["timesteps"], attention_mask=b["mask"].long(), return_dict=True)
            loss = F.mse_loss(out.action_preds, b["actions"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


SIZES = {"paper": PAPER, "cpu preset": SMALL}


def variants(size_name: str, compile_modes: list[str], precisions: list[str]) -> list[dict]:
    K = 20
    rows = []
    for p in precisions:
        tag = f"{size_name}" + (f", {p}" if p != "32-true" else "")
        rows += [dict(label=f"dtcond windowed, mse head ({tag})", impl="dtcond", T=K, head="mse", precision=p),
                 dict(label=f"dtcond 2K segments, mse head ({tag})", impl="dtcond", T=2 * K, head="mse", precision=p),
                 dict(label=f"dtcond 2K segments, bins head ({tag})", impl="dtcond", T=2 * K, head="bins", precision=p),
                 dict(label=f"HF DecisionTransformerModel ({tag})", impl="hf", T=K, head="mse", precision=p)]
        for mode in compile_modes:
            rows.append(dict(label=f"dtcond windowed, mse head, compile={mode} ({tag})", impl="dtcond", T=K, head="mse",
                             compile=mode, precision=p))
            rows.append(dict(label=f"dtcond 2K segments, bins head, compile={mode} ({tag})", impl="dtcond", T=2 * K,
                             head="bins", compile=mode, precision=p))
    return rows


def build(v: dict, size: dict, device):
    if v["impl"] == "hf":
        return make_hf(size, device, v["precision"])
    return make_dtcond(size, device, v["head"], v.get("compile"), v["precision"])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux: /proc/self/clear_refs) and return the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def memory_child(spec: dict, steps: int) -> None:
    torch.manual_seed(0)
    device = pick_device(spec["device"])
    _, step = build(spec, SIZES[spec["size"]], device)
    b = batch(spec["B"], spec["T"], device)
    before = _reset_peak_rss()
    for _ in range(steps):
        step(b)
    sync(device)
    peak = _status_kb("VmHWM")
    out = {"peak_rss_mb": peak / 1024, "train_rss_mb": (peak - before) / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 64 on CPU, 64 and 512 on CUDA)")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--compile", nargs="*", default=[], help="torch.compile modes to add rows for, e.g. default reduce-overhead")
    ap.add_argument("--precision", nargs="+", default=["32-true"], help="32-true and/or bf16-mixed (every row, HF's too)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-row memory subprocesses")
    ap.add_argument("--note", default=None, help="recorded in the JSON, e.g. 'machine shared with other jobs'")
    ap.add_argument("--name", default=None, help="results/<name>.json (default: train_<cpu|cuda>)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(json.loads(args.memory_child), 5)
        return
    device = pick_device(args.device)
    batches = args.batch or ([64, 512] if device.type == "cuda" else [64])
    rows = []
    for size_name in args.sizes:
        size = SIZES[size_name]
        for B in batches:
            runs = []
            for v in variants(size_name, args.compile, args.precision):
                torch.manual_seed(0)
                model, step = build(v, size, device)
                b = batch(B, v["T"], device)
                for _ in range(3):  # warm-up (and compilation)
                    step(b)
                sync(device)
                runs.append({**v, "step": step, "batch": b, "times": [], "params": sum(p.numel() for p in model.parameters())})
            for _ in range(args.repeats):  # interleaved repeats
                for r in runs:
                    sync(device)
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        r["step"](r["batch"])
                    sync(device)
                    r["times"].append((time.perf_counter() - start) / args.steps)
            hf_ms = {r["precision"]: 1e3 * median(r["times"]) for r in runs if r["impl"] == "hf"}
            for r in runs:
                ms = 1e3 * median(r["times"])
                row = {"model": r["label"], "batch": B, "precision": r["precision"], "params": r["params"], "T": r["T"],
                       "ms_per_step": ms, "samples_per_s": B / (ms / 1e3), "predictions_per_s": B * r["T"] / (ms / 1e3),
                       "vs_hf_samples": hf_ms[r["precision"]] / ms, "vs_hf_fp32_samples": hf_ms.get("32-true", float("nan")) / ms,
                       "ms_repeats": [1e3 * t for t in r["times"]], "device": str(device)}
                if not args.no_memory:
                    spec = {k: r[k] for k in ("impl", "T", "head", "precision")} | {"compile": r.get("compile"), "size": size_name,
                                                                                    "B": B, "device": str(device)}
                    out = subprocess.run([sys.executable, __file__, "--memory-child", json.dumps(spec)],
                                         check=True, capture_output=True, text=True).stdout
                    row.update(json.loads(out.strip().splitlines()[-1]))
                rows.append(row)
    print(markdown_table(rows, ["model", "batch", "T", "ms_per_step", "samples_per_s", "vs_hf_samples", "vs_hf_fp32_samples",
                                "train_rss_mb", "cuda_max_allocated_mb"]))
    path = write(args.name or f"train_{device_tag(device)}", {"device": str(device), "obs_dim": OBS, "act_dim": ACT, "steps": args.steps,
                                                 "repeats": args.repeats, "rows": rows}, note=args.note)
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
