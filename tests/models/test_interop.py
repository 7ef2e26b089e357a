"""rsfm exports in timm, torchgeo and TerraTorch: each built from a real export and trained one step on real images."""

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch

import rsfm  # noqa: F401  (registers the rsfm_* names with timm and TerraTorch when they are imported)
from rsfm.models.encoders.vit import build_vit, sincos_pos_embed_2d
from rsfm.models.export import export_encoder, load_encoder, read_encoder_meta
from rsfm.models.interop import timm_model_name, timm_model_names
from rsfm.utils.errors import CheckpointError, ConfigError

MEAN, STD = [0.38, 0.39, 0.35], [0.21, 0.19, 0.18]


def _meta(size: str, patch: int, img: int = 64) -> dict:
    return {
        "arch": "vit", "size": size, "img_size": img, "patch_size": patch, "in_chans": 3,
        "mean": MEAN, "std": STD, "method": "mae",
    }  # fmt: skip


@pytest.fixture(scope="module")
def vit_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A ViT-tiny/8 export at 64 px (random weights, but every one distinct from a fresh init)."""
    torch.manual_seed(0)
    enc = build_vit("tiny", img_size=64, patch_size=8)
    with torch.no_grad():  # move the weights away from any init: a loader that ignored the file would show
        for p in enc.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return export_encoder(enc, tmp_path_factory.mktemp("vit") / "encoder.safetensors", _meta("tiny", 8)), enc


@pytest.fixture(scope="module")
def vit16_export(tmp_path_factory) -> Path:
    """A ViT-tiny/16 export at 64 px (a 4 x 4 token grid: small dense models)."""
    torch.manual_seed(1)
    enc = build_vit("tiny", img_size=64, patch_size=16)
    return export_encoder(enc, tmp_path_factory.mktemp("vit16") / "encoder.safetensors", _meta("tiny", 16))


@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(2)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0)
    meta = {"arch": "resnet18", "img_size": 64, "in_chans": 3, "mean": MEAN, "std": STD, "method": "gersp"}
    return export_encoder(cnn, tmp_path_factory.mktemp("r18") / "r18.safetensors", meta), cnn


def _normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _one_step(model: torch.nn.Module, loss_fn, lr: float = 1e-3) -> tuple[float, float]:
    """One AdamW step; returns the loss before and after it (same batch, same mode)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = loss_fn()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = loss_fn()
    return float(loss.detach()), float(after)


# --------------------------------------------------------------------------- timm


def test_every_rsfm_name_is_registered_with_timm() -> None:
    names = set(timm.list_models("rsfm_*"))
    assert names == set(timm_model_names())
    assert {"rsfm_vit_tiny_patch8", "rsfm_vit_base_patch16", "rsfm_vit_huge_patch14", "rsfm_resnet50"} <= names


def test_timm_model_is_the_export_and_fine_tunes_on_aid(vit_export, aid_batch) -> None:
    path, enc = vit_export
    batch, _ = aid_batch
    x, y = _normalise(batch["image"]), batch["label"]
    model = timm.create_model(
        "rsfm_vit_tiny_patch8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=4
    )
    cfg = model.pretrained_cfg
    assert list(cfg["mean"]) == MEAN and list(cfg["std"]) == STD and tuple(cfg["input_size"]) == (3, 64, 64)
    assert cfg["file"] == str(path) and model.num_classes == 4 and model.global_pool == "token"
    assert not model.pos_embed.requires_grad  # fixed sin-cos table, as build_vit
    # the same network as rsfm's loader gives, feature for feature, on real images
    ref = load_encoder(path).eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), ref.forward_features(x))
        assert torch.equal(model.forward_head(model.forward_features(x), pre_logits=True), ref(x))
    # one classification step on the AID images
    model.train()
    before, after = _one_step(model, lambda: torch.nn.functional.cross_entropy(model(x), y))
    assert after < before


def test_timm_resamples_position_embedding_and_adapts_bands(vit_export) -> None:
    path, enc = vit_export
    model = timm.create_model(
        "rsfm_vit_tiny_patch8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), img_size=96, in_chans=4
    )
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 192)
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(enc.pos_embed, new_size=(12, 12), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)
    w = enc.patch_embed.proj.weight
    # timm's rule: the RGB filters repeated over the bands, scaled by 3 / bands
    torch.testing.assert_close(model.patch_embed.proj.weight, torch.cat([w, w[:, :1]], 1) * 0.75)
    assert model(torch.rand(1, 4, 96, 96)).shape == (1, 192)


def test_timm_random_init_is_build_vits_architecture() -> None:
    model = timm.create_model("rsfm_vit_small_patch16", img_size=64)
    ref = build_vit("small", img_size=64, patch_size=16)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    assert torch.equal(model.pos_embed[0], sincos_pos_embed_2d(384, 4, cls_token=True))
    assert model.blocks[0].attn.qkv.bias is not None and model.norm.eps == 1e-6


