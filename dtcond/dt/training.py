"""Training a Decision Transformer with Lightning: the module, the trainer, resume, and the export.

The LightningModule builds its network from primitives only (the model config and the dataset stats
as plain dicts), so its ``.ckpt`` loads with ``torch.load(weights_only=True)`` and describes itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

from dtcond.config import TRAINER_LOOP_KEYS, LoggerConfig, OptimConfig, TrainConfig, merge
from dtcond.datasets.loading import DatasetStats
from dtcond.rollout.distributions import bin_index
from dtcond.common.errors import DtcondError
from dtcond.dt.model import DecisionTransformer, DTConfig, configure_optimizer


def model_config_for(stats: DatasetStats, **overrides) -> DTConfig:
    """A :class:`DTConfig` sized to a dataset's spaces; ``overrides`` set the architecture.

    ``return_scale=None`` picks the largest absolute episode return, so scaled targets are O(1).
    """
    overrides = dict(overrides)
    if overrides.get("return_scale") is None:
        overrides["return_scale"] = max(abs(stats.min_return), abs(stats.max_return), 1.0)
    if overrides.get("max_timestep") is None:
        overrides["max_timestep"] = max(stats.max_episode_steps or 0, stats.max_episode_length) + 1
    if overrides.get("cost_conditioned") and stats.episode_costs is None:
        raise DtcondError(f"model.cost_conditioned=true needs a dataset with costs; {stats.dataset_id!r} has none "
                          "(its env reports no info['cost'])")
    if overrides.get("cost_scale", 1.0) is None:
        overrides["cost_scale"] = max(max(stats.episode_costs or [0.0]), 1.0)
    codec = stats.codec
    image = codec.image_shape if codec.kind == "image" else None
    if overrides.get("encoder", "auto") == "auto":  # the Nature-DQN convs need frames of at least 36x36
        overrides["encoder"] = "cnn" if image is not None and min(image[1:]) >= 36 else "mlp"
    if overrides.get("frame_stack", 1) > 1 and image is None:
        raise DtcondError(f"model.frame_stack={overrides['frame_stack']} stacks image frames; dataset {stats.dataset_id!r} "
                          f"has {codec.kind} observations: use model.frame_stack=1")
    if overrides["encoder"] == "cnn" and image is None:
        raise DtcondError(f"model.encoder=cnn needs image observations (uint8 frames of at least 36x36); dataset "
                          f"{stats.dataset_id!r} has {codec.kind} observations of size {codec.dim}: use model.encoder=mlp or auto")
    cfg = DTConfig(
        obs_dim=stats.obs_dim,
        obs_shape=image,
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


def lr_schedule(warmup_steps: int, decay: str, min_lr_ratio: float, total_steps: int):
    """The learning rate's multiplier at each optimizer step: a linear warmup, then constant or a cosine decay to
    ``min_lr_ratio`` at ``total_steps`` (nanoGPT's; with no step budget, ``total_steps`` < 1, it stays constant).

    >>> f = lr_schedule(10, "cosine", 0.1, 110)
    >>> round(f(0), 2), f(9), round(f(59), 2), round(f(109), 2), round(f(500), 2)
    (0.1, 1.0, 0.55, 0.1, 0.1)
    """
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step + 1 < warmup:
            return (step + 1) / warmup
        if decay != "cosine" or total_steps < 1 or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step + 1 - warmup) / (total_steps - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class DTModule(L.LightningModule):
    """Supervised action prediction on return-conditioned windows.

    The optimizer arguments default to :class:`dtcond.config.OptimConfig`'s, the CLI's defaults.

    >>> module = DTModule(model=cfg.to_dict(), stats=stats.to_dict())     # doctest: +SKIP
    """

    def __init__(
        self,
        model: dict,
        stats: dict,
        lr: float = OptimConfig.lr,
        weight_decay: float = OptimConfig.weight_decay,
        warmup_steps: int = OptimConfig.warmup_steps,
        betas: tuple[float, float] = tuple(OptimConfig().betas),
        decay: str = OptimConfig.decay,
        min_lr_ratio: float = OptimConfig.min_lr_ratio,
        condition_on_return: bool = True,
        top_fraction: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.config = DTConfig.from_dict(model)
        self.stats = DatasetStats.from_dict(stats)
        self.model = DecisionTransformer(self.config)
        self.compile_loss(None)

    def action_loss(self, batch: dict) -> torch.Tensor:
        """The mean over real (unpadded) steps of each step's loss.

        A mask-weighted mean rather than ``pred[mask]``: shapes do not depend on the data, so the step
        needs no device-to-host sync and compiles into one graph.
        """
        per_step = self.step_losses(batch)  # (B, T)
        mask = batch["mask"].flatten().to(per_step.dtype)  # (B*T,)
        return (per_step.flatten() * mask).sum() / mask.sum()

    @property
    def exact_reference(self) -> bool:
        """Whether the data's exact conditional p_data(a_t | h_t) is what this model is trained to match: plain BC
        on the whole data. A return-conditioned model (the DT) or a filtered one (%BC) targets the data's
        conditional given a return, which the mixture's posterior predictive is not."""
        return not self.hparams.condition_on_return and self.hparams.top_fraction is None

    def step_losses(self, batch: dict) -> torch.Tensor:
        """Each step's loss, (B, T), padding included (the caller masks it): the action NLL (nats; for the binned
        head, of the bins, so a log-density up to :attr:`log_bin_width`), or the MSE head's squared error."""
        rtg = batch["returns_to_go"]
        if not self.hparams.condition_on_return:
            rtg = torch.zeros_like(rtg)  # plain behaviour cloning: same network, no return signal
        ctg = batch.get("costs_to_go") if self.config.cost_conditioned else None
        if ctg is not None and not self.hparams.condition_on_return:
            ctg = torch.zeros_like(ctg)
        pred = self.model(rtg, batch["observations"], batch["actions"], batch["timesteps"], batch["mask"], costs_to_go=ctg)
        if self.config.discrete:
            per_step = F.cross_entropy(pred.flatten(0, 1), batch["actions"].flatten(), reduction="none")  # (B*T,)
            per_step = per_step.view(batch["actions"].shape[:2])  # (B, T)
        elif self.config.binned:  # log-likelihood of each dimension's bin: the density up to a constant
            target = bin_index(batch["actions"], *self.model.action_bounds, self.config.action_bins)  # (B, T, act_dim)
            per_step = F.cross_entropy(pred.flatten(0, 2), target.flatten(), reduction="none")  # (B*T*act_dim,)
            per_step = per_step.view(*target.shape).sum(-1)  # (B, T): dimensions are independent given the context
        else:  # squared error in units of half the action range, so every action dimension counts alike
            err = (pred - batch["actions"]) / self.model.action_half  # (B, T, act_dim)
            per_step = err.pow(2).mean(-1)  # (B, T)
        return per_step

    @property
    def log_bin_width(self) -> float:
        """Σ_d log(bin width d) of the binned head (0 for Discrete actions): its NLL of the bins plus this is the
        NLL of its piecewise-uniform density, the units of the data's likelihood on the same grid."""
        if self.config.discrete:
            return 0.0
        low, high = self.model.action_bounds
        return float(torch.log((high - low) / self.config.action_bins).sum())

    def compile_loss(self, mode: str | None) -> None:
        """Train through ``torch.compile(action_loss, mode=mode)`` (``None``: eager); validation stays eager.

        The weights stay those of the plain module, so checkpoints and bundles are unchanged.
        """
        self.compile_mode = mode
        self._train_loss = torch.compile(self.action_loss, mode=mode) if mode else self.action_loss

    def _common_step(self, batch: dict, stage: str) -> torch.Tensor:
        if stage == "train" and self.compile_mode:
            if self.compile_mode in ("reduce-overhead", "max-autotune") and self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last step's graph outputs may be reused
            loss = self._train_loss(batch).clone()  # a tensor of our own, not one in the CUDA graph's memory pool
        else:
            loss = self.action_loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=stage != "train", sync_dist=stage != "train",
                 batch_size=batch["mask"].shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._common_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        if "data_logp" not in batch or not (self.config.discrete or self.config.binned):
            return self._common_step(batch, "val")
        return self._ground_truth_step(batch)

    def _ground_truth_step(self, batch: dict) -> torch.Tensor:
        """Validation against the data's exact conditional (``data_logp``: log p_data(a_t | h_t), gathered with the
        windows): ``val/nll`` (the model's, nats per step), ``val/data_nll`` (the data's own, whose mean estimates its
        conditional entropy on the same positions) and their difference, the forward KL per step
        KL(p_data(·|h_t) ‖ π(·|h_t)) — ``val/kl_data`` for plain BC, ``val/nll_gap`` for a model that conditions on a
        return or imitates a filtered tail (its target is not the mixture's posterior, so the gap may be negative)."""
        per_step = self.step_losses(batch)  # (B, T)
        mask = batch["mask"].to(per_step.dtype)
        n = mask.sum()
        loss = (per_step * mask).sum() / n
        nll = loss + self.log_bin_width
        data_nll = -(batch["data_logp"].to(per_step.dtype) * mask).sum() / n
        positions = int(n.item())
        log = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=positions)
        self.log("val/loss", loss, prog_bar=True, **log)
        self.log("val/nll", nll, **log)
        self.log("val/data_nll", data_nll, **log)
        self.log("val/kl_data" if self.exact_reference else "val/nll_gap", nll - data_nll, prog_bar=self.exact_reference, **log)
        return loss

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        # Lightning's mixed precision refuses to clip gradients for a fused AdamW (it unscales them
        # itself); the multi-tensor AdamW clips under every precision, the fused one is kept elsewhere.
        fused = False if self._mixed_precision() else None
        opt = configure_optimizer(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.betas, fused=fused)
        trainer = self._trainer  # None when called outside a Trainer: no step budget, so no decay
        total = trainer.max_steps if trainer is not None else -1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(self.hparams.warmup_steps, self.hparams.decay,
                                                                   self.hparams.min_lr_ratio, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _mixed_precision(self) -> bool:
        from lightning.pytorch.plugins.precision import MixedPrecision

        try:
            plugin = self.trainer.precision_plugin
        except RuntimeError:  # not attached to a Trainer: a plain loop, no autocast
            return False
        return isinstance(plugin, MixedPrecision)


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

        from dtcond.rollout.evaluation import evaluate
        from dtcond.dt.policy import ConditionedPolicy

        was_training = pl_module.model.training
        policy = ConditionedPolicy(pl_module.model, pl_module.stats, condition_on_return=pl_module.hparams.condition_on_return)
        specs = self.targets if policy.kind == "dt" else None
        records = evaluate(policy, specs, episodes=self.episodes, seed=self.seed)
        pl_module.model.train(was_training)
        metrics = {f"rollout/{spec}": float(np.mean([r["episode_return"] for r in records if r["target_spec"] == spec]))
                   for spec in {r["target_spec"] for r in records}}
        for logger in trainer.loggers:  # once per rollout, not carried into every later step's row
            logger.log_metrics(metrics, step=step)


class ValidationRecord(L.Callback):
    """The ``val/*`` metrics of each validation this run made, by the global step of the weights it measured.

    The weights only change at an optimizer step, so a later measurement of the weights of a recorded step (the
    exported best checkpoint, or the final weights when the last validation came after the last step) would repeat
    one of these; :func:`train` reads them back instead of validating again. Sanity checks are not recorded.
    """

    def __init__(self):
        self.by_step: dict[int, dict[str, float]] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.by_step[trainer.global_step] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


class ResumableEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping``, which also stays stopped when its run is resumed.

    Lightning decides only after a validation, so a rerun of a run that had stopped early trained on to its next
    validation (and further, if that one happened to be lower). The patience spent travels in the checkpoint: a
    resumed run that had used it up stops before its first step.
    """

    @property
    def state_key(self) -> str:
        # Lightning's own key, so that checkpoints written with its EarlyStopping restore their patience here too
        return EarlyStopping(monitor=self.monitor, mode=self.mode).state_key

    def on_train_start(self, trainer, pl_module) -> None:
        if self.stopped_epoch > 0 or self.wait_count >= self.patience:
            trainer.should_stop = True


class EpochsFromSteps(L.Callback):
    """Sets ``max_epochs`` from ``max_steps`` once the epoch's length is known, so a progress bar reads ``Epoch 5/6``.

    Lightning's own ``max_epochs=-1`` ("no limit") made it read ``Epoch 5/-2``. The epoch length is
    only known after the dataloader is set up (a distributed sampler divides it among ranks).
    """

    def on_train_start(self, trainer, pl_module) -> None:
        batches = trainer.num_training_batches
        if trainer.max_steps < 1 or not math.isfinite(batches) or batches < 1:
            return
        steps = max(1, int(batches) // trainer.accumulate_grad_batches)  # optimizer steps per epoch
        if trainer.global_step == 0:
            trainer.fit_loop.max_epochs = math.ceil(trainer.max_steps / steps)
        else:  # resumed, perhaps mid-epoch: the current epoch, then whole ones; max_steps stops it anyway
            remaining = max(0, trainer.max_steps - trainer.global_step)
            trainer.fit_loop.max_epochs = trainer.current_epoch + 1 + math.ceil(remaining / steps)


class EpochOfBar(TQDMProgressBar):
    """Lightning's progress bar, reading ``Epoch e/N`` as its Rich bar does rather than ``Epoch e``."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}/{trainer.max_epochs - 1}")


def make_logger(cfg: LoggerConfig, out_dir: str | Path):
    """The Lightning logger ``cfg`` names, writing under ``out_dir``; a missing package is one line.

    >>> make_logger(LoggerConfig(kind="csv"), "runs/x").log_dir     # doctest: +SKIP
    'runs/x/logs'
    """
    import importlib.util

    out_dir = Path(out_dir)
    package = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}.get(cfg.kind)
    if package and importlib.util.find_spec(package) is None:
        raise DtcondError(f"logger={cfg.kind} needs the {package} package: pip install 'dtcond[loggers]' (or {package})")
    if cfg.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(out_dir, name="logs", version="")
    if cfg.kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(out_dir, name="tb", version="")
    if cfg.kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        # A local SQLite file, no server: MLflow 3 refuses its older mlruns/ folder store without an opt-in.
        uri = cfg.tracking_uri or f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"
        out_dir.mkdir(parents=True, exist_ok=True)
        return MLFlowLogger(experiment_name=cfg.project, tracking_uri=uri, run_name=out_dir.name,
                            artifact_location=(out_dir / "mlartifacts").resolve().as_uri())
    if cfg.kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
        return WandbLogger(project=cfg.project, name=out_dir.name, save_dir=str(out_dir), offline=cfg.offline)
    raise DtcondError(f"unknown logger {cfg.kind!r}")  # LoggerConfig already refuses it; kept for direct callers


