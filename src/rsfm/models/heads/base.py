"""The head interface: a head owns its layers, its loss, its metrics and the sample keys it reads.

A task model is one encoder, an optional neck and any number of heads
(:class:`~rsfm.models.task_model.TaskModel`); the downstream module trains whatever heads a
recipe lists (``model.heads: {name: {class_path: ..., init_args: ...}}``) and knows nothing
about any of them. To add a task, write a :class:`Head` subclass, register it with
``@HEADS.register`` and name it in a recipe (see ``docs/extending.md``).

A head declares, as class attributes:

- :attr:`Head.image_keys`: the sample keys of the images whose features it takes (``image``;
  ``image_a`` and ``image_b`` for change detection);
- :attr:`Head.target_keys`: the other sample keys its loss and metrics read (``mask``,
  ``boxes``/``labels``, ``label``); the task checks the datamodule provides them;
- :attr:`Head.input`: ``"pyramid"`` (the neck's maps) or ``"pooled"`` (one vector per image);
- :attr:`Head.monitor`: the validation metric that selects checkpoints (higher is better);
- :attr:`Head.output_kind`: what ``rsfm predict`` writes for it.

and implements :meth:`Head.build` (layers, once the encoder's channels and the data's
classes are known), :meth:`Head.forward`, :meth:`Head.loss`, :meth:`Head.make_metrics`, and
optionally :meth:`Head.predict` (inference on whole images) and :meth:`Head.render`.

.. versionadded:: 0.2
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

if TYPE_CHECKING:
    from PIL import Image

    from rsfm.data.base import DataInfo
    from rsfm.models.task_model import TaskModel

__all__ = ["Features", "Head", "HeadMetrics", "share_trunk"]


@dataclass
class Features:
    """What the encoder (and neck) computed for one batch, per image key.

    Attributes:
        maps: image key → the neck's maps ``(B, C_i, H/s_i, W/s_i)``, finest first.
        pooled: image key → ``(B, D)`` pooled encoder features.
        sizes: ``(H, W)`` of every image before padding (images are padded at the bottom and
            right to what the encoder needs: a multiple of a ViT's patch, one batch size for
            lists of different sizes).
        shape: ``(H, W)`` of the (padded) batch tensor.
    """

    maps: dict[str, list[Tensor]] = field(default_factory=dict)
    pooled: dict[str, Tensor] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)

    def crop(self, x: Tensor) -> Tensor:
        """Crop the last two dimensions of a padded output back to the images' size.

        For tensor batches (every image the same size, ``sizes[0]``); list batches of
        different sizes crop per image from :attr:`sizes`.
        """
        h, w = self.sizes[0] if self.sizes else self.shape
        return x[..., :h, :w]


class HeadMetrics(nn.Module, metaclass=abc.ABCMeta):
    """Interface of the metrics a head makes: accumulate over batches (and ranks), then score.

    ``update(preds, batch)`` adds a batch (``preds`` from :meth:`Head.predict`);
    ``compute()`` returns the scalars to log, in percent, under their plain names (``mIoU``,
    ``OA``...); ``report()`` returns the JSON-ready detail written to ``metrics.json``;
    ``reset()`` forgets. Subclasses keep their state in torchmetrics metrics (registered as
    submodules), so Lightning moves them to the device and syncs them across ranks.

    :attr:`names` lists the keys ``compute()`` returns; the task checks ``model.monitor``
    against them before training (an empty tuple: not declared, only the form is checked).
    """

    #: the scalar names ``compute()`` returns, e.g. ``("mIoU", "OA", "mF1")``
    names: tuple[str, ...] = ()

    @abc.abstractmethod
    def update(self, preds: Any, batch: Mapping[str, Any]) -> None:
        """Add one batch."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """Scalars to log (percent)."""

    def report(self) -> dict[str, Any]:
        """JSON-ready scores, per class where it applies (percent)."""
        return dict(self.compute())

    def reset(self) -> None:
        """Forget the accumulated batches."""
        for m in self.children():
            if hasattr(m, "reset"):
                m.reset()


class Head(nn.Module, metaclass=abc.ABCMeta):
    """Base of the task heads.

    Args:
        loss_weight: weight of this head's loss in the task's total loss (an auxiliary
            head uses less than 1, e.g. 0.4).
        evaluate: score this head on the validation and test splits (an auxiliary head is
            trained only).

    Subclasses add their own options to ``__init__`` (all plain values: they are the
    recipe's ``init_args`` and the checkpoint's hyper-parameters) and create layers in
    :meth:`build`.
    """

    #: sample keys of the images whose features this head takes
    image_keys: ClassVar[tuple[str, ...]] = ("image",)
    #: other sample keys this head's loss and metrics read
    target_keys: ClassVar[tuple[str, ...]] = ()
    #: ``"pyramid"`` (the neck's maps) or ``"pooled"`` (one vector per image)
    input: ClassVar[str] = "pyramid"
    #: validation metric that selects checkpoints (higher is better); None: none
    monitor: ClassVar[str | None] = None
    #: what ``rsfm predict`` writes for this head: ``mask``, ``change``, ``boxes``, ``obbs``, ``masks``, ``label``
    output_kind: ClassVar[str | None] = None
    #: dotted paths of the submodules that depend on the classes (the final predictors); in
    #: multi-task pretraining every other layer is shared between the heads of several
    #: datasets (:func:`share_trunk`)
    predictors: ClassVar[tuple[str, ...]] = ()

    def __init__(self, loss_weight: float = 1.0, evaluate: bool = True) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.evaluate = bool(evaluate)
        self.classes: list[str] = []
        self.info: DataInfo | None = None

    # -- construction -----------------------------------------------------------------------

    def build(self, in_channels: list[int], strides: list[int], info: DataInfo) -> None:
        """Create the layers.

        Args:
            in_channels: channels of the neck's maps (or ``[D]`` for a pooled head).
            strides: their strides, pixels (``[]`` for a pooled head).
            info: the datamodule's :class:`~rsfm.data.base.DataInfo` (classes, ignore index,
                crop size...).
        """
        self.info = info
        self.classes = list(info.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.classes)

    # -- training ---------------------------------------------------------------------------

    @abc.abstractmethod
    def forward(self, features: Features, batch: Mapping[str, Any] | None = None) -> Any:
        """Raw outputs (logits) of a batch's features."""

    @abc.abstractmethod
    def loss(self, features: Features, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Named, unweighted loss terms of one training batch (the task weights their sum)."""

    # -- evaluation -------------------------------------------------------------------------

    def predict(self, model: TaskModel, batch: Mapping[str, Any]) -> Any:
        """Predictions for whole evaluation samples (default: one forward pass).

        Heads trained on crops override this with sliding windows or tiles, running the
        whole model through ``model``.
        """
        return self(model.features(batch, self), batch)

    @abc.abstractmethod
    def make_metrics(self) -> HeadMetrics:
        """A fresh :class:`HeadMetrics` for this head."""

    def want_visual(self, batch: Mapping[str, Any], index: int, preds: Any) -> bool:
        """Whether to keep sample ``index`` of a test batch for the PNGs (default: yes)."""
        return True

    def render(self, batch: Mapping[str, Any], index: int, preds: Any) -> Image.Image | None:
        """A picture of sample ``index``: input, ground truth and prediction (None: nothing to draw)."""
        return None

    def save_visuals(self, panels: list[tuple[str, Image.Image]], folder: Any) -> list[Any]:
        """Write the rendered panels (``(sample id, image)``), one PNG each; returns the paths."""
        from pathlib import Path

        from rsfm.utils.files import atomic_write

        out = []
        for i, (sample_id, panel) in enumerate(panels):
            name = f"{i:02d}_{Path(str(sample_id)).stem}".replace(" ", "_")
            path = Path(folder) / f"{name}.png"
            out.append(atomic_write(path, lambda tmp, p=panel: p.save(tmp, format="PNG")))
        return out


def share_trunk(head: Head, source: Head) -> Head:
    """Make ``head`` use ``source``'s layers, except its own :attr:`Head.predictors`.

    MTP (Wang et al., "MTP: Advancing Remote Sensing Foundation Model via Multi-Task
    Pretraining", IEEE JSTARS 2024, §III-B) shares each decoder between the pretraining datasets
    and gives each dataset only its own final predictors (their class counts differ). Both heads
    must be of one class and built for the same pyramid; afterwards the shared submodules are
    the same objects (their parameters count and train once), and ``head`` keeps the modules
    named in its :attr:`~Head.predictors` (and any module on their path is descended into, so
    that its other children are shared).

    Args:
        head: the head that takes the shared layers (built).
        source: the head that owns them (built).

    Returns:
        ``head``.

    Raises:
        TypeError: if the heads are of different classes.
        ValueError: if a predictor path names no submodule of ``head``.
    """
    if type(head) is not type(source):
        raise TypeError(f"cannot share {type(source).__name__}'s layers with a {type(head).__name__}")
    names = dict(head.named_modules())
    missing = [p for p in head.predictors if p not in names]
    if missing:
        raise ValueError(f"{type(head).__name__}.predictors names no submodule: {missing}")

    def walk(dst: nn.Module, src: nn.Module, prefix: str) -> None:
        for name, child in src.named_children():
            path = f"{prefix}{name}"
            if path in head.predictors:
                continue
            if any(p.startswith(path + ".") for p in head.predictors):
                walk(dst.get_submodule(name), child, path + ".")
            else:
                setattr(dst, name, child)

    walk(head, source, "")
    return head
