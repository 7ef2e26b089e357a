"""Change detection: the Siamese change head on real LEVIR-CD pairs, its loss and file prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rsfm.data.change import LEVIRCDDataModule
from rsfm.models.heads.change import soft_dice_loss
from rsfm.tasks.module import DownstreamTask
from rsfm.tasks.predict import predict_files
from rsfm.utils.errors import ConfigError, DataError

VIT = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64, "patch_size": 16}}
NECK = {"class_path": "SimpleFeaturePyramid"}
PAIR = "test_2_0000_0000.png"


def change_task(info: dict[str, Any], encoder: dict[str, Any] = VIT, neck: Any = NECK, **head: Any) -> DownstreamTask:
    torch.manual_seed(0)
    head = {"channels": 16, **head}
    model = {"encoder": encoder, "neck": neck, "heads": {"change": {"class_path": "ChangeHead", "init_args": head}}}
    return DownstreamTask(model=model, optim={"lr": 1e-3}, data=info)


@pytest.fixture(scope="module")
def levir(datasets: Path) -> LEVIRCDDataModule:
    dm = LEVIRCDDataModule(str(datasets / "levir_cd"), crop_size=64, batch_size=2, num_workers=0)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def info(levir: LEVIRCDDataModule) -> dict[str, Any]:
    return levir.info().to_dict()


def test_siamese_head_shares_one_batched_encoder_pass(info, monkeypatch) -> None:
    task = change_task(info).eval()
    encoder = task.model.encoder
    calls: list[int] = []
    real = encoder.forward_intermediates
    monkeypatch.setattr(encoder, "forward_intermediates", lambda x: calls.append(x.shape[0]) or real(x))
    a, b = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    head = task.heads["change"]
    with torch.no_grad():
        out = head(task.model.features({"image_a": a, "image_b": b}))
        assert calls == [4]  # both dates in one forward
        assert out.shape == (2, 2, 64, 96)
        # |f_a - f_b| is symmetric: swapping the dates changes nothing
        swapped = head(task.model.features({"image_a": b, "image_b": a}))
        torch.testing.assert_close(swapped, out, atol=1e-5, rtol=1e-5)


def test_concat_fusion_one_logit_and_a_resnet_without_neck(info) -> None:
    a, b = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    concat = change_task(info, fusion="concat", num_logits=1).eval()
    resnet = change_task(info, {"class_path": "ResNet", "init_args": {"name": "resnet18"}}, None, fusion="concat")
    with torch.no_grad():
        assert concat.heads["change"](concat.model.features({"image_a": a, "image_b": b})).shape == (1, 1, 64, 96)
        resnet.eval()
        assert resnet.heads["change"](resnet.model.features({"image_a": a, "image_b": b})).shape == (1, 2, 64, 96)
    for bad, match in (({"fusion": "sum"}, "fusion"), ({"loss": "focal"}, "loss"), ({"num_logits": 3}, "num_logits")):
        with pytest.raises(ConfigError, match=match):
            change_task(info, **bad)


def test_soft_dice_loss_by_hand() -> None:
    prob = torch.tensor([[[0.9, 0.2], [0.0, 0.5]]])
    target = torch.tensor([[[1, 0], [0, 1]]])
    inter, total = 0.9 + 0.5, (0.9 + 0.2 + 0.5) + 2
    assert float(soft_dice_loss(prob, target)) == pytest.approx(1 - (2 * inter + 1) / (total + 1))
    assert float(soft_dice_loss(target.float(), target, eps=0.0)) == pytest.approx(0.0)


def test_training_steps_lower_the_loss_on_real_pairs(levir, info) -> None:
    ds = levir.datasets["val"]
    samples = [ds[i] for i in range(2)]
    batch = {k: torch.stack([s[k][..., 96:160, 96:160] for s in samples]) for k in ("image_a", "image_b", "mask")}
    assert 0 < batch["mask"].float().mean() < 1  # both classes present
    task = change_task(info)
    head = task.heads["change"]
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        terms = head.loss(task.model.features(batch), batch)
        assert set(terms) == {"ce", "dice"}
        return sum(terms.values())

    task.eval()
    with torch.no_grad():
        before = loss().item()
    task.train()
    for _ in range(8):
        opt.zero_grad()
        loss().backward()
        opt.step()
    task.eval()
    with torch.no_grad():
        after = loss().item()
    assert after < 0.8 * before, (before, after)


def test_predict_png_pair_whole_and_by_windows(datasets: Path, tmp_path: Path) -> None:
    levir = datasets / "levir_cd"
    pair = [levir / "A" / PAIR, levir / "B" / PAIR]
    whole_info = LEVIRCDDataModule(str(levir), crop_size=None).info().to_dict()
    assert whole_info["crop_size"] is None  # trained on whole pairs: predicted whole
    whole = predict_files(change_task(whole_info), pair, tmp_path / "whole.png")
    tiled_info = LEVIRCDDataModule(str(levir), crop_size=128).info().to_dict()
    tiled = predict_files(change_task(tiled_info), pair, tmp_path)  # 128 px windows
    assert tiled.name == "test_2_0000_0000_change.png"
    for path in (whole, tiled):
        mask = np.asarray(Image.open(path))
        assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}


def test_predict_refuses_bad_pairs(datasets: Path, info, tmp_path: Path) -> None:
    task = change_task(info)
    levir = datasets / "levir_cd"
    with pytest.raises(ConfigError, match="takes 2 image"):
        predict_files(task, [levir / "A" / PAIR], tmp_path / "x.png")
    with pytest.raises(DataError, match="is .* but"):
        predict_files(task, [levir / "A" / PAIR, datasets / "scenes" / "RGB.byte.tif"], tmp_path / "x.tif")
    assert not list(tmp_path.iterdir())
