"""Hand an rsfm datamodule (a plain class) to Lightning.

.. versionadded:: 0.2
"""

from __future__ import annotations

from typing import Any

import lightning as L

from rsfm.data.base import DataModule

__all__ = ["LightningData"]


class LightningData(L.LightningDataModule):
    """A :class:`~lightning.pytorch.LightningDataModule` that delegates to an rsfm :class:`~rsfm.data.base.DataModule`.

    The wrapped datamodule gets the trainer (for rank and world size) when Lightning attaches
    this adapter; its loaders, ``setup``, ``scan_skipped`` and other attributes are reached
    through the adapter (``trainer.datamodule.viz_batch(...)`` works).

    Args:
        data: the rsfm datamodule.
    """

    def __init__(self, data: DataModule) -> None:
        self.data = data  # first: Lightning's __init__ sets ``trainer``, which is forwarded to it
        super().__init__()

    @property
    def trainer(self) -> Any:  # type: ignore[override]
        """The attached trainer (also handed to the wrapped datamodule)."""
        return self.data.trainer

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        self.data.trainer = trainer

    def setup(self, stage: str) -> None:
        """Build the datasets."""
        self.data.setup(stage)

    def train_dataloader(self) -> Any:
        """The training loader; its sampler learns the trainer's ``limit_train_batches``.

        With a limit, an epoch ends before the sampler's order does, and a run resumed from
        a checkpoint at that end must start the next epoch (see
        :attr:`rsfm.data.samplers.EpochSampler.keys_per_epoch`).
        """
        loader = self.data.train_dataloader()
        sampler = getattr(loader, "sampler", None)
        loop = getattr(self.trainer, "fit_loop", None)
        if hasattr(sampler, "set_epoch") and loop is not None:
            # Lightning makes the first iterator of a (resumed) fit before it sets the epoch
            # of the samplers: without this, a run resumed at an epoch's end would draw that
            # epoch's order again (and workers prefetch it at once)
            sampler.set_epoch(loop.epoch_progress.current.processed)
        limit = getattr(self.trainer, "limit_train_batches", None)
        if hasattr(sampler, "keys_per_epoch") and limit is not None and getattr(loader, "batch_size", None):
            batches = len(loader)
            if isinstance(limit, int):
                batches = min(batches, limit)
            elif limit < 1.0:
                batches = int(batches * limit)
            keys = batches * loader.batch_size
            sampler.keys_per_epoch = keys if sampler.keys_per_epoch is None else min(sampler.keys_per_epoch, keys)
        return loader

    def val_dataloader(self) -> Any:
        """The validation loader (``[]`` without a validation split)."""
        return self.data.val_dataloader()

    def test_dataloader(self) -> Any:
        """The test loader."""
        return self.data.test_dataloader()

    def predict_dataloader(self) -> Any:
        """The test loader."""
        return self.data.predict_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Let the datamodule finish the batch on the device, then move the rest there.

        See :meth:`~rsfm.data.base.DataModule.on_device` (``data.decode: device`` decodes images there).
        """
        batch = self.data.on_device(batch, device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data")
        if data is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(data, name)
