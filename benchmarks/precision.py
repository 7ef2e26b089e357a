"""fp32 vs bf16 autocast, and fused vs unfused AdamW under gradient clipping, in one interleaved run.

Two choices of a training run that cost speed, measured side by side on MAE and SelectiveMAE
(built as ``benchmarks/throughput.py`` builds them: the recipes' methods on a ViT, a batch of real
AID images held in memory, rsfm's training step of normalisation, forward, loss, backward and
AdamW step):

* ``trainer.precision``: fp32 (rsfm's default on the CPU) against ``bf16-mixed`` (autocast to
  bf16; the GPU default, and several times faster on CPUs with bf16 matrix units, where rsfm
  prints a hint). Parameters, gradients and optimiser state stay fp32 in both.
* The optimiser under gradient clipping (``trainer.gradient_clip_val``, as MTP's recipes set):
  with mixed precision Lightning refuses to clip for PyTorch's fused AdamW, so rsfm then builds the
  unfused one (:meth:`rsfm.training.TrainingModule.configure_optimizers`). The rows "bf16, fused
  AdamW + clip" (the same clipping before the fused kernel, what the rule gives up) and "bf16,
  unfused AdamW + clip" (what rsfm runs) price that rule; "bf16, fused AdamW" is the run without
  clipping.

Each method's variants share one model and batch and have their own optimiser (so each keeps its
own AdamW state); clipping is ``torch.nn.utils.clip_grad_norm_`` at 5.0, as Lightning clips.
Timed rounds alternate the variants (forwards, then backwards) so that the shared machine's noise
hits them alike; the table gives median images/s and each ratio of medians with the range of its
per-round ratios. A second table times the optimiser step alone (fused against unfused, on the
method's real parameter groups with fixed random gradients), which the whole step's noise hides.
``--compile`` compiles the methods' steps as ``trainer.compile: true`` does (one graph per
precision; compilation happens in the untimed warm-up).

    python benchmarks/precision.py                                  # ViT-B/16, 224 px, batch 8
    python benchmarks/precision.py --compile --batch-size 32
    python benchmarks/precision.py --size tiny --batch-size 4 --rounds 1 --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rsfm.methods.base import PretrainMethod, StepContext  # noqa: E402
from rsfm.methods.module import PretrainTask  # noqa: E402
from rsfm.optim import OptimConfig, build_optimizer  # noqa: E402
from throughput import METHODS, OPTIM, add_model_options, build, load_batch  # noqa: E402

#: clipping norm of the timed "+ clip" variants (MTP's recipes clip at 5.0)
CLIP = 5.0
#: (label, autocast to bf16, fused AdamW, clip): the rows of each method
VARIANTS: tuple[tuple[str, bool, bool, bool], ...] = (
    ("fp32, fused AdamW", False, True, False),
    ("bf16, fused AdamW", True, True, False),
    ("bf16, fused AdamW + clip", True, True, True),
    ("bf16, unfused AdamW + clip", True, False, True),
)
#: (label, numerator, denominator) of the printed ratios (above 1: the numerator is faster)
RATIOS = (
    ("bf16 / fp32 (fused AdamW)", "bf16, fused AdamW", "fp32, fused AdamW"),
    ("clipping, fused AdamW (+ clip / without)", "bf16, fused AdamW + clip", "bf16, fused AdamW"),
    ("unfused / fused AdamW, both clipping (rsfm's rule)", "bf16, unfused AdamW + clip", "bf16, fused AdamW + clip"),
)


def optimizer(task: PretrainTask, fused: bool) -> torch.optim.Optimizer:
    """MAE's AdamW over the task's parameter groups, fused or PyTorch's default (``optim.fused``)."""
    return build_optimizer(task.optimizer_groups(OPTIM["lr"]), OptimConfig(**OPTIM, fused=fused))


