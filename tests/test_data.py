"""The data layer's contract: aligned trajectories, exact returns-to-go, stats, windows, split."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import rng_episode, write_buffers
from dtcond.datasets.loading import load, returns_to_go
from dtcond.datasets.windows import WindowDataset, make_window, split_by_episode
from dtcond.common.errors import DtcondError
from dtcond.envs.scripted import scripted_factory

BOX3 = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
BOX1 = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def reference_rtg(rewards, gamma):
    out, running = [], 0.0
    for r in reversed(list(rewards)):
        running = r + gamma * running
        out.append(running)
    return np.array(out[::-1])


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_returns_to_go_match_a_reversed_loop(gamma):
    rewards = np.random.default_rng(1).normal(size=257)
    np.testing.assert_allclose(returns_to_go(rewards, gamma), reference_rtg(rewards, gamma), rtol=1e-5, atol=1e-4)


def test_loaded_returns_to_go_and_returns_are_exact(cartpole_dataset):
    data = load(cartpole_dataset)
    for traj in data.trajectories:
        np.testing.assert_allclose(traj.returns_to_go, reference_rtg(traj.rewards, 1.0), rtol=1e-6)
        assert traj.returns_to_go[0] == pytest.approx(traj.episode_return)
    assert data.stats.episode_returns == sorted(t.episode_return for t in data.trajectories)


def test_actions_pair_with_the_observation_they_were_taken_in(minari_root):
    # The expert's action is a function of the state it saw: misalignment by one step breaks it.
    import minari

    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect

    collect("CartPole-v1", [Component("cartpole_balance")], episodes=3, dataset_id="test/expert-v0", progress=False)
    expert = scripted_factory("cartpole_balance")(None, None)
    data = load("test/expert-v0")
    raw = minari.load_dataset("test/expert-v0")
    for traj, episode in zip(data.trajectories, raw.iterate_episodes()):
        assert len(traj.observations) == len(traj.actions) == len(episode.observations) - 1
        assert [expert(o) for o in traj.observations] == traj.actions.tolist()
        np.testing.assert_array_equal(traj.observations, episode.observations[:-1].astype(np.float32))


def test_cartpole_round_trip_is_discrete(cartpole_dataset):
    data = load(cartpole_dataset)
    s = data.stats
    assert (s.action_kind, s.action_dim, s.obs_dim, s.env_id) == ("discrete", 2, 4, "CartPole-v1")
    assert s.max_episode_steps == 500
    assert all(t.actions.dtype == np.int64 and t.actions.ndim == 1 for t in data.trajectories)
    assert s.num_steps == sum(len(t) for t in data.trajectories)
    assert s.max_episode_length == max(len(t) for t in data.trajectories)
    last = [t for t in data.trajectories if len(t) == 500]
    assert last and all(t.truncated and not t.terminated for t in last)


def test_pendulum_round_trip_is_continuous(pendulum_dataset):
    data = load(pendulum_dataset)
    s = data.stats
    assert (s.action_kind, s.action_dim, s.obs_dim) == ("continuous", 1, 3)
    assert s.action_low == [-2.0] and s.action_high == [2.0]
    for t in data.trajectories:
        assert t.actions.shape == (len(t), 1) and t.actions.dtype == np.float32
        assert np.all(np.abs(t.actions) <= 2.0)
        assert len(t) == 60 and t.truncated


def test_stats_match_numpy(cartpole_dataset):
    data = load(cartpole_dataset)
    obs = np.concatenate([t.observations for t in data.trajectories]).astype(np.float64)
    np.testing.assert_allclose(data.stats.obs_mean, obs.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(data.stats.obs_std, obs.std(0), rtol=1e-6)
    returns = np.array([t.episode_return for t in data.trajectories])
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert data.stats.return_quantile(q) == pytest.approx(np.quantile(returns, q))
    g = float(np.median(returns))
    assert data.stats.tail_probability(g) == pytest.approx((returns >= g).mean())
    assert data.stats.min_return == returns.min() and data.stats.max_return == returns.max()


def test_stats_survive_a_json_round_trip(cartpole_dataset):
    from dtcond.datasets.loading import DatasetStats

    stats = load(cartpole_dataset).stats
    assert DatasetStats.from_dict(__import__("json").loads(stats.to_json())) == stats


def test_true_reward_and_cost_infos_are_carried_through(minari_root):
    eps = []
    for i in range(2):
        ep = rng_episode(7, seed=i)
        ep["infos"] = {"cost": np.arange(8, dtype=np.float32), "true_reward": -np.arange(8, dtype=np.float32)}
        eps.append(ep)
    write_buffers("test/infos-v0", eps, observation_space=BOX3, action_space=BOX1)
    traj = load("test/infos-v0").trajectories[0]
    # infos are stored T+1 long with the reset info first; step t's info is entry t+1.
    np.testing.assert_array_equal(traj.costs, np.arange(1, 8))
    np.testing.assert_array_equal(traj.true_rewards, -np.arange(1, 8))


def test_dict_observations_are_flattened(minari_root):
    space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(0, 17, (3,))})
    eps = []
    for i in range(2):
        ep = rng_episode(5, seed=i)
        ep["observations"] = {"a": np.full((6, 2), i, np.float32), "b": np.arange(18, dtype=np.float32).reshape(6, 3)}
        eps.append(ep)
    write_buffers("test/dict-v0", eps, observation_space=space, action_space=BOX1)
    data = load("test/dict-v0")
    assert data.stats.obs_dim == 5
    np.testing.assert_array_equal(data.trajectories[1].observations[0], [1, 1, 0, 1, 2])


# ---------------------------------------------------------------------------------------------- windows


def test_window_is_left_padded_with_a_mask(cartpole_dataset):
    data = load(cartpole_dataset)
    traj, stats = data.trajectories[0], data.stats
    w = make_window(traj, end=2, length=5, stats=stats)
    assert w.mask.tolist() == [False, False, True, True, True]
    assert w.timesteps.tolist() == [0, 0, 0, 1, 2]
    np.testing.assert_array_equal(w.observations[:2], 0)
    np.testing.assert_allclose(w.observations[2:], stats.normalize_obs(traj.observations[:3]))
    np.testing.assert_array_equal(w.actions[2:], traj.actions[:3])
    np.testing.assert_array_equal(w.returns_to_go[2:], traj.returns_to_go[:3])
    full = make_window(traj, end=9, length=5, stats=stats)
    assert full.mask.all() and full.timesteps.tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("weighting, long_share", [("steps", 0.9), ("balanced", 0.5 * 0.9 + 0.5 * 0.5)])
def test_windows_draw_episodes_in_proportion_to_length(minari_root, weighting, long_share):
    write_buffers("test/lengths-v0", [rng_episode(10, seed=0), rng_episode(90, seed=1)], observation_space=BOX3, action_space=BOX1)
    data = load("test/lengths-v0")
    ds = WindowDataset(data.trajectories, data.stats, length=4, epoch_size=4000, seed=0, episode_weighting=weighting,
                       batch_size=100)
    long_ep = [i for i, t in enumerate(data.trajectories) if len(t) == 90][0]
    episodes, steps = map(np.concatenate, zip(*(ds.draw(j) for j in range(len(ds)))))
    assert len(episodes) == 4000 and long_share - 0.03 < np.mean(episodes == long_ep) < long_share + 0.03
    assert np.all(steps < ds.lengths[episodes]) and np.all(steps >= 0)
    # Every batch is a pure function of (seed, epoch, index).
    a, b = ds[17], WindowDataset(data.trajectories, data.stats, 4, 4000, seed=0, episode_weighting=weighting, batch_size=100)[17]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A new epoch draws new windows (a few may coincide by chance).
    epoch0 = ds[0]["timesteps"][:, -1]
    ds.set_epoch(1)
    epoch1 = ds[0]["timesteps"][:, -1]
    assert (epoch0 != epoch1).sum() > 80


@pytest.mark.parametrize("dataset", ["cartpole_dataset", "pendulum_dataset"])
@pytest.mark.parametrize("weighting", ["steps", "balanced"])
def test_a_gathered_batch_equals_the_windows_cut_one_by_one(request, dataset, weighting):
    data = load(request.getfixturevalue(dataset))
    length = 70  # longer than Pendulum's 60-step episodes: every window is padded there
    ds = WindowDataset(data.trajectories, data.stats, length, epoch_size=300, seed=5, episode_weighting=weighting,
                       batch_size=128)
    assert len(ds) == 3 and ds[2]["mask"].shape == (300 - 2 * 128, length)  # the last batch is short
    for j in range(len(ds)):
        episodes, ends = ds.draw(j)
        episodes, ends = np.append(episodes, [0, 1]), np.append(ends, [0, len(data.trajectories[1]) - 1])  # both edges
        batch = ds.gather(episodes, ends)
        windows = [make_window(data.trajectories[e], int(t), length, data.stats) for e, t in zip(episodes, ends)]
        for key in ("observations", "actions", "returns_to_go", "timesteps", "mask"):
            expected = np.stack([getattr(w, key) for w in windows])
            assert batch[key].dtype == torch.from_numpy(expected).dtype
            np.testing.assert_array_equal(batch[key].numpy(), expected)
    assert not batch["mask"].all()  # padding was among the cases compared


def test_distributed_ranks_draw_different_windows(cartpole_dataset):
    # Lightning gives each DDP rank a DistributedSampler over the batches (shuffle off, as here).
    from torch.utils.data import DataLoader, DistributedSampler

    data = load(cartpole_dataset)
    ds = WindowDataset(data.trajectories, data.stats, 8, epoch_size=16 * 6, seed=0, batch_size=16)
    ranks = [list(DataLoader(ds, batch_size=None, sampler=DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False)))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    ends = [torch.stack([b["returns_to_go"][:, -1] for b in rank]) for rank in ranks]  # (3 batches, 16)
    assert not torch.equal(ends[0], ends[1])
    assert all(not torch.equal(a, b) for a, b in zip(ends[0], ends[1]))


def test_split_by_episode_is_disjoint_and_complete():
    train, val = split_by_episode(50, 0.1, seed=3)
    assert len(val) == 5 and set(train).isdisjoint(val) and set(train) | set(val) == set(range(50))
    train2, val2 = split_by_episode(50, 0.1, seed=3)
    assert (train == train2).all() and (val == val2).all()


def test_datamodule_batches_and_split(cartpole_dataset):
    from dtcond.dt.datamodule import WindowDataModule

    dm = WindowDataModule(cartpole_dataset, window_len=8, batch_size=16, steps_per_epoch=3, val_windows=32, val_fraction=0.2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["observations"].shape == (16, 8, 4)
    assert batch["actions"].shape == (16, 8) and batch["actions"].dtype.is_floating_point is False
    assert batch["returns_to_go"].shape == batch["timesteps"].shape == batch["mask"].shape == (16, 8)
    assert batch["mask"][:, -1].all()  # a window always ends on a real step
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 2  # 32 val windows in batches of 16
    train_ids = {id(t) for t in dm.train_set.trajectories}
    assert train_ids.isdisjoint(id(t) for t in dm.val_set.trajectories)
    assert len(dm.train_set.trajectories) + len(dm.val_set.trajectories) == 20


# ---------------------------------------------------------------------------------------------- bad input


def test_unknown_dataset_lists_the_local_ones(cartpole_dataset):
    with pytest.raises(DtcondError, match="unknown dataset id 'nope/x-v0'.*test/cartpole/mix-v0"):
        load("nope/x-v0")


def test_nan_observations_and_rewards_are_refused(minari_root):
    bad_obs = rng_episode(5)
    bad_obs["observations"][2, 1] = np.nan
    write_buffers("test/nanobs-v0", [bad_obs], observation_space=BOX3, action_space=BOX1)
    with pytest.raises(DtcondError, match="NaN/inf observations"):
        load("test/nanobs-v0")
    bad_rew = rng_episode(5)
    bad_rew["rewards"][3] = np.inf
    write_buffers("test/infrew-v0", [bad_rew], observation_space=BOX3, action_space=BOX1)
    with pytest.raises(DtcondError, match="NaN/inf rewards"):
        load("test/infrew-v0")


def test_empty_dataset_is_refused(minari_root):
    write_buffers("test/empty-v0", [], observation_space=BOX3, action_space=BOX1)
    with pytest.raises(DtcondError, match="is empty"):
        load("test/empty-v0")


@pytest.mark.parametrize(
    "obs_space, act_space, message",
    [
        (gym.spaces.Sequence(BOX3), BOX1, "unsupported observation space Sequence: dtcond handles Box .* Text, nested in Dict and Tuple"),
        (BOX3, gym.spaces.MultiDiscrete([2, 2]), "unsupported action space MultiDiscrete"),
        (gym.spaces.Dict({"t": gym.spaces.Tuple([gym.spaces.Discrete(3), gym.spaces.Sequence(BOX3)])}), BOX1,
         "unsupported observation space Sequence at t/1"),
    ],
)
def test_unsupported_spaces_are_refused(minari_root, obs_space, act_space, message):
    from dtcond.datasets.observations import check_spaces

    with pytest.raises(DtcondError, match=message):
        check_spaces(obs_space, act_space)


def test_a_dataset_is_read_once_per_process_until_its_files_change(minari_root, monkeypatch):
    import shutil

    import dtcond.datasets.loading as data_module

    reads = []
    real = data_module._read
    monkeypatch.setattr(data_module, "_read", lambda *args: reads.append(args) or real(*args))
    write_buffers("test/once-v0", [rng_episode(5, seed=0)], observation_space=BOX3, action_space=BOX1)
    first = load("test/once-v0")
    assert load("test/once-v0") is first and len(reads) == 1  # the pipeline, each training run, each BC start share it
    with pytest.raises(ValueError, match="read-only"):
        first.trajectories[0].rewards[0] = 1.0  # shared, so nobody may change it under the others
    shutil.rmtree(minari_root / "test" / "once-v0")
    write_buffers("test/once-v0", [rng_episode(5, seed=1), rng_episode(6, seed=2)], observation_space=BOX3, action_space=BOX1)
    again = load("test/once-v0")  # rewritten on disk: read again
    assert len(reads) == 2 and len(again) == 2 and again is not first
