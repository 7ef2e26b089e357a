"""Recipes: one parser for every command, checked against type hints, errors naming section.key."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from engine_helpers import FINETUNE, PRETRAIN, REPO

from rsfm.cli import main
from rsfm.engine.config import TrainerConfig, format_parse_error, load_recipe, normalise_overrides
from rsfm.utils.errors import ConfigError, DataError

RECIPES = [("finetune", p) for p in sorted(FINETUNE.glob("*.yaml"))] + [
    ("pretrain", p) for p in sorted(PRETRAIN.glob("*.yaml"))
]


@pytest.mark.parametrize(("command", "recipe"), RECIPES, ids=lambda x: getattr(x, "stem", x))
def test_print_config_works_for_every_recipe(command: str, recipe: Path, capsys) -> None:
    assert main([command, "--config", str(recipe), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # the resolved recipe: full class paths, every default filled in
    assert printed["data"]["class_path"].startswith("rsfm.data.")
    assert "batch_size" in printed["data"]["init_args"]
    assert printed["optim"]["name"] in ("adamw", "sgd") and "max_epochs" in printed["trainer"]
    if command == "finetune":
        assert printed["model"]["encoder"]["class_path"].startswith("rsfm.models.")
        assert all(h["class_path"].startswith("rsfm.models.heads.") for h in printed["model"]["heads"].values())
    else:
        assert printed["model"]["class_path"].startswith("rsfm.methods.")


def test_print_config_works_for_the_other_commands(capsys, tmp_path: Path) -> None:
    for argv in (
        ["evaluate", "--data", str(tmp_path), "--print-config"],
        ["export", "--checkpoint", "x.ckpt", "--out", "y.safetensors", "--print-config"],
        ["stats", str(tmp_path), "--print-config"],
        ["list", "heads", "--print-config"],
        # the settings print without the command's inputs (the docs: "for every command")
        ["test", "--config", str(FINETUNE / "segmentation_dubai.yaml"), "--print-config"],
        ["predict", "--config", str(FINETUNE / "segmentation_dubai.yaml"), "--print-config"],
        ["evaluate", "--print-config"],
        ["convert", "--print-config"],
    ):
        assert main(argv) == 0, argv
        assert yaml.safe_load(capsys.readouterr().out)
    with pytest.raises(SystemExit):  # without --print-config they are still required
        main(["test", "--config", str(FINETUNE / "segmentation_dubai.yaml")])


def test_overrides_with_and_without_init_args_agree() -> None:
    recipe = FINETUNE / "segmentation_dubai.yaml"
    a = load_recipe(
        "finetune", recipe, ["model.heads.segmentation.channels=32", "data.crop_size=128", "--trainer.max_epochs", "7"]
    )
    b = load_recipe(
        "finetune",
        recipe,
        ["model.heads.segmentation.init_args.channels=32", "data.init_args.crop_size=128", "trainer.max_epochs=7"],
    )
    for r in (a, b):
        assert r["model"]["heads"]["segmentation"]["init_args"]["channels"] == 32
        assert r["data"]["init_args"]["crop_size"] == 128 and r["trainer"]["max_epochs"] == 7
    assert normalise_overrides(["a.b=1", "--c.d=2", "--e.f", "3"]) == ["--a.b=1", "--c.d=2", "--e.f=3"]
    with pytest.raises(ConfigError, match="expected key=value"):
        normalise_overrides(["oops"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=3", "trainer.max_epoch: not an option of trainer; options: max_epochs"),
        ("optim.lrr=0.1", "optim.lrr: not an option of optim; options: name, lr, blr"),
        (
            "model.heads.segmentation.chanels=3",
            "model.heads.segmentation.chanels: 'chanels' is not an option of UperNetHead; options: channels",
        ),
        (
            "model.heads.auxiliary.init_args.chanels=3",
            "model.heads.auxiliary.chanels: 'chanels' is not an option of FCN",
        ),
        ("data.crop_sise=3", "data.crop_sise: 'crop_sise' is not an option of DubaiDataModule"),
        ("model.encoder.init_args.patch_sise=8", "model.encoder.patch_sise: 'patch_sise' is not an option of ViT"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: Expected a int"),
        ("model.heads.segmentation.class_path=Nope", "unknown class_path 'Nope'; registered heads: ChangeHead"),
        ("data.class_path=NoData", "registered datasets: CDDDataModule"),
        ("foo.bar=1", "unknown section 'foo'"),
        ("sed=1", "sed: not a top-level key"),
        ("optim.name=adam", "optim.name must be one of ('adamw', 'sgd'), got 'adam'"),
        ("optim.betas=[0.9]", "optim.betas must be two values in [0, 1), got [0.9]"),
        ("optim.blr=0.1", "set optim.lr or optim.blr, not both"),
    ],
)
def test_errors_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_recipe("finetune", FINETUNE / "segmentation_dubai.yaml", [override])
    message = str(err.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("evaluate.protocols=[knn,probe]", "evaluate.protocols: unknown ['probe']"),
        ("evaluate.precision=bf16", "evaluate.precision: expected one of ['32-true', 'bf16-mixed', '16-mixed']"),
        ("evaluate.root=/no/such/dir", "evaluate.root: folder not found: /no/such/dir"),
    ],
)
def test_the_evaluate_section_is_checked_before_pretraining(override: str, expected: str) -> None:
    with pytest.raises(DataError if "root" in override else ConfigError, match=re.escape(expected)):
        load_recipe("pretrain", PRETRAIN / "selective_mae_vit_tiny.yaml", [override])
    # switched off, the section is not checked: nothing will use it
    load_recipe("pretrain", PRETRAIN / "selective_mae_vit_tiny.yaml", [override, "evaluate.enabled=false"])


def test_misspelt_keys_inside_the_file_are_named(tmp_path: Path) -> None:
    data = yaml.safe_load((FINETUNE / "segmentation_dubai.yaml").read_text())
    data["trainer"]["max_epoch"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{bad}: trainer.max_epoch: not an option of trainer"):
        load_recipe("finetune", bad)
    data["trainer"].pop("max_epoch")
    data["model"]["heads"]["auxiliary"]["init_args"]["num_conv"] = 2  # a head's option, in the file
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=rf"{bad}: model.heads.auxiliary.num_conv: 'num_conv' is not an option of FCNHead"
    ):
        load_recipe("finetune", bad)
    bad.write_text("trainer:\n  max_epochs: [1,\n")
    with pytest.raises(ConfigError, match=rf"{bad}:3:1: YAML syntax error"):
        load_recipe("finetune", bad)


@pytest.mark.parametrize(("section", "value"), [("trainer", 5), ("checkpoint", False), ("optim", ["a"]), ("viz", 2)])
def test_a_section_written_as_a_plain_value_is_named(section: str, value: object, tmp_path: Path) -> None:
    """jsonargparse lets ``checkpoint: false`` replace the whole section; a recipe file may not."""
    data = yaml.safe_load((PRETRAIN / "mae_vit_tiny.yaml").read_text())
    data[section] = value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"{bad}: {section}: expected a mapping of {section} options"):
        load_recipe("pretrain", bad)


def test_an_empty_section_takes_its_defaults_then_the_overrides(tmp_path: Path) -> None:
    data = yaml.safe_load((PRETRAIN / "mae_vit_tiny.yaml").read_text())
    data["trainer"] = None  # `trainer:` with every option commented out
    recipe = tmp_path / "empty_trainer.yaml"
    recipe.write_text(yaml.safe_dump(data))
    defaults = dataclasses.asdict(TrainerConfig())
    assert load_recipe("pretrain", recipe)["trainer"] == defaults
    trainer = load_recipe("pretrain", recipe, ["trainer.max_epochs=2"])["trainer"]
    assert trainer == {**defaults, "max_epochs": 2}


def test_optim_lr_means_one_thing() -> None:
    with pytest.raises(ConfigError, match="set optim.lr or optim.blr, not both"):
        from rsfm.optim import OptimConfig

        OptimConfig(lr=1e-3, blr=1e-3)
    with pytest.raises(ConfigError, match="optim.lr .* or optim.blr"):
        OptimConfig()


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_activation_checkpointing"])
def test_compile_with_fsdp_is_refused_before_anything_runs(strategy: str) -> None:
    recipe = PRETRAIN / "selective_mae_vit_tiny.yaml"
    with pytest.raises(ConfigError, match=rf"trainer.compile: not with trainer.strategy={strategy}.*strategy=ddp"):
        load_recipe("pretrain", recipe, ["trainer.compile=true", f"trainer.strategy={strategy}"])
    assert load_recipe("pretrain", recipe, ["trainer.compile=true", "trainer.strategy=ddp"])["trainer"]["compile"]


def test_gersp_under_fsdp_is_refused_before_anything_runs() -> None:
    """Its EMA teacher reads the student's weights, which FSDP keeps sharded: it crashed at the first step."""
    from rsfm.engine.trainer import BlockFSDPStrategy
    from rsfm.methods.gersp import GeRSP

    recipe = PRETRAIN / "gersp_vit_tiny.yaml"
    with pytest.raises(ConfigError, match=r"trainer.strategy=fsdp: GeRSP cannot train under FSDP: .*strategy=ddp"):
        load_recipe("pretrain", recipe, ["trainer.strategy=fsdp"])
    assert load_recipe("pretrain", recipe, ["trainer.strategy=ddp"])["trainer"]["strategy"] == "ddp"
    # and for a GeRSP built in code and handed to the strategy
    strategy = BlockFSDPStrategy()
    strategy.parallel_devices = [torch.device("cpu")]
    with pytest.raises(ConfigError, match="GeRSP cannot train under FSDP"):
        strategy._setup_model(GeRSP(arch="vit", size="tiny", patch_size=8, img_size=32, queue_size=16, num_classes=10))


