#!/usr/bin/env bash
# A new user on a TomatoGarden mixture no preset uses (other weights, noise levels and seed): `dtcond collect`,
# `dtcond train` (BC and the DT, shipped defaults), `dtcond eval` (BC; the DT at quantilizer:q), every episode scored
# on the data's exact likelihood. Writes results/new_user.json (trajectory KL per policy and target, nats/episode).
#   bash experiments/fidelity/new_user.sh [work dir]          # about 25 min on one core
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=${1:-outputs/experiments/fidelity/new_user}
rm -rf "$W"; mkdir -p "$W"; W=$(cd "$W" && pwd)
export MINARI_DATASETS_PATH=$W/minari DTCOND_CACHE=$W/cache OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
D="${DTCOND:-dtcond}"
$D collect env=tomato dataset_id=user/tomato-other-v0 seed=7 progress=false \
  'behavior=[{policy: tomato_gardener, noise: 0.1, weight: 0.3}, {policy: tomato_gardener, noise: 0.4, weight: 0.25}, {policy: tomato_stumbler, noise: 0.3, weight: 0.2}, {policy: tomato_gamer, noise: 0.2, weight: 0.1}, {policy: random, weight: 0.15}]' \
  hydra.run.dir="$W/h/collect"
$D train dataset=tomato dataset.id=user/tomato-other-v0 condition_on_return=false trainer.enable_progress_bar=false hydra.run.dir="$W/bc"
$D train dataset=tomato dataset.id=user/tomato-other-v0 trainer.enable_progress_bar=false hydra.run.dir="$W/dt"
$D eval policy="$W/bc/policy" results="$W/results.jsonl" episodes=40 hydra.run.dir="$W/h/e1"
$D eval policy="$W/dt/policy" results="$W/results.jsonl" episodes=40 sampler=quantilizer 'sampler.qs=[0.5,0.25,0.1]' hydra.run.dir="$W/h/e2"
"${PYTHON:-python}" "$HERE/new_user_summary.py" "$W/results.jsonl" "$W/bc/policy/card.json" "$HERE/results/new_user.json"
