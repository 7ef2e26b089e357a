"""Task heads on real crops: losses fall, whole-image prediction, tiled detection, metrics, pictures."""

from pathlib import Path

import pytest
import torch

from rsfm.data.base import DataInfo
from rsfm.models.heads import ChangeHead, ClassificationHead, FasterRCNNHead
from rsfm.models.heads.detection import DetectionMetricSet
from rsfm.models.task_model import TaskModel
from rsfm.optim import param_groups
from rsfm.utils.errors import ConfigError

PYRAMID = {"class_path": "SimpleFeaturePyramid"}


def _vit(img_size: int = 64, **kw) -> dict:
    return {"class_path": "ViT", "init_args": {"size": "tiny", "img_size": img_size, "patch_size": 16, **kw}}


def _losses(model: TaskModel, batch: dict) -> dict[str, torch.Tensor]:
    """``head/term`` → unweighted loss terms of every head over one encoder pass."""
    feats = model.features(batch)
    return {f"{n}/{t}": v for n, h in model.heads.items() for t, v in h.loss(feats, batch).items()}


def _total(model: TaskModel, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(model.heads[k.split("/")[0]].loss_weight * v for k, v in terms.items())


def _train(model: TaskModel, batch: dict, steps: int = 10, lr: float = 1e-3) -> list[dict[str, float]]:
    """``steps`` AdamW steps on one batch; the loss terms (and ``total``) before each step."""
    groups = param_groups(model, model.encoder, lr, 0.0)
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    opt = torch.optim.AdamW(groups, lr=lr)
    model.train()
    history = []
    for _ in range(steps):
        terms = _losses(model, batch)
        total = _total(model, terms)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({**{k: float(v.detach()) for k, v in terms.items()}, "total": float(total.detach())})
    return history


# --------------------------------------------------------------------------- losses fall on real crops


def test_upernet_and_auxiliary_fcn_heads_learn_loveda_crops(loveda_batch, one_thread):
    batch, info = loveda_batch
    torch.manual_seed(0)
    heads = {
        "seg": {"class_path": "UperNetHead", "init_args": {"channels": 32, "dropout": 0.0}},
        "aux": {"class_path": "FCNHead", "init_args": {"channels": 32, "dropout": 0.0}},
    }
    model = TaskModel(_vit(), heads, PYRAMID, info)
    assert model.heads["aux"].loss_weight == 0.4 and not model.heads["aux"].evaluate
    assert model.heads["seg"].evaluate and model.heads["seg"].monitor == "mIoU"
    history = _train(model, batch)
    first, last = history[0], history[-1]
    assert set(first) == {"seg/ce", "aux/ce", "total"}
    assert first["total"] == pytest.approx(first["seg/ce"] + 0.4 * first["aux/ce"])
    assert last["seg/ce"] < 0.8 * first["seg/ce"] and last["aux/ce"] < 0.8 * first["aux/ce"], history
    # the logits are at the input resolution
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out["seg"].shape == out["aux"].shape == (4, len(info.classes), 64, 64)


def test_segmentation_loss_of_an_all_ignored_crop_is_a_zero_with_a_gradient(loveda_batch, one_thread):
    batch, info = loveda_batch
    model = TaskModel(_vit(), {"seg": {"class_path": "FCNHead", "init_args": {"channels": 16}}}, PYRAMID, info)
    ignored = {**batch, "mask": torch.full_like(batch["mask"], 255)}
    loss = model.heads["seg"].loss(model.features(ignored), ignored)["ce"]
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert model.heads["seg"].classifier.weight.grad is not None


def test_faster_rcnn_head_learns_nepu_crops(nepu_batch, one_thread):
    batch, info = nepu_batch
    torch.manual_seed(0)
    small = {"fpn_channels": 32, "box_batch_size_per_image": 32, "rpn_post_nms_top_n_test": 50}
    # frozen encoder: the head (FPN, RPN, RoI heads) and the neck are what learns here, quickly
    model = TaskModel(
        _vit(96, frozen=True), {"det": {"class_path": "FasterRCNNHead", "init_args": small}}, PYRAMID, info
    )
    head = model.heads["det"]
    assert head.strides == [4, 8, 16, 32, 64]
    assert head.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))

    def loss() -> float:
        model.train()
        torch.manual_seed(1)  # the same proposal and anchor sampling before and after
        with torch.no_grad():
            return float(_total(model, _losses(model, batch)))

    before = loss()
    history = _train(model, batch, steps=10, lr=1e-3)
    assert set(history[0]) == {
        "det/loss_objectness",
        "det/loss_rpn_box_reg",
        "det/loss_classifier",
        "det/loss_box_reg",
        "total",
    }
    after = loss()
    assert after < 0.8 * before, (before, after, history)


