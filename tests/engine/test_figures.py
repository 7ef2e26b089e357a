from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rsfm.engine.figures import reconstruction_grid
from rsfm.methods.mae import MAE
from rsfm.methods.masking import patchify
from rsfm.methods.selective_mae import SelectiveMAE


def test_reconstruction_grid_columns(datasets: Path) -> None:
    paths = sorted((datasets / "aid" / "Port").glob("*.jpg"))[:2]
    raw = torch.from_numpy(
        np.stack([np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in paths])
    ).permute(0, 3, 1, 2)
    mean, std = (0.4, 0.4, 0.37), (0.21, 0.19, 0.19)
    imgs = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model = SelectiveMAE("tiny", img_size=64, patch_size=8).eval()
    with torch.no_grad():
        out = model(imgs)
    # a perfect prediction must reproduce the original at the targets
    target = patchify(imgs, 8).gather(1, out["ids_target"].unsqueeze(-1).expand(-1, -1, 192))
    out["pred"] = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    grid = reconstruction_grid(imgs, out, 8, mean, std, norm_pix_loss=True)
    assert grid.shape == (8, 3, 64, 64) and grid.min() >= 0 and grid.max() <= 1
    original, visible, roles, recon = grid[0], grid[1], grid[2], grid[3]
    assert torch.allclose(original, raw[0], atol=1e-5)
    p_orig, p_vis, p_rec = (patchify(x[None], 8)[0] for x in (original, visible, recon))
    vis_ids, tgt_ids = out["ids_visible"][0], out["ids_target"][0]
    assert torch.allclose(p_vis[vis_ids], p_orig[vis_ids])
    assert torch.allclose(p_rec[tgt_ids], p_orig[tgt_ids], atol=1e-3)
    hidden = torch.ones(64, dtype=torch.bool)
    hidden[vis_ids] = False
    assert not torch.allclose(p_vis[hidden], p_orig[hidden])  # hidden tokens are dimmed
    # seeds are tinted red: more red than the original there
    seed = out["ids_seed"][0]
    r = patchify(roles[None], 8)[0][seed].view(len(seed), 64, 3)
    o = p_orig[seed].view(len(seed), 64, 3)
    assert (r[..., 0] - o[..., 0]).mean() > 0.1


def test_reconstruction_grid_of_other_band_counts(datasets: Path) -> None:
    """A 4-band input draws its first three bands, a 1-band one grey (the end-of-run figure of a
    4-band MAE run used to stop the run before its export)."""
    path = sorted((datasets / "aid" / "Port").glob("*.jpg"))[0]
    rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((64, 64)), np.float32) / 255)
    rgb = rgb.permute(2, 0, 1)[None]
    for bands in (rgb[:, [0, 1, 2, 1]], rgb[:, :1]):  # a 4th band (a copy of green), one band
        c = bands.shape[1]
        mean, std = [0.4] * c, [0.2] * c
        imgs = (bands - 0.4) / 0.2
        model = MAE("tiny", img_size=64, patch_size=8, in_chans=c).eval()
        with torch.no_grad():
            out = model(imgs)
        grid = reconstruction_grid(imgs, out, 8, mean, std, norm_pix_loss=True)
        assert grid.shape == (4, min(c, 3), 64, 64) and 0 <= grid.min() and grid.max() <= 1
        assert torch.allclose(grid[0], bands[0, :3], atol=1e-5)  # the original column
        # visible tokens are tinted blue in the roles column (one band: its first value, 0.15, darkens them)
        vis = out["ids_visible"][0]
        roles, orig = (patchify(x[None], 8)[0][vis].view(len(vis), 64, min(c, 3)) for x in (grid[2], grid[0]))
        shift = (roles[..., -1] - orig[..., -1]).mean()
        assert shift > 0.1 if c > 1 else shift < -0.1
