"""The held-out split of an image folder: one set of files for pretraining, scene classification
and ``rsfm evaluate``, whatever the depth of the tree, the other class folders or the process.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import rsfm
from rsfm.data.folder import ImageFolder, LabeledImageFolder
from rsfm.data.pretrain import PretrainDataModule
from rsfm.data.scene import SceneClassificationDataModule

CLASSES = ("Beach", "Forest", "Port")


def link_class(root: Path, aid: Path, name: str, n: int, per_sub: int | None = None) -> None:
    """Symlink the first ``n`` AID images (by name) of class ``name`` into ``root/<name>``.

    With ``per_sub``, they go ``per_sub`` at a time into ``root/<name>/sub0``, ``sub1``, ...;
    without, directly into ``root/<name>``.
    """
    files = sorted((aid / name).glob("*.jpg"))[:n]
    assert len(files) == n
    for i, src in enumerate(files):
        folder = root / name / (f"sub{i // per_sub}" if per_sub else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / src.name).symlink_to(src)


def nested_tree(root: Path, aid: Path) -> Path:
    """``root/<class>/sub<k>/<image>``: 10 AID images of each of CLASSES, 5 per sub-folder."""
    for name in CLASSES:
        link_class(root, aid, name, 10, per_sub=5)
    return root


def relative(samples: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in samples]


def test_pretraining_holdout_is_the_scene_test_split_on_a_nested_tree(tmp_path: Path, datasets: Path) -> None:
    root = nested_tree(tmp_path / "nested", datasets / "aid")
    common = {"test_fraction": 0.2, "split_seed": 0, "img_size": 32, "num_workers": 0}
    pretrain = PretrainDataModule(str(root), **common)
    pretrain.setup("fit")
    scene = SceneClassificationDataModule(str(root), **common)
    scene.setup("fit")
    # the data `rsfm evaluate` builds (rsfm.engine.evaluate.evaluate)
    evaluation = SceneClassificationDataModule(str(root), **common, val_fraction=0.0, augment=False)
    evaluation.setup("test")

    test = relative(scene.datasets["test"].samples, root)
    assert relative(pretrain.datasets["holdout"].samples, root) == test
    assert relative(evaluation.datasets["test"].samples, root) == test
    assert not set(pretrain.datasets["train"].samples) & set(scene.datasets["test"].samples)
    # stratified by class (first-level folder), not by sub-folder: 20 % of each class's 10
    assert Counter(name.partition("/")[0] for name in test) == dict.fromkeys(CLASSES, 2)
    assert pretrain.datasets["holdout"].group_names == list(CLASSES)


def test_adding_a_class_folder_keeps_the_held_out_files_of_the_others(tmp_path: Path, datasets: Path) -> None:
    root = tmp_path / "aid"
    for name in ("Beach", "Forest"):
        link_class(root, datasets / "aid", name, 20)

    def splits() -> dict[str, set[str]]:
        scene = SceneClassificationDataModule(str(root), img_size=32, num_workers=0, test_fraction=0.2)
        scene.setup("fit")
        found = {k: set(relative(scene.datasets[k].samples, root)) for k in ("train", "val", "test")}
        for cls in (ImageFolder, LabeledImageFolder):
            found[cls.__name__] = set(relative(cls(root, split="val", val_fraction=0.2).samples, root))
        return found

    before = splits()
    assert len(before["test"]) == 8 and before["ImageFolder"] == before["LabeledImageFolder"] == before["test"]
    link_class(root, datasets / "aid", "Airport", 20)  # sorts first: the old classes change position
    after = splits()
    assert {k: {f for f in v if not f.startswith("Airport/")} for k, v in after.items()} == before
    assert len(after["test"]) == 12  # the new class is split too, 4 of its 20 held out


_CHILD = """
import json, sys
from pathlib import Path
from rsfm.data.folder import ImageFolder
root = Path(sys.argv[1])
held_out = ImageFolder(root, split="val", val_fraction=0.2, split_seed=0).samples
print(json.dumps([p.relative_to(root).as_posix() for p in held_out]))
"""

#: the held-out files of nested_tree with val_fraction 0.2 and split_seed 0: a change here
#: changes the test images of every existing run
EXPECTED = [
    "Beach/sub0/beach_103.jpg",
    "Beach/sub0/beach_105.jpg",
    "Forest/sub0/forest_105.jpg",
    "Forest/sub1/forest_109.jpg",
    "Port/sub0/port_102.jpg",
    "Port/sub1/port_109.jpg",
]


def test_the_split_is_the_same_in_a_fresh_process(tmp_path: Path, datasets: Path) -> None:
    root = nested_tree(tmp_path / "nested", datasets / "aid")
    here = relative(ImageFolder(root, split="val", val_fraction=0.2, split_seed=0).samples, root)
    src = str(Path(rsfm.__file__).resolve().parents[1])
    for hash_seed in ("1", "2"):  # a split seeded with str hash() would differ between these
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": src}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(root)], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == here
    assert here == EXPECTED
