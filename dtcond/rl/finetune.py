"""RL fine-tuning of a trained transformer: RLHF's recipe applied to dtcond's own model.

Start from a pretrained policy π_prior (a comparison's BC transformer) and maximize the observed return with a
penalty toward its frozen copy:

    J(π) = E_π[R(τ)] − β·KL(p_π ‖ p_prior),    KL(p_π ‖ p_prior) = E_π[Σ_t log π(a_t|h_t) − log π_prior(a_t|h_t)].

The env's dynamics cancel in the ratio, so the per-step log-ratios of the two known policies sum to the exact
trajectory log-ratio. Over all trajectory distributions J is maximized by the posterior p_prior(τ)·exp(R(τ)/β)/Z
("RL as Bayesian updating", Korbak, Perez & Buckley 2022); in a stochastic env a policy reaches it only where the
posterior does not select on the env's luck. :func:`dtcond.analysis.oracles.kl_to_posterior` measures how far a
fine-tuned policy is from it.

The method is REINFORCE with a leave-one-out baseline (RLOO: Ahmadian et al. 2024, trl's ``RLOOTrainer``). Each
update rolls out ``episodes`` fresh on-policy episodes, and each step's action is credited with the KL-shaped
reward still to come, Σ_{t'≥t} r_t' − β·(log π − log π_prior)_t', minus the mean of the same quantity over the
group's *other* episodes at step t (independent of this episode's actions, so the gradient stays unbiased). Why
this rather than PPO with a value head (trl's ``PPOTrainer``): the transformer needs no new head or critic to
train, the one gradient step per fresh batch needs no clipping or importance ratios, and the sequence-level
objective is exactly the KL-regularized one whose optimum is the posterior. The policy acts and is differentiated
in eval mode (no dropout), so the gradient is that of the policy that sampled the actions.

Two families come out of it (:mod:`dtcond.families`): ``rlft_kl`` (the penalized run's final policy, parameter
β; β = 0 is unregularized) and ``rlft_stop`` (snapshots of the unregularized run, Gao, Schulman & Hilton 2022's
implicit regularizer: the last policy whose KL from the prior, measured on held-out episodes, is within a
threshold; parameter the threshold in nats per episode).

>>> result = finetune("runs/bc/policy", "runs/rlft-b3", beta=3.0, updates=100)       # doctest: +SKIP
>>> dtcond.load_policy(result.bundle).label                                          # doctest: +SKIP
'rlft_kl:3'
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dtcond.common.errors import DtcondError
from dtcond.common.fileio import atomic_write
from dtcond.config import FinetuneConfig, merge
from dtcond.dt.checkpoints import load_dt_policy, save_bundle
from dtcond.dt.policy import ConditionedPolicy, action_log_probs
from dtcond.rollout.evaluation import rollout_episodes

KL_KIND, STOP_KIND = "rlft_kl", "rlft_stop"
STATE_FILE = "finetune_state.pt"
# Env seeds of their own: training rollouts and held-out checks never meet each other or the evaluation's seeds.
TRAIN_SEED_BASE, CHECK_SEED_BASE, POOL_SEED_BASE = 50_000_000, 60_000_000, 70_000_000


@dataclass
class FinetuneResult:
    out_dir: Path
    bundle: Path  # the final policy: rlft_kl at β (β = 0: unregularized)
    snapshots: dict[float, Path] = field(default_factory=dict)  # threshold -> the early-stopped policy (rlft_stop)
    history: list[dict] = field(default_factory=list)  # per check: update, held-out KL (mean, se) and return
    updates: int = 0
    seconds: float = 0.0  # training time of this call (a resumed run's earlier time is in the bundle's card)


class _Module:
    """What :func:`~dtcond.dt.checkpoints.save_bundle` reads: the network, its config and the data's stats."""

    def __init__(self, model, stats):
        self.model, self.config, self.stats = model, model.cfg, stats
        self.hparams = {"condition_on_return": False}


