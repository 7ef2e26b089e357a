import json

import pytest
import torch

from rsfm.models.export import export_encoder, load_encoder
from rsfm.eval.run import _set_img_size, evaluate
from rsfm.models.encoders.vit import build_vit

CLASSES = ["Beach", "Desert", "Forest", "Parking"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(scope="module")
def aid_folder(aid_subset):
    """A labelled folder of 10 real AID images per class (symlinks)."""
    return aid_subset(CLASSES, 10)


def _evaluate(encoder, folder, protocols, out_dir, **kwargs):
    """``evaluate`` on CPU, in the main process, silently."""
    return evaluate(encoder, folder, protocols, out_dir=out_dir, num_workers=0, device="cpu", verbose=False, **kwargs)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_vit("tiny", img_size=64, patch_size=16)
    meta = {
        "arch": "vit",
        "size": "tiny",
        "img_size": 64,
        "patch_size": 16,
        "in_chans": 3,
        "mean": MEAN,
        "std": STD,
        "method": "random-init",
    }
    return export_encoder(model, tmp_path_factory.mktemp("enc") / "tiny64.safetensors", meta)


def test_evaluate_knn_linear_on_real_folder(aid_folder, encoder_file, tmp_path, one_thread):
    out = tmp_path / "out"
    result = _evaluate(encoder_file, aid_folder, ("knn", "linear"), out, batch_size=16, k=20, linear_epochs=20)

    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("knn", "linear"):
        report = metrics["protocols"][name]
        assert 0.0 <= report["OA"] <= 100.0
        assert report["n"] == 8  # 20% of 10 images held out per class
        assert set(report["per_class"]) == set(CLASSES)
    assert metrics["protocols"]["knn"]["k"] == 20
    assert metrics["protocols"]["linear"]["lr"] in [float(v) for v in metrics["protocols"]["linear"]["lr_search"]]
    assert metrics["config"]["mean"] == MEAN and metrics["config"]["img_size"] == 64
    assert metrics["data"]["n_train"] == 32 and metrics["data"]["n_heldout"] == 8
    assert metrics["protocols"] == json.loads(json.dumps(result["protocols"]))
    assert "| knn |" in (out / "metrics.md").read_text()

    # The held-out images never were among the training features.
    split = json.loads((out / "split.json").read_text())
    assert split == result["split"]
    train, heldout = set(split["train"]), set(split["heldout"])
    assert len(train) == 32 and len(heldout) == 8
    assert not train & heldout
    assert train | heldout == {f"{c}/{f.name}" for c in CLASSES for f in (aid_folder / c).iterdir()}


def test_evaluate_clamps_k_and_accepts_other_img_size(aid_folder, encoder_file, tmp_path):
    result = _evaluate(encoder_file, aid_folder, ("knn",), tmp_path, img_size=32, batch_size=40, k=100)
    assert result["protocols"]["knn"]["k"] == 32
    assert result["config"]["img_size"] == 32


def test_set_img_size_matches_a_fresh_build(encoder_file):
    # The sin-cos position embedding is fixed, so re-gridding equals building at that size.
    model = _set_img_size(load_encoder(encoder_file), 32).eval()
    fresh = build_vit("tiny", img_size=32, patch_size=16)
    state = {k: v for k, v in load_encoder(encoder_file).state_dict().items() if k != "pos_embed"}
    fresh.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), fresh.eval().forward_features(x))
    assert not model.pos_embed.requires_grad


def test_evaluate_rejects_bad_arguments(aid_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluate(None, aid_folder, ("knn", "svm"), out_dir=tmp_path, scratch_size="tiny")
    with pytest.raises(ValueError, match="scratch_size"):
        evaluate(None, aid_folder, ("knn",), out_dir=tmp_path)


def test_evaluate_random_init_encoder(aid_folder, tmp_path, monkeypatch):
    # A random-init baseline is normalised with the statistics the caller passes.
    import rsfm.eval.run as run

    used, real = [], run.eval_transform

    def spy(img_size, mean, std):
        used.append((mean, std))
        return real(img_size, mean, std)

    monkeypatch.setattr(run, "eval_transform", spy)
    mean, std = [0.4, 0.41, 0.42], [0.2, 0.21, 0.22]
    result = _evaluate(None, aid_folder, ("knn",), tmp_path, scratch_size="tiny", img_size=32, mean=mean, std=std)
    assert result["encoder"]["meta"]["method"] == "random-init"
    assert result["protocols"]["knn"]["n"] == 8
    assert result["config"]["mean"] == mean and result["config"]["std"] == std
    assert used == [(tuple(mean), tuple(std))]


def test_evaluate_finetune_and_scratch(aid_folder, encoder_file, tmp_path, one_thread):
    budget = {"img_size": 32, "finetune_epochs": 1, "finetune_batch_size": 16}
    result = _evaluate(encoder_file, aid_folder, ("finetune", "scratch"), tmp_path, **budget)
    for name in ("finetune", "scratch"):
        assert result["protocols"][name]["n"] == 8
        # a 1-epoch run warms up for a tenth of it, not MAE's 5 epochs (the whole run)
        assert result["protocols"][name]["warmup_epochs"] == pytest.approx(0.1)
        assert (tmp_path / name / "csv" / "metrics.csv").is_file()
    table = (tmp_path / "metrics.md").read_text()
    assert "| finetune |" in table and "| scratch |" in table


def test_extract_features_pools_and_skips():
    from rsfm.tasks.probes.features import extract_features

    torch.manual_seed(0)
    model = build_vit("tiny", img_size=32, patch_size=16)
    x = torch.randn(3, 3, 32, 32)
    loader = [
        {
            "image": torch.empty(0, 3, 0, 0),
            "label": torch.empty(0, dtype=torch.int64),
            "index": torch.empty(0, dtype=torch.int64),
            "skipped": [("a.jpg", "truncated")],
        },
        {"image": x, "label": torch.tensor([2, 0, 1]), "index": torch.tensor([4, 5, 7]), "skipped": []},
    ]
    feats, labels, index = extract_features(model, loader, pool="cls", return_index=True)
    assert feats.shape == (3, 192) and feats.dtype == torch.float32
    assert labels.tolist() == [2, 0, 1] and index.tolist() == [4, 5, 7]
    with torch.no_grad():
        tokens = model.forward_features(x)
        torch.testing.assert_close(feats, model.forward_head(tokens, pre_logits=True))
        avg, _ = extract_features(model, loader, pool="avg")
        torch.testing.assert_close(avg, tokens[:, 1:].mean(1))
    with pytest.raises(ValueError):
        extract_features(model, loader[:1])
