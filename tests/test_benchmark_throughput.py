"""benchmarks/throughput.py: importing the authors' code in isolation, its compatibility shim, the ratios.

The authors' repositories are not available here (they are never shipped with rsfm), so two
stand-in folders reproduce what the benchmark must cope with: both name a package ``util``,
and MAE's release builds timm 0.3's ``Block(..., qk_scale=None)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def throughput(load_benchmark):
    return load_benchmark("throughput")


def _release(root: Path, module: str, tag: str) -> Path:
    (root / "util").mkdir(parents=True)
    (root / "util" / "__init__.py").write_text("")
    (root / "util" / "pos_embed.py").write_text(f"TAG = {tag!r}\n")
    (root / f"{module}.py").write_text(
        "from timm.models.vision_transformer import Block\nfrom util.pos_embed import TAG\n"
        "def build():\n    return Block(16, 2, 4.0, qkv_bias=True, qk_scale=None)\n"
    )
    return root


def test_each_release_sees_its_own_util_package_and_builds_with_todays_timm(throughput, tmp_path: Path) -> None:
    mae = throughput._import_official(_release(tmp_path / "mae", "models_mae", "mae"), "models_mae")
    smae = throughput._import_official(
        _release(tmp_path / "smae", "models_selectivemae", "smae"), "models_selectivemae"
    )
    assert (mae.TAG, smae.TAG) == ("mae", "smae")
    with pytest.raises(TypeError, match="qk_scale"):
        mae.build()  # today's timm has no qk_scale
    throughput._timm_block_compat(mae)
    block = mae.build()
    assert block(torch.zeros(1, 3, 16)).shape == (1, 3, 16)
    assert str(tmp_path) not in " ".join(sys.path)
    with pytest.raises(SystemExit, match="no models_mae.py"):
        throughput._import_official(tmp_path, "models_mae")


def test_ratios_are_of_medians_with_the_paired_round_range(throughput) -> None:
    times = {
        "mae (rsfm eager)": [1.0, 2.0, 1.5],
        "mae (authors')": [1.0, 1.0, 1.0],
        "selective_mae (rsfm eager)": [3.0, 5.0, 4.0],
    }
    ratios, spread = throughput.throughput_ratios(times)
    assert ratios["mae: rsfm eager / authors'"] == 1.5 and spread["mae: rsfm eager / authors'"] == (1.0, 2.0)
    assert ratios["SelectiveMAE / MAE, rsfm eager"] == pytest.approx(4.0 / 1.5)
    assert spread["SelectiveMAE / MAE, rsfm eager"] == (2.5, 3.0)
    assert "selective_mae: rsfm eager / authors'" not in ratios  # no authors' row for it


def test_ratios_against_the_release_with_explicit_attention(throughput) -> None:
    times = {
        "mae (rsfm compiled)": [2.0, 3.0],
        "mae (authors')": [1.0, 1.0],
        "mae (authors', explicit attention)": [2.0, 2.0],
    }
    ratios, spread = throughput.throughput_ratios(times)
    assert ratios["mae: rsfm compiled / authors'"] == 2.5
    assert ratios["mae: rsfm compiled / authors', explicit attention"] == 1.25
    assert spread["mae: rsfm compiled / authors', explicit attention"] == (1.0, 1.5)


def test_the_release_hog_layer_runs_in_fp32_under_cpu_bf16_autocast(throughput, datasets: Path) -> None:
    """The shim for the release's HOG: its fp32 histogram refuses bf16 norms under CPU autocast."""
    import numpy as np
    from PIL import Image

    class Hog(torch.nn.Module):  # the release's pattern: gradients by convolution, fp32 histogram
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("weight", torch.tensor([[1.0, 0.0, -1.0]] * 3).view(3, 1, 1, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            g = torch.nn.functional.conv2d(x, self.weight, groups=3).abs()
            out = torch.zeros((*g.shape[:2], 4), dtype=torch.float)
            out.scatter_add_(2, (g * 4).long().clamp(max=3).flatten(2), g.flatten(2))
            return out

    path = sorted((datasets / "aid" / "Airport").glob("*.jpg"))[0]
    img = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((32, 32)), np.float32) / 255)
    x = img.permute(2, 0, 1)[None]
    model = torch.nn.Module()
    model.hog = Hog()
    ref = model.hog(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="dtype"):
        model.hog(x)
    throughput._hog_fp32(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.hog(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
