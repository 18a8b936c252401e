"""Up-front checks on a local Minari dataset: a damaged or inconsistent one is refused in one line.

Every dataset dtcond reads passes through here (:func:`dtcond.datasets.loading.load` opens it with
:func:`open_dataset` and reads it through :func:`checked_episodes`), so training never starts on data
that cannot be what it claims. Each message names the dataset, the episode where there is one, and what
is wrong.

What Minari and Gymnasium already check is reused rather than rewritten: Minari's own reader for the
metadata, the spaces and the episodes (whatever h5py raises on a damaged file becomes one line naming
the episode being read), the step count Minari records in ``metadata.json``, and the spaces'
``contains`` — the test Minari's ``DataCollector`` applies to every step it records — which has the
last word on any step that a bounds check broadcast over the whole episode flags. What neither
checks is checked here: that an episode's arrays agree in length (one more observation than
actions), have the declared shapes, and hold no NaN/inf (an infinite Box bound lets inf through
``contains``). HDF5 keeps no checksums, so bytes damaged inside an episode's numbers are caught only
where they make a value impossible (NaN, out of the space); damage to the file's structure is caught.
"""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np

from dtcond.common.errors import DtcondError

# Per-step quantities a testbed env may report in `info`, carried through when present.
INFO_KEYS = ("true_reward", "cost")

SUPPORTED = ("dtcond reads observations of Box, Discrete, MultiDiscrete, MultiBinary and Text spaces, nested in Dict and "
             "Tuple, with Box (1-D, finite bounds) or Discrete actions")

# What Minari's metadata.json must hold for dtcond to read a dataset.
REQUIRED_METADATA = ("dataset_id", "data_format", "total_episodes", "total_steps", "minari_version")


def open_dataset(dataset_id: str):
    """Open a local Minari dataset after checking its metadata and spaces; a one-line error otherwise.

    The episodes are not read here; :func:`checked_episodes` reads and checks them.

    >>> ds = open_dataset("dtcond/cartpole/mixture-v0")   # doctest: +SKIP
    >>> ds.total_episodes                                  # doctest: +SKIP
    300
    """
    import minari

    from dtcond.datasets.storage import datasets_root, local_dataset_ids

    root = datasets_root()
    if dataset_id not in local_dataset_ids():
        if (root / dataset_id).is_dir():
            raise DtcondError(f"dataset {dataset_id!r} at {root / dataset_id} has no data/metadata.json: it is incomplete or damaged; "
                              "collect it again or restore a copy")
        listing = ", ".join(local_dataset_ids()) or "none"
        raise DtcondError(
            f"unknown dataset id {dataset_id!r} under {root} (local datasets: {listing}); make one with `dtcond collect`"
        )
    metadata = _read_metadata(dataset_id)
    observation_space = _space(dataset_id, metadata, "observation")
    action_space = _space(dataset_id, metadata, "action")
    from dtcond.datasets.observations import check_spaces

    try:
        check_spaces(observation_space, action_space)
    except DtcondError as exc:
        raise DtcondError(f"dataset {dataset_id!r}: {exc}") from None
    try:
        return minari.load_dataset(dataset_id)
    except Exception as exc:  # anything Minari's reader raises means the dataset cannot be read as stored
        raise DtcondError(f"cannot read dataset {dataset_id!r}: {_reason(exc)}") from None


