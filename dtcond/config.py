"""One typed config per command: the defaults of the library and of the CLI, in one place.

Hydra uses these dataclasses as the schema of ``conf/<command>.yaml`` (each file's defaults list starts
with ``base_<command>``), so ``episodes=abc`` fails while composing, in one line naming the key. The
YAML files keep only presets (``conf/model``, ``conf/trainer``, ...), interpolations and comments.
The library takes the same dataclasses, or plain dicts merged onto them with :func:`merge`:

>>> cfg = merge(TrainConfig, {"trainer": {"max_steps": 200}, "model": {"n_embd": 32}})
>>> cfg.trainer.max_steps, cfg.model.n_embd, cfg.model.context_len, cfg.optim.lr
(200, 32, 20, 0.001)

Checks that a type cannot express (``batch_size >= 1``) run in ``__post_init__``, so a config is
checked once, however it was made. Importing this module loads neither torch nor Hydra.

Layer 5: may import common, envs, datasets, targets (the layers below it; the package docstring lists them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from dtcond.common.errors import DtcondError
from dtcond.datasets.loading import check_gamma
from dtcond.datasets.storage import check_dataset_id
from dtcond.targets import parse


def conf_dir() -> Path:
    """The Hydra configs: shipped inside the wheel as dtcond/conf, or the repo's conf/ in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if candidate.is_dir():
            return candidate
    raise DtcondError("cannot find dtcond's Hydra configs (dtcond/conf or conf/ beside the package)")


LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
TRAINER_LOOP_KEYS = ("compile", "matmul_precision")  # TrainerConfig's keys that are not lightning.Trainer's
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile modes



def _at_least(section: str, **values) -> None:
    for key, (value, low) in values.items():
        if value < low:
            raise DtcondError(f"{section + '.' if section else ''}{key} must be >= {low}, got {value}")


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DtcondError(f"{key} must hold numbers, got {value!r}")
    return float(value)


def _distinct(key: str, values: list, ok, what: str) -> None:
    bad = [v for v in values if not ok(v)]
    if bad:
        raise DtcondError(f"{key} must be {what}, got {bad}")
    if len(set(values)) != len(values):
        raise DtcondError(f"{key} must be distinct, got {list(values)}")


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class DatasetConfig:
    """A local Minari dataset (``conf/dataset/*.yaml``)."""

    name: str = "cartpole"  # names the run's output folder
    id: str = "dtcond/cartpole/mixture-v0"
    gamma: float = 1.0  # only 1.0: returns are undiscounted everywhere else (see check_gamma)

    def __post_init__(self):
        check_gamma(self.gamma)


@dataclass
class EnvConfig:
    """An env and the behaviour mixture ``dtcond collect`` rolls out in it (``conf/env/*.yaml``)."""

    name: str = MISSING
    id: str = MISSING
    kwargs: Dict[str, Any] = field(default_factory=dict)
    max_episode_steps: Optional[int] = None  # None: the env's own time limit
    collect_episodes: int = 300
    # Each entry: {policy: random | a scripted name | sb3:<path.zip>, noise, weight, name}; weights sum to 1.
    behavior: List[Any] = field(default_factory=lambda: ["random"])

    def __post_init__(self):
        _at_least("env", collect_episodes=(self.collect_episodes, 1))


@dataclass
class ModelConfig:
    """The network's size; the defaults are the CPU preset ``conf/model/small.yaml``.

    Sizes that depend on the dataset (observation and action dims) are filled in by training.
    """

    context_len: int = 20  # K: timesteps a token attends back over (the paper's context)
    n_layer: int = 3
    n_head: int = 1
    n_embd: int = 64
    dropout: float = 0.1  # the DT paper's; it delays overfitting (experiments/fidelity), at some cost per step on CPU
    activation: str = "gelu"  # the MLP's nonlinearity: "gelu" or "relu" (the DT paper's, conf/model/paper.yaml)
    max_timestep: Optional[int] = None  # timestep embedding size; None: the dataset's longest episode + 1
    return_scale: Optional[float] = None  # returns-to-go are divided by it; None: the largest |episode return|
    action_head: str = "bins"  # continuous actions: "bins" (per-dimension categorical, sampled) or "mse" (a tanh mean)
    action_bins: int = 64  # "bins" head: equal-width bins per action dimension
    cost_conditioned: bool = False  # also condition on cost-to-go (joint targets like q0.9,cost<=q0.2); needs a dataset with costs
    cost_scale: Optional[float] = None  # costs-to-go are divided by it; None: the largest episode cost (at least 1)
    encoder: str = "auto"  # state embedding: auto (cnn for uint8 image frames of at least 36x36, else mlp), mlp or cnn
    frame_stack: int = 1  # image observations: each state stacks its frame with the k-1 before it (the DT paper's Atari: 4)

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise DtcondError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.encoder not in ("auto", "mlp", "cnn"):
            raise DtcondError(f"model.encoder must be auto, mlp or cnn, got {self.encoder!r}")
        _at_least("model", frame_stack=(self.frame_stack, 1))


