"""The Lightning side of the data layer: train/val batches of windows, split by episode."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from dtcond.config import DataConfig
from dtcond.datasets.loading import OfflineData, load
from dtcond.datasets.windows import WindowDataset, split_by_episode
from dtcond.common.errors import DtcondError

_DATA = DataConfig()  # the defaults below are the CLI's (conf/train.yaml's data section)


class WindowDataModule(L.LightningDataModule):
    """Windows of ``window_len`` steps from a local Minari dataset, split into train/val by episode.

    ``steps_per_epoch`` batches of ``batch_size`` fresh windows make one epoch; each batch is one
    vectorized gather (:class:`~dtcond.datasets.windows.WindowDataset`), so the loader's items are whole batches.
    With ``on_device`` and a CUDA trainer the episodes live on the GPU and batches are gathered
    there. Under DDP, Lightning's distributed sampler hands each rank different batch indices, so
    ranks draw different windows. The keyword defaults are :class:`dtcond.config.DataConfig`'s.

    >>> dm = WindowDataModule("dtcond/cartpole/mixture-v0", window_len=40)   # doctest: +SKIP
    >>> dm.setup(); batch = next(iter(dm.train_dataloader()))               # doctest: +SKIP
    """

    def __init__(
        self,
        dataset_id: str,
        window_len: int,
        batch_size: int = _DATA.batch_size,
        steps_per_epoch: int = _DATA.steps_per_epoch,
        val_windows: int = _DATA.val_windows,
        val_fraction: float = _DATA.val_fraction,
        num_workers: int = _DATA.num_workers,
        episode_weighting: str = _DATA.episode_weighting,
        on_device: bool = _DATA.on_device,
        seed: int = 0,
        data: OfflineData | None = None,
        frame_stack: int = 1,
        val_reference=None,
    ):
        super().__init__()
        self.dataset_id = dataset_id
        self.window_len = window_len
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.val_windows = val_windows
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.episode_weighting = episode_weighting
        self.on_device = on_device
        self.seed = seed
        self.data = data
        self.frame_stack = frame_stack  # image observations: frames per state (the model's frame_stack)
        # trajectory -> (T,) log p_data(a_t | h_t): the data's exact conditional, gathered beside each val window
        # as ``data_logp`` (see DTModule.validation_step); None for a dataset without recorded behaviour
        self.val_reference = val_reference
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            if self.data is None:
                self.data = load(self.dataset_id)
            trajs, stats = self.data.trajectories, self.data.stats
            train_idx, val_idx = split_by_episode(len(trajs), self.val_fraction, self.seed)
            self.train_set = WindowDataset(
                [trajs[i] for i in train_idx], stats, self.window_len, self.steps_per_epoch * self.batch_size, self.seed,
                self.episode_weighting, self.batch_size, self.frame_stack,
            )
            if len(val_idx):
                # A fixed set of windows (seed+1, epoch 0), so val loss is comparable across epochs.
                self.val_set = WindowDataset([trajs[i] for i in val_idx], stats, self.window_len, self.val_windows,
                                             self.seed + 1, batch_size=self.batch_size, frame_stack=self.frame_stack)
                if self.val_reference is not None:
                    logp = [np.asarray(self.val_reference(trajs[i]), dtype=np.float32) for i in val_idx]
                    self.val_set.fields["data_logp"] = torch.from_numpy(np.concatenate([*logp, np.zeros(1, np.float32)]))
        device = self.device
        if self.on_device and device.type == "cuda":
            if self.num_workers:
                raise DtcondError("data.on_device=true keeps the episodes on the GPU, where DataLoader workers cannot "
                                  "read them: set data.num_workers=0 or data.on_device=false")
            for dataset in (self.train_set, self.val_set):
                if dataset is not None:
                    dataset.to(device)

    @property
    def device(self) -> torch.device:
        """The device the attached trainer trains on (this rank's under DDP); CPU without a trainer."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    @property
    def stats(self):
        return self.data.stats if self.data is not None else None

    def _loader(self, dataset: WindowDataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=None,  # each item is already a batch
            shuffle=False,  # windows are already random draws; order is part of the seed
            num_workers=self.num_workers,
            # Page-locked batches copy to a GPU asynchronously; batches gathered on the GPU need no copy.
            pin_memory=dataset.device.type == "cpu" and self.device.type == "cuda",
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def val_dataloader(self):
        return self._loader(self.val_set) if self.val_set is not None else []

    def set_epoch(self, epoch: int) -> None:
        """Called at each train epoch start so every epoch draws fresh, reproducible windows."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)
