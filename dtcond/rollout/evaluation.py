"""Batched, seeded evaluation: every (target, episode) pair rolled out together, one forward per step.

Episodes run in a Gymnasium ``SyncVectorEnv``; all start at timestep 0, and when one ends its row
leaves the model's batch (and its key/value cache), so the batch shrinks as episodes finish.
Seeds are per episode, not per batch: episode j of every target sees the same env seed (common
random numbers across targets), and its action-sampling and quantilizer draws come from streams of
its own, so results do not depend on batch size or on which episodes share a batch.

Each record is one episode: who acted (``policy_kind``; ``algo`` and ``train_step``, the training
step of the weights or None, as typed columns; ``label`` for display), the target (``target_spec``,
its resolved ``target``, ``target_quantile`` in the data, ``ood``), the env seed, and the outcome
(``episode_return``, ``length``, ``true_return``/``cost`` where the env reports them). A joint target's
records also carry the requested ``cost_target`` (the cost-to-go the episode started from, which falls
by each step's ``info["cost"]``), ``cost_target_quantile`` P_data(C <= c) and ``joint_quantile``
P_data(G >= g, C <= c); other records carry None there. With a
scorer it also carries the roaming metrics (``cross_entropy_behavior``, ``kl_behavior``, novelty,
entropy). :mod:`dtcond.analysis.statistics` and :mod:`dtcond.analysis.report` aggregate these records.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from dtcond.rollout.contract import check_policy
from dtcond.common.errors import DtcondError
from dtcond.rollout.records import ResultsStore, check_columns, episode_record
from dtcond.targets import ResolvedTarget, TargetSpec, parse
import dtcond.envs  # noqa: F401  (registers the dtcond/* env ids)


@dataclass(frozen=True)
class Job:
    spec: TargetSpec
    episode: int
    seed: int

    @property
    def env_seed(self) -> int:
        return int(np.random.SeedSequence([self.seed, self.episode]).generate_state(1)[0] >> 1)

    def _stream(self, purpose: int) -> np.random.Generator:
        spec_id = zlib.crc32(str(self.spec).encode())
        return np.random.default_rng([self.seed, self.episode, spec_id, purpose])

    def sampling_rng(self) -> np.random.Generator:
        """The stream an episode's sampled actions draw from."""
        return self._stream(1)

    def target_rng(self) -> np.random.Generator:
        """The stream a quantilizer's per-episode target is drawn from."""
        return self._stream(2)

    def key(self, fingerprint: str, env_id: str) -> str:
        return f"{fingerprint}|{env_id}|{self.spec}|seed{self.seed}|ep{self.episode}"


def make_jobs(targets, episodes: int, seed: int) -> list[Job]:
    if isinstance(targets, (str, int, float, TargetSpec)):
        targets = [targets]
    specs = [parse(t) for t in targets]
    if not specs:
        raise DtcondError("no targets to evaluate")
    if int(episodes) < 1:
        raise DtcondError(f"episodes must be >= 1, got {episodes}")
    return [Job(spec, j, int(seed)) for spec in specs for j in range(int(episodes))]


