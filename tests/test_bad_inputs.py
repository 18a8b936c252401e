"""The catalogue of bad inputs: each answered by one line naming the problem, exit code 2, nothing damaged.

Every case runs the real CLI in a process of its own against a shared dataset and policy; the test
hashes the datasets, the policies and the results table before and after, so "nothing already
written is lost" is checked, not assumed. The processes are forked from one warm interpreter that has
done dtcond's imports (``conftest.WarmCli``), which makes a case take under a second instead of 2-10 s;
that the imports print nothing is checked once, and one case of each kind also runs from a cold start.

The ``data-*`` cases are datasets a user might bring: written in a temp dir by Minari's own writer, then
damaged (bytes zeroed, the file cut, metadata edited, episodes of the wrong length, shape or range,
NaN/inf, spaces dtcond cannot model). Each damage is also checked through the library
(``dtcond.load_dataset`` raises a one-line ``DtcondError``), with more damages than the CLI runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from conftest import WarmCli, rng_episode, run_cli, write_buffers


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

    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect
    from dtcond.rollout.evaluation import evaluate
    from dtcond.families import load_policy
    from dtcond.dt.training import train

    root = tmp_path_factory.mktemp("world")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "datasets")
    try:
        collect("CartPole-v1", [Component("cartpole_balance", 0.5, 0.5), Component("random", weight=0.5)], 12,
                "bad/cartpole-v0", progress=False)
        run = train("bad/cartpole-v0", root / "run", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                    data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
                    trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
        evaluate(load_policy(run.bundle), ["q0.5"], episodes=2, results=root / "results.jsonl")
        for name, (build, _) in DAMAGED.items():
            build(root / "datasets", f"dmg/{name}-v0")
        gone = train_on_a_vanished_env(root)
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
            "corrupt": str(corrupt), "results": str(root / "results.jsonl"), "gone": str(gone)}


# ----------------------------------------------------------------------------------------------
# Damaged datasets: each written by Minari's writer into a temp root, then damaged.

BOX3 = gym.spaces.Box(-10.0, 10.0, (3,), np.float32)
BOX1 = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
BAD = 2  # the episode each per-episode damage lands in (of 4), so messages must name it


def episodes(obs_dim: int = 3, discrete: int | None = None) -> list[dict]:
    return [rng_episode(8, obs_dim=obs_dim, seed=i, discrete=discrete) for i in range(4)]


def written(edit=None, obs_space=BOX3, act_space=BOX1, eps=None):
    """A builder: four 8-step episodes through Minari's writer, ``edit`` applied to episode ``BAD`` first."""
    def build(root: Path, dataset_id: str) -> None:
        eps_ = eps() if eps else episodes()
        if edit is not None:
            edit(eps_[BAD])
        write_buffers(dataset_id, eps_, observation_space=obs_space, action_space=act_space)
    return build


def damaged(damage, **kwargs):
    """A builder: a well-formed dataset, then ``damage(data_dir)`` applied to its files."""
    def build(root: Path, dataset_id: str) -> None:
        written(**kwargs)(root, dataset_id)
        damage(root / dataset_id / "data")
    return build


def zero_bytes(offset: int, n: int = 4096):
    def damage(data: Path) -> None:
        f = data / "main_data.hdf5"
        b = bytearray(f.read_bytes())
        b[offset:offset + n] = bytes(len(b[offset:offset + n]))
        f.write_bytes(bytes(b))
    return damage


def cut_to_half(data: Path) -> None:
    f = data / "main_data.hdf5"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def edit_metadata(**changes):
    def damage(data: Path) -> None:
        meta = json.loads((data / "metadata.json").read_text())
        meta.update({k: (v(meta[k]) if callable(v) else v) for k, v in changes.items()})
        (data / "metadata.json").write_text(json.dumps(meta))
    return damage


