"""The attention kernel of rsfm's ViT encoders and MIM decoders, chosen per call by device and precision.

PyTorch's fused ``scaled_dot_product_attention`` (SDPA) is the fastest kernel on GPUs and for
fp32 on the CPU, but on the CPU in bf16 its flash kernel's backward is several times slower
than the same attention written as two batched matrix products and a softmax, which the CPU's
bf16 matrix units run at full rate: ``benchmarks/attention.py`` measures both for the ViT
encoder's and MAE decoder's shapes (1.8–5× in bf16 on a 2-core AMD EPYC; the table is on the
benchmarks page of the documentation). rsfm therefore uses SDPA except for bf16 on the CPU (bf16
tensors, or CPU autocast to bf16). RVSA's window attention always computes explicit products.

:func:`attention` is that choice for rsfm's own attention layers; :func:`choose_attention_kernels`
makes timm's attention layers (the ViT encoders, MAE's decoder) follow it, through their
``fused_attn`` switch. Both compile without graph breaks (``trainer.compile``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["attention", "choose_attention_kernels", "explicit_attention_pays"]

_HOOKED = "_rsfm_attention_kernel"


def explicit_attention_pays(x: Tensor) -> bool:
    """Whether attention on ``x`` is faster as explicit products than as fused SDPA.

    True for a CPU tensor in bf16, or a CPU tensor computed under CPU autocast to bf16 (Lightning's
    ``bf16-mixed`` on the CPU); False otherwise (GPUs, fp32 and fp16).

    Args:
        x: an attention input (queries or tokens), any shape and dtype.
    """
    if x.device.type != "cpu":
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention ``softmax(q kᵀ / √d) v`` (Vaswani et al. 2017, eq. 1), no mask, no dropout.

    Fused SDPA, or for bf16 on the CPU (:func:`explicit_attention_pays`) the explicit products:
    the same function up to rounding (the logits are rounded to bf16 before the softmax).

    Args:
        q: ``(B, H, Q, d)`` queries.
        k: ``(B, H, M, d)`` keys.
        v: ``(B, H, M, d_v)`` values, same dtype and device as ``q``.

    Returns:
        ``(B, H, Q, d_v)``, the dtype of the inputs (autocast's under autocast).
    """
    if not explicit_attention_pays(q):
        return F.scaled_dot_product_attention(q, k, v)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return logits.softmax(dim=-1) @ v


def _choose(module: nn.Module, args: tuple[Tensor, ...]) -> None:
    """Forward pre-hook: SDPA unless the explicit products pay, where the module allowed SDPA."""
    module.fused_attn = getattr(module, _HOOKED) and not explicit_attention_pays(args[0])


def choose_attention_kernels(model: nn.Module) -> int:
    """Make every timm attention layer in ``model`` choose its kernel per call as :func:`attention`.

    timm's attention layers pick SDPA or explicit products by their ``fused_attn`` attribute,
    set once when built. A forward pre-hook on each (every submodule with a boolean
    ``fused_attn``) sets it per call from the input, so the same model uses SDPA on a GPU and
    the explicit products in bf16 on the CPU. A layer built with ``fused_attn`` False (timm's
    ``TIMM_FUSED_ATTN=0``) stays explicit. Calling it again on the same layers adds nothing.

    Args:
        model: any module; its parameters and outputs are unchanged.

    Returns:
        The number of attention layers that now choose (newly or already).
    """
    n = 0
    for module in model.modules():
        if not isinstance(getattr(module, "fused_attn", None), bool):
            continue
        n += 1
        if hasattr(module, _HOOKED):
            continue
        setattr(module, _HOOKED, module.fused_attn)
        module.register_forward_pre_hook(_choose)
    return n