def evaluate(
    policy,
    targets=None,
    episodes: int = 10,
    seed: int = 0,
    results: str | Path | ResultsStore | None = None,
    run_id: str = "",
    batch_size: int = 256,
    progress: bool = False,
    env_kwargs: dict | None = None,
    env_id: str | None = None,
    scorer=None,
) -> list[dict]:
    """Roll out ``episodes`` episodes per target spec; one record (a dict) per episode.

    ``policy`` is anything that implements :class:`dtcond.rollout.contract.Policy` (a DT, BC/%BC, an SB3
    baseline, the behaviour mixture); anything else is refused in one line. With a ``scorer``
    (:class:`dtcond.analysis.roaming.RoamingScorer`) every record also carries
    how far the episode roamed from the data (cross-entropy and KL(π‖β̂) against the behaviour model,
    novelty, entropy).

    With ``results``, finished episodes are appended to that table as they end, episodes already
    in it are not run again, and the records returned include them.

    >>> records = evaluate(policy, ["q0.5", "q0.9", "x1.5", "quantilizer:0.1"], episodes=3)
    >>> import pandas as pd; means = pd.DataFrame(records).groupby("target_spec").episode_return.mean()
    >>> len(records), sorted(means.index)
    (12, ['q0.5', 'q0.9', 'quantilizer:0.1', 'x1.5'])
    """
    check_policy(policy)
    if targets is None:
        if policy.kind == "dt":
            raise DtcondError("a return-conditioned policy needs targets, e.g. ['q0.5', 'q0.9', 'x1.5']")
        targets = ["none"]
    jobs = make_jobs(targets, episodes, seed)
    if batch_size < 1:
        raise DtcondError(f"batch_size must be >= 1, got {batch_size}")
    store = results if isinstance(results, ResultsStore) or results is None else ResultsStore(results)
    fingerprint, env = policy.fingerprint, env_id or policy.env_id
    wanted = {job.key(fingerprint, env) for job in jobs}
    existing = {r["key"]: r for r in store.read() if r.get("key") in wanted} if store else {}
    todo = [job for job in jobs if job.key(fingerprint, env) not in existing]
    if todo:  # refuse bad targets and a mismatched env now, before any rollout
        check_cost_targets(policy, {job.spec for job in todo})
        for spec in {job.spec for job in todo if not job.spec.is_random}:
            spec.resolve(policy.stats)
        make_vector_env(policy, 1, env_kwargs, env_id).close()

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"eval {policy.env_id}", unit="ep", disable=not progress)
    fresh: dict[str, dict] = {}
    for start in range(0, len(todo), batch_size):
        for record in _rollout(policy, todo[start : start + batch_size], run_id, env_kwargs, env_id, fingerprint, scorer):
            if store is not None:
                store.append([record])
            fresh[record["key"]] = record
            bar.update(1)
    bar.close()
    return [existing.get(k) or fresh[k] for k in (job.key(fingerprint, env) for job in jobs)]


def check_cost_targets(policy, specs) -> None:
    """A cost-conditioned policy takes joint targets only, and every other policy return-only ones."""
    wants_cost = bool(policy.cost_conditioned)
    for spec in specs:
        if spec.cost is not None and not wants_cost:
            raise DtcondError(f"target {spec} has a cost part, but this policy was not trained with cost conditioning "
                              "(model.cost_conditioned=false); give it a return target only")
        if spec.cost is None and wants_cost:
            raise DtcondError(f"this policy is cost-conditioned: target {spec} needs a cost part too, e.g. '{spec},cost<=q0.5' "
                              "(dtcond eval: sampler.cost='cost<=q0.5' adds one to every target)")


def make_vector_env(policy, n: int, env_kwargs: dict | None = None, env_id: str | None = None) -> gym.vector.VectorEnv:
    """``n`` copies of the policy's env (or ``env_id``), autoresetting on the step after an episode ends."""
    env_id = env_id or policy.env_id
    if env_id is None:
        raise DtcondError("the policy's dataset recorded no env id, so dtcond cannot make its env")
    from dtcond.datasets.recorded import make_env

    kwargs = {**policy.stats.env_kwargs, **(env_kwargs or {})}
    envs = gym.vector.SyncVectorEnv([lambda: make_env(policy.stats, env_id, **kwargs)] * n)
    policy.check_env(envs)
    return envs


def _marginal_log_prob(policy, spec: TargetSpec, scorer, obs, actions, rewards) -> float | None:
    """log E_g π(τ | g) over a per-episode target's known distribution (quantilizer specs), for the exact
    trajectory KL; None where there is no likelihood, the target is fixed, or the policy cannot score
    other targets."""
    if getattr(scorer, "likelihood", None) is None or not spec.is_random or not hasattr(policy, "episode_log_prob"):
        return None
    support = spec.support(policy.stats)
    if support is None:
        return None
    return marginal_over_targets(lambda g: policy.episode_log_prob(obs, actions, rewards, g), support)