@dataclass
class TrainResult:
    out_dir: Path
    bundle: Path
    last_checkpoint: Path
    global_step: int
    val_loss: float | None
    val_metrics: dict | None = None  # the exported weights' val/* metrics (val/kl_data where the data recorded its behaviour)
    best_step: int | None = None  # the step of the exported weights when export="best" found a best checkpoint


# Keyword overrides train() takes: TrainConfig's fields but the CLI-only ones (the dataset is train()'s argument).
TRAIN_OPTIONS = tuple(f for f in TrainConfig.__dataclass_fields__ if f not in ("dataset", "datasets_path"))
SECTIONS = ("model", "data", "optim", "trainer", "logger", "rollouts", "esper")


def train(dataset_id: str, out_dir: str | Path, config: TrainConfig | None = None, callbacks: list | None = None,
          **overrides) -> TrainResult:
    """Train a DT on a local Minari dataset, write ``last.ckpt`` and a policy bundle under ``out_dir``.

    With no other argument this is ``dtcond train``'s default: the CPU preset (``small`` model, CPU
    trainer) for :class:`~dtcond.config.TrainConfig`'s ``trainer.max_steps``. ``config`` replaces those
    defaults; ``overrides`` are TrainConfig's fields (``model``, ``data``, ``optim``, ``trainer``,
    ``logger``, ``rollouts``, ``esper`` as dicts or dataclasses merged onto them; ``seed``, ``checkpoint_every``,
    ``resume``, ``condition_on_return``, ``top_fraction``, ``relabel``), merged onto ``config``. ``callbacks`` are
    extra Lightning callbacks.

    ``condition_on_return=False`` trains behaviour cloning (BC) with the same network and loop;
    with ``top_fraction=q`` too, filtered BC (%BC) on the top-q fraction of episodes by return —
    the same episodes ``quantilizer(q)`` draws its targets from. ``relabel="esper"`` trains the DT on
    ESPER's expected-return labels instead of the returns-to-go (:mod:`dtcond.dt.relabel`); target
    specs then resolve against the labels, and the bundle holds them (``labels.safetensors``).

    A run whose ``out_dir`` already has ``checkpoints/last.ckpt`` resumes from it (``resume=False``
    refuses instead).

    >>> r = train("dtcond/cartpole/mixture-v0", "runs/cp", model={"context_len": 10},
    ...           trainer={"max_steps": 20, "enable_progress_bar": False, "logger": False})
    >>> dtcond.load_policy(r.bundle).kind, (r.out_dir / "checkpoints" / "last.ckpt").is_file()
    ('dt', True)
    """
    from dtcond.dt.checkpoints import save_bundle
    from dtcond.datasets.loading import load
    from dtcond.dt.datamodule import WindowDataModule

    unknown = set(overrides) - set(TRAIN_OPTIONS)
    if unknown:
        raise DtcondError(f"train() got unknown options {sorted(unknown)}; it takes {', '.join(TRAIN_OPTIONS)} and callbacks")
    if config is not None and not isinstance(config, TrainConfig):
        raise DtcondError(f"train(config=...) takes a dtcond.config.TrainConfig, got {type(config).__name__}")
    # A section given as None keeps its defaults, as an absent one does.
    overrides = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in overrides.items()
                 if not (k in SECTIONS and v is None)}
    cfg: TrainConfig = merge(TrainConfig, config, overrides)

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not cfg.resume:
        raise DtcondError(f"{last} exists; resume=true continues it, or choose another output dir")

    from dtcond.common.console import drop_adverts

    drop_adverts()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    offline = load(dataset_id, gamma=cfg.dataset.gamma)
    from dtcond.dt.relabel import LABELS_FILE, relabel_cached

    labels = None
    if cfg.relabel != "none":  # learned once per run dir; a resumed run reads them back
        offline, labels, label_meta = relabel_cached(offline, cfg.relabel, cfg.esper, cfg.seed, out_dir / LABELS_FILE, resuming=last.exists())
    elif last.exists() and (out_dir / LABELS_FILE).exists():
        raise DtcondError(f"{last} was trained on relabelled returns ({out_dir / LABELS_FILE}); resume it with its relabel "
                          "config, or choose another output dir")
    if cfg.top_fraction is not None:
        offline = top_episodes(offline, cfg.top_fraction)
    model_cfg = model_config_for(offline.stats, **asdict(cfg.model))
    if cfg.rollouts.every_n_steps > 0:  # a cost-conditioned model takes joint targets only, others return-only ones
        from dtcond.targets import parse

        for t in cfg.rollouts.targets:
            if (parse(t).cost is not None) != model_cfg.cost_conditioned:
                need = "a cost part (e.g. q0.9,cost<=q0.5)" if model_cfg.cost_conditioned else "no cost part"
                raise DtcondError(f"rollouts.targets entry {t!r}: with model.cost_conditioned={str(model_cfg.cost_conditioned).lower()} it needs {need}")
    segment = cfg.data.segment_len or 2 * model_cfg.context_len
    if segment < model_cfg.context_len:
        raise DtcondError(f"data.segment_len ({segment}) must be >= model.context_len ({model_cfg.context_len})")
    data = {k: v for k, v in asdict(cfg.data).items() if k != "segment_len"}
    reference, why = ground_truth_reference(dataset_id, offline.stats, model_cfg)
    dm = WindowDataModule(dataset_id, window_len=segment, seed=cfg.seed, data=offline, frame_stack=model_cfg.frame_stack,
                          val_reference=reference, **data)
    dm.setup()  # the split is known now: without held-out episodes there is no best checkpoint to pick
    validates = dm.val_set is not None and cfg.trainer.limit_val_batches not in (0, 0.0)
    o = cfg.optim
    module = DTModule(model_cfg.to_dict(), offline.stats.to_dict(), lr=o.lr, weight_decay=o.weight_decay,
                      warmup_steps=o.warmup_steps, betas=tuple(o.betas), decay=o.decay, min_lr_ratio=o.min_lr_ratio,
                      condition_on_return=cfg.condition_on_return, top_fraction=cfg.top_fraction)

    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    trainer = asdict(cfg.trainer)
    loop = {k: trainer.pop(k) for k in TRAINER_LOOP_KEYS}
    module.compile_loss(loop["compile"])
    logger = make_logger(cfg.logger, out_dir) if trainer.pop("logger") is not False else False
    if trainer["max_epochs"] is None:
        trainer["max_epochs"] = -1  # EpochsFromSteps sets it once the epoch length is known
    trainer["default_root_dir"] = trainer["default_root_dir"] or str(out_dir)
    extra = list(callbacks or [])
    if cfg.rollouts.every_n_steps > 0:
        r = cfg.rollouts
        extra.append(RolloutCallback(r.every_n_steps, list(r.targets), r.episodes, cfg.seed))
    if cfg.trainer.max_epochs is None:
        extra.append(EpochsFromSteps())
    if trainer["enable_progress_bar"] is not False and not any(isinstance(c, ProgressBar) for c in extra):
        extra.append(EpochOfBar())
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every)
    best, record = None, None
    if validates:
        record = ValidationRecord()
        extra.append(record)
    if validates and cfg.export == "best":  # kept across resumes: its state travels in last.ckpt
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min", save_top_k=1,
                               enable_version_counter=False, save_weights_only=True, save_on_train_epoch_end=False)
        extra.append(best)
    if validates and cfg.early_stopping > 0:
        # checked after each validation (not at an epoch's end, which max_steps may reach before any validation)
        extra.append(ResumableEarlyStopping(monitor="val/loss", mode="min", patience=cfg.early_stopping, verbose=False,
                                   check_on_train_epoch_end=False, strict=False))
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        pl_trainer = L.Trainer(callbacks=[checkpoint, *extra], logger=logger, **trainer)
    except (TypeError, ValueError, MisconfigurationException) as exc:  # a value Lightning refuses (an unknown accelerator, ...)
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DtcondError(f"trainer config: {first}") from None
    if loop["matmul_precision"] is not None and pl_trainer.strategy.root_device.type == "cuda":
        torch.set_float32_matmul_precision(loop["matmul_precision"])  # process-wide; on a CPU it could change fp32 results
    if last.exists():  # resuming appends to this run's own logs on purpose
        import warnings

        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    try:
        # Resuming reads our own checkpoint with weights_only=True too: nothing in it may run code.
        pl_trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None, weights_only=True)
        if not pl_trainer.fast_dev_run:
            pl_trainer.save_checkpoint(last, weights_only=False)  # the final step, with optimizer state
    except OSError as exc:  # a full disk or a file-size limit mid-write: checkpoints are written atomically
        where = exc.filename or out_dir
        raise DtcondError(f"training stopped: {exc.strerror or exc} writing {where}; the last complete checkpoint "
                          f"({last}) is kept and a rerun into {out_dir} resumes from it") from None
    except RuntimeError as exc:
        text = str(exc)
        if last.exists() and any(m in text for m in ("size mismatch", "Missing key(s)", "Unexpected key(s)")):
            raise DtcondError(f"{last} holds a model of another shape than this config asks for (model.* or the dataset "
                              f"changed); resume with the config it was trained with, or choose another output dir") from None
        raise
    finally:
        if cfg.logger.kind == "wandb" and logger is not False:
            import wandb

            wandb.finish()  # Lightning leaves the run open; the next train() in this process would reuse it
    bundle = out_dir / "policy"
    best_step = None
    if best is not None and best.best_model_path and Path(best.best_model_path).is_file():
        saved = torch.load(best.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(saved["state_dict"])
        best_step = int(saved["global_step"])
    val_metrics = None
    if validates and not pl_trainer.fast_dev_run:  # the exported weights' own val metrics, on the fixed val windows
        val_metrics = record.by_step.get(pl_trainer.global_step if best_step is None else best_step)
        if val_metrics is None:  # not measured in this run (a best checkpoint from before a resume, a final partial epoch)
            measured = pl_trainer.validate(module, datamodule=dm, verbose=False)
            val_metrics = {k: float(v) for k, v in (measured[0] if measured else {}).items()}
    fidelity = {"export": cfg.export if best_step is not None or cfg.export == "last" else "last",
                "best_step": best_step, "val": val_metrics,
                "kl_data": None if val_metrics is None else val_metrics.get("val/kl_data"),
                "reference": "exact" if reference is not None else None, "reference_note": why}
    if pl_trainer.is_global_zero:  # under DDP every rank gets here, with the same weights
        save_bundle(module, bundle, extra={"global_step": pl_trainer.global_step, "seed": cfg.seed, "fidelity": fidelity})
        if labels is not None:  # the per-step labels the DT was trained on travel with it
            from dtcond.dt.relabel import save_labels

            save_labels(labels, bundle / LABELS_FILE, label_meta)
    val = (val_metrics or {}).get("val/loss", pl_trainer.callback_metrics.get("val/loss"))
    return TrainResult(out_dir, bundle, last, pl_trainer.global_step, float(val) if val is not None else None,
                       val_metrics, best_step)


def ground_truth_reference(dataset_id: str, stats: DatasetStats, model_cfg: DTConfig):
    """(trajectory -> log p_data(a_t | h_t) per step, None) for a dataset that recorded its behaviour mixture, on the
    model's action grid; else (None, the reason training logs only the NLL)."""
    from dtcond.behavior.likelihood import DataLikelihood, recorded_behavior

    if recorded_behavior(dataset_id) is None:
        return None, "the dataset recorded no behaviour mixture (not collected by dtcond collect): only the NLL is logged"
    if not (model_cfg.discrete or model_cfg.binned):
        return None, "a deterministic action head (action_head=mse) has no likelihood to compare"
    if model_cfg.cost_conditioned:
        return None, "a cost-conditioned model's target is the data given a cost, not the mixture's posterior"
    try:
        base = DataLikelihood.for_dataset(dataset_id, stats=stats)
    except DtcondError as exc:
        return None, str(exc)
    lik = base if model_cfg.discrete else DataLikelihood(base.components, _likelihood_env(stats), bins=model_cfg.action_bins)
    return (lambda traj: lik.predictive_log_probs(traj.observations, traj.actions)), None


def _likelihood_env(stats: DatasetStats):
    from dtcond.datasets.recorded import make_env

    return make_env(stats, stats.env_id, **stats.env_kwargs)


def top_episodes(offline, fraction: float):
    """The dataset restricted to its top ``fraction`` of episodes by return (the quantilizer's tail).

    The stats stay those of the whole dataset, so normalization and targets mean the same thing.
    """
    from dtcond.datasets.loading import OfflineData
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
