"""Datasets from Minari's other families: structured and image observations, the recorded env, normalized scores.

Each dataset is written by Minari's own writer (``create_dataset_from_buffers``) from episodes rolled
out in the real env, with the env recorded as Minari records it (its spec, wrapper stack included).
"""

from __future__ import annotations

import json
import string

import gymnasium as gym
import numpy as np
import pytest

from conftest import run_cli
from dtcond.families import load_policy
from dtcond.common.errors import DtcondError
from dtcond.rollout.evaluation import evaluate
from dtcond.datasets.observations import ObsCodec
from dtcond.dt.training import train

TINY = dict(context_len=4, n_layer=1, n_head=1, n_embd=16, dropout=0.0)
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False)
FAST = dict(model=TINY, data=dict(batch_size=8, steps_per_epoch=4, val_windows=8), trainer=dict(max_steps=4, **QUIET))


def _stack(items):
    """Per-step observations (dicts, tuples, strings or arrays) → one episode's, as Minari stores them."""
    first = items[0]
    if isinstance(first, dict):
        return {k: _stack([x[k] for x in items]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack([x[i] for x in items]) for i in range(len(first)))
    if isinstance(first, str):
        return list(items)
    return np.stack([np.asarray(x) for x in items])


def record(dataset_id: str, env: gym.Env, episodes: int, seed: int = 0, **kwargs):
    """Random-action episodes of ``env`` written through Minari's writer, the env's spec recorded with them."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    env.action_space.seed(seed)
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards, terms, truncs = [obs], [], [], [], []
        while True:
            action = env.action_space.sample()
            obs, reward, term, trunc, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(term))
            truncs.append(bool(trunc))
            if term or trunc:
                break
        buffers.append(EpisodeBuffer(id=i, seed=seed + i, observations=_stack(observations), actions=np.stack(actions),
                                     rewards=rewards, terminations=terms, truncations=truncs, infos={}))
    return minari.create_dataset_from_buffers(dataset_id, buffers, env=env, **kwargs)


# ------------------------------------------------------------------ the codec


def test_codec_encodes_nested_spaces_as_gymnasium_flattens_them():
    space = gym.spaces.Dict(
        pos=gym.spaces.Box(-1, 1, (2, 2), np.float32),
        parts=gym.spaces.Tuple([gym.spaces.Discrete(3, start=1), gym.spaces.MultiDiscrete([2, 4]), gym.spaces.MultiBinary(3)]),
    )
    space.seed(0)
    samples = [space.sample() for _ in range(5)]
    codec = ObsCodec.from_space(space)
    encoded = codec.encode(_stack(samples))  # one batch of 5
    # In the space as Minari stores it (Dict keys sorted), which is what the codec reads the data in.
    reference = np.stack([gym.spaces.flatten(codec.observation_space, s) for s in samples]).astype(np.float32)
    assert encoded.shape == (5, gym.spaces.flatdim(space)) and np.array_equal(encoded, reference)


def test_codec_gives_each_mission_its_own_id_and_unseen_ones_a_slot_of_their_own():
    space = gym.spaces.Dict(direction=gym.spaces.Discrete(4), mission=gym.spaces.Text(40, charset=string.ascii_lowercase + " "))
    codec = ObsCodec.from_space(space, {"mission": ["go to the goal", "open the door", "go to the goal"]})
    back = ObsCodec.from_dict(json.loads(json.dumps(codec.to_dict())))  # as a policy card carries it
    out = back.encode({"direction": np.array([0, 3, 1]), "mission": ["open the door", "go to the goal", "pick up the key"]})
    assert codec.vocab == {"mission": ["go to the goal", "open the door"]} and out.shape == (3, 4 + 3)
    assert out[:, 4:].argmax(1).tolist() == [1, 0, 2]  # 2: a mission the data never had
    assert back.encode_one({"direction": 2, "mission": "go to the goal"}).tolist() == [0, 0, 1, 0, 1, 0, 0]


def test_image_boxes_stay_uint8_in_channel_first_layout():
    for shape, chw in [((84, 84), (1, 84, 84)), ((64, 48, 3), (3, 64, 48)), ((4, 84, 84), (4, 84, 84))]:
        codec = ObsCodec.from_space(gym.spaces.Box(0, 255, shape, np.uint8))
        frames = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
        out = codec.encode(frames)
        assert codec.kind == "image" and out.dtype == np.uint8 and out.shape == (2, *chw)
        assert np.array_equal(out[1, 0], frames[1] if len(shape) == 2 else (frames[1, ..., 0] if shape[-1] == 3 else frames[1, 0]))
    assert ObsCodec.from_space(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)).kind == "vector"  # MiniGrid's 7x7 view


# ------------------------------------------------------------------ the recorded env


def test_a_missing_package_is_named_with_what_to_install(cartpole_dataset):
    from dtcond.datasets.loading import load
    from dtcond.datasets.recorded import make_env

    stats = load(cartpole_dataset).stats
    spec = json.loads(stats.env_spec)
    missing = type(stats).from_dict({**stats.to_dict(), "env_spec": json.dumps({**spec, "entry_point": "ale_py_missing.env:AtariEnv"})})
    with pytest.raises(DtcondError, match=r"needs the Python package 'ale_py_missing' \(pip install ale-py-missing\)"):
        make_env(missing)
    with pytest.raises(DtcondError, match="cannot make env 'NoSuchEnv-v0'"):
        make_env(stats, env_id="NoSuchEnv-v0")


def test_evaluation_uses_the_datasets_eval_env_where_it_has_one(minari_root):
    from dtcond.datasets.loading import load
    from dtcond.rollout.evaluation import make_vector_env
    from dtcond.dt.policy import ConditionedPolicy
    from dtcond.datasets.recorded import make_env

    record("test/pendulum/eval-env-v0", gym.make("Pendulum-v1", g=9.81, max_episode_steps=40), episodes=2,
           eval_env=gym.make("Pendulum-v1", g=5.0, max_episode_steps=7))
    stats = load("test/pendulum/eval-env-v0").stats
    collecting, evaluating = make_env(stats, evaluation=False), make_env(stats, **stats.env_kwargs)
    assert (collecting.unwrapped.g, collecting.spec.max_episode_steps) == (9.81, 40)
    assert (evaluating.unwrapped.g, evaluating.spec.max_episode_steps) == (5.0, 7)
    assert make_env(stats, g=3.0).unwrapped.g == 3.0  # a kwarg of the caller's own still applies
    from dtcond.dt.model import DecisionTransformer
    from dtcond.dt.training import model_config_for

    policy = ConditionedPolicy(DecisionTransformer(model_config_for(stats, **TINY)), stats)
    envs = make_vector_env(policy, 2)
    assert envs.envs[0].unwrapped.g == 5.0


def test_acrobot_with_reference_scores_reports_normalized_scores(minari_root, tmp_path):
    import minari

    from dtcond.analysis.report import write_report
    from dtcond.targets import parse

    ds = record("test/acrobot/random-v0", gym.make("Acrobot-v1", max_episode_steps=30), episodes=6,
                ref_min_score=-30.0, ref_max_score=-10.0)
    policy = load_policy(train("test/acrobot/random-v0", tmp_path / "run", **FAST).bundle)
    assert parse("score50").resolve(policy.stats).value == pytest.approx(-20.0)
    records = evaluate(policy, ["score50", "q0.5"], episodes=2, seed=0, results=tmp_path / "results.jsonl")
    returns = np.array([r["episode_return"] for r in records])
    assert all(r["length"] <= 30 for r in records)  # the recorded TimeLimit, not Acrobot's default 500
    assert np.allclose([r["normalized_score"] for r in records], minari.get_normalized_score(ds, returns))
    md = open(write_report(tmp_path / "results.jsonl").datasets["test/acrobot/random-v0"].markdown).read()
    assert "normalized score (×100)" in md


def test_normalized_score_targets_need_reference_scores(minari_root):
    from conftest import rng_episode, write_buffers
    from dtcond.datasets.loading import load
    from dtcond.targets import parse

    box = gym.spaces.Box(-1, 1, (1,), np.float32)
    write_buffers("test/noref-v0", [rng_episode(5, seed=i) for i in range(2)],
                  observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), action_space=box)
    with pytest.raises(DtcondError, match="has no reference scores"):
        parse("score90").resolve(load("test/noref-v0").stats)


def test_collected_mixtures_record_reference_scores_from_their_random_and_noiseless_expert_episodes(cartpole_dataset):
    from dtcond.datasets.loading import load

    stats = load(cartpole_dataset).stats  # CartPole: a noiseless balancer, a noisy one and a random policy
    assert stats.ref_min_score < 100 < stats.ref_max_score  # random falls in tens of steps; the balancer lasts
    assert stats.normalized_score(stats.ref_max_score) == 1.0


def test_minigrid_with_a_text_mission_trains_and_acts_in_its_recorded_env_without_the_dataset(minari_root, tmp_path):
    import shutil

    pytest.importorskip("minigrid")
    import minigrid

    gym.register_envs(minigrid)
    env = gym.make("MiniGrid-Empty-8x8-v0", max_episode_steps=12)
    # MiniGrid's MissionSpace has no Minari serializer: the catalogue's datasets declare the mission a Text.
    space = gym.spaces.Dict(direction=gym.spaces.Discrete(4), image=env.observation_space["image"],
                            mission=gym.spaces.Text(max_length=200, charset=string.printable))
    record("test/minigrid/empty-v0", env, episodes=4, observation_space=space)
    bundle = train("test/minigrid/empty-v0", tmp_path / "run", **FAST).bundle
    shutil.rmtree(minari_root)  # the bundle alone: codec, vocabulary and env spec travel in its card
    policy = load_policy(bundle)
    assert policy.stats.codec.vocab == {"mission": ["get to the green goal square"]}
    assert policy.stats.obs_dim == 4 + 7 * 7 * 3 + 2
    records = evaluate(policy, ["q0.5"], episodes=2, seed=0)
    assert [r["length"] <= 12 for r in records] == [True, True]
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    policy.reset(target=0.5, seed=0)
    assert env.action_space.contains(policy.act(obs))


@pytest.mark.slow  # a subprocess or several processes: the end-to-end tier
def test_point_maze_trains_and_evaluates_in_its_recorded_env_from_the_cli(minari_root, tmp_path):
    pytest.importorskip("gymnasium_robotics")
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    record("test/pointmaze/umaze-v0", gym.make("PointMaze_UMaze-v3", max_episode_steps=15), episodes=3)
    # Fresh processes that never register gymnasium-robotics: the recorded spec's entry point imports it.
    out = run_cli("train", "model=tiny", "dataset.id=test/pointmaze/umaze-v0", "data.batch_size=8", "data.steps_per_epoch=4",
                  "trainer.max_steps=4", "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    results = tmp_path / "results.jsonl"
    out = run_cli("eval", f"policy={tmp_path}/hydra/policy", f"results={results}", "episodes=1", "progress=false",
                  "report=false", "roaming=false", "sampler.target=q0.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["env_id"], r["length"]) for r in rows] == [("PointMaze_UMaze-v3", 15)]


# ------------------------------------------------------------------ images


def test_atari_frames_train_through_the_conv_encoder_as_uint8_and_evaluate_in_the_recorded_wrappers(minari_root, tmp_path):
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    import ale_py
    import torch

    from dtcond.datasets.loading import load
    from dtcond.datasets.windows import WindowDataset, make_window

    gym.register_envs(ale_py)
    env = gym.wrappers.AtariPreprocessing(gym.make("ALE/Pong-v5", frameskip=1, max_episode_steps=64), frame_skip=4,
                                          screen_size=84, grayscale_obs=True)
    record("test/pong/random-v0", env, episodes=2, ref_min_score=-21.0, ref_max_score=21.0)
    data = load("test/pong/random-v0")
    windows = WindowDataset(data.trajectories, data.stats, length=4, epoch_size=8, batch_size=8)
    assert data.trajectories[0].observations.dtype == np.uint8 and windows[0]["observations"].dtype == torch.uint8
    assert windows[0]["observations"].shape == (8, 4, 1, 84, 84)
    # Frames are read from the on-disk store per window, and equal the windows cut one by one.
    assert windows.frames is not None and "observations" not in windows.fields
    traj = data.trajectories[1]
    for end in (1, len(traj) - 1):
        got = windows.gather([1], [end])["observations"][0].numpy()
        assert np.array_equal(got, make_window(traj, end, 4, data.stats).observations)
    policy = load_policy(train("test/pong/random-v0", tmp_path / "run", **FAST).bundle)
    assert (policy.config.encoder, policy.config.obs_shape) == ("cnn", [1, 84, 84])
    records = evaluate(policy, ["q0.5"], episodes=1, seed=0)
    # AtariPreprocessing from the recorded spec: 84x84 frames, 4 frames a step, so 64 frames are 16 steps.
    assert records[0]["length"] <= 16 and records[0]["normalized_score"] is not None
    from dtcond.analysis.roaming import applies_to

    assert not applies_to(policy.stats)  # `dtcond eval` skips roaming metrics on frames


def test_model_encoder_is_configurable_and_cnn_refuses_vector_observations(cartpole_dataset, tmp_path):
    with pytest.raises(DtcondError, match="model.encoder=cnn needs image observations"):
        train(cartpole_dataset, tmp_path / "x", model={**TINY, "encoder": "cnn"}, trainer=dict(max_steps=1, **QUIET))
    with pytest.raises(DtcondError, match="model.encoder must be auto, mlp or cnn"):
        train(cartpole_dataset, tmp_path / "y", model={**TINY, "encoder": "resnet"}, trainer=dict(max_steps=1, **QUIET))


def test_a_bundle_written_before_codecs_and_encoders_loads_and_acts_the_same(cartpole_dataset, tmp_path):
    bundle = train(cartpole_dataset, tmp_path / "run", model=TINY, data=FAST["data"], trainer=dict(max_steps=2, **QUIET)).bundle
    card = json.loads((bundle / "card.json").read_text())
    for key in ("encoder", "obs_shape"):
        del card["model"][key]
    for key in ("obs_codec", "env_spec", "eval_env_spec"):
        del card["stats"][key]
    old = tmp_path / "old"
    old.mkdir()
    (old / "card.json").write_text(json.dumps(card))
    (old / "model.safetensors").write_bytes((bundle / "model.safetensors").read_bytes())
    new_policy, old_policy = load_policy(bundle), load_policy(old)
    assert old_policy.stats.codec.observation_space is None  # the legacy flattening
    obs, _ = old_policy.make_env().reset(seed=0)
    actions = []
    for policy in (new_policy, old_policy):
        policy.reset(target=100.0, seed=0)
        actions.append([policy.act(obs) for _ in range(3)])
    assert actions[0] == actions[1]


def test_frame_stacking_stacks_each_step_with_the_frames_before_it_in_training_and_acting(minari_root, tmp_path):
    import torch

    from conftest import rng_episode, write_buffers
    from dtcond.datasets.loading import load
    from dtcond.datasets.windows import WindowDataset

    rng = np.random.default_rng(0)
    frames = gym.spaces.Box(0, 255, (36, 36), np.uint8)
    episodes = [{"observations": rng.integers(0, 256, (T + 1, 36, 36), dtype=np.uint8), "actions": rng.integers(3, size=T),
                 "rewards": rng.normal(size=T)} for T in (9, 12)]
    write_buffers("test/frames/stack-v0", episodes, observation_space=frames, action_space=gym.spaces.Discrete(3))
    data = load("test/frames/stack-v0")
    windows = WindowDataset(data.trajectories, data.stats, length=5, epoch_size=4, batch_size=4, frame_stack=3)
    obs = data.trajectories[1].observations  # (12, 1, 36, 36)

    def stacked(t):  # frames t-2, t-1, t on channels, zeros before the episode's first frame
        return np.concatenate([obs[s] if s >= 0 else np.zeros_like(obs[0]) for s in (t - 2, t - 1, t)])

    for end in (1, 3, 11):
        got = windows.gather([1], [end])["observations"][0].numpy()  # (5, 3, 36, 36)
        n = min(end + 1, 5)
        assert np.array_equal(got[5 - n :], np.stack([stacked(t) for t in range(end + 1 - n, end + 1)]))
        assert not got[: 5 - n].any()
    # Acting: the policy stacks the frames it is shown as the windows did, so cached decoding equals the full forward.
    policy = load_policy(train("test/frames/stack-v0", tmp_path / "run", **{**FAST, "model": {**TINY, "frame_stack": 3}}).bundle)
    assert (policy.config.encoder, policy.config.frame_stack) == ("cnn", 3)
    state, actions = policy.begin(1), []
    for t in range(5):
        action, probs, state = policy.act_batch(state, obs[t][None], np.array([1.0]), np.array([[0.5]]))
        actions.append(int(action[0]))
    with torch.no_grad():
        logits = policy.model(torch.ones(1, 5), windows.gather([1], [4])["observations"], torch.tensor([actions]),
                              torch.arange(5)[None])[0, -1]
    assert np.allclose(probs[0], torch.softmax(logits, -1).numpy(), atol=1e-5)
    write_buffers("test/vector-v0", [rng_episode(6, seed=i) for i in range(2)],
                  observation_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), action_space=gym.spaces.Box(-1, 1, (1,), np.float32))
    with pytest.raises(DtcondError, match="model.frame_stack=2 stacks image frames"):
        train("test/vector-v0", tmp_path / "x", model={**TINY, "frame_stack": 2}, trainer=dict(max_steps=1, **QUIET))


def test_a_bare_catalogue_id_registers_its_package(minari_root):
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ale_py") is None:
        pytest.skip("ale-py is not installed")
    # A fresh process that never imported ale_py, where Gymnasium alone says "Namespace ALE not found".
    code = "from dtcond.datasets.recorded import make; print(make('ALE/Pong-v5').spec.entry_point)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ale_py.env:AtariEnv"), out.stderr
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect
    from dtcond.datasets.loading import load

    collect("ALE/Pong-v5", [Component("random")], episodes=1, dataset_id="test/pong/collected-v0", progress=False,
            max_episode_steps=30)
    stats = load("test/pong/collected-v0").stats
    assert stats.env_spec is not None and stats.codec.kind == "image" and stats.max_episode_length <= 30
