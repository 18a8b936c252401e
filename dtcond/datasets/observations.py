"""Observations → model inputs: one codec for data loading, the policy and evaluation.

An :class:`ObsCodec` is built from a dataset's observation space and travels (as a dict) in
:class:`~dtcond.datasets.loading.DatasetStats`, so a policy bundle encodes observations without the dataset.
It has two kinds:

- ``"image"``: the space is one image-shaped ``uint8`` Box (H×W, H×W×C or C×H×W, H and W ≥ 32, as
  Minari's ``is_image_space`` says for the first two). Frames are kept ``uint8`` in (C, H, W) layout;
  the model's convolutional encoder scales them to [0, 1].
- ``"vector"``: everything else the catalogue uses, flattened to one float32 vector per step, leaf by
  leaf through nested Dict and Tuple spaces in the space's order: a Box is flattened, a Discrete,
  MultiDiscrete or MultiBinary is one-hot (Gymnasium's ``spaces.flatten``), and a Text entry is a
  one-hot id of the *whole string* over the vocabulary of strings seen in the dataset, plus one slot
  for a string the data never had. Whole-string ids, not characters, because the catalogue's Text
  entries (MiniGrid/BabyAI missions) come from a few templates: a mission is a label, and an id
  costs the model one embedding column instead of parsing characters. Datasets with more than
  :data:`MAX_VOCAB` distinct strings are refused.

>>> space = gym.spaces.Dict(direction=gym.spaces.Discrete(4), image=gym.spaces.Box(0, 255, (2, 2, 3), np.uint8))
>>> codec = ObsCodec.from_space(space)
>>> codec.kind, codec.dim
('vector', 16)
>>> codec.encode({"direction": np.array([1]), "image": np.zeros((1, 2, 2, 3), np.uint8)})[0, :4].tolist()
[0.0, 1.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Dict, Discrete, MultiBinary, MultiDiscrete, Text, Tuple

from dtcond.common.errors import DtcondError

MAX_VOCAB = 1024
SUPPORTED = ("Box (any shape; uint8 images get a conv encoder), Discrete, MultiDiscrete, MultiBinary and Text, "
             "nested in Dict and Tuple")
_LEAVES = (Box, Discrete, MultiDiscrete, MultiBinary, Text)


def image_layout(space: gym.Space) -> str | None:
    """"HW", "HWC" or "CHW" for an image-shaped uint8 Box (H, W >= 32, bounds 0..255), else None."""
    if not isinstance(space, Box) or space.dtype != np.uint8 or len(space.shape) not in (2, 3):
        return None
    if not (np.all(space.low == 0) and np.all(space.high == 255)):
        return None
    shape = space.shape
    if len(shape) == 2:
        return "HW" if min(shape) >= 32 else None
    if shape[0] >= 32 and shape[1] >= 32:  # Minari's is_image_space: H x W x C
        return "HWC"
    if shape[1] >= 32 and shape[2] >= 32:  # frame stacks and torch layouts: C x H x W
        return "CHW"
    return None


def leaves(space: gym.Space, path: tuple = ()) -> Iterable[tuple[tuple, gym.Space]]:
    """(path, leaf space) of every leaf, depth first in the space's order; unsupported spaces are refused."""
    if isinstance(space, Dict):
        for key, sub in space.spaces.items():
            yield from leaves(sub, (*path, key))
    elif isinstance(space, Tuple):
        for i, sub in enumerate(space.spaces):
            yield from leaves(sub, (*path, i))
    elif isinstance(space, _LEAVES):
        yield path, space
    else:
        where = f" at {'/'.join(map(str, path))}" if path else ""
        raise DtcondError(f"unsupported observation space {type(space).__name__}{where}: dtcond handles {SUPPORTED}")


def check_observation_space(space: gym.Space) -> None:
    """Raise a one-line :class:`DtcondError` unless :class:`ObsCodec` can encode ``space``."""
    for _ in leaves(space):
        pass


