"""MAE vs SelectiveMAE training throughput and peak memory, measured side by side.

Both methods are built as ``rsfm pretrain`` builds them (:class:`rsfm.methods.module.PretrainTask`
from a ``{class_path, init_args}`` specification: MAE with mask ratio 0.75, SelectiveMAE with
m = 0.85, r = 0.25, every other option at the class default, as in the recipes) and train the
same encoder on the same batch of real AID images, resized to the input size, scaled to
[0, 1] and held in memory (so decoding is not measured). A timed training step is what the
pretraining module does per batch: normalise the images with the data's mean/std (ImageNet's,
the datamodules' default), the method's ``training_step`` (forward and loss), backward, and an
AdamW step (lr 1e-4, weight decay 0.05, betas 0.9/0.95, groups of :func:`rsfm.optim.param_groups`,
fused as rsfm builds it by default: ``optim.fused``). Precision (``--precision``): bf16 autocast
on a GPU, fp32 on the CPU by default; ``--precision bf16`` on a CPU with bf16 matrix units
(AVX512-BF16, AMX) runs every variant under CPU autocast to bf16, Lightning's ``bf16-mixed``.
Timed rounds alternate between the methods (MAE, SelectiveMAE, MAE, ...) so that machine noise
hits both alike; the table gives the median images/s per method and the throughput ratio
SelectiveMAE / MAE. Peak memory is measured per method in a fresh process: on GPU
``torch.cuda.max_memory_allocated``; on CPU the peak resident set size (``VmHWM``) of that
process during training steps, and its growth over the model + optimiser set-up (so the growth
is optimiser state, activations and gradients), in GiB; the memory ratio is MAE / SelectiveMAE.

Utilisation: each variant's model FLOPs per image are counted once per batch size with
``torch.utils.flop_counter`` (forward and backward of one training step: matrix products,
convolutions and attention, 2 FLOPs per multiply-add; the selection's HOG convolutions and PSTS
similarities included; the optimiser's element-wise update is not), and the achieved TFLOP/s is
that count times the measured images/s. MFU is achieved over peak: on a GPU the dense bf16 peak
of the device's data sheet (:data:`GPU_PEAK_TFLOPS`; ``--peak-tflops`` for others), on the CPU
the matrix-product peak in the run's precision measured here (the best of repeated 2048 x 2048
products on the same threads), so a CPU's MFU is relative to what its BLAS reaches, not to a data sheet.

``--compile`` adds rsfm's steps compiled as ``trainer.compile: true`` compiles them (one
``torch.compile(fullgraph=True)`` graph of forward and loss; compilation happens in the untimed
warm-up steps). ``--official-mae DIR`` / ``--official-smae DIR`` add the authors' models, imported
from folders the user fetched (facebookresearch/mae's checkout; the ``SelectiveMAE/`` folder of
Fengxiang23/SelectiveMAE), never shipped with rsfm: built as their ``main_pretrain.py`` builds
them (:func:`official_variant`) and trained with their optimiser on the same normalised batch, at
the same precision, in the same interleaved rounds; the ratios rsfm / authors' are printed. Two
compatibility shims, for today's libraries only: timm's ``Block`` without ``qk_scale`` and NumPy's
``np.float`` while MAE's model is built; in bf16 on the CPU a third runs the release's HOG layer
in fp32, as CUDA autocast does (:func:`_hog_fp32`). ``--official-attention released explicit``
times the authors' models twice: with their attention as released (fused SDPA on today's
PyTorch and timm) and with the explicit products their layers also hold, which is what rsfm
runs in bf16 on the CPU (:mod:`rsfm.models.attention`), so the table separates that choice from
the rest of rsfm's step. ``--selection`` times SelectiveMAE's token selection
alone (HOG, seeds, PSTS, targets; rsfm eager, rsfm compiled, the release's ``random_masking``)
beside the whole step.

    python benchmarks/throughput.py                      # ViT-Base/16, 224 px, CPU
    python benchmarks/throughput.py --compile --selection \
        --official-mae ../mae --official-smae ../SelectiveMAE/SelectiveMAE --batch-size 8 32   # vs the releases
    python benchmarks/throughput.py --precision bf16 --compile --official-attention released explicit \
        --official-mae ../mae --official-smae ../SelectiveMAE/SelectiveMAE --batch-size 8 32   # bf16 CPU
    python benchmarks/throughput.py --size tiny --patch-size 8 --img-size 112   # the CPU recipes' shape
    python benchmarks/throughput.py --device cuda --batch-size 128 256 512 --compile   # one table per batch size
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


def train_steps(
    task: PretrainTask, opt: torch.optim.Optimizer, x: torch.Tensor, steps: int, amp: bool, first: int = 0
) -> float:
    """Seconds for ``steps`` training steps (normalise, method step, backward, AdamW); step i seeded first + i."""
    dev = x.device.type
    method: PretrainMethod = task.model
    if dev == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        ctx = StepContext(progress=0.5, generator=torch.Generator(device=x.device).manual_seed(first + i))
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = method.training_step({"image": task.normalise(x)}, ctx)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class Variant:
    """One row of the table: a method as some code base trains it, timed the same way.

    Args:
        name: the row's label.
        method: ``mae`` or ``selective_mae`` (which ratio it enters).
        step: one training step (forward, loss, backward, optimiser) on the batch, given its index.
        flops: model FLOPs of one step (forward and backward) on the batch.
        model: the authors' model (for the selection timing), None for rsfm's.
    """

    def __init__(self, name: str, method: str, step: Any, flops: int, model: Any = None) -> None:
        self.name, self.method, self.step, self.flops, self.model = name, method, step, flops, model

    def run(self, steps: int, device: str) -> float:
        """Seconds for ``steps`` steps."""
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            self.step(i)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def rsfm_variant(method: str, args: argparse.Namespace, x: torch.Tensor, compiled: bool) -> Variant:
    """rsfm's step as :func:`train_steps` runs it; compiled as ``trainer.compile: true`` does."""
    task, opt = build(method, args.size, args.img_size, args.patch_size, x.shape[0], args.device)
    amp = args.precision == "bf16"
    count = step_flops(task, x, amp)  # counted eagerly: compiled kernels bypass the counter
    if compiled:
        task.model.compile_step()

    def step(i: int) -> None:
        train_steps(task, opt, x, 1, amp, first=i)

    label = f"rsfm {'compiled' if compiled else 'eager'}"
    return Variant(f"{method} ({label})", method, step, count)


