"""Offline data: local Minari datasets → trajectories and their statistics (training windows: :mod:`dtcond.datasets.windows`).

Minari stores T+1 observations per episode (the final one included); actions and rewards pair
with ``observations[:-1]``. Infos are stored T+1 long too (the reset info first), so per-step
``true_reward`` / ``cost`` are ``infos[key][1:]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from dtcond.common.errors import DtcondError
from dtcond.datasets.storage import cache_dir, datasets_root
from dtcond.datasets.validation import INFO_KEYS


class FrameStore:
    """A dataset's encoded image observations in one contiguous file, so they need not fit in memory.

    :func:`load` appends each episode's frames as it reads it (one episode in memory at a time);
    trajectories then hold read-only ``np.memmap`` views of their rows, and
    :class:`~dtcond.datasets.windows.WindowDataset` reads a batch's windows with ``os.pread`` (:meth:`read`), so the process
    holds the rows of a batch, not the file: the kernel's page cache is the cache. The file lives
    under ``$DTCOND_CACHE/frames`` (``~/.cache/dtcond``) and is unlinked as soon as it is open, so
    nothing is left behind by a run that stops, however it stops; DataLoader workers share it by
    fork (Linux's default), which keeps the open file.

    >>> store = FrameStore((1, 84, 84), np.uint8)                    # doctest: +SKIP
    >>> first = store.append(frames); store.finish()                 # doctest: +SKIP
    >>> store.read(first, 20).shape                                  # doctest: +SKIP
    (20, 1, 84, 84)
    """

    def __init__(self, row_shape, dtype, folder: str | os.PathLike | None = None):
        import tempfile

        folder = Path(folder) if folder is not None else cache_dir() / "frames"
        folder.mkdir(parents=True, exist_ok=True)
        self.row_shape, self.dtype = tuple(int(x) for x in row_shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        fd, path = tempfile.mkstemp(prefix="frames-", suffix=".bin", dir=folder)
        os.unlink(path)  # the open file is ours alone; the disk space is freed when the process ends
        self._file = os.fdopen(fd, "w+b", buffering=0)
        self.rows = 0
        self._map = None

    def append(self, frames: np.ndarray) -> int:
        """Write ``frames`` (n, *row_shape) at the end; the row the first of them landed on."""
        frames = np.ascontiguousarray(frames, dtype=self.dtype)
        if frames.shape[1:] != self.row_shape:
            raise DtcondError(f"frames of shape {frames.shape[1:]} for a store of {self.row_shape}")
        start = self.rows
        self._file.write(memoryview(frames).cast("B"))
        self.rows += len(frames)
        return start

    def finish(self) -> FrameStore:
        self._file.flush()
        if self.rows:
            self._map = np.memmap(self._file, dtype=self.dtype, mode="r", shape=(self.rows, *self.row_shape))
        return self

    def view(self, start: int, n: int) -> np.ndarray:
        """Rows ``start:start+n`` as a read-only memmap view (read from disk only where touched)."""
        return self._map[start : start + n]

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:start+n`` read into memory (``out`` when given) with one ``os.pread``."""
        out = np.empty((n, *self.row_shape), self.dtype) if out is None else out
        if n:
            got = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], start * self.row_bytes)
            if got != n * self.row_bytes:
                raise DtcondError(f"frame store: read {got} of {n * self.row_bytes} bytes; the cache disk failed")
        return out

    def __getstate__(self):
        raise DtcondError("a dataset of image frames lives in an open file that cannot be pickled: DataLoader workers "
                          "must be forked (Linux's default start method), or set data.num_workers=0")


@dataclass
class Trajectory:
    """One episode, aligned: ``observations[t]`` is the state in which ``actions[t]`` was taken."""

    observations: np.ndarray  # (T, obs_dim) float32, or (T, C, H, W) uint8 frames (dtcond.datasets.observations)
    actions: np.ndarray  # (T, act_dim) float32, or (T,) int64 for Discrete
    rewards: np.ndarray  # (T,) float32
    returns_to_go: np.ndarray  # (T,) float32, rtg[t] = sum_{k>=t} gamma^(k-t) r_k
    timesteps: np.ndarray  # (T,) int64
    terminated: bool
    truncated: bool
    true_rewards: np.ndarray | None = None  # (T,) when the env reports info["true_reward"]
    costs: np.ndarray | None = None  # (T,) when the env reports info["cost"]
    frames: tuple[FrameStore, int] | None = None  # image observations: (the store, first row), observations a view of it

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_return(self) -> float:
        return float(self.rewards.sum())


