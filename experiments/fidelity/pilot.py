"""One-seed pilot of a BC setting on TomatoGarden, outside the study: python experiments/fidelity/pilot.py EPISODES,K,SEGMENT,STEPS,BATCH,DROPOUT ...

Each spec trains BC (best-validation export), rolls it out 100 episodes on env seeds from 1000 and appends a row
(trajectory KL mean and 1.96 s.e. over episodes, val/kl_data, wall time) to results/pilot.jsonl."""
import os, sys, time, json
from pathlib import Path
import numpy as np, torch
torch.set_num_threads(1)
import warnings; warnings.filterwarnings("ignore")
import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
import dtcond
from dtcond.behavior.collection import ensure_dataset
from dtcond.config import env_preset
from dtcond.analysis.roaming import RoamingScorer
from dtcond.rollout.evaluation import evaluate
from dtcond.dt.training import train
from dataclasses import replace
env = env_preset("tomato")
out = "outputs/experiments/fidelity/pilot"
for spec in sys.argv[1:]:
    eps, K, seg, steps, bs, drop = spec.split(",")
    eps, K, seg, steps, bs, drop = int(eps), int(K), int(seg), int(steps), int(bs), float(drop)
    ds = f"dtcond/tomato/fidelity-{eps}-v0"
    ensure_dataset(replace(env, collect_episodes=eps), ds, seed=0)
    t = time.time()
    r = train(ds, f"{out}/bc_{spec.replace(',', '_')}", model={"context_len": K, "dropout": drop},
              data={"segment_len": seg, "val_windows": 256, "batch_size": bs},
              trainer={"max_steps": steps, "enable_progress_bar": False, "logger": False}, condition_on_return=False, checkpoint_every=250)
    tt = time.time() - t
    data = dtcond.load_dataset(ds); scorer = RoamingScorer.for_data(data)
    pol = dtcond.load_policy(r.bundle)
    t2 = time.time()
    recs = evaluate(pol, None, episodes=100, seed=1000, scorer=scorer)
    kl = np.array([x["trajectory_kl"] for x in recs], float)
    row = dict(spec=spec, train_s=tt, eval_s=time.time() - t2, steps=r.global_step, best=r.best_step, val=r.val_metrics, kl=kl.mean(), ci=1.96*kl.std(ddof=1)/10,
               true=float(np.mean([x["true_return"] for x in recs])))
    print(json.dumps(row), flush=True)
    Path(out).mkdir(parents=True, exist_ok=True); open(Path(__file__).parent / "results" / "pilot.jsonl", "a").write(json.dumps(row) + "\n")
