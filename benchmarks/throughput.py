"""MAE vs SelectiveMAE training throughput and peak memory, measured side by side.

Both methods train the same encoder on the same batch of real AID images (resized to the
input size and held in memory, so decoding is not measured). Timed rounds alternate between
the methods (MAE, SelectiveMAE, MAE, ...) so that machine noise hits both alike; the table
gives the median images/s and the ratio. Peak memory is measured per method in a fresh
process: on GPU ``torch.cuda.max_memory_allocated``; on CPU the peak resident set size
(``VmHWM``) of that process during training steps, and its growth over the model +
optimiser set-up (so the growth is optimiser state, activations and gradients).

    python benchmarks/throughput.py                      # ViT-Base/16, 224 px, CPU
    python benchmarks/throughput.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rsfm.engine.module import build_method
from rsfm.engine.optim import build_adamw

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "aid"
METHODS = {
    "mae": {"name": "mae", "mask_ratio": 0.75},
    "selective_mae": {"name": "selective_mae", "mask_ratio": 0.85, "rec_ratio": 0.25},
}


def load_batch(root: Path, n: int, size: int) -> torch.Tensor:
    """``(n, 3, size, size)`` float32: the first ``n`` images (sorted) of ``root``, resized."""
    every = sorted(root.rglob("*.jpg"))
    paths = every[:: max(1, len(every) // n)][:n]
    if len(paths) < n:
        raise SystemExit(f"need {n} images under {root}, found {len(paths)}")
    arr = [
        np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC), np.float32) / 255 for p in paths
    ]
    x = torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2)
    return (x - 0.4) / 0.2


def build(
    method: str, size: str, img_size: int, patch_size: int, device: str
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_method(**METHODS[method], size=size, img_size=img_size, patch_size=patch_size).to(device)
    return model, build_adamw(model, 1e-4)


def train_steps(model, opt, x: torch.Tensor, steps: int, amp: bool) -> float:
    """Seconds for ``steps`` full training steps (forward, backward, AdamW)."""
    dev = x.device.type
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = model(x, progress=0.5, generator=torch.Generator(device=x.device).manual_seed(i))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: one method's peak memory; prints a JSON line."""
    x = load_batch(Path(args.data), args.batch_size, args.img_size).to(args.device)
    model, opt = build(args.probe, args.size, args.img_size, args.patch_size, args.device)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--size", default="base")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per method (interleaved)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        memory_probe(args)
        return
    device = args.device
    amp = device == "cuda"
    x = load_batch(Path(args.data), args.batch_size, args.img_size).to(device)
    models = {m: build(m, args.size, args.img_size, args.patch_size, device) for m in METHODS}
    for model, opt in models.values():  # warm-up (allocator, kernels, optimiser state)
        train_steps(model, opt, x, 1, amp)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = list(METHODS) if r % 2 == 0 else list(reversed(METHODS))
        for m in order:
            model, opt = models[m]
            times[m].append(args.steps * args.batch_size / train_steps(model, opt, x, args.steps, amp))
    del models
    mem = {}
    for m in METHODS:
        cmd = [
            sys.executable,
            __file__,
            "--probe",
            m,
            "--data",
            args.data,
            "--size",
            args.size,
            "--img-size",
            str(args.img_size),
            "--patch-size",
            str(args.patch_size),
            "--batch-size",
            str(args.batch_size),
            "--device",
            device,
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        mem[m] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
    ips = {m: statistics.median(v) for m, v in times.items()}
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\nViT-{args.size}/{args.patch_size}, {args.img_size} px, batch {args.batch_size}, {device} ({name}), "
        f"{args.rounds} interleaved rounds x {args.steps} steps, precision {'bf16 autocast' if amp else 'fp32'}"
    )
    unit = "GPU max allocated" if device == "cuda" else "peak RSS"
    print(
        f"{'method':<14} {'images/s (median)':>18} {'all rounds':>28} {unit + ' (GiB)':>24} "
        f"{'growth over set-up (GiB)':>26}"
    )
    for m in METHODS:
        rounds = " ".join(f"{v:.1f}" for v in times[m])
        print(
            f"{m:<14} {ips[m]:>18.2f} {rounds:>28} {mem[m]['peak'] / 2**30:>24.2f} "
            f"{(mem[m]['peak'] - mem[m]['base']) / 2**30:>26.2f}"
        )
    speed = ips["selective_mae"] / ips["mae"]
    mem_ratio = mem["mae"]["peak"] / mem["selective_mae"]["peak"]
    print(f"throughput ratio SelectiveMAE / MAE: {speed:.2f}x")
    print(f"peak-memory ratio MAE / SelectiveMAE: {mem_ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "images_per_s": ips,
                    "rounds": times,
                    "memory": mem,
                    "speed_ratio": speed,
                    "memory_ratio": mem_ratio,
                    "device": name,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
