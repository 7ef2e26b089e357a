"""Reconstruction figures: what the encoder saw, what was reconstructed, and how well."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch

from rsfm.methods.masking import patchify, unpatchify
from rsfm.training import is_sharded
from rsfm.utils.files import atomic_write

__all__ = ["ReconstructionFigures", "reconstruction_grid"]

# Overlay colours (RGB in [0, 1]).
SEED = (1.0, 0.15, 0.15)  # red: SelectiveMAE seed tokens
ADDED = (0.15, 0.45, 1.0)  # blue: tokens added by PSTS (or MAE's visible tokens)
TARGET = (0.1, 0.9, 0.2)  # green: reconstruction targets


def _patch_mask(ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    m = torch.zeros(ids.shape[0], num_patches, dtype=torch.bool, device=ids.device)
    return m.scatter(1, ids, True)


def _paint(
    patches: torch.Tensor, mask: torch.Tensor, colour: Sequence[float], alpha: float, channels: int
) -> torch.Tensor:
    # the colour's three values tint the first three bands (the ones drawn); others keep a 0 tint
    tint = [*colour[:channels], *[0.0] * max(0, channels - len(colour))]
    c = torch.tensor(tint, dtype=patches.dtype, device=patches.device).repeat(patches.shape[-1] // channels)
    return torch.where(mask.unsqueeze(-1), (1 - alpha) * patches + alpha * c, patches)


@torch.no_grad()
def reconstruction_grid(
    imgs: torch.Tensor,
    out: dict[str, torch.Tensor],
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    norm_pix_loss: bool,
) -> torch.Tensor:
    """Build the rows of a reconstruction figure, one image per row.

    Columns: original; the encoder's visible tokens (others dimmed); the token roles
    (red seeds and blue PSTS-added tokens for SelectiveMAE, blue visible tokens for MAE,
    green reconstruction targets); the reconstruction pasted at the targets over the
    visible tokens.

    Args:
        imgs: ``(B, 3, H, W)`` float32, normalised with ``mean``/``std``.
        out: a method's forward output (``pred``, ``ids_visible``, ``ids_target`` and,
            for SelectiveMAE, ``ids_seed``/``ids_added``).
        patch_size: patch side in pixels.
        mean: normalisation mean per channel (inputs in [0, 1]).
        std: normalisation standard deviation per channel.
        norm_pix_loss: whether ``pred`` is in per-patch normalised units; if so it is
            mapped back with each target patch's own mean and variance.

    Returns:
        ``(4·B, 3, H, W)`` float32 in [0, 1], row-major (image, then column); the first three
        bands of a multispectral input.
    """
    b, c, h, w = imgs.shape
    grid = (h // patch_size, w // patch_size)
    n = grid[0] * grid[1]
    m = torch.tensor(mean, device=imgs.device).view(1, c, 1, 1)
    s = torch.tensor(std, device=imgs.device).view(1, c, 1, 1)
    pix = patchify(imgs, patch_size)
    shown = patchify((imgs * s + m).clamp(0, 1), patch_size)
    vis = _patch_mask(out["ids_visible"], n)
    tgt = _patch_mask(out["ids_target"], n)
    dim = shown * 0.25 + 0.5 * 0.75
    visible = torch.where(vis.unsqueeze(-1), shown, dim)
    roles = torch.where((vis | tgt).unsqueeze(-1), shown, dim)
    if "ids_seed" in out:
        roles = _paint(roles, _patch_mask(out["ids_seed"], n), SEED, 0.5, c)
        roles = _paint(roles, _patch_mask(out["ids_added"], n), ADDED, 0.5, c)
    else:
        roles = _paint(roles, vis, ADDED, 0.5, c)
    roles = _paint(roles, tgt, TARGET, 0.5, c)
    pred = out["pred"].float()
    if norm_pix_loss:
        t = torch.gather(pix, 1, out["ids_target"].unsqueeze(-1).expand(-1, -1, pix.shape[-1]))
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    recon_pix = pix.scatter(1, out["ids_target"].unsqueeze(-1).expand(-1, -1, pix.shape[-1]), pred)
    recon = patchify((unpatchify(recon_pix, patch_size, grid, c) * s + m).clamp(0, 1), patch_size)
    recon = torch.where(tgt.unsqueeze(-1), recon, visible)
    cols = [shown, visible, roles, recon]
    rows = torch.stack([unpatchify(x, patch_size, grid, c) for x in cols], dim=1)  # (B, 4, C, H, W)
    rows = rows.reshape(b * 4, c, h, w)
    return rows[:, :3] if c > 3 else rows


class ReconstructionFigures(L.Callback):
    """Writes ``figures/reconstruction_epoch{E}.png`` every ``every_n_epochs`` epochs and at the end.

    The images are the datamodule's ``viz_batch(num_images)`` (held-out, un-augmented, in
    [0, 1]), normalised by the module; the masks use a fixed generator, so figures of
    different epochs are comparable. The method must be a
    :class:`~rsfm.methods.base.MaskedImageModel`.

    Args:
        out_dir: folder for the PNG files.
        every_n_epochs: period in epochs (0: only at the end).
        num_images: images (rows) per figure.
    """

    def __init__(self, out_dir: str | Path, every_n_epochs: int, num_images: int) -> None:
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self._imgs: torch.Tensor | None = None
        self.written: list[Path] = []

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        # under FSDP the weights are split over the ranks: every rank runs the forward (through
        # the wrapped module, which gathers each block's weights) and rank 0 draws
        sharded = is_sharded(trainer)
        if (not trainer.is_global_zero and not sharded) or self.num_images <= 0:
            return
        if self._imgs is None:
            self._imgs = trainer.datamodule.viz_batch(self.num_images)
        if self._imgs.shape[0] == 0:
            return
        from torchvision.utils import save_image

        model = pl_module.model
        was_training = pl_module.training
        pl_module.eval()
        try:
            imgs = pl_module.normalise(self._imgs.to(pl_module.device))
            g = torch.Generator(device=pl_module.device).manual_seed(0)
            forward = trainer.strategy.model if sharded else model
            with torch.no_grad():
                # eagerly: a compiled step (trainer.compile) would compile again for this batch
                out = forward(imgs, progress=pl_module.progress(), generator=g, eager=True)
            if not trainer.is_global_zero:
                return
            info = pl_module.info
            grid = reconstruction_grid(imgs, out, model.patch_size, info.mean, info.std, model.norm_pix_loss)
        finally:
            pl_module.train(was_training)
        path = self.out_dir / f"reconstruction_{tag}.png"
        atomic_write(path, lambda tmp: save_image(grid.cpu(), tmp, nrow=4, padding=2, pad_value=1.0, format="PNG"))
        self.written.append(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write a figure every ``every_n_epochs`` epochs."""
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs > 0 and epoch % self.every_n_epochs == 0:
            self._write(trainer, pl_module, f"epoch{epoch:03d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the final figure."""
        self._write(trainer, pl_module, "final")