#: the authors' model files, imported from the folder the user gives (never shipped with rsfm)
OFFICIAL_FILES = {"mae": "models_mae.py", "selective_mae": "models_selectivemae.py"}


def _import_official(folder: Path, module: str) -> Any:
    """Import ``module`` from the authors' ``folder`` in isolation (both releases name a package ``util``)."""
    import importlib

    if not (folder / f"{module}.py").is_file():
        flag = "--official-mae" if module == "models_mae" else "--official-smae"
        raise SystemExit(f"{folder}: no {module}.py (point {flag} at the folder holding it)")
    shared = ("util", "models_mae", "models_selectivemae", "models_vit", "transformer_utils", "token_selected_smooth")
    for name in list(sys.modules):
        if name.split(".")[0] in shared:
            del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


def _timm_block_compat(mod: Any) -> None:
    """MAE's release builds timm 0.3's ``Block(..., qk_scale=None)``; today's timm has no ``qk_scale``.

    Replaces the module's ``Block`` by a subclass that drops that argument (None, timm's default
    scale either way); nothing else of the release changes.
    """
    import inspect

    block = getattr(mod, "Block", None)
    if block is None or "qk_scale" in inspect.signature(block).parameters:
        return

    class Block(block):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, qk_scale: Any = None, **kw: Any) -> None:
            super().__init__(*a, **kw)

    mod.Block = Block


