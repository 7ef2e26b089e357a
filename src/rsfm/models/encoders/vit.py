"""Vision Transformer encoders with fixed 2-D sin-cos position embeddings.

The encoder is timm's :class:`timm.models.vision_transformer.VisionTransformer`, so it answers
timm's backbone calls (``forward_features``, ``forward_head``, ``forward_intermediates``,
``no_weight_decay``, ``set_grad_checkpointing``, ``group_matcher``) and any timm-aware neck or
head plugs in. rsfm only fixes the position embedding to the 2-D sin-cos table of MAE
(He et al. 2022, §A.1) and records the sizes of He et al. 2022.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from rsfm.models.attention import choose_attention_kernels
from rsfm.models.encoders.base import Encoder
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import ENCODERS

__all__ = ["POS_EMBED", "VIT_SIZES", "ViT", "ViTSize", "build_vit", "evenly_spaced_blocks", "sincos_pos_embed_2d"]

#: what :class:`ViT` does with its position embedding when fine-tuned: train it, or keep it
POS_EMBED = ("learn", "fixed")


@dataclass(frozen=True)
class ViTSize:
    """Width, depth and heads of an encoder and of its MAE decoder (He et al. 2022)."""

    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_num_heads: int


VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(192, 12, 3, 128, 4),
    "small": ViTSize(384, 12, 6, 256, 8),
    "base": ViTSize(768, 12, 12, 512, 16),
    "large": ViTSize(1024, 24, 16, 512, 16),
    # ViT-H as MAE pretrains it (He et al. 2022: patch 14, decoder 512 wide); with FSDP (trainer.strategy: fsdp)
    "huge": ViTSize(1280, 32, 16, 512, 16),
}


def sincos_pos_embed_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE, He et al. 2022; Vaswani et al. 2017).

    Half of the channels encode the row, half the column; each half is
    ``[sin(pos·ω_k), cos(pos·ω_k)]`` with ``ω_k = 10000^(-k/(D/4))``.

    Args:
        embed_dim: token width ``D``; must be divisible by 4.
        grid_size: patches per side, an int for a square grid or ``(rows, cols)``.
        cls_token: prepend an all-zero row for the class token.

    Returns:
        ``(1 + rows·cols, D)`` float32 if ``cls_token`` else ``(rows·cols, D)``, rows in
        row-major patch order.

    Raises:
        ValueError: if ``embed_dim`` is not divisible by 4.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos, got {embed_dim}")
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
    gy, gx = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # Column (x) coordinates first, then row (y), as in the MAE reference.
    emb = np.concatenate([encode(gx), encode(gy)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


def build_vit(
    size: str = "base",
    img_size: int = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    num_classes: int = 0,
    global_pool: str = "token",
    drop_path_rate: float = 0.0,
    dynamic_img_size: bool = False,
) -> nn.Module:
    """Build a ViT encoder of a named size with a frozen 2-D sin-cos position embedding.

    Args:
        size: ``tiny`` | ``small`` | ``base`` | ``large`` | ``huge`` (see :data:`VIT_SIZES`).
        img_size: input side in pixels; must be a multiple of ``patch_size``.
        patch_size: patch side in pixels.
        in_chans: input channels.
        num_classes: classifier outputs; 0 gives an identity head (feature extractor).
        global_pool: ``token`` (class token) or ``avg`` (mean of patch tokens) for pooled
            features.
        drop_path_rate: stochastic depth rate (fine-tuning).
        dynamic_img_size: accept inputs of any size that is a multiple of ``patch_size``; the
            position embedding is then resampled (bicubic) to the input's patch grid, as
            dense-prediction fine-tuning on crops other than ``img_size`` needs.

    Returns:
        A timm ``VisionTransformer`` whose ``forward_features(x)`` maps
        ``(B, in_chans, img_size, img_size)`` float32 to ``(B, 1 + N, D)`` with
        ``N = (img_size / patch_size)²``. LayerNorm eps is 1e-6, MLP ratio 4.

    Raises:
        ValueError: on an unknown size or an image size that is not a multiple of the patch.
    """
    from timm.models.vision_transformer import VisionTransformer

    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
    if img_size % patch_size != 0:
        raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
    spec = VIT_SIZES[size]
    model = VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path_rate,
        dynamic_img_size=dynamic_img_size,
    )
    grid = model.patch_embed.grid_size
    model.pos_embed.data.copy_(sincos_pos_embed_2d(spec.embed_dim, grid, cls_token=True).unsqueeze(0))
    model.pos_embed.requires_grad_(False)
    choose_attention_kernels(model)
    return model


def evenly_spaced_blocks(depth: int, n: int = 4) -> tuple[int, ...]:
    """Indices of ``n`` evenly spaced blocks ending at the last one: 12 → (3, 5, 7, 11).

    For depth 12 this is the (3, 5, 7, 11) of RVSA/MTP; for 24 it gives (5, 11, 17, 23).

    Raises:
        ValueError: if ``depth < n``.
    """
    if depth < n:
        raise ValueError(f"cannot take {n} blocks of a depth-{depth} encoder")
    if depth == 12 and n == 4:
        return (3, 5, 7, 11)
    step = depth // n
    return tuple(step * (i + 1) - 1 for i in range(n))


@ENCODERS.register
class ViT(Encoder):
    """Vision Transformer (tiny to large), the downstream tasks' and probes' encoder.

    Built at random (its position embedding the 2-D sin-cos table MAE starts from), or from an
    rsfm export (``weights``), whose architecture (size, patch, image size) wins over the
    arguments. Inputs of any size that is a multiple of the patch are accepted (the position
    embedding is resampled), as dense fine-tuning on crops needs. The position embedding is
    trained with the rest (``pos_embed: learn``), as MAE's fine-tuning (He et al. 2022, whose
    fine-tuned ViT loads the fixed pretraining table into a learnable one) and timm's ViTs do;
    ``pos_embed: fixed`` keeps it as loaded.

    Args:
        size: ``tiny`` | ``small`` | ``base`` | ``large`` (:data:`VIT_SIZES`).
        img_size: nominal input side, pixels.
        patch_size: patch side, pixels.
        in_chans: input bands; None: the data's (filled in by the task). A 3-band export is
            adapted to other band counts (:func:`rsfm.models.export.adapt_input_channels`).
        drop_path_rate: stochastic depth (fine-tuning).
        global_pool: ``token`` (class token) or ``avg`` for :meth:`forward_pooled`; None: the
            export's (``token`` without ``weights``). An export pooled the other way loads with
            its final norm started afresh, as in MAE's fine-tuning (average pooling over an
            encoder pretrained with the class token).

            .. versionchanged:: 0.3.2
               Such an export used to be refused as not fitting.
        weights: an rsfm encoder export (``.safetensors``) to start from, or a released checkpoint
            (MAE's, SelectiveMAE's, timm …), optionally as ``<source>:<path>``, converted once
            (:func:`rsfm.models.convert.as_export`); None: random.
        frozen: freeze the encoder.
        out_indices: blocks of :meth:`forward_intermediates`; None: four evenly spaced
            (3, 5, 7, 11 for depth 12, as ViTDet/RVSA/MTP).
        pos_embed: ``learn`` (trained, with no weight decay) or ``fixed`` (kept as built or
            loaded, as earlier rsfm versions always did; resume a fine-tuning run they started
            with ``fixed``).

    Raises:
        ConfigError: on an unknown size or ``pos_embed``, a patch that does not divide the
            image, or ``weights`` that hold another architecture.
        CheckpointError: if ``weights`` cannot be read.
    """

    def __init__(
        self,
        size: str = "base",
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        global_pool: str | None = None,
        weights: str | None = None,
        frozen: bool = False,
        out_indices: list[int] | None = None,
        pos_embed: str = "learn",
    ) -> None:
        super().__init__(frozen, out_indices)
        if pos_embed not in POS_EMBED:
            raise ConfigError(f"model.encoder.pos_embed must be one of {POS_EMBED}, got {pos_embed!r}")
        if weights:
            self._load_export(
                weights,
                "vit",
                "ResNet",
                global_pool=global_pool,
                drop_path_rate=drop_path_rate,
                dynamic_img_size=True,
                in_chans=in_chans,
            )
        else:
            if size not in VIT_SIZES:
                raise ConfigError(f"model.encoder.size: unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
            if img_size % patch_size:
                raise ConfigError(f"model.encoder: img_size {img_size} is not a multiple of patch_size {patch_size}")
            self.model = build_vit(
                size,
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans or 3,
                drop_path_rate=drop_path_rate,
                global_pool=global_pool or "token",
                dynamic_img_size=True,
            )
            self.meta = {
                "arch": "vit",
                "size": size,
                "img_size": img_size,
                "patch_size": patch_size,
                "in_chans": in_chans or 3,
                "method": "random-init",
            }
        self.model.pos_embed.requires_grad_(pos_embed == "learn")
        self._finish()

    @property
    def patch_size(self) -> int:
        """Patch side, pixels."""
        return int(self.model.patch_embed.patch_size[0])

    @property
    def input_multiple(self) -> int:
        """The patch size."""
        return self.patch_size

    @property
    def out_indices(self) -> list[int]:
        """The blocks of :meth:`forward_intermediates`."""
        if self._out_indices is not None:
            return self._out_indices
        return list(evenly_spaced_blocks(len(self.model.blocks)))

    @property
    def out_channels(self) -> list[int]:
        """The encoder width, for every block."""
        return [int(self.model.embed_dim)] * len(self.out_indices)

    @property
    def strides(self) -> list[int]:
        """The patch size, for every block."""
        return [self.patch_size] * len(self.out_indices)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Token maps ``(B, D, H/p, W/p)`` of :attr:`out_indices` (without the final norm, as ViTDet)."""
        return list(
            self.model.forward_intermediates(
                x, indices=self.out_indices, norm=False, intermediates_only=True, output_fmt="NCHW"
            )
        )

    def drop_pooling(self) -> None:
        """Replace the final norm (and any pooling norm) by identities: the maps do not use them."""
        self.model.norm = nn.Identity()
        if hasattr(self.model, "fc_norm"):
            self.model.fc_norm = nn.Identity()