def test_change_head_learns_levir_crops(levir_batch, one_thread):
    batch, info = levir_batch
    torch.manual_seed(0)
    heads = {"change": {"class_path": "ChangeHead", "init_args": {"channels": 32}}}
    model = TaskModel(_vit(), heads, PYRAMID, info)
    history = _train(model, batch)
    assert set(history[0]) == {"change/ce", "change/dice", "total"}
    assert history[-1]["total"] < 0.8 * history[0]["total"], history
    assert history[-1]["change/ce"] < history[0]["change/ce"]


def test_classification_head_learns_aid_images(aid_batch, one_thread):
    batch, info = aid_batch
    torch.manual_seed(0)
    model = TaskModel(_vit(), {"cls": {"class_path": "ClassificationHead"}}, None, info)
    head = model.heads["cls"]
    assert head.input == "pooled" and head.fc.in_features == 192 and head.fc.out_features == 4
    history = _train(model, batch, lr=3e-4)
    assert history[0]["cls/ce"] == pytest.approx(1.386, abs=0.05)  # ln 4: the classifier starts near zero
    assert history[-1]["cls/ce"] < 0.85 * history[0]["cls/ce"], history
    model.eval()
    preds = head.predict(model, batch)
    assert preds.shape == (8,) and preds.dtype == torch.int64
    empty = head.predict(model, {"image": batch["image"][:0]})
    assert empty.shape == (0,)


# --------------------------------------------------------------------------- whole-image prediction


def test_sliding_window_of_a_crop_sized_image_is_one_forward_pass(loveda_batch, levir_batch, one_thread):
    batch, info = loveda_batch
    torch.manual_seed(0)
    seg = TaskModel(_vit(), {"seg": {"class_path": "UperNetHead", "init_args": {"channels": 16}}}, PYRAMID, info).eval()
    head = seg.heads["seg"]
    assert head.window == 64 and head.step == 42  # 2/3 of the crop by default
    with torch.no_grad():
        direct = head(seg.features({"image": batch["image"]}, head))
        windows = head.predict_logits(seg, batch["image"])
        torch.testing.assert_close(windows, direct, rtol=1e-5, atol=1e-5)
        assert torch.equal(head.predict(seg, batch), windows.argmax(1))
        # a larger image: several windows, logits everywhere
        big = torch.cat([batch["image"][:1], batch["image"][1:2]], dim=-1)[..., :100]  # 64 × 100
        assert head.predict_logits(seg, big).shape == (1, len(info.classes), 64, 100)

    pair, info = levir_batch
    ch = TaskModel(
        _vit(), {"change": {"class_path": "ChangeHead", "init_args": {"channels": 16}}}, PYRAMID, info
    ).eval()
    head = ch.heads["change"]
    with torch.no_grad():
        direct = head.change_probability(head(ch.features({"image_a": pair["image_a"], "image_b": pair["image_b"]})))
        prob = head.predict_probability(ch, pair["image_a"], pair["image_b"])
        torch.testing.assert_close(prob, direct, rtol=1e-5, atol=1e-6)
        assert torch.equal(head.predict(ch, pair), (prob > 0.5).long())
        head.window = None  # no crop size: whole pairs, padded to the coarsest stride
        odd = head.predict_probability(ch, pair["image_a"][..., :60, :50], pair["image_b"][..., :60, :50])
        assert odd.shape == (4, 60, 50) and bool(((odd >= 0) & (odd <= 1)).all())