def _hog_fp32(model: Any) -> None:
    """The release's HOG layer in fp32 under CPU autocast, as CUDA autocast runs it.

    Its histogram accumulates the gradient norms into an fp32 buffer; CUDA autocast computes
    ``norm`` in fp32, CPU autocast in bf16, where ``scatter_add_`` refuses the mixed dtypes. The
    layer (no gradient, a few depthwise convolutions) runs with autocast off, on fp32 input.
    """
    hog = model.hog
    forward = hog.forward

    def fp32_forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    hog.forward = fp32_forward


def official_variant(
    method: str, folder: Path, args: argparse.Namespace, x: torch.Tensor, attention: str = "released"
) -> Variant:
    """The authors' model and optimiser as their ``main_pretrain.py`` builds them, on the same batch.

    MAE (He et al.; ``models_mae.py`` of facebookresearch/mae, or the copy in SelectiveMAE's
    repository): ``mae_vit_{size}_patch16_dec512d8b(norm_pix_loss=True)``, ``mask_ratio`` 0.75.
    SelectiveMAE (Wang et al.; ``models_selectivemae.py``): the same name with
    ``decoder_depth=8`` (their default), ``mask_ratio`` 0.85, ``kept_mask_ratio`` 0.25, and
    their ``TokenSelect_smooth`` configured as ``main_pretrain.py`` does, at epoch 400 of 800 (the
    far stage, as rsfm's progress 0.5). Both: AdamW (betas 0.9/0.95, weight decay 0.05 on
    weights, timm's grouping), PyTorch's default implementation, as their script. On a GPU
    their forward's ``torch.cuda.amp.autocast()`` (fp16) is made bf16, rsfm's precision.

    ``attention``: ``released`` runs their attention layers as they are on today's libraries
    (MAE's are timm's ``Block``, fused SDPA; SelectiveMAE's own layers take SDPA on PyTorch 2);
    ``explicit`` switches both to the explicit products they also contain (timm's
    ``fused_attn`` False; the release's ``is_torch2`` False), rsfm's choice for bf16 on the CPU.
    """
    import contextlib

    import timm.optim

    if method == "selective_mae" and args.img_size // args.patch_size != 14:
        raise SystemExit("the SelectiveMAE release's HOG layer assumes a 14 x 14 patch grid: use --img-size 224")
    mod = _import_official(folder, OFFICIAL_FILES[method].removesuffix(".py"))
    _timm_block_compat(mod)
    if attention == "explicit" and "transformer_utils" in sys.modules:
        sys.modules["transformer_utils"].is_torch2 = False  # read when their layers are built and run
    name = f"mae_vit_{args.size}_patch{args.patch_size}_dec512d8b"
    if not hasattr(mod, name):
        raise SystemExit(f"{folder / OFFICIAL_FILES[method]} has no {name}")
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"norm_pix_loss": True, "img_size": args.img_size}
    if method == "selective_mae":
        kwargs["decoder_depth"] = 8
    # MAE's release builds its position embedding with ``np.float``, removed in NumPy 1.24: the
    # alias is lent (as the builtin ``float`` it always was) while the model is built
    lent = not hasattr(np, "float")
    if lent:
        np.float = float  # type: ignore[attr-defined]
    try:
        model = getattr(mod, name)(**kwargs).to(args.device).train()
    finally:
        if lent:
            del np.float  # type: ignore[attr-defined]
    if attention == "explicit":
        for layer in model.modules():
            if hasattr(layer, "fused_attn"):
                layer.fused_attn = False
    if method == "selective_mae":
        select = _import_official(folder, "token_selected_smooth").TokenSelect_smooth
        keep = 1 - 0.85
        model.token_select = select(
            expansion_step=[0, 280, 300, 580, 600], keep_rate=[keep] * 5, initialization_keep_rate=keep / 2
        )
        model.token_select.update_current_stage(400)
        if args.precision == "bf16" and args.device == "cpu":
            _hog_fp32(model)
    opt = torch.optim.AdamW(timm.optim.param_groups_weight_decay(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, 3, 1, 1)
    amp = args.precision == "bf16"

    @contextlib.contextmanager
    def precision() -> Any:
        if not amp:
            yield
            return
        saved = torch.cuda.amp.autocast
        torch.cuda.amp.autocast = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
        try:
            with torch.autocast(args.device, dtype=torch.bfloat16):
                yield
        finally:
            torch.cuda.amp.autocast = saved  # type: ignore[assignment]

    def loss_of(xx: torch.Tensor) -> torch.Tensor:
        with precision():
            if method == "mae":
                out = model(xx, mask_ratio=0.75)
            else:
                out = model(xx, mask_ratio=0.85, kept_mask_ratio=0.25)
        loss = out[0] if isinstance(out, tuple) else out
        return loss.float().mean()  # SelectiveMAE's release returns one loss per image

    def step(i: int) -> None:
        loss_of((x - mean) / std).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_of((x - mean) / std).backward()
    model.zero_grad(set_to_none=True)
    label = "authors'" if attention == "released" else "authors', explicit attention"
    return Variant(f"{method} ({label})", method, step, int(counter.get_total_flops()), model)


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


def peak_tflops(device: str, given: float | None, precision: str = "fp32") -> tuple[float | None, str]:
    """The peak MFU is measured against, and where it comes from.

    On a GPU: ``given``, else the data-sheet value of :data:`GPU_PEAK_TFLOPS` for its name (None
    when unknown). On the CPU: ``given``, else the best rate of 2048 x 2048 matrix products in
    ``precision`` (``fp32`` or ``bf16``) measured now on the same threads.
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
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12, f"{precision} matmul {n}x{n} measured, {torch.get_num_threads()} threads"


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(args: argparse.Namespace) -> None:
    """Child process: one method's peak memory; prints a JSON line."""
    x = load_batch(Path(args.data), args.batch_size, args.img_size).to(args.device)
    model, opt = build(args.probe, args.size, args.img_size, args.patch_size, args.batch_size, args.device)
    amp = args.precision == "bf16"
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


def selection_ms(args: argparse.Namespace, x: torch.Tensor, official: Path | None) -> dict[str, float]:
    """Milliseconds per batch of SelectiveMAE's token selection alone (HOG, seeds, PSTS, targets).

    rsfm's :meth:`~rsfm.methods.selective_mae.SelectiveMAE.select_tokens` eagerly and compiled
    (``fullgraph``), and the release's ``random_masking`` (its HOG, sampling and PSTS) when
    ``official`` is given; median of ``args.rounds`` x 10 calls, no gradient, at the run's
    precision (under autocast to bf16 when it is bf16, as in the training step).
    """
    task, _ = build("selective_mae", args.size, args.img_size, args.patch_size, x.shape[0], args.device)
    model = task.model
    imgs = task.normalise(x)
    amp = args.precision == "bf16"
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=amp):
        emb = model.embed_patches(imgs)
    calls: dict[str, Any] = {}

    def rsfm_select(fn: Any) -> Any:
        def call(i: int) -> Any:
            g = torch.Generator(device=x.device).manual_seed(i)
            return fn(imgs, emb, model.draw(imgs.shape[0], imgs.device, 0.5, g))

        return call

    calls["rsfm eager"] = rsfm_select(model.select_tokens)
    calls["rsfm compiled"] = rsfm_select(torch.compile(model.select_tokens, fullgraph=True))
    if official is not None:
        rel = official_variant("selective_mae", official, args, x).model
        with torch.no_grad():
            rel_emb = rel.grid_patchify(imgs)
        calls["authors'"] = lambda i: rel.random_masking(rel_emb, 0.85, 0.25, imgs)
    out: dict[str, list[float]] = {k: [] for k in calls}
    with torch.no_grad(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=amp):
        for fn in calls.values():
            fn(0)
            fn(1)
        for _ in range(args.rounds):
            for name, fn in calls.items():
                if args.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for i in range(10):
                    fn(i)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                out[name].append((time.perf_counter() - t0) / 10 * 1e3)
    return {k: statistics.median(v) for k, v in out.items()}


