"""Rollout throughput: dtcond's batched, cached rollouts vs the reference loop peers use.

The reference loop (written here, as the DT repos and HF's example do it) runs one env at a time and
recomputes the whole K-step window through the model at every step. dtcond runs N episodes in one
SyncVectorEnv with one forward per step through the key/value cache. Same weights (the paper size:
K=20, width 128, 3 layers), same env, same target; env-steps/s end to end, medians over repeats.

Also: the policy's own time per env-step vs the env's own step time, at 64 parallel episodes.

Untrained weights make a Hopper fall within a few dozen steps, and then making and resetting envs
would dominate; Hopper therefore runs with ``terminate_when_unhealthy=False`` (the same physics,
every episode the full 1,000 steps), in both loops.

    python benchmarks/rollout.py                       # Hopper-v5 and Pendulum-v1, 1/16/64/256 episodes
    python benchmarks/rollout.py --envs Pendulum-v1 --repeats 1 --sizes 1 64
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

from dtcond.rollout import distributions
from common import PAPER, markdown_table, median, random_policy, write

# Full-length episodes, so throughput is the steady state rather than env construction and resets.
ENV_KWARGS = {"Hopper-v5": {"terminate_when_unhealthy": False}}


@torch.inference_mode()
def reference_episode(policy, env: gym.Env, target: float, seed: int, max_steps: int) -> int:
    """One episode the peers' way: the full last-K window through ``model.forward`` every step."""
    model, stats, K = policy.model, policy.stats, policy.model.cfg.context_len
    obs, _ = env.reset(seed=seed)
    rtgs, states, actions, steps = [], [], [], []
    rtg = target
    for t in range(max_steps):
        rtgs.append(rtg)
        states.append(torch.as_tensor(stats.normalize_obs(np.asarray(obs, dtype=np.float32)[None])[0]))
        actions.append(torch.zeros(model.cfg.act_dim))
        steps.append(t)
        r = torch.tensor(rtgs[-K:], dtype=torch.float32)[None]  # (1, <=K)
        s = torch.stack(states[-K:])[None]  # (1, <=K, obs_dim)
        a = torch.stack(actions[-K:])[None]  # (1, <=K, act_dim)
        ts = torch.tensor(steps[-K:])[None]  # (1, <=K)
        out = model(r, s, a, ts)[:, -1]  # (1, act_dim) or bin logits (1, act_dim, bins)
        if model.cfg.binned:  # sample the binned head, as dtcond's rollouts do
            u = torch.rand(1, 2 * model.cfg.act_dim)
            out, _ = distributions.sample(out, u, *model.action_bounds)
        action = out[0]  # (act_dim,)
        actions[-1] = action
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        rtg -= float(reward)
        if terminated or truncated:
            return t + 1
    return max_steps


def dtcond_rollout(policy, n: int, target: float, seed: int) -> int:
    from dtcond.rollout.evaluation import evaluate

    records = evaluate(policy, [str(target)], episodes=n, seed=seed, batch_size=n)
    return sum(r["length"] for r in records)


def split_times(policy, n: int, target: float, seed: int) -> dict:
    """Policy vs env time per env-step in dtcond's batched loop (the same loop as dtcond.evaluate)."""
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(policy.env_id, **policy.stats.env_kwargs)] * n)
    obs, _ = envs.reset(seed=list(range(seed, seed + n)))
    state, rtg = policy.begin(n), np.full(n, target)
    active, actions = np.arange(n), np.zeros(envs.action_space.shape, dtype=envs.action_space.dtype)
    t_policy = t_env = 0.0
    env_steps = 0
    while active.size:
        start = time.perf_counter()
        uniforms = np.random.default_rng(env_steps).random((active.size, max(1, policy.draws_per_step)))
        action, _, state = policy.act_batch(state, np.asarray(obs, dtype=np.float32)[active], rtg[active], uniforms)
        t_policy += time.perf_counter() - start
        actions[active] = action
        start = time.perf_counter()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        t_env += time.perf_counter() - start
        env_steps += active.size
        rtg[active] -= reward[active]
        done = (terminated | truncated)[active]
        if done.any():
            keep = np.flatnonzero(~done)
            active, state = active[keep], policy.keep(state, keep)
    envs.close()
    return {"policy_ms_per_env_step": 1e3 * t_policy / env_steps, "vector_env_ms_per_env_step": 1e3 * t_env / env_steps}


def raw_env_step_ms(env_id: str, steps: int = 3000) -> float:
    """The env's own step, one env, random actions: the simulator's cost."""
    env = gym.make(env_id, **ENV_KWARGS.get(env_id, {}))
    env.reset(seed=0)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=["Hopper-v5", "Pendulum-v1"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 16, 64, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-steps", type=int, default=400, help="env steps per reference repeat (it is slow)")
    args = ap.parse_args()
    rows, splits = [], []
    for env_id in args.envs:
        policy = random_policy(env_id, PAPER, env_kwargs=ENV_KWARGS.get(env_id))
        target = float(policy.stats.max_return)
        env = gym.make(env_id, **policy.stats.env_kwargs)
        ref, ours = [], {n: [] for n in args.sizes}
        for rep in range(args.repeats):  # interleaved, so machine noise hits both alike
            steps, seconds = 0, 0.0
            ep = 0
            while steps < args.reference_steps:
                dt, n = time_call(reference_episode, policy, env, target, 100 * rep + ep, args.reference_steps - steps)
                steps, seconds, ep = steps + n, seconds + dt, ep + 1
            ref.append(steps / seconds)
            for n in args.sizes:
                dt, total = time_call(dtcond_rollout, policy, n, target, 100 * rep)
                ours[n].append(total / dt)
        ref_rate = median(ref)
        rows.append({"env": env_id, "loop": "reference: 1 env, full window", "episodes": 1, "env_steps_per_s": ref_rate, "speedup": 1.0})
        for n in args.sizes:
            rows.append({"env": env_id, "loop": "dtcond: batched, cached", "episodes": n, "env_steps_per_s": median(ours[n]),
                         "speedup": median(ours[n]) / ref_rate})
        split = {k: median([split_times(policy, 64, target, 100 * r)[k] for r in range(args.repeats)])
                 for k in ("policy_ms_per_env_step", "vector_env_ms_per_env_step")}
        split["env_step_ms"] = median([raw_env_step_ms(env_id) for _ in range(args.repeats)])
        split["policy_over_env_step"] = split["policy_ms_per_env_step"] / split["env_step_ms"]
        splits.append({"env": env_id, "episodes": 64, **split})
    print(markdown_table(rows, ["env", "loop", "episodes", "env_steps_per_s", "speedup"]))
    print()
    print(markdown_table(splits, ["env", "episodes", "policy_ms_per_env_step", "env_step_ms", "policy_over_env_step", "vector_env_ms_per_env_step"]))
    path = write("rollout", {"model": PAPER, "repeats": args.repeats, "throughput": rows, "policy_vs_env": splits})
    print(f"\n-> {path}")


def time_call(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


if __name__ == "__main__":
    main()
