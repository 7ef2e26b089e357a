"""``data.shards``: pretraining datamodules reading a sharded corpus, on real AID images.

The corpus is written from a folder by :func:`shard_helpers.folder_corpus` (one tile per file,
the file's own bytes), so every figure can be checked against the same datamodule reading
the folder itself.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_helpers import FakeTrainer, resume_matches
from PIL import Image
from shard_helpers import folder_corpus

from rsfm.data.folder_base import open_source
from rsfm.data.paired import PairedDataModule
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.shards import MANIFEST, SHARDS, ShardCorpus, ShardDataset, encode_tile, write_shards
from rsfm.data.skips import collate_skipping
from rsfm.utils.errors import DataError

#: settings shared by the folder and the corpus datamodules of a comparison
SETTINGS = {"img_size": 32, "batch_size": 8, "seed": 5, "pin_memory": False, "test_fraction": 0.2, "split_seed": 3}


@pytest.fixture(scope="module")
def tree(aid_subset) -> Path:
    """60 real AID images: 20 of each of three classes (48 train, 12 held out at 0.2)."""
    return aid_subset(("Beach", "Forest", "Port"), 20, copy=True)


@pytest.fixture(scope="module")
def corpus(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tree`` as a corpus in four LitData chunks."""
    return folder_corpus(tree, tmp_path_factory.mktemp("corpus") / "aid", chunk_size=16)


def _train_ids(corpus: Path, fraction: float = 0.2, split_seed: int = 3) -> list[int]:
    """Sorted global ids of the training split of a corpus."""
    opened = ShardCorpus.open(corpus)
    return sorted(opened.ids[opened.split("train", fraction, split_seed)].tolist())


def _folder_dm(tree: Path, workers: int = 0, **kwargs) -> PretrainDataModule:
    return PretrainDataModule(str(tree), num_workers=workers, **{**SETTINGS, **kwargs})


def _shards_dm(corpus: Path, workers: int = 0, **kwargs) -> PretrainDataModule:
    return PretrainDataModule(shards=str(corpus), num_workers=workers, **{**SETTINGS, **kwargs})


@pytest.mark.parametrize("workers", [0, 2])
def test_first_epoch_is_the_folder_epoch(tree: Path, corpus: Path, workers: int) -> None:
    assert len(list((corpus / SHARDS).glob("chunk-*.bin"))) == 4  # items are read across chunks
    folder, shards = _folder_dm(tree, workers), _shards_dm(corpus, workers)
    expected, got = list(folder.train_dataloader()), list(shards.train_dataloader())
    assert len(got) == len(expected) == 6  # 48 training images / 8
    train = folder.datasets["train"]
    ids = shards.datasets["train"].corpus.ids
    sources = shards.corpus.sources
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a["image"], b["image"])  # same pixels and augmentation, bit for bit
        assert torch.equal(a["index"], b["index"])
        assert b["id"].dtype == torch.int64 and b["skipped"] == [] and "id" not in a
        assert [train.samples[i].relative_to(tree).as_posix() for i in a["index"]] == [
            sources[int((ids == i).nonzero()[0][0])] for i in b["id"]
        ]
    assert len({int(i) for b in got for i in b["id"]}) == 48  # every training tile once


def test_holdout_viz_and_info_match_the_folder(tree: Path, corpus: Path) -> None:
    folder, shards = _folder_dm(tree), _shards_dm(corpus)
    assert shards.root is None and shards.shards == str(corpus) and folder.shards is None
    assert shards.info() == folder.info()
    folder.setup("fit")
    shards.setup("fit")
    held = shards.datasets["holdout"]
    assert isinstance(held, ShardDataset) and held.split == "val"
    assert [shards.corpus.sources[p] for p in held.positions] == [
        p.relative_to(tree).as_posix() for p in folder.datasets["holdout"].samples
    ]
    assert not set(held.ids.tolist()) & set(shards.datasets["train"].ids.tolist())
    viz = shards.viz_batch(4)
    assert viz.shape == (4, 3, 32, 32) and torch.equal(viz, folder.viz_batch(4))
    assert shards.scan_skipped == []
    everything = _shards_dm(corpus, test_fraction=0.0)
    everything.setup("fit")
    assert len(everything.datasets["train"]) == 60 and "holdout" not in everything.datasets
    assert everything.viz_batch(3).shape == (3, 3, 32, 32)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_mid_epoch_resume_is_exact(corpus: Path, workers: int) -> None:
    full = resume_matches(lambda: _shards_dm(corpus, workers, batch_size=6).train_dataloader(), stop_after=3)
    assert len(full) == 8  # 48 / 6
    assert sorted(int(i) for b in full for i in b["id"]) == _train_ids(corpus)


