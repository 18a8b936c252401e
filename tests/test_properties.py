"""Property tests: window invariants over random episodes, and a results table that survives a full disk."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtcond.datasets.loading import DatasetStats, Trajectory, returns_to_go
from dtcond.datasets.windows import make_window
from dtcond.common.errors import DtcondError
from dtcond.rollout.records import ResultsStore


def stats_for(obs_dim: int) -> DatasetStats:
    return DatasetStats(dataset_id="p/q-v0", env_id=None, env_kwargs={}, max_episode_steps=None, obs_dim=obs_dim,
                        action_kind="discrete", action_dim=3, action_low=None, action_high=None,
                        obs_mean=[0.0] * obs_dim, obs_std=[1.0] * obs_dim, episode_returns=[0.0], max_episode_length=1,
                        num_episodes=1, num_steps=1)


@st.composite
def episodes(draw):
    T = draw(st.integers(1, 40))
    rewards = np.array(draw(st.lists(st.floats(-100, 100), min_size=T, max_size=T)))
    obs = np.arange(T * 2, dtype=np.float32).reshape(T, 2)
    traj = Trajectory(obs, np.arange(T) % 3, rewards.astype(np.float32), returns_to_go(rewards), np.arange(T), True, False)
    return traj, draw(st.integers(0, T - 1)), draw(st.integers(1, 50))


@settings(max_examples=200, deadline=None)
@given(episodes())
def test_window_invariants(case):
    traj, end, length = case
    w = make_window(traj, end, length, stats_for(2))
    n = min(end + 1, length)
    assert w.mask.sum() == n and w.mask[-1] and (not w.mask.any() or np.all(np.diff(w.mask.astype(int)) >= 0))  # padding first
    assert w.timesteps[-1] == end and np.all(np.diff(w.timesteps[-n:]) == 1)
    np.testing.assert_array_equal(w.observations[-n:], traj.observations[end + 1 - n : end + 1])
    np.testing.assert_array_equal(w.observations[: length - n], 0)
    np.testing.assert_array_equal(w.actions[-n:], traj.actions[end + 1 - n : end + 1])
    # returns-to-go invariant: rtg[t] - rtg[t+1] = r[t] inside the window
    rtg = w.returns_to_go[-n:]
    np.testing.assert_allclose(rtg[:-1] - rtg[1:], traj.rewards[end + 1 - n : end], atol=1e-2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=200), st.floats(0.5, 1.0))
def test_returns_to_go_start_at_the_discounted_return(rewards, gamma):
    r = np.array(rewards)
    expected = sum(x * gamma**i for i, x in enumerate(r))
    assert returns_to_go(r, gamma)[0] == pytest.approx(expected, rel=1e-4, abs=1e-2)


def test_a_full_disk_while_appending_loses_no_written_record(tmp_path, monkeypatch):
    import os

    store = ResultsStore(tmp_path / "results.jsonl")
    store.append([{"key": f"k{i}", "episode_return": float(i)} for i in range(3)])
    before = (tmp_path / "results.jsonl").read_bytes()
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, data[: len(data) // 2])  # part of the batch reaches the disk, then it is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(DtcondError, match="No space left on device; records written before are intact"):
        store.append([{"key": f"new{i}", "episode_return": 1.0} for i in range(5)])
    monkeypatch.setattr(os, "write", real_write)
    after = (tmp_path / "results.jsonl").read_bytes()
    assert after.startswith(before) and [json.loads(x)["key"] for x in after.decode().splitlines()][:3] == ["k0", "k1", "k2"]
    assert all(json.loads(x) for x in after.decode().splitlines())  # a torn half line was cut off
    store.append([{"key": "later", "episode_return": 2.0}])
    assert [r["key"] for r in store.read()][-1] == "later"
