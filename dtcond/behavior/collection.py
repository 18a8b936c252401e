"""Make Minari datasets locally by rolling out behaviour policies (``dtcond collect``).

Datasets are written with Minari's own writer (``minari.create_dataset_from_buffers``, which,
unlike ``DataCollector``, needs no jax) into a hidden staging folder under the datasets root and
then renamed into place, so a crash or Ctrl-C never leaves a half-written dataset under its id.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from dtcond.behavior.mixture import Component, components_from_config, episode_assignment, make_policy
from dtcond.datasets.loading import return_summary
from dtcond.common.errors import DtcondError
from dtcond.behavior.likelihood import METADATA_KEY, behavior_metadata
from dtcond.datasets.observations import check_spaces
from dtcond.datasets.storage import check_dataset_id, datasets_root
from dtcond.datasets.validation import INFO_KEYS
import dtcond.envs  # noqa: F401  (registers the dtcond/* env ids)

@dataclass
class CollectSummary:
    dataset_id: str
    path: str
    env_id: str
    episodes: int
    steps: int
    returns: dict[str, float]
    per_component: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        r = self.returns
        lines = [
            f"dataset {self.dataset_id}  ({self.env_id}, {self.episodes} episodes, {self.steps} steps, {self.seconds:.1f}s)",
            f"  path    {self.path}",
            "  return  min {min:.1f} | p5 {p5:.1f} | median {median:.1f} | p95 {p95:.1f} | max {max:.1f}  (mean {mean:.1f})".format(**r),
            "  behaviour components:",
        ]
        for c in self.per_component:
            lines.append(f"    {c['name']:<28} {c['episodes']:>5} episodes  mean return {c['mean_return']:>9.1f}")
        return "\n".join(lines)


def collect(
    env_id: str,
    behavior: list[Component],
    episodes: int,
    dataset_id: str,
    seed: int = 0,
    env_kwargs: dict | None = None,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    description: str | None = None,
) -> CollectSummary:
    """Roll out a behaviour mixture in ``env_id`` and write a local Minari dataset.

    >>> from dtcond.behavior.mixture import Component
    >>> s = collect("CartPole-v1", [Component("random")], episodes=3, dataset_id="doc/cp-v0",
    ...             progress=False, overwrite=True)
    >>> s.episodes, dtcond.load_dataset("doc/cp-v0").stats.num_episodes
    (3, 3)
    """
    check_dataset_id(dataset_id)
    final = datasets_root() / dataset_id
    if final.exists() and not overwrite:
        raise DtcondError(f"dataset {dataset_id!r} already exists at {final}; pass overwrite=true or choose another id")
    assignment = episode_assignment(behavior, episodes, seed)  # validates weights and count
    from dtcond.datasets.recorded import make

    env = make(env_id, max_episode_steps=max_episode_steps, **(env_kwargs or {}))  # ALE/MiniGrid/maze ids register their package
    check_spaces(env.observation_space, env.action_space)

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    episode_seeds = rng.integers(2**31 - 1, size=episodes)
    # Each component's policy is built once (an SB3 load is slow) with its own noise stream.
    policies = [make_policy(c, env, np.random.default_rng((seed, i))) for i, c in enumerate(behavior)]
    buffers, returns = [], []
    from tqdm.auto import tqdm

    for i in tqdm(range(episodes), desc=f"collect {env_id}", disable=not progress, unit="ep"):
        component = int(assignment[i])
        buffer, episode_return = _rollout(env, policies[component], int(episode_seeds[i]), i, component)
        buffers.append(buffer)
        returns.append(episode_return)
    env.close()

    path = write_dataset(
        dataset_id,
        buffers,
        env,
        overwrite=overwrite,
        **reference_scores(behavior, assignment, np.asarray(returns)),
        algorithm_name="dtcond behaviour mixture: " + ", ".join(f"{c.name} x{c.weight:g}" for c in behavior),
        description=description or f"{env_id} rollouts of a behaviour mixture, made by dtcond collect (seed {seed})",
        extra_metadata={METADATA_KEY: behavior_metadata(behavior, seed)},  # the data's exact likelihood reads it
    )
    returns = np.asarray(returns)
    per_component = [
        {"name": c.name, "episodes": int((assignment == k).sum()), "mean_return": float(returns[assignment == k].mean()) if (assignment == k).any() else float("nan")}
        for k, c in enumerate(behavior)
    ]
    return CollectSummary(
        dataset_id=dataset_id,
        path=str(path),
        env_id=env_id,
        episodes=episodes,
        steps=int(sum(len(b.rewards) for b in buffers)),
        returns=return_summary(returns),
        per_component=per_component,
        seconds=time.perf_counter() - start,
    )


def ensure_dataset(env, dataset_id: str, seed: int = 0, *, overwrite: bool = False, progress: bool = False):
    """Collect ``dataset_id`` from ``env`` (an :class:`~dtcond.config.EnvConfig`: its id, kwargs, time limit, episodes
    and behaviour mixture) unless it exists; ``overwrite`` collects it again. Returns :func:`collect`'s summary, or
    None when the dataset was there.

    >>> from dtcond.config import env_preset
    >>> ensure_dataset(env_preset("cartpole"), "dtcond/cartpole/mixture-v0") is None     # the session's tiny world has it
    True
    """
    if (datasets_root() / dataset_id).exists() and not overwrite:
        return None
    return collect(env.id, components_from_config(list(env.behavior)), env.collect_episodes, dataset_id, seed=seed,
                   env_kwargs=dict(env.kwargs or {}), max_episode_steps=env.max_episode_steps, overwrite=overwrite, progress=progress)


def reference_scores(behavior: list[Component], assignment: np.ndarray, returns: np.ndarray) -> dict:
    """Minari's ``ref_min_score``/``ref_max_score`` from the mixture's own episodes, where both references played.

    As D4RL defines them: the random reference is the mean return of the episodes the ``random``
    component played; the expert reference the best mean return among the components that play a
    scripted or trained policy without noise. Either missing (or no better than random): no scores.

    >>> reference_scores([Component("random"), Component("cartpole_balance")], np.array([0, 1, 1]), np.array([20.0, 500.0, 480.0]))
    {'ref_min_score': 20.0, 'ref_max_score': 490.0}
    """
    def mean_of(k):
        played = assignment == k
        return float(returns[played].mean()) if played.any() else None

    random = [mean_of(k) for k, c in enumerate(behavior) if c.policy == "random"]
    experts = [mean_of(k) for k, c in enumerate(behavior) if c.policy != "random" and c.noise == 0]
    random, experts = [r for r in random if r is not None], [e for e in experts if e is not None]
    if not random or not experts or max(experts) <= float(np.mean(random)):
        return {}
    return {"ref_min_score": float(np.mean(random)), "ref_max_score": max(experts)}


def _rollout(env: gym.Env, policy, episode_seed: int, episode_id: int, component: int):
    from minari.data_collector.episode_buffer import EpisodeBuffer

    obs, info = env.reset(seed=episode_seed)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    extras = {key: [float(info.get(key, 0.0))] for key in INFO_KEYS}
    reported = {key for key in INFO_KEYS if key in info}
    while True:
        action = policy(obs)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terminations.append(bool(terminated))
        truncations.append(bool(truncated))
        for key in INFO_KEYS:
            extras[key].append(float(info.get(key, 0.0)))
        reported.update(key for key in INFO_KEYS if key in info)
        if terminated or truncated:
            break
    # Keys the env never reported are dropped rather than stored as zeros; a reported key is kept
    # even when all zeros (a true reward of 0 all episode long is a result, not a missing value).
    infos = {k: np.asarray(v, dtype=np.float32) for k, v in extras.items() if k in reported}
    infos["behavior_component"] = np.full(len(observations), component, dtype=np.int64)
    buffer = EpisodeBuffer(
        id=episode_id,
        seed=episode_seed,
        observations=np.asarray(observations),
        actions=np.asarray(actions),
        rewards=rewards,
        terminations=terminations,
        truncations=truncations,
        infos=infos,
    )
    return buffer, float(np.sum(rewards))


@contextmanager
def minari_root(path: str | Path):
    """Point Minari (and dtcond's ``datasets_root``) at ``path`` for the duration: a scratch dataset root.

    Minari reads ``MINARI_DATASETS_PATH`` on every call, so datasets written inside land under ``path``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp, minari_root(tmp):
    ...     os.environ["MINARI_DATASETS_PATH"] == tmp
    True
    """
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def write_dataset(dataset_id: str, buffers: list, env: gym.Env, overwrite: bool = False, extra_metadata: dict | None = None,
                  **metadata) -> Path:
    """Write episode buffers as Minari dataset ``dataset_id``, atomically; returns its folder.

    ``metadata`` goes to Minari's writer; ``extra_metadata`` holds entries of dtcond's own (e.g. the
    behaviour mixture), added to the same ``metadata.json`` before the dataset appears under its id."""
    import minari

    check_dataset_id(dataset_id)
    root = datasets_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise DtcondError(f"dataset {dataset_id!r} already exists at {final}; pass overwrite=true or choose another id")
    # Hidden names are skipped by Minari's listing, so a staged dataset is never visible under its id.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        with minari_root(staging), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari's nudges for author/permalink metadata
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env.spec, author="dtcond", code_permalink="dtcond collect", **metadata
            )
            if extra_metadata:
                dataset.storage.update_metadata(extra_metadata)
        _copy_namespace_metadata(staging, root, dataset_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not exchange_dirs(staging / dataset_id, final):  # no atomic swap here: a kill between renames loses the id
                trash = root / f".trash-{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(staging / dataset_id, final)
                shutil.rmtree(trash, ignore_errors=True)
            # after a swap the old dataset sits in staging, removed with it below
        else:
            os.rename(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system
    cannot, with nothing changed. An overwrite then never leaves the dataset id empty, even if killed.

    >>> exchange_dirs(Path("new"), Path("old"))   # doctest: +SKIP
    True
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, some musl builds)
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem or kernel cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def _copy_namespace_metadata(staging: Path, root: Path, dataset_id: str) -> None:
    parts = dataset_id.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        rel = Path(*parts[:depth]) / "namespace_metadata.json"
        if (staging / rel).exists() and not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(staging / rel, root / rel)
