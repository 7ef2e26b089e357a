"""Scene classification from class folders (``root/<class>/**/<image>``), e.g. AID, UC Merced, NWPU-RESISC45.

.. versionadded:: 0.2
"""

from __future__ import annotations

import copy
from typing import Any

from rsfm.data.folder import LabeledImageFolder
from rsfm.data.folder_base import FolderDataModule, combine_skipped, list_classes
from rsfm.data.splits import check_fraction, stratified_split
from rsfm.utils.errors import DataError
from rsfm.utils.registry import DATASETS

__all__ = ["SceneClassificationDataModule"]


def _subset(folder: LabeledImageFolder, positions: list[int], transform: Any) -> LabeledImageFolder:
    """A shallow copy of ``folder`` restricted to ``positions`` (its own sample lists)."""
    part = copy.copy(folder)
    part.samples = [folder.samples[i] for i in positions]
    part.groups = [folder.groups[i] for i in positions]
    part.transform = transform
    return part


@DATASETS.register
class SceneClassificationDataModule(FolderDataModule):
    """Class folders split three ways: train, val (checkpoint selection) and test (held out).

    - **test**: ``test_fraction`` of each class, chosen by ``split_seed`` and the class name
      (:class:`~rsfm.data.folder.LabeledImageFolder`). With the same ``test_fraction`` and
      ``split_seed`` (defaults 0.2 and 0) this is exactly the split ``rsfm pretrain``
      (:class:`~rsfm.data.pretrain.PretrainDataModule`) holds back on the same folder, at any
      depth, so an encoder pretrained by rsfm on it has never seen a test image; adding a
      class folder does not change the test images of the others.
    - **val**: ``val_fraction`` of each class of the remaining images, chosen likewise with
      seed ``split_seed + 1``; 0: no validation (the last checkpoint is tested).
    - **train**: the rest, augmented (random resized crop, flips) unless ``augment`` is off.

    Batches (:func:`~rsfm.data.skips.collate_skipping`): ``{'image': (B, C, S, S) float32 in
    [0, 1], 'label': (B,) int64, 'index': (B,) int64, 'skipped': list[(path, reason)]}``.

    Args:
        root: folder of class folders.
        val_fraction: share of each class's non-test images used for validation, 0 <= x < 1.
        augment: augment the training split (off: the evaluation transform in file order,
            for feature extraction).
        **kwargs: :class:`~rsfm.data.folder_base.FolderDataModule` options (``img_size``,
            ``test_fraction``, ``split_seed``, ``batch_size``, ``num_workers``, ``bands``,
            ``raster_scale``, ``mean``, ``std``, ``seed``, ``pin_memory``).

    Raises:
        DataError: if ``root`` is missing, holds no image or an image lies directly in it.
        ValueError: if a fraction is out of range.
    """

    sample_keys = ("image", "label")

    def __init__(self, root: str, val_fraction: float = 0.1, augment: bool = True, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        check_fraction(val_fraction, "data.val_fraction")
        if self.test_fraction <= 0:
            raise DataError("data.test_fraction must be positive: scene classification is tested on a held-out split")
        self.val_fraction = float(val_fraction)
        self.augment = bool(augment)
        #: class names, known right after construction
        self.classes = list_classes(self.root)

    def setup(self, stage: str | None = None) -> None:
        """Scan the folder and build the three splits, once."""
        if self.datasets:
            return
        from rsfm.data.transforms import eval_transform, finetune_transform

        evaluation = eval_transform(self.img_size)
        train_tf = finetune_transform(self.img_size) if self.augment else evaluation
        rest = self.folder(LabeledImageFolder, False, train_tf)
        self.classes = rest.classes
        self.datasets["test"] = self.folder(LabeledImageFolder, True, evaluation)
        if self.val_fraction > 0:
            names = [rest.classes[g] for g in rest.groups]
            train_pos, val_pos = stratified_split(names, self.val_fraction, self.split_seed + 1)
            self.datasets["train"] = _subset(rest, train_pos, train_tf)
            self.datasets["val"] = _subset(rest, val_pos, evaluation)
        else:
            self.datasets["train"] = rest

    def unaugmented_train(self) -> Any:
        """The training split under the evaluation transform (resize, no crop or flip), in file order.

        .. versionadded:: 0.3.3
        """
        from rsfm.data.transforms import eval_transform

        train = copy.copy(self._split("train"))  # the same sample lists, another transform
        train.transform = eval_transform(self.img_size)
        return train

    def train_dataloader(self) -> Any:
        """Training batches (shuffled when augmented, file order otherwise)."""
        ds = self._split("train")
        return self.loader(ds, train=self.augment)

    @property
    def scan_skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the files under root that are not samples (after setup)."""
        return combine_skipped(*(self.datasets.get(k) for k in ("train", "val", "test")))
