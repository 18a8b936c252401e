"""The policy contract: what :func:`dtcond.evaluate` rolls out, whatever trained (or defined) the policy.

Every rollout-able policy implements it: the DT and BC/%BC (:class:`dtcond.dt.policy.ConditionedPolicy`), SB3
policies (:class:`dtcond.rl.sb3_policy.SB3Policy`), and the behaviour mixture itself
(:class:`dtcond.behavior.likelihood.BehaviorPolicy`). A new family implements these members and nothing else.

Identity is typed: ``kind`` names the family (``"dt"``, ``"ppo_kl"``, ...), ``param`` its parameter (β, λ,
q, a cost limit; None when it has none) and ``train_step`` how long it trained; ``label`` renders them for
display and is never parsed back.

The batch protocol steps ``n`` episodes at once: ``state = begin(n)``, then per step
``actions, probs, state = act_batch(state, obs, rtg, uniforms, ctg)`` and, when episodes end,
``state = keep(state, rows)``. ``uniforms`` are ``draws_per_step`` numbers in [0, 1) per episode from that
episode's own generator, the only randomness a policy may use, so the same env seeds give the same
episodes. ``probs`` is the per-step action distribution it sampled from (Discrete), its mass on a grid
(Box), or None.

>>> from dtcond.rollout.contract import missing_members
>>> missing_members(object())[:3]
['stats', 'kind', 'label']
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dtcond.common.errors import DtcondError


@runtime_checkable
class Policy(Protocol):
    """What every rollout-able policy offers: typed identity, acting mode, and the batch methods
    (``begin``, ``act_batch``, ``keep``) that :func:`dtcond.evaluate` drives; see this module's doc."""

    stats: Any  # the DatasetStats the policy acts under (spaces, normalization, the data's returns)
    kind: str  # the family: "dt", "bc", "ppo", "ppo_kl", "ppo_kl_bc", "ppo_om", "ppo_lag", "behavior", ...
    label: str  # kind, param and train_step rendered for tables and plots
    param: float | None  # the family's parameter (β, λ, q, a cost limit), None when it has none
    train_step: int | None  # optimizer or env steps trained, None when not trained
    source: str  # where it came from: a bundle path, a dataset id
    fingerprint: str  # weights and acting mode: equal fingerprints act identically
    greedy: bool  # plays its mode rather than sampling
    condition_on_return: bool  # reads the return-to-go (a DT) or ignores it
    cost_conditioned: bool  # also reads a cost-to-go (``ctg``)
    draws_per_step: int  # uniforms per episode per step it consumes
    env_id: str | None

    def check_env(self, env) -> None: ...

    def begin(self, n: int): ...

    def keep(self, state, rows): ...

    def act_batch(self, state, obs, rtg, uniforms, ctg=None): ...


MEMBERS = tuple(Policy.__annotations__) + ("check_env", "begin", "keep", "act_batch")


def missing_members(policy) -> list[str]:
    """The members of :class:`Policy` that ``policy`` lacks, in the contract's order."""
    return [name for name in MEMBERS if not hasattr(policy, name)]


def check_policy(policy) -> None:
    """Refuse, in one line, an object that does not implement :class:`Policy`."""
    missing = missing_members(policy)
    if missing:
        raise DtcondError(f"{type(policy).__name__} is not a dtcond policy: it lacks {', '.join(missing)} "
                          "(see dtcond.rollout.contract.Policy)")
