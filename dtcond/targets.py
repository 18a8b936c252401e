"""Target specs: how a user names the return to condition on, resolved against a dataset's returns.

=================  =========  ===========================================================
spec               string     resolves to
=================  =========  ===========================================================
absolute(g)        ``300``    the return g
normalized(x)      ``n0.5``   min + x·(max − min) of the dataset's episode returns
score(s)           ``score90``  a normalized score in the dataset's reference-score units
                              (Minari/D4RL, x100): ref_min + s/100·(ref_max − ref_min);
                              only for datasets with ``ref_min_score``/``ref_max_score``
quantile(q)        ``q0.9``   the q-th quantile of the dataset's episode returns
scale(m)           ``x1.5``   best + (m − 1)·|best|: m × best for a positive best return,
                              and m > 1 always asks for more than the best (OOD)
quantilizer(q)     ``quantilizer:0.1``  per episode, a return drawn uniformly from the
                              dataset's top-q fraction of episodes (Taylor's quantilizer
                              applied to whole trajectories)
none               ``none``   no target: for policies that take none (BC, %BC, PPO, SAC)
=================  =========  ===========================================================

Every resolved target carries ``P_data(G >= g)`` and whether it lies outside the data's range.

**Joint targets** (for a cost-conditioned DT, on data whose env reports ``info["cost"]``): a return
spec, a comma, and a cost part ``cost<=C`` (a budget) or ``cost=C`` (a requested cost), where C is an
absolute episode cost (``cost<=2``) or a quantile of the data's episode costs (``cost<=q0.2``), e.g.
``q0.9,cost<=q0.2`` or ``6.5,cost=3``. The episode starts from the return-to-go g and the cost-to-go c;
the cost-to-go falls by each step's cost, as CDT's does. For fixed return specs both operators
condition on c. For the quantilizer they differ: ``quantilizer:q,cost<=C`` draws, per episode, one
data episode uniformly from the top-q fraction (by return) of the episodes whose cost is <= C, and
conditions on that episode's (return, cost) pair — Taylor's quantilizer over the feasible behaviour;
``quantilizer:q,cost=C`` draws the return from the top-q fraction of all episodes and conditions on
cost C. A joint target also carries ``P_data(C <= c)`` and ``P_data(G >= g, C <= c)``.

Layer 4: may import common, envs, datasets (the layers below it; the package docstring lists them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from dtcond.common.errors import DtcondError

if TYPE_CHECKING:  # annotations only: parsing a target spec needs no dataset code
    from dtcond.datasets.loading import DatasetStats

KINDS = ("absolute", "normalized", "score", "quantile", "scale", "quantilizer", "none")
# Beyond this many dataset return ranges past the data, a target is a typo, not an experiment.
ABSURD_RANGES = 1000.0


COST_OPS = ("<=", "=")
COST_KINDS = ("absolute", "quantile")


@dataclass(frozen=True)
class CostSpec:
    """The cost part of a joint target: ``op`` "<=" (a budget) or "=", of an absolute cost or a quantile of the data's.

    >>> str(CostSpec("<=", "quantile", 0.2)), str(CostSpec("=", "absolute", 3.0))
    ('cost<=q0.2', 'cost=3')
    """

    op: str
    kind: str
    value: float

    def __post_init__(self):
        if self.op not in COST_OPS or self.kind not in COST_KINDS:
            raise DtcondError(f"cost target needs op in {COST_OPS} and kind in {COST_KINDS}, got {self.op!r}, {self.kind!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise DtcondError(f"cost target must be a finite number >= 0, got {self.value}")
        if self.kind == "quantile" and self.value > 1.0:
            raise DtcondError(f"cost quantile must be in [0, 1], got {self.value}")

    def __str__(self) -> str:
        return f"cost{self.op}{'q' if self.kind == 'quantile' else ''}{self.value:g}"

    def resolve(self, stats: DatasetStats) -> float:
        """The episode cost this names; a dataset without costs is refused."""
        if stats.episode_costs is None:
            raise DtcondError(f"cost target {self} needs a dataset with costs; {stats.dataset_id!r} has none (its env reports no info['cost'])")
        return self.value if self.kind == "absolute" else stats.cost_quantile(self.value)


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    value: float
    cost: CostSpec | None = None  # a joint (return, cost) target; None: return only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise DtcondError(f"unknown target kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.cost is not None and self.kind == "none":
            raise DtcondError(f"target 'none' takes no cost part, got {self.cost}")
        if not math.isfinite(self.value):
            raise DtcondError(f"target {self.kind} value must be finite, got {self.value}")
        if self.kind == "quantile" and not 0.0 <= self.value <= 1.0:
            raise DtcondError(f"quantile must be in [0, 1], got {self.value}")
        if self.kind == "quantilizer" and not 0.0 < self.value <= 1.0:
            raise DtcondError(f"quantilizer fraction q must be in (0, 1], got {self.value}")

    def __str__(self) -> str:
        v = f"{self.value:g}"
        if self.kind == "none":
            return "none"
        if self.cost is not None:
            return f"{TargetSpec(self.kind, self.value)},{self.cost}"
        return {"absolute": v, "normalized": f"n{v}", "score": f"score{v}", "quantile": f"q{v}", "scale": f"x{v}", "quantilizer": f"quantilizer:{v}"}[self.kind]

    @property
    def is_random(self) -> bool:
        """Whether each episode draws its own target (quantilizer) rather than sharing one."""
        return self.kind == "quantilizer"

    def support(self, stats: DatasetStats) -> np.ndarray | None:
        """The equally likely returns a per-episode target is drawn from (a return-only quantilizer: the
        data's top-q episode returns), or None for a fixed target and a joint (return, cost) quantilizer."""
        if self.kind != "quantilizer" or self.cost is not None:
            return None
        returns = np.asarray(stats.episode_returns, dtype=np.float64)
        return returns[len(returns) - quantilizer_tail_size(len(returns), self.value):]

    def resolve(self, stats: DatasetStats, rng: np.random.Generator | None = None) -> ResolvedTarget:
        """The return to condition on. A quantilizer needs ``rng`` (one draw per episode)."""
        if self.kind == "none":  # an unconditioned policy (BC, PPO, ...): no target at all
            return ResolvedTarget("none", float("nan"), float("nan"), False)
        returns = np.asarray(stats.episode_returns, dtype=np.float64)
        lo, hi = float(returns[0]), float(returns[-1])
        c = self.cost.resolve(stats) if self.cost is not None else None
        if self.kind == "quantilizer" and self.cost is not None and self.cost.op == "<=":
            return self._resolve_feasible_quantilizer(stats, c, rng)
        if self.kind == "absolute":
            g = self.value
        elif self.kind == "normalized":
            g = lo + self.value * (hi - lo)
        elif self.kind == "score":
            if not stats.has_reference_scores:
                raise DtcondError(f"target {self} is a normalized score, but dataset {stats.dataset_id!r} has no reference "
                                  "scores (ref_min_score/ref_max_score); use n<x> (0 = its worst return, 1 = its best)")
            g = stats.ref_min_score + self.value / 100.0 * (stats.ref_max_score - stats.ref_min_score)
        elif self.kind == "quantile":
            g = float(np.quantile(returns, self.value))
        elif self.kind == "scale":
            g = hi + (self.value - 1.0) * abs(hi)
        else:
            if rng is None:
                raise DtcondError("a quantilizer target draws a return per episode: pass rng")
            tail = returns[len(returns) - quantilizer_tail_size(len(returns), self.value):]
            g = float(tail[rng.integers(len(tail))])
        span = max(hi - lo, abs(hi), 1.0)
        if abs(g - hi) > ABSURD_RANGES * span and abs(g - lo) > ABSURD_RANGES * span:
            raise DtcondError(
                f"target {self} resolves to {g:g}, over {ABSURD_RANGES:g}x the data's return range [{lo:g}, {hi:g}] away; is it a typo?"
            )
        return self._resolved(stats, g, c)

    def _resolved(self, stats: DatasetStats, g: float, c: float | None) -> ResolvedTarget:
        returns = np.asarray(stats.episode_returns, dtype=np.float64)
        lo, hi = float(returns[0]), float(returns[-1])
        out = ResolvedTarget(str(self), g, float((returns >= g).mean()), bool(g < lo or g > hi))
        if c is None:
            return out
        costs = np.asarray(stats.episode_costs, dtype=np.float64)
        return ResolvedTarget(out.spec, g, out.quantile, out.ood, float(c), float((costs <= c).mean()),
                              float(((returns >= g) & (costs <= c)).mean()))

    def _resolve_feasible_quantilizer(self, stats: DatasetStats, bound: float, rng) -> ResolvedTarget:
        """One data episode from the top-q (by return) of those with cost <= ``bound``: its (return, cost)."""
        if rng is None:
            raise DtcondError("a quantilizer target draws a return per episode: pass rng")
        costs = np.asarray(stats.episode_costs, dtype=np.float64)
        feasible = np.flatnonzero(costs <= bound)  # ascending by return, as episode_returns is
        if not len(feasible):
            raise DtcondError(f"target {self}: no episode in the data has cost <= {bound:g} (lowest: {costs.min():g})")
        tail = feasible[len(feasible) - quantilizer_tail_size(len(feasible), self.value):]
        i = int(tail[rng.integers(len(tail))])
        return self._resolved(stats, float(stats.episode_returns[i]), float(costs[i]))


@dataclass(frozen=True)
class ResolvedTarget:
    spec: str
    value: float  # the return-to-go the episode starts from
    quantile: float  # P_data(G >= value)
    ood: bool  # outside [min, max] of the dataset's episode returns
    cost: float | None = None  # the cost-to-go the episode starts from (joint targets)
    cost_quantile: float | None = None  # P_data(C <= cost)
    joint_quantile: float | None = None  # P_data(G >= value and C <= cost)


def quantilizer_tail_size(n_episodes: int, q: float) -> int:
    """How many of the best episodes form the top-q fraction: ceil(q·n), at least one."""
    return max(1, math.ceil(q * n_episodes - 1e-9))


def absolute(g: float) -> TargetSpec:
    """A raw return. ``absolute(300.0).resolve(stats).value == 300.0``"""
    return TargetSpec("absolute", float(g))


def normalized(x: float) -> TargetSpec:
    """0 = the dataset's worst episode return, 1 = its best; > 1 is out of distribution."""
    return TargetSpec("normalized", float(x))


def score(s: float) -> TargetSpec:
    """A normalized score x100 (Minari's ``get_normalized_score`` x100): 0 = ref_min_score, 100 = ref_max_score."""
    return TargetSpec("score", float(s))


def quantile(q: float) -> TargetSpec:
    """The q-th quantile of the dataset's episode returns, q in [0, 1]."""
    return TargetSpec("quantile", float(q))


def scale(m: float) -> TargetSpec:
    """m × the dataset's best return (for a negative best: best + (m − 1)·|best|); OOD when m > 1."""
    return TargetSpec("scale", float(m))


def quantilizer(q: float) -> TargetSpec:
    """Per episode, a return drawn from the dataset's top-q fraction of episodes, q in (0, 1]."""
    return TargetSpec("quantilizer", float(q))


_PATTERNS = [
    (re.compile(r"^(?:quantilizer[:=]|qz)(.+)$"), "quantilizer"),
    (re.compile(r"^(?:quantile[:=]|q)(.+)$"), "quantile"),
    (re.compile(r"^(?:scale[:=]|x)(.+)$"), "scale"),
    (re.compile(r"^(?:normalized[:=]|n)(.+)$"), "normalized"),
    (re.compile(r"^score[:=]?(.+)$"), "score"),
    (re.compile(r"^(?:absolute[:=]|abs[:=])?(.+)$"), "absolute"),
]


_COST = re.compile(r"^cost(<=|=)(q?)(.+)$")


def parse_cost(text: str) -> CostSpec:
    """The cost part of a joint target: ``cost<=q0.2``, ``cost<=2``, ``cost=q0.5``, ``cost=3``.

    >>> parse_cost("cost<=q0.2")
    CostSpec(op='<=', kind='quantile', value=0.2)
    """
    m = _COST.match(str(text).strip().lower().replace(" ", ""))
    try:
        value = float(m.group(3)) if m else None
    except ValueError:
        value = None
    if value is None:
        raise DtcondError(f"cannot parse cost target {text!r}: use cost<=C or cost=C, with C an episode cost (2) or a "
                          "quantile of the data's episode costs (q0.2)")
    return CostSpec(m.group(1), "quantile" if m.group(2) else "absolute", value)


def joint(ret: str | float | TargetSpec, cost: str | CostSpec) -> TargetSpec:
    """A joint (return, cost) target for a cost-conditioned policy.

    >>> str(joint(quantile(0.9), "cost<=q0.2"))
    'q0.9,cost<=q0.2'
    """
    base = parse(ret)
    if base.cost is not None:
        raise DtcondError(f"{base} already has a cost part")
    return TargetSpec(base.kind, base.value, cost if isinstance(cost, CostSpec) else parse_cost(cost))


def parse(text: str | float | int | TargetSpec) -> TargetSpec:
    """A spec from the CLI's short form; ``<return spec>,cost<=C`` names a joint target.

    >>> [str(parse(s)) for s in ["q0.9", "x1.5", "3000", "quantilizer:0.1", "n0.5", "score90", "-150.5", "q0.9,cost<=q0.2"]]
    ['q0.9', 'x1.5', '3000', 'quantilizer:0.1', 'n0.5', 'score90', '-150.5', 'q0.9,cost<=q0.2']
    """
    if isinstance(text, TargetSpec):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return absolute(float(text))
    s = str(text).strip().lower()
    if "," in s:
        ret, _, cost = s.partition(",")
        if "," in cost:
            raise DtcondError(f"cannot parse target {text!r}: a joint target is <return spec>,cost<=C (one comma)")
        return joint(parse(ret), cost)
    if s == "none":
        return TargetSpec("none", 0.0)
    for pattern, kind in _PATTERNS:
        m = pattern.match(s)
        if m:
            try:
                value = float(m.group(1))
            except ValueError:
                break
            return TargetSpec(kind, value)
    raise DtcondError(
        f"cannot parse target {text!r}: use a return (300), q<quantile> (q0.9), x<multiple of best> (x1.5), "
        "n<normalized> (n0.5), score<normalized score x100> (score90) or quantilizer:<q> (quantilizer:0.1)"
    )


GRID_OOD_SCALES = (1.25, 1.5, 2.0)  # multiples of the data's best return beyond it


def grid(stats: DatasetStats, n: int = 7, low: float = 0.05, high: float = 0.95, ood_scales=GRID_OOD_SCALES) -> list[TargetSpec]:
    """A RADT-style sweep: ``n`` returns evenly spaced between two quantiles of the data, then OOD multiples.

    >>> specs = [str(s) for s in grid(stats, n=3, ood_scales=[1.5])]
    >>> len(specs), specs[-1]
    (4, 'x1.5')
    """
    if n < 1:
        raise DtcondError(f"the grid needs n >= 1 targets, got {n}")
    if not 0 <= low <= high <= 1:
        raise DtcondError(f"grid quantiles must satisfy 0 <= low <= high <= 1, got {low}, {high}")
    lo, hi = stats.return_quantile(low), stats.return_quantile(high)
    values = np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])
    # Rounded to 4 significant digits so the spec strings (and the results keys) are stable and short.
    return [absolute(float(f"{v:.4g}")) for v in values] + [scale(m) for m in ood_scales]