def marginal_over_targets(log_prob, support) -> float:
    """log (1/n) Σ_i π(τ | g_i) over the n equally likely targets in ``support``, with one call of ``log_prob``
    (targets -> log π(τ | g) per target) per *distinct* target, weighted by how often it occurs: the cost grows
    with the number of distinct returns (about a hundred on TomatoGarden), not with the size of the data.

    >>> round(marginal_over_targets(lambda g: -np.asarray(g, dtype=float), [1.0, 1.0, 2.0]), 6)
    -1.236617
    """
    from scipy.special import logsumexp

    support = np.asarray(support, dtype=np.float64)
    values, counts = np.unique(support, return_counts=True)
    return float(logsumexp(np.asarray(log_prob(values), dtype=np.float64) + np.log(counts)) - math.log(len(support)))


def rollout_episodes(policy, episodes: int, seed: int, targets=None, env_kwargs: dict | None = None,
                     batch_size: int = 256) -> list[tuple[dict, dict]]:
    """``episodes`` episodes per target, each as (its record, its history): ``history`` holds the episode's
    ``obs`` (T, ...) as the policy saw them (encoded), ``actions`` (T, ...) and ``rewards`` (T,), in episode order.
    Seeded as :func:`evaluate` is (the same ``seed`` gives the same episodes), but nothing is stored: for code that
    learns from the episodes, such as :mod:`dtcond.rl.finetune`.

    >>> [(r["episode_return"], h["rewards"].shape) for r, h in rollout_episodes(policy, 2, seed=7)]   # doctest: +SKIP
    [(12.0, (100,)), (9.0, (100,))]
    """
    check_policy(policy)
    jobs = make_jobs(targets if targets is not None else ["none"], episodes, seed)
    out: list[tuple[dict, dict]] = []
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        out += list(_rollout(policy, batch, "", env_kwargs, None, policy.fingerprint, keep_history=True))
    order = {job.key(policy.fingerprint, policy.env_id): i for i, job in enumerate(jobs)}
    return sorted(out, key=lambda pair: order[pair[0]["key"]])