def load_prior(prior) -> ConditionedPolicy:
    """The pretrained policy (a bundle path or a loaded policy), checked to be one this method can fine-tune."""
    policy = load_dt_policy(prior) if isinstance(prior, (str, Path)) else prior
    if not isinstance(policy, ConditionedPolicy):
        raise DtcondError(f"fine-tuning starts from a dtcond transformer policy (BC), got {type(policy).__name__}")
    cfg = policy.config
    if policy.condition_on_return:
        raise DtcondError("fine-tuning starts from a policy trained without returns (BC): a DT's action depends on a target")
    if not (cfg.discrete or cfg.binned) or cfg.cost_conditioned or cfg.frame_stack > 1:
        raise DtcondError("fine-tuning needs a policy with a likelihood (Discrete or binned Box actions), without cost "
                          "conditioning or stacked frames")
    if policy.greedy or policy.temperature != 1.0:
        raise DtcondError("fine-tuning samples at temperature 1: load the prior with greedy=False, temperature=1")
    return policy


def episode_tensors(policy: ConditionedPolicy, episodes: list[dict]) -> dict:
    """A batch of finished episodes (histories from :func:`~dtcond.rollout.evaluation.rollout_episodes`) as tensors
    padded on the right: ``obs`` (N, T, ...) normalized, ``actions``, ``rewards`` (N, T), ``mask`` (N, T) and
    ``timesteps``. Right padding needs no attention mask: causal attention never lets a real step see a later pad."""
    N, T, dev = len(episodes), max(len(e["rewards"]) for e in episodes), policy.device
    cfg = policy.config
    obs = np.zeros((N, T, *episodes[0]["obs"].shape[1:]), dtype=np.float32)
    acts = np.zeros((N, T), dtype=np.int64) if cfg.discrete else np.zeros((N, T, cfg.act_dim), dtype=np.float32)
    rewards, mask = np.zeros((N, T)), np.zeros((N, T), dtype=bool)
    for i, e in enumerate(episodes):
        n = len(e["rewards"])
        obs[i, :n] = policy.stats.normalize_obs(e["obs"])
        acts[i, :n] = np.asarray(e["actions"]).reshape(acts[i, :n].shape)
        rewards[i, :n], mask[i, :n] = e["rewards"], True
    return {"obs": torch.as_tensor(obs, device=dev), "actions": torch.as_tensor(acts, device=dev),
            "rewards": torch.as_tensor(rewards, dtype=torch.float32, device=dev), "mask": torch.as_tensor(mask, device=dev),
            "timesteps": torch.arange(T, device=dev)[None].expand(N, -1)}


def sequence_log_probs(model, batch: dict) -> torch.Tensor:
    """log π(a_t | h_t) of a BC-style transformer (no return signal) at every step of ``batch``: (N, T)."""
    rtg = torch.zeros(batch["rewards"].shape, device=batch["rewards"].device)
    return action_log_probs(model, rtg, batch["obs"], batch["actions"], batch["timesteps"])