@pytest.mark.parametrize(("batch_size", "per_rank"), [(4, 24), (5, 20)])
def test_ranks_share_the_training_tiles(corpus: Path, batch_size: int, per_rank: int) -> None:
    """Two ranks: 48 training tiles, 24 per rank; a rank's last incomplete batch is dropped."""
    train = _train_ids(corpus)
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            dm = _shards_dm(corpus, batch_size=batch_size)
            dm.trainer = FakeTrainer(world_size=2, global_rank=rank)
            loader = dm.train_dataloader()
            loader.sampler.set_epoch(epoch)
            seen.append([int(i) for b in loader for i in b["id"]])
        assert [len(ids) for ids in seen] == [per_rank, per_rank]  # 24 // batch_size full batches each
        union = seen[0] + seen[1]
        assert len(set(union)) == len(union) and set(union) <= set(train)  # no tile twice
        if per_rank == 24:
            assert sorted(union) == train  # every training tile exactly once


def test_unreadable_tiles_are_skipped_with_their_ids(tree: Path, tmp_path: Path, datasets: Path) -> None:
    root = tmp_path / "images"
    (root / "Beach").mkdir(parents=True)
    good = sorted((tree / "Beach").glob("*.jpg"))[:3]
    for path in good:
        (root / "Beach" / path.name).write_bytes(path.read_bytes())
    (root / "Beach" / "zz_truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    corpus = folder_corpus(root, tmp_path / "corpus")
    ds = ShardDataset(ShardCorpus.open(corpus))
    bad = ds[(3, 0)]
    assert bad["id"] == 3 and bad["skipped"][1] == "truncated" and "Beach/zz_truncated.jpg#3" in bad["skipped"][0]
    batch = collate_skipping([ds[(i, 0)] for i in range(4)])
    assert batch["id"].tolist() == [0, 1, 2] and batch["index"].tolist() == [0, 1, 2]
    assert [r for _, r in batch["skipped"]] == ["truncated"]
    empty = collate_skipping([bad, bad], num_channels=3)
    assert empty["image"].shape == (0, 3, 0, 0) and empty["id"].shape == (0,) and empty["id"].dtype == torch.int64
    assert len(empty["skipped"]) == 2
    # through the datamodule, with a batch that holds the truncated tile
    dm = PretrainDataModule(shards=str(corpus), img_size=16, batch_size=4, num_workers=0, test_fraction=0.0)
    (only,) = list(dm.train_dataloader())
    assert sorted(only["id"].tolist()) == [0, 1, 2] and only["image"].shape == (3, 3, 16, 16)


def test_paired_datamodule_reads_the_rs_corpus(corpus: Path, datasets: Path, tmp_path: Path) -> None:
    natural = tmp_path / "natural"
    for name in ("airplane", "cat"):
        (natural / name).mkdir(parents=True)
        for src in sorted((datasets / "cifar10" / "train" / name).glob("*.jpg"))[:3]:
            (natural / name / src.name).symlink_to(src)
    dm = PairedDataModule(
        shards=str(corpus), natural_root=str(natural), img_size=32, batch_size=8, num_workers=0, test_fraction=0.2
    )
    assert dm.info().num_channels == 3 and dm.classes == ["airplane", "cat"]
    batches = list(dm.train_dataloader())
    assert len(batches) == 6  # 48 RS training tiles (the longer set) / 8
    b = batches[0]
    assert b["image"].shape == b["image_key"].shape == b["natural"].shape == (8, 3, 32, 32)
    assert b["id"].dtype == torch.int64 and b["natural_label"].dtype == torch.int64
    assert sorted(int(i) for b in batches for i in b["id"]) == _train_ids(corpus, split_seed=0)
    assert dm.scan_skipped == []
    with pytest.raises(DataError, match="data.natural_root is required"):
        PairedDataModule(shards=str(corpus))


def test_multiband_corpus_takes_its_band_count(tree: Path, tmp_path: Path) -> None:
    """A 4-band corpus (RGB + the luminance of real AID tiles, stored as .npy): C = 4, stats required."""
    files = sorted(tree.glob("*/*.jpg"))[::6]  # 10 files, 2 groups
    tiles = []
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        grey = np.asarray(Image.open(path).convert("L"))[..., None]
        tiles.append(np.concatenate([rgb, grey], axis=2).transpose(2, 0, 1))
    corpus = tmp_path / "four"
    write_shards(corpus, [(100 + i, *encode_tile(t)) for i, t in enumerate(tiles)])
    sources = [p.relative_to(tree).as_posix() for p in files]
    n = len(files)
    pq.write_table(
        pa.table(
            {
                "id": pa.array([100 + i for i in range(n)], pa.int64()),
                "source": sources,
                "group": [s.split("/")[0] for s in sources],
                "status": ["kept"] * n,
                "rule": pa.array([None] * n, pa.string()),
                "shard_index": pa.array(range(n), pa.int64()),
                "channels": pa.array([4] * n, pa.int64()),
            }
        ),
        corpus / MANIFEST,
    )
    with pytest.raises(DataError, match="data.mean and data.std are required for 4-band input"):
        PretrainDataModule(shards=str(corpus))
    stats = {"mean": [0.4] * 4, "std": [0.2] * 4}
    dm = PretrainDataModule(shards=str(corpus), img_size=16, batch_size=4, num_workers=0, test_fraction=0.0, **stats)
    assert dm.num_channels == 4 and dm.info().num_channels == 4 and dm.info().bands is None
    batches = list(dm.train_dataloader())
    assert [b["image"].shape for b in batches] == [(4, 4, 16, 16)] * 2  # 10 tiles, last 2 dropped
    assert set(int(i) for b in batches for i in b["id"]) <= set(range(100, 110))
    raw = dm.datasets["train"][(0, 0)]
    assert raw["id"] == 100
    with pytest.raises(DataError, match=r"data.shards \(.*four\): GeRSP's augmentation .* got 4 bands, expected 3"):
        PairedDataModule(shards=str(corpus), natural_root=str(tree), **stats)


def test_bad_sources_are_named(tree: Path, corpus: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data.shards: corpus folder not found: {missing}"):
        PretrainDataModule(shards=str(missing))
    broken = tmp_path / "broken"
    (broken / SHARDS).mkdir(parents=True)
    (broken / SHARDS / "index.json").write_text((corpus / SHARDS / "index.json").read_text())
    with pytest.raises(DataError, match=f"data.shards: {broken / MANIFEST} is missing"):
        PretrainDataModule(shards=str(broken))
    no_chunks = tmp_path / "no_chunks"
    no_chunks.mkdir()
    (no_chunks / MANIFEST).write_bytes((corpus / MANIFEST).read_bytes())
    with pytest.raises(DataError, match=f"data.shards: {no_chunks / SHARDS / 'index.json'} is missing"):
        PairedDataModule(shards=str(no_chunks), natural_root=str(tree))
    for cls in (PretrainDataModule, PairedDataModule):
        with pytest.raises(DataError, match=r"data.root \(.*\) and data.shards \(.*\) are both set.*data.root=null"):
            cls(str(tree), shards=str(corpus))
        with pytest.raises(DataError, match=r"data.root is required: .*data.shards"):
            cls()
        with pytest.raises(DataError, match=r"data.root is required"):
            cls("", shards="")
    with pytest.raises(DataError, match=r"data.bands/data.raster_scale: not used with data.shards.*3-band"):
        PretrainDataModule(shards=str(corpus), bands=[2, 1, 0])
    with pytest.raises(DataError, match=r"data.bands/data.raster_scale: not used with data.shards"):
        PretrainDataModule(shards=str(corpus), raster_scale=10000)
    with pytest.raises(ValueError, match="data.test_fraction"):
        PretrainDataModule(shards=str(corpus), test_fraction=1.0)


def test_open_source() -> None:
    assert open_source("some/folder", None) == "some/folder"
    assert open_source("some/folder", "") == "some/folder"
    with pytest.raises(DataError, match="data.root is required"):
        open_source(None, None)


def test_truncated_chunk_is_named(corpus: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(corpus, tmp_path / "copy"))
    chunks = sorted((copy / SHARDS).glob("chunk-*.bin"))
    assert len(chunks) > 1
    data = chunks[1].read_bytes()
    chunks[1].write_bytes(data[: len(data) // 2])  # an interrupted copy
    pattern = f"shard chunk {chunks[1]} is {len(data) // 2} bytes, .*index.json records {len(data)}: .*truncated"
    with pytest.raises(DataError, match=pattern):
        ShardCorpus.open(copy)
    with pytest.raises(DataError, match=pattern):
        PretrainDataModule(shards=str(copy), **SETTINGS)
    chunks[1].unlink()
    with pytest.raises(DataError, match=f"shard chunk {chunks[1]} listed in .* cannot be read"):
        ShardCorpus.open(copy)