def test_timm_refuses_a_file_of_another_architecture(vit_export, resnet_export) -> None:
    path, _ = vit_export
    with pytest.raises(CheckpointError, match=rf"{path.name} holds a rsfm_vit_tiny_patch8 encoder, not rsfm_vit_small"):
        timm.create_model("rsfm_vit_small_patch8", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(CheckpointError, match="holds a rsfm_vit_tiny_patch8 encoder, not rsfm_resnet50"):
        timm.create_model("rsfm_resnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(CheckpointError, match="no built-in weights: pass the rsfm export"):
        timm.create_model("rsfm_vit_tiny_patch8", pretrained=True)
    with pytest.raises(CheckpointError, match="encoder file not found: .*missing.safetensors"):
        timm.create_model(
            "rsfm_vit_tiny_patch8", pretrained=True, pretrained_cfg_overlay=dict(file="missing.safetensors")
        )
    rvsa = {**read_encoder_meta(path), "arch": "vit_rvsa", "window_size": 7, "interval": 3}
    with pytest.raises(CheckpointError, match="no timm name for a 'vit_rvsa' encoder"):
        timm_model_name(rvsa)
    assert timm_model_name(resnet_export[0]) == "rsfm_resnet18" and timm_model_name(path) == "rsfm_vit_tiny_patch8"


def test_timm_resnet_is_the_export(resnet_export, aid_batch) -> None:
    path, cnn = resnet_export
    x = _normalise(aid_batch[0]["image"][:4])
    model = timm.create_model("rsfm_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert list(model.pretrained_cfg["mean"]) == MEAN
    with torch.no_grad():
        assert torch.equal(model(x), load_encoder(path).eval()(x))


@pytest.mark.slow  # a fresh interpreter importing torch and timm (the fast tests above use the names in-process)
def test_import_rsfm_is_light_and_registers_when_timm_comes() -> None:
    code = (
        "import sys, rsfm\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n"
        "import timm\n"
        "assert 'rsfm_vit_base_patch16' in timm.list_models('rsfm_*')\n"
        "assert 'torchgeo' not in sys.modules and 'terratorch' not in sys.modules\n"
        "from rsfm.models.export import load_encoder\n"
        "assert rsfm.load_encoder is load_encoder\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_looking_for_timm_before_importing_it_keeps_the_registration() -> None:
    """``importlib.util.find_spec("timm")`` (how libraries test for it) must not use up rsfm's hook."""
    code = (
        "import importlib.util, rsfm\n"
        "assert importlib.util.find_spec('timm') is not None\n"
        "import timm\n"
        "print(len(timm.list_models('rsfm_*')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) == len(timm_model_names())


# --------------------------------------------------------------------------- torchgeo


def test_torchgeo_classification_task_trains_on_aid(vit_export, aid_batch) -> None:
    pytest.importorskip("torchgeo")
    from rsfm.models.interop.torchgeo_tasks import ExportClassificationTask

    path, enc = vit_export
    batch, _ = aid_batch
    task = ExportClassificationTask(model=timm_model_name(path), weights=str(path), num_classes=4, in_channels=3)
    assert torch.equal(task.model.blocks[5].mlp.fc2.weight, enc.blocks[5].mlp.fc2.weight)
    step = {"image": _normalise(batch["image"]), "label": batch["label"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() without a Trainer
        before, after = _one_step(task, lambda: task.training_step(step, 0))
    assert after < before
    assert task(torch.rand(1, 3, 96, 80)).shape == (1, 4)  # other sizes: the position embedding is resampled
    with pytest.raises(CheckpointError, match=f"{path.name} holds a rsfm_vit_tiny_patch8 encoder"):
        ExportClassificationTask(model="rsfm_vit_base_patch8", weights=str(path), num_classes=4)


def test_torchgeo_segmentation_task_with_a_vit_export_trains_on_loveda(vit16_export, loveda_batch) -> None:
    pytest.importorskip("torchgeo")
    from rsfm.models.interop.torchgeo_tasks import ExportSemanticSegmentationTask

    batch, info = loveda_batch
    task = ExportSemanticSegmentationTask(
        model="dpt",
        backbone="tu-rsfm_vit_tiny_patch16",
        weights=str(vit16_export),
        num_classes=len(info.classes),
        ignore_index=info.ignore_index,
        smp_kwargs={"decoder_intermediate_channels": (32, 64, 64, 64), "decoder_fusion_channels": 32},
    )
    ref = load_encoder(vit16_export)
    assert torch.equal(task.model.encoder.model.blocks[3].attn.proj.weight, ref.blocks[3].attn.proj.weight)
    step = {"image": _normalise(batch["image"]), "mask": batch["mask"]}
    assert task(step["image"]).shape == (4, len(info.classes), 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = _one_step(task, lambda: task.training_step(step, 0))
    assert after < before
    with pytest.raises(ConfigError, match="serves smp's 'dpt' only"):
        ExportSemanticSegmentationTask(model="unet", backbone="tu-rsfm_vit_tiny_patch16", weights=str(vit16_export))
    with pytest.raises(ConfigError, match="set backbone='tu-rsfm_vit_tiny_patch16'"):
        ExportSemanticSegmentationTask(model="dpt", backbone="tu-rsfm_vit_small_patch16", weights=str(vit16_export))


def test_torchgeo_segmentation_task_with_a_resnet_export_trains_on_loveda(resnet_export, loveda_batch) -> None:
    pytest.importorskip("torchgeo")
    from rsfm.models.interop.torchgeo_tasks import ExportSemanticSegmentationTask

    path, cnn = resnet_export
    batch, info = loveda_batch
    task = ExportSemanticSegmentationTask(
        model="unet", backbone="tu-rsfm_resnet18", weights=str(path), num_classes=7, ignore_index=255
    )
    assert torch.equal(task.model.encoder.model.layer3[1].conv2.weight, cnn.layer3[1].conv2.weight)
    step = {"image": _normalise(batch["image"]), "mask": batch["mask"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = _one_step(task, lambda: task.training_step(step, 0))
    assert after < before


# --------------------------------------------------------------------------- TerraTorch


@pytest.fixture
def terratorch():
    """terratorch, imported; its float32 matmul precision is undone after the test.

    Importing terratorch 1.x calls ``torch.set_float32_matmul_precision("medium")`` (in its Clay
    v1.5 module) for the whole process: every later float32 matmul of this test process could
    run at reduced precision (bfloat16 through oneDNN on CPUs with bf16 units; docs/interop.md
    tells users).
    """
    precision = torch.get_float32_matmul_precision()
    module = pytest.importorskip("terratorch")
    yield module
    torch.set_float32_matmul_precision(precision)


def test_importing_terratorch_lowers_torchs_matmul_precision() -> None:
    """What docs/interop.md warns users of; when a terratorch release stops doing it, the warning goes."""
    if importlib.util.find_spec("terratorch") is None:  # imported in a subprocess: not in this one
        pytest.skip("terratorch is not installed")
    code = "import torch, rsfm, terratorch; print(torch.get_float32_matmul_precision())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "medium"


def test_terratorch_backbone_trains_on_loveda(terratorch, vit16_export, loveda_batch) -> None:
    from terratorch.registry import BACKBONE_REGISTRY
    from terratorch.tasks import SemanticSegmentationTask

    assert "rsfm_vit" in BACKBONE_REGISTRY and "rsfm_resnet" in BACKBONE_REGISTRY  # registered by `import rsfm`
    batch, info = loveda_batch
    task = SemanticSegmentationTask(
        model_factory="EncoderDecoderFactory",
        model_args={
            "backbone": "rsfm_vit",
            "backbone_ckpt_path": str(vit16_export),
            "backbone_pretrained": True,
            "necks": [{"name": "SelectIndices", "indices": [3, 5, 7, 11]}, {"name": "ReshapeTokensToImage"}],
            "decoder": "FCNDecoder",
            "decoder_channels": 32,
            "num_classes": len(info.classes),
        },
        loss="ce",
        ignore_index=info.ignore_index,
    )
    ref = load_encoder(vit16_export)
    assert torch.equal(task.model.encoder.vit.blocks[7].mlp.fc1.weight, ref.blocks[7].mlp.fc1.weight)
    step = {"image": _normalise(batch["image"]), "mask": batch["mask"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before, after = _one_step(task, lambda: task.training_step(step, 0))
    assert after < before


def test_terratorch_backbones_return_what_decoders_expect(terratorch, vit16_export, resnet_export) -> None:
    from terratorch.registry import BACKBONE_REGISTRY

    x = torch.rand(1, 4, 96, 64)
    vit = BACKBONE_REGISTRY.build("rsfm_vit", ckpt_path=str(vit16_export), model_bands=["B", "G", "R", "NIR"])
    tokens = vit(x)  # any size (multiples of the patch), the first layer adapted to 4 bands
    assert len(tokens) == 12 and tokens[0].shape == (1, 1 + 6 * 4, 192) and vit.out_channels == [192] * 12
    res = BACKBONE_REGISTRY.build("rsfm_resnet", ckpt_path=str(resnet_export[0]))
    maps = res(torch.rand(1, 3, 64, 64))
    assert res.out_channels == [64, 128, 256, 512]
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    with pytest.raises(CheckpointError, match="rsfm_vit takes a ViT export"):
        BACKBONE_REGISTRY.build("rsfm_vit", ckpt_path=str(resnet_export[0]))
    with pytest.raises(CheckpointError, match="ckpt_path: an rsfm backbone needs the export"):
        BACKBONE_REGISTRY.build("rsfm_vit")