def _read_metadata(dataset_id: str) -> dict:
    """The dataset's ``metadata.json`` as Minari reads it, with the keys dtcond relies on present."""
    from minari.dataset.minari_storage import MinariStorage

    from dtcond.datasets.storage import datasets_root

    path = datasets_root() / dataset_id / "data"
    try:
        metadata = MinariStorage.read_raw_metadata(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise DtcondError(f"dataset {dataset_id!r}: {path / 'metadata.json'} cannot be read ({_reason(exc)})") from None
    if not isinstance(metadata, dict):
        raise DtcondError(f"dataset {dataset_id!r}: {path / 'metadata.json'} is not a JSON object")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise DtcondError(f"dataset {dataset_id!r}: {path / 'metadata.json'} lacks {', '.join(missing)}; it was not written by Minari or is damaged")
    return metadata


def _space(dataset_id: str, metadata: dict, which: str) -> gym.Space:
    from minari.serialization import deserialize_space

    serialized = metadata.get(f"{which}_space")
    if serialized is None:
        raise DtcondError(f"dataset {dataset_id!r}: metadata.json records no {which} space; {SUPPORTED}")
    kind = _space_type(serialized)
    if kind is None:
        raise DtcondError(f"dataset {dataset_id!r}: the {which} space in metadata.json is malformed (no JSON object with a type)")
    if kind not in deserialize_space.registry:  # a space type Minari cannot read back (e.g. Graph)
        raise DtcondError(f"dataset {dataset_id!r}: unsupported {which} space {kind}; {SUPPORTED}")
    try:
        return deserialize_space(serialized)
    except Exception as exc:  # malformed fields, or a type Minari cannot read nested inside
        raise DtcondError(f"dataset {dataset_id!r}: Minari cannot read the {which} space in metadata.json ({_reason(exc)}); "
                          f"{SUPPORTED}") from None


def _space_type(serialized) -> str | None:
    import json

    try:
        return str(json.loads(serialized)["type"]) if isinstance(serialized, str) else str(serialized["type"])
    except Exception:
        return None


def checked_episodes(ds, dataset_id: str) -> Iterator:
    """Minari's episodes of ``ds``, each checked by :func:`check_episode` before it is yielded.

    A data file that cannot be opened is reported as such; one that fails later names the episode
    being read. After the last episode, the step count Minari recorded in ``metadata.json`` is
    compared with what was read.

    >>> n = sum(len(ep) for ep in checked_episodes(open_dataset("dtcond/cartpole/mixture-v0"), "dtcond/cartpole/mixture-v0"))  # doctest: +SKIP
    """
    _probe(ds, dataset_id)
    episodes = ds.iterate_episodes()
    total = 0
    for index in ds.episode_indices:
        where = f"dataset {dataset_id!r} episode {int(index)}"
        try:
            episode = next(episodes)
        except Exception as exc:  # h5py's KeyError/OSError/RuntimeError on a damaged file, Minari's asserts
            raise DtcondError(f"{where} cannot be read ({_reason(exc)}); the data file is damaged or incomplete "
                              f"(metadata.json lists {len(ds.episode_indices)} episodes) — collect the dataset again or restore a copy") from None
        check_episode(episode, ds.observation_space, ds.action_space, where)
        total += len(episode)
        yield episode
    if total != ds.storage.total_steps:
        raise DtcondError(f"dataset {dataset_id!r}: metadata.json records {ds.storage.total_steps} steps but its "
                          f"{len(ds.episode_indices)} episodes hold {total}; the dataset is inconsistent")


def _probe(ds, dataset_id: str) -> None:
    """Open the data file through Minari's reader (reading no episode): a file that cannot be opened at all."""
    try:
        list(ds.storage.get_episode_metadata([]))
    except Exception as exc:
        data = ds.storage.data_path
        data = data / "main_data.hdf5" if ds.storage.metadata.get("data_format") == "hdf5" else data
        raise DtcondError(f"dataset {dataset_id!r}: {data} cannot be read ({_reason(exc)}); it is corrupt or truncated — "
                          "collect the dataset again or restore a copy") from None


def check_episode(episode, observation_space: gym.Space, action_space: gym.Space, where: str = "episode") -> None:
    """Raise a one-line :class:`DtcondError` (prefixed by ``where``) unless a Minari episode is well formed.

    Well formed: at least one step; T actions, rewards, terminations and truncations and T + 1
    observations; each of the declared shape; observations, actions and rewards finite; every
    observation and action inside its space (Gymnasium's ``contains``).

    >>> box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    >>> from minari.dataset.episode_data import EpisodeData
    >>> ep = EpisodeData(id=0, observations=np.zeros((3, 2), np.float32), actions=np.zeros((3, 2), np.float32),
    ...                  rewards=np.zeros(3), terminations=np.zeros(3, bool), truncations=np.zeros(3, bool), infos={})
    >>> check_episode(ep, box, box)
    Traceback (most recent call last):
    ...
    dtcond.common.errors.DtcondError: episode has 3 observations for 3 actions; Minari stores one more observation than actions (the final state)
    """
    rewards = np.asarray(episode.rewards)
    if rewards.ndim != 1:
        raise DtcondError(f"{where}: rewards have shape {rewards.shape}; expected one per step")
    T = len(rewards)
    if T == 0:
        raise DtcondError(f"{where} has no steps (a zero-length episode); every episode needs at least one action")
    n_obs = _length(episode.observations, observation_space, "observations", where)
    if n_obs != T + 1:
        raise DtcondError(f"{where} has {n_obs} observations for {T} actions; Minari stores one more observation than actions "
                          "(the final state)")
    for name in ("actions", "terminations", "truncations"):
        n = _length(getattr(episode, name), action_space if name == "actions" else None, name, where)
        if n != T:
            raise DtcondError(f"{where} has {n} {name} for {T} rewards; they must agree")
    _check_values(episode.observations, observation_space, "observations", where)
    _check_values(episode.actions, action_space, "actions", where)
    if not np.all(np.isfinite(rewards.astype(np.float64))):
        raise DtcondError(f"{where} has NaN/inf rewards (first at step {_first_bad(~np.isfinite(rewards.astype(np.float64)))})")
    infos = episode.infos or {}
    for key in INFO_KEYS:
        if key in infos:
            values = np.asarray(infos[key], dtype=np.float64).reshape(-1)
            if len(values) not in (T, T + 1):
                raise DtcondError(f"{where}: info {key!r} has {len(values)} entries for {T} steps; expected {T + 1} (or {T})")
            if not np.all(np.isfinite(values)):
                raise DtcondError(f"{where} has NaN/inf in info {key!r}")


def _length(values, space: gym.Space | None, name: str, where: str) -> int:
    """Leading (time) length of an episode field; a Dict space's entries must all share it."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        kind = "dict" if isinstance(space, gym.spaces.Dict) else "tuple"
        if not isinstance(values, dict if kind == "dict" else (tuple, list)) or not values:
            raise DtcondError(f"{where}: {name} are not a {kind} of arrays, as the space {space} declares")
        subs = space.spaces.items() if kind == "dict" else enumerate(space.spaces)
        try:
            lengths = {k: _length(values[k], sub, name, where) for k, sub in subs}
        except (KeyError, IndexError):
            raise DtcondError(f"{where}: {name} lack entries the space {space} declares") from None
        if len(set(lengths.values())) > 1:
            raise DtcondError(f"{where}: the {name} entries differ in length ({lengths}); they must agree")
        return next(iter(lengths.values()))
    if isinstance(space, gym.spaces.Text):
        return len(values)
    values = np.asarray(values)
    if values.ndim == 0:
        raise DtcondError(f"{where}: {name} are a single value, not one per step")
    return len(values)


def _check_values(values, space: gym.Space, name: str, where: str) -> None:
    """Shape, finiteness, then membership in ``space`` of a whole episode's observations or actions."""
    if isinstance(space, gym.spaces.Dict):
        if set(values) != set(space.spaces):
            raise DtcondError(f"{where}: {name} have entries {sorted(values)} but the space declares {sorted(space.spaces)}")
        for key, sub in space.spaces.items():
            _check_values(values[key], sub, f"{name}[{key!r}]", where)
        return
    if isinstance(space, gym.spaces.Tuple):
        if len(values) != len(space.spaces):
            raise DtcondError(f"{where}: {name} have {len(values)} entries but the space declares {len(space.spaces)}")
        for i, sub in enumerate(space.spaces):
            _check_values(values[i], sub, f"{name}[{i}]", where)
        return
    if isinstance(space, gym.spaces.Text):  # strings: Gymnasium's contains on each (length, characters)
        for step, text in enumerate(values):
            if not isinstance(text, str) or not space.contains(text):
                raise DtcondError(f"{where}: {name} at step {step} ({text!r}) is outside the declared space {space}")
        return
    values = np.asarray(values)
    if values.shape[1:] != space.shape:
        raise DtcondError(f"{where}: {name} have shape {values.shape[1:]} per step but the space {space} declares {space.shape}")
    if values.dtype.kind not in "biuf":
        raise DtcondError(f"{where}: {name} have dtype {values.dtype}; expected numbers for {space}")
    if values.dtype.kind == "f":
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            raise DtcondError(f"{where} has NaN/inf {name} (first at step {_first_bad(~finite)})")
        if np.dtype(space.dtype).kind in "iu" and np.all(values == np.round(values)):
            values = values.astype(space.dtype)  # whole numbers stored as floats (e.g. Discrete actions 0.0, 1.0)
    if np.can_cast(values.dtype, space.dtype, casting="same_kind"):
        values = values.astype(space.dtype, copy=False)  # e.g. float64 data for a float32 Box: judge the values
    # Box.contains / Discrete.contains on every step at once (broadcast over time), then Gymnasium's own
    # contains on the first step that looks outside: it has the last word, and names the step.
    for step in np.flatnonzero(~_inside(space, values)):
        if not space.contains(values[step]):
            value = np.array2string(np.asarray(values[step]), precision=4, threshold=8)
            singular = name[:-1] if name.endswith("s") else name
            raise DtcondError(f"{where}: {singular} at step {step} ({value}) is outside the declared space {space}")


def _inside(space: gym.Space, values: np.ndarray) -> np.ndarray:
    """(T,) bool: whether each step's value lies in ``space`` (a Box, Discrete, MultiDiscrete or MultiBinary)."""
    flat = values.reshape(len(values), -1)
    if isinstance(space, gym.spaces.Discrete):
        ok = np.issubdtype(values.dtype, np.integer) & (flat >= space.start) & (flat < space.start + space.n)
    elif isinstance(space, gym.spaces.MultiDiscrete):
        start, n = space.start.reshape(-1), space.nvec.reshape(-1)
        ok = np.issubdtype(values.dtype, np.integer) & (flat >= start) & (flat < start + n)
    elif isinstance(space, gym.spaces.MultiBinary):
        ok = (flat == 0) | (flat == 1)
    else:
        ok = np.can_cast(values.dtype, space.dtype) & (flat >= space.low.reshape(-1)) & (flat <= space.high.reshape(-1))
    return ok.all(axis=1)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _reason(exc: BaseException) -> str:
    """An exception's message on one line (h5py's are one already; some libraries' span several)."""
    text = str(exc).strip().strip("'\"") or type(exc).__name__
    return " ".join(text.split())


def check_dataset(dataset_id: str) -> dict:
    """Read and check a whole local dataset; a one-line :class:`DtcondError` if anything is wrong.

    Returns the counts read: ``{"episodes": n, "steps": n}``.

    >>> check_dataset("dtcond/cartpole/mixture-v0")   # doctest: +SKIP
    {'episodes': 300, 'steps': 41234}
    """
    ds = open_dataset(dataset_id)
    episodes = steps = 0
    for episode in checked_episodes(ds, dataset_id):
        episodes += 1
        steps += len(episode)
    return {"episodes": episodes, "steps": steps}