def rloo_loss(logp: torch.Tensor, logp_prior: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, beta: float,
              scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The RLOO surrogate loss of one group of episodes and each episode's log-ratio log p_π(τ)/p_prior(τ).

    ``logp`` (N, T) carries the policy's gradient; ``logp_prior`` (N, T), ``rewards`` (N, T) and ``mask`` (N, T, real
    steps) do not. Each step is credited with the KL-shaped reward to come, less the leave-one-out mean of the
    other episodes' at that step; its gradient is an unbiased estimate of −∇J/scale.

    >>> z = torch.zeros(2, 1)
    >>> loss, ratio = rloo_loss(z.clone().requires_grad_(), z, torch.tensor([[1.0], [0.0]]), torch.ones(2, 1, dtype=torch.bool), 0.0)
    >>> ratio.tolist()
    [0.0, 0.0]
    """
    m = mask.to(logp.dtype)
    ratio = (logp.detach() - logp_prior) * m  # (N, T): exact per-step log-ratios of the actions taken
    shaped = (rewards - beta * ratio) * m
    to_go = shaped.flip(1).cumsum(1).flip(1)  # (N, T): Σ_{t' ≥ t}
    alive = m.sum(0)  # (T,) episodes still running at each step
    baseline = (to_go.sum(0)[None] - to_go) / (alive - 1).clamp(min=1)[None]  # the others' mean (0 with no other)
    advantage = (to_go - baseline) * m
    loss = -(advantage * logp * m).sum() / (len(logp) * scale)
    return loss, ratio.sum(1)


def log_ratios(policy: ConditionedPolicy, prior: ConditionedPolicy, episodes: list[dict]) -> np.ndarray:
    """log p_π(τ) − log p_prior(τ) of each episode (the dynamics cancel): their mean estimates KL(p_π ‖ p_prior)."""
    batch = episode_tensors(policy, episodes)
    with torch.no_grad():
        ratio = (sequence_log_probs(policy.model, batch) - sequence_log_probs(prior.model, batch)) * batch["mask"]
    return ratio.sum(1).double().cpu().numpy()


def heldout_check(policy, prior, episodes: int, seed: int) -> dict:
    """KL(p_π‖p_prior) (mean and standard error over episodes) and the mean observed return on held-out episodes."""
    pairs = rollout_episodes(policy, episodes, seed=seed)
    kl = log_ratios(policy, prior, [h for _, h in pairs])
    returns = np.array([r["episode_return"] for r, _ in pairs])
    return {"kl": float(kl.mean()), "kl_se": float(kl.std(ddof=1) / math.sqrt(len(kl))), "return": float(returns.mean())}


def finetune(prior, out_dir: str | Path, beta: float = 0.0, config: FinetuneConfig | None = None, seed: int = 0,
             progress: bool = False, **overrides) -> FinetuneResult:
    """Fine-tune ``prior`` (a BC transformer's bundle or policy) by RLOO on the observed reward with a KL penalty β
    toward its frozen copy; write the final policy (``out_dir/policy``) and, for ``thresholds``, the early-stopped
    snapshots (``out_dir/stop-<threshold>/policy``). A rerun into ``out_dir`` resumes from its last check.

    ``config``/``overrides`` are :class:`~dtcond.config.FinetuneConfig`'s fields (its ``betas`` are for a comparison;
    this call trains the one ``beta``). Snapshots are taken at every ``check_every`` updates from held-out episodes:
    the snapshot for a threshold is the last checked policy whose held-out KL was at most the threshold.
    """
    cfg = merge(FinetuneConfig, config, overrides)
    if not (beta >= 0 and math.isfinite(beta)):
        raise DtcondError(f"beta must be a finite number >= 0 (0: unregularized), got {beta}")
    prior_policy = load_prior(prior)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frozen = prior_policy.model.eval().requires_grad_(False)
    model = copy.deepcopy(frozen).requires_grad_(True).eval()  # eval: no dropout, the gradient is the acting policy's
    policy = ConditionedPolicy(model, prior_policy.stats, condition_on_return=False, source=str(out_dir / "policy"),
                               kind=KL_KIND, param=beta)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    identity = {"beta": float(beta), "seed": int(seed), "prior": prior_policy.fingerprint, "updates": cfg.updates,
                "episodes": cfg.episodes, "lr": cfg.lr, "check_every": cfg.check_every, "check_episodes": cfg.check_episodes}
    state_path = out_dir / STATE_FILE
    update, history, snapshots, checked, spent = 0, [], {}, None, 0.0
    if state_path.exists():
        saved = torch.load(state_path, map_location=policy.device, weights_only=True)
        if saved["identity"] != identity:
            raise DtcondError(f"{state_path} is a fine-tuning run with other settings ({saved['identity']}); "
                              "use its settings to resume it, or choose another output dir")
        model.load_state_dict(saved["model"])
        optim.load_state_dict(saved["optim"])
        update, history, checked, spent = saved["update"], saved["history"], saved["checked"], saved["seconds"]
        snapshots = {float(t): out_dir / f"stop-{t:g}" / "policy" for t in saved["snapshots"]}
    if checked is None:  # the prior itself: KL 0 by definition
        checked = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"update": 0, "kl": 0.0, "kl_se": 0.0, "return": None})
    scale = float(model.cfg.return_scale)
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.updates, initial=update, desc=f"rlft β={beta:g}", unit="update", disable=not progress)
    while update < cfg.updates:
        pairs = rollout_episodes(policy, cfg.episodes, seed=TRAIN_SEED_BASE + 100_000 * seed + update)
        batch = episode_tensors(policy, [h for _, h in pairs])
        logp = sequence_log_probs(model, batch)
        with torch.no_grad():
            logp_prior = sequence_log_probs(frozen, batch)
        loss, _ = rloo_loss(logp, logp_prior, batch["rewards"], batch["mask"], beta, scale)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optim.step()
        policy._weights_hash = None  # new weights: a new fingerprint
        update += 1
        bar.update(1)
        if update % cfg.check_every and update < cfg.updates:
            continue
        check = heldout_check(policy, prior_policy, cfg.check_episodes, seed=CHECK_SEED_BASE + 100_000 * seed)
        history.append({"update": update, **check})
        for threshold in sorted(set(cfg.thresholds) - set(snapshots)):
            if check["kl"] > threshold:  # crossed: the last checked policy within the threshold is the snapshot
                snapshots[threshold] = _save(checked, model, prior_policy, out_dir / f"stop-{threshold:g}" / "policy",
                                             STOP_KIND, threshold, {**identity, "threshold": threshold, "reached": True,
                                                                    "stopped_at": history[-2]})
        checked = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spent += time.perf_counter() - start
        start = time.perf_counter()
        _save_state(state_path, model, optim, update, history, checked, snapshots, spent, identity)
    bar.close()
    spent += time.perf_counter() - start
    for threshold in sorted(set(cfg.thresholds) - set(snapshots)):  # never crossed: the run's end is within it
        snapshots[threshold] = _save(checked, model, prior_policy, out_dir / f"stop-{threshold:g}" / "policy", STOP_KIND,
                                     threshold, {**identity, "threshold": threshold, "reached": False, "stopped_at": history[-1]})
    _save_state(state_path, model, optim, update, history, checked, snapshots, spent, identity)
    bundle = _save(model.state_dict(), model, prior_policy, out_dir / "policy", KL_KIND, beta,
                   {**identity, "history": history, "seconds": spent})
    return FinetuneResult(out_dir, bundle, dict(sorted(snapshots.items())), history, update, spent)


def _save(weights: dict, model, prior: ConditionedPolicy, path: Path, kind: str, param: float, extra: dict) -> Path:
    """A policy bundle of ``weights`` (the model's architecture) under another family's name."""
    net = copy.deepcopy(model)
    net.load_state_dict(weights)
    return save_bundle(_Module(net, prior.stats), path, extra={"global_step": extra.get("stopped_at", {}).get("update", extra["updates"]),
                                                               "finetune": json.loads(json.dumps(extra))}, kind=kind, param=param)


def _save_state(path: Path, model, optim, update: int, history: list, checked: dict, snapshots: dict, seconds: float,
                identity: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "update": update, "history": history,
                "checked": checked, "snapshots": sorted(snapshots), "seconds": seconds, "identity": identity}, buf)
    atomic_write(path, buf.getvalue())


def prior_pool(prior, episodes: int, seed: int, path: str | Path) -> dict:
    """The prior's own ``episodes`` on env seeds of their own (observed and true returns), kept in ``path`` (JSON) and
    read back when it holds the same prior and size: the sample that estimates the posterior's normalizer
    Z = E_prior[exp(R/β)] (:func:`dtcond.analysis.oracles.kl_to_posterior`)."""
    policy, path = load_prior(prior), Path(path)
    want = {"prior": policy.fingerprint, "episodes": int(episodes), "seed": int(seed)}
    if path.exists():
        try:
            pool = json.loads(path.read_text())
            if {k: pool.get(k) for k in want} == want:
                return pool
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: made again
    pairs = rollout_episodes(policy, episodes, seed=POOL_SEED_BASE + 100_000 * seed)
    pool = {**want, "returns": [r["episode_return"] for r, _ in pairs], "true_returns": [r.get("true_return") for r, _ in pairs]}
    atomic_write(path, json.dumps(pool))
    return pool


class PriorScorer:
    """Wraps a comparison's scorer (or None) and adds each episode's ``log_ratio_prior``, log p_π(τ) − log p_prior(τ):
    for an RL-fine-tuned policy, the exact trajectory log-ratio to the model it started from."""

    def __init__(self, policy: ConditionedPolicy, prior: ConditionedPolicy, base=None):
        self.policy, self.prior, self.base = policy, load_prior(prior), base
        self.likelihood = getattr(base, "likelihood", None)

    def score_episode(self, obs, actions, probs=None, logp_policy_marginal=None) -> dict:
        out = {} if self.base is None else self.base.score_episode(obs, actions, probs, logp_policy_marginal=logp_policy_marginal)
        ratio = log_ratios(self.policy, self.prior, [{"obs": obs, "actions": actions, "rewards": np.zeros(len(obs))}])
        return {**out, "log_ratio_prior": float(ratio[0])}