def test_an_unknown_strategy_is_refused_when_the_recipe_is_read() -> None:
    """It was refused by Lightning after the data was scanned (about 30 s), leaving an empty run folder."""
    recipe = PRETRAIN / "selective_mae_vit_tiny.yaml"
    with pytest.raises(ConfigError, match=r"trainer.strategy: unknown strategy 'dpp'; did you mean ddp\?"):
        load_recipe("pretrain", recipe, ["trainer.strategy=dpp"])
    for name in ("auto", "ddp", "fsdp_activation_checkpointing", "ddp_find_unused_parameters_true"):
        assert load_recipe("pretrain", recipe, [f"trainer.strategy={name}"])["trainer"]["strategy"] == name


def test_format_parse_error_joins_nested_messages() -> None:
    nested = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n  Subtypes: [...]\n  Errors:\n'
        "    - Problem with given class_path 'rsfm.methods.MAE':\n        Parser key \"mask_ratio\":\n"
        "          Expected a <class 'float'>. Got value: x\n    - Expected a <class 'NoneType'>\n"
        "  Given value type: dict"
    )
    assert format_parse_error(nested, "r.yaml") == "r.yaml: model.mask_ratio: Expected a float. Got value: x"


#: Libraries that take seconds to import; a recipe is checked, and refused, before any of them loads.
HEAVY = ("lightning", "torchvision", "timm", "torchmetrics", "rasterio")
#: ``python -m rsfm.cli ARGS``, printing to stdout, at exit, which of :data:`HEAVY` were imported.
CLI_REPORTING_IMPORTS = (
    "import atexit, runpy, sys\n"
    f"heavy = {HEAVY!r}\n"
    "atexit.register(lambda: print('imported:', sorted(m for m in heavy if m in sys.modules)))\n"
    "sys.argv = ['rsfm', *sys.argv[1:]]\n"
    "runpy.run_module('rsfm.cli', run_name='__main__', alter_sys=True)\n"
)


