"""Data-parallel pretraining on a sharded corpus: two CPU processes (gloo) through the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine_helpers import PRETRAIN, REPO, aid_pretrain_args, checkpoint

from rsfm.data.shards import ShardCorpus

sys.path.insert(0, str(REPO / "tests" / "data"))
from shard_helpers import folder_corpus  # noqa: E402

#: ``rsfm pretrain`` with a callback that writes the global ids of every batch a rank trained on
RECORDING_RUN = """
import json, sys
from pathlib import Path

import lightning as L

from rsfm.engine.config import load_recipe
from rsfm.engine.run import pretrain


class RecordIds(L.Callback):
    def __init__(self, out):
        self.out, self.seen = Path(out), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append([trainer.current_epoch, batch["id"].tolist()])

    def on_train_end(self, trainer, pl_module):
        (self.out / f"ids_rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


recipe, out, *overrides = sys.argv[1:]
pretrain(load_recipe("pretrain", recipe, overrides), callbacks=[RecordIds(out)])
"""


# two real processes (gloo), about 30 s; the ranks' shares of a corpus are also checked in-process by
# tests/data/test_shards.py::test_ranks_share_the_training_tiles
def test_ddp_on_shards_sees_every_training_tile_once_per_epoch(tmp_path: Path, datasets: Path, aid_subset) -> None:
    # 60 tiles, 12 held out: 48 training tiles = 2 ranks x 6 batches x 4, so nothing is dropped
    corpus = folder_corpus(aid_subset(("Beach", "Forest", "Port"), 20), tmp_path / "corpus")
    opened = ShardCorpus.open(corpus)
    train_ids = sorted(opened.ids[opened.split("train", 0.2, 0)].tolist())
    assert len(train_ids) == 48
    script = tmp_path / "record_ids.py"
    script.write_text(RECORDING_RUN)
    args = aid_pretrain_args(
        tmp_path,
        datasets,
        f"data.init_args.shards={corpus}",
        "data.init_args.root=null",
        "data.init_args.test_fraction=0.2",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "viz.num_images=1",
        img_size=32,
        batch_size=4,
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(PRETRAIN / "mae_vit_tiny.yaml"), str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    seen = [json.loads((tmp_path / f"ids_rank{rank}.json").read_text()) for rank in (0, 1)]
    orders = []
    for epoch in (0, 1):
        per_rank = [[i for e, ids in rank for i in ids if e == epoch] for rank in seen]
        assert [len(ids) for ids in per_rank] == [24, 24]  # 6 batches of 4 on each rank
        assert sorted(per_rank[0] + per_rank[1]) == train_ids  # every training tile exactly once
        orders.append(per_rank[0])
    assert orders[0] != orders[1]  # a new order each epoch
    assert checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 12