def _rollout(policy, jobs: list[Job], run_id: str, env_kwargs: dict | None, env_id: str | None,
             fingerprint: str, scorer=None, keep_history: bool = False):
    """Run one batch of jobs to the end of every episode, yielding records as episodes finish (with
    ``keep_history``, (record, history) pairs)."""
    n = len(jobs)
    envs = make_vector_env(policy, n, env_kwargs, env_id)
    resolved: list[ResolvedTarget] = [job.spec.resolve(policy.stats, job.target_rng()) for job in jobs]
    rngs = [job.sampling_rng() for job in jobs]
    rtg = np.array([r.value if math.isfinite(r.value) else 0.0 for r in resolved], dtype=np.float64)
    # The cost-to-go, for a cost-conditioned policy: it falls by each step's info["cost"], as CDT's does.
    ctg = np.array([r.cost for r in resolved], dtype=np.float64) if policy.cost_conditioned else None
    returns, true_returns, costs = np.zeros(n), np.zeros(n), np.zeros(n)
    seen = {"true_reward": False, "cost": False}
    lengths = np.zeros(n, dtype=np.int64)
    # A typed column, so tables need not parse "ppo@25000"; policies that do not know their step give None.
    train_step = policy.train_step
    train_step = int(train_step) if train_step is not None else None
    # Per-episode histories only when a scorer needs them (roaming metrics).
    want_history = scorer is not None or keep_history
    history = [{"obs": [], "actions": [], "probs": [], "rewards": []} for _ in range(n)] if want_history else None
    actions_all = np.zeros(envs.action_space.shape, dtype=envs.action_space.dtype)
    active = np.arange(n)
    state = policy.begin(n)
    draws = max(1, int(policy.draws_per_step))
    start = time.perf_counter()
    obs, _ = envs.reset(seed=[job.env_seed for job in jobs])
    try:
        while active.size:
            flat = policy.stats.codec.encode(obs)  # (n, obs_dim) float32, or (n, C, H, W) uint8 frames
            uniforms = np.stack([rngs[i].random(draws) for i in active])  # (A, draws): each episode's own stream
            action, probs, state = policy.act_batch(state, flat[active], rtg[active], uniforms, None if ctg is None else ctg[active])
            actions_all[active] = action
            if history is not None:
                for row, i in enumerate(active):
                    history[i]["obs"].append(flat[i])
                    history[i]["actions"].append(action[row])
                    if probs is not None:
                        history[i]["probs"].append(probs[row])
            obs, reward, terminated, truncated, info = envs.step(actions_all)
            reward = np.asarray(reward, dtype=np.float64)
            if history is not None:
                for i in active:
                    history[i]["rewards"].append(reward[i])
            returns[active] += reward[active]
            rtg[active] -= reward[active]
            lengths[active] += 1
            for key, acc in (("true_reward", true_returns), ("cost", costs)):
                if key in info:
                    seen[key] = True
                    acc[active] += np.asarray(info[key], dtype=np.float64)[active]
            if ctg is not None:
                if "cost" not in info:
                    raise DtcondError(f"a cost-conditioned policy needs an env that reports info['cost']; {env_id or policy.env_id} does not")
                ctg[active] -= np.asarray(info["cost"], dtype=np.float64)[active]
            done = (terminated | truncated)[active]
            if not done.any():
                continue
            elapsed = time.perf_counter() - start
            for i in active[done]:
                r, job = resolved[i], jobs[i]
                record = episode_record(
                    job.key(fingerprint, env_id or policy.env_id), policy.kind, policy.label, fingerprint,
                    run_id=run_id,
                    train_step=train_step,
                    policy_param=policy.param,  # β, q or a cost limit: typed, not read off the label
                    policy=policy.source,
                    env_id=env_id or policy.env_id,
                    dataset_id=policy.stats.dataset_id,
                    target_spec=str(job.spec),
                    target=r.value,
                    target_quantile=r.quantile,
                    ood=r.ood,
                    seed=job.seed,
                    episode=job.episode,
                    env_seed=job.env_seed,
                    episode_return=float(returns[i]),
                    normalized_score=policy.stats.normalized_score(float(returns[i])),  # None without reference scores
                    length=int(lengths[i]),
                    terminated=bool(terminated[i]),
                    truncated=bool(truncated[i]),
                    true_return=float(true_returns[i]) if seen["true_reward"] else None,
                    cost=float(costs[i]) if seen["cost"] else None,
                    cost_target=r.cost,  # the cost-to-go the episode started from (joint targets), else None
                    cost_target_quantile=r.cost_quantile,
                    joint_quantile=r.joint_quantile,
                    greedy=bool(policy.greedy),
                    wall_time=elapsed,
                )
                if history is None:
                    yield record
                    continue
                h = history[i]
                history[i] = None
                obs_h, act_h, rew_h = np.stack(h["obs"]), np.stack(h["actions"]), np.asarray(h["rewards"])
                if scorer is not None:
                    marginal = _marginal_log_prob(policy, job.spec, scorer, obs_h, act_h, rew_h)
                    record.update(check_columns(scorer.score_episode(obs_h, act_h, np.stack(h["probs"]) if h["probs"] else None,
                                                                     logp_policy_marginal=marginal)))
                yield (record, {"obs": obs_h, "actions": act_h, "rewards": rew_h}) if keep_history else record
            keep = np.flatnonzero(~done)
            active = active[keep]
            state = policy.keep(state, keep)
    finally:
        envs.close()
