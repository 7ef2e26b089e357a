"""The steps of docs/extending.md, run as written: a new head, registered, trained by the generic module."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from rsfm.cli import main
from rsfm.utils.files import read_json

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "extending.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_documented_head_trains_through_the_generic_module(
    tmp_path: Path, datasets: Path, monkeypatch, capsys
) -> None:
    head_code = next(b for b in code_blocks("python") if "# my_heads.py" in b)
    recipe = yaml.safe_load(next(b for b in code_blocks("yaml") if "linear_probe_dubai.yaml" in b))
    (tmp_path / "my_heads.py").write_text(head_code)
    recipe["data"]["init_args"]["root"] = str(datasets / "dubai_seg")
    (tmp_path / "linear_probe_dubai.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    argv = [
        "finetune",
        "--config",
        "linear_probe_dubai.yaml",
        "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu",
    ]
    assert main(argv) == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "finetune"
    report = read_json(run / "test" / "metrics.json")
    assert set(report["heads"]) == {"probe"}
    assert 0 <= report["metrics"]["test/mIoU"] <= 100 and "IoU" in report["heads"]["probe"]
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "logs" / "metrics.csv").is_file()
    # registered by the decorator: listed with the built-in heads
    from rsfm.utils.registry import HEADS

    assert "LinearSegmentationHead" in HEADS
    assert main(["list", "heads"]) == 0
    assert "LinearSegmentationHead" in capsys.readouterr().out
    # the encoder was frozen: only the probe's weights moved
    from rsfm.engine.checkpoint import load_checkpoint

    weights = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert any(k.startswith("model.heads.probe.classifier") for k in weights)
    sys.modules.pop("my_heads", None)


def test_rsfm_list_prints_every_registry(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, name in (("encoders", "ViT"), ("necks", "SimpleFeaturePyramid"), ("heads", "FasterRCNNHead"),
                       ("methods", "SelectiveMAE"), ("datasets", "LEVIRCDDataModule")):  # fmt: skip
        assert f"{kind}:" in out and name in out


def test_the_documented_curation_rule_runs_from_its_recipe(tmp_path: Path, datasets: Path, monkeypatch, capsys) -> None:
    import pyarrow.parquet as pq

    (tmp_path / "my_rules.py").write_text(next(b for b in code_blocks("python") if "# my_rules.py" in b))
    recipe = yaml.safe_load(next(b for b in code_blocks("yaml") if "cloud_free.yaml" in b))
    recipe["inputs"][0]["root"] = str(datasets / "aid")
    recipe["inputs"][0]["include"] = ["Beach/beach_1*.jpg", "Forest/forest_1*.jpg"]  # a few files, to stay fast
    recipe["rules"]["custom"][0]["init_args"]["max_share"] = 0.05  # low enough for a bright beach to count
    (tmp_path / "cloud_free.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["curate", "--config", "cloud_free.yaml"]) == 0, capsys.readouterr().err
    rows = pq.read_table(tmp_path / "runs" / "corpus" / "cloud_free" / "manifest.parquet").to_pylist()
    assert {r["input"] for r in rows} == {"aid"} and len(rows) > 10
    cloudy = [r["source"] for r in rows if r["rule"] == "cloudy"]
    assert cloudy and all(s.startswith("Beach/") for s in cloudy)
    assert any(r["rule"] is None for r in rows if r["source"].startswith("Beach/"))
    assert "| cloudy |" in (tmp_path / "runs" / "corpus" / "cloud_free" / "report.md").read_text()
