"""The catalogue of bad inputs: each answered by one line naming the problem, exit code 2, nothing damaged.

Every case runs the real CLI in a subprocess against a shared dataset and policy; the test hashes the
datasets, the policy and the results table before and after, so "nothing already written is lost"
is checked, not assumed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import run_cli


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for root in paths:
        for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            h.update(str(f).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dataset, a trained tiny policy, a corrupt copy of it and a results table, made once."""
    import shutil

    from dtcond.behavior import Component
    from dtcond.collection import collect
    from dtcond.evaluation import evaluate
    from dtcond.checkpoints import load_policy
    from dtcond.training import train

    root = tmp_path_factory.mktemp("world")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "datasets")
    try:
        collect("CartPole-v1", [Component("cartpole_balance", 0.5, 0.5), Component("random", weight=0.5)], 12,
                "bad/cartpole-v0", progress=False)
        run = train("bad/cartpole-v0", root / "run", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                    data=dict(batch_size=8, steps_per_epoch=5), trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
        evaluate(load_policy(run.bundle), ["q0.5"], episodes=2, results=root / "results.jsonl")
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    corrupt = root / "corrupt"
    shutil.copytree(run.bundle, corrupt)
    (corrupt / "model.safetensors").write_bytes((corrupt / "model.safetensors").read_bytes()[:100])
    (root / "a_file").write_text("not a folder")
    return {"root": root, "ds": f"datasets_path={root / 'datasets'}", "policy": str(run.bundle),
            "corrupt": str(corrupt), "results": str(root / "results.jsonl")}


def _args(world, *args):
    out = []
    for a in args:
        for key, value in world.items():
            a = a.replace("{" + key + "}", str(value))
        out.append(a)
    return out


CASES = [
    # collect
    ("collect-unknown-env", ("collect", "{ds}", "env.id=NoSuchEnv-v9", "dataset_id=xx/yy-v0"), "cannot make env 'NoSuchEnv-v9'"),
    ("collect-weights", ("collect", "{ds}", "behavior=[{policy: random, weight: 0.5}]", "dataset_id=xx/yy-v0"), "mixture weights must sum to 1"),
    ("collect-zero-episodes", ("collect", "{ds}", "episodes=0", "dataset_id=xx/yy-v0"), "episodes must be >= 1"),
    ("collect-episodes-type", ("collect", "{ds}", "episodes=many", "dataset_id=xx/yy-v0"), "config key episodes: Value 'many'"),
    ("collect-unknown-policy", ("collect", "{ds}", "behavior=[{policy: jump, weight: 1.0}]", "dataset_id=xx/yy-v0"), "unknown behaviour policy 'jump'"),
    ("collect-negative-noise", ("collect", "{ds}", "behavior=[{policy: random, noise: -1, weight: 1.0}]", "dataset_id=xx/yy-v0"), "noise must be >= 0"),
    ("collect-no-version", ("collect", "{ds}", "dataset_id=noversion"), "invalid dataset id 'noversion'"),
    ("collect-exists", ("collect", "{ds}", "dataset_id=bad/cartpole-v0", "episodes=2"), "already exists"),
    ("collect-missing-sb3", ("collect", "{ds}", "behavior=[{policy: 'sb3:/no/such.zip', weight: 1.0}]", "dataset_id=xx/yy-v0"), "does not exist"),
    ("collect-typo-key", ("collect", "{ds}", "episods=3"), "unknown config key episods; CollectConfig takes: env, dataset_id, episodes"),
    ("collect-typo-group", ("collect", "{ds}", "env=cartpol"), "Could not find 'env/cartpol' (available: cartpole, gamble, hopper_cost, "),
    # train
    ("train-unknown-dataset", ("train", "{ds}", "dataset.id=nope/none-v0"), "unknown dataset id 'nope/none-v0'"),
    ("train-context-too-long", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.context_len=100000"), "exceeds the dataset's longest episode"),
    ("train-context-zero", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.context_len=0"), "context_len must be >= 1"),
    ("train-zero-steps", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.max_steps=0"), "max_steps must be a positive integer"),
    ("train-unknown-model-key", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "+model.widht=3"), "widht"),
    ("train-unknown-model", ("train", "{ds}", "model=huge"), "Could not find 'model/huge'"),
    ("train-zero-batch", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "data.batch_size=0"), "data.batch_size must be >= 1"),
    ("train-top-fraction", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "condition_on_return=false", "top_fraction=1.5"), "top_fraction must be in (0, 1]"),
    ("train-unknown-trainer-arg", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "+trainer.max_stepz=3"), "unknown config key trainer.max_stepz"),
    ("train-bad-trainer-value", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.accelerator=quantum"), "trainer config: You selected an invalid accelerator"),
    ("train-steps-type", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.max_steps=many"), "config key trainer.max_steps: Value 'many'"),
    ("train-lr-type", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "optim.lr=fast"), "config key optim.lr: Value 'fast'"),
    ("train-gamma", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "dataset.gamma=0.99"), "dataset.gamma=0.99 is not supported"),
    ("train-unknown-logger", ("train", "{ds}", "logger=neptune"), "Could not find 'logger/neptune' (available: csv, mlflow, tensorboard, wandb)"),
    # eval
    ("eval-missing-policy", ("eval", "{ds}", "policy={root}/nothing", "results={results}"), "no policy at"),
    ("eval-not-a-policy", ("eval", "{ds}", "policy={root}", "results={results}"), "not a policy bundle"),
    ("eval-corrupt-policy", ("eval", "{ds}", "policy={corrupt}", "results={results}"), "corrupt or truncated"),
    ("eval-quantile-range", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target=q1.5"), "quantile must be in [0, 1]"),
    ("eval-nan-target", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target=nan"), "value must be finite, got nan"),
    ("eval-inf-target", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target=inf"), "must be finite"),
    ("eval-absurd-target", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target=1e12"), "is it a typo"),
    ("eval-quantilizer-zero", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target=quantilizer:0"), "must be in (0, 1]"),
    ("eval-zero-episodes", ("eval", "{ds}", "policy={policy}", "results={results}", "episodes=0"), "episodes must be >= 1"),
    ("eval-env-mismatch", ("eval", "{ds}", "policy={policy}", "results={results}", "env_id=Pendulum-v1", "roaming=false"), "do not match the policy"),
    ("eval-results-unwritable", ("eval", "{ds}", "policy={policy}", "results={root}/a_file/results.jsonl"), "cannot write results to"),
    ("eval-bad-decode", ("eval", "{ds}", "policy={policy}", "results={results}", "decode=fast"), "decode must be 'cached' or 'window'"),
    ("eval-temperature", ("eval", "{ds}", "policy={policy}", "results={results}", "temperature=0"), "temperature must be a positive number"),
    ("eval-greedy-type", ("eval", "{ds}", "policy={policy}", "results={results}", "greedy=sometimes"), "config key greedy"),
    ("eval-no-policy", ("eval", "{ds}", "results={results}"), "config key policy: Structured config of type `EvalConfig` has missing mandatory value"),
    # demo: a wrong type deep in the config fails before the first stage runs
    ("demo-bc-steps-type", ("demo", "{ds}", "bc.steps=many", "out_dir={root}/demo"), "config key bc.steps"),
    # baseline, report
    ("baseline-sac-discrete", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "algo=sac", "hydra.run.dir={root}/b1"), "SAC needs continuous"),
    ("baseline-zero-budget", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "budget=0", "hydra.run.dir={root}/b2"), "budget must be >= 1"),
    ("baseline-unknown-algo", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "algo=dqn", "hydra.run.dir={root}/b3"), "unknown algo 'dqn'"),
    ("report-missing", ("report", "results={root}/none.jsonl"), "no results table at"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_damages_nothing(world, tmp_path, args, message):
    root = world["root"]
    before = digest(root / "datasets", Path(world["policy"]), Path(world["results"]))
    out = run_cli(*_args(world, *args), cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"dtcond {args[0]}: error: ") and message in lines[0], out.stderr
    assert digest(root / "datasets", Path(world["policy"]), Path(world["results"])) == before
    assert not [p for p in (root / "datasets").rglob("yy-v0")]  # no dataset appeared under a refused id
