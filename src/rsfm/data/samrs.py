"""Build a SAMRS-format multi-task set (semantic, instance and rotated labels) from a box dataset.

SAMRS (Wang et al., "SAMRS: Scaling-up Remote Sensing Segmentation Dataset with Segment
Anything Model", NeurIPS 2023 Datasets and Benchmarks, Sec. 3) turns the boxes of detection
datasets into segmentation labels by prompting the Segment Anything Model (Kirillov et al.,
"Segment Anything", ICCV 2023) with each box; MTP (Wang et al., "MTP: Advancing Remote Sensing
Foundation Model via Multi-Task Pretraining", IEEE JSTARS 2024) pretrains on the result with
the boxes as a third label. :func:`build_samrs` does the same for any rsfm box layout and
writes, per image that has boxes::

    <out>/images/<id>.<ext>      # the image (copied, or linked)
    <out>/gray/<id>.png          # uint8, 255 = background, each object's pixels = its class
                                 #   index, in annotation order (a later box wins an overlap)
    <out>/rbbtxts/<id>.txt       # rotated input only: x1 y1 x2 y2 x3 y3 x4 y4 class_name class_index
    <out>/instances.json         # COCO: RLE masks, 0-based category_id, bbox = tight box of the mask
    <out>/manifest.json          # source, counts, classes, mask mode, rsfm version

which :class:`rsfm.data.multitask.SAMRSSource` reads back. Masks are, by default, the filled
box polygons (:func:`box_mask`: the pixels whose centre is inside); with a SAM model, SAM's
masks for box prompts, as SAMRS made them: one image embedding per image, box prompts only
(for a rotated box its axis-aligned hull), ``multimask_output=False``, boxes prompted in
batches of 20. Images without boxes are skipped
(counted), as SAMRS skips them. Class names are written with whitespace replaced by ``-``
(a txt field cannot hold a space); the JSON categories and the manifest list those names.

Command line: ``rsfm samrs --source hit_uav --root <folder> --out <folder> [--split train]
[--limit N] [--sam-checkpoint sam_vit_h_4b8939.pth --sam-model vit_h]``.

.. versionadded:: 0.3
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsfm.data.io import RasterRule, UnsupportedImageError, read_image
from rsfm.data.skips import READ_ERRORS, skip_reason
from rsfm.utils.errors import CheckpointError, ConfigError, DataError
from rsfm.utils.files import atomic_write, write_json

__all__ = ["SAM_MODELS", "box_mask", "build_samrs", "build_samrs_from_layout", "sam_predictor"]

#: SAM image-encoder sizes of ``segment_anything.sam_model_registry``
SAM_MODELS = ("vit_h", "vit_l", "vit_b")
#: how the images of the set are written
IMAGE_MODES = ("copy", "symlink", "hardlink")
#: the folders of a set, cleared when a run replaces an earlier set in the same place
SET_FOLDERS = ("images", "gray", "rbbtxts")
#: file in the output folder while a run is writing it (removed when the manifest is written)
PARTIAL_MARKER = ".samrs-incomplete"


def box_mask(polygon: np.ndarray | Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels of a filled box polygon: those whose centre lies in it (edges included).

    The polygon is in continuous pixel coordinates (pixel ``(r, c)`` spans ``[c, c + 1) ×
    [r, r + 1)``, its centre ``(c + ½, r + ½)``); the filled region is its convex hull (a box;
    DOTA's slightly concave quadrilaterals are filled to their hull). Centres are tested
    exactly with shapely (PIL's ``ImageDraw.polygon`` rounds corners to whole pixels, which
    moves edges by up to half a pixel). A box that covers no pixel centre (thinner than a
    pixel) gets the pixel holding its centre, so that every box inside the image has a mask.

    Args:
        polygon: ``(8,)`` corners ``x1 y1 ... x4 y4`` (or any polygon, ``(2k,)``), pixels.
        height: image height ``H``, pixels.
        width: image width ``W``, pixels.

    Returns:
        ``(H, W)`` bool (all False for a polygon outside the image).
    """
    import shapely

    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    out = np.zeros((height, width), dtype=bool)
    x0, y0 = max(0, int(np.floor(xy[:, 0].min()))), max(0, int(np.floor(xy[:, 1].min())))
    x1, y1 = min(width, int(np.ceil(xy[:, 0].max())) + 1), min(height, int(np.ceil(xy[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return out
    hull = shapely.convex_hull(shapely.multipoints(xy))
    shapely.prepare(hull)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    inside = shapely.intersects_xy(hull, xs + 0.5, ys + 0.5)
    out[y0:y1, x0:x1] = inside
    if not inside.any():
        cx, cy = (int(np.floor(v)) for v in xy.mean(axis=0))
        if 0 <= cx < width and 0 <= cy < height:
            out[cy, cx] = True
    return out


def sam_predictor(sam: Any, model: str = "vit_h", device: str | torch.device | None = None) -> Any:
    """A ``segment_anything.SamPredictor`` for ``sam``.

    Args:
        sam: a ``SamPredictor`` (used as it is), a ``segment_anything.modeling.Sam`` model, or
            the path of SAM weights (a state dict, e.g. ``sam_vit_h_4b8939.pth``).
        model: encoder size of the weights: ``vit_h``, ``vit_l`` or ``vit_b``.
        device: where the model runs (default: CUDA when available, else the CPU); a given
            predictor keeps its model's device.

    Returns:
        The predictor (its model in eval mode).

    Raises:
        ConfigError: if ``segment-anything`` is not installed, or ``model`` is unknown.
        CheckpointError: naming the file if the weights are missing or do not fit ``model``.
    """
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError:
        raise ConfigError(
            "SAM masks need the segment-anything package: pip install 'rsfm[sam]' (or pip install segment-anything)"
        ) from None
    if hasattr(sam, "set_image") and hasattr(sam, "predict_torch"):
        return sam
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(sam, str | os.PathLike):
        if model not in SAM_MODELS:
            raise ConfigError(f"SAM model must be one of {list(SAM_MODELS)}, got {model!r}")
        path = Path(sam)
        if not path.is_file():
            raise CheckpointError(f"SAM checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise TypeError(f"expected a state dict, got {type(state).__name__}")
            net = sam_model_registry[model](checkpoint=None)
            net.load_state_dict(state.get("model", state))
        except Exception as err:  # unpickling, key and shape errors all mean: not these weights
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: not SAM {model} weights ({first})") from None
        sam = net
    if not isinstance(sam, torch.nn.Module) or not hasattr(sam, "image_encoder"):
        raise ConfigError(f"sam must be a SamPredictor, a SAM model or a weights file, got {type(sam).__name__}")
    sam.to(dev).eval()
    return SamPredictor(sam)


def _sam_masks(predictor: Any, image: torch.Tensor, hulls: np.ndarray, batch: int) -> Any:
    """SAM's masks for box prompts, ``batch`` boxes at a time after one embedding of the image.

    Yields ``(i, mask)`` with ``mask`` ``(H, W)`` bool for each box ``i`` in order.
    """
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.shape[0] != 3:
        raise DataError(f"SAM needs RGB images, got {image.shape[0]} bands")
    h, w = int(image.shape[-2]), int(image.shape[-1])
    predictor.set_image(np.ascontiguousarray(image.permute(1, 2, 0).numpy()), image_format="RGB")
    for start in range(0, len(hulls), batch):
        boxes = torch.as_tensor(hulls[start : start + batch], dtype=torch.float32, device=predictor.device)
        boxes = predictor.transform.apply_boxes_torch(boxes, (h, w))
        masks, _, _ = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
        for j, m in enumerate(masks[:, 0].cpu().numpy().astype(bool)):
            yield start + j, m


def _written_name(name: str) -> str:
    return re.sub(r"\s+", "-", str(name).strip())


def _number(v: float) -> str:
    text = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _write_image(src: Path, dst: Path, mode: str) -> None:
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return  # already there (a link to it, or the set is written beside its images)
        dst.unlink()
    if mode == "symlink":
        dst.symlink_to(src.resolve())
    elif mode == "hardlink":
        try:
            os.link(src, dst)
        except OSError:  # another file system: copy instead
            atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    else:
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _png(array: np.ndarray) -> Callable[[str], None]:
    from PIL import Image

    def write(tmp: str) -> None:
        Image.fromarray(array, mode="L").save(tmp, format="PNG")

    return write


def build_samrs(
    records: Sequence[Any],
    classes: Sequence[str],
    out_dir: str | os.PathLike[str],
    sam: Any = None,
    sam_model: str = "vit_h",
    batch: int = 20,
    images: str = "copy",
    device: str | torch.device | None = None,
    source: Mapping[str, Any] | str | None = None,
    raster: RasterRule = RasterRule(),  # noqa: B008 (frozen)
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a SAMRS-format set (module docstring) for box-annotated images.

    Args:
        records: :class:`~rsfm.data.rotated.common.RotatedRecord` s (``polygons`` ``(N, 8)``,
            pixels or fractions) or :class:`~rsfm.data.detection.common.DetectionRecord` s
            (``boxes`` ``(N, 4)`` xyxy pixels), with ``labels`` in ``[0, K)``; difficult
            objects are kept. Rotated input also gets ``rbbtxts/``.
        classes: the ``K`` class names in label order (``K <= 254``: 255 is background).
        out_dir: output folder (created). An earlier set of ``rsfm samrs`` there, complete or
            stopped midway, is replaced: its ``images/``, ``gray/`` and ``rbbtxts/`` are emptied
            first, so the folder holds this run's set only.
        sam: None for box masks; a SAM model, a ``SamPredictor`` or a weights file for SAM
            masks (:func:`sam_predictor`).
        sam_model: encoder size of a weights file: ``vit_h`` (SAMRS's), ``vit_l``, ``vit_b``.
        batch: boxes per SAM call (SAMRS: 20).
        images: ``copy``, ``symlink`` or ``hardlink`` the images into ``images/``.
        device: where SAM runs (default CUDA when available).
        source: what the manifest records as the source (layout, root, split...).
        raster: how image files are read (for their size and SAM's input).
        progress: called as ``progress(done, total)`` after each record.

    Returns:
        The manifest (also written to ``manifest.json``): ``format``, ``source``, ``classes``
        (as written), ``mask_mode`` (``box`` or ``sam``), ``sam``, ``counts`` (``images``
        written, ``objects`` (boxes), ``instances`` (JSON annotations), ``empty_masks``
        (objects whose mask has no pixel, left out of the JSON), ``skipped_no_boxes``,
        ``skipped_unreadable``), ``skipped`` (``[path, reason]``), ``files`` and
        ``rsfm_version``.

    Raises:
        ConfigError: on a bad ``images``/``batch``/SAM setting or a missing segment-anything.
        CheckpointError: if SAM weights are missing or do not fit ``sam_model``.
        DataError: if there are more than 254 classes, a label is outside ``[0, K)``, or an
            image lacks a band of ``raster``.
        OutputError: if the output folder cannot be written, or if its ``images/``, ``gray/``
            or ``rbbtxts/`` hold files that no run of ``rsfm samrs`` wrote.
    """
    from pycocotools import mask as mask_utils

    from rsfm import __version__

    if images not in IMAGE_MODES:
        raise ConfigError(f"images must be one of {list(IMAGE_MODES)}, got {images!r}")
    if isinstance(batch, bool) or int(batch) < 1:
        raise ConfigError(f"batch must be a positive number of boxes, got {batch!r}")
    names = [_written_name(c) for c in classes]
    if not 0 < len(names) <= 254:
        raise DataError(f"a SAMRS gray mask holds 1 to 254 classes (255 is background), got {len(names)}")
    out = Path(out_dir)
    predictor = sam_predictor(sam, sam_model, device) if sam is not None else None
    rotated = bool(records) and hasattr(records[0], "polygons")
    folders = {"images": out / "images", "semantic": out / "gray", "rotated": out / "rbbtxts" if rotated else None}
    _clear_earlier_set(out)
    for folder in folders.values():
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    coco_images: list[dict[str, Any]] = []
    coco_anns: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    counts = {"images": 0, "objects": 0, "instances": 0, "empty_masks": 0, "skipped_no_boxes": 0}
    for done, r in enumerate(records, 1):
        labels = np.asarray(r.labels, dtype=np.int64).reshape(-1)
        if len(labels) == 0:
            counts["skipped_no_boxes"] += 1
            if progress is not None:
                progress(done, len(records))
            continue
        bad = labels[(labels < 0) | (labels >= len(names))]
        if len(bad):
            raise DataError(f"{r.image}: label {int(bad[0])} is outside the {len(names)} classes")
        try:
            image = read_image(r.image, raster)
        except UnsupportedImageError:
            raise
        except READ_ERRORS as err:
            skipped.append((str(r.image), skip_reason(r.image, err)))
            if progress is not None:
                progress(done, len(records))
            continue
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if rotated:
            rec = r.in_pixels(w, h) if getattr(r, "normalized", False) else r
            polygons = np.asarray(rec.polygons, dtype=np.float64).reshape(-1, 8)
        else:
            b = np.asarray(r.boxes, dtype=np.float64).reshape(-1, 4)
            polygons = b[:, [0, 1, 2, 1, 2, 3, 0, 3]]
        rid = str(r.id)
        image_id = len(coco_images) + 1
        file_name = f"{rid}{Path(r.image).suffix}"
        gray = np.full((h, w), 255, dtype=np.uint8)
        if predictor is None:
            masks: Any = ((i, box_mask(p, h, w)) for i, p in enumerate(polygons))
        else:
            xy = polygons.reshape(-1, 4, 2)
            hulls = np.concatenate([xy.min(1), xy.max(1)], axis=1)
            hulls[:, 0::2] = hulls[:, 0::2].clip(0, w)
            hulls[:, 1::2] = hulls[:, 1::2].clip(0, h)
            masks = _sam_masks(predictor, image, hulls, int(batch))
        for i, m in masks:
            k = int(labels[i])
            gray[m] = k
            if not m.any():
                counts["empty_masks"] += 1
                continue
            rle = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
            coco_anns.append(
                {
                    "id": len(coco_anns) + 1,
                    "image_id": image_id,
                    "category_id": k,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": int(mask_utils.area(rle)),
                    "iscrowd": 0,
                }
            )
        coco_images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        _write_image(Path(r.image), folders["images"] / file_name, images)
        atomic_write(folders["semantic"] / f"{rid}.png", _png(gray))
        if folders["rotated"] is not None:
            lines = [
                " ".join([*(_number(v) for v in p), names[int(k)], str(int(k))])
                for p, k in zip(polygons, labels, strict=True)
            ]
            text = "".join(f"{line}\n" for line in lines)
            atomic_write(folders["rotated"] / f"{rid}.txt", lambda tmp, t=text: Path(tmp).write_text(t))
        counts["images"] += 1
        counts["objects"] += len(labels)
        if progress is not None:
            progress(done, len(records))
    counts["instances"] = len(coco_anns)
    counts["skipped_unreadable"] = len(skipped)

    coco = {
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{"id": k, "name": n} for k, n in enumerate(names)],
    }

    def write_coco(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(coco, f, separators=(",", ":"))

    atomic_write(out / "instances.json", write_coco)
    manifest = {
        "format": "samrs",
        "source": source if not isinstance(source, str) else {"name": source},
        "classes": names,
        "mask_mode": "box" if predictor is None else "sam",
        "sam": None
        if predictor is None
        else {
            "model": sam_model if isinstance(sam, str | os.PathLike) else type(predictor.model).__name__,
            "checkpoint": str(sam) if isinstance(sam, str | os.PathLike) else None,
            "batch": int(batch),
            "prompt": "axis-aligned hull of each box",
            "multimask_output": False,
        },
        "counts": counts,
        "skipped": [list(s) for s in skipped],
        "files": {
            "images": "images",
            "semantic": "gray",
            "instances": "instances.json",
            "rotated": "rbbtxts" if rotated else None,
        },
        "rsfm_version": __version__,
    }
    write_json(out / "manifest.json", manifest)
    (out / PARTIAL_MARKER).unlink(missing_ok=True)
    return manifest


def _clear_earlier_set(out: Path) -> None:
    """Make ``out`` ready for a new set: remove what an earlier (or interrupted) run wrote there.

    A second run into the same folder must not leave the first run's images and masks beside
    its own (the set would then list fewer images than ``images/`` holds). The set's folders
    are cleared only when ``out`` holds a set of ``rsfm samrs`` (its ``manifest.json``) or a run
    that stopped midway (:data:`PARTIAL_MARKER`); other files there are never deleted.

    Raises:
        OutputError: naming the folder, if ``images/``, ``gray/`` or ``rbbtxts/`` hold files
            that no run of ``rsfm samrs`` wrote.
    """
    from rsfm.utils.errors import OutputError

    folders = [out / name for name in SET_FOLDERS]
    used = [f for f in folders if f.is_dir() and any(f.iterdir())]
    manifest = out / "manifest.json"
    ours = (out / PARTIAL_MARKER).is_file()
    if manifest.is_file():
        try:
            ours = ours or json.loads(manifest.read_text(encoding="utf-8")).get("format") == "samrs"
        except (OSError, ValueError, AttributeError):
            pass
    if used and not ours:
        raise OutputError(
            f"{used[0]}: already holds files that rsfm samrs did not write; give --out an empty or new folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / PARTIAL_MARKER).write_text("rsfm samrs is writing this set; a later run replaces it\n")
        for name in ("manifest.json", "instances.json"):
            (out / name).unlink(missing_ok=True)
        for folder in used:
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    except OSError as err:
        raise OutputError(f"{out}: cannot write the SAMRS set: {err}") from None


def build_samrs_from_layout(
    layout: str | type,
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str | None = None,
    limit: int | None = None,
    classes: Sequence[str] | None = None,
    layout_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`build_samrs` on one split of an rsfm box layout (what ``rsfm samrs`` runs).

    Args:
        layout: layout name (:func:`rsfm.data.multitask.find_layout`: ``hit_uav``, ``dota``,
            ``dior_r``, ``fair1m``, ``dior``...) or datamodule class.
        root: the dataset folder.
        out_dir: output folder.
        split: the layout's split name (None: its training split).
        limit: only the first ``limit`` images of the split (None: all).
        classes: class names in label order (None: the layout's default).
        layout_options: further arguments of the layout's datamodule.
        **kwargs: :func:`build_samrs` options (``sam``, ``sam_model``, ``batch``, ``images``,
            ``device``, ``progress``).

    Returns:
        The manifest.

    Raises:
        ConfigError: on an unknown layout or a negative ``limit``.
        DataError: if the split cannot be read; see :func:`build_samrs`.
    """
    from rsfm.data.multitask import layout_records

    if limit is not None and int(limit) < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    records, names, _ = layout_records(layout, root, split, classes, **dict(layout_options or {}))
    if limit is not None:
        records = records[: int(limit)]
    cls_name = layout if isinstance(layout, str) else layout.__name__
    source = {"layout": cls_name, "root": str(Path(root).resolve()), "split": split, "limit": limit}
    if [_written_name(n) for n in names] != list(names):
        source["classes"] = list(names)
    return build_samrs(records, names, out_dir, source=source, **kwargs)