def empty_episode(data: Path) -> None:
    """Episode BAD cut to zero steps in place (Minari's writer refuses to write one)."""
    import h5py

    with h5py.File(data / "main_data.hdf5", "a") as f:
        ep = f[f"episode_{BAD}"]
        for key in ("actions", "rewards", "terminations", "truncations"):
            ep[key].resize(0, axis=0)
        ep["observations"].resize(1, axis=0)
        ep.attrs["total_steps"] = 0


def graph_space(data: Path) -> None:
    from minari.serialization import serialize_space

    graph = {"type": "Graph", "node_space": serialize_space(BOX3, to_string=False),
             "edge_space": serialize_space(gym.spaces.Discrete(3), to_string=False)}
    edit_metadata(observation_space=json.dumps(graph))(data)


def setitem(field: str, index, value):
    def edit(ep: dict) -> None:
        ep[field][index] = value
    return edit


def replace(field: str, make):
    def edit(ep: dict) -> None:
        ep[field] = make(ep[field])
    return edit


def text_episodes() -> list[dict]:
    eps = episodes()
    for ep in eps:
        ep["observations"] = ["abc"] * len(ep["observations"])
    return eps


NESTED = gym.spaces.Tuple((gym.spaces.Tuple((gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3))), BOX3))


def nested_episodes() -> list[dict]:
    eps = episodes()
    for ep in eps:
        n = len(ep["observations"])
        ep["observations"] = ((np.zeros((n, 2), np.float32), np.zeros(n, np.int64)), ep["observations"])
    return eps


def dict_obs(eps_list):
    for ep in eps_list:
        o = ep["observations"]
        ep["observations"] = {"a": o[:, :2], "b": o[:, 2:]}
    return eps_list


DICT = gym.spaces.Dict({"a": gym.spaces.Box(-10, 10, (2,), np.float32), "b": gym.spaces.Box(-10, 10, (1,), np.float32)})
EP = f"episode {BAD}"
# name -> (builder, what the one line must say); "{id}" is the dataset id.
DAMAGED = {
    "hdf5-zeroed-4k": (damaged(zero_bytes(2048)), "'{id}' episode 0 cannot be read (Unable to synchronously check link existence (bad symbol table node signature))"),
    "hdf5-zeroed-superblock": (damaged(zero_bytes(0)), "main_data.hdf5 cannot be read (Unable to synchronously open file (file signature not found)); it is corrupt or truncated"),
    "hdf5-zeroed-heap": (damaged(zero_bytes(512)), "episode 0 cannot be read (Unable to synchronously open object (bad local heap signature))"),
    "hdf5-truncated": (damaged(cut_to_half), "main_data.hdf5 cannot be read (Unable to synchronously open file (truncated file: eof = "),
    "hdf5-empty": (damaged(lambda d: (d / "main_data.hdf5").write_bytes(b"")), "main_data.hdf5 cannot be read"),
    "metadata-missing": (damaged(lambda d: (d / "metadata.json").unlink()), "'{id}' at "),
    "metadata-garbled": (damaged(lambda d: (d / "metadata.json").write_text((d / "metadata.json").read_text()[:40])), "metadata.json cannot be read"),
    "episode-missing": (damaged(edit_metadata(total_episodes=lambda n: n + 1)), "'{id}' episode 4 cannot be read"),
    "steps-miscounted": (damaged(edit_metadata(total_steps=lambda n: n + 3)), "metadata.json records 35 steps but its 4 episodes hold 32"),
    "zero-length-episode": (damaged(empty_episode), f"'{{id}}' {EP} has no steps (a zero-length episode)"),
    "obs-count-short": (written(replace("observations", lambda o: o[:-1])), f"'{{id}}' {EP} has 8 observations for 8 actions; Minari stores one more"),
    "obs-count-long": (written(replace("observations", lambda o: np.concatenate([o, o[:1]]))), f"{EP} has 10 observations for 8 actions"),
    "actions-count": (written(replace("actions", lambda a: a[:-1])), f"{EP} has 7 actions for 8 rewards"),
    "obs-outside-space": (written(setitem("observations", (3, 1), 50.0)), f"{EP}: observation at step 3 ("),
    "obs-shape": (written(eps=lambda: episodes(obs_dim=4)), "episode 0: observations have shape (4,) per step but the space Box(-10.0, 10.0, (3,), float32) declares (3,)"),
    "action-outside-space": (written(setitem("actions", (5, 0), 3.0)), f"{EP}: action at step 5 ([3.]) is outside the declared space Box(-1.0, 1.0, (1,), float32)"),
    "action-shape": (written(eps=lambda: [dict(ep, actions=np.zeros((8, 2), np.float32)) for ep in episodes()]), "actions have shape (2,) per step but the space Box(-1.0, 1.0, (1,), float32) declares (1,)"),
    "discrete-action-range": (written(setitem("actions", 4, 5), act_space=gym.spaces.Discrete(2), eps=lambda: episodes(discrete=2)), f"{EP}: action at step 4 (5) is outside the declared space Discrete(2)"),
    "nan-observations": (written(setitem("observations", (2, 0), np.nan)), f"{EP} has NaN/inf observations (first at step 2)"),
    "inf-observations": (written(setitem("observations", (6, 2), -np.inf), obs_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)), f"{EP} has NaN/inf observations (first at step 6)"),
    "nan-rewards": (written(setitem("rewards", 1, np.nan)), f"{EP} has NaN/inf rewards (first at step 1)"),
    "inf-rewards": (written(setitem("rewards", 7, np.inf)), f"{EP} has NaN/inf rewards (first at step 7)"),
    "nan-actions": (written(setitem("actions", (0, 0), np.nan)), f"{EP} has NaN/inf actions (first at step 0)"),
    "dict-entries-disagree": (written(replace("observations", lambda o: {**o, "b": o["b"][:-1]}), obs_space=DICT, eps=lambda: dict_obs(episodes())), "the observations entries differ in length ({'a': 9, 'b': 8})"),
    "graph-space": (damaged(graph_space), "'{id}': unsupported observation space Graph; dtcond reads observations of Box, Discrete, MultiDiscrete, MultiBinary and Text spaces, nested in Dict and Tuple"),
    "multidiscrete-actions": (written(act_space=gym.spaces.MultiDiscrete([2, 3]), eps=lambda: [dict(ep, actions=np.zeros((8, 2), np.int64)) for ep in episodes()]), "unsupported action space MultiDiscrete: dtcond handles Box or Discrete actions"),
}

