"""GeRSP: RS self-supervision boosted by natural-image supervision.

Huang et al., "Generic Knowledge Boosted Pre-training For Remote Sensing Images", IEEE TGRS
2024, arXiv 2401.04614. One student encoder learns, in the same step,

- domain features from unlabeled remote-sensing (RS) images: MoCo v2 contrast between a
  query view (student) and a key view (EMA teacher) against a queue of negative keys, and
- generic knowledge from labeled natural images: cross-entropy of a student classifier.

``L = L_con + α·L_ce`` (the paper's total loss). The student runs *once* per step on the concatenation
``[RS query views, natural images]`` so that BatchNorm statistics mix both domains; the
teacher only sees RS key views.

The pieces are small named functions, tested alone: :class:`NegativeQueue`,
:func:`ema_update`, :func:`info_nce`, :func:`build_projector`, :func:`concat_all_gather`,
:func:`batch_shuffle` / :func:`batch_unshuffle` (MoCo's shuffle-BN).

Backbones (``arch``):

- ``resnet50`` (the paper's): timm ResNet-50 from scratch, global-average-pooled 2048-d
  features; projector ``Linear(2048→2048) → ReLU → Linear(2048→128)`` (Huang et al. 2024).
- ``vit``: rsfm's ViT (:func:`rsfm.models.encoders.vit.build_vit`), class-token (or mean-pooled)
  ``D``-d features. Two details follow MoCo v3 (Chen, Xie & He, ICCV 2021), which made
  contrastive ViT training stable: BatchNorm after the projector's hidden layer (MoCo v3 §3,
  "BN in the MLP heads"; ``proj_bn``) and a frozen random patch embedding (MoCo v3 §4.2,
  "random patch projection"; ``freeze_patch_embed``). MoCo v3 drops the queue for very large
  batches; GeRSP keeps it, so rsfm keeps it for ViTs too.

Released-code defect: the authors' code EMA-updates only the teacher
backbone, so the teacher projector keeps its initial (random) weights. rsfm updates the
projector too (``ema_projector=True``); ``ema_projector=False`` reproduces the release. The
teacher starts as an exact copy of the student (MoCo), so "its initialisation" is the
student projector's initial weights.

.. versionadded:: 0.2
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.methods.base import PretrainMethod, StepContext
from rsfm.models.encoders.vit import VIT_SIZES, build_vit
from rsfm.utils.distributed import concat_all_gather, process_rank
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import METHODS

__all__ = [
    "GeRSP",
    "NegativeQueue",
    "batch_shuffle",
    "batch_unshuffle",
    "build_projector",
    "concat_all_gather",
    "ema_update",
    "info_nce",
]

ARCHS = ("resnet50", "vit")


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------


class NegativeQueue(nn.Module):
    """A first-in-first-out ring buffer of L2-normalised keys: MoCo's dictionary (MoCo §3.2).

    The buffers ``keys`` ``(K, dim)`` float32 and ``ptr`` ``()`` int64 live in the
    ``state_dict``, so a resumed run continues with the same negatives. Enqueueing ``n`` keys
    overwrites the ``n`` oldest (the dequeue), wrapping around the end; ``K`` need not be a
    multiple of the batch. The queue starts filled with random unit vectors, as in MoCo.

    Args:
        size: number of keys ``K``.
        dim: key width.
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of keys ``K``."""
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` ``(n, dim)`` over the ``n`` oldest entries and advance the pointer.

        With ``n > K`` only the last ``K`` keys are kept (the others would be overwritten
        within the same call).

        Raises:
            ValueError: if ``keys`` is not ``(n, dim)``.
        """
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be (n, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        n = keys.shape[0]
        if n == 0:
            return
        k = self.size
        start = int(self.ptr)
        if n > k:
            start, keys = (start + n - k) % k, keys[-k:]
            n = k
        rows = (start + torch.arange(n, device=self.keys.device)) % k
        self.keys[rows] = keys.detach().to(self.keys.dtype)
        self.ptr.fill_((start + n) % k)

    def negatives(self) -> Tensor:
        """A detached copy of the queued keys ``(K, dim)``.

        A copy, because autograd keeps the negatives of the loss for the backward pass and
        :meth:`enqueue` overwrites the buffer in place before it runs.
        """
        return self.keys.detach().clone()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1 − m)·θ_s`` for every parameter; buffers are copied (MoCo Eq. 2).

    Copying buffers (BatchNorm running statistics) keeps the teacher's evaluation-mode
    statistics those of the student's current weights.

    Args:
        teacher: updated in place; same structure as ``student``.
        student: the source.
        momentum: ``m`` in [0, 1]; 1 freezes the teacher, 0 copies the student.

    Raises:
        ValueError: if ``momentum`` is outside [0, 1] or the structures differ.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    tp, sp = list(teacher.parameters()), list(student.parameters())
    tb, sb = list(teacher.buffers()), list(student.buffers())
    if len(tp) != len(sp) or len(tb) != len(sb):
        raise ValueError("teacher and student have different structures")
    for t, s in zip(tp, sp, strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
    for t, s in zip(tb, sb, strict=True):
        t.copy_(s)


def info_nce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float = 0.07) -> tuple[Tensor, Tensor]:
    """MoCo v2's InfoNCE (Chen et al. 2020, as GeRSP uses it): ``−log( e^{q·k⁺/τ} / (e^{q·k⁺/τ} + Σ e^{q·k⁻/τ}) )``.

    Args:
        q: ``(B, d)`` float, L2-normalised queries (student).
        k: ``(B, d)`` float, L2-normalised positive keys (teacher); gradients are stopped.
        negatives: ``(K, d)`` float, L2-normalised negative keys (the queue).
        temperature: ``τ`` > 0.

    Returns:
        ``(loss, logits)``: the mean loss, a scalar; the ``(B, 1 + K)`` logits with the
        positive in column 0 (their argmax gives instance-discrimination accuracy).

    Raises:
        ValueError: on mismatched shapes or a non-positive temperature.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if q.ndim != 2 or q.shape != k.shape or negatives.ndim != 2 or negatives.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q, k (B, d) and negatives (K, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(negatives.shape)}"
        )
    pos = (q * k.detach()).sum(dim=1, keepdim=True)
    neg = q @ negatives.detach().to(q.dtype).t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), logits


def build_projector(in_dim: int, hidden_dim: int, out_dim: int = 128, bn: bool = False) -> nn.Sequential:
    """The 2-layer projection head: ``Linear(in→hidden) [→ BN] → ReLU → Linear(hidden→out)``.

    GeRSP's projector (MoCo v2's MLP head); ``bn`` adds MoCo v3's BatchNorm on the hidden layer.
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


