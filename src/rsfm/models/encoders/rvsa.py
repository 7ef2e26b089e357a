"""Plain ViT with rotated varied-size window attention (RVSA) and a simple feature pyramid.

The backbone of Wang et al., "Advancing Plain Vision Transformer Toward Remote Sensing
Foundation Model", IEEE TGRS 2023 (RVSA), as pretrained by Wang et al., "MTP: Advancing
Remote Sensing Foundation Model via Multi-Task Pretraining", IEEE JSTARS 2024: a
pre-norm ViT without class token whose blocks use RVSA, except every ``interval``-th block
(0-based ``i`` with ``(i + 1) % interval == 0``), which uses global attention with
decomposed relative positions (MViTv2, Li et al., CVPR 2022). Four block outputs go through
ViTDet's simple feature pyramid (Li et al., ECCV 2022), so :meth:`ViTRVSA.forward_intermediates`
already returns a pyramid at strides ``p/4, p/2, p, 2p``.

Parameter names follow the authors' release, so its MAE, MTP-encoder and fine-tuned weights
load by name: ``patch_embed.proj``, ``pos_embed`` (``(1, N, C)``, no class token),
``blocks.i.{norm1, norm2, attn.qkv, attn.proj, mlp.fc1, mlp.fc2}``; RVSA blocks add
``attn.{rel_pos_h, rel_pos_w, relative_position_bias_table, relative_position_index,
sampling_offsets.2, sampling_scales.2, sampling_angles.2}``; global blocks add
``attn.full_attn_rel_pos_{h, w}``; the pyramid is ``fpn1.{0, 1.ln, 3}``, ``fpn2.0``; ``norm``
is the final LayerNorm (used only for pooled features).

Where rsfm departs from the release (each documented where it happens):

- the offset/scale/angle predictors are zero-initialised by default (``rvsa_init="zero"``), so
  RVSA starts as plain 7×7 window attention; ``rvsa_init="release"`` keeps PyTorch's default
  Conv2d init, which the release effectively uses (its zero-init routine is never called);
- any input whose sides are multiples of the patch is accepted (the release needs exactly
  ``img_size``): the position embedding is resampled bicubically and the global blocks'
  relative-position tables linearly, per axis;
- a grid smaller than one window (fewer than 7 tokens on a side) divides the offsets by 1
  where the release divides by zero.

.. versionadded:: 0.3
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsfm.models.encoders.base import Encoder
from rsfm.models.encoders.vit import VIT_SIZES
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import ENCODERS

__all__ = [
    "vit_base_rvsa",
    "vit_large_rvsa",
    "vit_tiny_rvsa",
    "RVSA_INITS",
    "RVSA_INTERVALS",
    "GlobalRelPosAttention",
    "RVSABlock",
    "RotatedVariedSizeWindowAttention",
    "ViTRVSA",
    "VisionTransformerRVSA",
    "build_vit_rvsa",
    "decomposed_rel_pos",
    "default_rvsa_out_indices",
    "load_vit_into_rvsa",
    "resize_pos_embed",
    "resize_rel_pos",
    "rvsa_sample_grid",
    "symmetric_window_padding",
]

log = logging.getLogger(__name__)

#: every ``interval``-th block uses global attention (Wang et al. 2023; Wang et al. 2024)
RVSA_INTERVALS: dict[str, int] = {"tiny": 3, "small": 3, "base": 3, "large": 6, "huge": 8}

#: ``zero``: predictors start at zero (plain window attention); ``release``: PyTorch's default init
RVSA_INITS = ("zero", "release")

#: block outputs that feed the pyramid, by depth (the release's choice)
_OUT_INDICES: dict[int, tuple[int, int, int, int]] = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23)}


def default_rvsa_out_indices(depth: int) -> tuple[int, int, int, int]:
    """Blocks whose outputs feed the pyramid: (3, 5, 7, 11) for depth 12, (7, 11, 15, 23) for 24.

    Other depths get four evenly spaced blocks ending at the last one.

    Raises:
        ValueError: if ``depth < 4``.
    """
    if depth in _OUT_INDICES:
        return _OUT_INDICES[depth]
    if depth < 4:
        raise ValueError(f"cannot take 4 blocks of a depth-{depth} encoder")
    step = depth // 4
    return tuple(step * (i + 1) - 1 for i in range(4))  # type: ignore[return-value]


# -- geometry helpers ------------------------------------------------------------------------


def symmetric_window_padding(height: int, width: int, window: int) -> tuple[int, int, int, int]:
    """Zero padding that brings a token grid to multiples of ``window``, split symmetrically.

    The smaller half goes top/left, as the authors' RVSA code (Wang et al. 2023): 32 tokens and a 7-token
    window give 3 rows, 1 on top and 2 at the bottom.

    Returns:
        ``(left, right, top, bottom)`` in tokens, the order of :func:`torch.nn.functional.pad`.
    """
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def rvsa_sample_grid(offsets: Tensor, scales: Tensor, angles: Tensor, padded: tuple[int, int], window: int) -> Tensor:
    """Sampling locations of RVSA's rotated, scaled and shifted windows (Wang et al. 2023).

    Coordinates are :func:`torch.nn.functional.grid_sample`'s with ``align_corners=True``:
    ``-1`` and ``+1`` are the centres of the first and last padded token. Each window of
    ``window × window`` tokens has its centre ``c`` (the mean of its tokens' coordinates) and
    base offsets ``δ_k = (k - (window - 1) / 2) · 2 / (side - 1)``; a sample is
    ``c + R(θ) · (δ ⊙ (1 + s)) + o``. The rotation acts on normalised coordinates, as in the
    release (so it is anisotropic when the padded grid is not square). With all predictions
    at zero every sample falls on its own token's centre.

    Args:
        offsets: ``(M, 2, nh, nw)`` float, window shifts ``o`` in normalised units, channel 0
            x (columns), 1 y (rows); ``M`` = images × heads.
        scales: ``(M, 2, nh, nw)`` float, relative scale changes ``s`` (x, y), unbounded.
        angles: ``(M, 1, nh, nw)`` float, rotation ``θ`` in radians, unbounded.
        padded: ``(Hp, Wp)`` padded grid size in tokens, ``Hp = nh · window``, ``Wp = nw · window``.
        window: window side in tokens.

    Returns:
        ``(M, Hp, Wp, 2)`` grid in offsets' dtype, last axis ``(x, y)``.
    """
    hp, wp = padded
    nh, nw = hp // window, wp // window
    dev, dt = offsets.device, offsets.dtype
    half = (window - 1) / 2
    # window centres (the mean of a window's coordinates) and in-window base offsets
    centre_x = -1 + 2 * (torch.arange(nw, device=dev, dtype=dt) * window + half) / (wp - 1)
    centre_y = -1 + 2 * (torch.arange(nh, device=dev, dtype=dt) * window + half) / (hp - 1)
    base = torch.arange(window, device=dev, dtype=dt) - half
    # layout (M, nh, window rows, nw, window columns)
    delta_x = (base * 2 / (wp - 1)).view(1, 1, 1, 1, window)
    delta_y = (base * 2 / (hp - 1)).view(1, 1, window, 1, 1)

    def per_window(t: Tensor) -> Tensor:  # (M, nh, nw) -> (M, nh, 1, nw, 1), broadcast over a window
        return t[:, :, None, :, None]

    dx = delta_x * (1 + per_window(scales[:, 0]))
    dy = delta_y * (1 + per_window(scales[:, 1]))
    cos, sin = per_window(torch.cos(angles[:, 0])), per_window(torch.sin(angles[:, 0]))
    gx = centre_x.view(1, 1, 1, nw, 1) + dx * cos - dy * sin + per_window(offsets[:, 0])
    gy = centre_y.view(1, nh, 1, 1, 1) + dx * sin + dy * cos + per_window(offsets[:, 1])
    m = offsets.shape[0]
    gx = gx.expand(m, nh, window, nw, window).reshape(m, hp, wp)
    gy = gy.expand(m, nh, window, nw, window).reshape(m, hp, wp)
    return torch.stack([gx, gy], dim=-1)


def decomposed_rel_pos(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, size: tuple[int, int]) -> Tensor:
    """Decomposed relative-position logits of MViTv2 (Li et al., CVPR 2022).

    For query ``(iy, ix)`` and key ``(jy, jx)`` of an ``h × w`` grid (row-major tokens) the term
    is ``q · R_h[iy - jy + h - 1] + q · R_w[ix - jx + w - 1]``, with ``q`` as given (the caller
    decides whether it is scaled).

    Args:
        q: ``(..., h·w, d)`` queries.
        rel_pos_h: ``(2h - 1, d)`` row table.
        rel_pos_w: ``(2w - 1, d)`` column table.
        size: ``(h, w)`` grid of both queries and keys.

    Returns:
        ``(..., h·w, h·w)`` logits to add, in ``q``'s dtype.

    Raises:
        ValueError: if a table does not have ``2h - 1`` (``2w - 1``) rows.
    """
    h, w = size
    if rel_pos_h.shape[0] != 2 * h - 1 or rel_pos_w.shape[0] != 2 * w - 1:
        raise ValueError(
            f"relative-position tables of {rel_pos_h.shape[0]} and {rel_pos_w.shape[0]} rows do not fit a "
            f"{h}x{w} grid (expected {2 * h - 1} and {2 * w - 1})"
        )
    dev = q.device
    idx_h = torch.arange(h, device=dev)[:, None] - torch.arange(h, device=dev)[None, :] + (h - 1)
    idx_w = torch.arange(w, device=dev)[:, None] - torch.arange(w, device=dev)[None, :] + (w - 1)
    table_h = rel_pos_h.to(q.dtype)[idx_h]  # (h, h, d): [iy, jy]
    table_w = rel_pos_w.to(q.dtype)[idx_w]  # (w, w, d): [ix, jx]
    lead = q.shape[:-2]
    grid_q = q.reshape(*lead, h, w, q.shape[-1])
    rel_h = torch.einsum("...yxc,ykc->...yxk", grid_q, table_h)  # (..., h, w, h_k)
    rel_w = torch.einsum("...yxc,xkc->...yxk", grid_q, table_w)  # (..., h, w, w_k)
    return (rel_h[..., :, None] + rel_w[..., None, :]).reshape(*lead, h * w, h * w)


def resize_rel_pos(table: Tensor, length: int) -> Tensor:
    """Resample a ``(L, d)`` relative-position table to ``(length, d)``, linearly along ``L``.

    Lets global blocks built for one grid run on another (MTP's D9 fix; the release needs the
    built size). Unchanged when ``L == length``.
    """
    if table.shape[0] == length:
        return table
    out = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
    return out[0].t().to(table.dtype)


def resize_pos_embed(pos_embed: Tensor, old: tuple[int, int], new: tuple[int, int]) -> Tensor:
    """Bicubically resample a ``(1, old_h·old_w, C)`` position embedding to ``(1, new_h·new_w, C)``.

    ``align_corners=False``, as the release's loader. Unchanged when the grids agree.
    """
    if tuple(old) == tuple(new):
        return pos_embed
    c = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old[0], old[1], c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c).to(pos_embed.dtype)


# -- attention -------------------------------------------------------------------------------


def _record(store: dict[str, tuple[int, ...]] | None, name: str, t: Tensor) -> None:
    if store is not None:
        store[name] = tuple(t.shape)


class RotatedVariedSizeWindowAttention(nn.Module):
    """Rotated varied-size window attention (Wang et al., TGRS 2023; MTP's backbone).

    Tokens are zero-padded symmetrically to multiples of ``window_size``; per image, head and
    window, three 1×1 convolutions on the window-averaged padded input predict a shift, a
    scale per axis and a rotation angle (:func:`rvsa_sample_grid`); keys and values are
    resampled bilinearly at those locations (queries are not), attention runs inside each
    ``window_size²`` window with a decomposed relative-position term (computed with the
    *unscaled* queries, as the release) plus a Swin bias table (Liu et al., ICCV 2021), and
    the padding is cropped before the output projection.

    Offsets are normalised as the release does it: the x (column) offset is divided by the
    number of whole windows along the *height* and the y (row) offset by that along the
    *width*, both of the unpadded grid (so the axes are swapped, and the count is that of the
    unpadded grid). rsfm keeps this quirk so released weights behave as trained, and divides
    by 1 when that count is 0 (a grid smaller than one window), where the release divides by 0.

    Args:
        dim: token width ``C``.
        num_heads: heads ``nH``; ``C`` must be divisible by it.
        window_size: window side in tokens (7 in the papers).
        qkv_bias: bias in the ``qkv`` projection.

    Attributes:
        debug_shapes: set to a dict to have :meth:`forward` record the shapes of its
            intermediate tensors (``offsets``, ``scales``, ``angles``, ``grid``, ``logits``,
            ``padded``); None (default): nothing recorded.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = int(window_size)
        ws = self.window_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * ws - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * ws - 1, self.head_dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02, a=-2.0, b=2.0)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, ws², ws²): [dy, dx] of query - key
        self.register_buffer("relative_position_index", rel[0] * (2 * ws - 1) + rel[1], persistent=True)
        self.sampling_offsets = self._predictor(dim, 2 * num_heads)
        self.sampling_scales = self._predictor(dim, 2 * num_heads)
        self.sampling_angles = self._predictor(dim, num_heads)
        self.debug_shapes: dict[str, tuple[int, ...]] | None = None

    def _predictor(self, dim: int, out: int) -> nn.Sequential:
        """AvgPool(window) → LeakyReLU(0.01) → 1×1 conv (key ``.2``), as the release."""
        return nn.Sequential(
            nn.AvgPool2d(self.window_size, self.window_size), nn.LeakyReLU(0.01), nn.Conv2d(dim, out, 1)
        )

    def predictors(self) -> list[nn.Conv2d]:
        """The offset, scale and angle convolutions."""
        return [self.sampling_offsets[2], self.sampling_scales[2], self.sampling_angles[2]]

    def zero_predictors(self) -> None:
        """Zero the predictors' weights and biases: RVSA becomes plain window attention."""
        for conv in self.predictors():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def window_bias(self) -> Tensor:
        """The Swin bias ``(nH, ws², ws²)``: ``table[(iy - jy + ws - 1)·(2ws - 1) + (ix - jx + ws - 1)]``."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def sampling_grid(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Where each head samples its keys and values (steps 1-4 of :meth:`forward`).

        The predictors see the zero-padded input averaged over each window; their outputs
        give :func:`rvsa_sample_grid`'s offsets (normalised as the release, see the class
        doc), scales and angles (radians).

        Args:
            x: ``(B, H·W, C)`` normalised tokens, row-major.
            size: ``(H, W)`` token grid.

        Returns:
            ``(B·nH, Hp, Wp, 2)`` grid (x, y) in ``grid_sample``'s ``align_corners=True`` units,
            rows ``b·nH + head``; ``Hp``, ``Wp`` the padded grid; float32 (float64 for a
            float64 ``x``), whatever the autocast dtype.
        """
        b, _, c = x.shape
        h, w = size
        ws, heads = self.window_size, self.num_heads
        left, right, top, bottom = symmetric_window_padding(h, w, ws)
        hp, wp = h + top + bottom, w + left + right
        nh, nw = hp // ws, wp // ws
        rec = self.debug_shapes
        padded = F.pad(x.transpose(1, 2).reshape(b, c, h, w), (left, right, top, bottom))
        _record(rec, "padded", padded)
        # conv channel 2n + a is head n, axis a (0: x, 1: y)
        # coordinates in at least float32: in bfloat16 a 35-token grid's samples would miss by ~7 % of a token
        ft = torch.promote_types(x.dtype, torch.float32)
        offsets = self.sampling_offsets(padded).reshape(b * heads, 2, nh, nw).to(ft)
        scales = self.sampling_scales(padded).reshape(b * heads, 2, nh, nw).to(ft)
        angles = self.sampling_angles(padded).reshape(b * heads, 1, nh, nw).to(ft)
        # the release's normalisation: x by the window count along H, y along W (see the class doc)
        norm = offsets.new_tensor([max(h // ws, 1), max(w // ws, 1)]).view(1, 2, 1, 1)
        offsets = offsets / norm
        _record(rec, "offsets", offsets), _record(rec, "scales", scales), _record(rec, "angles", angles)
        grid = rvsa_sample_grid(offsets, scales, angles, (hp, wp), ws)
        _record(rec, "grid", grid)
        return grid

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Attend within the rotated, scaled and shifted windows.

        Args:
            x: ``(B, H·W, C)`` normalised tokens (the block's LN1 output), row-major.
            size: ``(H, W)`` token grid.

        Returns:
            ``(B, H·W, C)`` in ``x``'s dtype.
        """
        b, n, c = x.shape
        h, w = size
        ws, heads, d = self.window_size, self.num_heads, self.head_dim
        left, right, top, bottom = symmetric_window_padding(h, w, ws)
        hp, wp = h + top + bottom, w + left + right
        nh, nw = hp // ws, wp // ws
        # 1-4: sampling locations of every (image, head, window)
        grid = self.sampling_grid(x, size)
        # 5: q, k, v of the unpadded tokens, (b, head)-major, then zero-padded (padding is 0, not the bias)
        qkv = self.qkv(x).reshape(b, h, w, 3, heads, d).permute(3, 0, 4, 5, 1, 2).reshape(3, b * heads, d, h, w)
        q, k, v = F.pad(qkv, (left, right, top, bottom)).unbind(0)
        # 6: resample keys and values (not queries), in the grid's precision (float32 under autocast)
        k = F.grid_sample(k.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        v = F.grid_sample(v.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        k, v = k.to(q.dtype), v.to(q.dtype)

        def windows(t: Tensor) -> Tensor:  # (B·nH, d, Hp, Wp) -> (B·nh·nw, nH, ws², d)
            t = t.reshape(b, heads, d, nh, ws, nw, ws).permute(0, 3, 5, 1, 4, 6, 2)
            return t.reshape(b * nh * nw, heads, ws * ws, d)

        q, k, v = windows(q), windows(k), windows(v)
        # 7: scaled logits + decomposed rel-pos (unscaled q, as the release) + Swin bias
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (ws, ws))
        attn = attn + self.window_bias().to(attn.dtype)[None]
        _record(self.debug_shapes, "logits", attn)
        out = attn.softmax(dim=-1) @ v
        # 8: back to the padded grid, crop, project
        out = out.reshape(b, nh, nw, heads, ws, ws, d).permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        out = out[:, :, top : top + h, left : left + w].reshape(b, c, n).transpose(1, 2)
        return self.proj(out)


class GlobalRelPosAttention(nn.Module):
    """Global multi-head attention with decomposed relative positions (RVSA's full-attention blocks).

    The queries are scaled by ``head_dim^-0.5`` *before* the relative-position term (MViTv2,
    Li et al. 2022, as the release), unlike :class:`RotatedVariedSizeWindowAttention`. The
    tables ``full_attn_rel_pos_h/w`` are ``(2S - 1, d)`` for the built grid ``S``; another grid
    resamples them per axis (:func:`resize_rel_pos`).

    Args:
        dim: token width ``C``.
        num_heads: heads.
        grid_size: ``(S_h, S_w)`` built token grid.
        qkv_bias: bias in the ``qkv`` projection.

    Attributes:
        debug_shapes: set to a dict to record ``logits``'s shape; None: nothing recorded.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.full_attn_rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size[0] - 1, self.head_dim))
        self.full_attn_rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size[1] - 1, self.head_dim))
        self.debug_shapes: dict[str, tuple[int, ...]] | None = None

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, H·W, C)`` normalised tokens on an ``(H, W)`` grid → ``(B, H·W, C)``."""
        b, n, c = x.shape
        h, w = size
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        rel_h = resize_rel_pos(self.full_attn_rel_pos_h, 2 * h - 1)
        rel_w = resize_rel_pos(self.full_attn_rel_pos_w, 2 * w - 1)
        attn = attn + decomposed_rel_pos(q, rel_h, rel_w, (h, w))
        _record(self.debug_shapes, "logits", attn)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class RVSABlock(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(attn(LN1(x)))``, then ``x + DropPath(MLP(LN2(x)))``.

    Args:
        dim: token width.
        num_heads: heads.
        window: RVSA (True) or global attention (False).
        grid_size: built token grid (for the global blocks' tables).
        window_size: RVSA window side in tokens.
        mlp_ratio: MLP hidden width / ``dim`` (GELU).
        drop_path: stochastic depth rate of this block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: bool,
        grid_size: tuple[int, int],
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn: RotatedVariedSizeWindowAttention | GlobalRelPosAttention
        if window:
            self.attn = RotatedVariedSizeWindowAttention(dim, num_heads, window_size)
        else:
            self.attn = GlobalRelPosAttention(dim, num_heads, grid_size)
        from timm.layers import DropPath, Mlp  # lazily: checking a recipe imports no timm

        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """``(B, H·W, C)`` tokens on an ``(H, W)`` grid → same shape."""
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    """Non-overlapping ``p × p`` patch projection (key ``patch_embed.proj``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` → ``(B, C, H/p, W/p)``."""
        return self.proj(x)


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (key ``ln``, eps 1e-6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` → same shape, normalised over ``C``."""
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class VisionTransformerRVSA(nn.Module):
    """ViT + RVSA backbone with the simple feature pyramid (Wang et al. 2023; MTP, Wang et al. 2024).

    Args:
        img_size: built input side in pixels (sizes ``pos_embed`` and the global tables);
            other inputs, multiples of ``patch_size``, are accepted by resampling.
        patch_size: patch side in pixels, divisible by 4 (the pyramid's finest level is p/4).
        in_chans: input bands.
        embed_dim: width ``C``.
        depth: blocks.
        num_heads: heads.
        mlp_ratio: MLP hidden width / ``C``.
        drop_path_rate: stochastic depth, ``linspace(0, rate, depth)`` over the blocks.
        window_size: RVSA window side in tokens.
        interval: block ``i`` is global when ``(i + 1) % interval == 0``.
        out_indices: four blocks whose raw outputs (no LayerNorm) feed the pyramid.
        rvsa_init: ``zero`` or ``release`` (:data:`RVSA_INITS`), the predictors' init.

    Initialisation (as the authors' released code): Linear trunc_normal(0.02) with
    zero bias, LayerNorm (1, 0), ``pos_embed`` trunc_normal(0.02), Swin bias tables
    trunc_normal(0.02), relative-position tables 0, the patch projection and the pyramid's
    transposed convolutions PyTorch's defaults. (The release also divides ``proj``/``fc2``
    by √(2(i+1)) but re-applies the Linear init afterwards, so that rescale has no effect.)

    Raises:
        ValueError: on inconsistent sizes or an unknown ``rvsa_init``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        window_size: int = 7,
        interval: int = 3,
        out_indices: Sequence[int] = (3, 5, 7, 11),
        rvsa_init: str = "zero",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if patch_size % 4:
            raise ValueError(f"patch_size {patch_size} must be divisible by 4 for the stride-p/4 pyramid level")
        if window_size < 1 or interval < 1:
            raise ValueError(f"window_size and interval must be >= 1, got {window_size} and {interval}")
        if rvsa_init not in RVSA_INITS:
            raise ValueError(f"rvsa_init must be one of {RVSA_INITS}, got {rvsa_init!r}")
        self.out_indices = _check_out_indices(out_indices, depth)
        self.img_size = int(img_size)
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)
        self.embed_dim = self.num_features = int(embed_dim)
        self.window_size = int(window_size)
        self.interval = int(interval)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList(
            RVSABlock(
                embed_dim,
                num_heads,
                window=(i + 1) % interval != 0,
                grid_size=self.grid_size,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                drop_path=rates[i],
            )
            for i in range(depth)
        )
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2),
            _ChannelLayerNorm(embed_dim),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, 2, 2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, 2)
        # MTP's released backbone builds a final norm and never uses it (docs/methods/mtp.md); kept so its
        # checkpoints load key for key, frozen so that no optimiser or DDP reducer waits on it
        self.norm: nn.Module = nn.LayerNorm(embed_dim, eps=1e-6)
        self.norm.requires_grad_(False)
        self._init_weights(rvsa_init)

    def _init_weights(self, rvsa_init: str) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        if rvsa_init == "zero":
            for attn in self.rvsa_attentions():
                attn.zero_predictors()

    def rvsa_attentions(self) -> list[RotatedVariedSizeWindowAttention]:
        """The RVSA attention modules, in block order."""
        return [b.attn for b in self.blocks if isinstance(b.attn, RotatedVariedSizeWindowAttention)]

    # -- timm-style hooks used by rsfm's optimiser groups ------------------------------------

    def no_weight_decay(self) -> set[str]:
        """``{"pos_embed"}`` (norms and biases are exempt anyway)."""
        return {"pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for timm's layer-wise lr decay.

        The stem (``patch_embed``, ``pos_embed``) is layer 0, block ``i`` layer ``i + 1``, the
        pyramid and ``norm`` one last layer at the full rate: block ``i`` of ``L`` gets
        ``decay^(L - i)``, as the MTP fine-tuning recipes (BEiT's rule).
        """
        return {
            "stem": r"^(?:pos_embed|patch_embed)",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^(?:fpn\d|norm)\.", (100000,))],
        }

    # -- forward -----------------------------------------------------------------------------

    def tokens(self, x: Tensor, indices: Sequence[int] = ()) -> tuple[Tensor, list[Tensor], tuple[int, int]]:
        """Run the blocks.

        Args:
            x: ``(B, in_chans, H, W)`` float, normalised; ``H``, ``W`` multiples of the patch.
            indices: blocks whose raw outputs to return.

        Returns:
            ``(last, outs, (h, w))``: the last block's ``(B, h·w, C)`` tokens (no final norm),
            the ``(B, h·w, C)`` outputs of ``indices`` in order, and the token grid.

        Raises:
            ValueError: if ``x`` is not ``(B, in_chans, H, W)`` with sides multiples of the patch.
        """
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"expected (B, {self.in_chans}, H, W) images with H and W multiples of {p}, got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2) + resize_pos_embed(self.pos_embed, self.grid_size, size)
        wanted = {int(i): k for k, i in enumerate(indices)}
        outs: list[Tensor | None] = [None] * len(wanted)
        for i, block in enumerate(self.blocks):
            x = block(x, size)
            if i in wanted:
                outs[wanted[i]] = x
        return x, [o for o in outs if o is not None], size

    def forward_pyramid(self, x: Tensor) -> list[Tensor]:
        """Pyramid ``[(B, C, H/(p/4), W/(p/4)), (…p/2), (…p), (…2p)]`` of blocks :attr:`out_indices`."""
        _, outs, (h, w) = self.tokens(x, self.out_indices)
        maps = [o.transpose(1, 2).reshape(o.shape[0], -1, h, w) for o in outs]
        return [f(m) for f, m in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), maps, strict=True)]

    def forward_pooled(self, x: Tensor) -> Tensor:
        """``(B, C)``: the mean of the last block's raw tokens.

        As MTP's scene-classification models pool (global average of the last block's output,
        then the linear classifier); :attr:`norm` is not applied (the release never uses it).
        """
        last, _, _ = self.tokens(x)
        return last.mean(dim=1)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Same as :meth:`forward_pyramid`."""
        return self.forward_pyramid(x)


def _check_out_indices(out_indices: Sequence[int], depth: int) -> tuple[int, ...]:
    idx = tuple(int(i) for i in out_indices)
    if len(idx) != 4 or any(not 0 <= i < depth for i in idx):
        raise ValueError(f"out_indices must be 4 blocks in [0, {depth}), got {list(out_indices)}")
    return idx


def build_vit_rvsa(
    size: str = "base",
    img_size: int = 224,
    patch_size: int = 16,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    window_size: int = 7,
    interval: int | None = None,
    out_indices: Sequence[int] | None = None,
    rvsa_init: str = "zero",
) -> VisionTransformerRVSA:
    """Build a ViT + RVSA backbone of a named size (width, depth, heads of :data:`VIT_SIZES`).

    Args:
        size: ``tiny`` (192/12/3) | ``small`` (384/12/6) | ``base`` (768/12/12) | ``large`` (1024/24/16).
        img_size: built input side, pixels.
        patch_size: patch side, pixels.
        in_chans: input bands.
        drop_path_rate: stochastic depth (0.1 in MTP, 0.3 when fine-tuning in the papers).
        window_size: RVSA window side in tokens.
        interval: global-attention interval; None: :data:`RVSA_INTERVALS` (3; 6 for large, 8 for
            huge: four global blocks).
        out_indices: pyramid blocks; None: :func:`default_rvsa_out_indices`.
        rvsa_init: ``zero`` (rsfm's default) or ``release``.

    Returns:
        A :class:`VisionTransformerRVSA`; its ``forward`` maps ``(B, in_chans, H, W)`` float32
        to the four pyramid maps.

    Raises:
        ValueError: on an unknown size or inconsistent options.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
    spec = VIT_SIZES[size]
    return VisionTransformerRVSA(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        drop_path_rate=drop_path_rate,
        window_size=window_size,
        interval=RVSA_INTERVALS[size] if interval is None else interval,
        out_indices=default_rvsa_out_indices(spec.depth) if out_indices is None else out_indices,
        rvsa_init=rvsa_init,
    )


# -- loading a plain ViT (MIM) export ----------------------------------------------------------


def _key_patterns(keys: list[str]) -> str:
    """Key names with block indices folded (``blocks.*.attn.rel_pos_h``), for one log line."""
    return ", ".join(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", k) for k in keys)) or "none"


def load_vit_into_rvsa(
    model: VisionTransformerRVSA, state: dict[str, Tensor], source_grid: tuple[int, int], source: str
) -> dict[str, list[str]]:
    """Initialise an RVSA backbone from a plain ViT's weights (MIM → RVSA, as MTP, Wang et al. 2024).

    As the release's loader: the position embedding loses its class-token slot(s) and is
    resampled bicubically from ``source_grid`` to the model's grid; every other tensor loads
    by name (timm's ViT names are the backbone's); what the ViT lacks (RVSA predictors,
    relative-position tables, the pyramid) stays at its init, and what the backbone lacks
    (``cls_token``, ``fc_norm``, a classifier ...) is ignored. Both lists are logged.

    Args:
        model: the backbone to fill, in place.
        state: the ViT's state dict (timm key names; ``pos_embed`` ``(1, k + Sh·Sw, C)``).
        source_grid: ``(Sh, Sw)`` patch grid the ViT was built for.
        source: the file, named in errors and in the log.

    Returns:
        ``{"loaded": [...], "initialised": [...], "ignored": [...]}`` key names.

    Raises:
        ConfigError: naming ``model.encoder.weights`` if a tensor's shape, the depth or the
            position embedding contradicts the backbone.
    """
    own = model.state_dict()
    state = dict(state)
    if "pos_embed" in state:
        pe = state["pos_embed"]
        n = source_grid[0] * source_grid[1]
        extra = pe.shape[1] - n
        if pe.ndim != 3 or extra < 0 or pe.shape[-1] != model.embed_dim:
            raise ConfigError(
                f"model.encoder.weights: {source}: pos_embed {tuple(pe.shape)} does not fit a {source_grid} grid "
                f"of width {model.embed_dim}"
            )
        state["pos_embed"] = resize_pos_embed(pe[:, extra:], source_grid, model.grid_size)
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    deeper = [k for k in state if k.startswith("blocks.") and k not in own]
    if wrong or deeper:
        raise ConfigError(
            f"model.encoder.weights: {source} does not fit a ViT+RVSA of width {model.embed_dim} and depth "
            f"{len(model.blocks)}: {(wrong + deeper)[:3]}"
        )
    loaded = sorted(k for k in state if k in own)
    ignored = sorted(k for k in state if k not in own)
    initialised = sorted(k for k in own if k not in state)
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    log.info(
        "%s → ViT+RVSA: %d tensors loaded; kept at init: %s; ignored: %s",
        source,
        len(loaded),
        _key_patterns(initialised),
        _key_patterns(ignored),
    )
    return {"loaded": loaded, "initialised": initialised, "ignored": ignored}


# -- the rsfm encoder ---------------------------------------------------------------------------


@ENCODERS.register
class ViTRVSA(Encoder):
    """ViT + RVSA (Wang et al., TGRS 2023), MTP's backbone (Wang et al., JSTARS 2024), with its pyramid.

    :meth:`forward_intermediates` returns the simple feature pyramid itself (four maps at
    strides ``p/4, p/2, p, 2p``, ``C`` channels each), so recipes need no neck;
    :meth:`forward_pooled` is the mean of the last block's tokens (no final norm, as MTP's
    classification models).

    ``weights`` may be an rsfm export of
    - a ``vit_rvsa`` encoder: rebuilt from its metadata (size, image size, patch, window,
      interval win over the arguments) and loaded strictly;
    - a plain ``vit`` (e.g. SelectiveMAE or MAE pretraining): the MIM → RVSA initialisation
      of MTP (:func:`load_vit_into_rvsa`): width, depth, patch and bands come from the
      export, ``img_size``, ``window_size``, ``interval`` and ``rvsa_init`` from the
      arguments, and the position embedding is resampled to ``img_size``.

    Args:
        size: ``tiny`` | ``small`` | ``base`` | ``large``.
        img_size: built input side, pixels (any multiple of the patch runs).
        patch_size: patch side, pixels, divisible by 4.
        in_chans: input bands; None: the data's (filled in by the task). A 3-band export is
            adapted to other band counts (:func:`rsfm.models.export.adapt_input_channels`).
        drop_path_rate: stochastic depth, ``linspace(0, rate, depth)``.
        window_size: RVSA window side, tokens.
        interval: every ``interval``-th block is global; None: 3 (6 for large).
        rvsa_init: ``zero`` (predictors start at 0: plain window attention) or ``release``
            (PyTorch's default init, as the authors' code).
        weights: an rsfm encoder export (``.safetensors``), or a released checkpoint (MTP's, MAE's …), optionally
            as ``<source>:<path>``, converted once (:func:`rsfm.models.convert.as_export`); None: random.
        frozen: freeze the encoder.
        out_indices: the four blocks feeding the pyramid; None: (3, 5, 7, 11) for depth 12,
            (7, 11, 15, 23) for depth 24.

    Raises:
        ConfigError: on an unknown size or ``rvsa_init``, a bad patch/image size, other than
            four ``out_indices``, or ``weights`` of another architecture, that contradict
            their own metadata, or (for the fixed-size ``vit_*_rvsa`` names) of another size.
        CheckpointError: if ``weights`` cannot be read.
    """

    #: the size the registered ``vit_<size>_rvsa`` names fix (None: ``size`` decides)
    fixed_size: str | None = None

    def __init__(
        self,
        size: str = "base",
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        window_size: int = 7,
        interval: int | None = None,
        rvsa_init: str = "zero",
        weights: str | None = None,
        frozen: bool = False,
        out_indices: list[int] | None = None,
    ) -> None:
        super().__init__(frozen, out_indices)
        fixed = type(self).fixed_size
        if fixed is not None and size != fixed:
            raise ConfigError(f"model.encoder.size: {type(self).__name__} is of size {fixed!r}, got {size!r}")
        if rvsa_init not in RVSA_INITS:
            raise ConfigError(f"model.encoder.rvsa_init: expected one of {list(RVSA_INITS)}, got {rvsa_init!r}")
        #: for a plain-ViT export: what was loaded, kept at init and ignored (see load_vit_into_rvsa)
        self.load_report: dict[str, list[str]] = {}
        opts = {"window_size": window_size, "interval": interval, "rvsa_init": rvsa_init}
        if weights:
            self._load_weights(str(weights), img_size, in_chans, drop_path_rate, opts)
        else:
            self.model = self._build(size, img_size, patch_size, in_chans or 3, drop_path_rate, opts)
            self.meta = {
                "arch": "vit_rvsa",
                "size": size,
                "img_size": img_size,
                "patch_size": patch_size,
                "in_chans": in_chans or 3,
                "window_size": self.model.window_size,
                "interval": self.model.interval,
                "method": "random-init",
            }
        self._finish()

    def _build(
        self, size: str, img_size: int, patch_size: int, in_chans: int, drop_path_rate: float, opts: dict[str, Any]
    ) -> VisionTransformerRVSA:
        if size not in VIT_SIZES:
            raise ConfigError(f"model.encoder.size: unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
        if img_size % patch_size:
            raise ConfigError(f"model.encoder: img_size {img_size} is not a multiple of patch_size {patch_size}")
        if patch_size % 4:
            raise ConfigError(f"model.encoder.patch_size: {patch_size} must be divisible by 4 (pyramid level p/4)")
        depth = VIT_SIZES[size].depth
        indices = self._out_indices
        if indices is not None and (len(indices) != 4 or any(not 0 <= i < depth for i in indices)):
            raise ConfigError(f"model.encoder.out_indices: expected 4 blocks in [0, {depth}), got {indices}")
        try:
            return build_vit_rvsa(
                size,
                img_size=img_size,
                patch_size=patch_size,
                in_chans=in_chans,
                drop_path_rate=drop_path_rate,
                out_indices=indices,
                **opts,
            )
        except ValueError as err:
            raise ConfigError(f"model.encoder: {err}") from None

    def _load_weights(
        self, weights: str, img_size: int, in_chans: int | None, drop_path_rate: float, opts: dict[str, Any]
    ) -> None:
        from safetensors.torch import load_file

        from rsfm.models.convert import as_export
        from rsfm.models.export import adapt_input_channels, is_resnet, load_encoder, read_encoder_meta

        given, weights = weights, str(as_export(weights))  # a released checkpoint is converted once
        meta = read_encoder_meta(weights)
        arch = str(meta.get("arch", ""))
        fixed = type(self).fixed_size
        if fixed is not None and arch in ("vit", "vit_rvsa") and meta.get("size") != fixed:
            raise ConfigError(
                f"model.encoder.weights: {weights} holds a {meta.get('size')!r} encoder, but "
                f"{type(self).__name__} is of size {fixed!r}; use class_path: ViTRVSA"
            )
        if arch == "vit_rvsa":
            self.model = load_encoder(weights, drop_path_rate=drop_path_rate, in_chans=in_chans)  # type: ignore[assignment]
            if self._out_indices is not None:
                self.model.out_indices = _check_out_indices(self._out_indices, len(self.model.blocks))
            self.meta = dict(self.model.rsfm_meta, weights=given)
            return
        if arch != "vit":
            other = "ResNet" if is_resnet(arch) else "the encoder class of that architecture"
            raise ConfigError(
                f"model.encoder.weights: {weights} holds a {arch or 'unknown'} encoder; ViTRVSA takes 'vit' or "
                f"'vit_rvsa' exports; use class_path: {other}"
            )
        absent = [k for k in ("size", "img_size", "patch_size", "in_chans") if k not in meta]
        if absent:
            raise ConfigError(f"model.encoder.weights: {weights}: its rsfm metadata lacks {absent}")
        src_chans, patch = int(meta["in_chans"]), int(meta["patch_size"])
        chans = int(in_chans or src_chans)
        if img_size % patch:
            raise ConfigError(
                f"model.encoder: img_size {img_size} is not a multiple of the export's patch_size {patch} ({weights})"
            )
        self.model = self._build(str(meta["size"]), img_size, patch, chans, drop_path_rate, opts)
        state = load_file(weights)
        if chans != src_chans and "patch_embed.proj.weight" in state:
            if src_chans != 3:
                raise ConfigError(
                    f"model.encoder.weights: {weights} was trained on {src_chans} bands; only 3-band (RGB) weights "
                    f"adapt to {chans} bands"
                )
            state["patch_embed.proj.weight"] = adapt_input_channels(state["patch_embed.proj.weight"], chans)
        src_grid = int(meta["img_size"]) // patch
        self.load_report = load_vit_into_rvsa(self.model, state, (src_grid, src_grid), weights)
        self.meta = {
            **{k: v for k, v in meta.items() if k not in ("global_pool", "weights")},
            "arch": "vit_rvsa",
            "img_size": img_size,
            "in_chans": chans,
            "window_size": self.model.window_size,
            "interval": self.model.interval,
            "method": str(meta.get("method", "unknown")),
            "init_from": "vit",
            "weights": given,
        }

    # -- interface -------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        """Patch side, pixels."""
        return int(self.model.patch_size)

    @property
    def input_multiple(self) -> int:
        """The patch size."""
        return self.patch_size

    @property
    def out_indices(self) -> list[int]:
        """The four blocks feeding the pyramid."""
        return list(self.model.out_indices)

    @property
    def out_channels(self) -> list[int]:
        """The encoder width, for each of the four pyramid levels."""
        return [int(self.model.embed_dim)] * 4

    @property
    def strides(self) -> list[int]:
        """``[p/4, p/2, p, 2p]`` pixels."""
        p = self.patch_size
        return [p // 4, p // 2, p, 2 * p]

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The pyramid: ``(B, C, H/s, W/s)`` for ``s`` in :attr:`strides`, finest first.

        Args:
            x: ``(B, in_chans, H, W)`` float normalised images, sides multiples of the patch.
        """
        return self.model.forward_pyramid(x)

    def forward_pooled(self, x: Tensor) -> Tensor:
        """``(B, C)``: global average of the last block's tokens (no final norm)."""
        return self.model.forward_pooled(x)


class _FixedSizeRVSA(ViTRVSA):
    """:class:`ViTRVSA` at one size (:attr:`fixed_size`): the same arguments but ``size``."""

    fixed_size = "base"

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int | None = None,
        drop_path_rate: float = 0.0,
        window_size: int = 7,
        interval: int | None = None,
        rvsa_init: str = "zero",
        weights: str | None = None,
        frozen: bool = False,
        out_indices: list[int] | None = None,
    ) -> None:
        super().__init__(
            self.fixed_size, img_size, patch_size, in_chans, drop_path_rate, window_size, interval, rvsa_init,
            weights, frozen, out_indices,
        )  # fmt: skip


@ENCODERS.register
class vit_tiny_rvsa(_FixedSizeRVSA):  # noqa: N801 (a model name, as timm's; recipes use it as class_path)
    """:class:`ViTRVSA` of size ``tiny`` (192 wide, 12 blocks, 3 heads, interval 3); same arguments but ``size``."""

    fixed_size = "tiny"


@ENCODERS.register
class vit_base_rvsa(_FixedSizeRVSA):  # noqa: N801 (a model name, as timm's; recipes use it as class_path)
    """:class:`ViTRVSA` of size ``base`` (768 wide, 12 blocks, 12 heads, interval 3); same arguments but ``size``."""

    fixed_size = "base"


@ENCODERS.register
class vit_large_rvsa(_FixedSizeRVSA):  # noqa: N801 (a model name, as timm's; recipes use it as class_path)
    """:class:`ViTRVSA` of size ``large`` (1024 wide, 24 blocks, 16 heads, interval 6); same arguments but ``size``."""

    fixed_size = "large"
