"""SelectiveMAE (Wang et al., arXiv 2406.11933): encode and reconstruct only rich tokens.

The step: score patches by HOG gradient energy (:mod:`rsfm.methods.hog`), choose seed tokens
by score, grow them to the visible set by PSTS (:mod:`rsfm.methods.selection`), encode the
visible tokens, choose ``r·N`` reconstruction targets among the rest, and decode only those
with a cross-attention decoder (the paper's partial reconstruction).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rsfm.methods.base import MaskedImageModel, StepContext
from rsfm.methods.hog import hog_score
from rsfm.methods.masking import gather_tokens
from rsfm.methods.selection import (
    psts_counts,
    psts_mix,
    psts_select,
    select_by_score,
    select_targets,
    token_budget,
)
from rsfm.models.attention import attention
from rsfm.utils.errors import CheckpointError, ConfigError
from rsfm.utils.registry import METHODS

__all__ = ["DECODERS", "CrossAttentionBlock", "ReleasedCrossAttentionBlock", "SelectiveMAE", "released_state_dict"]

#: ``model.decoder`` choices of :class:`SelectiveMAE`.
DECODERS = ("released", "rsfm")


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention block without query self-attention (CrossMAE, Fu et al. 2024).

    ``x ← x + Attn(LN(x), LN(mem)); x ← x + MLP(LN(x))``.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        from timm.layers import Mlp

        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Attend from queries to memory.

        Args:
            x: ``(B, Q, dim)`` queries.
            mem: ``(B, M, dim)`` keys/values.

        Returns:
            ``(B, Q, dim)``.
        """
        b, q_len, d = x.shape
        h = self.num_heads
        q = self.q(self.norm_q(x)).view(b, q_len, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm_kv(mem)).view(b, mem.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v).transpose(1, 2).reshape(b, q_len, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class ReleasedCrossAttentionBlock(nn.Module):
    """The cross-attention decoder block of SelectiveMAE's release (Wang et al., arXiv 2406.11933).

    ``x ← x + proj(Attn(q(LN(x)), kv(mem))); x ← x + MLP(LN(x))``: the memory is the encoder's
    output as it is (after the encoder's final norm), at the encoder's width, projected to keys
    and values by this block's own ``kv`` layer; no position embedding is added to it and it is
    not normalised again. Parameter names and shapes are the release's (``norm1``,
    ``cross_attn.q``/``kv``/``proj``, ``norm2``, ``mlp.fc1``/``fc2``), so its decoder weights
    load as they are (:func:`released_state_dict`).

    Args:
        encoder_dim: memory width ``D`` (the encoder's).
        dim: query (decoder) width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.

    Raises:
        ValueError: if ``dim`` is not divisible by ``num_heads``.
    """

    def __init__(self, encoder_dim: int, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        from timm.layers import Mlp

        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = nn.Module()
        self.cross_attn.q = nn.Linear(dim, dim)
        self.cross_attn.kv = nn.Linear(encoder_dim, 2 * dim)
        self.cross_attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        """Attend from queries to the encoder's tokens.

        Args:
            x: ``(B, Q, dim)`` queries.
            mem: ``(B, M, encoder_dim)`` encoder output.

        Returns:
            ``(B, Q, dim)``.
        """
        b, q_len, d = x.shape
        h = self.num_heads
        att = self.cross_attn
        q = att.q(self.norm1(x)).view(b, q_len, h, d // h).transpose(1, 2)
        k, v = att.kv(mem).view(b, mem.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v).transpose(1, 2).reshape(b, q_len, d)
        x = x + att.proj(a)
        return x + self.mlp(self.norm2(x))


@METHODS.register
class SelectiveMAE(MaskedImageModel):
    """SelectiveMAE with a ViT encoder.

    Args:
        size: encoder size (``tiny`` | ``small`` | ``base`` | ``large``).
        img_size: input side in pixels (None: the data's).
        patch_size: patch side in pixels.
        in_chans: input channels (None: the data's bands).
        mask_ratio: ``m``; ``int(N·(1 − m))`` tokens are visible to the encoder (0.85).
        rec_ratio: ``r``; ``int(N·r)`` patches are reconstructed (0.25).
        seed_ratio: share of the visible tokens chosen as seeds (0.5).
        hog_score: ``energy`` (rsfm default) or ``official`` (released code: zero up to rounding,
            so selection is uniform; only with ``sample`` seeds and targets); see :mod:`rsfm.methods.hog`.
        seed_selection: ``topk`` or ``sample`` (softmax of standardised scores).
        target_selection: ``topk`` (paper) or ``sample`` (released code).
        score_temperature: softmax temperature of the ``sample`` modes.
        psts: grow seeds by PSTS; if False all visible tokens are chosen like seeds.
        psts_boundaries: stage boundaries as fractions of the run (PSTS, the paper's §3.3).
        psts_steps: PSTS selection steps (2).
        decoder: ``released`` (the release's blocks, :class:`ReleasedCrossAttentionBlock`: keys
            and values are each block's projection of the encoder output as it is; released
            weights load) or ``rsfm`` (:class:`CrossAttentionBlock`: the encoder output is first
            projected to the decoder width, given its decoder position embedding and normalised
            again in every block). Both decode queries made of the mask token plus the
            targets' decoder position embedding, without self-attention among them.
        decoder_depth: cross-attention decoder blocks (8, as the release's default; the paper
            reports 12).
        decoder_embed_dim: decoder width (None: the size's default).
        decoder_num_heads: decoder heads (None: the size's default).
        norm_pix_loss: per-patch normalised pixel targets.
        token_weight_decay: weight decay on the class and mask tokens (True, as the release).

    Raises:
        ValueError: on inconsistent ratios (see :func:`rsfm.methods.selection.token_budget`)
            or unknown selection modes.
        ConfigError: for ``hog_score='official'`` with a ``topk`` selection.
    """

    def __init__(
        self,
        size: str = "base",
        img_size: int | None = None,
        patch_size: int = 16,
        in_chans: int | None = None,
        mask_ratio: float = 0.85,
        rec_ratio: float = 0.25,
        seed_ratio: float = 0.5,
        hog_score: str = "energy",
        seed_selection: str = "topk",
        target_selection: str = "topk",
        score_temperature: float = 1.0,
        psts: bool = True,
        psts_boundaries: list[float] = [0.35, 0.375, 0.725, 0.75],  # noqa: B006
        psts_steps: int = 2,
        decoder: str = "rsfm",
        decoder_depth: int = 8,
        decoder_embed_dim: int | None = None,
        decoder_num_heads: int | None = None,
        norm_pix_loss: bool = True,
        token_weight_decay: bool = True,
    ) -> None:
        super().__init__(size, img_size, patch_size, in_chans, norm_pix_loss, token_weight_decay)
        if decoder not in DECODERS:
            raise ConfigError(f"model.decoder must be one of {list(DECODERS)}, got {decoder!r}")
        for name, value in (("seed_selection", seed_selection), ("target_selection", target_selection)):
            if value not in ("topk", "sample"):
                raise ConfigError(f"model.{name} must be 'topk' or 'sample', got {value!r}")
        if hog_score not in ("energy", "official"):
            raise ConfigError(f"model.hog_score must be 'energy' or 'official', got {hog_score!r}")
        if hog_score == "official" and "topk" in (seed_selection, target_selection):
            # the released score is zero up to rounding: top-k would rank rounding noise and pick
            # the same patches whatever the seed, which is neither the paper nor the release
            raise ConfigError(
                "model.hog_score=official (the released score, zero up to rounding) needs "
                "model.seed_selection=sample and model.target_selection=sample: top-k over it ranks "
                f"rounding noise, a fixed choice, not the release's uniform one (got seed_selection="
                f"{seed_selection!r}, target_selection={target_selection!r})"
            )
        psts_mix(0.0, tuple(psts_boundaries))  # validates the boundaries early
        self.budget = token_budget(self.num_patches, mask_ratio, rec_ratio, seed_ratio if psts else 1.0)
        self.mask_ratio, self.rec_ratio = mask_ratio, rec_ratio
        self.lr_scale = rec_ratio / mask_ratio  # Wang et al., arXiv 2406.11933: lr = (r/m)·blr·batch/256
        self.hog_score = hog_score
        self.seed_selection, self.target_selection = seed_selection, target_selection
        self.score_temperature = score_temperature
        self.psts, self.psts_boundaries, self.psts_steps = psts, tuple(psts_boundaries), psts_steps
        self.decoder = decoder
        dd, dh = self._build_decoder_io(decoder_embed_dim, decoder_num_heads)
        if decoder == "released":
            del self.decoder_embed  # each block projects the encoder output itself
            blocks = [ReleasedCrossAttentionBlock(self.spec.embed_dim, dd, dh) for _ in range(decoder_depth)]
        else:
            blocks = [CrossAttentionBlock(dd, dh) for _ in range(decoder_depth)]
        self.decoder_blocks = nn.ModuleList(blocks)
        self._init_weights()

    def draw(
        self, batch_size: int, device: torch.device, progress: float, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor | None]:
        """The step's draws and PSTS schedule, made eagerly (see :meth:`step_from_draws`).

        Args:
            batch_size: ``B``.
            device: the images' device.
            progress: training progress ``t`` in [0, 1]; sets the PSTS counts.
            generator: RNG on ``device``.

        Returns:
            ``seed_noise`` and ``target_noise`` ``(B, N)`` float32 uniform draws of the
            ``sample`` modes (None for ``topk``), ``psts_noise`` ``(psts_steps, B, N)`` float32
            keys of PSTS's random share and ``psts_counts`` ``(psts_steps, 3)`` int64
            near/far/random counts per PSTS step (:func:`rsfm.methods.selection.psts_counts`);
            both None without PSTS. Drawn in that order from ``generator``.
        """
        n, bgt = self.num_patches, self.budget

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        draws: dict[str, torch.Tensor | None] = {
            "seed_noise": uniform(batch_size, n) if self.seed_selection == "sample" else None,
            "psts_noise": None,
            "psts_counts": None,
        }
        if self.psts:
            draws["psts_noise"] = uniform(self.psts_steps, batch_size, n)
            counts = psts_counts(bgt.n_visible - bgt.n_seed, progress, self.psts_boundaries, self.psts_steps)
            draws["psts_counts"] = torch.tensor(counts, dtype=torch.long).to(device, non_blocking=True)
        draws["target_noise"] = uniform(batch_size, n) if self.target_selection == "sample" else None
        return draws

    def select_tokens(
        self, imgs: torch.Tensor, embeddings: torch.Tensor, draws: dict[str, torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Choose seeds, PSTS-added tokens and reconstruction targets (no gradient).

        The whole batch at once, without a device-to-host copy: HOG energy, top-k or
        Gumbel-top-k sampling, PSTS similarities and its near/far/random choice are batched
        tensor operations of static shapes.

        Args:
            imgs: ``(B, C, H, W)`` float32.
            embeddings: ``(B, N, D)`` patch + position embeddings.
            draws: the step's draws and PSTS counts (:meth:`draw`).

        Returns:
            ``ids_seed`` ``(B, n_seed)``, ``ids_added`` ``(B, n_visible − n_seed)``,
            ``ids_visible`` (seeds then added), ``ids_target`` ``(B, n_target)``; int64.
        """
        bgt = self.budget
        with torch.no_grad():
            scores = hog_score(imgs, self.patch_size, self.hog_score)
            ids_seed = select_by_score(
                scores, bgt.n_seed, self.seed_selection, self.score_temperature, noise=draws["seed_noise"]
            )
            if self.psts:
                ids_added = psts_select(
                    embeddings.detach(),
                    ids_seed,
                    bgt.n_visible,
                    progress=0.0,  # unused: the counts of this step's progress are given
                    num_steps=self.psts_steps,
                    counts=draws["psts_counts"],
                    noise=draws["psts_noise"],
                )
            else:
                ids_added = ids_seed[:, :0]
            ids_visible = torch.cat([ids_seed, ids_added], dim=1)
            ids_target = select_targets(
                scores,
                ids_visible,
                bgt.n_target,
                self.target_selection,
                self.score_temperature,
                noise=draws["target_noise"],
            )
        return {"ids_seed": ids_seed, "ids_added": ids_added, "ids_visible": ids_visible, "ids_target": ids_target}

    def forward_decoder(
        self, latent: torch.Tensor, ids_visible: torch.Tensor, ids_target: torch.Tensor
    ) -> torch.Tensor:
        """Decode only the target positions (Wang et al., arXiv 2406.11933).

        Args:
            latent: ``(B, 1 + n_visible, D)`` encoder output (class token first).
            ids_visible: ``(B, n_visible)`` int64 positions of the encoded tokens.
            ids_target: ``(B, n_target)`` int64 positions to reconstruct.

        Returns:
            ``(B, n_target, p²·C)`` predicted pixels.
        """
        if self.decoder == "released":
            mem = latent
            pos = self.decoder_pos_embed.to(latent.dtype).expand(latent.shape[0], -1, -1)
        else:
            y = self.decoder_embed(latent)
            pos = self.decoder_pos_embed.to(y.dtype).expand(y.shape[0], -1, -1)
            # Keys/values: encoder tokens with their decoder position (class token at index 0).
            mem = y + torch.cat([pos[:, :1], gather_tokens(pos[:, 1:], ids_visible)], dim=1)
        x = self.mask_token.to(pos.dtype) + gather_tokens(pos[:, 1:], ids_target)
        for blk in self.decoder_blocks:
            x = blk(x, mem)
        return self.decoder_pred(self.decoder_norm(x))

    def step_from_draws(self, imgs: torch.Tensor, **draws: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One SelectiveMAE step given the draws of :meth:`draw` (what ``trainer.compile`` compiles).

        Args:
            imgs: ``(B, C, H, W)`` float32, normalised.
            **draws: the output of :meth:`draw`.

        Returns:
            Dict with ``loss`` (MSE over the ``n_target`` targets), ``pred``
            ``(B, n_target, p²·C)``, and the index tensors of :meth:`select_tokens`.
        """
        x = self.embed_patches(imgs)
        sel = self.select_tokens(imgs, x, draws)
        latent = self.encode(gather_tokens(x, sel["ids_visible"]))
        pred = self.forward_decoder(latent, sel["ids_visible"], sel["ids_target"])
        target = self.targets(imgs, sel["ids_target"])
        loss = (pred.float() - target.float()).pow(2).mean()
        return {"loss": loss, "pred": pred, **sel}

    def load_released(self, state: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, list[str]]:
        """Load the weights of SelectiveMAE's release (encoder and decoder) into this model.

        The model must have ``decoder="released"`` and the release's shapes (size, patch,
        decoder width, heads and depth).

        Args:
            state: the release's ``state_dict`` (see :func:`released_state_dict`).
            source: the file, named in errors.

        Returns:
            The report of :func:`released_state_dict`.

        Raises:
            ConfigError: if this model's decoder is not ``released``.
            CheckpointError: if a tensor is missing, unexpected or of another shape.
        """
        if self.decoder != "released":
            raise ConfigError(
                f"{source}: released SelectiveMAE weights load only into model.decoder=released "
                f"(this model has decoder={self.decoder!r})"
            )
        mapped, report = released_state_dict(state)
        own = self.state_dict()
        wrong = [
            f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
            for k, v in mapped.items()
            if k in own and v.shape != own[k].shape
        ]
        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        if wrong or missing or unexpected:
            detail = "; ".join(
                f"{what}: {keys[:3]}{' …' if len(keys) > 3 else ''}"
                for what, keys in (("other shape", wrong), ("missing", missing), ("unexpected", unexpected))
                if keys
            )
            raise CheckpointError(
                f"{source} does not fit this SelectiveMAE (size {self.size}, {len(self.decoder_blocks)} decoder "
                f"blocks): {detail}"
            )
        self.load_state_dict(mapped)
        return report

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, torch.Tensor]:
        """One step (:meth:`forward`), plus the PSTS stage to log (1 near … 3 far … 5 random, :func:`psts_mix`)."""
        out = self(batch["image"], progress=ctx.progress, generator=ctx.generator)
        out["psts_stage"] = torch.tensor(float(psts_mix(ctx.progress, self.psts_boundaries).stage))
        return out


#: Tensors of the release's pretraining model that rsfm does not use: the projection and the
#: token-probability network it builds but never calls, the HOG layer's fixed filters, and
#: the fixed sin-cos decoder position embedding (rsfm recomputes it).
_RELEASE_UNUSED = ("decoder_embed1.", "pos_embed_probs", "get_token_probs", "hog.", "decoder_pos_embed")
_ENCODER_KEYS = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
_DECODER_KEYS = ("mask_token", "decoder_blocks.", "decoder_norm.", "decoder_pred.")


def released_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map a SelectiveMAE release's pretraining ``state_dict`` to :class:`SelectiveMAE` names.

    The release (Wang et al., arXiv 2406.11933) saves encoder tensors at the top level
    (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N``, ``norm``) and its
    decoder as ``mask_token``, ``decoder_blocks.N`` (:class:`ReleasedCrossAttentionBlock`'s
    names), ``decoder_norm`` and ``decoder_pred``. Encoder tensors gain the ``encoder.``
    prefix; decoder tensors keep their names; a DDP ``module.`` prefix is removed; what rsfm
    does not use (``decoder_embed1``, the token-probability network, the HOG filters and the
    fixed ``decoder_pos_embed``) is dropped.

    Args:
        state: the release's ``state_dict`` (the ``model`` entry of its checkpoint files).

    Returns:
        ``(mapped, report)``: the state dict for :meth:`SelectiveMAE.load_released` and
        ``{"encoder": [...], "decoder": [...], "dropped": [...]}`` source key names.

    Raises:
        CheckpointError: on a key that is neither the release's encoder, decoder nor a known
            unused tensor (the file is not a SelectiveMAE pretraining checkpoint).
    """
    from rsfm.utils.errors import CheckpointError

    mapped: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"encoder": [], "decoder": [], "dropped": []}
    unknown = []
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(_RELEASE_UNUSED):
            report["dropped"].append(key)
        elif name.startswith(_DECODER_KEYS):
            mapped[name] = value
            report["decoder"].append(key)
        elif name.startswith(_ENCODER_KEYS):
            mapped[f"encoder.{name}"] = value
            report["encoder"].append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"not a SelectiveMAE release state dict: {len(unknown)} unknown key(s), e.g. {unknown[:3]}"
        )
    return mapped, report
