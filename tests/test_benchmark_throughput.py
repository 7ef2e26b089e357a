"""benchmarks/throughput.py: importing the authors' code in isolation, its compatibility shim, the ratios.

The authors' repositories are not available here (they are never shipped with rsfm), so two
stand-in folders reproduce what the benchmark must cope with: both name a package ``util``,
and MAE's release builds timm 0.3's ``Block(..., qk_scale=None)``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("bench_throughput", BENCH / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