def from_sampler(sampler: dict, stats: DatasetStats) -> list[TargetSpec]:
    """The target specs a sampler config names: ``target`` (one), ``targets`` (a list), or its ``name``'s set;
    with ``cost`` (e.g. ``cost<=4``), that cost part joins every spec that has none (for cost-conditioned policies).
    """
    specs = _sampler_specs(sampler, stats)
    if sampler.get("cost"):
        specs = [s if s.cost is not None else joint(s, str(sampler["cost"])) for s in specs]
    return specs


def _sampler_specs(sampler: dict, stats: DatasetStats) -> list[TargetSpec]:
    if sampler.get("target") is not None:
        return [parse(sampler["target"])]
    if sampler.get("targets"):
        return [parse(t) for t in sampler["targets"]]
    name = sampler.get("name")
    if name == "grid":  # a key left out takes grid()'s own default, so the two never disagree
        given = {"n": "n", "low_quantile": "low", "high_quantile": "high", "ood_scales": "ood_scales"}
        kwargs = {arg: sampler[key] for key, arg in given.items() if sampler.get(key) is not None}
        kwargs = {**kwargs, **{k: cast(kwargs[k]) for k, cast in (("n", int), ("low", float), ("high", float)) if k in kwargs}}
        kwargs["ood_scales"] = tuple(float(x) for x in kwargs.get("ood_scales", GRID_OOD_SCALES))
        return grid(stats, **kwargs)
    if name == "quantilizer":
        return [quantilizer(float(q)) for q in sampler.get("qs") or ()]
    raise DtcondError(f"sampler {name!r} names no targets: set sampler.target or sampler.targets")
