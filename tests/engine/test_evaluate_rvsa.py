"""``rsfm evaluate`` on a ViT+RVSA export (no class token): kNN on a small real AID folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import rsfm.engine.evaluate as ev
from rsfm.engine.evaluate import evaluate
from rsfm.models.encoders.rvsa import VisionTransformerRVSA, ViTRVSA
from rsfm.models.export import export_encoder, load_encoder
from rsfm.tasks.probes import pool_features
from rsfm.utils.errors import ConfigError

CLASSES = ["Beach", "Desert", "Forest", "Parking"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

#: one torch thread (tests/conftest.py): the models are small, and a second thread mostly waits
ONE_THREAD = True


@pytest.fixture(scope="module")
def aid_folder(aid_subset) -> Path:
    """10 real AID images per class (symlinks): 8 train + 2 held out per class."""
    return aid_subset(CLASSES, 10)


@pytest.fixture(scope="module")
def rvsa_file(tmp_path_factory) -> Path:
    """A random ViT-Tiny + RVSA (32 px, patch 8: a 4 × 4 grid, window 2, every 2nd block global) export."""
    torch.manual_seed(0)
    enc = ViTRVSA("tiny", img_size=32, patch_size=8, window_size=2, interval=2, rvsa_init="release")
    path = tmp_path_factory.mktemp("rvsa") / "rvsa.safetensors"
    return export_encoder(enc.model, path, {**enc.meta, "mean": MEAN, "std": STD, "method": "random-init"})


def _evaluate(encoder, folder, protocols, out_dir, **kwargs) -> dict:
    return evaluate(
        str(encoder), str(folder), protocols, out_dir=str(out_dir), num_workers=0, device="cpu", verbose=False,
        **kwargs,
    )  # fmt: skip


def test_knn_on_a_vit_rvsa_export_pools_the_token_mean(aid_folder, rvsa_file, tmp_path, monkeypatch) -> None:
    pools, real = [], ev.extract

    def spy(encoder, data, split, device, pool, mean, std, skipped=None, **kwargs):
        pools.append((type(encoder.model).__name__, pool))
        return real(encoder, data, split, device, pool, mean, std, skipped, **kwargs)

    monkeypatch.setattr(ev, "extract", spy)
    out = tmp_path / "out"
    result = _evaluate(rvsa_file, aid_folder, ("knn",), out, batch_size=40, k=5)

    # the ViTRVSA encoder class, chosen by the export's arch, pooled by averaging (no class token)
    assert pools == [("VisionTransformerRVSA", "avg"), ("VisionTransformerRVSA", "avg")]
    assert result["config"]["pool"] == "avg" and result["config"]["img_size"] == 32
    meta = result["encoder"]["meta"]
    assert meta["arch"] == "vit_rvsa" and (meta["window_size"], meta["interval"]) == (2, 2)
    report = result["protocols"]["knn"]
    assert math.isfinite(report["OA"]) and 0.0 <= report["OA"] <= 100.0
    assert report["n"] == 8 and report["k"] == 5
    cm = torch.tensor(report["confusion"])
    assert report["OA"] == pytest.approx(100 * cm.trace().item() / cm.sum().item())
    assert result["data"]["n_train_features"] == 32 and result["data"]["skipped"] == 0
    assert json.loads((out / "metrics.json").read_text())["protocols"]["knn"]["OA"] == pytest.approx(report["OA"])


def test_cls_pool_is_refused_for_a_vit_rvsa_export(aid_folder, rvsa_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match="no class token"):
        _evaluate(rvsa_file, aid_folder, ("knn",), tmp_path / "out", pool="cls")
    assert not (tmp_path / "out").exists()


def test_specs_of_a_vit_rvsa_export(rvsa_file) -> None:
    assert ev.encoder_spec(str(rvsa_file), "tiny", None, 16) == {
        "class_path": "ViTRVSA",
        "init_args": {"weights": str(rvsa_file)},
    }
    spec = ev.scratch_spec(str(rvsa_file), None, 32, 16)
    assert spec == {
        "class_path": "ViTRVSA",
        "init_args": {"size": "tiny", "img_size": 32, "patch_size": 8, "window_size": 2, "interval": 2},
    }
    scratch = ViTRVSA(**spec["init_args"])  # the random twin has the export's shape
    exported = load_encoder(rvsa_file)
    assert {k: v.shape for k, v in scratch.model.state_dict().items()} == {
        k: v.shape for k, v in exported.state_dict().items()
    }


def test_pool_features_of_vit_rvsa(rvsa_file) -> None:
    model = load_encoder(rvsa_file).eval()
    assert isinstance(model, VisionTransformerRVSA) and not hasattr(model, "cls_token")
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        feats = pool_features(model, x, "avg")
        last, _, _ = model.tokens(x)
        expect = last.mean(1)  # as MTP's classification models: no final norm
    assert feats.shape == (2, 192) and torch.allclose(feats, expect, atol=1e-5)
    with pytest.raises(ValueError, match="no.*class token|has none"):
        pool_features(model, x, "cls")
    with pytest.raises(ValueError, match="unknown pool"):
        pool_features(model, x, "max")  # type: ignore[arg-type]
