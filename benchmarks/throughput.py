"""MAE vs SelectiveMAE training throughput and peak memory, measured side by side.

Both methods are built as ``rsfm pretrain`` builds them (:class:`rsfm.methods.module.PretrainTask`
from a ``{class_path, init_args}`` specification: MAE with mask ratio 0.75, SelectiveMAE with
m = 0.85, r = 0.25, every other option at the class default, as in the recipes) and train the
same encoder on the same batch of real AID images, resized to the input size, scaled to
[0, 1] and held in memory (so decoding is not measured). A timed training step is what the
pretraining module does per batch: normalise the images with the data's mean/std (ImageNet's,
the datamodules' default), the method's ``training_step`` (forward and loss), backward, and an
AdamW step (lr 1e-4, weight decay 0.05, betas 0.9/0.95, groups of :func:`rsfm.optim.param_groups`).
Timed rounds alternate between the methods (MAE, SelectiveMAE, MAE, ...) so that machine noise
hits both alike; the table gives the median images/s per method and the throughput ratio
SelectiveMAE / MAE. Peak memory is measured per method in a fresh process: on GPU
``torch.cuda.max_memory_allocated``; on CPU the peak resident set size (``VmHWM``) of that
process during training steps, and its growth over the model + optimiser set-up (so the growth
is optimiser state, activations and gradients), in GiB; the memory ratio is MAE / SelectiveMAE.

Utilisation: each method's model FLOPs per image are counted once per batch size with
``torch.utils.flop_counter`` (forward and backward of one training step: matrix products,
convolutions and attention, 2 FLOPs per multiply-add; the selection's HOG convolutions and PSTS
similarities included; the optimiser's element-wise update is not), and the achieved TFLOP/s is
that count times the measured images/s. MFU is achieved over peak: on a GPU the dense bf16 peak
of the device's data sheet (:data:`GPU_PEAK_TFLOPS`; ``--peak-tflops`` for others), on the CPU
the fp32 matrix-product peak measured here (the best of repeated 2048 x 2048 products on the same
threads), so a CPU's MFU is relative to what its BLAS reaches, not to a data sheet.

    python benchmarks/throughput.py                      # ViT-Base/16, 224 px, CPU
    python benchmarks/throughput.py --size tiny --patch-size 8 --img-size 112   # the CPU recipes' shape
    python benchmarks/throughput.py --device cuda --batch-size 128 256 512   # one table per batch size
    python benchmarks/throughput.py --size tiny --batch-size 4 --rounds 1 --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rsfm.data.base import DataInfo
from rsfm.methods.base import PretrainMethod, StepContext
from rsfm.methods.module import PretrainTask
from rsfm.optim import OptimConfig, build_optimizer

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "aid"
#: the methods' ``model`` specifications (as in a recipe); size and patch come from the options
METHODS: dict[str, dict[str, Any]] = {
    "mae": {"class_path": "MAE", "init_args": {"mask_ratio": 0.75}},
    "selective_mae": {"class_path": "SelectiveMAE", "init_args": {"mask_ratio": 0.85, "rec_ratio": 0.25}},
}
#: dense bf16 tensor-core peak, TFLOP/s, of common training GPUs (vendors' data sheets), matched
#: against ``torch.cuda.get_device_name()`` in this order
GPU_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}
#: MAE's pretraining optimiser at a fixed rate (the rate does not change the cost of a step)
OPTIM = {"name": "adamw", "lr": 1e-4, "weight_decay": 0.05, "betas": [0.9, 0.95]}


def load_batch(root: Path, n: int, size: int) -> torch.Tensor:
    """``(n, 3, size, size)`` float32 in [0, 1]: ``n`` images spread over the sorted files of ``root``, resized."""
    every = sorted(root.rglob("*.jpg"))
    paths = every[:: max(1, len(every) // n)][:n]
    if len(paths) < n:
        raise SystemExit(f"need {n} images under {root}, found {len(paths)}")
    arr = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 255 for p in paths
    ]
    return torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2).contiguous()


def build(
    method: str, size: str, img_size: int, patch_size: int, batch_size: int, device: str
) -> tuple[PretrainTask, torch.optim.Optimizer]:
    """The pretraining module of ``method`` (its ``.model`` is the method) and its AdamW."""
    torch.manual_seed(0)
    spec = METHODS[method]
    spec = {**spec, "init_args": {**spec["init_args"], "size": size, "patch_size": patch_size}}
    info = DataInfo(num_channels=3, img_size=img_size)
    task = PretrainTask(model=spec, optim=OPTIM, data=info.to_dict(), batch_size=batch_size, seed=0).to(device)
    task.train()
    return task, build_optimizer(task.optimizer_groups(OPTIM["lr"]), OptimConfig(**OPTIM))


def train_steps(task: PretrainTask, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int, amp: bool) -> float:
    """Seconds for ``steps`` full training steps (normalise, method step, backward, AdamW)."""
    dev = x.device.type
    method: PretrainMethod = task.model
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        ctx = StepContext(progress=0.5, generator=torch.Generator(device=x.device).manual_seed(i))
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = method.training_step({"image": task.normalise(x)}, ctx)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def step_flops(task: PretrainTask, x: torch.Tensor, amp: bool) -> int:
    """Model FLOPs of one training step (forward and backward) on ``x``, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    ctx = StepContext(progress=0.5, generator=torch.Generator(device=x.device).manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = task.model.training_step({"image": task.normalise(x)}, ctx)["loss"]
        loss.backward()
    task.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    """The peak MFU is measured against, and where it comes from.

    On a GPU: ``given``, else the data-sheet value of :data:`GPU_PEAK_TFLOPS` for its name (None
    when unknown). On the CPU: ``given``, else the best fp32 rate of 2048 x 2048 matrix products
    measured now on the same threads.
    """
    if given:
        return given, "--peak-tflops"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value, f"dense bf16 data sheet of {key}"
        return None, f"unknown for {name}: pass --peak-tflops"
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12, f"fp32 matmul {n}x{n} measured, {torch.get_num_threads()} threads"


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: one method's peak memory; prints a JSON line."""
    x = load_batch(Path(args.data), args.batch_size, args.img_size).to(args.device)
    model, opt = build(args.probe, args.size, args.img_size, args.patch_size, args.batch_size, args.device)
    amp = args.device == "cuda"
    # base: inputs, weights and an empty optimiser; peak: after training steps (adds the
    # optimiser state, activations and gradients)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_steps(model, opt, x, 3, amp)
        peak = torch.cuda.max_memory_allocated()
    else:
        # VmHWM is this process's own peak (ru_maxrss would include the parent's, inherited
        # through fork); writing 5 to clear_refs resets it to the current RSS.
        base = _proc_status_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        train_steps(model, opt, x, 3, amp)
        peak = _proc_status_bytes("VmHWM")
    print(json.dumps({"peak": peak, "base": base}))


def measure(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    """Images/s (interleaved rounds), FLOPs per image and peak memory of both methods at one batch size."""
    device = args.device
    amp = device == "cuda"
    x = load_batch(Path(args.data), batch_size, args.img_size).to(device)
    models = {m: build(m, args.size, args.img_size, args.patch_size, batch_size, device) for m in METHODS}
    flops = {m: step_flops(task, x, amp) / batch_size for m, (task, _) in models.items()}
    for model, opt in models.values():  # warm-up (allocator, kernels, optimiser state)
        train_steps(model, opt, x, 1, amp)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = list(METHODS) if r % 2 == 0 else list(reversed(METHODS))
        for m in order:
            model, opt = models[m]
            times[m].append(args.steps * batch_size / train_steps(model, opt, x, args.steps, amp))
    del models
    mem = {}
    for m in METHODS:
        cmd = [sys.executable, __file__, "--probe", m, "--data", args.data, "--size", args.size]
        cmd += ["--img-size", str(args.img_size), "--patch-size", str(args.patch_size)]
        cmd += ["--batch-size", str(batch_size), "--device", device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        mem[m] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
    return {"rounds": times, "flops_per_image": flops, "memory": mem}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--size", default="base", help="ViT size: tiny, small, base, large")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one or more batch sizes")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per method (interleaved)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: see above)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        args.batch_size = args.batch_size[0]
        memory_probe(args)
        return
    device = args.device
    amp = device == "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    results: dict[str, Any] = {"device": name, "peak_tflops": peak, "peak_source": peak_source, "batches": {}}
    print(
        f"\nViT-{args.size}/{args.patch_size}, {args.img_size} px, {device} ({name}), {args.rounds} interleaved "
        f"rounds x {args.steps} steps, precision {'bf16 autocast' if amp else 'fp32'}; peak "
        + (f"{peak:.2f} TFLOP/s ({peak_source})" if peak else f"unknown ({peak_source})")
    )
    unit = "GPU max allocated" if device == "cuda" else "peak RSS"
    header = (
        f"{'batch':>5} {'method':<14} {'images/s (median)':>18} {'all rounds':>28} {'GFLOP/image':>12} "
        f"{'TFLOP/s':>8} {'MFU %':>6} {unit + ' (GiB)':>24} {'growth over set-up (GiB)':>26}"
    )
    for batch_size in args.batch_size:
        res = measure(args, batch_size)
        times, flops, mem = res["rounds"], res["flops_per_image"], res["memory"]
        ips = {m: statistics.median(v) for m, v in times.items()}
        print("\n" + header)
        for m in METHODS:
            rounds = " ".join(f"{v:.1f}" for v in times[m])
            tflops = flops[m] * ips[m] / 1e12
            mfu = f"{100 * tflops / peak:.1f}" if peak else "n/a"
            print(
                f"{batch_size:>5} {m:<14} {ips[m]:>18.2f} {rounds:>28} {flops[m] / 1e9:>12.2f} {tflops:>8.3g} "
                f"{mfu:>6} {mem[m]['peak'] / 2**30:>24.2f} {(mem[m]['peak'] - mem[m]['base']) / 2**30:>26.2f}"
            )
        speed = ips["selective_mae"] / ips["mae"]
        mem_ratio = mem["mae"]["peak"] / mem["selective_mae"]["peak"]
        print(f"batch {batch_size}: throughput ratio SelectiveMAE / MAE: {speed:.2f}x")
        print(f"batch {batch_size}: peak-memory ratio MAE / SelectiveMAE: {mem_ratio:.2f}x")
        results["batches"][batch_size] = {
            "images_per_s": ips,
            "rounds": times,
            "flops_per_image": flops,
            "tflops": {m: flops[m] * ips[m] / 1e12 for m in METHODS},
            "memory": mem,
            "speed_ratio": speed,
            "memory_ratio": mem_ratio,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
