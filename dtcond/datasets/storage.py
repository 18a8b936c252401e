"""Where dtcond finds and keeps things on disk: the local Minari datasets (their root, their ids, the id rules)
and the cache of fitted behaviour models. Imports nothing of dtcond but its error type, so any module can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from dtcond.common.errors import DtcondError


def datasets_root() -> Path:
    """Where Minari keeps local datasets (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def local_dataset_ids() -> list[str]:
    """Ids of the datasets under :func:`datasets_root`, found without touching the network."""
    root = datasets_root()
    if not root.is_dir():
        return []
    ids = []
    for meta in root.rglob("data/metadata.json"):
        rel = meta.parent.parent.relative_to(root)
        if not any(part.startswith(".") for part in rel.parts):
            ids.append(rel.as_posix())
    return sorted(ids)


def cache_dir() -> Path:
    """Where fitted behaviour models are kept: ``$DTCOND_CACHE`` or ``~/.cache/dtcond``."""
    return Path(os.environ.get("DTCOND_CACHE") or Path.home() / ".cache" / "dtcond")


def check_dataset_id(dataset_id: str) -> None:
    """Minari's own id rules, plus an explicit version (an id without -vN breaks Minari's writer)."""
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.namespace import validate_namespace

    try:
        namespace, _, version = parse_dataset_id(dataset_id or "")
        validate_namespace(namespace)
    except Exception:
        version = None
    if version is None:
        raise DtcondError(
            f"invalid dataset id {dataset_id!r}: use '<namespace>/<name>-v<N>', e.g. 'dtcond/cartpole/mixture-v0'"
        )
