"""Training a Decision Transformer with Lightning: the module, the trainer, resume, and the export.

The LightningModule builds its network from primitives only (the model config and the dataset stats
as plain dicts), so its ``.ckpt`` loads with ``torch.load(weights_only=True)`` and describes itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from dtcond.data import DatasetStats
from dtcond.distributions import bin_index
from dtcond.errors import DtcondError
from dtcond.model import DecisionTransformer, DTConfig, configure_optimizer


def model_config_for(stats: DatasetStats, **overrides) -> DTConfig:
    """A :class:`DTConfig` sized to a dataset's spaces; ``overrides`` set the architecture.

    ``return_scale=None`` picks the largest absolute episode return, so scaled targets are O(1).
    """
    overrides = dict(overrides)
    if overrides.get("return_scale") is None:
        overrides["return_scale"] = max(abs(stats.min_return), abs(stats.max_return), 1.0)
    if overrides.get("max_timestep") is None:
        overrides["max_timestep"] = max(stats.max_episode_steps or 0, stats.max_episode_length) + 1
    cfg = DTConfig(
        obs_dim=stats.obs_dim,
        act_dim=stats.action_dim,
        discrete=stats.is_discrete,
        action_low=stats.action_low,
        action_high=stats.action_high,
        **overrides,
    )
    if cfg.context_len > stats.max_episode_length:
        raise DtcondError(
            f"context_len {cfg.context_len} exceeds the dataset's longest episode ({stats.max_episode_length} steps); lower model.context_len"
        )
    return cfg


class DTModule(L.LightningModule):
    """Supervised action prediction on return-conditioned windows.

    >>> module = DTModule(model=cfg.to_dict(), stats=stats.to_dict())     # doctest: +SKIP
    """

    def __init__(
        self,
        model: dict,
        stats: dict,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        warmup_steps: int = 1000,
        betas: tuple[float, float] = (0.9, 0.999),
        condition_on_return: bool = True,
        top_fraction: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = DTConfig.from_dict(model)
        self.stats = DatasetStats.from_dict(stats)
        self.model = DecisionTransformer(self.config)

    def action_loss(self, batch: dict) -> torch.Tensor:
        rtg = batch["returns_to_go"]
        if not self.hparams.condition_on_return:
            rtg = torch.zeros_like(rtg)  # plain behaviour cloning: same network, no return signal
        pred = self.model(rtg, batch["observations"], batch["actions"], batch["timesteps"], batch["mask"])
        mask = batch["mask"]
        if self.config.discrete:
            return F.cross_entropy(pred[mask], batch["actions"][mask])
        if self.config.binned:  # log-likelihood of each dimension's bin: the density up to a constant
            m = self.model
            target = bin_index(batch["actions"], m.action_mid - m.action_half, m.action_mid + m.action_half,
                               self.config.action_bins)  # (B, T, act_dim)
            return F.cross_entropy(pred[mask].flatten(0, 1), target[mask].flatten()) * self.config.act_dim
        # Squared error in units of half the action range, so every action dimension counts alike.
        err = (pred - batch["actions"]) / self.model.action_half  # (B, T, act_dim)
        return err.pow(2).mean(-1)[mask].mean()

    def _common_step(self, batch: dict, stage: str) -> torch.Tensor:
        loss = self.action_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=stage != "train",
                 batch_size=batch["mask"].shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._common_step(batch, "val")

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        opt = configure_optimizer(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.betas)
        warmup = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def check_keys(section: str, given: dict, allowed: set[str]) -> None:
    unknown = set(given) - allowed
    if unknown:
        raise DtcondError(f"unknown {section} keys {sorted(unknown)}; allowed: {sorted(allowed)}")


class RolloutCallback(L.Callback):
    """Every ``every_n_steps`` training steps, roll the current model out at a few targets and log the returns.

    Logged as ``rollout/<spec>`` (mean achieved return), so the CSV/TensorBoard logs show how
    conditioning develops during training, not only the loss.
    """

    def __init__(self, every_n_steps: int, targets=("q0.5", "q0.9"), episodes: int = 4, seed: int = 0):
        if every_n_steps < 1 or episodes < 1:
            raise DtcondError(f"rollout callback needs every_n_steps >= 1 and episodes >= 1, got {every_n_steps}, {episodes}")
        from dtcond.targets import parse

        self.every_n_steps, self.episodes, self.seed = every_n_steps, episodes, seed
        self.targets = [parse(t) for t in targets]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        import numpy as np

        from dtcond.evaluation import evaluate
        from dtcond.policy import ConditionedPolicy

        was_training = pl_module.model.training
        policy = ConditionedPolicy(pl_module.model, pl_module.stats, condition_on_return=pl_module.hparams.condition_on_return)
        specs = self.targets if policy.kind == "dt" else None
        records = evaluate(policy, specs, episodes=self.episodes, seed=self.seed)
        pl_module.model.train(was_training)
        metrics = {f"rollout/{spec}": float(np.mean([r["episode_return"] for r in records if r["target_spec"] == spec]))
                   for spec in {r["target_spec"] for r in records}}
        for logger in trainer.loggers:  # once per rollout, not carried into every later step's row
            logger.log_metrics(metrics, step=step)


@dataclass
class TrainResult:
    out_dir: Path
    bundle: Path
    last_checkpoint: Path
    global_step: int
    val_loss: float | None


def train(
    dataset_id: str,
    out_dir: str | Path,
    model: dict | None = None,
    data: dict | None = None,
    optim: dict | None = None,
    trainer: dict | None = None,
    seed: int = 0,
    checkpoint_every: int = 500,
    resume: bool = True,
    condition_on_return: bool = True,
    top_fraction: float | None = None,
    callbacks: list | None = None,
) -> TrainResult:
    """Train a DT on a local Minari dataset, write ``last.ckpt`` and a policy bundle under ``out_dir``.

    ``condition_on_return=False`` trains behaviour cloning (BC) with the same network and loop;
    with ``top_fraction=q`` too, filtered BC (%BC) on the top-q fraction of episodes by return —
    the same episodes ``quantilizer(q)`` draws its targets from.

    A run whose ``out_dir`` already has ``checkpoints/last.ckpt`` resumes from it (``resume=False``
    refuses instead). ``trainer`` is passed to ``lightning.Trainer`` (e.g. ``max_steps``).

    >>> r = train("dtcond/cartpole/mixture-v0", "runs/cp", trainer={"max_steps": 200})  # doctest: +SKIP
    >>> dtcond.load_policy(r.bundle)                                                      # doctest: +SKIP
    """
    from dtcond.checkpoints import save_bundle
    from dtcond.data import load
    from dtcond.datamodule import WindowDataModule

    out_dir = Path(out_dir)
    model, data, optim, trainer = dict(model or {}), dict(data or {}), dict(optim or {}), dict(trainer or {})
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume:
        raise DtcondError(f"{last} exists; resume=true continues it, or choose another output dir")
    max_steps = trainer.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, float)) or not float(max_steps).is_integer() \
            or max_steps == 0 or max_steps < -1:
        raise DtcondError(f"trainer.max_steps must be a positive integer, got {max_steps!r}")
    if "max_steps" in trainer:
        trainer["max_steps"] = int(max_steps)
    if checkpoint_every < 1:
        raise DtcondError(f"checkpoint_every must be >= 1, got {checkpoint_every}")

    check_keys("model", model, set(DTConfig.__dataclass_fields__) - {"obs_dim", "act_dim", "discrete", "action_low", "action_high", "extra"})
    check_keys("data", data, {"segment_len", "batch_size", "steps_per_epoch", "val_windows", "val_fraction", "num_workers", "gamma"})
    check_keys("optim", optim, {"lr", "weight_decay", "warmup_steps", "betas"})
    for key in ("batch_size", "steps_per_epoch"):
        if key in data and int(data[key]) < 1:
            raise DtcondError(f"data.{key} must be >= 1, got {data[key]}")

    L.seed_everything(seed, workers=True, verbose=False)
    offline = load(dataset_id, gamma=float(data.pop("gamma", 1.0)))
    if top_fraction is not None:
        offline = top_episodes(offline, float(top_fraction))
    cfg = model_config_for(offline.stats, **model)
    segment = int(data.pop("segment_len", 0) or 2 * cfg.context_len)
    if segment < cfg.context_len:
        raise DtcondError(f"data.segment_len ({segment}) must be >= model.context_len ({cfg.context_len})")
    dm = WindowDataModule(dataset_id, window_len=segment, seed=seed, data=offline, **data)
    module = DTModule(cfg.to_dict(), offline.stats.to_dict(), condition_on_return=condition_on_return,
                      top_fraction=top_fraction, **optim)

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(out_dir, name="logs", version="")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        import tensorboard  # noqa: F401  (optional)

        loggers.append(TensorBoardLogger(out_dir, name="tb", version=""))
    except ImportError:
        pass
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=checkpoint_every)
    trainer.setdefault("max_epochs", -1)
    trainer.setdefault("logger", loggers)
    trainer.setdefault("default_root_dir", str(out_dir))
    try:
        pl_trainer = L.Trainer(callbacks=[checkpoint, *(callbacks or [])], **trainer)
    except (TypeError, ValueError) as exc:  # unknown Trainer argument or bad value
        raise DtcondError(f"trainer config: {exc}") from None
    # Resuming reads our own checkpoint with weights_only=True too: nothing in it may run code.
    pl_trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    if not pl_trainer.fast_dev_run:
        pl_trainer.save_checkpoint(last, weights_only=False)  # the final step, with optimizer state
    bundle = save_bundle(module, out_dir / "policy", extra={"global_step": pl_trainer.global_step, "seed": seed})
    val = pl_trainer.callback_metrics.get("val/loss")
    return TrainResult(out_dir, bundle, last, pl_trainer.global_step, float(val) if val is not None else None)



def top_episodes(offline, fraction: float):
    """The dataset restricted to its top ``fraction`` of episodes by return (the quantilizer's tail).

    The stats stay those of the whole dataset, so normalization and targets mean the same thing.
    """
    from dtcond.data import OfflineData
    from dtcond.targets import quantilizer_tail_size

    if not 0 < fraction <= 1:
        raise DtcondError(f"top_fraction must be in (0, 1], got {fraction}")
    ranked = sorted(offline.trajectories, key=lambda t: t.episode_return)
    kept = ranked[len(ranked) - quantilizer_tail_size(len(ranked), fraction):]
    if len(kept) < 2:
        raise DtcondError(f"top_fraction {fraction} keeps {len(kept)} episode; %BC needs at least 2 (one for validation)")
    stats = offline.stats
    stats = type(stats).from_dict({**stats.to_dict(), "extra": {**stats.extra, "top_fraction": fraction, "episodes_kept": len(kept)}})
    return OfflineData(kept, stats)