@dataclass
class DataConfig:
    """Training windows drawn from the dataset (see :class:`dtcond.dt.datamodule.WindowDataModule`)."""

    segment_len: Optional[int] = None  # steps per training segment; None: 2 x model.context_len
    batch_size: int = 64
    steps_per_epoch: int = 250  # batches per epoch, which is also the validation interval
    val_windows: int = 512  # fixed windows from the held-out episodes for val/loss
    val_fraction: float = 0.1  # share of episodes held out for val/loss
    num_workers: int = 0  # DataLoader worker processes; a batch is one gather, and a worker cost more than it saved (benchmarks/loop.py)
    episode_weighting: str = "steps"  # steps: windows ∝ episode length (the DT paper's); balanced: half drawn per episode
    on_device: bool = True  # CUDA: keep the episodes on the GPU and gather batches there (needs num_workers=0)

    def __post_init__(self):
        _at_least("data", batch_size=(self.batch_size, 1), steps_per_epoch=(self.steps_per_epoch, 1),
                  val_windows=(self.val_windows, 1), num_workers=(self.num_workers, 0))
        if self.segment_len is not None:
            _at_least("data", segment_len=(self.segment_len, 1))
        if not 0.0 <= self.val_fraction < 1.0:
            raise DtcondError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.episode_weighting not in ("steps", "balanced"):
            raise DtcondError(f"data.episode_weighting must be 'steps' or 'balanced', got {self.episode_weighting!r}")


@dataclass
class OptimConfig:
    """AdamW with a linear warmup, then a constant or cosine-decayed learning rate; weight decay on matrices only."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200  # the learning rate ramps linearly from lr/warmup_steps to lr
    decay: str = "cosine"  # after warmup: none (constant lr) | cosine (nanoGPT's: to min_lr_ratio x lr at trainer.max_steps)
    min_lr_ratio: float = 0.1  # cosine: the final learning rate as a fraction of lr
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DtcondError(f"optim.lr must be a positive number, got {self.lr}")
        _at_least("optim", weight_decay=(self.weight_decay, 0.0), warmup_steps=(self.warmup_steps, 0))
        if self.decay not in ("none", "cosine"):
            raise DtcondError(f"optim.decay must be 'none' or 'cosine', got {self.decay!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise DtcondError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise DtcondError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer``; the defaults are the CPU preset ``conf/trainer/cpu.yaml``.

    The other fields keep Lightning's own defaults (None mostly means "Lightning decides").
    """

    accelerator: str = "cpu"
    strategy: str = "auto"
    devices: Any = 1  # a count, a list of device ids, -1 (all) or "auto"
    num_nodes: int = 1
    precision: Optional[str] = "32-true"
    max_steps: int = 3000  # optimizer steps; -1 only together with max_epochs
    max_epochs: Optional[int] = None  # None: as many as max_steps needs, so progress bars show "Epoch e/N"
    min_steps: Optional[int] = None
    min_epochs: Optional[int] = None
    max_time: Optional[str] = None  # "DD:HH:MM:SS"
    gradient_clip_val: Optional[float] = 0.25
    gradient_clip_algorithm: Optional[str] = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: Optional[int] = 25
    enable_progress_bar: Optional[bool] = True
    enable_model_summary: Optional[bool] = False
    enable_checkpointing: Optional[bool] = None
    logger: Optional[bool] = None  # false: log nothing; which logger otherwise is the `logger` config group
    fast_dev_run: Any = False  # true, or a number of batches: a smoke run that saves no checkpoint
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: Optional[int] = None
    deterministic: Any = None  # true, false or "warn"
    benchmark: Optional[bool] = None
    use_distributed_sampler: bool = True
    profiler: Optional[str] = None  # "simple" | "advanced" | "pytorch"
    detect_anomaly: bool = False
    barebones: bool = False
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None  # None: the run's output dir
    # Not lightning.Trainer arguments (TRAINER_LOOP_KEYS): how dtcond runs the step.
    compile: Optional[str] = None  # torch.compile the forward + loss: default | reduce-overhead (CUDA graphs) | max-autotune; None: eager
    matmul_precision: Optional[str] = None  # CUDA only: torch.set_float32_matmul_precision, highest | high (TF32) | medium; None: torch's

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise DtcondError(f"trainer.compile must be one of {', '.join(map(str, COMPILE_MODES))}, got {self.compile!r}")
        if self.matmul_precision not in (None, "highest", "high", "medium"):
            raise DtcondError(f"trainer.matmul_precision must be highest, high, medium or null, got {self.matmul_precision!r}")
        if not (self.max_steps >= 1 or (self.max_steps == -1 and self.max_epochs is not None)):
            raise DtcondError(f"trainer.max_steps must be a positive integer (or -1 with trainer.max_epochs set), got {self.max_steps}")
        if self.max_epochs is not None and self.max_epochs < -1:
            raise DtcondError(f"trainer.max_epochs must be >= -1, got {self.max_epochs}")