def measure(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    """Images/s (interleaved rounds), FLOPs per image and peak memory of every variant at one batch size."""
    device = args.device
    x = load_batch(Path(args.data), batch_size, args.img_size).to(device)
    variants: list[Variant] = []
    for m in METHODS:
        variants.append(rsfm_variant(m, args, x, compiled=False))
        if args.compile:
            variants.append(rsfm_variant(m, args, x, compiled=True))
        folder = args.official_mae if m == "mae" else args.official_smae
        if folder:
            for attention in args.official_attention:
                variants.append(official_variant(m, Path(folder), args, x, attention))
    flops = {v.name: v.flops / batch_size for v in variants}
    for v in variants:  # warm-up (compilation, allocator, kernels, optimiser state)
        t = v.run(args.warmup, device)
        print(f"  warm-up {v.name}: {t:.1f} s", flush=True)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else list(reversed(variants)):
            times[v.name].append(args.steps * batch_size / v.run(args.steps, device))
    methods = {v.name: v.method for v in variants}
    del variants
    mem = {}
    for m in METHODS:
        cmd = [sys.executable, __file__, "--probe", m, "--data", args.data, "--size", args.size]
        cmd += ["--img-size", str(args.img_size), "--patch-size", str(args.patch_size)]
        cmd += ["--batch-size", str(batch_size), "--device", device, "--precision", args.precision]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        mem[m] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
    sel = selection_ms(args, x, Path(args.official_smae) if args.official_smae else None) if args.selection else None
    return {"rounds": times, "flops_per_image": flops, "memory": mem, "methods": methods, "selection_ms": sel}


def throughput_ratios(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """SelectiveMAE / MAE per code base and rsfm / authors' per method: ratio of medians, paired range.

    Rounds are interleaved, so round ``r`` of every variant ran under the same machine load; the
    range of the per-round ratios shows how much the shared machine moved the result.
    """
    ips = {v: statistics.median(r) for v, r in times.items()}
    ratios: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    pairs = [
        (f"SelectiveMAE / MAE, {x}", f"selective_mae ({x})", f"mae ({x})")
        for x in ("rsfm eager", "rsfm compiled", "authors'", "authors', explicit attention")
    ]
    pairs += [
        (f"{m}: {x} / authors'", f"{m} ({x})", f"{m} (authors')")
        for m in METHODS
        for x in ("rsfm eager", "rsfm compiled")
    ]
    pairs += [
        (f"{m}: {x} / authors', explicit attention", f"{m} ({x})", f"{m} (authors', explicit attention)")
        for m in METHODS
        for x in ("rsfm eager", "rsfm compiled")
    ]
    for key, a, b in pairs:
        if a in ips and b in ips:
            paired = [x / y for x, y in zip(times[a], times[b], strict=True)]
            ratios[key] = ips[a] / ips[b]
            spread[key] = (min(paired), max(paired))
    return ratios, spread


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--data``, ``--size``, ``--img-size``, ``--patch-size``: the images and the ViT of a timed step."""
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--size", default="base", help="ViT size: tiny, small, base, large")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one or more batch sizes")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (interleaved)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (compilation happens here)")
    p.add_argument("--compile", action="store_true", help="also time rsfm's steps compiled (trainer.compile: true)")
    p.add_argument("--official-mae", default=None, help="folder with the authors' models_mae.py (MAE's repository)")
    p.add_argument("--official-smae", default=None, help="folder with the release's models_selectivemae.py")
    p.add_argument(
        "--official-attention",
        nargs="+",
        choices=("released", "explicit"),
        default=["released"],
        help="the authors' attention as released (SDPA), with its explicit products, or both",
    )
    p.add_argument("--selection", action="store_true", help="also time SelectiveMAE's token selection alone")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="fp32, or bf16 autocast for every variant (default: bf16 on a GPU, fp32 on the CPU)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: see above)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "fp32"
    if args.probe:
        args.batch_size = args.batch_size[0]
        memory_probe(args)
        return
    device = args.device
    amp = args.precision == "bf16"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak, peak_source = peak_tflops(device, args.peak_tflops, args.precision)
    results: dict[str, Any] = {"device": name, "peak_tflops": peak, "peak_source": peak_source, "batches": {}}
    print(
        f"\nViT-{args.size}/{args.patch_size}, {args.img_size} px, {device} ({name}), {args.rounds} interleaved "
        f"rounds x {args.steps} steps, precision {'bf16 autocast' if amp else 'fp32'}, torch {torch.__version__}; "
        "peak " + (f"{peak:.2f} TFLOP/s ({peak_source})" if peak else f"unknown ({peak_source})")
    )
    unit = "GPU max allocated" if device == "cuda" else "peak RSS"
    for batch_size in args.batch_size:
        res = measure(args, batch_size)
        if device == "cpu" and not args.peak_tflops:
            # a shared CPU's matmul rate varies: the best of the measurements so far
            again, _ = peak_tflops(device, None, args.precision)
            if again and peak and again > peak:
                peak = again
                print(f"(peak re-measured after the rounds: {peak:.3f} TFLOP/s, the best so far)")
            results["peak_tflops"] = peak
        times, flops, mem, methods = res["rounds"], res["flops_per_image"], res["memory"], res["methods"]
        ips = {v: statistics.median(r) for v, r in times.items()}
        width = max(len(v) for v in times) + 1
        print(
            f"\n{'batch':>5} {'variant':<{width}} {'images/s (median)':>18} {'all rounds':>34} {'GFLOP/image':>12} "
            f"{'TFLOP/s':>8} {'MFU %':>6}"
        )
        for v in times:
            rounds = " ".join(f"{t:.2f}" for t in times[v])
            tflops = flops[v] * ips[v] / 1e12
            mfu = f"{100 * tflops / peak:.1f}" if peak else "n/a"
            print(
                f"{batch_size:>5} {v:<{width}} {ips[v]:>18.2f} {rounds:>34} {flops[v] / 1e9:>12.2f} "
                f"{tflops:>8.3g} {mfu:>6}"
            )
        print(f"\n{'method':<14} {unit + ' (GiB)':>24} {'growth over set-up (GiB)':>26}   (rsfm, eager)")
        for m in METHODS:
            print(f"{m:<14} {mem[m]['peak'] / 2**30:>24.2f} {(mem[m]['peak'] - mem[m]['base']) / 2**30:>26.2f}")
        ratios, spread = throughput_ratios(times)
        for k, r in ratios.items():
            lo, hi = spread[k]
            print(f"batch {batch_size}: {k}: {r:.2f}x (paired rounds {lo:.2f}-{hi:.2f}x)")
        mem_ratio = mem["mae"]["peak"] / mem["selective_mae"]["peak"]
        ratios["peak memory MAE / SelectiveMAE (rsfm)"] = mem_ratio
        print(f"batch {batch_size}: peak memory MAE / SelectiveMAE (rsfm): {mem_ratio:.2f}x")
        if res["selection_ms"]:
            print(f"\nbatch {batch_size}: SelectiveMAE's token selection alone (HOG, seeds, PSTS, targets), ms/batch:")
            for k, ms in res["selection_ms"].items():
                print(f"  {k:<14} {ms:8.2f} ms")
            for v in times:
                if methods[v] == "selective_mae":
                    print(f"  ({v}: the whole training step takes {1e3 * batch_size / ips[v]:.1f} ms)")
        results["batches"][batch_size] = {
            "images_per_s": ips,
            "rounds": times,
            "flops_per_image": flops,
            "tflops": {v: flops[v] * ips[v] / 1e12 for v in times},
            "memory": mem,
            "ratios": ratios,
            "paired_round_ratio_range": spread,
            "selection_ms": res["selection_ms"],
        }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