def step(task: PretrainTask, opt: torch.optim.Optimizer, x: torch.Tensor, amp: bool, clip: bool, seed: int) -> None:
    """One training step: normalise, the method's step under autocast (bf16) or not, backward, clip, AdamW."""
    method: PretrainMethod = task.model
    ctx = StepContext(progress=0.5, generator=torch.Generator(device=x.device).manual_seed(seed))
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = method.training_step({"image": task.normalise(x)}, ctx)["loss"]
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(task.parameters(), CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn: Any, n: int, device: str) -> float:
    """Seconds for ``n`` calls of ``fn(i)``."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure_steps(args: argparse.Namespace, method: str, x: torch.Tensor) -> dict[str, list[float]]:
    """Images/s per round of every variant of ``method``."""
    task, _ = build(method, args.size, args.img_size, args.patch_size, x.shape[0], args.device)
    if args.compile:
        task.model.compile_step()
    runs = {}
    for label, amp, fused, clip in VARIANTS:
        opt = optimizer(task, fused)
        runs[label] = lambda i, opt=opt, amp=amp, clip=clip: step(task, opt, x, amp, clip, seed=i)
    for label, run in runs.items():
        print(f"  warm-up {method}, {label}: {timed(run, args.warmup, args.device):.1f} s", flush=True)
    rounds: dict[str, list[float]] = {label: [] for label in runs}
    for r in range(args.rounds):
        for label in runs if r % 2 == 0 else reversed(list(runs)):
            rounds[label].append(args.steps * x.shape[0] / timed(runs[label], args.steps, args.device))
    return rounds


def measure_optimizer(args: argparse.Namespace, method: str) -> dict[str, list[float]]:
    """Milliseconds per AdamW step (fused, unfused) on ``method``'s parameters, per round."""
    task, _ = build(method, args.size, args.img_size, args.patch_size, 1, args.device)
    gen = torch.Generator(device=args.device).manual_seed(0)
    for p in task.parameters():
        p.grad = torch.randn(p.shape, generator=gen, device=p.device) * 1e-3
    opts = {"fused": optimizer(task, True), "unfused": optimizer(task, False)}
    n = 3 * args.steps
    for opt in opts.values():
        timed(lambda _i, opt=opt: opt.step(), 2, args.device)  # creates the state
    ms: dict[str, list[float]] = {k: [] for k in opts}
    for r in range(args.rounds):
        for k in opts if r % 2 == 0 else reversed(list(opts)):
            ms[k].append(1e3 * timed(lambda _i, k=k: opts[k].step(), n, args.device) / n)
    return ms


def paired(rounds: dict[str, list[float]], a: str, b: str) -> tuple[float, float, float]:
    """Ratio of the medians of ``a`` and ``b``, and the range of the per-round ratios."""
    per_round = [x / y for x, y in zip(rounds[a], rounds[b], strict=True)]
    return statistics.median(rounds[a]) / statistics.median(rounds[b]), min(per_round), max(per_round)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--compile", action="store_true", help="compile the steps (trainer.compile: true)")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\nViT-{args.size}/{args.patch_size}, {args.img_size} px, batch {args.batch_size}, {args.device} ({name}), "
        f"{'compiled' if args.compile else 'eager'}, {args.rounds} interleaved rounds x {args.steps} steps, "
        f"torch {torch.__version__}"
    )
    x = load_batch(Path(args.data), args.batch_size, args.img_size).to(args.device)
    for method in args.methods:
        rounds = measure_steps(args, method, x)
        width = max(len(v) for v in rounds) + 1
        print(f"\n{method:<14} {'variant':<{width}} {'images/s (median)':>18}   all rounds")
        for label, r in rounds.items():
            print(f"{'':<14} {label:<{width}} {statistics.median(r):>18.2f}   {' '.join(f'{v:.2f}' for v in r)}")
        for label, a, b in RATIOS:
            ratio, lo, hi = paired(rounds, a, b)
            print(f"{method}: {label}: {ratio:.2f}x (paired rounds {lo:.2f}-{hi:.2f}x)")
        ms = measure_optimizer(args, method)
        med = {k: statistics.median(v) for k, v in ms.items()}
        ratio, lo, hi = paired(ms, "unfused", "fused")
        print(
            f"{method}: AdamW step alone, ms: fused {med['fused']:.1f}, unfused {med['unfused']:.1f}; "
            f"unfused takes {ratio:.2f}x the fused time (paired rounds {lo:.2f}-{hi:.2f}x)"
        )


if __name__ == "__main__":
    main()
