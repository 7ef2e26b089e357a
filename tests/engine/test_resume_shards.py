"""``rsfm pretrain`` on a sharded corpus: killed mid-epoch and resumed, bit-identical weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from engine_helpers import PRETRAIN, REPO, Crash, CrashAt, aid_pretrain_args, assert_same_weights, checkpoint

from rsfm.engine.config import load_recipe
from rsfm.engine.run import pretrain

sys.path.insert(0, str(REPO / "tests" / "data"))
from shard_helpers import folder_corpus  # noqa: E402


@pytest.mark.slow  # ~20 s: three short runs (the loader-level resume is tests/data/test_shards.py)
def test_resume_mid_epoch_on_shards_gives_identical_weights(
    tmp_path: Path, datasets: Path, aid_subset, one_thread
) -> None:
    corpus = folder_corpus(aid_subset(("Beach", "Forest", "Port"), 10), tmp_path / "corpus")
    common = [
        f"data.init_args.shards={corpus}",
        "data.init_args.root=null",
        "checkpoint.every_n_train_steps=2",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "viz.num_images=2",
    ]

    def recipe(out: Path) -> dict:
        args = aid_pretrain_args(out, datasets, *common, img_size=32, batch_size=4)
        return load_recipe("pretrain", PRETRAIN / "mae_vit_tiny.yaml", args)

    assert recipe(tmp_path / "a")["data"]["init_args"]["root"] is None
    pretrain(recipe(tmp_path / "a"))  # 24 training tiles / 4: 6 steps per epoch
    with pytest.raises(Crash):
        pretrain(recipe(tmp_path / "b"), callbacks=[CrashAt(3)])
    stopped = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 2 and stopped["epoch"] == 0  # the middle of epoch 0
    pretrain(recipe(tmp_path / "b"))  # resume: auto
    a = checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 12
    assert_same_weights(a["state_dict"], b["state_dict"])
    assert any(
        not torch.equal(v, stopped["state_dict"][k]) for k, v in a["state_dict"].items() if v.is_floating_point()
    )
