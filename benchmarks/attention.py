"""Fused SDPA vs explicit attention products, forward and backward, per precision: the rule of rsfm.models.attention.

rsfm's attention layers use PyTorch's ``scaled_dot_product_attention`` (SDPA) except for bf16 on
the CPU, where they compute ``softmax(q kᵀ / √d) v`` as two batched matrix products
(:mod:`rsfm.models.attention`). This script times both kernels on the attention shapes of a
ViT-B/16 pretraining step at 224 px: the encoder's (12 heads of 64 over the 1 + 49 tokens MAE
keeps at ``mask_ratio`` 0.75, and the 1 + 29 SelectiveMAE keeps at 0.85) and the MAE decoder's
(16 heads of 32 over 1 + 196 tokens), for each precision and batch size. A timed call is one
forward and one backward on random inputs (the time does not depend on the values); calls
alternate between the kernels, and the table gives the median of ``--rounds`` rounds and the
ratio SDPA / explicit (above 1: the explicit products are faster).

    python benchmarks/attention.py                         # CPU: fp32 and bf16, batch 8 and 32
    python benchmarks/attention.py --device cuda --batch-size 128 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

#: (label, heads, tokens, head width) of a ViT-B/16 MAE / SelectiveMAE step at 224 px
SHAPES = (
    ("encoder, MAE (1 + 49 tokens)", 12, 50, 64),
    ("encoder, SelectiveMAE (1 + 29)", 12, 30, 64),
    ("MAE decoder (1 + 196)", 16, 197, 32),
)


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` as rsfm's explicit path computes it."""
    return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA, its default backend choice."""
    return F.scaled_dot_product_attention(q, k, v)


def time_call(fn, q, k, v, g, device: str, n: int) -> float:
    """Milliseconds per forward + backward of ``fn``, mean of ``n`` calls."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn(q, k, v).backward(g)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, nargs="+", default=[8, 32])
    p.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="forward + backward calls per timed round")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"attention forward + backward, ms per call ({where}, torch {torch.__version__}); median of {args.rounds}")
    print(f"{'precision':>9} {'batch':>5} {'shape':<32} {'SDPA':>9} {'explicit':>9} {'SDPA / explicit':>16}")
    for precision in args.precision:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        for batch in args.batch_size:
            for label, heads, tokens, width in SHAPES:
                gen = torch.Generator(device=args.device).manual_seed(0)
                q, k, v = (
                    torch.randn(
                        batch, heads, tokens, width, generator=gen, device=args.device, dtype=dtype
                    ).requires_grad_()
                    for _ in range(3)
                )
                g = torch.randn(batch, heads, tokens, width, generator=gen, device=args.device, dtype=dtype)
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                    times: dict[str, list[float]] = {"SDPA": [], "explicit": []}
                    for fn in (fused, explicit):  # warm-up
                        time_call(fn, q, k, v, g, args.device, 2)
                    for r in range(args.rounds):
                        order = (("SDPA", fused), ("explicit", explicit))
                        for name, fn in order if r % 2 == 0 else order[::-1]:
                            times[name].append(time_call(fn, q, k, v, g, args.device, args.calls))
                s, e = statistics.median(times["SDPA"]), statistics.median(times["explicit"])
                print(f"{precision:>9} {batch:>5} {label:<32} {s:>9.2f} {e:>9.2f} {s / e:>15.2f}x", flush=True)


if __name__ == "__main__":
    main()
