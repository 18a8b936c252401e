"""Shared fixtures: every test gets its own Minari root in a temp dir; nothing is downloaded.

The small test datasets are collected once per session and copied into each test's root. A module
whose tests share a tiny trained model builds it once in its ``module_root`` (see ``minari_at``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def behavior_cache(tmp_path_factory):
    """One cache of fitted behaviour models for the session: identical test datasets share a fit."""
    old = os.environ.get("DTCOND_CACHE")
    os.environ["DTCOND_CACHE"] = str(tmp_path_factory.mktemp("dtcond-cache"))
    yield
    if old is None:
        os.environ.pop("DTCOND_CACHE", None)
    else:
        os.environ["DTCOND_CACHE"] = old


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m dtcond ...` in a subprocess, Hydra's outputs kept under `cwd`."""
    env = dict(os.environ)
    env.setdefault("HYDRA_FULL_ERROR", "0")
    return subprocess.run(
        [sys.executable, "-m", "dtcond", *args, f"hydra.run.dir={cwd}/hydra"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def rollout_actions(policy, seed=3, steps=40, target=300.0, env_seed=None):
    """The actions of one episode through the single-env API (``reset`` then ``act``), at most ``steps``."""
    env = policy.make_env()
    obs, _ = env.reset(seed=seed if env_seed is None else env_seed)
    policy.reset(target=target, seed=seed)
    actions, reward = [], None
    for _ in range(steps):
        a = policy.act(obs, reward)
        actions.append(a)
        obs, reward, term, trunc, _ = env.step(a)
        if term or trunc:
            break
    return actions


def write_buffers(dataset_id: str, episodes: list[dict], env_id: str | None = None, **spaces):
    """A dataset written straight through Minari's writer from hand-made episodes.

    Each episode is a dict with observations (T+1), actions (T), rewards (T) and optional infos.
    """
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    buffers = []
    for i, ep in enumerate(episodes):
        T = len(ep["rewards"])
        buffers.append(
            EpisodeBuffer(
                id=i, seed=i,
                observations=ep["observations"], actions=ep["actions"], rewards=list(ep["rewards"]),
                terminations=[False] * (T - 1) + [True], truncations=[False] * T,
                infos=ep.get("infos", {}),
            )
        )
    return minari.create_dataset_from_buffers(dataset_id, buffers, env=env_id, **spaces)


CARTPOLE = "test/cartpole/mix-v0"
PENDULUM = "test/pendulum/mix-v0"
HAZARD = "test/hazard/mix-v0"


def _collect_cartpole() -> None:
    """A small CartPole mixture (expert, noisy, random) made by dtcond's collector."""
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect

    comps = [Component("cartpole_balance", 0.0, 0.3), Component("cartpole_balance", 0.5, 0.4), Component("random", 0.0, 0.3)]
    collect("CartPole-v1", comps, episodes=20, dataset_id=CARTPOLE, seed=0, progress=False)


def _collect_pendulum() -> None:
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect

    comps = [Component("pendulum_swingup", 0.0, 0.5), Component("random", 0.0, 0.5)]
    collect("Pendulum-v1", comps, episodes=6, dataset_id=PENDULUM, seed=0, progress=False, max_episode_steps=60)


def _collect_hazard() -> None:
    """HazardGrid with info["cost"]: every route walked without error, a noisy short-cutter, random walkers."""
    from dtcond.behavior.mixture import Component
    from dtcond.behavior.collection import collect

    comps = [Component(f"hazard_cross{r}", 0.0, 0.1) for r in range(7)] + [Component("hazard_cross6", 0.3, 0.2),
                                                                           Component("random", 0.0, 0.1)]
    collect("dtcond/HazardGrid-v0", comps, episodes=200, dataset_id=HAZARD, seed=0, progress=False)


@contextlib.contextmanager
def minari_at(root: Path):
    """Point Minari at ``root`` for the duration (a module-scoped fixture cannot use ``monkeypatch``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


class DatasetCache:
    """Each test dataset collected once, then copied into whichever Minari root asks for it."""

    makers = {CARTPOLE: _collect_cartpole, PENDULUM: _collect_pendulum, HAZARD: _collect_hazard}

    def __init__(self, root: Path):
        self.root = root

    def into(self, root: Path, dataset_id: str) -> str:
        if not (self.root / dataset_id).is_dir():
            with minari_at(self.root):
                self.makers[dataset_id]()
        shutil.copytree(self.root / dataset_id, root / dataset_id)
        # Minari keeps a namespace_metadata.json in each namespace folder above the dataset.
        for parent in Path(dataset_id).parents:
            meta = Path(parent, "namespace_metadata.json")
            if parent != Path(".") and (self.root / meta).exists() and not (root / meta).exists():
                shutil.copyfile(self.root / meta, root / meta)
        return dataset_id


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory) -> DatasetCache:
    return DatasetCache(tmp_path_factory.mktemp("dataset-cache"))


@pytest.fixture(scope="module")
def module_root(tmp_path_factory, dataset_cache) -> Path:
    """A folder for what a module's tests share (tiny trained models), with the test datasets in ``minari/``.

    Build in it under ``minari_at(module_root / "minari")``; tests only read what is there.
    """
    root = tmp_path_factory.mktemp("module")
    for dataset_id in DatasetCache.makers:
        dataset_cache.into(root / "minari", dataset_id)
    return root


@pytest.fixture
def cartpole_dataset(dataset_cache, minari_root) -> str:
    """A small CartPole mixture (expert, noisy, random) made by dtcond's collector."""
    return dataset_cache.into(minari_root, CARTPOLE)


@pytest.fixture
def hazard_dataset(dataset_cache, minari_root) -> str:
    """A small dtcond/HazardGrid-v0 mixture whose episodes report costs."""
    return dataset_cache.into(minari_root, HAZARD)


@pytest.fixture
def pendulum_dataset(dataset_cache, minari_root) -> str:
    """A small Pendulum mixture (swing-up expert, random), 60-step episodes."""
    return dataset_cache.into(minari_root, PENDULUM)


def rng_episode(T: int, obs_dim: int = 3, seed: int = 0, discrete: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    actions = rng.integers(discrete, size=T) if discrete else rng.uniform(-1, 1, size=(T, 1)).astype(np.float32)
    return {
        "observations": rng.normal(size=(T + 1, obs_dim)).astype(np.float32),
        "actions": actions,
        "rewards": rng.normal(size=T).astype(np.float64),
    }


# The warm CLI server: imports what `python -m dtcond` imports once, then forks a child per call. The
# child runs dtcond.cli.main exactly as `python -m dtcond` does, in its own process (and session, so a
# test can SIGKILL its group) with its own cwd, environment and stdout/stderr files, and exits through
# the interpreter's exit path (atexit handlers, flushed streams), so its exit code and output are the
# command's. Replies: {"pid": ...} when the child starts, then {"returncode": ...} when it ends.
_WARM_SERVER = r"""
import atexit, json, os, signal, sys
import dtcond.cli, dtcond.pipeline, dtcond.dt.training, dtcond.rollout.evaluation, dtcond.dt.checkpoints, dtcond.behavior.collection  # noqa: F401
import dtcond.rl.baselines, dtcond.analysis.report, dtcond.datasets.validation  # noqa: F401
os.write(1, b"ready\n")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            os.chdir(req["cwd"])
            os.environ.clear(); os.environ.update(req["env"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the requests stay the server's
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            signal.alarm(int(req["timeout"]))
            if req.get("max_file_size") is not None:  # the kernel cuts any write past it: a disk that fills up
                import resource
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["max_file_size"], req["max_file_size"]))
            sys.argv = ["dtcond", *req["args"]]
            try:
                dtcond.cli.main(req["args"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=sys.stderr)
            except BaseException:
                import traceback
                traceback.print_exc()
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    os.write(1, (json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, (json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n").encode())
"""


class WarmCli:
    """``run_cli`` without paying the imports each time: one server interpreter forks a child per call.

    Startup output of the server (anything the imports print to stderr) is kept in ``startup_stderr``
    so a test can check it is empty; a cold ``run_cli`` remains the reference for a few cases.
    :meth:`start` hands back a ``Popen``-like handle (``pid``, ``poll``, ``wait``) for tests that kill
    the command; one command runs at a time.

    >>> cli = WarmCli(tmp_path)                                         # doctest: +SKIP
    >>> cli.run("report", "results=none.jsonl", cwd=tmp_path).returncode  # doctest: +SKIP
    2
    """

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._err = open(self.workdir / "warm-server.stderr", "w+")
        self.proc = subprocess.Popen([sys.executable, "-c", _WARM_SERVER], cwd=self.workdir, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self._buffer = b""
        ready = self._reply(timeout=300)
        assert ready == "ready", (ready, self.startup_stderr)
        self._calls = 0

    @property
    def startup_stderr(self) -> str:
        return (self.workdir / "warm-server.stderr").read_text()

    def _reply(self, timeout: float | None) -> str | None:
        """The server's next line, or None if none came within ``timeout`` seconds."""
        import select

        fd = self.proc.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            assert chunk, f"the warm CLI server died: {self.startup_stderr[-2000:]}"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def start(self, *args: str, cwd: Path, timeout: float = 600, max_file_size: int | None = None) -> WarmProcess:
        """``python -m dtcond <args>`` in ``cwd`` (no Hydra run dir added), as a handle to wait on or kill.

        ``max_file_size``: the command runs under ``RLIMIT_FSIZE``, so a write past that many bytes fails.
        """
        self._calls += 1
        out, err = self.workdir / f"call{self._calls}.stdout", self.workdir / f"call{self._calls}.stderr"
        request = {"args": list(args), "cwd": str(cwd), "env": dict(os.environ), "stdout": str(out), "stderr": str(err),
                   "timeout": timeout, "max_file_size": max_file_size}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return WarmProcess(self, json.loads(self._reply(timeout=60))["pid"], list(args), out, err)

    def run(self, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        """As ``run_cli``: ``python -m dtcond <args>`` with Hydra's outputs under ``cwd``."""
        env_default = "HYDRA_FULL_ERROR" not in os.environ
        if env_default:
            os.environ["HYDRA_FULL_ERROR"] = "0"
        try:
            proc = self.start(*args, f"hydra.run.dir={cwd}/hydra", cwd=cwd, timeout=timeout)
        finally:
            if env_default:
                os.environ.pop("HYDRA_FULL_ERROR")
        proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read_text(), proc.stderr.read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._err.close()


class WarmProcess:
    """A command the warm server forked: the subset of ``subprocess.Popen`` the kill tests use."""

    def __init__(self, cli: WarmCli, pid: int, args: list, stdout: Path, stderr: Path):
        self.cli, self.pid, self.args, self.stdout, self.stderr = cli, pid, args, stdout, stderr
        self.returncode = None

    def poll(self) -> int | None:
        if self.returncode is None:
            reply = self.cli._reply(timeout=0)
            if reply is not None:
                self.returncode = json.loads(reply)["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            reply = self.cli._reply(timeout=timeout)
            if reply is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = json.loads(reply)["returncode"]
        return self.returncode
