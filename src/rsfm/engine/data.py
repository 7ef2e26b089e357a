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
        """The training loader; its samplers learn the trainer's epoch and the batches an epoch takes.

        An epoch can end before a sampler's order does: ``limit_train_batches``, or the
        shortest of several loaders (MTP's one batch per subset). A run resumed from a
        checkpoint at that end must start the next epoch (see
        :attr:`rsfm.data.samplers.EpochSampler.keys_per_epoch`).
        """
        loader = self.data.train_dataloader()
        parts = list(getattr(loader, "flattened", None) or [loader])  # a CombinedLoader's loaders
        try:
            batches: int | None = min(len(part) for part in parts)
        except TypeError:  # a loader without a length (a stream)
            batches = None
        limit = getattr(self.trainer, "limit_train_batches", None)
        if batches is not None and isinstance(limit, int):
            batches = min(batches, limit)
        elif batches is not None and isinstance(limit, float) and limit < 1.0:
            batches = int(batches * limit)
        loop = getattr(self.trainer, "fit_loop", None)
        for part in parts:
            sampler = getattr(part, "sampler", None)
            if not hasattr(sampler, "keys_per_epoch"):
                continue
            if loop is not None:
                # Lightning makes the first iterator of a (resumed) fit before it sets the
                # samplers' epoch: without this, a run resumed at an epoch's end would draw that
                # epoch's order again (and workers would prefetch it at once)
                sampler.set_epoch(loop.epoch_progress.current.processed)
            if batches is not None and getattr(part, "batch_size", None):
                keys = batches * part.batch_size
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
