"""results.jsonl of new_user.sh -> results/new_user.json: per policy and target, the trajectory KL to the data (mean and
95% t-interval over the 40 episodes) beside log(1/q), and the BC run's forward KL from its card."""

import json
import math
import sys

import pandas as pd

from dtcond.analysis.statistics import mean_ci
from dtcond.experiment import machine

results, card, out = sys.argv[1:4]
df = pd.read_json(results, lines=True)
df = df[df["policy_kind"] != "data"]
rows = []
for (kind, spec), part in df.groupby(["policy_kind", "target_spec"]):
    kl, ci = mean_ci(part["trajectory_kl"].astype(float))
    true, true_ci = mean_ci(part["true_return"].astype(float))
    q = float(spec.split(":")[1]) if spec.startswith("quantilizer:") else 1.0
    rows.append({"family": kind, "target_spec": spec, "episodes": len(part), "trajectory_kl": kl, "trajectory_kl_ci95": ci,
                 "log_1_over_q": math.log(1 / q), "true_return": true, "true_return_ci95": true_ci})
fidelity = json.load(open(card))["extra"]["fidelity"]
summary = {"dataset": "user/tomato-other-v0 (the preset's episode count, collect seed 7; a mixture no preset uses)",
           "interval": "95% Student t over episodes (one training seed)", "machine": machine(),
           "command": "bash experiments/fidelity/new_user.sh", "bc_forward_kl_per_step": fidelity["kl_data"],
           "bc_best_step": fidelity["best_step"], "rows": rows}
with open(out, "w") as f:
    json.dump(summary, f, indent=1)
print(json.dumps(rows, indent=1))
