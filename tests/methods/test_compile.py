"""``trainer.compile``: the compiled MAE and SelectiveMAE steps equal the eager ones on real images.

The compiled step is :meth:`rsfm.methods.base.MaskedImageModel.step_from_draws` under
``torch.compile(fullgraph=True)``: a graph break is an error, and one graph must serve every
PSTS stage (the stage enters as a tensor of counts). Tolerance: fp32 on CPU, where the compiler
reorders and fuses reductions, so values agree to rounding: loss within 1e-5 relative, every
gradient within 1e-4 of its largest entry, token indices exactly.

The default run captures the graph with the ``aot_eager`` backend (graph breaks, recompiles,
the traced program's values: seconds); ``-m slow`` also generates and runs inductor's kernels,
what ``trainer.compile: true`` uses (two minutes on two cores).

To keep compilation within a test's budget the encoders keep 2 of their 12 blocks and the
decoders 2 blocks: every code path of the step is still traced.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.methods import MAE, SelectiveMAE
from rsfm.methods.base import MaskedImageModel


@pytest.fixture(scope="module")
def imgs(datasets: Path) -> torch.Tensor:
    paths = [sorted((datasets / "aid" / c).glob("*.jpg"))[1] for c in ("Airport", "Forest", "Port", "Desert")]
    arr = [np.asarray(Image.open(p).convert("RGB").resize((64, 64)), np.float32) / 255 for p in paths]
    return (torch.from_numpy(np.stack(arr)).permute(0, 3, 1, 2) - 0.4) / 0.2


def _short(model: MaskedImageModel) -> MaskedImageModel:
    model.encoder.blocks = model.encoder.blocks[:2]
    return model


def _run(model: MaskedImageModel, imgs: torch.Tensor, progress: float, seed: int) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    out = model(imgs, progress=progress, generator=torch.Generator().manual_seed(seed))
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _assert_same(eager: tuple[dict, dict], compiled: tuple[dict, dict]) -> None:
    (out_e, g_e), (out_c, g_c) = eager, compiled
    for key in ("ids_visible", "ids_target"):
        assert torch.equal(out_e[key], out_c[key]), key
    torch.testing.assert_close(out_c["loss"], out_e["loss"], rtol=1e-5, atol=0.0)
    assert g_e.keys() == g_c.keys() and len(g_e) > 10
    for name, g in g_e.items():
        scale = g.abs().max().clamp_min(1e-12)
        err = (g_c[name] - g).abs().max() / scale
        assert err < 1e-4, f"{name}: gradient differs by {err:.2e} of its largest entry"


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: MAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2), id="mae"),
        pytest.param(
            lambda: SelectiveMAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2, target_selection="sample"),
            id="selective_mae",
        ),
    ],
)
def test_compiled_step_equals_eager_on_real_images(make, backend: str, imgs: torch.Tensor) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _short(make()).train()
    # PSTS near (stage 1), near→far (2), far→random (4) and random (5): one graph for all
    stages = (0.0, 0.36, 0.74, 0.9)
    eager = [_run(model, imgs, t, seed) for seed, t in enumerate(stages)]
    model.compile_step(backend=backend)
    assert model.compiled
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = [_run(model, imgs, t, seed) for seed, t in enumerate(stages)]
    for e, c in zip(eager, compiled, strict=True):
        _assert_same(e, c)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    # the compiled function is not state: the module still pickles (Lightning, deepcopy)
    import copy

    clone = copy.deepcopy(model)
    assert not clone.compiled and torch.equal(clone.mask_token, model.mask_token)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: MAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2), id="mae"),
        pytest.param(lambda: SelectiveMAE(size="tiny", img_size=64, patch_size=8, decoder_depth=2), id="selective_mae"),
    ],
)
def test_compiled_step_in_cpu_bf16_keeps_the_explicit_attention(make, imgs: torch.Tensor) -> None:
    """Under CPU autocast to bf16 the one graph holds the explicit attention products, no SDPA.

    The kernel choice (:mod:`rsfm.models.attention`) is made while tracing, from the autocast
    state; the compiled loss equals the eager bf16 loss (same operations) within 0.1 %.
    """
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _short(make()).train()
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, _ = _run(model, imgs, 0.5, 0)
        model.compile_step(backend=capture)
        compiled, _ = _run(model, imgs, 0.5, 0)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert not any("scaled_dot_product" in t for t in targets), "SDPA in the CPU bf16 graph"
    assert sum("matmul" in t for t in targets) >= 2 * 4  # q kᵀ and (·) v in each of the 4 blocks
    torch.testing.assert_close(compiled["loss"].float(), eager["loss"].float(), rtol=1e-3, atol=0.0)
    # the same model in fp32 traces SDPA again (a second graph: autocast is part of the guard)
    _run(model, imgs, 0.5, 0)
    assert len(graphs) == 2
    assert any("scaled_dot_product" in str(n.target) for n in graphs[1].graph.nodes)