def test_tiled_detection_of_a_crop_sized_image_is_one_forward_pass(nepu_batch, one_thread):
    batch, info = nepu_batch
    torch.manual_seed(0)
    opts = {"fpn_channels": 16, "rpn_post_nms_top_n_test": 50, "tile": 96, "overlap": 32}
    model = TaskModel(_vit(96), {"det": {"class_path": "FasterRCNNHead", "init_args": opts}}, PYRAMID, info).eval()
    head = model.heads["det"]
    image = batch["image"][0]
    with torch.no_grad():
        (direct,) = head(model.features({"image": [image]}, head))
    (tiled,) = head.predict(model, {"image": [image]})
    assert len(direct["scores"]) > 0
    order = direct["scores"].argsort(descending=True)
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(tiled[key], direct[key][order])
    assert int(tiled["labels"].max()) == 0  # 0-based labels (torchvision's background removed)
    assert head.detect(model, image, score_thresh=1.1)["boxes"].shape == (0, 4)


def test_faster_rcnn_head_under_bf16_autocast_decodes_boxes_in_float32(nepu_batch, one_thread):
    """Losses and detections in float32 under CPU autocast to bf16 (bf16 boxes would be quantised)."""
    batch, info = nepu_batch
    torch.manual_seed(0)
    opts = {"fpn_channels": 16, "rpn_post_nms_top_n_test": 50, "box_score_thresh": 0.0}
    model = TaskModel(_vit(96), {"det": {"class_path": "FasterRCNNHead", "init_args": opts}}, PYRAMID, info)
    head = model.heads["det"]
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = head.loss(model.features(batch, head), batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (pred,) = head.predict(model, {"image": [batch["image"][0]]})
    assert pred["boxes"].dtype == pred["scores"].dtype == torch.float32 and len(pred["boxes"]) > 0
    boxes = pred["boxes"]
    assert (boxes != boxes.bfloat16().float()).any(), "box corners rounded to bf16"


class OracleDetector(FasterRCNNHead):
    """Stand-in detector: in each tile, the boxes of the objects drawn whole in its last band.

    The last band holds ``object index + 1`` inside each ground-truth box (0 elsewhere), so the
    "detections" of a tile are exactly the objects it sees entirely, in tile pixels.
    """

    def forward(self, tiles, batch=None):
        out = []
        for t in tiles:
            ids = t[-1].round().long()
            boxes, seen = [], []
            for i in ids.unique().tolist():
                if i == 0:
                    continue
                ys, xs = torch.nonzero(ids == i, as_tuple=True)
                box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                if (box[2] - box[0], box[3] - box[1]) == self.sizes[i - 1]:
                    boxes.append(box)
                    seen.append(i)
            self.calls.append(seen)
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.zeros(len(boxes), dtype=torch.int64),
                }
            )
        return out


class TilesAsFeatures:
    """A task model whose "features" are the tiles themselves (for :class:`OracleDetector`)."""

    def features(self, batch, *heads):
        return batch["image"]


def _window_with_a_well_in_the_middle(records, read_image):
    """A 512-px window of a real NEPU image whose chosen oil well lies inside [128, 256)² (4 tiles' overlap).

    Returns the window ``(3, 512, 512)`` in [0, 1], the boxes lying whole in it and overlapping
    no other (window pixels, rounded) and the chosen well's index among them.
    """
    for rec in records:
        boxes = torch.from_numpy(rec.boxes).round()
        sizes, centres = boxes[:, 2:] - boxes[:, :2], (boxes[:, :2] + boxes[:, 2:]) / 2
        w, h = rec.meta["size"]  # from the annotation: images are read only once chosen
        for k in range(len(boxes)):
            cx, cy = (int(v) for v in centres[k])
            x0, y0 = cx - 192, cy - 192
            if sizes[k].max() > 120 or x0 < 0 or y0 < 0 or x0 + 512 > w or y0 + 512 > h:
                continue
            win = boxes - torch.tensor([x0, y0, x0, y0])
            inside = (win[:, :2] >= 0).all(1) & (win[:, 2:] <= 512).all(1)
            lo, hi = (
                torch.maximum(win[:, None, :2], win[None, :, :2]),
                torch.minimum(win[:, None, 2:], win[None, :, 2:]),
            )
            overlaps = ((hi - lo).clamp(min=0).prod(-1) > 0).sum(1) > 1  # touches another box
            keep = inside & ~overlaps
            if not keep[k]:
                continue
            image = read_image(rec.image)
            assert tuple(image.shape[-2:]) == (h, w)
            return image[:, y0 : y0 + 512, x0 : x0 + 512].float() / 255, win[keep], int(keep[:k].sum())
    pytest.skip("no NEPU oil well fits the test's window")


