"""Training windows: K-step segments of a dataset's trajectories, left-padded at episode starts, and the
batched sampler that gathers them (:class:`WindowDataset`), plus the train/validation split by episode."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dtcond.datasets.loading import DatasetStats, Trajectory, returns_to_go
from dtcond.common.errors import DtcondError


@dataclass
class Window:
    """A batch-ready segment of L steps ending at a sampled step, left-padded at episode starts."""

    observations: np.ndarray  # (L, obs_dim) float32, normalized
    actions: np.ndarray  # (L, act_dim) float32 or (L,) int64
    returns_to_go: np.ndarray  # (L,) float32, raw (the model scales them)
    timesteps: np.ndarray  # (L,) int64
    mask: np.ndarray  # (L,) bool, False on padding
    costs_to_go: np.ndarray | None = None  # (L,) float32, raw, when the episode has costs


def make_window(traj: Trajectory, end: int, length: int, stats: DatasetStats) -> Window:
    """The ``length`` steps of ``traj`` ending at step ``end`` (inclusive), left-padded with zeros.

    Padding sits at the start, where an episode's history is short, which is where a rollout's
    context is short too.
    """
    start = max(0, end + 1 - length)
    n = end + 1 - start
    pad = length - n
    obs = stats.normalize_obs(traj.observations[start : end + 1])
    window_obs = np.zeros((length, *obs.shape[1:]), dtype=obs.dtype)
    window_obs[pad:] = obs
    if traj.actions.ndim == 1:
        actions = np.zeros(length, dtype=np.int64)
    else:
        actions = np.zeros((length, traj.actions.shape[1]), dtype=np.float32)
    actions[pad:] = traj.actions[start : end + 1]
    rtg = np.zeros(length, dtype=np.float32)
    rtg[pad:] = traj.returns_to_go[start : end + 1]
    timesteps = np.zeros(length, dtype=np.int64)
    timesteps[pad:] = traj.timesteps[start : end + 1]
    mask = np.zeros(length, dtype=bool)
    mask[pad:] = True
    ctg = None
    if traj.costs is not None:
        ctg = np.zeros(length, dtype=np.float32)
        ctg[pad:] = returns_to_go(traj.costs)[start : end + 1]
    return Window(window_obs, actions, rtg, timesteps, mask, ctg)


EPISODE_WEIGHTINGS = ("steps", "balanced")


class WindowDataset:
    """Batches of random training windows, gathered from the episodes stored as flat tensors.

    The trajectories are concatenated once into one tensor per field (observations already
    normalized) with episode offsets, plus one zero row at the end that padding points at, so a
    batch of windows is one fancy-index gather per field (:meth:`gather`) rather than windows cut
    one by one; :meth:`to` keeps them on an accelerator. Item ``j`` is batch ``j`` of the current
    epoch, the same windows as :func:`make_window` cuts (a test checks it).

    ``episode_weighting="steps"`` (the DT paper's): a window's last step is drawn uniformly over all
    steps, i.e. an episode with probability ∝ its length, then a step in it. ``"balanced"``: half the
    windows that way, half from an episode drawn uniformly. Short episodes (often the low returns) are
    then seen far more often; the per-step targets are unchanged, only how often each context is
    trained on. ``epoch_size`` windows in batches of ``batch_size`` (the last one may be short) make
    one epoch; batch ``j`` of epoch ``e`` is a pure function of (seed, e, j), so runs and resumes
    repeat, and distributed ranks, which take different ``j``, draw different windows.

    >>> ds = WindowDataset(data.trajectories, data.stats, length=40, epoch_size=256, batch_size=64)  # doctest: +SKIP
    >>> ds[0]["observations"].shape                                                                  # doctest: +SKIP
    torch.Size([64, 40, 4])
    """

    def __init__(self, trajectories: list[Trajectory], stats: DatasetStats, length: int, epoch_size: int, seed: int = 0,
                 episode_weighting: str = "steps", batch_size: int = 64, frame_stack: int = 1):
        if episode_weighting not in EPISODE_WEIGHTINGS:
            raise DtcondError(f"episode_weighting must be one of {EPISODE_WEIGHTINGS}, got {episode_weighting!r}")
        if length < 1:
            raise DtcondError(f"window length must be >= 1, got {length}")
        if not trajectories:
            raise DtcondError("no trajectories to draw windows from")
        if epoch_size < 1 or batch_size < 1:
            raise DtcondError(f"epoch_size and batch_size must be >= 1, got {epoch_size}, {batch_size}")
        self.trajectories = trajectories
        self.stats = stats
        self.length = length
        self.epoch_size = epoch_size
        self.batch_size = batch_size
        self.seed = seed
        self.episode_weighting = episode_weighting
        self.epoch = 0
        self.lengths = np.array([len(t) for t in trajectories], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # episode e holds flat rows offsets[e]:offsets[e+1]
        self.pad_row = int(self._offsets[-1])  # the zero row every padding position reads

        def flat(parts, dtype):  # (N + 1, ...) with the zero padding row last
            stacked = np.concatenate([*parts, np.zeros((1, *parts[0].shape[1:]), dtype)]).astype(dtype, copy=False)
            return torch.from_numpy(stacked)

        stores = {id(t.frames[0]) for t in trajectories if t.frames is not None}
        # Image frames in a FrameStore stay on disk: each batch reads its windows (see gather).
        self.frames = trajectories[0].frames[0] if len(stores) == 1 and all(t.frames for t in trajectories) else None
        self._frame_rows = np.array([t.frames[1] for t in trajectories], dtype=np.int64) if self.frames else None
        if frame_stack < 1 or (frame_stack > 1 and self.frames is None):
            raise DtcondError(f"frame_stack must be >= 1, and > 1 only for image observations; got {frame_stack} for "
                              f"{stats.codec.kind} observations")
        self.frame_stack = frame_stack
        self.fields = {} if self.frames else {
            "observations": flat([stats.normalize_obs(t.observations) for t in trajectories], stats.codec.dtype),
        }
        self.fields |= {
            "actions": flat([t.actions for t in trajectories], trajectories[0].actions.dtype),
            "returns_to_go": flat([t.returns_to_go for t in trajectories], np.float32),  # raw: the model scales them
            "timesteps": flat([np.asarray(t.timesteps, dtype=np.int64) for t in trajectories], np.int64),
        }
        if all(t.costs is not None for t in trajectories):  # cost-to-go, for cost-conditioned models
            self.fields["costs_to_go"] = flat([returns_to_go(t.costs) for t in trajectories], np.float32)
        self.device = torch.device("cpu")

    def to(self, device) -> WindowDataset:
        """Keep the episodes on ``device``: batches are then gathered there, with no copy per batch."""
        self.device = torch.device(device)
        self.fields = {k: v.to(self.device) for k, v in self.fields.items()}
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.epoch_size // self.batch_size)  # batches per epoch

    def locate(self, global_step):
        """(episode, step within it) of flat step index ``global_step`` (an int or an array)."""
        episode = np.searchsorted(self._offsets, global_step, side="right") - 1
        return episode, global_step - self._offsets[episode]

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (episode, last step) of each window of batch ``index`` in the current epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        n = min(self.batch_size, self.epoch_size - index * self.batch_size)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        episodes, steps = self.locate(rng.integers(self.pad_row, size=n))
        if self.episode_weighting == "balanced":
            uniform = rng.random(n) < 0.5
            per_episode = rng.integers(len(self.lengths), size=n)
            episodes = np.where(uniform, per_episode, episodes)
            steps = np.where(uniform, rng.integers(self.lengths[per_episode]), steps)
        return episodes, steps

    def gather(self, episodes, ends) -> dict:
        """Windows of ``length`` steps ending at step ``ends[i]`` of episode ``episodes[i]``, as tensors (B, L, ...).

        Left-padded with zeros and ``mask`` False, exactly as :func:`make_window`.
        """
        start = self._offsets[np.asarray(episodes)]  # (B,) first flat row of each episode
        rows = (start + np.asarray(ends))[:, None] + np.arange(1 - self.length, 1)  # (B, L)
        rows = np.where(rows >= start[:, None], rows, self.pad_row)  # before the episode: the zero row
        if self.frames is not None:  # frames on disk: one read per window, of its rows inside the episode
            frames = self._read_frames(np.asarray(episodes), np.asarray(ends))
        rows = torch.from_numpy(rows).to(self.device, non_blocking=True)
        batch = {k: v[rows] for k, v in self.fields.items()}  # one gather per field
        if self.frames is not None:
            batch["observations"] = torch.from_numpy(frames).to(self.device, non_blocking=True)
        batch["mask"] = rows != self.pad_row
        return batch

    def _read_frames(self, episodes: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(B, L, k*C, H, W) uint8: each window's frames, each step stacked with the k-1 frames before it
        (oldest first; zeros before the episode's first frame), left-padded with zeros as the other fields."""
        k, (C, H, W) = self.frame_stack, self.frames.row_shape
        out = np.zeros((len(episodes), self.length, k * C, H, W), self.frames.dtype)
        for b, (episode, end) in enumerate(zip(episodes, ends)):
            n = int(min(end + 1, self.length))  # steps of the episode in this window
            start = int(end + 1 - n)  # its first step
            earlier = min(k - 1, start)  # frames before it that the first step's stack needs
            buf = np.zeros((k - 1 + n, C, H, W), self.frames.dtype)
            self.frames.read(int(self._frame_rows[episode]) + start - earlier, n + earlier, out=buf[k - 1 - earlier :])
            stacks = np.lib.stride_tricks.sliding_window_view(buf, k, axis=0)  # (n, C, H, W, k)
            out[b, self.length - n :] = np.moveaxis(stacks, -1, 1).reshape(n, k * C, H, W)
        return out

    def __getitem__(self, index: int) -> dict:
        return self.gather(*self.draw(index))


def split_by_episode(n_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/val episode indices; val gets at least one episode when there are two or more."""
    if not 0.0 <= val_fraction < 1.0:
        raise DtcondError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = math.ceil(val_fraction * n_episodes) if val_fraction > 0 else 0
    n_val = min(n_val, n_episodes - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
