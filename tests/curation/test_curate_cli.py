"""``rsfm curate`` from a recipe: the same config system as every command (issue #11, point 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from rsfm.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_recipe_resolves(capsys) -> None:
    assert main(["curate", "--config", str(REPO / "configs" / "curate" / "mixed_corpus.yaml"), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert [i["name"] for i in printed["inputs"]][:2] == [None, "loveda"]
    assert printed["tiling"]["tile_size"] == 512 and printed["dedup"]["phash_threshold"] == 8
    assert printed["executor"] == {"workers": 1, "scheduler": None}
    for spec in printed["inputs"]:
        assert (REPO / spec["root"]).is_dir(), spec["root"]


def test_a_misspelt_key_names_the_section_and_its_options(capsys) -> None:
    recipe = str(REPO / "configs" / "curate" / "mixed_corpus.yaml")
    assert main(["curate", "--config", recipe, "rules.max_nodata=0.3", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "rules.max_nodata" in err and "max_nodata_fraction" in err
    assert main(["curate", "--config", recipe, "tiling.overlap=600"]) == 2
    assert "tiling.overlap must be in [0, tile_size=512)" in capsys.readouterr().err


def test_curate_from_a_recipe_with_a_custom_rule(datasets, tmp_path, capsys) -> None:
    src = tmp_path / "src"
    for cls in ("Desert", "Forest"):
        (src / cls).mkdir(parents=True)
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:3]:
            shutil.copy(f, src / cls)
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "inputs": [{"root": str(src), "name": "aid"}],
                "output": str(tmp_path / "corpus"),
                "tiling": {"tile_size": 128, "max_size": 256},
                "rules": {
                    "disable": ["low_information"],
                    "custom": [{"class_path": "test_curate.NoBeaches", "init_args": {"max_blue_ratio": 0.95}}],
                },
            }
        )
    )
    assert main(["curate", "--config", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "curated 6 file(s)" in out and "sandy" in out
    rows = pq.read_table(tmp_path / "corpus" / "manifest.parquet").to_pylist()
    assert {r["rule"] for r in rows if r["source"].startswith("Forest/")} == {None}
    assert any(r["rule"] == "sandy" for r in rows)


def test_bad_settings_fail_before_any_file_is_read_and_leave_nothing(datasets, tmp_path, capsys) -> None:
    """Each of these used to fail after every file was processed, or not at all (``dedup: false``)."""
    aid = datasets / "aid" / "Desert"
    recipe = tmp_path / "curate.yaml"
    recipe.write_text(yaml.safe_dump({"inputs": [{"root": str(aid)}], "output": str(tmp_path / "corpus")}))
    cases = {
        "dedup.phash_threshold=-3": "dedup.phash_threshold must be in [0, 63] bits, got -3",
        "dedup.embedding_threshold=2": "dedup.embedding_threshold must be in (0, 1], got 2.0",
        f"dedup.embedding_encoder={tmp_path / 'none.safetensors'}": "dedup.embedding_encoder: encoder export not found",
        f"inputs=[{{root: {aid}, percentiles: [5]}}]": "inputs[0].percentiles must be [low, high]",
        f"inputs=[{{root: {aid}, raster_scale: abc}}]": "inputs[0].raster_scale must be 'auto' or a positive divisor",
        f"inputs=[{{root: {tmp_path / 'missing'}}}]": "inputs[0].root: folder not found",
        f"inputs=[{{root: {aid}, bands: [0, 1, 2, 3]}}, {{root: {datasets / 'loveda'}}}]": (
            "every input must give the same number of bands (a corpus is read as one tensor shape): "
            "got inputs[0] 4, inputs[1] 3"
        ),
    }
    for override, expected in cases.items():
        assert main(["curate", "--config", str(recipe), override]) == 2, override
        assert expected in capsys.readouterr().err, override
        assert not (tmp_path / "corpus").exists(), override
    recipe.write_text(recipe.read_text() + "dedup: false\n")
    assert main(["curate", "--config", str(recipe)]) == 2
    assert f"{recipe}: dedup: expected a mapping of dedup options" in capsys.readouterr().err