def test_tiled_detection_finds_an_object_in_the_overlap_of_four_tiles_once(datasets: Path):
    from rsfm.data.detection.voc import voc_records
    from rsfm.data.io import read_image

    records, _ = voc_records(datasets / "nepu_owod", "train")
    image, boxes, target = _window_with_a_well_in_the_middle(records, read_image)
    assert (boxes[target, :2] >= 128).all() and (boxes[target, 2:] <= 256).all()
    ids = torch.zeros(1, 512, 512)
    for i, (a, b, c, d) in enumerate(boxes.long().tolist()):
        ids[0, b:d, a:c] = i + 1
    det = OracleDetector(tile=256, overlap=128, batch_tiles=4, merge_iou=0.5)
    det.sizes = [(int(c - a), int(d - b)) for a, b, c, d in boxes.tolist()]
    det.calls = []
    out = det.detect(TilesAsFeatures(), torch.cat([image, ids]))
    assert len(det.calls) == 9  # tiles start at 0, 128, 256 along each side
    assert sum(target + 1 in seen for seen in det.calls) == 4  # the chosen well is seen whole by 4 tiles...
    # ... and every object, that one included, is found exactly once, in image pixels
    assert len(out["boxes"]) == len(boxes)
    torch.testing.assert_close(out["boxes"][out["boxes"][:, 0].argsort()], boxes[boxes[:, 0].argsort()])
    assert out["labels"].tolist() == [0] * len(boxes)


# --------------------------------------------------------------------------- metrics


def _hand_detections():
    """Two objects; detections by score: hit, false positive, hit (precision 1, 1/2, 2/3)."""
    preds = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
            "labels": torch.tensor([0, 0, 0]),
        }
    ]
    batch = {
        "boxes": [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [70, 70, 80, 80]])],
        "labels": [torch.tensor([0, 0, 0])],
        "difficult": [torch.tensor([False, False, True])],  # the third: neither needed nor counted
    }
    return preds, batch


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("voc12", 100 * (0.5 * 1 + 0.5 * 2 / 3)),  # all-point: area under the precision envelope
        ("voc07", 100 * (6 * 1 + 5 * 2 / 3) / 11),  # 11 points: recall 0-0.5 at 1, 0.6-1 at 2/3
        ("coco", 100 * (51 + 50 * 2 / 3) / 101),  # 101 points
    ],
)
def test_detection_metric_set_protocols(metric: str, expected: float):
    m = DetectionMetricSet(["oilwell"], metric=metric)
    preds, batch = _hand_detections()
    m.update(preds, batch)
    scores = m.compute()
    assert scores["mAP50"] == pytest.approx(expected, abs=1e-4)
    assert set(scores) == ({"mAP50", "mAP50_95"} if metric == "coco" else {"mAP50"})
    if metric == "coco":  # exact boxes: the same at every IoU (was logged as 0 under the default cap of 1000)
        assert scores["mAP50_95"] == pytest.approx(expected, abs=1e-4)
    report = m.report()
    assert report["metric"] == metric and report["classes"] == ["oilwell"]
    assert report["per_class"]["oilwell"]["num_objects"] == 2
    m.reset()
    assert m.compute()["mAP50"] == 0.0  # nothing seen: 0, not None, in the logged scalars


def test_detection_metric_set_never_logs_an_undefined_score_as_zero(monkeypatch):
    m = DetectionMetricSet(["oilwell"], metric="coco")
    preds, batch = _hand_detections()
    m.update(preds, batch)
    real = m.coco.compute
    monkeypatch.setattr(m.coco, "compute", lambda **kw: {**real(**kw), "mAP50_95": None})
    with pytest.raises(RuntimeError, match="mAP50_95 is undefined"):
        m.compute()
    with pytest.raises(ValueError, match="max_detections"):
        DetectionMetricSet(["oilwell"], metric="coco", max_detections=0)


