"""The interface of every pretraining method, and what MAE and SelectiveMAE share.

A method is an ``nn.Module`` that owns its encoder and whatever else it trains (decoders,
teachers, queues). The generic pretraining module (:class:`rsfm.methods.module.PretrainTask`)
normalises the images of the method's :attr:`PretrainMethod.image_keys`, calls
:meth:`PretrainMethod.training_step` once per batch with a :class:`StepContext` (training
progress and seeded generators), and :meth:`PretrainMethod.after_optimizer_step` after every
optimiser step. To add a method, subclass :class:`PretrainMethod`, register it with
``@METHODS.register`` and name it in a recipe (``docs/extending.md``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsfm.methods.masking import gather_tokens, normalize_patch_targets, patchify
from rsfm.models.encoders.vit import VIT_SIZES, build_vit, sincos_pos_embed_2d
from rsfm.utils.errors import ConfigError

__all__ = ["MaskedImageModel", "PretrainMethod", "StepContext", "init_mim_weights"]


@dataclass
class StepContext:
    """What a method's training step may use besides the batch.

    Attributes:
        progress: fraction of the run's optimiser steps done, in [0, 1].
        generator: generator seeded from (run seed, step, rank), on the model's device: masks
            and sampling of a resumed run equal an uninterrupted run's.
        shared_generator: CPU generator in the same state on every rank (a permutation all
            ranks must agree on, as MoCo's shuffle-BN).
        world_size: number of ranks.
    """

    progress: float
    generator: torch.Generator | None = None
    shared_generator: torch.Generator | None = None
    world_size: int = 1


class PretrainMethod(nn.Module, metaclass=abc.ABCMeta):
    """Base of the pretraining methods.

    Subclasses set :attr:`encoder` (the network that is exported, timm key names) and
    implement :meth:`training_step` and :meth:`export_meta`.
    """

    #: keys every batch must carry
    sample_keys: ClassVar[tuple[str, ...]] = ("image",)
    #: image keys the pretraining module normalises with the data's mean/std
    image_keys: ClassVar[tuple[str, ...]] = ("image",)
    #: multiplies ``blr · batch / 256`` to give the learning rate (SelectiveMAE: r / m)
    lr_scale: float = 1.0
    #: the step runs collectives (gathers across ranks): under DDP, a rank whose batch is
    #: empty still calls :meth:`training_step`, with zero-row image tensors, to join them
    joins_collectives: ClassVar[bool] = False
    #: why the method cannot train under FSDP (``trainer.strategy: fsdp``), None when it can;
    #: the recipe is refused with this reason before anything runs
    fsdp_unsupported: ClassVar[str | None] = None
    encoder: nn.Module

    @abc.abstractmethod
    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Tensor]:
        """Losses of one batch: ``loss`` (what is minimised) plus scalars to log."""

    def after_optimizer_step(self) -> None:
        """Called after every optimiser step (an EMA teacher's update)."""

    def compile_step(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Run the step's forward and loss compiled by ``torch.compile`` (``trainer.compile``).

        Args:
            mode: ``torch.compile`` mode (None: the default; ``reduce-overhead`` adds CUDA graphs).
            backend: ``torch.compile`` backend.

        Raises:
            ConfigError: for a method without a compiled step (this default).
        """
        raise ConfigError(
            f"trainer.compile: {type(self).__name__} has no compiled step (MAE and SelectiveMAE have); "
            "set trainer.compile=false"
        )

    @abc.abstractmethod
    def export_meta(self) -> dict[str, Any]:
        """Metadata to rebuild :attr:`encoder` (see :func:`rsfm.models.export.export_encoder`)."""


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


class MaskedImageModel(PretrainMethod):
    """A ViT encoder plus what every masked-image-modeling method needs around it.

    Args:
        size: encoder size, ``tiny`` | ``small`` | ``base`` | ``large``.
        img_size: input side in pixels (None: the data's ``img_size``).
        patch_size: patch side ``p`` in pixels.
        in_chans: input channels ``C`` (None: the data's bands).
        norm_pix_loss: regress per-patch normalised pixels (MAE §A.1).
        token_weight_decay: apply weight decay to the class and mask tokens (True, as MAE's and
            SelectiveMAE's released pretraining code do: they exempt only 1-D tensors, and the
            tokens are ``(1, 1, D)``); False exempts them, as timm's ``no_weight_decay`` does.
            Norms, biases and the fixed position embeddings never decay.

    Raises:
        ConfigError: on an unknown size or an image size that is not a multiple of the patch.
    """

    def __init__(
        self,
        size: str,
        img_size: int | None,
        patch_size: int,
        in_chans: int | None,
        norm_pix_loss: bool,
        token_weight_decay: bool = True,
    ) -> None:
        super().__init__()
        self.token_weight_decay = bool(token_weight_decay)
        img_size, in_chans = int(img_size or 224), int(in_chans or 3)
        if size not in VIT_SIZES:
            raise ConfigError(f"model.size: unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
        if img_size % patch_size:
            raise ConfigError(f"model.patch_size {patch_size} does not divide the image size {img_size}")
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
        """Full parameter names exempt from weight decay besides norms and biases.

        The (fixed) position embedding always; the class and mask tokens unless
        ``token_weight_decay``.
        """
        names = {"encoder.pos_embed"}
        if not self.token_weight_decay:
            names |= {"encoder.cls_token", "mask_token"}
        return names

    @abc.abstractmethod
    def draw(
        self, batch_size: int, device: torch.device, progress: float, generator: torch.Generator | None
    ) -> dict[str, Tensor | None]:
        """The step's random draws and schedule, as tensors for :meth:`step_from_draws`.

        Everything that needs the generator or the training progress happens here, eagerly,
        so that :meth:`step_from_draws` is a pure tensor program ``torch.compile`` captures
        as one graph for the whole run (no generator, no Python branch on the progress).
        """

    @abc.abstractmethod
    def step_from_draws(self, imgs: Tensor, **draws: Tensor | None) -> dict[str, Tensor]:
        """The method's forward and loss given the draws of :meth:`draw` (what is compiled)."""

    def forward(
        self, imgs: Tensor, progress: float = 0.0, generator: torch.Generator | None = None, eager: bool = False
    ) -> dict[str, Tensor]:
        """One step: :meth:`draw`, then :meth:`step_from_draws` (compiled after :meth:`compile_step`).

        Args:
            imgs: ``(B, C, H, W)`` float32, normalised.
            progress: training progress ``t`` in [0, 1].
            generator: RNG of the step's random choices, on ``imgs``' device.
            eager: run uncompiled even after :meth:`compile_step` (a reconstruction figure: its
                batch size and ``no_grad`` would otherwise compile a second graph).

        Returns:
            The method's outputs: ``loss``, ``pred`` and the chosen token indices.
        """
        draws = self.draw(imgs.shape[0], imgs.device, progress, generator)
        step = (None if eager else self.__dict__.get("_compiled_step")) or self.step_from_draws
        return step(imgs, **draws)

    def compile_step(self, mode: str | None = None, backend: str = "inductor") -> None:
        """Compile :meth:`step_from_draws` (forward and loss) with ``torch.compile(fullgraph=True)``.

        ``fullgraph`` makes a graph break an error rather than a silent slowdown. Shapes are
        static per run (batch, budgets), so one graph serves every step; a last batch of
        another size compiles once more.

        Args:
            mode: ``torch.compile`` mode (None: the default; ``reduce-overhead`` adds CUDA graphs,
                ``max-autotune`` tunes kernels).
            backend: ``torch.compile`` backend (``inductor`` generates kernels; ``aot_eager``
                only captures the graph, to check it quickly).
        """
        # kept out of the module's attributes: neither a parameter nor state to save
        self.__dict__["_compiled_step"] = torch.compile(
            self.step_from_draws, fullgraph=True, mode=mode, backend=backend
        )

    @property
    def compiled(self) -> bool:
        """Whether the step runs compiled (:meth:`compile_step`)."""
        return "_compiled_step" in self.__dict__

    def __getstate__(self) -> dict[str, Any]:
        # a compiled function does not pickle or deep-copy; the copy runs eagerly
        state = super().__getstate__()
        state = dict(state)
        state.pop("_compiled_step", None)
        return state

    def training_step(self, batch: dict[str, Any], ctx: StepContext) -> dict[str, Tensor]:
        """``self(batch["image"], ctx.progress, ctx.generator)``: the loss and the chosen tokens."""
        return self(batch["image"], progress=ctx.progress, generator=ctx.generator)

    def export_meta(self) -> dict[str, Any]:
        """Metadata to rebuild the encoder (see :func:`rsfm.models.export.export_encoder`)."""
        return {
            "arch": "vit",
            "size": self.size,
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
        }