@dataclass
class LoggerConfig:
    """Where training curves go (``conf/logger/*.yaml``): one Lightning logger, writing under the run's output dir."""

    kind: str = "csv"  # csv: logs/metrics.csv | tensorboard: tb/ | mlflow: mlflow.db | wandb: wandb/
    project: str = "dtcond"  # the MLflow experiment or W&B project
    tracking_uri: Optional[str] = None  # mlflow: None is a local SQLite file, <output dir>/mlflow.db
    offline: bool = True  # wandb: write locally only; `wandb sync <dir>` uploads later

    def __post_init__(self):
        if self.kind not in LOGGERS:
            raise DtcondError(f"logger.kind must be one of {', '.join(LOGGERS)}, got {self.kind!r}")


RELABELS = ("none", "esper")  # what a DT conditions on: the returns-to-go, or ESPER's expected-return labels


@dataclass
class EsperConfig:
    """ESPER's expected-return relabelling (``relabel=esper``, dtcond/dt/relabel.py), sized for a CPU."""

    clusters: int = 8  # cluster assignments per step (the reference's rep_size)
    hidden: int = 32  # units in every MLP and the LSTM
    cluster_steps: int = 2000  # adversarial clustering steps (cluster model vs dynamics model)
    return_steps: int = 1000  # return-model steps on the fixed clusters
    batch_size: int = 16  # whole episodes per step (the LSTM runs over the longest: a step on 500-step CartPole episodes costs ~0.05-0.2 s on one thread)
    cluster_lr: float = 1e-3
    dynamics_lr: float = 1e-3
    return_lr: float = 1e-3
    adv_weight: float = 10.0  # weight of the dynamics loss the clusters maximize (the reference's 1): far above return_weight
    act_weight: float = 1.0  # weight of the action loss the clusters minimize (the reference's 0.01 collapsed to one cluster here)
    # Weight of a return-to-go loss the clusters also minimize (0 with adv_weight 1: the reference's objective). Without it a
    # deterministic env's returns are averaged away; with it the adversary must outweigh it (dtcond/dt/relabel.py says by how much).
    return_weight: float = 1.0

    def __post_init__(self):
        _at_least("esper", clusters=(self.clusters, 2), hidden=(self.hidden, 1), cluster_steps=(self.cluster_steps, 0),
                  return_steps=(self.return_steps, 1), batch_size=(self.batch_size, 1))
        for key in ("cluster_lr", "dynamics_lr", "return_lr"):
            value = getattr(self, key)
            if not (value > 0 and math.isfinite(value)):
                raise DtcondError(f"esper.{key} must be a positive number, got {value}")
        for key in ("adv_weight", "act_weight", "return_weight"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise DtcondError(f"esper.{key} must be a finite number >= 0, got {value}")


@dataclass
class RolloutsConfig:
    """Roll the model out while training and log ``rollout/<target>`` returns."""

    every_n_steps: int = 0  # 0: off
    targets: List[str] = field(default_factory=lambda: ["q0.5", "q0.9"])
    episodes: int = 4

    def __post_init__(self):
        _at_least("rollouts", every_n_steps=(self.every_n_steps, 0), episodes=(self.episodes, 1))


# ----------------------------------------------------------------------------------------------
# Commands


@dataclass
class TrainConfig:
    """``dtcond train`` and :func:`dtcond.train`: every default here is the CLI's.

    >>> TrainConfig().trainer.max_steps, TrainConfig().model.n_embd
    (3000, 64)
    """

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    seed: int = 0
    condition_on_return: bool = True  # false: behaviour cloning (BC) with the same network and loop
    top_fraction: Optional[float] = None  # with condition_on_return=false: %BC on the top fraction of episodes by return
    relabel: str = "none"  # esper: condition on ESPER's expected-return labels, learned before training (see esper)
    esper: EsperConfig = field(default_factory=EsperConfig)
    checkpoint_every: int = 250  # steps between last.ckpt saves
    export: str = "best"  # the weights the policy bundle gets: best (lowest val/loss; last without a val set) | last
    early_stopping: int = 4  # stop after this many validations without a lower val/loss; 0: never
    resume: bool = True  # false: refuse an output dir that already has a checkpoint
    datasets_path: Optional[str] = None  # CLI: default $MINARI_DATASETS_PATH, else ~/.minari/datasets

    def __post_init__(self):
        if self.export not in ("best", "last"):
            raise DtcondError(f"export must be best or last, got {self.export!r}")
        if self.early_stopping < 0:
            raise DtcondError(f"early_stopping must be >= 0 (0: never), got {self.early_stopping}")
        if self.checkpoint_every < 1:
            raise DtcondError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise DtcondError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.relabel not in RELABELS:
            raise DtcondError(f"relabel must be one of {', '.join(RELABELS)}, got {self.relabel!r}")
        if self.relabel != "none" and not self.condition_on_return:
            raise DtcondError(f"relabel={self.relabel} relabels the returns a DT conditions on; BC and %BC "
                              "(condition_on_return=false) condition on none")


@dataclass
class CollectConfig:
    """``dtcond collect``: the env group fills ``env``; the YAML derives the rest from it."""

    env: EnvConfig = field(default_factory=EnvConfig)
    dataset_id: str = MISSING  # conf/collect.yaml: dtcond/<env.name>/mixture-v0
    episodes: int = MISSING  # conf/collect.yaml: env.collect_episodes
    seed: int = 0
    overwrite: bool = False  # an existing dataset id is replaced only when true
    progress: bool = True
    datasets_path: Optional[str] = None
    behavior: List[Any] = MISSING  # conf/collect.yaml: env.behavior


@dataclass
class EvalConfig:
    """``dtcond eval``: roll one policy out at many target returns into a results table."""

    sampler: Dict[str, Any] = field(default_factory=dict)  # conf/sampler/*.yaml: grid | quantilizer | targets
    policy: str = MISSING  # a policy bundle folder, its card.json, or a Lightning .ckpt
    episodes: int = 10  # per target
    seed: int = 0
    greedy: bool = False  # discrete actions: false samples (imitates the data), true takes the argmax
    temperature: float = 1.0
    batch_size: int = 256  # episodes rolled out together
    decode: str = "cached"  # cached: step by step with the key/value cache; window: recompute the last K steps
    env_id: Optional[str] = None  # None: the env in the policy's card
    results: str = "outputs/eval/results.jsonl"
    run_id: str = ""  # conf/eval.yaml: the sampler's name
    report: bool = True  # write calibration metrics and a plot next to the results table
    roaming: bool = True  # score episodes against the data: behaviour-model NLL/KL, novelty, entropy
    data_rows: bool = True  # add the dataset's own episodes to the table (policy kind "data")
    progress: bool = True
    datasets_path: Optional[str] = None

    def __post_init__(self):
        if self.episodes < 1:
            raise DtcondError(f"episodes must be >= 1, got {self.episodes}")
        if self.decode not in ("cached", "window"):
            raise DtcondError(f"decode must be 'cached' or 'window', got {self.decode!r}")


def check_hyperparams(value, key: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise DtcondError(f"{key} must be a mapping of SB3 keyword arguments, e.g. '{key}={{learning_rate: 3e-4}}', got {value!r}")


@dataclass
class BaselineConfig:
    """``dtcond baseline``: online RL (SB3 PPO or SAC) on the env a dataset came from."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algo: str = "ppo"  # ppo | sac (continuous actions only)
    budget: Optional[int] = None  # env steps; None: RL Baselines3 Zoo's tuned budget for the env
    checkpoints: int = 5  # saved and exported as policy bundles, evenly over training
    # SB3 keyword arguments over the tuned defaults (n_envs too): a mapping, or None. Typed Any because
    # Hydra can merge an override such as 'hyperparams={learning_rate: 3e-4}' into neither a None
    # Optional[Dict] nor a struct Dict default; the mapping is checked when the command reads it.
    hyperparams: Any = None
    # Regularized PPO: a registered family (dtcond.families: ppo_kl toward the data's behaviour model β̂, ppo_kl_bc
    # toward a BC policy given as reference, ppo_om (ORPO), ppo_lag (PPO-Lagrangian, for envs that report
    # info["cost"])) trained at its parameter param (β, λ, or the cost limit d), from bc_init_steps of behaviour
    # cloning on the data (dtcond/rl/baselines.py); null: plain RL
    regularizer: Optional[str] = None
    param: Optional[float] = None
    reference: Optional[str] = None  # the policy bundle ppo_kl_bc regularizes toward
    options: Any = None  # the family's fixed options, e.g. {lambda_lr: 0.05, lambda_init: 0} for ppo_lag
    bc_init_steps: int = 2000
    seed: int = 0
    progress: bool = True
    evaluate: bool = True  # roll every checkpoint out into the results table
    greedy: bool = False  # act by the policy's mode; False samples, as it was trained and as the DT does
    episodes: int = 20
    results: str = "outputs/eval/results.jsonl"
    roaming: bool = True  # score episodes against the data
    datasets_path: Optional[str] = None

    def __post_init__(self):
        if self.evaluate and self.episodes < 1:
            raise DtcondError(f"episodes must be >= 1, got {self.episodes}")
        check_hyperparams(self.hyperparams, "hyperparams")
        _at_least("", bc_init_steps=(self.bc_init_steps, 0))
        if self.regularizer is None and (self.param is not None or self.reference is not None or self.options):
            raise DtcondError("param, reference and options belong to a regularized run: set regularizer=<family> (e.g. ppo_kl)")
        if self.regularizer is not None and self.algo != "ppo":
            raise DtcondError(f"regularizer={self.regularizer}: regularized RL needs algo=ppo, got algo={self.algo}")
        if self.regularizer is not None and self.param is None:
            raise DtcondError(f"regularizer={self.regularizer} needs its parameter: param=<value>")
        if self.options is not None and not isinstance(self.options, Mapping):
            raise DtcondError(f"options must be a mapping such as {{lambda_lr: 0.05}}, got {self.options!r}")

@dataclass
class ReportConfig:
    """``dtcond report``: calibration metrics, plot and markdown from a results table."""

    results: str = "outputs/eval/results.jsonl"
    out_dir: Optional[str] = None  # None: beside the results table


RL_ALGOS = ("ppo", "sac")  # the SB3 algorithms dtcond trains (dtcond/rl/baselines.py)
ORACLE_FAMILIES = ("quantilizer", "plan_quantilizer", "best_of_n", "posterior")  # dtcond/analysis/oracles.py


@dataclass
class BcConfig:
    """Behaviour cloning beside the DT in a comparison: the DT's network and loop with returns switched off."""

    enabled: bool = True  # plain BC on every episode: the data's own behaviour, as a policy
    steps: Optional[int] = None  # BC and %BC training steps; None: trainer.max_steps
    top_fractions: List[float] = field(default_factory=list)  # %BC(q): BC on the top-q fraction of episodes by return

    def __post_init__(self):
        if self.steps is not None:
            _at_least("bc", steps=(self.steps, 1))
        _distinct("bc.top_fractions", self.top_fractions, lambda q: 0 < q <= 1, "in (0, 1]")


@dataclass
class RlConfig:
    """Online RL in a comparison (SB3, dtcond/rl/baselines.py): plain, and regularized PPO, each run on the same budget."""

    algo: Optional[str] = "ppo"  # ppo | sac | null (no plain RL run; regularized runs are PPO either way)
    budget: Optional[int] = None  # env steps per run; None: RL Baselines3 Zoo's tuned budget for the env
    checkpoints: int = 4  # the plain run's checkpoints, evenly over training, each rolled out
    hyperparams: Any = None  # SB3 keyword arguments over the tuned defaults (see BaselineConfig.hyperparams)
    # Regularized PPO, one run per parameter: a registered family (dtcond.families) -> its parameters, e.g.
    # {ppo_kl: [1, 3]}: PPO-KL toward the data's behaviour model β̂ per β; ppo_kl_bc toward the seed's BC policy per β
    # (needs bc.enabled); ppo_om (ORPO) per λ; ppo_lag (PPO-Lagrangian) per cost limit d
    # (typed Any inside: OmegaConf does not convert the ints of a nested list to floats; the checks below do)
    regularized: Dict[str, Any] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)  # a family's fixed options: {ppo_lag: {lambda_lr: 0.05}}
    bc_init_steps: int = 2000  # behaviour-cloning steps the regularized runs start from (0: from scratch)
    greedy: bool = False  # act by the policy's mode; False samples, as it was trained and as the DT does

    def __post_init__(self):
        if self.algo is not None and self.algo not in RL_ALGOS:
            raise DtcondError(f"rl.algo must be one of {', '.join(RL_ALGOS)} or null (no RL), got {self.algo!r}")
        if self.budget is not None:
            _at_least("rl", budget=(self.budget, 1))
        _at_least("rl", checkpoints=(self.checkpoints, 1), bc_init_steps=(self.bc_init_steps, 0))
        check_hyperparams(self.hyperparams, "rl.hyperparams")
        for kind, values in self.regularized.items():
            if isinstance(values, (str, Mapping)) or not hasattr(values, "__iter__"):
                raise DtcondError(f"rl.regularized.{kind} must be a list of parameters, e.g. [1, 3], got {values!r}")
            numbers = [_number(f"rl.regularized.{kind}", v) for v in values]
            _distinct(f"rl.regularized.{kind}", numbers, math.isfinite, "finite numbers")
            self.regularized[kind] = numbers
            if numbers and self.algo not in ("ppo", None):  # they share budget and hyperparams with the plain run
                raise DtcondError(f"rl.regularized.{kind}: regularized RL needs algo=ppo (or null: no plain run), got algo={self.algo}")
        for kind, options in self.options.items():
            if not isinstance(options, Mapping):
                raise DtcondError(f"rl.options.{kind} must be a mapping of option -> number, e.g. {{lambda_lr: 0.05}}, got {options!r}")
            self.options[kind] = {k: _number(f"rl.options.{kind}.{k}", v) for k, v in options.items()}

    @property
    def runs(self) -> list[tuple[str, float]]:
        """(family kind, parameter) of each regularized run, as the config lists them."""
        return [(kind, float(p)) for kind, values in self.regularized.items() for p in values]

@dataclass
class FinetuneConfig:
    """RL fine-tuning of a trained transformer (dtcond/rl/finetune.py): RLOO on the observed reward with a per-step
    KL penalty toward its frozen pretrained copy, one run per β; and one unregularized run whose snapshots stop at
    KL thresholds. Off while both lists are empty."""

    betas: List[float] = field(default_factory=list)  # β > 0 of the penalized runs: E[R] − β·KL(p_π‖p_prior)
    thresholds: List[float] = field(default_factory=list)  # nats/episode: early-stopped snapshots of the unregularized run
    prior: str = "bc"  # the pretrained model: the seed's plain BC transformer
    updates: int = 200  # policy-gradient updates per run
    episodes: int = 32  # on-policy episodes per update (the leave-one-out group)
    lr: float = 1e-4  # Adam's step size; the loss is in units of the data's return scale
    max_grad_norm: float = 1.0
    check_every: int = 10  # updates between held-out KL checks (early stopping, resume points)
    check_episodes: int = 64  # held-out episodes per check
    prior_pool: int = 1000  # the prior's own episodes per seed, for the posterior's normalizer Z (a comparison with betas)

    def __post_init__(self):
        _at_least("finetune", updates=(self.updates, 1), episodes=(self.episodes, 2), check_every=(self.check_every, 1),
                  check_episodes=(self.check_episodes, 2), prior_pool=(self.prior_pool, 2))
        self.betas = [_number("finetune.betas", b) for b in self.betas]
        self.thresholds = [_number("finetune.thresholds", t) for t in self.thresholds]
        _distinct("finetune.betas", self.betas, lambda b: 0 < b < math.inf, "finite and > 0")
        _distinct("finetune.thresholds", self.thresholds, lambda t: 0 < t < math.inf, "finite and > 0")
        if self.prior != "bc":
            raise DtcondError(f"finetune.prior must be 'bc' (the seed's BC transformer), got {self.prior!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not self.max_grad_norm > 0:
            raise DtcondError(f"finetune.lr and finetune.max_grad_norm must be positive, got {self.lr}, {self.max_grad_norm}")

    @property
    def enabled(self) -> bool:
        return bool(self.betas or self.thresholds)


@dataclass
class OracleConfig:
    """Oracle references resampled from the behaviour mixture itself (dtcond/analysis/oracles.py): per training seed, a pool of
    behaviour episodes and each oracle drawn from it. Off while every family's list is empty."""

    pool: int = 500  # behaviour episodes per pool
    draws: int = 100  # episodes drawn per oracle and pool
    quantilizer: List[float] = field(default_factory=list)  # q in (0, 1]: the data restricted to its top-q returns
    plan_quantilizer: List[float] = field(default_factory=list)  # q in (0, 1]: the top-q of whole plans
    best_of_n: List[int] = field(default_factory=list)  # n >= 1: the best of n behaviour episodes
    posterior: List[float] = field(default_factory=list)  # β > 0: p_data(τ)·exp(R/β), KL-regularized RL's optimum

    def __post_init__(self):
        _at_least("oracles", pool=(self.pool, 2), draws=(self.draws, 2))
        _distinct("oracles.quantilizer", self.quantilizer, lambda q: 0 < q <= 1, "in (0, 1]")
        _distinct("oracles.plan_quantilizer", self.plan_quantilizer, lambda q: 0 < q <= 1, "in (0, 1]")
        _distinct("oracles.best_of_n", self.best_of_n, lambda n: n >= 1, ">= 1")
        _distinct("oracles.posterior", self.posterior, lambda b: 0 < b < math.inf, "finite and > 0")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f) for f in ORACLE_FAMILIES)


