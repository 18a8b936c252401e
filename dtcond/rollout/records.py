"""The results table: one JSON object per line, appended under a lock, readable by pandas.

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
        """Append the records whose key is not in the table yet; returns how many were written."""
        if not records:
            return 0
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
