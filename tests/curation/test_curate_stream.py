"""A corpus written by ``rsfm curate`` streams into pretraining as its folder would (issue #11, point 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rsfm.curation.config import CurateInput
from rsfm.curation.pipeline import curate
from rsfm.data.folder import ImageFolder
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.shards import ShardCorpus

SETTINGS = {"img_size": 48, "batch_size": 6, "seed": 11, "pin_memory": False, "test_fraction": 0.25, "split_seed": 2}


@pytest.fixture(scope="module")
def folder(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("aid")
    for cls in ("Beach", "Parking", "River"):
        (root / cls).mkdir()
        for f in sorted((datasets / "aid" / cls).glob("*.jpg"))[:12]:
            shutil.copy(f, root / cls)
    return root


def test_rsfm_curate_output_gives_the_folder_first_epoch(folder: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    result = curate([CurateInput(root=str(folder))], corpus, progress=lambda _: None)
    assert result.kept == 36 and result.excluded == {}
    a = PretrainDataModule(str(folder), num_workers=0, **SETTINGS)
    b = PretrainDataModule(shards=str(corpus), num_workers=0, **SETTINGS)
    expected, got = list(a.train_dataloader()), list(b.train_dataloader())
    assert len(expected) == len(got) == 27 // 6
    opened = b.corpus
    source_of = dict(zip(opened.ids.tolist(), opened.sources, strict=True))
    train = a.datasets["train"]
    for x, y in zip(expected, got, strict=True):
        assert torch.equal(x["image"], y["image"])
        assert [train.samples[i].relative_to(folder).as_posix() for i in x["index"]] == [
            source_of[int(i)] for i in y["id"]
        ]


def test_dropped_files_do_not_move_the_held_out_split(folder: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    beach = sorted((src / "Beach").glob("*.jpg"))
    shutil.copy(beach[0], src / "Beach" / "zz_copy.jpg")  # a duplicate the curation drops
    (src / "River" / "zz_empty.jpg").write_bytes(b"")  # an empty file, not a sample of the folder either
    (src / "Parking" / "zz_corrupt.jpg").write_bytes(beach[1].read_bytes()[:300])  # listed, unreadable
    # a dangling link: it cannot be stat'ed, so neither the folder nor the split universe lists it
    (src / "Beach" / "zz_gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    corpus = tmp_path / "corpus"
    result = curate([CurateInput(root=str(src))], corpus, progress=lambda _: None)
    assert result.excluded == {"exact_duplicate": 1, "unreadable": 3}
    opened = ShardCorpus.open(corpus)
    assert {source for (_, source), _ in opened.universe} == {
        p.relative_to(src).as_posix() for p in ImageFolder(src).samples
    }
    for seed in range(8):
        for split in ("train", "val"):
            files = ImageFolder(src, split=split, val_fraction=0.25, split_seed=seed).samples
            expected = {p.relative_to(src).as_posix() for p in files} - {"Beach/zz_copy.jpg", "Parking/zz_corrupt.jpg"}
            got = {opened.sources[i] for i in opened.split(split, 0.25, seed)}
            assert got == expected, (split, seed)
