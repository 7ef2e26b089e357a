import csv

import pytest
import torch

from rsfm.data.datamodule import ClassificationDataModule
from rsfm.optim import warmup_cosine
from rsfm.eval.finetune import ClassificationModule, finetune
from rsfm.models.encoders.vit import build_vit

CLASSES = ["Desert", "Forest", "Parking"]


@pytest.fixture(scope="module")
def aid_folder(aid_subset):
    """10 real AID images per class (symlinks): 8 train + 2 held out per class."""
    return aid_subset(CLASSES, 10)


def _datamodule(root, **kw):
    return ClassificationDataModule(root, img_size=32, batch_size=8, num_workers=0, pin_memory=False, **kw)


def test_warmup_cosine_schedule():
    # The fine-tuning schedule is the engine's: linear warmup from 0, then half-cosine.
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(3, 4, 20) == pytest.approx(0.75)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 4, 20) == pytest.approx(0.0)


def test_finetune_loss_goes_down(aid_folder, tmp_path, one_thread):
    torch.manual_seed(0)
    encoder = build_vit("tiny", img_size=32, patch_size=16)
    dm = _datamodule(aid_folder, train_transform="eval")  # fixed inputs: a clean signal
    preds, labels = finetune(
        encoder,
        dm,
        max_epochs=8,
        accelerator="cpu",
        out_dir=tmp_path,
        lr=0.1,
        warmup_epochs=0,
        layer_decay=0.75,
        validate=False,
        log_every_n_steps=1,
        enable_progress_bar=False,
    )
    assert preds.shape == labels.shape == (6,)
    assert preds.dtype == labels.dtype == torch.int64
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]

    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 8 * 3  # 24 training images, batch 8, 8 epochs
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.1, (first, last)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_layer_decay_param_groups(aid_folder, cpu_trainer):
    encoder = build_vit("tiny", img_size=32, patch_size=16, drop_path_rate=0.1)
    module = ClassificationModule(encoder, num_classes=3, lr=1e-3, batch_size=512, layer_decay=0.75, warmup_epochs=1)
    assert module.encoder.head.out_features == 3
    trainer = cpu_trainer(max_epochs=2, max_steps=1, enable_checkpointing=False, limit_val_batches=0)
    trainer.fit(module, datamodule=_datamodule(aid_folder))
    groups = trainer.optimizers[0].param_groups
    names = {id(p): n for n, p in module.encoder.named_parameters()}

    def peak_lr(param_name):
        (g,) = [g for g in groups if any(names[id(p)] == param_name for p in g["params"])]
        return g["initial_lr"], g["weight_decay"]

    peak = 1e-3 * 512 / 256
    lrs = [peak_lr("patch_embed.proj.weight")[0]]
    lrs += [peak_lr(f"blocks.{i}.attn.qkv.weight")[0] for i in range(12)]
    lrs += [peak_lr("head.weight")[0]]
    assert all(a < b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(peak)
    assert lrs[0] == pytest.approx(peak * 0.75**13)
    assert lrs[-2] == pytest.approx(peak * 0.75)
    # No weight decay on biases, norms and the class token; the pos-embed is frozen.
    assert peak_lr("blocks.3.norm1.weight")[1] == 0 and peak_lr("cls_token")[1] == 0
    assert peak_lr("blocks.3.mlp.fc1.weight")[1] == 0.05
    assert "pos_embed" not in {names[id(p)] for g in groups for p in g["params"]}
