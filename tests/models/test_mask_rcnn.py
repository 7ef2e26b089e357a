"""Mask R-CNN on real iSAID crops: losses and gradients, the class-dependent predictors, tiled masks, output, pictures.

Real data: DOTA's P0005 with its iSAID instance masks (``../shared/datasets/isaid_dota/train``),
read with :func:`rsfm.data.instance.isaid.decode_isaid`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rsfm.data.base import DataInfo
from rsfm.models.heads.instance_segmentation import MaskRCNNHead, merge_instances, paste_masks
from rsfm.models.task_model import TaskModel
from rsfm.utils.errors import ConfigError
from rsfm.utils.registry import HEADS

KEYS = ("image", "boxes", "labels", "masks")
#: the recipe's structure, a fraction of its width and samples
SMALL = {
    "fpn_channels": 16,
    "fc_channels": 64,
    "mask_channels": 16,
    "rpn_post_nms_top_n_train": 200,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 32,
}


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(xs[0]), float(ys[0]), float(xs[-1]) + 1, float(ys[-1]) + 1]


@pytest.fixture(scope="module")
def p0005(datasets: Path) -> dict[str, Any]:
    """P0005 (977 × 884): ``image`` (3, H, W) float32 in [0, 1], ``instance_map`` (H, W) int32 (i + 1), ``labels``."""
    from PIL import Image

    from rsfm.data.instance.isaid import ISAID_CLASSES, decode_isaid

    path = datasets / "isaid_dota" / "train" / "images" / "P0005.png"
    with Image.open(path) as img:
        image = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1).float() / 255
    ann = decode_isaid(path, int(image.shape[1]), int(image.shape[2]))
    return {"image": image, "instance_map": ann["instance_map"], "labels": ann["labels"], "classes": ISAID_CLASSES}


def crop(p0005: dict[str, Any], y0: int, x0: int, side: int, min_pixels: int = 16) -> dict[str, Any]:
    """A real crop as the datamodules serve it: image, boxes (from the masks), labels, masks uint8, difficult."""
    ids = p0005["instance_map"][y0 : y0 + side, x0 : x0 + side]
    present = [i for i in np.unique(ids).tolist() if i and int((ids == i).sum()) >= min_pixels]
    masks = np.stack([ids == i for i in present]) if present else np.zeros((0, side, side), bool)
    return {
        "image": p0005["image"][:, y0 : y0 + side, x0 : x0 + side],
        "boxes": torch.tensor([_box(m) for m in masks], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.from_numpy(p0005["labels"][np.array(present, dtype=np.int64) - 1]),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "difficult": torch.zeros(len(present), dtype=torch.bool),
        "id": f"P0005_{y0}_{x0}",
    }


def batch_of(*samples: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [s[k] for s in samples] for k in samples[0]}


def mask_rcnn(classes, img_size: int = 128, frozen: bool = False, **head: Any) -> TaskModel:
    torch.manual_seed(0)
    encoder = {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": img_size, "frozen": frozen}}
    heads = {"inst": {"class_path": "MaskRCNNHead", "init_args": {**SMALL, **head}}}
    info = DataInfo(classes=list(classes), sample_keys=KEYS)
    return TaskModel(encoder, heads, {"class_path": "SimpleFeaturePyramid"}, info)


@pytest.fixture(scope="module")
def vehicles(p0005: dict[str, Any]) -> dict[str, list[Any]]:
    """Two real 128 px crops of P0005 holding several vehicles each."""
    batch = batch_of(crop(p0005, 672, 320, 128), crop(p0005, 448, 576, 128))
    assert all(len(b) >= 3 for b in batch["boxes"]), [len(b) for b in batch["boxes"]]
    return batch


# --------------------------------------------------------------------------- training


def test_losses_are_finite_and_reach_the_encoder(p0005, vehicles) -> None:
    model = mask_rcnn(p0005["classes"])
    head = model.heads["inst"]
    assert isinstance(head, MaskRCNNHead) and HEADS.get("MaskRCNNHead") is MaskRCNNHead
    assert head.strides == [4, 8, 16, 32, 64] and head.monitor == "mask_mAP50" and head.output_kind == "masks"
    assert head.target_keys == ("boxes", "labels", "masks")
    # Mask R-CNN's mask branch: 14 × 14 RoIAlign, 4 convolutions, 28 × 28 logits per class (+ background)
    roi = head.roi_heads
    assert roi.mask_roi_pool.output_size == (14, 14) and roi.box_roi_pool.output_size == (7, 7)
    assert len([m for m in roi.mask_head.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    assert roi.mask_predictor.mask_fcn_logits.out_channels == 16
    assert roi.fg_bg_sampler.positive_fraction == 0.25 and head.rpn.fg_bg_sampler.batch_size_per_image == 256
    model.train()
    terms = head.loss(model.features(vehicles), vehicles)
    assert set(terms) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(math.isfinite(v.item()) for v in terms.values()), terms
    assert terms["loss_mask"].item() > 0.1  # the real objects give positive RoIs with mask targets
    sum(terms.values()).backward()
    for name in ("encoder.model.patch_embed.proj.weight", "heads.inst.roi_heads.mask_predictor.mask_fcn_logits.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_mask_loss_falls_on_real_crops(p0005, vehicles) -> None:
    model = mask_rcnn(p0005["classes"], frozen=True)  # the neck and head learn; quick
    head = model.heads["inst"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    def mask_loss() -> float:
        torch.manual_seed(1)  # the same RoI sampling before and after
        with torch.no_grad():
            return float(head.loss(model.features(vehicles), vehicles)["loss_mask"])

    model.train()
    before = mask_loss()
    for _ in range(8):
        opt.zero_grad()
        sum(head.loss(model.features(vehicles), vehicles).values()).backward()
        opt.step()
    after = mask_loss()
    assert after < 0.8 * before, (before, after)


def test_degenerate_and_missing_objects_train(p0005, vehicles) -> None:
    model = mask_rcnn(p0005["classes"])
    empty = crop(p0005, 0, 64, 64)  # no object here
    assert len(empty["boxes"]) == 0
    flat = {k: v[0] for k, v in vehicles.items()}
    flat = {**flat, "boxes": flat["boxes"].clone()}
    flat["boxes"][0, 2] = flat["boxes"][0, 0]  # zero width: left out, not a NaN
    model.train()
    terms = model.heads["inst"].loss(model.features(batch_of(empty, flat)), batch_of(empty, flat))
    assert all(math.isfinite(v.item()) for v in terms.values()), terms


# --------------------------------------------------------------------------- the class-dependent layers


def test_predictors_are_the_only_class_dependent_layers() -> None:
    pyramid = ([192] * 4, [4, 8, 16, 32])

    def built(classes: list[str]) -> MaskRCNNHead:
        head = MaskRCNNHead(**SMALL)
        head.build(*pyramid, DataInfo(classes=classes, sample_keys=KEYS))
        return head

    few, many = built(["ship", "plane"]), built([f"c{i}" for i in range(15)])
    modules = dict(few.named_modules())
    assert all(p in modules for p in MaskRCNNHead.predictors)
    assert few.get_submodule("roi_heads.box_predictor").cls_score.out_features == 3
    assert few.get_submodule("roi_heads.box_predictor").bbox_pred.out_features == 12
    assert few.get_submodule("roi_heads.mask_predictor.mask_fcn_logits").out_channels == 3
    shapes_few = {k: v.shape for k, v in few.state_dict().items()}
    shapes_many = {k: v.shape for k, v in many.state_dict().items()}
    assert shapes_few.keys() == shapes_many.keys()
    differ = {k for k in shapes_few if shapes_few[k] != shapes_many[k]}
    under = {k for k in shapes_few if any(k.startswith(p + ".") for p in MaskRCNNHead.predictors)}
    assert differ == under and len(under) == 6  # weights and biases of cls_score, bbox_pred, mask_fcn_logits

    # MTP: the 15-class head takes the 2-class head's layers but its own predictors, and trains
    from rsfm.models.heads.base import Features, share_trunk

    share_trunk(many, few)
    own = {id(p) for p in many.parameters()} - {id(p) for p in few.parameters()}
    assert len(own) == 6 and many.fpn is few.fpn and many.roi_heads.mask_head is few.roi_heads.mask_head
    assert many.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 16
    g = torch.Generator().manual_seed(0)
    features = Features(
        maps={"image": [torch.randn(1, 192, 64 // s, 64 // s, generator=g) for s in pyramid[1]]},
        sizes=[(64, 64)],
        shape=(64, 64),
    )
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:30, 20:44] = 1
    batch = {"boxes": [torch.tensor([[20.0, 10, 44, 30]])], "labels": [torch.tensor([14])], "masks": [mask]}
    many.train()
    sum(many.loss(features, batch).values()).backward()
    assert few.roi_heads.mask_head[0][0].weight.grad is not None  # the shared layer learns from both


# --------------------------------------------------------------------------- tiled prediction


class OracleMasks(MaskRCNNHead):
    """Stand-in segmenter: in each tile, the objects of the last band (``index + 1``) that it sees whole.

    Each is returned as Mask R-CNN's head returns it: its tight box in tile pixels and its mask
    resampled to 28 × 28 over the box (RoIAlign, as torchvision makes Mask R-CNN's mask targets).
    """

    def forward(self, tiles: Any, batch: Any = None) -> list[dict[str, torch.Tensor]]:
        from torchvision.ops import roi_align

        out = []
        for t in tiles:
            ids = t[-1].round().long()
            boxes, probs, seen = [], [], []
            for i in ids.unique().tolist():
                inside = ids == i
                if i == 0 or int(inside.sum()) != self.areas[i - 1]:
                    continue  # background, or cut by the tile's border
                box = torch.tensor([_box(inside.numpy())])
                boxes.append(box[0])
                probs.append(roi_align(inside[None, None].float(), [box], 28, 1.0)[0, 0])
                seen.append(i)
            self.calls.append(seen)
            out.append(
                {
                    "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                    "scores": torch.linspace(0.9, 0.8, len(boxes)),
                    "labels": torch.zeros(len(boxes), dtype=torch.int64),
                    "mask_probs": torch.stack(probs) if probs else torch.zeros(0, 28, 28),
                }
            )
        return out


class TilesAsFeatures:
    """A task model whose "features" are the tiles themselves (for :class:`OracleMasks`)."""

    def features(self, batch, *heads):
        return batch["image"]


def test_a_mask_across_a_tile_border_is_pasted_whole_once(p0005) -> None:
    """256 px windows of P0005 in 160 px tiles overlapping by 64 (tiles at 0 and 96 on each axis)."""
    ids_all = p0005["instance_map"]
    for y0 in range(0, ids_all.shape[0] - 256, 64):
        for x0 in range(0, ids_all.shape[1] - 256, 64):
            win = ids_all[y0 : y0 + 256, x0 : x0 + 256]
            inst = [i for i in np.unique(win).tolist() if i and (win == i).sum() == (ids_all == i).sum()]
            boxes = {i: _box(win == i) for i in inst}
            # an object over the first tile's right border (x = 160), wholly in the second tile
            across = [i for i in inst if boxes[i][0] >= 96 and boxes[i][0] < 150 < 170 < boxes[i][2]]
            if across and len(inst) >= 5:
                break
        else:
            continue
        break
    else:
        pytest.skip("no P0005 window with an object across the tile border")
    ids = np.zeros((256, 256), np.int64)
    for k, i in enumerate(inst):  # only objects wholly in the window, numbered 1..n
        ids[win == i] = k + 1
    head = OracleMasks(tile=160, overlap=64, batch_tiles=3, max_detections=100)
    head.areas = [int((ids == k + 1).sum()) for k in range(len(inst))]
    head.calls = []
    image = torch.cat([p0005["image"][:, y0 : y0 + 256, x0 : x0 + 256], torch.from_numpy(ids)[None].float()])
    out = head.detect(TilesAsFeatures(), image)
    assert len(head.calls) == 4
    target = inst.index(across[0]) + 1
    assert sum(target in seen for seen in head.calls) in (1, 2)  # only tiles starting at x = 96 see it whole
    # every object once (seen by several tiles, merged), with a full-image mask
    assert len(out["boxes"]) == len(inst) and out["masks"].shape == (len(inst), 256, 256)
    assert out["masks"].dtype == torch.bool and (out["scores"][:-1] >= out["scores"][1:]).all()
    truth = torch.from_numpy(ids)
    for k in range(len(inst)):
        gt = truth == k + 1
        iou = (out["masks"] & gt).sum((1, 2)).float() / (out["masks"] | gt).sum((1, 2)).float()
        assert float(iou.max()) > 0.75, (k, iou.max())
    # the object across the border: one mask, on both sides of it, where the object is
    gt = truth == target
    (j,) = torch.nonzero((out["masks"] & gt).sum((1, 2)) > 0).flatten().tolist()
    mask = out["masks"][j]
    assert mask[:, :160].any() and mask[:, 160:].any()
    assert float((mask & gt).sum() / (mask | gt).sum()) > 0.75
    torch.testing.assert_close(out["boxes"][j], torch.tensor(_box(gt.numpy())))


def test_tiled_prediction_of_a_crop_sized_image_is_one_forward_pass(p0005) -> None:
    model = mask_rcnn(p0005["classes"], tile=128, overlap=32, box_score_thresh=0.0, detections_per_tile=20)
    model.eval()
    head = model.heads["inst"]
    image = crop(p0005, 672, 320, 128)["image"]
    with torch.no_grad():
        (direct,) = head(model.features({"image": [image]}, head))
    (tiled,) = head.predict(model, {"image": [image]})
    assert len(direct["scores"]) == 20
    order = direct["scores"].argsort(descending=True, stable=True)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(tiled[key], direct[key][order])
    expected = paste_masks(direct["mask_probs"][order], direct["boxes"][order], (128, 128))
    assert torch.equal(tiled["masks"], expected)
    assert direct["mask_probs"].shape == (20, 28, 28) and float(direct["mask_probs"].max()) <= 1.0


def test_prediction_of_a_whole_image(p0005) -> None:
    model = mask_rcnn(p0005["classes"], tile=128, overlap=32, max_detections=7, box_score_thresh=0.0)
    model.eval()
    head = model.heads["inst"]
    image = p0005["image"][:, 100:300, 200:350]  # 200 × 150: 2 × 2 tiles
    (pred,) = head.predict(model, {"image": [image]})
    assert set(pred) == {"boxes", "scores", "labels", "masks"}
    assert pred["boxes"].shape == (7, 4) and pred["boxes"].dtype == torch.float32
    assert pred["scores"].shape == (7,) and (pred["scores"][:-1] >= pred["scores"][1:]).all()
    assert pred["labels"].dtype == torch.int64 and 0 <= int(pred["labels"].min()) <= int(pred["labels"].max()) < 15
    assert pred["masks"].shape == (7, 200, 150) and pred["masks"].dtype == torch.bool
    assert float(pred["boxes"][:, 2].max()) <= 150 and float(pred["boxes"][:, 3].max()) <= 200
    # every mask pixel lies in its box (widened by the paste's one-pixel ring, scaled)
    for mask, (x0, y0, x1, y1) in zip(pred["masks"], pred["boxes"].tolist(), strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs):
            pad_x, pad_y = (x1 - x0) / 28 + 1, (y1 - y0) / 28 + 1
            assert x0 - pad_x <= int(xs.min()) and int(xs.max()) <= x1 + pad_x
            assert y0 - pad_y <= int(ys.min()) and int(ys.max()) <= y1 + pad_y
    none = head.detect(model, image, score_thresh=1.1)
    assert none["boxes"].shape == (0, 4) and none["masks"].shape == (0, 200, 150)


def test_pasting_equals_torchvisions_and_merging_keeps_one_of_each_object() -> None:
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(7, 28, 28, generator=g)
    boxes = torch.tensor(
        [[0.0, 0, 30, 20], [10.4, 5.6, 60.2, 50.9], [70, 0, 99.5, 40], [5, 40, 45, 79], [50, 50, 90, 75],
         [0, 0, 100, 80], [-6.0, 60, 20, 95]]  # the last one reaches past the left and bottom borders
    )  # fmt: skip
    ours = paste_masks(probs, boxes, (80, 100))
    assert ours.dtype == torch.bool and ours.shape == (7, 80, 100)
    assert torch.equal(ours, paste_masks_in_image(probs[:, None], boxes, (80, 100))[:, 0] >= 0.5)
    assert ours[-1].any() and paste_masks(probs[:0], boxes[:0], (8, 9)).shape == (0, 8, 9)
    # two tiles see the same object (shifted by the tile origin): one instance is kept
    tile_a = {
        "boxes": boxes[:1] + 40,
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
        "mask_probs": probs[:1],
    }
    tile_b = {
        "boxes": boxes[:1] + 10,
        "scores": torch.tensor([0.8]),
        "labels": torch.tensor([1]),
        "mask_probs": probs[:1],
    }
    merged = merge_instances([tile_a, tile_b], [(0, 0), (30, 30)], (80, 100), max_detections=5)
    assert merged["boxes"].tolist() == [[40.0, 40, 70, 60]] and merged["masks"].shape == (1, 80, 100)
    assert torch.equal(merged["masks"], paste_masks(probs[:1], merged["boxes"], (80, 100)))  # in image pixels
    assert merged["masks"][0].any() and not merged["masks"][0, :40].any() and not merged["masks"][0, :, :39].any()
    assert merge_instances([], [], (8, 9))["masks"].shape == (0, 8, 9)


def test_bf16_autocast_keeps_boxes_in_float32(p0005) -> None:
    model = mask_rcnn(p0005["classes"], img_size=64, tile=96, overlap=32, max_detections=10, box_score_thresh=0.0)
    head = model.heads["inst"]
    small = batch_of(crop(p0005, 700, 340, 64))
    assert len(small["boxes"][0]) >= 2
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = head.loss(model.features(small), small)
    assert all(v.dtype == torch.float32 and math.isfinite(v.item()) for v in terms.values())
    model.eval()
    image = p0005["image"][:, 672:768, 300:492]  # 96 × 192: three tiles, at x = 0, 64 and 96
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (pred,) = head.predict(model, {"image": [image]})
    assert pred["boxes"].dtype == pred["scores"].dtype == torch.float32 and pred["masks"].shape == (10, 96, 192)
    # decoded in float32: sub-pixel box corners (bfloat16 rounds them to whole pixels from 128 px on)
    far = pred["boxes"][pred["boxes"] > 128]
    assert len(far) and (far != far.round()).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loss_and_prediction(p0005, vehicles) -> None:
    model = mask_rcnn(p0005["classes"], tile=128, overlap=32).cuda()
    head = model.heads["inst"]
    batch = {k: [v.cuda() if isinstance(v, torch.Tensor) else v for v in vs] for k, vs in vehicles.items()}
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms = head.loss(model.features(batch), batch)
    sum(terms.values()).backward()
    assert all(math.isfinite(v.item()) for v in terms.values())
    model.eval()
    (pred,) = head.predict(model, {"image": [p0005["image"][:, :200, :300].cuda()]})
    assert pred["masks"].is_cuda and pred["masks"].shape[1:] == (200, 300) and pred["boxes"].dtype == torch.float32


# --------------------------------------------------------------------------- options and pictures


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="overlap"):
        MaskRCNNHead(tile=128, overlap=128)
    with pytest.raises(ConfigError, match="fc_channels"):
        MaskRCNNHead(fc_channels=0)
    with pytest.raises(ConfigError, match="mask_thresh"):
        MaskRCNNHead(mask_thresh=1.0)
    with pytest.raises(ConfigError, match="classes"):
        MaskRCNNHead().build([192] * 4, [4, 8, 16, 32], DataInfo(sample_keys=KEYS))
    with pytest.raises(ConfigError, match="anchor_sizes needs 5 levels"):
        MaskRCNNHead(anchor_sizes=[[16]]).build([192] * 4, [4, 8, 16, 32], DataInfo(classes=["a"], sample_keys=KEYS))
    with pytest.raises(ConfigError, match=r"reads sample keys \['masks'\]"):
        TaskModel(
            {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": 64}},
            {"inst": {"class_path": "MaskRCNNHead"}},
            {"class_path": "SimpleFeaturePyramid"},
            DataInfo(classes=["a"], sample_keys=("image", "boxes", "labels")),
        )


def test_render_draws_image_truth_and_prediction(p0005, tmp_path: Path) -> None:
    sample = crop(p0005, 672, 320, 128)
    head = MaskRCNNHead(vis_score_thresh=0.5)
    head.build([192] * 4, [4, 8, 16, 32], DataInfo(classes=list(p0005["classes"]), sample_keys=KEYS))
    pred = {
        "boxes": sample["boxes"][:2],
        "scores": torch.tensor([0.9, 0.2]),  # the second is not drawn
        "labels": sample["labels"][:2],
        "masks": sample["masks"][:2].bool(),
    }
    panel = head.render(batch_of(sample), 0, [pred])
    assert panel.size == (3 * 128 + 16, 128) and panel.mode == "RGB"
    a = np.asarray(panel).astype(int)
    left, truth, right = a[:, :128], a[:, 136:264], a[:, 272:]
    np.testing.assert_array_equal(left, (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(int))
    m = sample["masks"][0].bool().numpy()
    inner = m & np.roll(m, 3, 0) & np.roll(m, -3, 0) & np.roll(m, 3, 1) & np.roll(m, -3, 1)  # away from the outline
    assert (truth[inner] != left[inner]).any(axis=-1).all() and (right[inner] != left[inner]).any(axis=-1).all()
    x0, y0, x1, y1 = (int(v) for v in sample["boxes"][0])
    near_first = np.zeros_like(m)
    near_first[max(y0 - 16, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = True  # its box, outline and caption
    m2 = sample["masks"][1].bool().numpy() & ~near_first
    assert m2.sum() > 50 and (truth[m2] != left[m2]).any(axis=-1).all()
    assert (right[m2] == left[m2]).all()  # the low-scoring prediction is left out
    (path,) = head.save_visuals([("P0005_672_320", panel)], tmp_path)
    assert path.name == "00_P0005_672_320.png" and path.is_file()