def test_voc12_and_coco_differ_and_agree_on_a_perfect_detector():
    got = {}
    for metric in ("voc12", "coco"):
        m = DetectionMetricSet(["a", "b"], metric=metric)
        preds, batch = _hand_detections()
        m.update(preds, batch)
        got[metric] = m.compute()["mAP50"]
        perfect = DetectionMetricSet(["a", "b"], metric=metric)
        perfect.update(
            [{"boxes": batch["boxes"][0][:2], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
            {
                "boxes": [batch["boxes"][0][:2]],
                "labels": [torch.tensor([0, 1])],
                "difficult": [torch.zeros(2, dtype=torch.bool)],
            },
        )
        assert perfect.compute()["mAP50"] == pytest.approx(100.0)
    assert got["voc12"] == pytest.approx(250 / 3) and got["coco"] > got["voc12"]
    with pytest.raises(ConfigError, match="metric"):
        FasterRCNNHead(metric="voc")
    with pytest.raises(ConfigError, match="overlap"):
        FasterRCNNHead(tile=128, overlap=128)


# --------------------------------------------------------------------------- pictures


def test_classification_pictures_spread_over_the_classes(aid_batch, datasets: Path, tmp_path: Path):
    batch, _ = aid_batch
    aid = sorted(p.name for p in (datasets / "aid").iterdir() if p.is_dir())
    head = ClassificationHead()
    head.build([192], [], DataInfo(classes=aid, sample_keys=("image", "label")))
    assert head.num_classes == 30  # 1 + 32 // 30 = 2 pictures per class
    # a test split sorted by class: the first two of every class are kept, not the first 32 images
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    b = {"image": batch["image"], "label": labels}
    kept = [head.want_visual(b, i, None) for i in range(8)]
    assert kept == [True, True, False, False, True, True, False, True]
    assert not head.want_visual({"label": torch.tensor([0])}, 0, None)  # across batches too
    panels = [(str(i), head.render(b, i, labels)) for i in range(8) if kept[i]]
    (path,) = head.save_visuals(panels, tmp_path)
    assert path.name == "predictions.png" and path.is_file()
    assert head.want_visual(b, 0, None)  # saving starts a new count
    few = ClassificationHead()
    few.build([192], [], DataInfo(classes=["a", "b"], sample_keys=("image", "label")))
    assert sum(few.want_visual({"label": torch.zeros(40, dtype=torch.long)}, i, None) for i in range(40)) == 17


def test_change_head_rejects_bad_options():
    for kwargs, match in (
        ({"fusion": "sum"}, "fusion"),
        ({"loss": "focal"}, "loss"),
        ({"num_logits": 3}, "num_logits"),
    ):
        with pytest.raises(ConfigError, match=match):
            ChangeHead(**kwargs)


def test_a_head_without_its_loss_or_metrics_cannot_be_made():
    """The head, metric and neck interfaces are abstract: a subclass missing a method fails when made, naming it."""
    from rsfm.models.heads.base import Head, HeadMetrics
    from rsfm.models.necks import Neck

    class NoLoss(Head):
        def forward(self, features, batch=None):
            return features

        def make_metrics(self):
            return DetectionMetricSet([])

    class NoCompute(HeadMetrics):
        def update(self, preds, batch):
            pass

    class NoForward(Neck):
        def build(self, in_channels, strides):
            pass

    for cls, missing in ((NoLoss, "loss"), (NoCompute, "compute"), (NoForward, "forward")):
        with pytest.raises(TypeError, match=missing):
            cls()


def _change_report_worker(rank: int, world: int, port: int, out: str) -> None:
    import os
    from datetime import timedelta

    import torch.distributed as dist

    from rsfm.models.heads.change import ChangeMetricSet

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        metrics = ChangeMetricSet()
        n = 2 if rank == 0 else 1  # 3 test pairs over 2 ranks, unpadded
        mask = torch.zeros(n, 4, 4, dtype=torch.int64)
        mask[:, :2] = 1
        metrics.update(torch.ones(n, 4, 4, dtype=torch.int64), {"mask": mask, "id": [f"r{rank}p{i}" for i in range(n)]})
        report = metrics.report()
        torch.save({"pairs": report["pairs"], "ids": [p["id"] for p in report["per_image"]]}, f"{out}.rank{rank}")
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_change_report_lists_every_ranks_pairs(tmp_path: Path) -> None:
    """Under DDP the report's per-pair scores come from all ranks (it said 2 pairs of 3)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "report.pt"
    mp.spawn(_change_report_worker, args=(2, port, str(out)), nprocs=2, join=True)
    for rank in (0, 1):  # every rank's report holds every pair
        assert torch.load(f"{out}.rank{rank}") == {"pairs": 3, "ids": ["r0p0", "r0p1", "r1p0"]}
