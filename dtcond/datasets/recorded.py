"""The environment a dataset was recorded in, rebuilt from the spec Minari stored with it.

Minari stores the full ``EnvSpec`` of the collecting env (entry point, kwargs and, in Gymnasium 1.x,
the wrapper stack, e.g. ``AtariPreprocessing``), and optionally a separate evaluation env;
``MinariDataset.recover_environment(eval_env=True)`` is ``gym.make`` of that spec. dtcond keeps the
spec's JSON in :class:`~dtcond.datasets.loading.DatasetStats`, so a policy bundle rebuilds the same env without
the dataset: :func:`make_env` does what ``recover_environment`` does, from the stored JSON.

``gym.make`` of a spec imports the module its entry point names (``ale_py.env:AtariEnv``,
``gymnasium_robotics.envs...``), so a recorded env needs no registration; a bare id from another
family (``env_id=ALE/Pong-v5``) is registered by importing its package first (:data:`FAMILY_PACKAGES`).
A package that is missing is named in a one-line error, with what to install.
"""

from __future__ import annotations

import importlib
import importlib.util

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from dtcond.common.errors import DtcondError
from dtcond.datasets.observations import check_spaces

# Python module -> the pip package that provides it, for the families in Minari's catalogue.
PIP_NAMES = {"ale_py": "ale-py", "gymnasium_robotics": "gymnasium-robotics", "minigrid": "minigrid",
             "cv2": "opencv-python-headless", "mujoco": "mujoco", "shimmy": "shimmy"}
# Env-id prefixes (namespace or name) -> the module whose import registers them.
FAMILY_PACKAGES = {"ALE/": "ale_py", "MiniGrid-": "minigrid", "BabyAI-": "minigrid", "PointMaze": "gymnasium_robotics",
                   "AntMaze": "gymnasium_robotics", "Fetch": "gymnasium_robotics", "Adroit": "gymnasium_robotics",
                   "FrankaKitchen": "gymnasium_robotics"}
EXTRA = "dtcond[families]"


def install_hint(module: str) -> str:
    """What to install for a missing module: ``install_hint("ale_py") == "pip install ale-py"``."""
    top = module.split(".")[0]
    pip = PIP_NAMES.get(top, top.replace("_", "-"))
    extra = f" (or pip install '{EXTRA}')" if top in PIP_NAMES else ""
    return f"pip install {pip}{extra}"


def _register_family(env_id: str) -> None:
    """Import the package that registers ``env_id``'s family (ALE, MiniGrid, gymnasium-robotics), if installed."""
    for prefix, module in FAMILY_PACKAGES.items():
        if env_id.startswith(prefix):
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)
            gym.register_envs(importlib.import_module(module))
            return


def recorded_spec(stats, evaluation: bool = True) -> EnvSpec | None:
    """The env spec ``stats`` recorded: the dataset's eval env where it has one (``evaluation``), else its env."""
    text = (stats.eval_env_spec if evaluation else None) or stats.env_spec
    return EnvSpec.from_json(text) if text else None


def make_env(stats, env_id: str | None = None, evaluation: bool = True, **kwargs) -> gym.Env:
    """The dataset's recorded env (Minari's ``recover_environment``), or ``env_id`` when it names another.

    ``kwargs`` go to ``gym.make`` (they update the spec's). A missing package, an unregistered id or
    bad kwargs are one line.

    >>> env = make_env(policy.stats)                   # doctest: +SKIP
    >>> make_env(stats, env_id="ALE/Pong-v5")           # doctest: +SKIP
    DtcondError: cannot make env 'ALE/Pong-v5' ...: it needs the Python package 'ale_py' (pip install ale-py ...)
    """
    spec = recorded_spec(stats, evaluation)
    target = env_id or stats.env_id
    use_spec = spec is not None and (env_id is None or env_id in (stats.env_id, spec.id))
    source = f", which dataset {stats.dataset_id!r} recorded" if target == stats.env_id else ""
    if not use_spec and target is None:
        raise DtcondError(f"dataset {stats.dataset_id!r} recorded no env; give one with env_id=...")
    if use_spec:  # the callers' defaults are the collecting env's kwargs: the eval env's own spec keeps its values
        kwargs = {k: v for k, v in kwargs.items() if k not in stats.env_kwargs or stats.env_kwargs[k] != v}
    return make(spec if use_spec else target, source, **kwargs)


def make(env: str | EnvSpec, source: str = "", **kwargs) -> gym.Env:
    """``gym.make(env)`` for an id or a recorded spec, with one-line errors; a bare id of a catalogue family
    (``ALE/...``, ``MiniGrid-...``, ``PointMaze...``) imports its package first, which registers it.

    >>> make("ALE/Pong-v5").spec.entry_point   # doctest: +SKIP
    'ale_py.env:AtariEnv'
    """
    name = env.id if isinstance(env, EnvSpec) else env
    try:
        if isinstance(env, EnvSpec):
            return gym.make(env, **kwargs)
        try:
            return gym.make(env, **kwargs)
        except gym.error.UnregisteredEnv:  # NameNotFound, NamespaceNotFound: its package may not be imported yet
            _register_family(env)
            return gym.make(env, **kwargs)
    except ModuleNotFoundError as exc:
        module = exc.name or str(exc)
        raise DtcondError(f"cannot make env {name!r}{source}: it needs the Python package {module!r} "
                          f"({install_hint(module)})") from None
    except (gym.error.Error, ImportError, TypeError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DtcondError(f"cannot make env {name!r}{source} ({reason}); install or register that env, "
                          "or evaluate on a compatible one with env_id=...") from None

def check_env_spaces(env, stats) -> None:
    """Refuse an env (single or vector) whose spaces differ from the ones in ``stats``."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    codec = stats.codec
    discrete = isinstance(act_space, gym.spaces.Discrete)
    if codec.observation_space is None:  # stats written before codecs: Boxes, or a Dict of Boxes
        check_spaces(obs_space, act_space)
        if isinstance(obs_space, gym.spaces.Dict):
            obs_dim = sum(int(np.prod(s.shape)) for s in obs_space.spaces.values())
        else:
            obs_dim = int(np.prod(obs_space.shape))
    else:
        check_spaces(codec.observation_space, act_space)
        try:
            codec.check_space(obs_space)
        except DtcondError as exc:
            raise DtcondError(f"env spaces {obs_space} / {act_space} do not match the policy's: {exc}") from None
        obs_dim = codec.dim
    act_dim = int(act_space.n) if discrete else int(act_space.shape[0])
    if (obs_dim, discrete, act_dim) != (stats.obs_dim, stats.is_discrete, stats.action_dim):
        raise DtcondError(
            f"env spaces {obs_space} / {act_space} do not match the policy's "
            f"(obs_dim {stats.obs_dim}, {stats.action_kind} actions of size {stats.action_dim})"
        )
