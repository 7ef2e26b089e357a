"""``rsfm evaluate``: kNN, linear probe, fine-tuning and scratch on a small real AID folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import rsfm.engine.evaluate as ev
from rsfm.engine.evaluate import evaluate
from rsfm.models.encoders.vit import build_vit
from rsfm.models.export import export_encoder
from rsfm.optim import warmup_cosine
from rsfm.utils.errors import ConfigError, DataError

CLASSES = ["Beach", "Desert", "Forest", "Parking"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


#: one torch thread (tests/conftest.py): the models are small, and a second thread mostly waits
ONE_THREAD = True


@pytest.fixture(scope="module")
def aid_folder(aid_subset) -> Path:
    """A labelled folder of 10 real AID images per class (symlinks): 8 train + 2 held out per class."""
    return aid_subset(CLASSES, 10)


def _evaluate(encoder, folder, protocols, out_dir, **kwargs) -> dict:
    """``evaluate`` on CPU, in the main process, silently."""
    return evaluate(
        None if encoder is None else str(encoder), str(folder), protocols, out_dir=str(out_dir),
        num_workers=0, device="cpu", verbose=False, **kwargs,
    )  # fmt: skip


def vit_meta(img_size: int = 64, **extra) -> dict:
    return {"arch": "vit", "size": "tiny", "img_size": img_size, "patch_size": 16, "in_chans": 3, **extra}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_vit("tiny", img_size=64, patch_size=16)
    meta = vit_meta(mean=MEAN, std=STD, method="random-init")
    return export_encoder(model, tmp_path_factory.mktemp("enc") / "tiny64.safetensors", meta)


def test_evaluate_knn_linear_on_real_folder(aid_folder, encoder_file, tmp_path) -> None:
    out = tmp_path / "out"
    result = _evaluate(encoder_file, aid_folder, ("knn", "linear"), out, batch_size=16, k=20, linear_epochs=20)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scale"] == "percent"
    for name in ("knn", "linear"):
        report = metrics["protocols"][name]
        assert 0.0 <= report["OA"] <= 100.0
        assert report["n"] == 8  # 20% of 10 images held out per class
        assert set(report["per_class"]) == set(CLASSES)
        cm = torch.tensor(report["confusion"])
        assert report["OA"] == pytest.approx(100 * cm.trace().item() / cm.sum().item())
    assert metrics["protocols"]["knn"]["k"] == 20
    assert metrics["protocols"]["linear"]["lr"] in [float(v) for v in metrics["protocols"]["linear"]["lr_search"]]
    assert metrics["config"]["mean"] == MEAN and metrics["config"]["img_size"] == 64
    assert metrics["config"]["pool"] == "cls"
    assert metrics["data"]["n_train"] == 32 and metrics["data"]["n_heldout"] == 8
    assert metrics["data"]["n_train_features"] == 32 and metrics["data"]["skipped"] == 0
    assert metrics["protocols"] == json.loads(json.dumps(result["protocols"]))
    assert set(metrics["timings_s"]) == {"features", "knn", "linear"}
    assert "| knn |" in (out / "metrics.md").read_text()

    # The held-out images never were among the training features.
    split = json.loads((out / "split.json").read_text())
    assert split == result["split"]
    train, heldout = set(split["train"]), set(split["heldout"])
    assert len(train) == 32 and len(heldout) == 8
    assert not train & heldout
    assert train | heldout == {f"{c}/{f.name}" for c in CLASSES for f in (aid_folder / c).iterdir()}


def test_evaluate_lists_the_files_it_left_out(aid_folder, encoder_file, tmp_path) -> None:
    """Unreadable files are counted in metrics.json and listed with their reasons beside it."""
    import shutil

    folder = Path(shutil.copytree(aid_folder, tmp_path / "aid"))  # copies of the linked images
    cut, empty = sorted((folder / "Beach").iterdir())[:2]
    cut.write_bytes(cut.read_bytes()[:300])
    empty.write_bytes(b"")
    out = tmp_path / "out"
    result = _evaluate(encoder_file, folder, ("knn",), out, img_size=32, batch_size=40)
    assert (
        result["data"]["skipped"] == 2
        and result["data"]["n_train_features"] + result["data"]["n_heldout_features"] == 38
    )
    listed = json.loads((out / "skipped_files.json").read_text())
    assert listed["counts"] == {"truncated": 1, "zero_byte": 1}
    assert {f["path"] for f in listed["files"]} == {str(cut), str(empty)}
    assert json.loads((out / "metrics.json").read_text())["data"]["skipped_files"] == listed


def test_heldout_split_is_the_pretraining_holdout(aid_folder, encoder_file, tmp_path) -> None:
    from rsfm.data.pretrain import PretrainDataModule

    result = _evaluate(encoder_file, aid_folder, ("knn",), tmp_path, img_size=32, batch_size=40)
    pretrain = PretrainDataModule(str(aid_folder), test_fraction=0.2, split_seed=0, num_workers=0)
    pretrain.setup("fit")
    holdout = {p.relative_to(aid_folder).as_posix() for p in pretrain.datasets["holdout"].samples}
    assert set(result["split"]["heldout"]) == holdout


def test_evaluate_clamps_k_and_accepts_other_img_size(aid_folder, encoder_file, tmp_path) -> None:
    result = _evaluate(encoder_file, aid_folder, ("knn",), tmp_path, img_size=32, batch_size=40, k=100)
    assert result["protocols"]["knn"]["k"] == 32
    assert result["config"]["img_size"] == 32
    assert "linear" not in result["protocols"] and not (tmp_path / "finetune").exists()


def test_evaluate_rejects_bad_arguments(aid_folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        evaluate(None, str(aid_folder), ("knn", "svm"), out_dir=str(tmp_path), scratch_size="tiny")
    with pytest.raises(ConfigError, match=r"scratch_size \(--scratch-size\)"):
        evaluate(None, str(aid_folder), ("knn",), out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"precision \(--precision\): expected one of \['32-true'"):
        evaluate(None, str(aid_folder), ("knn",), out_dir=str(tmp_path), scratch_size="tiny", precision="bf16")
    with pytest.raises(ConfigError, match=r"16-mixed \(float16 autocast\) needs a CUDA GPU; use bf16-mixed"):
        evaluate(
            None, str(aid_folder), ("knn",), str(tmp_path), scratch_size="tiny", device="cpu", precision="16-mixed"
        )
    assert not list(tmp_path.iterdir())


def test_evaluate_refuses_a_size_off_the_patch_grid_and_one_class(aid_folder, aid_subset, encoder_file, tmp_path):
    with pytest.raises(ConfigError, match=r"img_size \(--img-size\) must be a positive multiple of 16 pixels"):
        _evaluate(encoder_file, aid_folder, ("knn",), tmp_path / "a", img_size=40)
    with pytest.raises(DataError, match="the probes need at least 2 classes"):
        _evaluate(encoder_file, aid_subset(["Beach"], 10), ("knn",), tmp_path / "b")


def test_evaluate_random_init_encoder(aid_folder, tmp_path, monkeypatch) -> None:
    # A random-init baseline is normalised with the statistics the caller passes.
    used, real = [], ev.extract

    def spy(encoder, data, split, device, pool, mean, std, skipped=None, **kwargs):
        used.append((split, list(mean), list(std)))
        return real(encoder, data, split, device, pool, mean, std, skipped, **kwargs)

    monkeypatch.setattr(ev, "extract", spy)
    mean, std = [0.4, 0.41, 0.42], [0.2, 0.21, 0.22]
    result = _evaluate(None, aid_folder, ("knn",), tmp_path, scratch_size="tiny", img_size=32, mean=mean, std=std)
    assert result["encoder"]["meta"]["method"] == "random-init"
    assert result["encoder"]["meta"]["img_size"] == 32 and result["encoder"]["path"] is None
    assert result["protocols"]["knn"]["n"] == 8
    assert result["config"]["mean"] == mean and result["config"]["std"] == std
    assert used == [("train", mean, std), ("test", mean, std)]
    assert "random-init ViT-tiny" in (tmp_path / "metrics.md").read_text()


def test_evaluate_avg_pooled_export(aid_folder, tmp_path) -> None:
    # an encoder exported with global_pool 'avg' (GeRSP's option) is rebuilt with its pooling
    torch.manual_seed(0)
    path = export_encoder(
        build_vit("tiny", img_size=32, patch_size=16, global_pool="avg"),
        tmp_path / "avg.safetensors",
        vit_meta(32, global_pool="avg"),
    )
    result = _evaluate(path, aid_folder, ("knn",), tmp_path / "out", batch_size=40)
    assert result["config"]["pool"] == "avg" and result["protocols"]["knn"]["n"] == 8


def test_evaluate_finetune_lpft_and_scratch(aid_folder, encoder_file, tmp_path) -> None:
    budget = {"img_size": 32, "finetune_epochs": 1, "finetune_batch_size": 16}
    result = _evaluate(encoder_file, aid_folder, ("finetune", "lpft", "scratch"), tmp_path, **budget)
    # LP-FT: the classifier starts from a probe on all 32 training images (no validation split here)
    probe = result["protocols"]["lpft"]["probe_init"]
    assert probe["train_samples"] == 32 and probe["val_samples"] == 0 and probe["val_OA"] is None
    assert set(probe["lr_search"]) == {"0.01", "0.03", "0.1", "0.3", "1"}
    assert "probe_init" not in result["protocols"]["finetune"]
    # LP-FT without stochastic depth, as the classification_aid recipe; MAE's 0.1 for the others
    assert result["protocols"]["lpft"]["drop_path_rate"] == 0.0
    assert result["protocols"]["finetune"]["drop_path_rate"] == pytest.approx(0.1)
    assert result["protocols"]["scratch"]["drop_path_rate"] == pytest.approx(0.1)
    for name in ("finetune", "lpft", "scratch"):
        report = result["protocols"][name]
        assert report["n"] == 8 and sum(map(sum, report["confusion"])) == 8
        # a 1-epoch run warms up for a tenth of it, not MAE's 5 epochs (the whole run)
        assert report["warmup_epochs"] == pytest.approx(0.1)
        assert (tmp_path / name / "csv" / "metrics.csv").is_file()
        assert not list((tmp_path / name).rglob("*.ckpt"))  # no checkpoint selection: the last weights
    assert "split" not in result  # no frozen features, no split file
    table = (tmp_path / "metrics.md").read_text()
    assert "| finetune |" in table and "| lpft |" in table and "| scratch |" in table


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_lpft_fits_its_probe_on_the_frozen_protocols_training_features(
    aid_folder, encoder_file, tmp_path, monkeypatch, precision
) -> None:
    """With ``linear`` in the run, ``lpft`` reads no training image again: its probe gets the features
    ``linear`` used, which are what the fine-tuning model itself extracts (lpft alone, below), in
    the run's precision."""
    from rsfm.tasks.module import DownstreamTask

    seen: dict[str, list] = {"given": [], "extracted": []}
    use, pooled = DownstreamTask.use_probe_features, DownstreamTask._pooled

    def given(self, head, features, labels, skipped=0):
        seen["given"].append((features, labels, skipped))
        return use(self, head, features, labels, skipped)

    def extracted(self, head, loader, split):
        out = pooled(self, head, loader, split)
        seen["extracted"].append((split, *out))
        return out

    monkeypatch.setattr(DownstreamTask, "use_probe_features", given)
    monkeypatch.setattr(DownstreamTask, "_pooled", extracted)
    budget = {"img_size": 32, "finetune_epochs": 1, "finetune_batch_size": 16, "batch_size": 16, "precision": precision}
    both = _evaluate(encoder_file, aid_folder, ("linear", "lpft"), tmp_path / "both", **budget)
    assert both["config"]["precision"] == both["protocols"]["lpft"]["precision"] == precision
    assert seen["extracted"] == [] and len(seen["given"]) == 1
    alone = _evaluate(encoder_file, aid_folder, ("lpft",), tmp_path / "alone", **budget)
    assert len(seen["given"]) == 1 and [s[0] for s in seen["extracted"]] == ["training"]
    (x, y, skipped), (_, x_own, y_own, skipped_own) = seen["given"][0], seen["extracted"][0]
    assert torch.equal(y, y_own) and skipped == skipped_own == 0 and x.shape == (32, 192)
    # the same batches: equal here to the bit; with the extraction left in float32 for the
    # bf16-mixed run, this failed
    assert torch.allclose(x, x_own, atol=1e-6, rtol=1e-6)
    probe, own = both["protocols"]["lpft"]["probe_init"], alone["protocols"]["lpft"]["probe_init"]
    assert probe["training_features"] == "given" and own["training_features"] == "extracted"
    assert probe["lr"] == own["lr"] and probe["lr_search"] == own["lr_search"] and probe["train_samples"] == 32
    # a pooling other than the export's is not what fine-tuning's classifier sees: extracted again
    _evaluate(encoder_file, aid_folder, ("knn", "lpft"), tmp_path / "avg", pool="avg", **budget)
    assert len(seen["given"]) == 1 and [s[0] for s in seen["extracted"]] == ["training", "training"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the hint is for machines without a GPU")
def test_a_float32_fine_tuning_on_a_cpu_with_bf16_units_prints_the_hint(
    aid_folder, encoder_file, tmp_path, monkeypatch, capsys
) -> None:
    import rsfm.engine.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda *a: "avx512_bf16")  # a CPU whose flags list it
    budget = {"img_size": 32, "finetune_epochs": 1, "finetune_batch_size": 16, "verbose": True}
    evaluate(
        str(encoder_file), str(aid_folder), ("finetune",), str(tmp_path / "a"), num_workers=0, device="cpu", **budget
    )
    assert "hint: this CPU has bf16 matrix units (avx512_bf16)" in capsys.readouterr().out
    evaluate(str(encoder_file), str(aid_folder), ("knn",), str(tmp_path / "b"), num_workers=0, device="cpu", **budget)
    assert "hint:" not in capsys.readouterr().out  # no fine-tuning, nothing to speed up
    kwargs = {"num_workers": 0, "device": "cpu", "precision": "bf16-mixed", **budget}
    evaluate(str(encoder_file), str(aid_folder), ("finetune",), str(tmp_path / "c"), **kwargs)
    assert "hint:" not in capsys.readouterr().out