@dataclass
class ComparisonEvalConfig:
    """How a comparison rolls its policies out: every policy meets the same env seeds."""

    episodes: int = 20  # per policy and target
    seed: int = 1000  # the first env seed; episode i of every policy and target uses seed + i
    roaming: bool = True  # score each episode's divergence from the data (and the data's own episodes)

    def __post_init__(self):
        _at_least("eval", episodes=(self.episodes, 1))


def _default_targets() -> list:
    return [{"name": "grid"}, {"name": "quantilizer", "qs": [0.5, 0.25, 0.1]}]


@dataclass
class ComparisonConfig:
    """``dtcond demo``, the experiments and :func:`dtcond.run_comparison`: one dataset; per training seed a DT, BC,
    %BC and online RL; every policy rolled out on shared env seeds; the report.

    The sections are the ones ``dtcond train`` and ``dtcond baseline`` take, so each default is written once.

    >>> cfg = merge(ComparisonConfig, {"env": {"name": "cartpole", "id": "CartPole-v1"}, "work_dir": "runs/compare",
    ...                                "trainer": {"max_steps": 200}, "bc": {"top_fractions": [0.1]}, "rl": {"budget": 10000}})
    >>> cfg.dataset, cfg.seeds, cfg.eval.seed, cfg.bc.steps or cfg.trainer.max_steps
    ('dtcond/cartpole/mixture-v0', [0], 1000, 200)
    """

    env: EnvConfig = field(default_factory=EnvConfig)  # the env the dataset is collected in, and its behaviour mixture
    dataset_id: Optional[str] = None  # the local Minari dataset, collected when missing; None: dtcond/<env.name>/mixture-v0
    data_seed: int = 0  # the collection seed
    work_dir: str = "outputs/comparison"  # training runs, the episode table and the report
    seeds: List[int] = field(default_factory=lambda: [0])  # training seeds: each trains its own DT, BC, %BC and RL
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint_every: Optional[int] = None  # DT steps between last.ckpt saves; None: at the end only
    bc: BcConfig = field(default_factory=BcConfig)
    relabel: List[str] = field(default_factory=list)  # also a DT on relabelled returns per method (esper), labelled dt:<method>
    esper: EsperConfig = field(default_factory=EsperConfig)
    rl: RlConfig = field(default_factory=RlConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # RL fine-tuning of each seed's BC transformer
    # The DT's targets: spec strings (q0.9, x1.5, quantilizer:0.1), numbers, or sampler dicts ({name: grid, n: 7}).
    targets: List[Any] = field(default_factory=_default_targets)
    eval: ComparisonEvalConfig = field(default_factory=ComparisonEvalConfig)
    oracles: OracleConfig = field(default_factory=OracleConfig)  # needs eval.roaming and a dataset that recorded its behaviour
    report: bool = True  # write the markdown report and plots
    name: str = "comparison"  # run id prefix in the episode table
    fresh: bool = False  # remake the dataset and everything under work_dir the pipeline made
    progress: bool = True
    datasets_path: Optional[str] = None  # CLI: default $MINARI_DATASETS_PATH, else ~/.minari/datasets

    def __post_init__(self):
        check_dataset_id(self.dataset)
        if not self.seeds:
            raise DtcondError("seeds is empty: give at least one training seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise DtcondError(f"seeds must be distinct, got {list(self.seeds)}")
        if self.checkpoint_every is not None:
            _at_least("", checkpoint_every=(self.checkpoint_every, 1))
        bad = [m for m in self.relabel if m not in RELABELS or m == "none"]
        if bad or len(set(self.relabel)) != len(self.relabel):
            raise DtcondError(f"relabel must list distinct methods from {', '.join(m for m in RELABELS if m != 'none')}, "
                              f"got {list(self.relabel)}")
        if self.finetune.enabled and not self.bc.enabled:
            raise DtcondError("finetune.betas / finetune.thresholds fine-tune each seed's BC transformer: they need bc.enabled=true")
        if self.oracles.enabled and not self.eval.roaming:
            raise DtcondError("oracles need eval.roaming=true: their divergence is scored by the data's likelihood")
        if not self.targets:
            raise DtcondError("targets is empty: the DT needs at least one target, e.g. [q0.5, q0.9, x1.5]")
        for t in self.targets:
            if isinstance(t, dict):
                if not ({"name", "target", "targets"} & set(t)):
                    raise DtcondError(f"target sampler {t!r} needs a name (grid, quantilizer), target or targets")
            else:
                parse(t)  # a typo fails here, before any training

    @property
    def dataset(self) -> str:
        """The dataset id: ``dataset_id``, or ``dtcond/<env.name>/mixture-v0``."""
        return self.dataset_id or f"dtcond/{self.env.name}/mixture-v0"



@dataclass
class FinetuneCommandConfig:
    """``dtcond finetune``: RL fine-tuning of a BC transformer (a bundle of ``dtcond train condition_on_return=false``) on
    its env's observed reward, KL-penalized toward its frozen copy (dtcond/rl/finetune.py); each policy it writes evaluated."""

    policy: str = MISSING  # the BC policy bundle to start from (the prior)
    beta: float = 0.0  # the KL penalty's β; 0: unregularized (with finetune.thresholds: early-stopped snapshots)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # updates, episodes, lr, thresholds, checks
    seed: int = 0
    progress: bool = True
    evaluate: bool = True  # roll the final policy and each snapshot out into the results table
    episodes: int = 20
    results: str = "outputs/eval/results.jsonl"
    roaming: bool = True  # score episodes against the data (and against the prior: log_ratio_prior)
    datasets_path: Optional[str] = None

    def __post_init__(self):
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise DtcondError(f"beta must be a finite number >= 0 (0: unregularized), got {self.beta}")
        if self.finetune.betas:
            raise DtcondError("finetune.betas lists a comparison's runs; this command trains one: beta=<value>")
        if self.evaluate:
            _at_least("", episodes=(self.episodes, 1))


COMMANDS = {"train": TrainConfig, "collect": CollectConfig, "eval": EvalConfig, "baseline": BaselineConfig,
            "finetune": FinetuneCommandConfig, "report": ReportConfig, "demo": ComparisonConfig}


# ----------------------------------------------------------------------------------------------
# Building and checking


def register_schemas() -> None:
    """Store each command's dataclass in Hydra's ConfigStore as ``base_<command>`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    for command, schema in COMMANDS.items():
        store.store(name=f"base_{command}", node=schema)
    # ${dtcond.run:${algo},${regularizer},${param}}: a run folder's name, "ppo" or "ppo_kl10" (conf/baseline.yaml)
    if not OmegaConf.has_resolver("dtcond.run"):
        OmegaConf.register_new_resolver("dtcond.run", lambda algo, family, param: algo if family is None else f"{family}{param:g}")


def _keyed_cause(exc: BaseException) -> BaseException:
    """The OmegaConf error under Hydra's wrappers: the first in the chain that names its key."""
    cause = exc
    while cause.__cause__ is not None and getattr(cause, "full_key", None) is None:
        cause = cause.__cause__
    return cause


def schema_error(exc: BaseException) -> str | None:
    """One line for a wrong type or an unknown key under a dataclass schema; None for any other error."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = _keyed_cause(exc)
    key, schema = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
    if not key:
        return None
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and is_dataclass(schema):
        return f"unknown config key {key}; {schema.__name__} takes: {', '.join(f.name for f in fields(schema))}"
    if isinstance(cause, ValidationError):
        return f"config key {key}: {_first_line(cause)}"
    return None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).strip().splitlines() if line.strip()), type(exc).__name__)


def error_line(exc: BaseException) -> str:
    """An OmegaConf/Hydra error as one line that names the key where it can."""
    typed = schema_error(exc)
    if typed:
        return typed
    cause = _keyed_cause(exc)
    key = getattr(cause, "full_key", None)
    return f"config key {key}: {_first_line(cause)}" if key else _first_line(cause)


def merge(schema, *overrides):
    """``schema``'s defaults with each override (a dataclass instance or a nested plain dict) merged on, as a ``schema``.

    Values are type-checked and converted as Hydra does for the CLI; a problem is one :class:`DtcondError` line.

    >>> merge(DataConfig, {"batch_size": "32"}).batch_size
    32
    >>> merge(DataConfig, {"batch_sise": 32})
    Traceback (most recent call last):
    ...
    dtcond.common.errors.DtcondError: unknown config key batch_sise; DataConfig takes: segment_len, batch_size, ...
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), *(o for o in overrides if o is not None))
        return OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise DtcondError(error_line(exc)) from None


