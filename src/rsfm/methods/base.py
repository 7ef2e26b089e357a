"""What MAE and SelectiveMAE share: the ViT encoder run on a subset of tokens, and the loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rsfm.methods.masking import gather_tokens, normalize_patch_targets, patchify
from rsfm.models.vit import VIT_SIZES, build_vit, sincos_pos_embed_2d

__all__ = ["MaskedImageModel", "init_mim_weights"]


def init_mim_weights(module: nn.Module) -> None:
    """MAE's initialisation (He et al. 2022, reference code).

    Xavier-uniform linear layers (and the patch projection, viewed as a linear map), zero
    biases, unit LayerNorms.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MaskedImageModel(nn.Module):
    """A ViT encoder plus what every masked-image-modeling method needs around it.

    Args:
        size: encoder size, ``tiny`` | ``small`` | ``base`` | ``large``.
        img_size: input side in pixels.
        patch_size: patch side ``p`` in pixels.
        in_chans: input channels ``C``.
        norm_pix_loss: regress per-patch normalised pixels (MAE §A.1).
    """

    #: multiplies ``blr · batch / 256`` to give the learning rate (SelectiveMAE: r / m).
    lr_scale: float = 1.0

    def __init__(self, size: str, img_size: int, patch_size: int, in_chans: int, norm_pix_loss: bool) -> None:
        super().__init__()
        self.encoder = build_vit(size, img_size=img_size, patch_size=patch_size, in_chans=in_chans)
        self.size = size
        self.spec = VIT_SIZES[size]
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.grid = tuple(self.encoder.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]

    def _build_decoder_io(self, decoder_embed_dim: int | None, decoder_num_heads: int | None) -> tuple[int, int]:
        """Create what every decoder needs around its blocks; return its width and heads.

        That is the projection from encoder to decoder width, the mask token, the fixed
        decoder position embedding, the final norm and the pixel head. Width and heads are the
        size's defaults when None.
        """
        dd = decoder_embed_dim or self.spec.decoder_embed_dim
        dh = decoder_num_heads or self.spec.decoder_num_heads
        self.decoder_embed = nn.Linear(self.spec.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        pos = sincos_pos_embed_2d(dd, self.grid, cls_token=True).unsqueeze(0)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, self.patch_size * self.patch_size * self.in_chans)
        return dd, dh

    def _init_weights(self) -> None:
        """MAE's initialisation of all layers, then N(0, 0.02) class and mask tokens."""
        init_mim_weights(self)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def embed_patches(self, imgs: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, N, D)`` patch embeddings plus position embeddings."""
        x = self.encoder.patch_embed(imgs)
        return x + self.encoder.pos_embed[:, 1:, :]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the encoder on a subset of embedded tokens.

        Args:
            tokens: ``(B, K, D)`` patch embeddings with their position embeddings.

        Returns:
            ``(B, 1 + K, D)``: class token then the ``K`` tokens, after the final norm.
        """
        cls = (self.encoder.cls_token + self.encoder.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        x = self.encoder.blocks(x)
        return self.encoder.norm(x)

    def encode_visible(self, imgs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Embed all patches, keep ``ids`` ``(B, K)`` and encode them → ``(B, 1 + K, D)``."""
        return self.encode(gather_tokens(self.embed_patches(imgs), ids))

    def targets(self, imgs: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel targets ``(B, K, p²·C)`` of the patches ``ids`` (all when None).

        Normalised per patch when ``norm_pix_loss``.
        """
        t = patchify(imgs, self.patch_size)
        if ids is not None:
            t = gather_tokens(t, ids)
        return normalize_patch_targets(t) if self.norm_pix_loss else t

    def no_weight_decay(self) -> set[str]:
        """Full parameter names exempt from weight decay besides norms and biases."""
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token"}

    def export_meta(self) -> dict[str, Any]:
        """Metadata to rebuild the encoder (see :func:`rsfm.engine.export.export_encoder`)."""
        return {
            "arch": "vit",
            "size": self.size,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
        }
