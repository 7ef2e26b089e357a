"""benchmarks/mtp.py: its table (means, 95 % intervals, differences) and the encoder switch it relies on."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest


def test_table_gives_means_intervals_and_differences(load_benchmark) -> None:
    mtp = load_benchmark("mtp")
    scores = {"scratch": [10.0, 12.0, 11.0], "mim": [20.0, 22.0, 24.0], "mtp": [30.0, 30.0, 33.0]}
    rows = [
        {"task": "segmentation_dubai", "variant": v, "seed": i, "metrics": {"mIoU": s, "OA": 2 * s}}
        for v, values in scores.items()
        for i, s in enumerate(values)
    ]
    table = mtp.summarise(rows)
    line = next(r for r in table.splitlines() if "| mIoU |" in r)
    half = 4.303 * statistics.stdev(scores["mim"]) / 3**0.5  # Student t, 2 degrees of freedom
    assert f"22.00 ± {half:.2f}" in line
    assert "| +9.00 | +11.00 | 3 |" in line  # MTP − MIM, MIM − scratch, seeds
    assert "LoveDA mIoU: 51.95 → 52.39 (+0.44)" in line  # the release's figure, on the headline row only
    oa = next(r for r in table.splitlines() if "| OA |" in r)
    assert "LoveDA" not in oa and "| +18.00 | +22.00 |" in oa
    assert mtp.t_interval([5.0]) == 0.0
    assert mtp.paper_reference("rotated_detection_dota").startswith("DIOR-R mAP50")
    assert mtp.paper_reference("classification_aid") == "–"


def test_a_vit_rvsa_export_switches_the_encoder_and_drops_the_neck(load_benchmark) -> None:
    ds = load_benchmark("downstream")
    meta = {"arch": "vit_rvsa", "size": "tiny", "patch_size": 16, "img_size": 224, "window_size": 7, "interval": 3}
    current = {"class_path": "rsfm.models.encoders.vit.ViT", "init_args": {"size": "tiny", "drop_path_rate": 0.1}}
    out = ds.encoder_overrides(current, meta, Path("e.safetensors"), "pretrained")
    assert out[-1] == "model.neck=null" and '"class_path": "ViTRVSA"' in out[0]
    assert '"weights": "e.safetensors"' in out[0] and '"drop_path_rate": 0.1' in out[0]
    plain = {**meta, "arch": "vit"}
    out = ds.encoder_overrides(current, plain, Path("e.safetensors"), "scratch")
    assert "model.encoder.init_args.weights=null" in out and not any("neck" in o for o in out)


@pytest.mark.parametrize("flag", ["--mim", "--mtp"])
def test_missing_encoders_are_named(load_benchmark, flag: str, tmp_path: Path, capsys) -> None:
    mtp = load_benchmark("mtp")
    other = tmp_path / "x.safetensors"
    other.write_bytes(b"")
    args = ["--mim", str(tmp_path / "nope.safetensors"), "--mtp", str(other)]
    if flag == "--mtp":
        args = ["--mim", str(other), "--mtp", str(tmp_path / "nope.safetensors")]
    with pytest.raises(SystemExit):
        mtp.main(args)
    assert f"{flag}: encoder not found" in capsys.readouterr().err


def test_collect_reads_finished_runs(load_benchmark, tmp_path: Path) -> None:
    mtp = load_benchmark("mtp")
    import json

    for variant, score in (("scratch", 10.0), ("mim", 12.0)):
        run = tmp_path / "change_detection_levir" / f"{variant}_seed1"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"metrics": {"test/F1": score, "test/IoU": score / 2}}))
    (tmp_path / "change_detection_levir" / "other_seed0").mkdir()  # not a benchmark run
    rows = mtp.collect([tmp_path])
    assert sorted((r["variant"], r["seed"], r["metrics"]["F1"]) for r in rows) == [
        ("mim", 1, 12.0),
        ("scratch", 1, 10.0),
    ]
    line = next(r for r in mtp.summarise(rows).splitlines() if "| F1 |" in r)
    assert "| – | – | +2.00 | 0 |" in line  # no MTP run yet: no MTP difference, zero complete seeds