@torch.no_grad()
def batch_shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, list[int]]:
    """MoCo's shuffle-BN, first half: gather all ranks' batches, permute, take a local slice.

    Every rank must pass a ``generator`` in the same state (rsfm seeds it from the run seed
    and the step), so all ranks draw the same permutation without a broadcast. Each rank then
    runs BatchNorm on a mix of samples from every rank, so the teacher's batch statistics no
    longer tell a query's positive key apart (MoCo §3.3). In one process this is a no-op
    permutation of the local batch: BatchNorm statistics are permutation-invariant and there
    is no other rank to leak across.

    Args:
        x: ``(n, ...)`` this rank's batch.
        generator: source of the shared permutation (CPU generator).

    Returns:
        ``(local (n', ...), order, sizes)``: this rank's slice of the shuffled global batch
        (``n' = n``), the global permutation, and every rank's size; pass the last two to
        :func:`batch_unshuffle`.
    """
    gathered, sizes = concat_all_gather(x)
    order = torch.randperm(gathered.shape[0], generator=generator).to(x.device)
    rank = process_rank()
    start = sum(sizes[:rank])
    return gathered[order[start : start + sizes[rank]]], order, sizes


@torch.no_grad()
def batch_unshuffle(y: Tensor, order: Tensor, sizes: list[int]) -> Tensor:
    """Shuffle-BN, second half: gather outputs of the shuffled batch, restore this rank's rows.

    Args:
        y: ``(n', ...)`` outputs for this rank's shuffled slice.
        order: the permutation from :func:`batch_shuffle`.
        sizes: every rank's batch size from :func:`batch_shuffle`.

    Returns:
        ``(n, ...)``: outputs in the order of this rank's original batch.
    """
    gathered, _ = concat_all_gather(y)
    restored = torch.empty_like(gathered)
    restored[order] = gathered
    rank = process_rank()
    start = sum(sizes[:rank])
    return restored[start : start + sizes[rank]]


# ----------------------------------------------------------------------------------------------
# the method
# ----------------------------------------------------------------------------------------------


