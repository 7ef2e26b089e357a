"""Unreadable files set aside in batches and counted (rsfm.data.skips)."""

import json
from pathlib import Path

import torch

from rsfm.data.skips import SkipReport, collate_skipping


def test_collate_all_skipped() -> None:
    batch = collate_skipping(
        [
            {"skipped": ("a.jpg", "truncated"), "index": 0, "label": 1},
            {"skipped": ("b.jpg", "zero_byte"), "index": 1, "label": 0},
        ]
    )
    # the channel count is unknown to the collate: the empty image does not claim one
    assert batch["image"].shape == (0, 0, 0, 0) and batch["image"].dtype == torch.float32
    assert batch["index"].shape == (0,) and batch["label"].shape == (0,)
    assert batch["skipped"] == [("a.jpg", "truncated"), ("b.jpg", "zero_byte")]
    # a datamodule that knows its channels says so
    four = collate_skipping([{"skipped": ("a.tif", "truncated"), "index": 0}], num_channels=4)
    assert four["image"].shape == (0, 4, 0, 0) and "label" not in four


def test_collate_with_an_empty_batch_template() -> None:
    empty = {"image": torch.empty((0, 5, 0, 0)), "mask": torch.empty((0, 0, 0), dtype=torch.int64), "id": []}
    image, mask = torch.rand(5, 4, 4), torch.zeros(4, 4, dtype=torch.int64)
    mixed = collate_skipping(
        [{"skipped": ("a.png", "zero_byte"), "id": "a"}, {"image": image, "mask": mask, "id": "b"}], empty=empty
    )
    assert mixed["image"].shape == (1, 5, 4, 4) and mixed["id"] == ["b"] and "index" not in mixed
    assert mixed["skipped"] == [("a.png", "zero_byte")]
    none = collate_skipping([{"skipped": ("a.png", "zero_byte"), "id": "a"}], empty=empty)
    assert none["image"].shape == (0, 5, 0, 0) and none["mask"].dtype == torch.int64 and none["id"] == []
    none["id"].append("x")  # the template is copied, never shared between batches
    assert empty["id"] == []


def test_skip_report(tmp_path: Path) -> None:
    report = SkipReport([("a.jpg", "truncated"), ("b.jpg", "truncated")])
    report.add([("a.jpg", "truncated"), ("c.txt", "not_an_image")])
    assert report.total == 3
    assert report.counts() == {"truncated": 2, "not_an_image": 1}
    assert report.examples("truncated", n=1) == ["a.jpg"]
    assert report.summary() == "3 files skipped: 2 truncated, 1 not_an_image"
    table = report.format()
    assert "truncated" in table and "a.jpg" in table and table.splitlines()[0].startswith("reason")
    other = SkipReport([("d.jpg", "zero_byte"), ("a.jpg", "truncated")])
    report.merge(other.to_dict())
    assert report.counts() == {"truncated": 2, "not_an_image": 1, "zero_byte": 1}
    saved = json.loads(report.write_json(tmp_path / "out" / "skipped.json").read_text())
    assert saved["total"] == 4 and saved["counts"]["zero_byte"] == 1
    assert SkipReport().summary() == "no files skipped"


def test_collate_keeps_readable_items_and_lists_the_rest() -> None:
    image = torch.rand(3, 4, 4)
    batch = collate_skipping(
        [
            {"image": image, "index": 3, "label": 2},
            {"skipped": ("bad.jpg", "truncated"), "index": 4, "label": 0},
            {"image": image * 0.5, "index": 5, "label": 1},
        ]
    )
    assert batch["image"].shape == (2, 3, 4, 4)
    assert batch["index"].tolist() == [3, 5] and batch["index"].dtype == torch.int64
    assert batch["label"].tolist() == [2, 1] and batch["label"].dtype == torch.int64
    assert batch["skipped"] == [("bad.jpg", "truncated")]
    unlabeled = collate_skipping([{"skipped": ("x.png", "zero_byte"), "index": 0}])
    assert "label" not in unlabeled and unlabeled["image"].shape == (0, 0, 0, 0)


def test_skip_report_repr_and_merge_of_reports() -> None:
    a = SkipReport([("a.jpg", "truncated")])
    a.merge(SkipReport([("b.png", "zero_byte"), ("a.jpg", "unreadable")]))  # first reason kept
    assert a.counts() == {"truncated": 1, "zero_byte": 1} and len(a) == 2
    assert repr(a) == "SkipReport(2 files skipped: 1 truncated, 1 zero_byte)"
    assert SkipReport([("c.jpg", "truncated")]).summary() == "1 file skipped: 1 truncated"
    assert SkipReport().format() == "no files skipped"