# The damages the CLI runs too (each costs a `dtcond train` start); the library test takes all of them.
CLI_DAMAGED = ("hdf5-zeroed-4k", "hdf5-truncated", "metadata-missing", "obs-count-short", "obs-outside-space", "obs-shape",
               "action-outside-space", "action-shape", "zero-length-episode", "nan-observations", "inf-rewards",
               "graph-space")

VANISHED = "vanished/CartPole-v0"


def train_on_a_vanished_env(root: Path) -> Path:
    """A policy trained on a dataset whose env's package is gone: training must not need it.

    The env lives in a module of its own (``vanished_envs``), importable only while the dataset is
    collected, as a package later uninstalled.
    """
    import importlib
    import sys

    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect
    from dtcond.dt.training import train

    pkg = root / "vanished-pkg"
    pkg.mkdir()
    (pkg / "vanished_envs.py").write_text("from gymnasium.envs.classic_control.cartpole import CartPoleEnv  # noqa: F401\n")
    sys.path.insert(0, str(pkg))
    gym.register(VANISHED, entry_point="vanished_envs:CartPoleEnv", max_episode_steps=50)
    try:
        collect(VANISHED, [Component("cartpole_balance", 0.5, 0.5), Component("random", weight=0.5)], 8, "gone/cartpole-v0",
                progress=False)
    finally:
        gym.registry.pop(VANISHED)
        sys.path.remove(str(pkg))
        sys.modules.pop("vanished_envs", None)
        (pkg / "vanished_envs.py").unlink()
        importlib.invalidate_caches()
    with pytest.raises(gym.error.Error):
        gym.spec(VANISHED)  # gone for training, as on a machine without the env's package
    run = train("gone/cartpole-v0", root / "gone-run", model=dict(context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0),
                data=dict(batch_size=8, steps_per_epoch=5, val_windows=32),
                trainer=dict(max_steps=5, enable_progress_bar=False, logger=False))
    return run.bundle


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
    ("collect-typo-group", ("collect", "{ds}", "env=cartpol"), "Could not find 'env/cartpol' (available: cartpole, gamble, hazard_grid, hopper_cost, "),
    # train
    ("train-unknown-dataset", ("train", "{ds}", "dataset.id=nope/none-v0"), "unknown dataset id 'nope/none-v0'"),
    ("train-context-too-long", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.context_len=100000"), "exceeds the dataset's longest episode"),
    ("train-context-zero", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.context_len=0"), "context_len must be >= 1"),
    ("train-cost-no-costs", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.cost_conditioned=true"),
     "model.cost_conditioned=true needs a dataset with costs; 'bad/cartpole-v0' has none"),
    ("train-dropout-one", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.dropout=1.0"), "model.dropout must be in [0, 1)"),
    ("train-unknown-activation", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "model=tiny", "model.activation=swish"), "activation must be one of"),
    ("train-zero-steps", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.max_steps=0"), "max_steps must be a positive integer"),
    ("train-unknown-model-key", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "+model.widht=3"), "widht"),
    ("train-unknown-model", ("train", "{ds}", "model=huge"), "Could not find 'model/huge'"),
    ("train-zero-batch", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "data.batch_size=0"), "data.batch_size must be >= 1"),
    ("train-top-fraction", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "condition_on_return=false", "top_fraction=1.5"), "top_fraction must be in (0, 1]"),
    ("train-unknown-trainer-arg", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "+trainer.max_stepz=3"), "unknown config key trainer.max_stepz"),
    ("train-bad-trainer-value", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.accelerator=quantum"), "trainer config: You selected an invalid accelerator"),
    ("train-steps-type", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "trainer.max_steps=many"), "config key trainer.max_steps: Value 'many'"),
    ("train-lr-type", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "optim.lr=fast"), "config key optim.lr: Value 'fast'"),
    ("train-lr-decay", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "optim.decay=linear"), "optim.decay must be 'none' or 'cosine', got 'linear'"),
    ("train-gamma", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "dataset.gamma=0.99"), "dataset.gamma=0.99 is not supported"),
    ("train-relabel-unknown", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "relabel=luckless"), "relabel must be one of none, esper, got 'luckless'"),
    ("train-relabel-bc", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "relabel=esper", "condition_on_return=false"),
     "relabel=esper relabels the returns a DT conditions on"),
    ("train-esper-clusters", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "relabel=esper", "esper.clusters=1"), "esper.clusters must be >= 2, got 1"),
    ("train-esper-lr", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "relabel=esper", "esper.cluster_lr=-0.1"), "esper.cluster_lr must be a positive number"),
    ("train-esper-weight-type", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "esper.adv_weight=strong"), "config key esper.adv_weight: Value 'strong'"),
    ("train-esper-unknown-key", ("train", "{ds}", "dataset.id=bad/cartpole-v0", "+esper.cluster=3"), "unknown config key esper.cluster; EsperConfig takes"),
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
    ("eval-cost-malformed", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target='q0.9,cost<q0.2'"), "cannot parse cost target 'cost<q0.2'"),
    ("eval-cost-two-parts", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target='q0.9,cost<=1,cost<=2'"), "(one comma)"),
    ("eval-cost-on-return-policy", ("eval", "{ds}", "policy={policy}", "results={results}", "sampler.target='q0.9,cost<=1'"),
     "has a cost part, but this policy was not trained with cost conditioning"),
    # demo: a wrong type deep in the config fails before the first stage runs
    ("demo-bc-steps-type", ("demo", "{ds}", "bc.steps=many", "work_dir={root}/demo"), "config key bc.steps"),
    # baseline, report
    ("finetune-dt-prior", ("finetune", "{ds}", "policy={policy}", "hydra.run.dir={root}/f1"), "starts from a policy trained without returns (BC)"),
    ("finetune-negative-beta", ("finetune", "{ds}", "policy={policy}", "beta=-1", "hydra.run.dir={root}/f2"), "beta must be a finite number >= 0"),
    ("finetune-betas", ("finetune", "{ds}", "policy={policy}", "finetune.betas=[1]", "hydra.run.dir={root}/f3"), "this command trains one: beta=<value>"),
    ("finetune-no-policy", ("finetune", "{ds}", "hydra.run.dir={root}/f4"), "missing mandatory value"),
    ("finetune-missing-policy", ("finetune", "{ds}", "policy={root}/nothing", "hydra.run.dir={root}/f5"), "no policy at"),
    ("baseline-sac-discrete", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "algo=sac", "hydra.run.dir={root}/b1"), "SAC needs continuous"),
    ("baseline-zero-budget", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "budget=0", "hydra.run.dir={root}/b2"), "budget must be >= 1"),
    ("baseline-unknown-algo", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "algo=dqn", "hydra.run.dir={root}/b3"), "unknown algo 'dqn'"),
    ("baseline-negative-kl", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "regularizer=ppo_kl", "param=-1", "hydra.run.dir={root}/b4"),
     "ppo_kl: kl_coef must be a finite number > 0, got -1.0"),
    ("baseline-kl-with-sac", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "algo=sac", "regularizer=ppo_kl", "param=1", "hydra.run.dir={root}/b5"),
     "needs algo=ppo"),
    ("baseline-kl-without-param", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "regularizer=ppo_kl", "hydra.run.dir={root}/b8"),
     "regularizer=ppo_kl needs its parameter: param=<value>"),
    ("baseline-unknown-regularizer", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "regularizer=ppo_xx", "param=1", "hydra.run.dir={root}/b9"),
     "unknown policy family 'ppo_xx'; registered: data"),
    ("baseline-cost-no-costs", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "regularizer=ppo_lag", "param=1", "hydra.run.dir={root}/b6"),
     "PPO-Lagrangian needs an env that reports info['cost']; dataset 'bad/cartpole-v0' has no costs"),
    ("baseline-negative-cost-limit", ("baseline", "{ds}", "dataset.id=bad/cartpole-v0", "regularizer=ppo_lag", "param=-1", "hydra.run.dir={root}/b7"),
     "ppo_lag: cost_limit must be a finite number >= 0, got -1.0"),
    ("demo-zero-kl", ("demo", "{ds}", "rl.regularized={ppo_kl: [0]}", "work_dir={root}/demo"), "rl.regularized.ppo_kl: ppo_kl: kl_coef must be a finite number > 0"),
    ("demo-new-hyperparam", ("demo", "{ds}", "rl.hyperparams={n_envs: 2, n_epochs: 2}", "work_dir={root}/demo"),
     "a key it does not set yet takes a leading + (e.g. +rl.hyperparams.<key>=...)"),
    ("demo-old-key", ("demo", "{ds}", "baseline.budget=10", "work_dir={root}/demo"), "unknown config key baseline; ComparisonConfig takes: env"),
    ("report-missing", ("report", "results={root}/none.jsonl"), "no results table at"),
    # datasets a user brings, damaged (see DAMAGED), and a policy whose dataset's env id cannot be made
    *[(f"data-{name}", ("train", "{ds}", f"dataset.id=dmg/{name}-v0", "model=tiny"), DAMAGED[name][1].replace("{id}", f"dmg/{name}-v0"))
      for name in CLI_DAMAGED],
    ("eval-env-vanished", ("eval", "{ds}", "policy={gone}", "results={results}"),
     "cannot make env 'vanished/CartPole-v0', which dataset 'gone/cartpole-v0' recorded: it needs the Python package 'vanished_envs' (pip install vanished-envs)"),
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    server = WarmCli(tmp_path_factory.mktemp("warm-cli"))
    assert server.startup_stderr == ""  # importing dtcond's CLI prints nothing, so a cold start adds no line
    yield server
    server.close()


