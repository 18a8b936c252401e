"""The family registry: one entry per policy kind, read by the pipeline, the report, the frontier and the CLI.

A *family* is what a record's ``policy_kind`` names: the data's own episodes, the behaviour mixture rolled out
afresh, the oracles, the DT and BC/%BC (trained by :func:`dtcond.train`), plain online RL (SB3 PPO/SAC) and
each regularized RL method (PPO with a :class:`~dtcond.rl.penalties.Penalty`) and RL fine-tuning of the BC
transformer itself (:mod:`dtcond.rl.finetune`: with a KL penalty, and early-stopped). Its entry says how it is shown
(name, parameter symbol, plot style, place in tables), which budget comparison it belongs to, and how it is
trained (a regularized family: its penalty class). Policies load by their bundle card's ``format``
(:func:`load_policy`), whatever trained them.

Adding a regularized-RL family is one :class:`~dtcond.rl.penalties.Penalty` subclass and one :func:`register`
call; ``docs/development.md`` shows a worked example.

>>> get("ppo_kl").name, get("ppo_kl").symbol
('PPO-KL', 'β')
>>> [f.kind for f in families("regularized")]
['ppo_kl', 'ppo_kl_bc', 'ppo_om', 'ppo_lag']

Layer 10: may import common, envs, datasets, targets, config, rollout, behavior, dt, rl (the layers below it; the
package docstring lists them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dtcond.common.errors import DtcondError
from dtcond.dt.checkpoints import CARD_FORMAT, load_dt_bundle, load_dt_checkpoint
from dtcond.rl.penalties import CostLagrangian, HistoryKLPenalty, KLPenalty, OccupancyPenalty, Penalty
from dtcond.rl.sb3_policy import CARD_FORMAT as SB3_CARD_FORMAT
from dtcond.rl.sb3_policy import load_sb3_bundle

ROLES = ("data", "oracle", "conditioned", "rl", "regularized", "finetuned")


@dataclass(frozen=True)
class Family:
    """One policy kind: how records, tables and plots show it and how it is trained.

    ``role``: ``data`` (the data's episodes, the behaviour mixture), ``oracle`` (reweighted behaviour rollouts),
    ``conditioned`` (the DT and BC/%BC, trained by :func:`dtcond.train`), ``rl`` (plain SB3 PPO/SAC),
    ``regularized`` (PPO with ``penalty``, one run per parameter) or ``finetuned`` (the BC transformer itself
    fine-tuned by RL, :mod:`dtcond.rl.finetune`).
    """

    kind: str  # the records' policy_kind
    name: str  # shown in the console, tables and plot legends
    role: str
    style: tuple[str, str]  # matplotlib format and colour; each regularized family has its own
    order: float = 4.0  # place in comparison tables, lowest first
    symbol: str | None = None  # its parameter's symbol (β, λ, q, d); None where it has none
    frontier: str | None = None  # the budget-comparison group it belongs to (dtcond.analysis.frontier)
    penalty: type[Penalty] | None = None  # regularized RL: the penalty PPO trains with

    def __post_init__(self):
        if self.role not in ROLES:
            raise DtcondError(f"family {self.kind!r}: role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if (self.role == "regularized") != (self.penalty is not None):
            raise DtcondError(f"family {self.kind!r}: a regularized family names its penalty class, and only it")
        if self.penalty is not None and self.penalty.kind != self.kind:
            raise DtcondError(f"family {self.kind!r}: its penalty {self.penalty.__name__} is for kind {self.penalty.kind!r}")


_REGISTRY: dict[str, Family] = {}


def register(family: Family, replace: bool = False) -> Family:
    """Add ``family`` to the registry (``replace`` an entry of the same kind, else a second one is refused)."""
    if family.kind in _REGISTRY and not replace:
        raise DtcondError(f"family {family.kind!r} is already registered")
    if any(f.style == family.style and f.kind != family.kind and f.role != "oracle" for f in _REGISTRY.values()):
        raise DtcondError(f"family {family.kind!r}: style {family.style} is already another family's")
    _REGISTRY[family.kind] = family
    return family


def unregister(kind: str) -> None:
    """Remove a family (a throwaway one registered for a test or a notebook)."""
    _REGISTRY.pop(kind, None)


def get(kind: str) -> Family:
    """The family of a policy kind; an unknown kind is one line naming the known ones."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise DtcondError(f"unknown policy family {kind!r}; registered: {', '.join(_REGISTRY)}") from None


def describe(kind: str) -> Family:
    """The family of ``kind``, or for a kind no one registered (records from elsewhere) a plain stand-in that
    tables and plots can still show."""
    return _REGISTRY.get(kind) or Family(kind, kind, "rl", ("-x", "0.6"), order=order(kind))


def families(role: str | None = None) -> list[Family]:
    """The registered families (of one ``role``), in table order."""
    found = [f for f in _REGISTRY.values() if role is None or f.role == role]
    return sorted(found, key=lambda f: f.order)


def frontier_groups() -> dict[str, tuple[str, ...]]:
    """Budget-comparison group -> the policy kinds whose records it pools (``conditioning`` is the DT)."""
    groups: dict[str, tuple[str, ...]] = {}
    for f in families():
        if f.frontier:
            groups[f.frontier] = groups.get(f.frontier, ()) + (f.kind,)
    return groups


def order(kind: str) -> float:
    """A kind's place in tables: registered order, unknown kinds after every registered one."""
    return _REGISTRY[kind].order if kind in _REGISTRY else max((f.order for f in _REGISTRY.values()), default=0) + 1


# The built-in families. Styles: the offline policies and the oracles use C0–C7 and C9; each regularized
# family has a marker and colour of its own, none of them another family's.
for _family in (
    Family("data", "data", "data", ("s", "k"), order=0),
    Family("behavior", "behaviour mixture (fresh rollouts)", "data", ("P", "0.3"), order=0.5),
    Family("oracle", "oracle", "oracle", ("-o", "0.5"), order=0.7),
    Family("dt", "DT", "conditioned", ("o", "C0"), order=1, frontier="conditioning"),
    Family("bc", "BC", "conditioned", ("D", "C2"), order=2, frontier="bc"),
    Family("pct_bc", "%BC", "conditioned", ("^", "C3"), order=3, symbol="q", frontier="bc"),
    Family("ppo", "PPO", "rl", ("-x", "C5"), order=4),
    Family("sac", "SAC", "rl", ("-x", "C6"), order=4.1),
    Family("ppo_kl", "PPO-KL", "regularized", ("-v", "C8"), order=5, symbol="β", frontier="ppo_kl", penalty=KLPenalty),
    Family("ppo_kl_bc", "PPO-KL-BC", "regularized", ("--<", "teal"), order=5.1, symbol="β", frontier="ppo_kl_bc",
           penalty=HistoryKLPenalty),
    Family("ppo_om", "PPO-OM", "regularized", ("-P", "indigo"), order=5.2, symbol="λ", frontier="ppo_om", penalty=OccupancyPenalty),
    Family("ppo_lag", "PPO-Lagrangian", "regularized", ("->", "crimson"), order=5.3, symbol="d", frontier="ppo_lag",
           penalty=CostLagrangian),
    Family("rlft_kl", "RLFT-KL", "finetuned", ("-*", "darkorange"), order=6, symbol="β", frontier="rlft_kl"),
    Family("rlft_stop", "RLFT-stop", "finetuned", ("--h", "olive"), order=6.1, symbol="KL≤", frontier="rlft_stop"),
):
    register(_family)

# The oracle families (records of kind "oracle", told apart by their oracle_family) and their plot styles.
ORACLE_STYLES = {"quantilizer": ("-s", "C1"), "plan_quantilizer": (":s", "C9"), "best_of_n": ("--^", "C6"), "posterior": ("-.d", "C7")}


# -- loading: one reader per bundle format, whatever trained the policy -------------------------------------------


def _load_dt(folder: Path, device):
    return load_dt_bundle(folder, device)


def _load_sb3(folder: Path, device):
    return load_sb3_bundle(folder)


# card.json's "format" -> loader(folder, device)
BUNDLE_LOADERS = {CARD_FORMAT: _load_dt, SB3_CARD_FORMAT: _load_sb3}


def register_bundle_loader(fmt: str, loader) -> None:
    """Make :func:`load_policy` read bundles whose card says ``"format": fmt`` with ``loader(folder, device)``."""
    BUNDLE_LOADERS[fmt] = loader


def load_policy(path: str | Path, device: str = "cpu"):
    """Load a policy bundle folder (or its ``card.json``) or a Lightning ``.ckpt``, running no code.

    >>> policy = load_policy(policy.source)   # the bundle folder a policy was loaded from
    >>> env = policy.make_env(); obs, _ = env.reset(seed=0)
    >>> policy.reset(target=400.0); int(policy.act(obs)) in (0, 1)
    True
    """
    path = Path(path)
    if not path.exists():
        raise DtcondError(f"no policy at {path}: give a bundle folder (with card.json) or a .ckpt file")
    if path.is_dir() or path.name == "card.json":
        folder = path if path.is_dir() else path.parent
        fmt = _card_format(folder)
        if fmt is not None and fmt not in BUNDLE_LOADERS:
            raise DtcondError(f"{folder / 'card.json'}: unknown bundle format {fmt!r}; this dtcond loads {', '.join(sorted(BUNDLE_LOADERS))}")
        return BUNDLE_LOADERS.get(fmt, _load_dt)(folder, device)  # no readable card: the DT reader says what is wrong
    return load_dt_checkpoint(path, device)


def _card_format(folder: Path) -> str | None:
    try:
        card = json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return card.get("format") if isinstance(card, dict) else None