def _cli(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the command line; returns the process and the heavy libraries it had imported when it exited."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CLI_REPORTING_IMPORTS, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    reports = [line for line in proc.stdout.splitlines() if line.startswith("imported: ")]
    assert reports, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, ast.literal_eval(reports[-1].removeprefix("imported: "))


@pytest.mark.parametrize(
    ("command", "recipe", "override", "named"),
    [
        ("finetune", FINETUNE / "detection_nepu.yaml", "model.heads.detection.init_args.tiel=3", "'tiel'"),
        (
            "finetune",
            FINETUNE / "detection_nepu.yaml",
            "data.init_args.root=/no/such/dir",
            "data.root: folder not found",
        ),
        ("finetune", FINETUNE / "segmentation_dubai.yaml", "resume=/no/such.ckpt", "checkpoint not found"),
        ("pretrain", PRETRAIN / "selective_mae_vit_tiny.yaml", "model.init_args.mask_ration=0.5", "'mask_ration'"),
        (
            "pretrain",
            PRETRAIN / "selective_mae_vit_tiny.yaml",
            "data.init_args.root=/no/such/dir",
            "data.root: folder not found",
        ),
    ],
)
def test_bad_recipes_fail_fast_and_leave_no_run_folder(command, recipe, override, named, tmp_path: Path) -> None:
    proc, imported = _cli(command, "--config", str(recipe), f"output_dir={tmp_path}", "run_name=run", override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert imported == [], f"refused only after importing {imported}"  # fast: torch and the recipe only
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []


def test_checking_a_recipe_imports_no_heavy_library() -> None:
    """Recipes are checked with torch only: Lightning, torchvision, timm and torchmetrics load later."""
    code = (
        "import sys\n"
        "from rsfm.engine.config import load_recipe\n"
        f"load_recipe('finetune', {str(FINETUNE / 'detection_nepu.yaml')!r})\n"
        f"load_recipe('pretrain', {str(PRETRAIN / 'gersp_resnet50.yaml')!r})\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_sync_batchnorm_without_gpus_is_a_clear_error(tmp_path: Path, capsys) -> None:
    argv = ["finetune", "--config", str(FINETUNE / "change_detection_levir.yaml"), f"output_dir={tmp_path}",
            "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"]  # fmt: skip
    assert main(argv) == 2
    assert "trainer.sync_batchnorm needs GPUs" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_accelerator_this_machine_lacks_is_one_line(tmp_path: Path, capsys) -> None:
    argv = ["finetune", "--config", str(FINETUNE / "change_detection_levir.yaml"), f"output_dir={tmp_path}",
            "trainer.accelerator=gpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: trainer: " in err[0], err
