"""Exact mid-epoch resume of every downstream task: crash, rerun, bit-identical weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import Crash, CrashAt, assert_same_weights, checkpoint, finetune_recipe

from rsfm.engine.run import train_task

TASKS = [
    "classification_aid",
    "segmentation_dubai",
    "detection_nepu",
    "change_detection_levir",
    "rotated_detection_dota",
]


SLOW_TASKS = ("detection_nepu", "rotated_detection_dota")


# the slowest two (detectors) with -m slow only (CI's 20-minute budget)
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TASKS else n for n in TASKS],
)
def test_resume_mid_epoch_is_bit_identical(name: str, tmp_path: Path, datasets: Path, aid_subset, one_thread) -> None:
    extra = [
        "checkpoint.every_n_train_steps=2",
        "trainer.limit_train_batches=3",
        "trainer.max_epochs=2",
    ]
    if name == "classification_aid":
        extra.append(f"data.init_args.root={aid_subset(['Beach', 'Forest', 'Port'], 8)}")
    train_task(finetune_recipe(name, tmp_path / "a", *extra))
    # a kill after step 3: the last checkpoint is from step 2, in the middle of epoch 0
    with pytest.raises(Crash):
        train_task(finetune_recipe(name, tmp_path / "b", *extra), callbacks=[CrashAt(3)])
    stopped = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 2 and stopped["epoch"] == 0
    train_task(finetune_recipe(name, tmp_path / "b", *extra))  # resume: auto
    a = checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    assert_same_weights(a["state_dict"], b["state_dict"])
    # the run did train: the weights moved away from the stopped state
    moved = [
        k for k, v in a["state_dict"].items() if v.is_floating_point() and not torch.equal(v, stopped["state_dict"][k])
    ]
    assert moved


@pytest.mark.parametrize(
    ("per_class", "settings", "final_step"),
    [
        # every 2 steps with 2 steps an epoch (16 images, batch 8): the checkpoint a kill leaves
        # is the end of epoch 0 (final step was 4: epoch 1 ran no batch after the resume)
        pytest.param(8, ["data.init_args.batch_size=8", "trainer.max_epochs=3", "checkpoint.every_n_train_steps=2"],
                     6, id="last_batch"),
        # trainer.limit_train_batches ends an epoch before its order does (the GeRSP recipe sets
        # it): epoch 1 must draw its own order, not epoch 0's again
        pytest.param(12, ["data.init_args.batch_size=4", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                          "checkpoint.every_n_epochs=1"], 4, id="limited_epoch"),
    ],
)  # fmt: skip
def test_pretraining_resumed_at_an_epoch_end_is_bit_identical(
    per_class: int, settings: list[str], final_step: int, tmp_path: Path, aid_subset, one_thread
) -> None:
    from engine_helpers import PRETRAIN

    from rsfm.engine.config import load_recipe
    from rsfm.engine.run import pretrain

    root = aid_subset(["Beach", "Forest"], per_class)

    def recipe(out: Path) -> dict:
        return load_recipe("pretrain", PRETRAIN / "mae_vit_tiny.yaml", [
            f"data.init_args.root={root}", f"output_dir={out}", "run_name=run", "data.init_args.img_size=32",
            "data.init_args.num_workers=0", "data.init_args.test_fraction=0", "model.init_args.patch_size=8",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "viz.num_images=0",
            "evaluate.enabled=false", *settings,
        ])  # fmt: skip

    pretrain(recipe(tmp_path / "a"))
    with pytest.raises(Crash):
        pretrain(recipe(tmp_path / "b"), callbacks=[CrashAt(3)])
    stopped = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 2 and stopped["epoch"] == 0  # the end of epoch 0
    pretrain(recipe(tmp_path / "b"))
    a = checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == final_step
    assert_same_weights(a["state_dict"], b["state_dict"])


def test_a_checkpoint_of_an_earlier_version_resumes_only_with_its_behaviour(tmp_path: Path, aid_subset, one_thread):
    """rsfm 0.3 decays the class and mask tokens (as the releases); a 0.2 run did not: its checkpoint
    (no ``token_weight_decay`` in its recipe) must not resume silently under the new default."""
    from engine_helpers import PRETRAIN

    from rsfm.engine.config import load_recipe
    from rsfm.engine.run import pretrain
    from rsfm.utils.errors import ConfigError

    root = aid_subset(["Beach", "Forest"], 8)

    def recipe(*extra: str) -> dict:
        return load_recipe("pretrain", PRETRAIN / "mae_vit_tiny.yaml", [
            f"data.init_args.root={root}", f"output_dir={tmp_path}", "run_name=run", "data.init_args.img_size=32",
            "data.init_args.batch_size=8", "data.init_args.num_workers=0", "data.init_args.test_fraction=0",
            "model.init_args.patch_size=8", "trainer.accelerator=cpu", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=1", "viz.num_images=0",
            "evaluate.enabled=false", *extra,
        ])  # fmt: skip

    with pytest.raises(Crash):
        pretrain(recipe("model.init_args.token_weight_decay=false"), callbacks=[CrashAt(2)])
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = checkpoint(path)
    del state["hyper_parameters"]["model"]["init_args"]["token_weight_decay"]  # as rsfm 0.2 wrote it
    torch.save(state, path)
    with pytest.raises(ConfigError, match="resume it with model.token_weight_decay=False"):
        pretrain(recipe())
    out = pretrain(recipe("model.init_args.token_weight_decay=false"))
    assert checkpoint(Path(out["checkpoint"]))["global_step"] == 4


def test_resume_at_an_epoch_end_keeps_every_epoch_and_the_best_checkpoint(tmp_path: Path, aid_subset, one_thread):
    """A checkpoint due on an epoch's last batch, with a partial batch dropped (classification).

    Before: the resumed sampler served epoch 1's unused tail as epoch 2 (no batch: an epoch
    lost), the checkpoint was written before the epoch's validation (whose score the resumed
    run never saw), and the periodic checkpoint held the best-checkpoint state of the epoch
    before (a resumed run forgot its best): best.ckpt and the tested scores then differed.
    """
    import csv

    root = aid_subset(["Beach", "Forest", "Port"], 8)
    # 15 training images at batch 4: 3 batches per epoch, 3 images dropped
    extra = [f"data.init_args.root={root}", "data.init_args.batch_size=4", "trainer.max_epochs=3"]
    extra += ["checkpoint.every_n_train_steps=3", "trainer.limit_val_batches=null"]
    trainer, *_ = train_task(finetune_recipe("classification_aid", tmp_path / "a", *extra))
    # both checkpoints save at an epoch's end: the best one first, so that the periodic one
    # stores its state after the epoch's score (equal scores here would not show the order)
    assert [c.monitor for c in trainer.checkpoint_callbacks] == ["val/OA", None]
    a = checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == 9, "the data no longer give 3 batches per epoch with a partial one dropped"
    with pytest.raises(Crash):  # killed in epoch 1: the last checkpoint is the end of epoch 0
        train_task(finetune_recipe("classification_aid", tmp_path / "b", *extra), callbacks=[CrashAt(4)])
    stopped = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 3

    def validated(run: str) -> list[tuple[str, str]]:
        with open(tmp_path / run / "run" / "logs" / "metrics.csv") as f:
            return [(r["epoch"], r["val/OA"]) for r in csv.DictReader(f) if r.get("val/OA")]

    # written after epoch 0's validation (a resumed run does not validate that epoch again),
    # holding the best-checkpoint state that saw its score
    best_state = [v for k, v in stopped["callbacks"].items() if "'monitor': 'val/OA'" in k]
    assert len(best_state) == 1 and best_state[0]["best_model_score"] is not None
    train_task(finetune_recipe("classification_aid", tmp_path / "b", *extra))
    b = checkpoint(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert b["global_step"] == 9
    assert_same_weights(a["state_dict"], b["state_dict"])
    best = [checkpoint(tmp_path / r / "run" / "checkpoints" / "best.ckpt") for r in ("a", "b")]
    assert best[0]["global_step"] == best[1]["global_step"]
    assert_same_weights(best[0]["state_dict"], best[1]["state_dict"])

    assert validated("a") == validated("b") and len(validated("a")) == 3


def test_resuming_with_a_changed_model_is_one_line(tmp_path: Path, aid_subset, one_thread) -> None:
    from rsfm.utils.errors import CheckpointError

    extra = [f"data.init_args.root={aid_subset(['Beach', 'Forest'], 6)}", "trainer.max_epochs=1"]
    train_task(finetune_recipe("classification_aid", tmp_path, *extra))
    config = (tmp_path / "run" / "config.yaml").read_text()
    longer = [*extra, "trainer.max_epochs=2"]
    changed = finetune_recipe("classification_aid", tmp_path, *longer, "model.encoder.init_args.size=small")
    with pytest.raises(CheckpointError, match=r"last.ckpt does not fit the model the recipe builds \(.*another shape"):
        train_task(changed)
    assert (tmp_path / "run" / "config.yaml").read_text() == config  # the run's record is untouched
    # same weights, one tensor less trained (a run of an rsfm that kept the position embedding fixed)
    fixed = finetune_recipe("classification_aid", tmp_path, *longer, "model.encoder.init_args.pos_embed=fixed")
    with pytest.raises(
        CheckpointError, match=r"it trained \d+ parameter tensors, the recipe's model trains \d+; .*pos_embed=fixed"
    ):
        train_task(fixed)
    assert (tmp_path / "run" / "config.yaml").read_text() == config
