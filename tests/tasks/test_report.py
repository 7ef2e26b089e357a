import json

import pytest
import torch

from rsfm.metrics.classification import classification_report, format_table
from rsfm.utils.files import write_json

CLASSES = ["Forest", "Desert", "Parking", "Pond"]


def _example():
    # Confusion (rows = true, cols = pred):
    #   Forest:  2 1 0 0   -> 2/3
    #   Desert:  1 1 0 0   -> 1/2
    #   Parking: 1 0 3 0   -> 3/4
    #   Pond:    no samples
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 0, 1, 1, 0, 2, 2, 2, 0])
    return preds, labels


def test_report_against_hand_computed_confusion():
    preds, labels = _example()
    r = classification_report(preds, labels, CLASSES)
    assert r["n"] == 9
    assert r["OA"] == pytest.approx(100 * 6 / 9)
    assert r["per_class"]["Forest"] == {"accuracy": pytest.approx(100 * 2 / 3), "support": 3}
    assert r["per_class"]["Desert"] == {"accuracy": pytest.approx(50.0), "support": 2}
    assert r["per_class"]["Parking"] == {"accuracy": pytest.approx(75.0), "support": 4}
    assert r["per_class"]["Pond"] == {"accuracy": None, "support": 0}
    assert r["mean_class_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert r["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 3, 0], [0, 0, 0, 0]]


def test_report_rejects_bad_input():
    with pytest.raises(ValueError):
        classification_report(torch.tensor([0, 1]), torch.tensor([0]), CLASSES)
    with pytest.raises(ValueError):
        classification_report(torch.tensor([0, 4]), torch.tensor([0, 1]), CLASSES)


def test_format_table_side_by_side():
    preds, labels = _example()
    knn = classification_report(preds, labels, CLASSES)
    linear = classification_report(labels, labels, CLASSES)
    table = format_table({"knn": knn, "linear": linear})
    lines = table.splitlines()
    assert lines[0].startswith("| protocol | OA (%)")
    assert "| knn | 66.67 | 63.89 | 9 |" in lines
    assert "| linear | 100.00 | 100.00 | 9 |" in lines
    assert "| class | knn | linear | support |" in lines
    assert "| Desert | 50.00 | 100.00 | 2 |" in lines
    assert "| Pond | – | – | 0 |" in lines


def test_write_json_round_trip(tmp_path):
    preds, labels = _example()
    obj = {
        "knn": classification_report(preds, labels, CLASSES),
        "index": torch.arange(3),
        "k": torch.tensor(20),
        "path": tmp_path,
    }
    path = write_json(tmp_path / "sub" / "metrics.json", obj)
    back = json.loads(path.read_text())
    assert back["knn"] == json.loads(json.dumps(obj["knn"]))
    assert back["index"] == [0, 1, 2] and back["k"] == 20 and back["path"] == str(tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_accuracies_are_exact_fractions_in_float64():
    """OA and per-class accuracy are integer counts divided in float64 (torchmetrics' float32 gave
    57.14285969734192 for 4/7 and 66.66673421859741 for 666668/1000001), the numbers of the head's
    ClassificationMetricSet in the same evaluation table."""
    from rsfm.models.heads.classification import ClassificationMetricSet

    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 0, 2])  # 4 of 7 right; class 0: 2/3, class 1: 1/3, class 2: 1/1
    r = classification_report(preds, labels, CLASSES[:3])
    assert r["OA"] == pytest.approx(100 * 4 / 7, rel=0, abs=1e-12)
    assert r["per_class"]["Forest"]["accuracy"] == pytest.approx(100 * 2 / 3, rel=0, abs=1e-12)
    assert r["per_class"]["Desert"]["accuracy"] == pytest.approx(100 * 1 / 3, rel=0, abs=1e-12)
    assert r["mean_class_accuracy"] == pytest.approx(100 * (2 / 3 + 1 / 3 + 1) / 3, rel=0, abs=1e-12)
    head = ClassificationMetricSet(CLASSES[:3])
    head.update(preds, {"label": labels})
    h = head.report()
    assert (r["OA"], r["mean_class_accuracy"]) == (h["OA"], h["mean_class_accuracy"])
    assert r["per_class"] == h["per_class"] and r["confusion"] == h["confusion"]

    n = 10**6 + 1
    big_labels = torch.zeros(n, dtype=torch.int64)
    big_preds = big_labels.clone()
    big_preds[:333333] = 1
    big = classification_report(big_preds, big_labels, CLASSES[:2])
    assert big["OA"] == pytest.approx(100 * 666668 / n, rel=0, abs=1e-12)
    assert big["per_class"]["Forest"]["accuracy"] == pytest.approx(100 * 666668 / n, rel=0, abs=1e-12)