def _get(obs, path: tuple):
    for key in path:
        obs = obs[key]
    return obs


@dataclass
class ObsCodec:
    """Encodes batches of observations of one space; ``to_dict``/``from_dict`` round-trip it through JSON.

    ``space`` is Minari's serialization of the observation space; ``vocab`` maps a Text leaf's path
    ("mission", or "0/mission" inside a Tuple) to its strings. A codec with no space (stats written
    before codecs existed) flattens Boxes and Dicts of Boxes, as dtcond did then.
    """

    space: str | None
    kind: str = "vector"  # "vector" | "image"
    dim: int = 0  # length of an encoded vector (C*H*W for images)
    image_shape: list[int] | None = None  # (C, H, W) for kind "image"
    layout: str | None = None  # "HW" | "HWC" | "CHW" for kind "image"
    vocab: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self):
        self._space = None
        if self.space is not None:
            from minari.serialization import deserialize_space

            self._space = deserialize_space(self.space)
        self._ids = {k: {s: i for i, s in enumerate(v)} for k, v in self.vocab.items()}

    @classmethod
    def from_space(cls, space: gym.Space, texts: dict[str, Iterable[str]] | None = None) -> ObsCodec:
        """The codec for ``space``; ``texts`` gives each Text leaf's strings (their sorted set is its vocabulary)."""
        from minari.serialization import serialize_space

        layout = image_layout(space)
        if layout is not None:
            shape = space.shape
            chw = (1, *shape) if layout == "HW" else (shape[2], shape[0], shape[1]) if layout == "HWC" else tuple(shape)
            return cls(serialize_space(space), "image", int(np.prod(chw)), [int(x) for x in chw], layout)
        vocab, dim = {}, 0
        for path, leaf in leaves(space):
            if isinstance(leaf, Text):
                key = "/".join(map(str, path))
                strings = sorted(set((texts or {}).get(key, ())))
                if len(strings) > MAX_VOCAB:
                    raise DtcondError(f"observation entry {key!r} has {len(strings)} distinct strings; dtcond encodes a whole "
                                      f"string as one id and handles up to {MAX_VOCAB} (templated missions, as MiniGrid's)")
                vocab[key] = strings
                dim += len(strings) + 1  # the last slot: a string the data never had
            else:
                dim += gym.spaces.flatdim(leaf)
        return cls(serialize_space(space), "vector", dim, vocab=vocab)

    @classmethod
    def legacy(cls, obs_dim: int) -> ObsCodec:
        """The codec of stats written before codecs: Boxes, or a Dict of Boxes, flattened in key order."""
        return cls(None, "vector", int(obs_dim))

    @classmethod
    def from_dict(cls, d: dict) -> ObsCodec:
        return cls(**d)

    def to_dict(self) -> dict:
        return {"space": self.space, "kind": self.kind, "dim": self.dim, "image_shape": self.image_shape,
                "layout": self.layout, "vocab": self.vocab}

    @property
    def observation_space(self) -> gym.Space | None:
        return self._space

    @property
    def text_keys(self) -> list[str]:
        return list(self.vocab)

    @property
    def dtype(self):
        return np.uint8 if self.kind == "image" else np.float32

    def encode(self, obs) -> np.ndarray:
        """A batch of raw observations (leading dim N, as Minari's episodes and vector envs give them) →
        (N, dim) float32, or (N, C, H, W) uint8 for images."""
        if self.kind == "image":
            frames = np.asarray(obs)
            if frames.dtype != np.uint8:
                frames = frames.astype(np.uint8)
            if self.layout == "HW":
                return frames[:, None]
            if self.layout == "HWC":
                return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
            return frames
        if self._space is None:  # legacy: Boxes only
            if isinstance(obs, dict):
                return np.concatenate([np.asarray(v, dtype=np.float32).reshape(len(v), -1) for v in obs.values()], axis=1)
            obs = np.asarray(obs, dtype=np.float32)
            return obs.reshape(obs.shape[0], -1)
        parts = []
        for path, leaf in leaves(self._space):
            values = _get(obs, path)
            if isinstance(leaf, Text):
                key = "/".join(map(str, path))
                ids, n = self._ids[key], len(self.vocab[key])
                index = np.array([ids.get(str(s), n) for s in values], dtype=np.int64)
                parts.append(np.eye(n + 1, dtype=np.float32)[index])
            elif isinstance(leaf, Box):
                values = np.asarray(values)
                parts.append(values.reshape(len(values), -1).astype(np.float32))
            else:  # Discrete, MultiDiscrete, MultiBinary: one-hot / 0-1, as gymnasium.spaces.flatten writes them
                values = np.asarray(values)
                n = len(values)
                if isinstance(leaf, Discrete):  # a batch of Discrete is a MultiDiscrete: one flatten for all rows
                    batch = gym.vector.utils.batch_space(leaf, n)
                elif isinstance(leaf, MultiDiscrete):  # (batch_space makes it a Box, which flatten would not one-hot)
                    batch = MultiDiscrete(np.tile(leaf.nvec, (n,) + (1,) * leaf.nvec.ndim),
                                          start=np.tile(leaf.start, (n,) + (1,) * leaf.start.ndim))
                else:
                    batch = gym.vector.utils.batch_space(leaf, n)
                flat = gym.spaces.flatten(batch, values.astype(leaf.dtype))
                parts.append(np.asarray(flat, dtype=np.float32).reshape(n, -1))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def encode_one(self, obs) -> np.ndarray:
        """One observation (no batch dim) → (dim,) float32 or (C, H, W) uint8."""
        return self.encode(_batched(obs))[0]

    def check_space(self, space: gym.Space) -> None:
        """Refuse an env observation space whose leaves differ in shape or size from the dataset's.

        Text leaves accept any env space (MiniGrid's ``MissionSpace`` is recorded as a Text).
        """
        if self._space is None:
            return
        for path, leaf in leaves(self._space):
            try:
                sub = space
                for key in path:
                    sub = sub.spaces[key]
            except (KeyError, IndexError, TypeError, AttributeError):
                raise DtcondError(f"env observation space {space} lacks the dataset's entry {'/'.join(map(str, path))!r}") from None
            if isinstance(leaf, Text):
                continue
            same = (sub.shape == leaf.shape) if isinstance(leaf, Box) else (
                isinstance(sub, type(leaf)) and gym.spaces.flatdim(sub) == gym.spaces.flatdim(leaf))
            if not same:
                where = f" entry {'/'.join(map(str, path))!r}" if path else ""
                raise DtcondError(f"env observation{where} {sub} differs from the dataset's {leaf}")


def _batched(obs):
    """One observation with a leading batch dim of 1 added to each leaf."""
    if isinstance(obs, dict):
        return {k: _batched(v) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_batched(v) for v in obs)
    if isinstance(obs, str):
        return [obs]
    return np.asarray(obs)[None]


def text_values(space: gym.Space, observations) -> dict[str, list[str]]:
    """Each Text leaf's strings in one episode's observations (keyed as :class:`ObsCodec` keys its vocabulary)."""
    out = {}
    for path, leaf in leaves(space):
        if isinstance(leaf, Text):
            out["/".join(map(str, path))] = [str(s) for s in _get(observations, path)]
    return out


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raise a one-line :class:`DtcondError` unless dtcond can model these spaces."""
    check_observation_space(observation_space)
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise DtcondError(f"unsupported action space {action_space}: Box actions must be 1-D")
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise DtcondError(f"unsupported action space {action_space}: Box actions need finite bounds")
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise DtcondError(f"unsupported action space {type(action_space).__name__}: dtcond handles Box or Discrete actions")
