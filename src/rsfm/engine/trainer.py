"""The Lightning trainer of every rsfm run: checkpoints, logs, guards, precision, sharding.

Many GPUs and many machines are Lightning's: the trainer takes ``trainer.devices``,
``trainer.num_nodes`` and ``trainer.strategy`` from the recipe as they are, and Lightning
detects the cluster it runs in (``srun`` under SLURM, ``torchrun``'s TorchElastic variables,
or, on one machine, launching the other processes itself). rsfm never launches processes.

``trainer.strategy: fsdp`` (or ``fsdp_activation_checkpointing``) gives
:class:`BlockFSDPStrategy`: Lightning's FSDP with one FSDP unit per transformer block, found
in the model when it is wrapped.

.. versionadded:: 0.2
.. versionchanged:: 0.3
   FSDP by transformer block (``trainer.strategy: fsdp``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

from rsfm.engine.callbacks import NonFiniteGuard, SkipReportCallback, StoreRecipe
from rsfm.engine.checkpoint import AtomicCheckpointIO, load_checkpoint
from rsfm.engine.csv_log import ResumableCSVLogger
from rsfm.engine.precision import bf16_hint, default_precision
from rsfm.utils.errors import CheckpointError, ConfigError

__all__ = [
    "FSDP_STRATEGIES",
    "AutocastFSDPPrecision",
    "BlockFSDPStrategy",
    "block_types",
    "build_trainer",
    "shared_modules",
]

#: ``trainer.strategy`` names that build a :class:`BlockFSDPStrategy`, and whether it
#: recomputes the blocks' activations in the backward pass (activation checkpointing)
FSDP_STRATEGIES: dict[str, bool] = {"fsdp": False, "fsdp_activation_checkpointing": True}


def block_types(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of a model's transformer blocks: what FSDP shards one by one.

    A block is a member of an ``nn.Sequential`` or ``nn.ModuleList`` held under the name
    ``blocks`` or ``*_blocks``: timm's ``VisionTransformer.blocks`` (encoders, ViT + RVSA), the
    MAE decoder's ``decoder_blocks`` (timm ``Block``) and SelectiveMAE's ``decoder_blocks``
    (:class:`~rsfm.methods.selective_mae.CrossAttentionBlock` or
    :class:`~rsfm.methods.selective_mae.ReleasedCrossAttentionBlock`). The convolutions of a
    torchvision feature pyramid (``inner_blocks``, ``layer_blocks``: MTP's detection heads) match
    too; :class:`BlockFSDPStrategy` leaves out the instances that are shared (:func:`shared_modules`).

    Args:
        model: any module (a LightningModule, a method, an encoder).

    Returns:
        The block classes found (empty when the model has none, e.g. a ResNet).
    """
    found: set[type[nn.Module]] = set()
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        if isinstance(module, (nn.Sequential, nn.ModuleList)) and (leaf == "blocks" or leaf.endswith("_blocks")):
            found.update(type(m) for m in module.children())
    return found


def shared_modules(model: nn.Module) -> set[int]:
    """The ids of the modules of ``model`` that contain a module reachable by more than one path.

    MTP shares each decoder's layers between the pretraining datasets' heads
    (:func:`~rsfm.models.heads.base.share_trunk`): such a layer appears under two names. FSDP
    can make a module its own unit only if every path to the module's parameters goes through it,
    so a shared module, and any module holding one, stays in its parent's unit.

    Args:
        model: any module.

    Returns:
        ``id()`` of every shared module and of every module with a shared module inside it.
    """
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    shared = {key for key, count in seen.items() if count > 1}
    return {id(m) for m in model.modules() if any(id(sub) in shared for sub in m.modules())}


class AutocastFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision, with ``bf16-mixed`` and ``16-mixed`` meaning what they mean without FSDP.

    Lightning's FSDP casts the parameters themselves to bf16 (or fp16) under ``*-mixed``
    (FSDP's ``MixedPrecision(param_dtype=...)``), and autocasts only on CUDA. Code written for
    autocast then breaks: rsfm's detection heads run their region stage in float32 with autocast
    off (box coordinates, :class:`~rsfm.models.heads.detection.FasterRCNNHead`), and a float32
    input meets bf16 weights there. Here the parameters stay float32 (FSDP gathers and reduces
    them in float32, as DDP reduces its gradients), and the forward runs under autocast on the
    run's device, CPU included: the numerics of a DDP or single-device run. The price is the
    communication of float32 rather than bf16 weights and gradients. ``*-true`` precisions are
    Lightning's.

    Args:
        precision: as :class:`lightning.pytorch.plugins.precision.FSDPPrecision`.
        scaler: the fp16 gradient scaler (``16-mixed``), None for Lightning's default.
        device_type: ``'cuda'`` or ``'cpu'``, autocast's device; set by :class:`BlockFSDPStrategy`
            when it wraps the model (which also turns ``16-mixed`` on a CPU into ``bf16-mixed``,
            as Lightning does without FSDP).
    """

    def __init__(self, precision: Any, scaler: Any = None, device_type: str = "cuda") -> None:
        # Lightning's check of ``scaler`` reads ``self.precision`` before setting it: pass it after
        super().__init__(precision)
        if scaler is not None:
            self.scaler = scaler
        self.device_type = device_type

    @property
    def mixed_precision_config(self) -> Any:
        """None under ``*-mixed`` (no FSDP parameter casting); Lightning's otherwise."""
        return None if "mixed" in self.precision else super().mixed_precision_config

    def forward_context(self) -> Any:
        """Autocast to bf16 or fp16 on :attr:`device_type` under ``*-mixed``; Lightning's otherwise."""
        if "mixed" in self.precision:
            dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.float16
            return torch.autocast(self.device_type, dtype=dtype)
        return super().forward_context()


class BlockFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP (Zhao et al., "PyTorch FSDP", VLDB 2023) with one unit per transformer block.

    Each block's weights, gradients and optimiser state are split over all ranks and gathered
    only while that block runs (``FULL_SHARD``, ZeRO-3); what lies outside the blocks (patch
    embedding, tokens, norms, decoder projections) forms the root unit. This is what lets
    ViT-L and larger pretrain with a per-GPU memory of about the model over the number of GPUs.

    Why a strategy built by rsfm rather than Lightning's ``"fsdp"`` string: the string gives a
    single FSDP unit for the whole model (every weight gathered at once: no memory saved
    during the step), and the classes to wrap must be named when the strategy is built, before
    the model exists. Here they are found in the model when Lightning wraps it
    (:func:`block_types`, or ``block_classes``), so any method with ViT blocks shards well with
    ``trainer.strategy: fsdp`` and no method declares anything. The rest is Lightning's: cluster
    detection, launching, mixed precision, checkpoint gathering. Beyond Lightning's FSDP:

    - the optimiser is built while the full parameters are in place, so weight-decay groups
      that look at parameter shapes (no decay on 1-D tensors, :func:`rsfm.optim.param_groups`)
      see the real shapes rather than FSDP's flat shards;
    - checkpoints are read as plain tensors (Lightning's FSDP loader unpickles them without
      ``weights_only``), and the optimiser state is saved and loaded in ``torch.optim``'s own
      format, matched by position within the groups (Lightning's gives AdamW's ``exp_avg``
      the values of ``exp_avg_sq`` on CPU ranks, so a resumed run drifted; see
      :meth:`optimizer_state`): a resumed run equals an uninterrupted one bit for bit, and
      FSDP and DDP checkpoints resume under either strategy;
    - after a completed ``fit``, the LightningModule of rank 0 holds the full trained weights
      and no FSDP wrappers, as after DDP, so what runs after training (the encoder export)
      works unchanged; the other ranks' modules stay sharded. Do not ``fit`` it again with
      this trainer.

    Checkpoints are full state dicts gathered on rank 0 (``state_dict_type="full"``), written
    by the trainer's checkpoint IO: one ``.ckpt`` file that loads without FSDP (``rsfm
    export``) and resumes with any number of ranks. Lightning's FSDP checks refuse the CPU; this
    class does not (FSDP runs on CPUs with the gloo backend, used by the tests).

    Args:
        activation_checkpointing: recompute each block's activations during the backward
            pass instead of storing them (less memory, about a third more compute).
        block_classes: the classes to shard one by one; None: :func:`block_types` of the model.
        **kwargs: :class:`lightning.pytorch.strategies.FSDPStrategy` arguments
            (``sharding_strategy``, ``cpu_offload``...); ``auto_wrap_policy`` and
            activation checkpointing are set here.

    Raises:
        ConfigError: (when the model is wrapped) if the model has no transformer blocks.
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        block_classes: set[type[nn.Module]] | None = None,
        **kwargs: Any,
    ) -> None:
        for key in ("auto_wrap_policy", "activation_checkpointing_policy", "activation_checkpointing"):
            if key in kwargs:
                raise TypeError(f"BlockFSDPStrategy sets {key} itself (from the model's blocks)")
        self.block_classes: tuple[type[nn.Module], ...] = tuple(block_classes or ())
        self.activation_checkpointing = bool(activation_checkpointing)
        self._shared: set[int] = set()  # ids of the shared modules, never units of their own
        policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=self._is_block)
        super().__init__(auto_wrap_policy=policy, state_dict_type="full", **kwargs)

    @property
    def precision_plugin(self) -> FSDPPrecision:
        """Lightning's FSDP precision plugin, as :class:`AutocastFSDPPrecision` under ``*-mixed``."""
        return super().precision_plugin

    @precision_plugin.setter
    def precision_plugin(self, plugin: Any) -> None:
        if isinstance(plugin, FSDPPrecision) and not isinstance(plugin, AutocastFSDPPrecision):
            if "mixed" in plugin.precision:
                plugin = AutocastFSDPPrecision(plugin.precision, plugin.scaler)
        FSDPStrategy.precision_plugin.fset(self, plugin)  # type: ignore[attr-defined]

    def _is_block(self, module: nn.Module) -> bool:
        return isinstance(module, self.block_classes) and id(module) not in self._shared

    def _setup_model(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` in FSDP with one unit per block (classes found unless given).

        Done here rather than by Lightning's ``FSDPStrategy._setup_model``, which names the
        device by its index (None for the CPU, which FSDP then refuses).
        """
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if not self.block_classes:
            self.block_classes = tuple(sorted(block_types(model), key=lambda c: c.__qualname__))
        if not self.block_classes:
            raise ConfigError(
                f"trainer.strategy: FSDP shards a model by its transformer blocks, and {type(model).__name__} has "
                "none (no 'blocks' or '*_blocks' list of modules); use trainer.strategy=ddp"
            )
        if any(isinstance(m, FSDP) for m in model.modules()):
            raise ConfigError(f"trainer.strategy: {type(model).__name__} is already wrapped in FSDP")
        for m in model.modules():
            reason = getattr(type(m), "fsdp_unsupported", None)
            if isinstance(reason, str):
                raise ConfigError(f"trainer.strategy: {type(m).__name__} cannot train under FSDP: {reason}")
        self._shared = shared_modules(model)
        plugin = self.precision_plugin
        if isinstance(plugin, AutocastFSDPPrecision):
            plugin.device_type = self.root_device.type
            if plugin.device_type == "cpu" and plugin.precision == "16-mixed":
                # as Lightning does without FSDP: CPUs have no fp16 loss scaling
                rank_zero_info("[rsfm] 16-mixed on the CPU has no loss scaler: running bf16-mixed instead")
                plugin.precision, plugin.scaler = "bf16-mixed", None
        wrapped = FSDP(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            **self.kwargs,
        )
        if self.activation_checkpointing:
            apply_activation_checkpointing(wrapped, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=self._is_block)
        return wrapped

    def setup_optimizers(self, trainer: L.Trainer) -> None:
        """Build the optimiser while every parameter has its full shape (see the class docstring)."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(self.model, writeback=False):
            super().setup_optimizers(trainer)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        """The full optimiser state on rank 0 (all ranks take part), in ``torch.optim``'s own format.

        Keys are the positions of the parameters in the optimiser's groups, as
        ``Optimizer.state_dict()`` of an unsharded model gives them, so the checkpoint resumes
        under DDP as well. Other ranks get an empty dict. (Lightning's version keys by the
        model's parameter order and, on CPU ranks, stores ``exp_avg_sq`` in place of
        ``exp_avg``: see :meth:`_full_state_dicts`.)
        """
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's
        offload = self.root_device.type != "cpu"
        with FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        ):
            named = FSDP.optim_state_dict(self.model, optimizer)
        if not self.is_global_zero:
            return {}
        position: dict[str, int] = {}
        groups = []
        for group in named["param_groups"]:
            ids = [position.setdefault(name, len(position)) for name in group["params"]]
            groups.append({**group, "params": ids})
        state = {position[name]: value for name, value in named["state"].items() if name in position}
        return {"state": state, "param_groups": groups}

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a full checkpoint file into the sharded model and optimiser (every rank reads it).

        The file is read as plain tensors (:func:`rsfm.engine.checkpoint.load_checkpoint`,
        memory-mapped). The optimiser state is matched to the parameters by position within
        each group, as ``torch.optim.Optimizer.load_state_dict`` does, so a checkpoint of a
        DDP or single-device run resumes under FSDP too. (Lightning's own FSDP loader gives
        wrong optimiser states on CPU ranks, see :meth:`_full_state_dicts`.) Lightning's
        sharded checkpoint folders are left to Lightning.

        Returns:
            The rest of the checkpoint (loops, schedulers, callbacks...), for Lightning.

        Raises:
            CheckpointError: if the file is missing, unsafe or not a checkpoint, or its
                optimiser groups do not fit the optimiser's.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            return super().load_checkpoint(path, weights_only=weights_only)
        checkpoint = load_checkpoint(path, mmap=True)
        module = self.lightning_module
        assert self.model is not None and module is not None
        if "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is not a Lightning checkpoint (it has no 'state_dict')")
        with self._full_state_dicts():
            self.model.load_state_dict(checkpoint.pop("state_dict"), strict=module.strict_loading)
        saved = checkpoint.pop("optimizer_states", None)
        if saved is None or module.trainer.state.fn != TrainerFn.FITTING:
            return checkpoint
        if len(saved) != len(self.optimizers):
            raise CheckpointError(f"{path} holds {len(saved)} optimiser states, the run has {len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            named = self._named_optimizer_state(optimizer, state, path)
            with self._full_state_dicts():
                optimizer.load_state_dict(FSDP.optim_state_dict_to_load(self.model, optimizer, named))
        return checkpoint

    def _full_state_dicts(self) -> Any:
        """FSDP's full (unsharded) state dicts of model and optimiser, on every rank, for loading.

        Without ``offload_to_cpu``: with it, torch's FSDP (2.14, ``optim_state_dict_to_load``)
        gives the CPU ranks optimiser states that share storage, so that every state of a
        parameter (AdamW's ``exp_avg`` and ``exp_avg_sq``) ends up holding the last one.
        """
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False),
        )

    def _named_optimizer_state(self, optimizer: Any, state: dict[str, Any], path: Path) -> dict[str, Any]:
        """A saved optimiser state (integer keys) keyed by parameter names, as FSDP loads it."""
        assert self.model is not None
        names = {id(p): _clean_name(n) for n, p in self.model.named_parameters()}
        groups, by_name = [], {}
        saved_groups = state.get("param_groups", [])
        if len(saved_groups) != len(optimizer.param_groups):
            raise CheckpointError(
                f"{path}: {len(saved_groups)} optimiser groups, the run has {len(optimizer.param_groups)}; "
                "resume with the recipe it was trained with"
            )
        for current, saved in zip(optimizer.param_groups, saved_groups, strict=True):
            if len(current["params"]) != len(saved["params"]):
                raise CheckpointError(
                    f"{path}: an optimiser group of {len(saved['params'])} parameters, the run's has "
                    f"{len(current['params'])}; resume with the recipe it was trained with"
                )
            keys = [names[id(p)] for p in current["params"]]
            for key, saved_id in zip(keys, saved["params"], strict=True):
                if saved_id in state["state"]:
                    by_name[key] = state["state"][saved_id]
            groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": keys})
        return {"state": by_name, "param_groups": groups}

    def on_train_end(self) -> None:
        """Gather the full weights (all ranks take part); rank 0's module gets them, unwrapped."""
        super().on_train_end()
        state = self.lightning_module_state_dict()  # collective; the full state on rank 0 only
        module = self.lightning_module
        if self.is_global_zero and module is not None:
            _unwrap(module)
            _assign(module, state)
            module.cpu()  # as DDP's teardown leaves it


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, except that step checkpoints due on an epoch's last batch wait for its end.

    A checkpoint every ``N`` training steps can fall on an epoch's last batch. Lightning saves
    it there, before that epoch's validation, and a run resumed from it does not run that
    validation again: the epoch's scores are never logged and the best-checkpoint callback
    never sees them (a worse later epoch became ``best.ckpt``). Such a checkpoint is written
    at the end of the epoch instead (same epoch and step in its name), after the validation,
    where Lightning's epoch checkpoints are written too.
    """

    _deferred = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        """Save as Lightning does, except on an epoch's last batch (saved at the epoch's end)."""
        if trainer.is_last_batch and self._every_n_train_steps >= 1:
            due = trainer.global_step % self._every_n_train_steps == 0
            self._deferred = self._deferred or (due and not self._should_skip_saving_checkpoint(trainer))
            return
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write a step checkpoint deferred from the epoch's last batch, then Lightning's epoch checkpoint."""
        if self._deferred:
            self._deferred = False
            if not self._should_skip_saving_checkpoint(trainer):
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)
        super().on_train_epoch_end(trainer, pl_module)


def _clean_name(name: str) -> str:
    """A parameter name without the FSDP and activation-checkpointing wrappers' prefixes."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def _unwrap(module: nn.Module) -> None:
    """Replace the FSDP and activation-checkpointing wrappers inside ``module`` by the modules they wrap."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for name, child in list(module.named_children()):
        inner = child
        while isinstance(inner, (FSDP, CheckpointWrapper)):
            inner = inner.module if isinstance(inner, FSDP) else inner._checkpoint_wrapped_module
        if inner is not child:
            setattr(module, name, inner)
        _unwrap(inner)


def _assign(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter and persistent buffer of ``module`` its full tensor from ``state``.

    A parameter shared by two modules (MTP's heads) is in ``state`` under each of its names.

    Raises:
        RuntimeError: if ``state`` does not cover the module's parameters exactly.
    """
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = {k for k, _ in module.named_buffers(remove_duplicate=False)}
    missing = sorted(set(params) - set(state))
    unknown = sorted(k for k in state if k not in params and k not in buffers)
    if missing or unknown:
        raise RuntimeError(f"FSDP full state does not fit the module: missing {missing[:3]}, unexpected {unknown[:3]}")
    for name, value in state.items():
        if name in params:
            params[name].data = value
            params[name].grad = None
        else:
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = value


def build_trainer(
    run_dir: Path,
    trainer: dict[str, Any],
    checkpoint: dict[str, Any],
    recipe: dict[str, Any] | None = None,
    monitor: str | None = None,
    numbered: bool = False,
    resume_step: int | None = None,
    callbacks: list[L.Callback] | None = None,
    validate: bool = True,
    fitting: bool = True,
) -> L.Trainer:
    """A trainer writing into ``run_dir``.

    It writes ``checkpoints/last.ckpt`` every ``checkpoint.every_n_epochs`` epochs (or
    ``every_n_train_steps`` steps), numbered ``epochNNN-stepNNNNNN.ckpt`` files too with
    ``numbered`` (pretraining), and ``best.ckpt`` by ``monitor`` (fine-tuning); all atomically,
    never with non-finite weights, never as ``-v1`` duplicates. Logs go to
    ``logs/metrics.csv`` (kept across resumes) and ``tensorboard/``. Every step is guarded
    against non-finite losses and gradients; unreadable files are counted.

    Args:
        run_dir: the run folder.
        trainer: the recipe's ``trainer`` section.
        checkpoint: the recipe's ``checkpoint`` section.
        recipe: the resolved recipe, stored in every checkpoint.
        monitor: metric selecting ``best.ckpt`` (higher is better); None: no best checkpoint.
        numbered: keep every periodic checkpoint under a numbered name.
        resume_step: the step a resumed run starts from (the CSV log keeps rows up to it).
        callbacks: extra callbacks.
        validate: run the validation loop (off: ``limit_val_batches=0``).
        fitting: False for a trainer that only tests (``rsfm test``): no checkpoints and no
            loggers, so the training run's ``logs/`` stay as they are.

    Returns:
        The trainer.

    Raises:
        ConfigError: for ``trainer.sync_batchnorm`` without GPUs, or trainer settings Lightning
            rejects (an accelerator this machine lacks, a bad device count...).
    """
    t = dict(trainer)
    t.pop("compile", None)  # applied to the module by the run (rsfm.engine.run), not a Lightning option
    if t.get("sync_batchnorm") and (t.get("accelerator") == "cpu" or not torch.cuda.is_available()):
        raise ConfigError(
            "trainer.sync_batchnorm needs GPUs (PyTorch's SyncBatchNorm has no CPU kernels); "
            "on CPUs each process keeps its own BatchNorm statistics"
        )
    if t.get("precision") is None:
        t["precision"] = default_precision(t.get("accelerator", "auto"))
        hint = bf16_hint(t["precision"]) if fitting else None
        if hint:
            rank_zero_info(f"[rsfm] {hint}")
    if isinstance(t.get("strategy"), str) and t["strategy"] in FSDP_STRATEGIES:
        t["strategy"] = BlockFSDPStrategy(activation_checkpointing=FSDP_STRATEGIES[t["strategy"]])
    ckpt_dir = run_dir / "checkpoints"
    every_steps = checkpoint.get("every_n_train_steps")
    every_epochs = None if every_steps else checkpoint.get("every_n_epochs", 1)
    cbs: list[L.Callback] = [
        PeriodicCheckpoint(
            # at the end of every training epoch, also when validation runs less often
            save_on_train_epoch_end=True,
            dirpath=ckpt_dir,
            filename="epoch{epoch:03d}-step{step:06d}",
            auto_insert_metric_name=False,
            save_top_k=-1 if numbered else 0,
            save_last=True,
            every_n_epochs=every_epochs,
            every_n_train_steps=every_steps,
            enable_version_counter=False,
        )
    ]
    if not fitting:
        cbs = []
    elif monitor is not None:
        # first: both save at the end of an epoch, and the periodic checkpoint must hold
        # this one's state after the epoch's score (else a resumed run forgets its best)
        cbs.insert(
            0,
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=monitor,
                mode="max",
                save_top_k=1,
                save_last=False,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
        )
    cbs.append(SkipReportCallback())
    if fitting:
        cbs.append(NonFiniteGuard(ckpt_dir))
    if recipe is not None:
        cbs.append(StoreRecipe(recipe))
    cbs += callbacks or []
    loggers: list[Any] | bool = False
    if fitting:
        loggers = [
            ResumableCSVLogger(run_dir, name="logs", version="", resume_step=resume_step),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ]
    if not validate:
        t["limit_val_batches"] = 0
    try:
        return L.Trainer(
            default_root_dir=run_dir,
            callbacks=cbs,
            logger=loggers,
            enable_checkpointing=fitting,
            plugins=[AtomicCheckpointIO()],
            use_distributed_sampler=False,  # rsfm's loaders shard with their own resumable sampler
            num_sanity_val_steps=0,
            **t,
        )
    except (MisconfigurationException, TypeError, ValueError) as err:  # Lightning's checks of the values
        raise ConfigError(f"trainer: {err}") from None