def test_evaluate_resnet_export(aid_folder, tmp_path) -> None:
    import timm

    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = export_encoder(resnet, tmp_path / "r18.safetensors", {"arch": "resnet18", "img_size": 64, "in_chans": 3})
    budget = {"img_size": 32, "finetune_epochs": 1, "finetune_batch_size": 16, "batch_size": 40}
    result = _evaluate(path, aid_folder, ("knn", "scratch"), tmp_path / "out", **budget)
    assert result["encoder"]["meta"]["arch"] == "resnet18"
    assert result["config"]["mean"] == MEAN  # no statistics in the export: ImageNet's
    assert result["protocols"]["knn"]["n"] == 8 and result["protocols"]["scratch"]["n"] == 8
    assert ev.scratch_spec(str(path), None, 32, 16) == {"class_path": "ResNet", "init_args": {"name": "resnet18"}}


def test_warmup_cosine_schedule() -> None:
    # The fine-tuning schedule: linear warmup from 0, then half-cosine.
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.0)
    assert warmup_cosine(3, 4, 20) == pytest.approx(0.75)
    assert warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine(20, 4, 20, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 4, 20) == pytest.approx(0.0)


def test_run_finetune_trains_then_tests_the_last_weights(aid_folder, tmp_path) -> None:
    spec = ev.encoder_spec(None, "tiny", 32, 16)
    data = {"root": str(aid_folder), "img_size": 32, "batch_size": 8, "num_workers": 0, "seed": 0}
    report = ev.run_finetune(spec, data, tmp_path, 2, None, 1e-3, 0, "cpu", verbose=False)
    assert report["n"] == 8 and report["epochs"] == 2 and report["blr"] == 1e-3
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [(int(r["step"]), float(r["train/classification/ce"])) for r in rows if r["train/classification/ce"]]
    assert [step for step, _ in epochs] == [3, 7]  # 32 training images, batch 8: 4 steps per epoch
    (tested,) = [r for r in rows if r["test/OA"]]
    assert float(tested["test/OA"]) == pytest.approx(report["OA"], abs=1e-4)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scale"] == "percent" and metrics["heads"]["classification"]["n"] == 8


def test_the_cli_passes_the_fine_tuning_rate_and_protocols(aid_folder, monkeypatch) -> None:
    from rsfm.cli import build_parser, main

    seen: dict = {}
    monkeypatch.setattr(ev, "evaluate", lambda **kwargs: seen.update(kwargs))
    argv = ["evaluate", "--data", str(aid_folder), "--protocols", "linear,lpft", "--finetune-blr", "2e-4"]
    assert main([*argv, "--precision", "bf16-mixed"]) == 0
    assert seen["protocols"] == ["linear", "lpft"] and seen["finetune_blr"] == pytest.approx(2e-4)
    assert seen["precision"] == "bf16-mixed"
    main(argv[:5])
    assert seen["finetune_blr"] == pytest.approx(5e-4)  # the default of evaluate()
    assert seen["precision"] is None  # evaluate() chooses: bf16 autocast on a GPU that has it, else float32
    # the CLI spells the choices out (rsfm --help imports no torch); they are evaluate()'s
    (action,) = [a for a in build_parser()._subparsers._group_actions[0].choices["evaluate"]._actions
                 if a.dest == "precision"]  # fmt: skip
    assert tuple(action.choices) == ev.PRECISIONS
