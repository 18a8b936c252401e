"""Policy bundles (safetensors + a JSON card) and code-free loading of bundles and Lightning ``.ckpt`` files.

A bundle is a folder::

    policy/
      model.safetensors   the DecisionTransformer's weights, nothing else
      card.json           {"format": "dtcond-policy", "model": DTConfig, "stats": DatasetStats, ...}

Loading reads JSON and tensors only; a ``.ckpt`` is read with ``torch.load(weights_only=True)`` and
only primitive hyperparameters are accepted, so neither can run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dtcond.datasets.loading import DatasetStats
from dtcond.common.errors import DtcondError
from dtcond.common.fileio import atomic_write
from dtcond.dt.model import DecisionTransformer, DTConfig

CARD_FORMAT = "dtcond-policy"
CARD_VERSION = 1


def save_bundle(module, path: str | Path, extra: dict | None = None, kind: str | None = None,
                param: float | None = None) -> Path:
    """Export a trained module (anything with ``.model``, ``.config``, ``.stats``) as a policy bundle.

    ``kind`` and ``param`` name the family when it is not the one the training hyperparameters imply (dt, bc,
    pct_bc): an RL-fine-tuned transformer is the same network under another family.

    Each file is written to a temp name and renamed, and the card last, so a reader never sees a
    card whose weights are missing.
    """
    from safetensors.torch import save

    import dtcond

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.model.state_dict().items()}
    hp = dict(getattr(module, "hparams", {}))
    card = {
        "format": CARD_FORMAT,
        "card_version": CARD_VERSION,
        "dtcond_version": dtcond.__version__,
        "model": module.config.to_dict(),
        "stats": module.stats.to_dict(),
        "env": {
            "id": module.stats.env_id,
            "kwargs": module.stats.env_kwargs,
            "max_episode_steps": module.stats.max_episode_steps,
        },
        "condition_on_return": bool(hp.get("condition_on_return", True)),
        "kind": kind or policy_kind(hp),
        "param": None if param is None else float(param),
        "extra": extra or {},
    }
    atomic_write(path / "model.safetensors", save(state))
    atomic_write(path / "card.json", json.dumps(card, indent=1).encode())
    return path


def load_dt_policy(path: str | Path, device: str | torch.device = "cpu"):
    """A DT/BC policy from its bundle folder (or ``card.json``) or a Lightning ``.ckpt``, running no code.
    :func:`dtcond.load_policy` loads any family's bundle; this reads the DT's own formats only."""
    path = Path(path)
    if not path.exists():
        raise DtcondError(f"no policy at {path}: give a bundle folder (with card.json) or a .ckpt file")
    if path.is_dir() or path.name == "card.json":
        return load_dt_bundle(path if path.is_dir() else path.parent, device)
    return load_dt_checkpoint(path, device)


def load_dt_bundle(folder: Path, device="cpu"):
    """The :class:`~dtcond.dt.policy.ConditionedPolicy` in a bundle folder."""
    return _dt_policy(*_read_bundle(Path(folder)), Path(folder), device)


def load_dt_checkpoint(path: Path, device="cpu"):
    """The policy in a Lightning ``.ckpt`` (weights only, primitive hyperparameters)."""
    return _dt_policy(*_read_lightning_ckpt(Path(path)), Path(path), device)


def _dt_policy(config, stats, state, card, path: Path, device):
    from dtcond.dt.policy import ConditionedPolicy

    model = DecisionTransformer(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise DtcondError(f"{path}: the weights do not match the model config in its card ({first[1].strip() if len(first) > 1 else first[0]})") from None
    step = (card.get("extra") or {}).get("global_step")
    param = card.get("param")
    return ConditionedPolicy(model.to(device).eval(), stats, condition_on_return=card.get("condition_on_return", True),
                             source=str(path), kind=card.get("kind"), train_step=int(step) if step is not None else None,
                             param=float(param) if isinstance(param, (int, float)) else None)


def _read_bundle(folder: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    card_path, weights_path = folder / "card.json", folder / "model.safetensors"
    if not card_path.is_file() or not weights_path.is_file():
        raise DtcondError(f"{folder} is not a policy bundle: it needs card.json and model.safetensors")
    try:
        card = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DtcondError(f"{card_path} is not valid JSON ({exc}); the bundle is corrupt") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise DtcondError(f"{card_path} is not a dtcond policy card (format {card.get('format') if isinstance(card, dict) else None!r})")
    if card.get("card_version", 0) > CARD_VERSION:
        raise DtcondError(f"{card_path} has card version {card['card_version']}; this dtcond reads up to {CARD_VERSION}, upgrade dtcond")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DtcondError(f"{weights_path} is corrupt or truncated ({exc})") from None
    config, stats = _config_and_stats(card.get("model"), card.get("stats"), card_path)
    return config, stats, state, card


def _read_lightning_ckpt(path: Path):
    import pickle

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise DtcondError(f"refusing {path}: it holds pickled objects beyond tensors and primitives ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DtcondError(f"{path} is not a readable checkpoint; it may be corrupt or truncated ({str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise DtcondError(f"{path} is not a dtcond training checkpoint (no state_dict / hyper_parameters)")
    hp = ckpt["hyper_parameters"]
    config, stats = _config_and_stats(hp.get("model"), hp.get("stats"), path)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    card = {"condition_on_return": bool(hp.get("condition_on_return", True)), "kind": policy_kind(hp),
            "extra": {"global_step": ckpt.get("global_step")}}
    return config, stats, state, card


def policy_kind(hparams) -> str:
    """"dt", "bc" (no return conditioning) or "pct_bc" (BC on the top fraction of episodes)."""
    if hparams.get("condition_on_return", True):
        return "dt"
    return "pct_bc" if hparams.get("top_fraction") else "bc"


def _config_and_stats(model: dict | None, stats: dict | None, where: Path) -> tuple[DTConfig, DatasetStats]:
    if not isinstance(model, dict) or not isinstance(stats, dict):
        raise DtcondError(f"{where} lacks the model config or dataset stats a dtcond policy needs")
    if "action_head" not in model:  # written before the binned head existed: the deterministic mean head
        model = {**model, "action_head": "mse"}
    try:
        return DTConfig.from_dict(model), DatasetStats.from_dict(stats)
    except TypeError as exc:
        raise DtcondError(f"{where}: malformed model config or stats ({exc})") from None
