"""Typed schemas for each command's config, checked before any work.

The YAML files in ``conf/`` stay the place where defaults live; these dataclasses only say what type
each key must have. ``validate(command, cfg)`` merges the composed config onto its schema, so
``episodes=abc`` or ``trainer.max_steps=[1]`` fails at startup with the key named, not an hour in.
Sections users extend freely (env kwargs, behaviour lists, SB3 hyperparameters, Lightning trainer
arguments) are typed as open dicts/lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from dtcond.errors import DtcondError


@dataclass
class EnvSchema:
    name: str = "?"
    id: str = "?"
    kwargs: dict = field(default_factory=dict)
    max_episode_steps: Optional[int] = None
    collect_episodes: int = 1
    behavior: list = field(default_factory=list)


@dataclass
class DatasetSchema:
    name: str = "?"
    id: str = "?"
    gamma: float = 1.0


@dataclass
class ModelSchema:
    context_len: int = 20
    n_layer: int = 3
    n_head: int = 1
    n_embd: int = 128
    dropout: float = 0.1
    max_timestep: Optional[int] = None
    return_scale: Optional[float] = None


@dataclass
class DataSchema:
    segment_len: Optional[int] = None
    batch_size: int = 64
    steps_per_epoch: int = 250
    val_windows: int = 512
    val_fraction: float = 0.1
    num_workers: int = 0


@dataclass
class OptimSchema:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class RolloutsSchema:
    every_n_steps: int = 0
    targets: list = field(default_factory=list)
    episodes: int = 4


@dataclass
class CollectSchema:
    env: EnvSchema = field(default_factory=EnvSchema)
    dataset_id: str = "?"
    episodes: int = 1
    seed: int = 0
    overwrite: bool = False
    progress: bool = True
    datasets_path: Optional[str] = None
    behavior: list = field(default_factory=list)


@dataclass
class TrainSchema:
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: dict = field(default_factory=dict)
    experiment: Any = None
    seed: int = 0
    condition_on_return: bool = True
    top_fraction: Optional[float] = None
    checkpoint_every: int = 250
    resume: bool = True
    datasets_path: Optional[str] = None
    data: DataSchema = field(default_factory=DataSchema)
    rollouts: RolloutsSchema = field(default_factory=RolloutsSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)


@dataclass
class EvalSchema:
    sampler: dict = field(default_factory=dict)
    policy: str = "?"
    episodes: int = 10
    seed: int = 0
    greedy: bool = False
    temperature: float = 1.0
    batch_size: int = 256
    decode: str = "cached"
    env_id: Optional[str] = None
    results: str = "?"
    run_id: str = ""
    report: bool = True
    roaming: bool = True
    data_rows: bool = True
    progress: bool = True
    datasets_path: Optional[str] = None


@dataclass
class BaselineSchema:
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    algo: str = "ppo"
    budget: Optional[int] = None
    checkpoints: int = 5
    hyperparams: Optional[dict] = None
    seed: int = 0
    progress: bool = True
    evaluate: bool = True
    episodes: int = 20
    results: str = "?"
    roaming: bool = True
    datasets_path: Optional[str] = None


@dataclass
class ReportSchema:
    results: str = "?"
    out_dir: Optional[str] = None


@dataclass
class BcSchema:
    steps: int = 1000
    top_fractions: list = field(default_factory=list)


@dataclass
class DemoBaselineSchema:
    algo: str = "ppo"
    budget: Optional[int] = None
    checkpoints: int = 4
    hyperparams: Optional[dict] = None


@dataclass
class DemoSchema:
    env: EnvSchema = field(default_factory=EnvSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: dict = field(default_factory=dict)
    fresh: bool = False
    out_dir: str = "?"
    seed: int = 0
    datasets_path: Optional[str] = None
    progress: bool = True
    dataset_id: str = "?"
    episodes: int = 1
    behavior: list = field(default_factory=list)
    overwrite: bool = False
    data: DataSchema = field(default_factory=DataSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    checkpoint_every: int = 250
    bc: BcSchema = field(default_factory=BcSchema)
    baseline: DemoBaselineSchema = field(default_factory=DemoBaselineSchema)
    eval_episodes: int = 20
    grid: dict = field(default_factory=dict)
    quantilizer: dict = field(default_factory=dict)


SCHEMAS = {"collect": CollectSchema, "train": TrainSchema, "eval": EvalSchema, "baseline": BaselineSchema,
           "report": ReportSchema, "demo": DemoSchema}


def validate(command: str, cfg) -> None:
    """Raise a one-line :class:`DtcondError` naming the first key whose value has the wrong type."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = SCHEMAS.get(command)
    if schema is None:
        return
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    try:
        OmegaConf.merge(OmegaConf.structured(schema), plain)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        first = str(exc).strip().splitlines()[0]
        raise DtcondError(f"config key {key}: {first}" if key else first) from None