def returns_to_go(rewards: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Discounted suffix sums of ``rewards``.

    >>> returns_to_go(np.array([1.0, 2.0, 3.0])).tolist()
    [6.0, 5.0, 3.0]
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if gamma == 1.0:
        # reversed cumulative sum, in float64 so long episodes do not drift
        return np.cumsum(rewards[::-1])[::-1].astype(np.float32)
    out = np.empty_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out.astype(np.float32)


@dataclass
class DatasetStats:
    """Everything a trained policy needs to know about its data, JSON-serializable.

    It travels inside every checkpoint so that ``quantile(0.9)`` or ``1.5 x best return`` can be
    resolved, and observations normalized, without the dataset.
    """

    dataset_id: str
    env_id: str | None
    env_kwargs: dict
    max_episode_steps: int | None
    obs_dim: int
    action_kind: str  # "discrete" | "continuous"
    action_dim: int  # number of actions (discrete) or vector size (continuous)
    action_low: list[float] | None
    action_high: list[float] | None
    obs_mean: list[float]
    obs_std: list[float]
    episode_returns: list[float]  # all of them, sorted ascending
    max_episode_length: int
    num_episodes: int
    num_steps: int
    gamma: float = 1.0
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    extra: dict = field(default_factory=dict)
    # When every episode reports info["cost"]: each episode's total cost, in episode_returns' order
    # (ties in return broken by cost), so (episode_returns[i], episode_costs[i]) is one episode's pair.
    episode_costs: list[float] | None = None
    # The env Minari recorded (EnvSpec JSON: entry point, kwargs, wrapper stack) and its eval env, if any:
    # the policy rebuilds them without the dataset (dtcond.datasets.recorded). None in stats written before them.
    env_spec: str | None = None
    eval_env_spec: str | None = None
    # How raw observations become model inputs (dtcond.datasets.observations.ObsCodec.to_dict): the space, and the
    # vocabulary of Text entries. None in stats written before it: Boxes (or a Dict of Boxes) flattened.
    obs_codec: dict | None = None

    @property
    def min_return(self) -> float:
        return self.episode_returns[0]

    @property
    def max_return(self) -> float:
        return self.episode_returns[-1]

    @property
    def is_discrete(self) -> bool:
        return self.action_kind == "discrete"

    @property
    def codec(self):
        """The :class:`~dtcond.datasets.observations.ObsCodec` that encodes this dataset's observations."""
        if "_codec" not in self.__dict__:
            from dtcond.datasets.observations import ObsCodec

            self.__dict__["_codec"] = ObsCodec.from_dict(self.obs_codec) if self.obs_codec else ObsCodec.legacy(self.obs_dim)
        return self.__dict__["_codec"]

    @property
    def has_reference_scores(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None and self.ref_max_score != self.ref_min_score

    def normalized_score(self, episode_return: float) -> float | None:
        """``(G - ref_min) / (ref_max - ref_min)``, Minari's ``get_normalized_score`` (D4RL's; tables show it x100).

        None when the dataset has no reference scores.
        """
        if not self.has_reference_scores:
            return None
        return float((episode_return - self.ref_min_score) / (self.ref_max_score - self.ref_min_score))

    def return_quantile(self, q: float) -> float:
        """The q-th quantile of episode returns (numpy's linear interpolation)."""
        return float(np.quantile(np.asarray(self.episode_returns), q))

    def tail_probability(self, g: float) -> float:
        """``P_data(G >= g)``: the fraction of dataset episodes whose return reaches ``g``."""
        returns = np.asarray(self.episode_returns)
        return float((returns >= g).mean())

    def cost_quantile(self, q: float) -> float:
        """The q-th quantile of episode costs (numpy's linear interpolation)."""
        if self.episode_costs is None:
            raise DtcondError(f"dataset {self.dataset_id!r} has no costs (its env reports no info['cost'])")
        return float(np.quantile(np.asarray(self.episode_costs), q))

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Encoded observations standardized by the data's mean and std; image frames stay uint8 (the model scales them)."""
        if self.codec.kind == "image":
            obs = np.asarray(obs, dtype=np.uint8)
            return obs if obs.flags.writeable else obs.copy()  # a memmap view is read-only; torch wants its own
        mean = np.asarray(self.obs_mean, dtype=np.float32)
        std = np.asarray(self.obs_std, dtype=np.float32)
        return ((np.asarray(obs, dtype=np.float32) - mean) / std).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetStats:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise DtcondError(f"dataset stats have unknown fields {sorted(unknown)}; written by a newer dtcond?")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass
class OfflineData:
    """A loaded dataset: aligned trajectories plus their statistics."""

    trajectories: list[Trajectory]
    stats: DatasetStats

    def __len__(self) -> int:
        return len(self.trajectories)


def observation_codec(ds):
    """The :class:`~dtcond.datasets.observations.ObsCodec` for a Minari dataset; Text entries' vocabularies are read from it first."""
    from dtcond.datasets.observations import ObsCodec, leaves, text_values

    space = ds.observation_space
    texts: dict[str, set] = {}
    if any(isinstance(leaf, gym.spaces.Text) for _, leaf in leaves(space)):
        for episode in ds.iterate_episodes():
            for key, values in text_values(space, episode.observations).items():
                texts.setdefault(key, set()).update(values)
    return ObsCodec.from_space(space, texts)


def _load_minari(dataset_id: str):
    from dtcond.datasets.validation import open_dataset

    return open_dataset(dataset_id)  # metadata and spaces checked; load checks each episode as it reads it


_LOADED: dict[tuple, OfflineData] = {}  # (dataset dir, its files' sizes and mtimes, gamma) -> the data read from them
_LOADED_MAX = 4


def _load_key(dataset_id: str, gamma: float) -> tuple | None:
    """What identifies a dataset's content on disk: its folder and every file's size and mtime (None: no folder)."""
    folder = datasets_root() / dataset_id
    if not folder.is_dir():
        return None
    stats = ((p, p.stat()) for p in sorted(folder.rglob("*")) if p.is_file())
    files = tuple((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns) for p, st in stats)
    return str(folder.resolve()), files, float(gamma)


def _freeze(data: OfflineData) -> OfflineData:
    """Make the arrays read-only: one loaded dataset is shared by every caller in the process."""
    for t in data.trajectories:
        for name in ("observations", "actions", "rewards", "returns_to_go", "timesteps", "true_rewards", "costs"):
            value = getattr(t, name)
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
    return data


def check_gamma(gamma: float, key: str = "dataset.gamma") -> None:
    """Refuse a discount: targets, quantiles and rollouts all count undiscounted returns.

    >>> check_gamma(0.99)
    Traceback (most recent call last):
    ...
    dtcond.common.errors.DtcondError: dataset.gamma=0.99 is not supported: targets, return quantiles and rollouts use undiscounted returns-to-go, so the model must be trained on them too; set dataset.gamma=1.0
    """
    if gamma != 1.0:
        raise DtcondError(f"{key}={gamma} is not supported: targets, return quantiles and rollouts use undiscounted "
                          f"returns-to-go, so the model must be trained on them too; set {key}=1.0")


def load(dataset_id: str, gamma: float = 1.0) -> OfflineData:
    """Load a local Minari dataset into aligned trajectories and their :class:`DatasetStats`.

    ``gamma`` must be 1.0: targets, return quantiles and rollouts count undiscounted returns.

    A process reads and validates a dataset once: later calls return the same (read-only) data until the
    dataset's files change on disk, so the pipeline, every training run and every RL run's behaviour
    cloning share one read.

    >>> data = load("dtcond/cartpole/mixture-v0")
    >>> len(data.trajectories) == data.stats.num_episodes, data.stats.is_discrete
    (True, True)
    """
    check_gamma(gamma, "gamma")
    key = _load_key(dataset_id, gamma)
    if key is not None and key in _LOADED:
        return _LOADED[key]
    data = _freeze(_read(dataset_id, gamma))
    if key is not None:
        while len(_LOADED) >= _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = data
    return data


def _read(dataset_id: str, gamma: float) -> OfflineData:
    from dtcond.datasets.validation import checked_episodes

    ds = _load_minari(dataset_id)
    discrete = isinstance(ds.action_space, gym.spaces.Discrete)
    codec = observation_codec(ds)
    store = FrameStore(codec.image_shape, np.uint8) if codec.kind == "image" else None  # frames go to disk as they are read

    trajectories = []
    for episode in checked_episodes(ds, dataset_id):  # lengths, shapes, NaN/inf and spaces checked
        obs = codec.encode(episode.observations)  # (T+1, obs_dim) float32, or (T+1, C, H, W) uint8 frames
        rewards = np.asarray(episode.rewards, dtype=np.float64)
        if discrete:
            actions = np.asarray(episode.actions).reshape(-1).astype(np.int64)
        else:
            actions = np.asarray(episode.actions, dtype=np.float32).reshape(len(episode), -1)
        extras = {}
        for key in INFO_KEYS:
            if key in episode.infos:
                values = np.asarray(episode.infos[key], dtype=np.float32).reshape(-1)
                extras[key] = values[1:] if len(values) == len(episode) + 1 else values[: len(episode)]
        T = len(episode)
        frames = None
        if store is not None:
            frames = (store, store.append(obs[:-1]))
            obs = None  # this episode's frames are on disk now; a view replaces them below
        trajectories.append(
            Trajectory(
                observations=obs[:-1] if obs is not None else None,
                actions=actions,
                rewards=rewards.astype(np.float32),
                returns_to_go=returns_to_go(rewards, gamma),
                timesteps=np.arange(T, dtype=np.int64),
                terminated=bool(episode.terminations[-1]),
                truncated=bool(episode.truncations[-1]),
                true_rewards=extras.get("true_reward"),
                costs=extras.get("cost"),
                frames=frames,
            )
        )
    if store is not None:
        store.finish()
        for t in trajectories:
            t.observations = store.view(t.frames[1], len(t))
    if not trajectories:
        raise DtcondError(f"dataset {dataset_id!r} is empty: it has no episodes with at least one step")

    return OfflineData(trajectories, compute_stats(trajectories, ds, dataset_id, gamma, codec))


def compute_stats(trajectories: list[Trajectory], ds, dataset_id: str, gamma: float, codec=None) -> DatasetStats:
    if codec is None:
        codec = observation_codec(ds)
    if codec.kind == "image":  # frames are scaled inside the model: no per-pixel statistics
        mean, std = [], []
    else:
        all_obs = np.concatenate([t.observations for t in trajectories]).astype(np.float64)
        # A constant feature would divide by zero; 1e-6 keeps it at zero after normalization.
        mean, std = all_obs.mean(axis=0), np.maximum(all_obs.std(axis=0), 1e-6)
    pairs = sorted((float(np.asarray(t.rewards, dtype=np.float64).sum()),
                    float(np.asarray(t.costs, dtype=np.float64).sum()) if t.costs is not None else 0.0) for t in trajectories)
    returns = [g for g, _ in pairs]
    has_costs = all(t.costs is not None for t in trajectories)
    action_space = ds.action_space
    discrete = isinstance(action_space, gym.spaces.Discrete)
    spec = ds.env_spec
    metadata = ds.storage.metadata
    return DatasetStats(
        dataset_id=dataset_id,
        env_id=spec.id if spec is not None else None,
        env_kwargs=dict(spec.kwargs) if spec is not None else {},
        max_episode_steps=spec.max_episode_steps if spec is not None else None,
        obs_dim=int(codec.dim),
        action_kind="discrete" if discrete else "continuous",
        action_dim=int(action_space.n) if discrete else int(action_space.shape[0]),
        action_low=None if discrete else [float(x) for x in action_space.low],
        action_high=None if discrete else [float(x) for x in action_space.high],
        obs_mean=[float(x) for x in mean],
        obs_std=[float(x) for x in std],
        episode_returns=returns,
        max_episode_length=max(len(t) for t in trajectories),
        num_episodes=len(trajectories),
        num_steps=int(sum(len(t) for t in trajectories)),
        gamma=gamma,
        ref_min_score=_float_or_none(metadata.get("ref_min_score")),
        ref_max_score=_float_or_none(metadata.get("ref_max_score")),
        episode_costs=[c for _, c in pairs] if has_costs else None,
        env_spec=_spec_json(spec),
        obs_codec=codec.to_dict(),
        eval_env_spec=_spec_json(getattr(ds, "_eval_env_spec", None)),
    )


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def _spec_json(spec) -> str | None:
    """An EnvSpec as Gymnasium's JSON, or None (no spec, or kwargs that are not JSON: the id is then used)."""
    if spec is None:
        return None
    try:
        return spec.to_json()
    except (ValueError, TypeError, gym.error.Error):
        return None


def return_summary(returns) -> dict[str, float]:
    """min / p5 / median / p95 / max / mean of a set of episode returns."""
    r = np.asarray(returns, dtype=np.float64)
    q = np.quantile(r, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"min": q[0], "p5": q[1], "median": q[2], "p95": q[3], "max": q[4], "mean": float(r.mean())}
