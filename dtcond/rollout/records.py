"""Episode records and the results table: one JSON object per line, appended under a lock, readable by pandas.

Every row of every table is an episode record: a policy's episode (:func:`dtcond.evaluate`), one of the data's own
episodes (:func:`dtcond.analysis.roaming.dataset_records`) or an oracle's draw (:mod:`dtcond.analysis.oracles`).
:data:`COLUMNS` is the one schema: :func:`episode_record` builds a record and refuses a column it does not know, and
:meth:`ResultsStore.append` refuses one too, so a misspelt key is an error rather than a silent NaN column. A
record's family is its ``policy_kind``, in records and tables alike.

Appends take an exclusive ``flock`` on the file, so several sweeps (joblib jobs, SLURM tasks on a
shared filesystem that honours locks) can write one table. A crash mid-append leaves at most one
torn last line; readers skip it and the next append cuts it off, so the episode it held is simply
missing and a resumed sweep runs it again.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

from dtcond.common.errors import DtcondError

# The episode record's columns: name -> what it holds. A record holds a subset (a column that does not apply is
# absent or None); a key outside this schema is refused.
COLUMNS: dict[str, str] = {
    # identity: which policy, target and episode
    "key": "identifies the episode: the policy's fingerprint, env, target spec and env seed",
    "run_id": "the run that rolled it out",
    "policy_kind": "the policy's family (dtcond.families): dt, bc, pct_bc, ppo, ppo_kl, ..., data, behavior, oracle",
    "policy_param": "the family's parameter: β, λ, q, a cost limit; None when it has none",
    "train_step": "the policy's training step (RL: env steps); None where it has none",
    "train_seed": "the training seed of a comparison",
    "label": "a display string rendered from kind, param and step; never parsed back",
    "policy": "where the policy was loaded from",
    "fingerprint": "identifies the weights and acting mode",
    "greedy": "the policy acted by its mode",
    "env_id": "the env the episode ran in",
    "dataset_id": "the dataset the policy was trained on",
    "target_spec": "the target as the user named it (none for unconditioned policies)",
    "target": "the resolved return-to-go at the start",
    "target_quantile": "P_data(G >= target)",
    "ood": "the target is beyond the data's best return",
    "cost_target": "the cost-to-go the episode started from (joint targets)",
    "cost_target_quantile": "P_data(C <= cost target)",
    "joint_quantile": "P_data(G >= target, C <= cost target)",
    "seed": "the evaluation seed",
    "episode": "the episode's index for its target",
    "env_seed": "the env seed it was reset with",
    # outcome
    "episode_return": "the observed return",
    "normalized_score": "the return in the dataset's reference-score units",
    "true_return": "the true task performance where the env reports it (info['true_reward'])",
    "cost": "the episode's cost where the env reports it (info['cost'])",
    "length": "steps",
    "terminated": "ended by the env",
    "truncated": "cut by a time limit",
    "wall_time": "seconds from the batch's start",
    # divergence from the data (dtcond.analysis.roaming, dtcond.behavior.likelihood)
    "cross_entropy_behavior": "mean −log β̂(a|s) over the actions taken",
    "kl_behavior": "mean per-step KL(π(·|s)‖β̂(·|s))",
    "entropy": "the policy's mean action entropy per step",
    "novelty": "mean distance to the nearest dataset state",
    "novel_fraction": "fraction of steps farther from the data than its own 99th percentile",
    "trajectory_signature": "a hash of the discretized action sequence",
    "logp_data": "log p_data(τ), up to the dynamics",
    "logp_policy": "Σ log π(a_t|h_t) of the policy's actions",
    "logp_policy_marginal": "log p_π(τ) marginal over the target's distribution",
    "trajectory_kl": "log p_π(τ) − log p_data(τ): its mean estimates KL(p_π‖p_data)",
    "trajectory_kl_per_step": "trajectory_kl / length",
    "trajectory_kl_conditional": "the given-the-target trajectory KL of a per-episode target",
    "support_violation": "an action no behaviour component takes (p_data(τ) = 0)",
    "kl_estimator": "which estimator the KL columns come from",
    "component_loglik": "log p_k(τ) per behaviour component",
    "component_posterior": "p(k|τ) per behaviour component",
    "component_posterior_entropy": "the entropy of p(k|τ), nats",
    "kl_by_step": "log π(a_t|h_t) − log p_data(a_t|h_t) per step: where along the episode the trajectory KL accrues",
    # RL fine-tuning of a transformer (dtcond.rl.finetune)
    "log_ratio_prior": "log p_π(τ) − log p_prior(τ) of an RL-fine-tuned policy: its mean estimates KL(p_π‖p_prior)",
    # oracles (dtcond.analysis.oracles)
    "oracle_family": "quantilizer, plan_quantilizer, best_of_n or posterior",
    "oracle_param": "its q, n or β",
    "pool_episode": "the behaviour episode drawn",
    "pool_size": "behaviour episodes in the pool",
    "ess": "the pool's effective sample size under the oracle's weights",
    "ess_ok": "ess is at least the minimum the oracles trust",
}


def check_columns(record: dict) -> dict:
    """``record``, or a one-line error naming the columns :data:`COLUMNS` does not know.

    >>> check_columns({"key": "k", "episode_retrun": 3.0})
    Traceback (most recent call last):
    ...
    dtcond.common.errors.DtcondError: an episode record has columns the schema does not know: episode_retrun (dtcond.rollout.records.COLUMNS)
    """
    unknown = [k for k in record if k not in COLUMNS]
    if unknown:
        raise DtcondError(f"an episode record has columns the schema does not know: {', '.join(sorted(unknown))} "
                          "(dtcond.rollout.records.COLUMNS)")
    return record


def episode_record(key: str, policy_kind: str, label: str, fingerprint: str, **columns) -> dict:
    """One episode record: its identity and whatever other columns of :data:`COLUMNS` apply; an unknown column
    is refused.

    >>> episode_record("data|ds|ep0", "data", "data", "data", episode_return=3.0)["policy_kind"]
    'data'
    """
    return check_columns({"key": key, "policy_kind": policy_kind, "label": label, "fingerprint": fingerprint, **columns})


class ResultsStore:
    """Append-only JSONL records with a ``key`` each; a key is never written twice.

    >>> store = ResultsStore("runs/eval/results.jsonl")
    >>> _ = dtcond.evaluate(policy, ["q0.5", "q0.9"], episodes=2, results=store)
    >>> sorted(store.to_pandas().groupby("target_spec").episode_return.mean().index)
    ['q0.5', 'q0.9']
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a"):
                pass
        except OSError as exc:
            raise DtcondError(f"cannot write results to {self.path}: {exc.strerror}") from None
        self._seen = (None, 0, set())  # (file identity, bytes parsed, keys in them): what append has read so far

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, "rb") as f:
            data = f.read()
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash mid-append
        return records

    def keys(self) -> set[str]:
        return {r["key"] for r in self.read() if "key" in r}

    def append(self, records: list[dict]) -> int:
        """Append the records whose key is not in the table yet; returns how many were written. A record with a
        column outside :data:`COLUMNS` is refused before anything is written."""
        if not records:
            return 0
        for record in records:
            check_columns(record)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._cut_torn_tail(fd)
            existing = self._keys_locked(fd)
            fresh = [r for r in records if r["key"] not in existing]
            if fresh:
                payload = "".join(json.dumps(_jsonable(r), allow_nan=False) + "\n" for r in fresh).encode()
                try:
                    os.write(fd, payload)
                    os.fsync(fd)
                    existing.update(r["key"] for r in fresh)
                    self._seen = (self._seen[0], os.fstat(fd).st_size, existing)  # our own lines need no parsing
                except OSError as exc:
                    self._cut_torn_tail(fd)  # e.g. disk full halfway: leave no half record behind
                    raise DtcondError(f"cannot append to {self.path}: {exc.strerror}; records written before are intact") from None
            return len(fresh)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _keys_locked(self, fd: int) -> set[str]:
        """The table's keys, parsing only the bytes appended since this store last looked.

        Under the lock the file only grows (the torn tail is cut first), so re-reading all of it on
        every append, as an episode-by-episode sweep does, made appends O(table) each; a file that
        shrank or was replaced is read again from the start.
        """
        st = os.fstat(fd)
        ident, offset, keys = self._seen
        if ident != (st.st_dev, st.st_ino) or st.st_size < offset:
            ident, offset, keys = (st.st_dev, st.st_ino), 0, set()
        for line in os.pread(fd, st.st_size - offset, offset).split(b"\n"):
            if line.strip():
                try:
                    keys.add(json.loads(line)["key"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self._seen = (ident, st.st_size, keys)
        return keys

    @staticmethod
    def _cut_torn_tail(fd: int) -> None:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0:
            return
        os.lseek(fd, size - 1, os.SEEK_SET)
        if os.read(fd, 1) == b"\n":
            return
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, size)
        os.ftruncate(fd, data.rfind(b"\n") + 1)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.read())


def _jsonable(record: dict) -> dict:
    """NaN/inf have no JSON form: store them as null."""
    out = {}
    for k, v in record.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, dict):
            v = _jsonable(v)
        elif isinstance(v, (list, tuple)):
            v = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        out[k] = v
    return out
