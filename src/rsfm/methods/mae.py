"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

The method as He et al. 2022: random masking, an encoder on the visible tokens, an
8-block self-attention decoder over all positions, MSE on the masked patches.
"""

from __future__ import annotations

import torch
from torch import nn

from rsfm.methods.base import MaskedImageModel
from rsfm.methods.masking import random_token_mask
from rsfm.models.attention import choose_attention_kernels
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import METHODS

__all__ = ["MAE"]


@METHODS.register
class MAE(MaskedImageModel):
    """Masked autoencoder with a ViT encoder.

    Args:
        size: encoder size (``tiny`` | ``small`` | ``base`` | ``large``); the decoder width
            and heads follow He et al. 2022 unless given.
        img_size: input side in pixels (None: the data's).
        patch_size: patch side in pixels.
        in_chans: input channels (None: the data's bands).
        mask_ratio: fraction ``m`` of patches masked (0.75).
        decoder_depth: decoder blocks (8).
        decoder_embed_dim: decoder width (None: the size's default).
        decoder_num_heads: decoder heads (None: the size's default).
        norm_pix_loss: per-patch normalised pixel targets.
        token_weight_decay: weight decay on the class and mask tokens (True, as the release;
            see :class:`~rsfm.methods.base.MaskedImageModel`).
    """

    def __init__(
        self,
        size: str = "base",
        img_size: int | None = None,
        patch_size: int = 16,
        in_chans: int | None = None,
        mask_ratio: float = 0.75,
        decoder_depth: int = 8,
        decoder_embed_dim: int | None = None,
        decoder_num_heads: int | None = None,
        norm_pix_loss: bool = True,
        token_weight_decay: bool = True,
    ) -> None:
        from timm.models.vision_transformer import Block

        super().__init__(size, img_size, patch_size, in_chans, norm_pix_loss, token_weight_decay)
        if not 0.0 < mask_ratio < 1.0:  # 0 masks nothing: the loss, a mean over masked patches, is undefined
            raise ConfigError(f"model.mask_ratio must be in (0, 1), got {mask_ratio}")
        if int(self.num_patches * (1 - mask_ratio)) == 0:
            raise ConfigError(
                f"model.mask_ratio {mask_ratio} of {self.num_patches} patches keeps "
                f"{int(self.num_patches * (1 - mask_ratio))}: MAE needs at least one visible patch"
            )
        self.mask_ratio = mask_ratio
        dd, dh = self._build_decoder_io(decoder_embed_dim, decoder_num_heads)
        self.decoder_blocks = nn.Sequential(
            *[Block(dd, dh, mlp_ratio=4.0, qkv_bias=True, norm_layer=_ln) for _ in range(decoder_depth)]
        )
        choose_attention_kernels(self.decoder_blocks)
        self._init_weights()

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Decode all ``N`` positions.

        Args:
            latent: ``(B, 1 + K, D)`` encoder output (class token first).
            ids_keep: ``(B, K)`` int64 positions of the encoded tokens.

        Returns:
            ``(B, N, p²·C)`` predicted pixels for every patch.
        """
        y = self.decoder_embed(latent)
        b, _, dd = y.shape
        full = self.mask_token.to(y.dtype).expand(b, self.num_patches, dd)
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, dd), y[:, 1:])
        x = torch.cat([y[:, :1], full], dim=1) + self.decoder_pos_embed.to(y.dtype)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def draw(
        self, batch_size: int, device: torch.device, progress: float, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor | None]:
        """The mask's uniform noise, ``(B, N)`` float32 (He et al. 2022, §3 "Masking"); ``progress`` is unused."""
        return {"noise": torch.rand(batch_size, self.num_patches, generator=generator, device=device)}

    def step_from_draws(self, imgs: torch.Tensor, **draws: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One MAE step given the mask's noise (see :meth:`forward`).

        Args:
            imgs: ``(B, C, H, W)`` float32, normalised.
            **draws: ``noise`` ``(B, N)`` float32 from :meth:`draw`.

        Returns:
            Dict with ``loss`` (scalar, MSE over masked patches), ``pred``
            ``(B, N − K, p²·C)`` at the masked positions, ``ids_visible`` ``(B, K)`` and
            ``ids_target`` ``(B, N − K)`` int64 (the masked patches).
        """
        ids_keep, ids_masked = random_token_mask(
            imgs.shape[0], self.num_patches, self.mask_ratio, device=imgs.device, noise=draws["noise"]
        )
        latent = self.encode_visible(imgs, ids_keep)
        pred_all = self.forward_decoder(latent, ids_keep)
        pred = torch.gather(pred_all, 1, ids_masked.unsqueeze(-1).expand(-1, -1, pred_all.shape[-1]))
        target = self.targets(imgs, ids_masked)
        loss = (pred.float() - target.float()).pow(2).mean()
        return {"loss": loss, "pred": pred, "ids_visible": ids_keep, "ids_target": ids_masked}


def _ln(dim: int, **kwargs: object) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)  # type: ignore[arg-type]
