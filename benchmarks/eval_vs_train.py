"""Is evaluation cheap next to training? A 10-target × 10-episode Pendulum grid vs 1,000 training steps.

Trains dtcond's CPU preset (conf/model/small.yaml) through ``dtcond.train`` (Lightning) on the
default Pendulum mixture, then evaluates the trained policy on 10 targets × 10 episodes through
``dtcond.evaluate`` (one batched, cached rollout of 100 episodes × 200 steps). Everything runs in a
temp dir. With ``--train-steps`` below 1,000 the 1,000-step time is scaled from the measured steps
(and the table says so).

    python benchmarks/eval_vs_train.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import markdown_table, median, write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="evaluation repeats (training runs once)")
    args = ap.parse_args()
    from omegaconf import OmegaConf

    import dtcond
    from dtcond.config import conf_dir
    from dtcond.targets import grid

    with tempfile.TemporaryDirectory() as root:
        os.environ["MINARI_DATASETS_PATH"] = os.path.join(root, "datasets")
        dtcond.ensure_dataset(dtcond.env_preset("pendulum"), "bench/pendulum-v0")  # `dtcond collect env=pendulum`'s data
        model = dict(OmegaConf.load(conf_dir() / "model" / "small.yaml"))
        start = time.perf_counter()
        run = dtcond.train("bench/pendulum-v0", os.path.join(root, "run"), model=model, checkpoint_every=args.train_steps,
                           trainer=dict(max_steps=args.train_steps, enable_progress_bar=False, enable_model_summary=False, logger=False))
        train_s = time.perf_counter() - start
        policy = dtcond.load_policy(run.bundle)
        targets = grid(policy.stats, n=10, low=0.05, high=0.95, ood_scales=())
        evals = []
        for rep in range(args.repeats):
            start = time.perf_counter()
            records = dtcond.evaluate(policy, targets, episodes=10, seed=rep)
            evals.append(time.perf_counter() - start)
    per_1000 = train_s * 1000 / args.train_steps
    rows = [{"job": f"train, {args.train_steps} steps (Lightning, CPU preset)", "seconds": train_s}]
    if args.train_steps != 1000:
        rows.append({"job": "train, 1000 steps (scaled)", "seconds": per_1000})
    rows += [{"job": f"evaluate 10 targets x 10 episodes ({sum(r['length'] for r in records)} env steps), median of {args.repeats}",
             "seconds": median(evals)}]
    print(markdown_table(rows, ["job", "seconds"]))
    print(f"\nevaluation / 1000 training steps = {median(evals) / per_1000:.3f}")
    path = write("eval_vs_train", {"train_steps": args.train_steps, "train_s": train_s, "train_1000_s": per_1000,
                                   "eval_s": evals, "eval_over_train_1000": median(evals) / per_1000})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