def env_preset(name: str) -> EnvConfig:
    """The env and behaviour mixture of ``conf/env/<name>.yaml`` (``env=<name>`` on the command line) as an
    :class:`EnvConfig`.

    >>> env_preset("gamble").id, env_preset("gamble").collect_episodes
    ('dtcond/Gamble-v0', 1000)
    >>> env_preset("gambel")
    Traceback (most recent call last):
    ...
    dtcond.common.errors.DtcondError: unknown env preset 'gambel'; choose from cartpole, gamble, hazard_grid, hopper_cost, ...
    """
    import yaml

    path = conf_dir() / "env" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir() / "env").glob("*.yaml"))
        raise DtcondError(f"unknown env preset {name!r}; choose from {', '.join(known)}")
    return merge(EnvConfig, yaml.safe_load(path.read_text()))


def from_hydra(cfg):
    """A composed Hydra config, whose schema is one of this module's dataclasses, as that dataclass, checked.

    Converting through plain values catches what composing lets through: a key Hydra appended
    (``+model.widht=3``) to a node the schema closes.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.get_type(cfg)
    if not is_dataclass(schema):
        raise DtcondError(f"config has no schema (type {schema.__name__}); its defaults list must start with base_<command>")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise DtcondError(error_line(exc)) from None
    return merge(schema, plain)

def override_error(config_dir: Path, config_name: str, args: list[str], hint: str, extra: list[str] = (),
                   check=None) -> str | None:
    """Compose ``config_name`` with the command line ``args``; a one-line message if that fails, else None.

    Multiruns (-m) and Hydra's own flags are left to Hydra, which expands sweeps itself. ``extra``
    overrides are applied too but are not the user's (e.g. a search path). ``check(config)``, if given, runs
    on the typed config too (a check of a layer above this one, such as the pipeline's family checks).
    """
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in args):
        return None
    overrides = [*extra, *(a for a in args if not a.lstrip("+~").startswith("hydra"))]
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        if is_dataclass(OmegaConf.get_type(cfg)):
            typed = from_hydra(cfg)  # the dataclass's own checks (ranges, cross-field rules) too, before Hydra makes a run dir
            if check is not None:
                check(typed)
    except DtcondError as exc:
        return str(exc)
    except (HydraException, OmegaConfBaseException) as exc:
        typed = schema_error(exc)  # a wrong type or unknown key under a dataclass schema
        if typed:
            return typed
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        message = lines[0].rstrip(".")
        at = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
        if at is not None:
            options = []
            for line in lines[at + 1:]:
                if line.endswith(":"):
                    break
                options.append(line)
            message += f" (available: {', '.join(options)})"
        elif any(line.startswith("To append to your config use +") for line in lines):
            # a mapping the config sets: Hydra merges into it, and a key it does not have yet needs a leading +
            key = re.search(r"'([^']+)'", message)
            example = f" (e.g. +{key.group(1)}.<key>=...)" if key else ""
            message += f"; a key it does not set yet takes a leading +{example}; {hint}"
        else:
            message += f"; {hint}"
        return message
    return None