def check_one_line(world, tmp_path, run, args, message):
    root = world["root"]
    written = (root / "datasets", Path(world["policy"]), Path(world["gone"]), Path(world["results"]))
    before = digest(*written)
    out = run(*_args(world, *args), cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith(f"dtcond {args[0]}: error: ") and message in lines[0], out.stderr
    assert digest(*written) == before
    assert not [p for p in (root / "datasets").rglob("yy-v0")]  # no dataset appeared under a refused id


@pytest.mark.parametrize("args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_damages_nothing(world, cli, tmp_path, args, message):
    check_one_line(world, tmp_path, cli.run, args, message)


COLD = ("collect-unknown-env", "eval-corrupt-policy", "data-hdf5-zeroed-4k", "eval-env-vanished")


@pytest.mark.parametrize("case", COLD)
def test_from_a_cold_start_too(world, tmp_path, case):
    """A fresh ``python -m dtcond`` per case, as a user runs it, for one case of each kind."""
    _, args, message = next(c for c in CASES if c[0] == case)
    check_one_line(world, tmp_path, run_cli, args, message)


@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_dataset_is_one_dtcond_error_from_the_library(world, monkeypatch, name):
    import dtcond

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(world["root"] / "datasets"))
    dataset_id = f"dmg/{name}-v0"
    before = digest(world["root"] / "datasets")
    with pytest.raises(dtcond.DtcondError) as err:
        dtcond.load_dataset(dataset_id)
    message = str(err.value)
    assert "\n" not in message and f"'{dataset_id}'" in message
    assert DAMAGED[name][1].replace("{id}", dataset_id) in message
    assert digest(world["root"] / "datasets") == before


def test_well_formed_variants_still_load(minari_root):
    """What the checks must not refuse: a Dict of Boxes, float64 data for a float32 Box, Discrete actions stored as whole floats,
    a Text and a nested Tuple observation space."""
    from dtcond.datasets.loading import load

    write_buffers("ok/dict-v0", dict_obs(episodes()), observation_space=DICT, action_space=BOX1)
    assert load("ok/dict-v0").stats.obs_dim == 3
    eps = episodes()
    for ep in eps:
        ep["observations"] = ep["observations"].astype(np.float64)
    write_buffers("ok/float64-v0", eps, observation_space=BOX3, action_space=BOX1)
    assert load("ok/float64-v0").stats.num_steps == 32
    eps = episodes(discrete=3)
    for ep in eps:
        ep["actions"] = ep["actions"].astype(np.float64)
    write_buffers("ok/float-actions-v0", eps, observation_space=BOX3, action_space=gym.spaces.Discrete(3))
    assert load("ok/float-actions-v0").trajectories[0].actions.dtype == np.int64
    write_buffers("ok/text-v0", text_episodes(), observation_space=gym.spaces.Text(5), action_space=BOX1)
    assert load("ok/text-v0").stats.codec.vocab == {"": ["abc"]} and load("ok/text-v0").stats.obs_dim == 2
    write_buffers("ok/nested-tuple-v0", nested_episodes(), observation_space=NESTED, action_space=BOX1)
    assert load("ok/nested-tuple-v0").stats.obs_dim == 2 + 3 + 3


def test_a_dataset_whose_env_cannot_be_made_still_trains_and_only_acting_refuses(world):
    import dtcond

    policy = dtcond.load_policy(world["gone"])  # trained in `world` while the env id was unregistered
    assert policy.env_id == VANISHED and policy.train_step == 5
    with pytest.raises(dtcond.DtcondError, match="cannot make env 'vanished/CartPole-v0', which dataset 'gone/cartpole-v0' recorded"):
        policy.make_env()
    with pytest.raises(dtcond.DtcondError, match=r"needs the Python package 'vanished_envs' \(pip install vanished-envs\)"):
        dtcond.evaluate(policy, ["q0.5"], episodes=1)