def _build_backbone(
    arch: str, size: str, img_size: int, patch_size: int, in_chans: int, global_pool: str
) -> tuple[nn.Module, int]:
    if arch == "resnet50":
        import timm

        return timm.create_model("resnet50", pretrained=False, num_classes=0, in_chans=in_chans), 2048
    if arch == "vit":
        if global_pool not in ("token", "avg"):
            raise ConfigError(f"model.global_pool must be 'token' or 'avg', got {global_pool!r}")
        if size not in VIT_SIZES:
            raise ConfigError(f"model.size: unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
        vit = build_vit(size, img_size=img_size, patch_size=patch_size, in_chans=in_chans, global_pool=global_pool)
        return vit, VIT_SIZES[size].embed_dim
    raise ConfigError(f"model.arch: unknown backbone {arch!r}; expected one of {ARCHS}")


@METHODS.register
class GeRSP(PretrainMethod):
    """Student (backbone, projector, classifier) and EMA teacher (backbone, projector).

    Batches (:class:`rsfm.data.paired.PairedDataModule`) carry the RS query view ``image``,
    its key view ``image_key``, natural images ``natural`` and their ``natural_label``.

    Args:
        num_classes: natural-image classes ``K_nat`` (1000 for ImageNet); None: the data's
            (the class folders of ``data.natural_root``).
        arch: ``resnet50`` (the paper's) or ``vit``.
        size: ViT size (``tiny`` … ``large``); ignored for ResNet.
        img_size: input side in pixels (None: the data's).
        patch_size: ViT patch side in pixels.
        in_chans: input channels (None: the data's bands).
        global_pool: ViT feature: ``token`` (class token) or ``avg`` (mean patch token).
        proj_hidden: projector hidden width; None: the feature width (2048 for ResNet-50).
        proj_dim: projector output width (128).
        proj_bn: BatchNorm in the projector (None: on for ViT, off for ResNet, see the module
            docstring).
        freeze_patch_embed: keep the ViT patch embedding at its random initialisation (None:
            on for ViT).
        queue_size: number of negative keys (65,536).
        temperature: InfoNCE ``τ`` (0.07).
        momentum: EMA momentum ``m`` (0.999 in the released config).
        alpha: weight ``α`` of ``L_ce``; 0 gives MoCo only (natural images are then not
            forwarded, so they do not touch BatchNorm statistics either).
        contrastive: False drops ``L_con`` (natural supervision only; RS images unused).
        ema_projector: EMA-update the teacher projector (rsfm); False reproduces the released
            code, whose teacher projector never changes.

    Raises:
        ConfigError: on an unknown ``arch`` / ``global_pool``, or when both losses are off.
    """

    fsdp_unsupported: ClassVar[str | None] = (
        "its momentum teacher is updated from the student's weights after every step, and FSDP holds those "
        "weights sharded between steps; GeRSP's ResNet-50 and small ViTs fit one device, so use "
        "trainer.strategy=ddp"
    )

    sample_keys = ("image", "image_key", "natural", "natural_label")
    image_keys = ("image", "image_key", "natural")
    joins_collectives = True

    def __init__(
        self,
        num_classes: int | None = None,
        arch: str = "resnet50",
        size: str = "tiny",
        img_size: int | None = None,
        patch_size: int = 16,
        in_chans: int | None = None,
        global_pool: str = "token",
        proj_hidden: int | None = None,
        proj_dim: int = 128,
        proj_bn: bool | None = None,
        freeze_patch_embed: bool | None = None,
        queue_size: int = 65536,
        temperature: float = 0.07,
        momentum: float = 0.999,
        alpha: float = 1.0,
        contrastive: bool = True,
        ema_projector: bool = True,
    ) -> None:
        super().__init__()
        img_size, in_chans = int(img_size or 224), int(in_chans or 3)
        if num_classes is None or num_classes < 1:
            raise ConfigError(f"model.num_classes must be >= 1, got {num_classes}")
        if not contrastive and alpha <= 0:
            raise ConfigError("model.contrastive=false with model.alpha=0 leaves no loss to train")
        if temperature <= 0:
            raise ConfigError(f"model.temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"model.momentum must be in [0, 1], got {momentum}")
        self.arch, self.size, self.img_size, self.patch_size = arch, size, img_size, patch_size
        self.in_chans, self.global_pool = in_chans, global_pool
        self.temperature, self.momentum, self.alpha = temperature, momentum, alpha
        self.contrastive, self.ema_projector = contrastive, ema_projector
        self.encoder, self.feat_dim = _build_backbone(arch, size, img_size, patch_size, in_chans, global_pool)
        is_vit = arch == "vit"
        if (freeze_patch_embed if freeze_patch_embed is not None else is_vit) and is_vit:
            self.encoder.patch_embed.requires_grad_(False)  # MoCo v3 §4.2
        bn = proj_bn if proj_bn is not None else is_vit
        self.projector = build_projector(self.feat_dim, proj_hidden or self.feat_dim, proj_dim, bn=bn)
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        # A head without a loss gets no gradient; freezing it keeps DDP's reducer consistent.
        self.classifier.requires_grad_(alpha > 0)
        self.projector.requires_grad_(contrastive)
        self.teacher_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.queue = NegativeQueue(queue_size, proj_dim)

    # -- forward pieces -------------------------------------------------------------------
    def features(self, imgs: Tensor, teacher: bool = False) -> Tensor:
        """Pooled backbone features ``(B, feat_dim)`` of ``imgs`` ``(B, C, H, W)`` float32."""
        enc = self.teacher_encoder if teacher else self.encoder
        return enc.forward_head(enc.forward_features(imgs), pre_logits=True)

    @torch.no_grad()
    def keys(self, imgs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Teacher keys ``(B, proj_dim)`` float32, L2-normalised, computed under shuffle-BN.

        A rank whose batch is empty (every file unreadable) still joins the gathers of the
        shuffle, with no rows, so that the other ranks' collectives complete.
        """
        shuffled, order, sizes = batch_shuffle(imgs, generator)
        if shuffled.shape[0] == 0:
            k = imgs.new_zeros((0, self.queue.keys.shape[1]), dtype=torch.float32)
        else:
            k = F.normalize(self.teacher_projector(self.features(shuffled, teacher=True)).float(), dim=1)
        return batch_unshuffle(k, order, sizes)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """EMA step of the teacher after an optimiser step (the projector only if ``ema_projector``)."""
        ema_update(self.teacher_encoder, self.encoder, self.momentum)
        if self.ema_projector:
            ema_update(self.teacher_projector, self.projector, self.momentum)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        natural: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """One GeRSP step's losses (Huang et al. 2024); the keys are enqueued afterwards.

        Args:
            query: ``(B, C, H, W)`` float32, normalised: RS query views (student).
            key: ``(B, C, H, W)`` float32: the other view of the same RS images (teacher).
            natural: ``(B_n, C, H, W)`` float32: natural images.
            labels: ``(B_n,)`` int64 natural-image classes in ``[0, num_classes)``.
            generator: CPU generator for the shuffle-BN permutation, in the same state on
                every rank.

        Returns:
            ``loss`` (``L_con + α·L_ce``), ``loss_con``, ``loss_ce`` (0 when off),
            ``acc_natural`` and ``acc_con`` (top-1 of the classifier / of instance
            discrimination, in [0, 1]), all scalars, and ``keys`` ``(B, proj_dim)``: this
            rank's teacher keys (the queue received the keys of all ranks).
        """
        use_ce = self.alpha > 0
        if query.shape[0] == 0:
            return self._empty_step(key, generator)
        parts = ([query] if self.contrastive else []) + ([natural] if use_ce else [])
        feats = self.features(torch.cat(parts) if len(parts) > 1 else parts[0])  # one student pass
        b = query.shape[0] if self.contrastive else 0
        zero = feats.new_zeros(())
        out: dict[str, Tensor] = {"loss_con": zero, "loss_ce": zero, "acc_con": zero, "acc_natural": zero}
        if self.contrastive:
            q = F.normalize(self.projector(feats[:b]), dim=1)
            k = self.keys(key, generator)
            loss_con, logits = info_nce(q.float(), k, self.queue.negatives(), self.temperature)
            out.update(loss_con=loss_con, acc_con=(logits.argmax(1) == 0).float().mean(), keys=k)
            self.queue.enqueue(concat_all_gather(k)[0])  # after the loss: MoCo Alg. 1
        if use_ce:
            logits_nat = self.classifier(feats[b:]).float()
            out["loss_ce"] = F.cross_entropy(logits_nat, labels)
            out["acc_natural"] = (logits_nat.argmax(1) == labels).float().mean()
        out["loss"] = out["loss_con"] + self.alpha * out["loss_ce"]
        return out

    def _empty_step(self, key: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        """A rank with no readable pair: join the key gathers (shuffle-BN, queue) with no rows.

        The loss is a zero that touches every trainable parameter, so the rank also joins the
        gradient all-reduce and averages zeros into the step (as MAE's empty rank does).
        """
        if self.contrastive:
            k = self.keys(key, generator)
            self.queue.enqueue(concat_all_gather(k)[0])
        zero = sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), key.new_zeros(()))
        return {
            "loss": zero,
            "loss_con": zero.detach(),
            "loss_ce": zero.detach(),
            "acc_con": zero.detach(),
            "acc_natural": zero.detach(),
        }

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Tensor]:
        """``L_con + α·L_ce`` of one paired batch (shuffle-BN from the shared generator)."""
        out = self(batch["image"], batch["image_key"], batch["natural"], batch["natural_label"], ctx.shared_generator)
        out.pop("keys", None)
        return out

    def after_optimizer_step(self) -> None:
        """The teacher's EMA step."""
        self.update_teacher()

    def export_meta(self) -> dict[str, Any]:
        """Metadata to rebuild the student backbone (see :func:`rsfm.models.export.export_encoder`)."""
        if self.arch == "vit":
            return {
                "arch": "vit",
                "size": self.size,
                "img_size": self.img_size,
                "patch_size": self.patch_size,
                "in_chans": self.in_chans,
                "global_pool": self.global_pool,
            }
        return {"arch": self.arch, "img_size": self.img_size, "in_chans": self.in_chans}
