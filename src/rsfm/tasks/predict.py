"""``rsfm predict``: run a fine-tuned task on image files of any size and write the results.

What is written depends on the head's :attr:`~rsfm.models.heads.base.Head.output_kind`:

- ``mask`` (segmentation): a label raster (uint8, class colours as a colour map); a
  georeferenced GeoTIFF input gives a GeoTIFF with the input's CRS and transform, its nodata
  pixels set to 255.
- ``change`` (change detection, two inputs): a 0 / 255 change mask, a GeoTIFF with the before
  image's georeference for a ``.tif`` output.
- ``boxes`` (detection): a GeoJSON ``FeatureCollection`` of box polygons, in the raster's map
  coordinates when the input is georeferenced, else in pixels.
- ``obbs`` (rotated detection): a GeoJSON ``FeatureCollection`` of the oriented boxes' polygons
  (map coordinates for a georeferenced input, else pixels), and, in a folder named
  ``task1`` beside it, DOTA Task1 submission files ``Task1_<class>.txt`` (``image_id score x1 y1
  ... x4 y4`` in pixels; predicting several images into one folder adds each image's lines,
  replacing that image's earlier ones).
- ``masks`` (instance segmentation): a GeoJSON ``FeatureCollection`` with one feature per
  instance, the outline of its mask (a ``Polygon``, or a ``MultiPolygon`` for a mask of several
  parts, holes as interior rings; map coordinates for a georeferenced input, else pixels) with
  its ``id``, class, score, pixel box ``bbox_px`` and pixel count ``area_px``; beside it an
  instance-id raster ``<name>_ids.tif`` (a GeoTIFF with the input's georeference, for a GeoTIFF
  input) or ``<name>_ids.png`` (16-bit) where 0 is background and ``i`` the ``i``-th instance
  by decreasing score (where masks overlap the higher-scoring instance keeps the pixel), and
  ``<name>_ids.json`` mapping each id to its class and score.
- ``label`` (scene classification): a JSON file with the predicted class and the class
  probabilities of the image resized as the test split's (``data.img_size``).

Inputs are read with the same bands and scaling as the training data.

.. versionadded:: 0.2
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rsfm.data.io import RasterRule, read_image
from rsfm.utils.errors import ConfigError, DataError, OutputError
from rsfm.utils.files import atomic_write, write_json

if TYPE_CHECKING:
    from rsfm.tasks.module import DownstreamTask

__all__ = ["predict_files", "write_dota_task1"]

_TIFF = {".tif", ".tiff"}


def _georeference(path: Path) -> tuple[Any, Any, np.ndarray | None]:
    """``(crs, transform, valid)`` of a GeoTIFF; ``(None, None, None)`` for other files."""
    if path.suffix.lower() not in _TIFF:
        return None, None, None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            valid = src.dataset_mask() > 0
            if src.crs is None and src.transform.is_identity:
                return None, None, valid
            return src.crs, src.transform, valid


def _read(task: DownstreamTask, path: Path, resize: bool = False) -> torch.Tensor:
    info = task.info
    rule = RasterRule(
        bands=tuple(info.bands) if info.bands is not None else None,
        scale=info.raster_scale if info.raster_scale == "auto" else float(info.raster_scale),
    )
    image = read_image(path, rule)
    if resize and info.img_size:  # as the test split of a folder datamodule: resize, centre crop
        from rsfm.data.transforms import eval_transform

        return eval_transform(int(info.img_size))(image).to(task.device)
    return image.float().div_(255.0).to(task.device)


def _write_raster(
    path_out: Path, array: np.ndarray, crs: Any, transform: Any, nodata: int | None, palette: Any
) -> Path:
    if path_out.suffix.lower() == ".png":
        from PIL import Image

        if array.dtype != np.uint8:  # a 16-bit grey PNG (instance ids)
            img16 = Image.fromarray(array.astype(np.uint16))
            return atomic_write(path_out, lambda tmp: img16.save(tmp, format="PNG"))
        img = Image.fromarray(array, mode="P" if palette is not None else "L")
        if palette is not None:
            flat = [c for p in palette for c in p] + [0, 0, 0] * (256 - len(palette))
            img.putpalette(flat)
        return atomic_write(path_out, lambda tmp: img.save(tmp, format="PNG"))
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": array.shape[0],
        "width": array.shape[1],
        "count": 1,
        "dtype": array.dtype.name,
        "compress": "deflate",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None or transform is not None:
        profile.update(crs=crs, transform=transform)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(array, 1)
                if palette is not None:
                    dst.write_colormap(1, {k: (*c, 255) for k, c in enumerate(palette)})

    return atomic_write(path_out, write)


def _output(path_in: Path, path_out: Path, suffixes: tuple[str, ...], default: str, what: str) -> Path:
    if path_out.is_dir():
        path_out = path_out / f"{path_in.stem}_{what}{default}"
    if path_out.suffix.lower() not in suffixes:
        raise ConfigError(f"--output {path_out} must end in {', '.join(suffixes)}")
    return path_out


def predict_files(
    task: DownstreamTask,
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    head: str | None = None,
) -> Path:
    """Predict one input (two for change detection) with one head and write the result.

    Args:
        task: a fine-tuned task (its device is used).
        inputs: image or GeoTIFF paths: one, or ``before, after`` for change detection.
        output: output file, or a folder (an existing one, or any path ending in ``/``, made if
            missing), where a name is derived from the input.
        head: the head to predict with; default the first evaluated one.

    Returns:
        The written file (for instance masks the GeoJSON; the id raster and its JSON lie beside it).

    Raises:
        DataError: if an input is missing or the pair's sizes differ.
        ConfigError: on an unknown head, a wrong number of inputs or an unsupported output suffix.
        OutputError: if an output folder ending in ``/`` cannot be made.
    """
    name = head or task.evaluated[0]
    if name not in task.heads:
        raise ConfigError(f"--head {name!r} is not a head of this task ({', '.join(task.heads)})")
    h = task.heads[name]
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise DataError(f"--input: file not found: {p}")
    expected = len(h.image_keys)
    if len(paths) != expected:
        raise ConfigError(f"--input: head {name!r} takes {expected} image(s) (comma-separated), got {len(paths)}")
    out = Path(output)
    if str(output).endswith(("/", os.sep)):  # a folder by its trailing slash: made if missing
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"--output {output}: cannot make the folder ({err})") from None
    task.eval()
    with torch.inference_mode():
        images = [_read(task, p, resize=h.output_kind == "label") for p in paths]
        if len(images) == 2 and images[0].shape != images[1].shape:
            raise DataError(
                f"{paths[0]} is {tuple(images[0].shape[-2:])} but {paths[1]} is {tuple(images[1].shape[-2:])}"
            )
        batch = {key: img[None] for key, img in zip(h.image_keys, images, strict=True)}
        kind = h.output_kind
        crs, transform, valid = _georeference(paths[0])
        if kind == "mask":
            out = _output(paths[0], out, (".tif", ".tiff", ".png"), ".tif" if crs else ".png", "mask")
            if out.suffix.lower() == ".png" and crs is not None:
                raise ConfigError(f"{paths[0]} is georeferenced; write the mask as .tif to keep its CRS and transform")
            if h.num_classes > 255:
                raise ConfigError(f"{h.num_classes} classes do not fit a uint8 mask")
            pred = h.predict(task.model, batch)[0].to(torch.uint8).cpu().numpy()
            if valid is not None:
                pred[~valid] = 255
            return _write_raster(out, pred, crs, transform, 255, task.info.palette or None)
        if kind == "change":
            out = _output(paths[0], out, (".tif", ".tiff", ".png"), ".tif" if crs else ".png", "change")
            pred = (h.predict(task.model, batch)[0].to(torch.uint8) * 255).cpu().numpy()
            return _write_raster(out, pred, crs, transform, None, None)
        if kind == "boxes":
            out = _output(paths[0], out, (".geojson", ".json"), ".geojson", "boxes")
            det = h.detect(task.model, images[0], score_thresh=h.vis_score_thresh)
            return _write_boxes(out, paths[0], det, h.classes, crs, transform, images[0].shape)
        if kind == "obbs":
            out = _output(paths[0], out, (".geojson", ".json"), ".geojson", "obbs")
            det = h.predict(task.model, batch)[0]
            keep = det["scores"] >= float(getattr(h, "vis_score_thresh", 0.0))
            det = {k: v[keep].cpu() for k, v in det.items()}
            written = _write_obbs(out, paths[0], det, h.classes, crs, transform, images[0].shape)
            write_dota_task1(out.parent / "task1", paths[0].stem, det, h.classes)
            return written
        if kind == "masks":
            out = _output(paths[0], out, (".geojson", ".json"), ".geojson", "masks")
            det = h.detect(task.model, images[0], score_thresh=h.vis_score_thresh)
            tiff = paths[0].suffix.lower() in _TIFF
            return _write_instances(out, paths[0], det, h.classes, crs, transform, images[0].shape, tiff)
        if kind == "label":
            out = _output(paths[0], out, (".json",), ".json", "label")
            probs = h(task.model.features(batch, h), batch)[0].float().softmax(0).cpu()
            top = int(probs.argmax())
            return write_json(
                out,
                {
                    "image": str(paths[0]),
                    "class": h.classes[top],
                    "label": top,
                    "probabilities": {c: float(p) for c, p in zip(h.classes, probs, strict=True)},
                },
            )
    raise ConfigError(f"head {name!r} ({type(h).__name__}) has no file prediction")


def _polygon_feature(
    corners: Sequence[Sequence[float]],
    transform: Any,
    classes: list[str],
    label: int,
    score: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """A GeoJSON polygon feature of pixel ``corners`` (closed, mapped through ``transform`` if any)."""
    ring = [tuple(c) for c in corners]
    ring.append(ring[0])
    if transform is not None:
        ring = [transform @ xy for xy in ring]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]},
        "properties": {"class": classes[int(label)], "label": int(label), "score": float(score), **extra},
    }


def _feature_collection(
    path_in: Path,
    features: list[dict[str, Any]],
    crs: Any,
    transform: Any,
    shape: Any,
    extra: dict[str, Any] | None = None,
) -> str:
    """GeoJSON text of ``features`` with the image's size and georeference (and ``extra`` members)."""
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "name": path_in.stem,
        "coordinates": "map" if transform is not None else "pixel",
        "image_size": [int(shape[-1]), int(shape[-2])],
        **(extra or {}),
        "features": features,
    }
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    if transform is not None:
        collection["transform"] = [float(v) for v in list(transform)[:6]]
    return json.dumps(collection, indent=1)


def _write_obbs(
    path_out: Path, path_in: Path, det: dict[str, Any], classes: list[str], crs: Any, transform: Any, shape: Any
) -> Path:
    """GeoJSON polygons of oriented boxes ``det['obbs']`` ``(N, 5)`` (pixels, radians), mapped through ``transform``."""
    from rsfm.ops.obb import obb2poly

    polys = obb2poly(det["obbs"].double()).reshape(-1, 4, 2).tolist()
    features = []
    for poly, obb, score, label in zip(
        polys, det["obbs"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True
    ):
        extra = {"obb_px": [float(v) for v in obb], "polygon_px": [float(v) for xy in poly for v in xy]}
        features.append(_polygon_feature(poly, transform, classes, label, score, extra))
    text = _feature_collection(path_in, features, crs, transform, shape)
    return atomic_write(path_out, lambda tmp: Path(tmp).write_text(text))


def write_dota_task1(folder: str | os.PathLike[str], image_id: str, det: dict[str, Any], classes: list[str]) -> Path:
    """Add one image's oriented detections to DOTA Task1 submission files, one per class.

    ``Task1_<class>.txt`` holds one line per detection, ``image_id score x1 y1 x2 y2 x3 y3 x4
    y4`` (corners in pixels of the whole image), the format of the DOTA evaluation server and
    devkit (Xia et al., CVPR 2018). Lines of ``image_id`` already in the files are replaced, so
    predicting an image again does not duplicate it. Every class gets a file (possibly empty).

    Args:
        folder: the submission folder (created if needed).
        image_id: the image's name without suffix (no spaces).
        det: ``obbs`` ``(N, 5)`` float (cx, cy, w, h, θ; pixels, radians), ``scores`` ``(N,)``,
            ``labels`` ``(N,)`` int64 in ``[0, K)``.
        classes: the ``K`` class names.

    Returns:
        The folder.

    Raises:
        ConfigError: if ``image_id`` contains whitespace (the format is space-separated).
    """
    from rsfm.ops.obb import obb2poly

    if any(c.isspace() for c in image_id):
        raise ConfigError(f"DOTA Task1 image ids cannot hold spaces: {image_id!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    polys = obb2poly(det["obbs"].double()).tolist() if len(det["obbs"]) else []
    lines: dict[int, list[str]] = {c: [] for c in range(len(classes))}
    for poly, score, label in zip(polys, det["scores"].tolist(), det["labels"].tolist(), strict=True):
        lines[int(label)].append(" ".join([image_id, f"{float(score):.6f}", *(f"{v:.2f}" for v in poly)]))
    for c, name in enumerate(classes):
        path = folder / f"Task1_{name}.txt"
        old = path.read_text().splitlines() if path.is_file() else []
        kept = [ln for ln in old if ln.split(" ", 1)[0] != image_id]
        text = "".join(f"{ln}\n" for ln in [*kept, *lines[c]])
        atomic_write(path, lambda tmp, t=text: Path(tmp).write_text(t))
    return folder


def _write_boxes(
    path_out: Path, path_in: Path, det: dict[str, Any], classes: list[str], crs: Any, transform: Any, shape: Any
) -> Path:
    """GeoJSON polygons of the boxes (map coordinates through ``transform`` when there is one)."""
    features = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
        x0, y0, x1, y1 = box
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        features.append(
            _polygon_feature(corners, transform, classes, label, score, {"bbox_px": [float(v) for v in box]})
        )
    text = _feature_collection(path_in, features, crs, transform, shape)
    return atomic_write(path_out, lambda tmp: Path(tmp).write_text(text))


def _mask_geometry(mask: np.ndarray, transform: Any) -> dict[str, Any]:
    """GeoJSON geometry of the outline of a non-empty ``(H, W)`` bool mask.

    Pixel edges, as :func:`rasterio.features.shapes` traces them (4-connected parts; holes
    are interior rings), mapped through ``transform`` when there is one: a ``Polygon``, or a
    ``MultiPolygon`` for a mask of several parts. Its area is the pixel count (times the
    pixel area in map units).
    """
    from rasterio.features import shapes
    from rasterio.transform import Affine

    geo = transform if transform is not None else Affine.identity()
    parts = [
        [[[float(x), float(y)] for x, y in ring] for ring in geom["coordinates"]]
        for geom, _ in shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=geo)
    ]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def _write_instances(
    path_out: Path,
    path_in: Path,
    det: dict[str, Any],
    classes: list[str],
    crs: Any,
    transform: Any,
    shape: Any,
    tiff: bool,
) -> Path:
    """Instance outlines as GeoJSON, plus the instance-id raster and its id → class JSON beside it.

    Args:
        path_out: the GeoJSON file; the raster is ``<stem>_ids.tif`` (``tiff``) or
            ``<stem>_ids.png``, the id table ``<stem>_ids.json``.
        path_in: the input image (named in the files).
        det: ``boxes`` ``(M, 4)`` float32 xyxy pixels, ``scores`` ``(M,)``, ``labels`` ``(M,)``
            int64 in ``[0, K)``, ``masks`` ``(M, H, W)`` bool (any device).
        classes: the ``K`` class names.
        crs: the input's CRS (GeoTIFF) or None.
        transform: the input's affine pixel → map transform, or None (pixel coordinates).
        shape: the image's shape, ``(..., H, W)``.
        tiff: write the id raster as a GeoTIFF (with ``crs`` and ``transform``) rather than a PNG.

    Instances are numbered ``1 … M`` by decreasing score (ties keep their order); an instance
    whose mask is empty (a tiny box thresholded away) is left out. In the raster 0 is
    background and a pixel of several masks takes the highest-scoring instance's id (uint16,
    uint32 beyond 65,535 instances).

    Returns:
        The GeoJSON file.

    Raises:
        ConfigError: if more than 65,535 instances are to go into a PNG.
    """
    scores = det["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    masks = det["masks"].detach()
    boxes, labels = det["boxes"].detach().float().cpu(), det["labels"].detach().cpu()
    height, width = int(shape[-2]), int(shape[-1])
    kept = [int(i) for i in order.tolist() if bool(masks[int(i)].any())]
    if not tiff and len(kept) > np.iinfo(np.uint16).max:
        raise ConfigError(f"{len(kept)} instances do not fit a 16-bit PNG id raster; predict a GeoTIFF instead")
    ids = np.zeros((height, width), dtype=np.uint16 if len(kept) <= np.iinfo(np.uint16).max else np.uint32)
    features: list[dict[str, Any]] = []
    table: dict[str, dict[str, Any]] = {}
    for n, i in enumerate(kept, start=1):
        mask = masks[i].cpu().numpy().astype(bool)
        ids[mask & (ids == 0)] = n  # higher-scoring instances keep their pixels
        label, score = int(labels[i]), float(scores[i])
        bbox = [float(v) for v in boxes[i].tolist()]
        props = {"id": n, "class": classes[label], "label": label, "score": score}
        features.append(
            {
                "type": "Feature",
                "id": n,
                "geometry": _mask_geometry(mask, transform),
                "properties": {**props, "bbox_px": bbox, "area_px": int(mask.sum())},
            }
        )
        table[str(n)] = {k: v for k, v in props.items() if k != "id"}
    raster = path_out.with_name(f"{path_out.stem}_ids{'.tif' if tiff else '.png'}")
    _write_raster(raster, ids, crs if tiff else None, transform if tiff else None, None, None)
    sidecar = path_out.with_name(f"{path_out.stem}_ids.json")
    write_json(sidecar, {"image": str(path_in), "raster": raster.name, "background": 0, "ids": table})
    extra = {"id_raster": raster.name}
    text = _feature_collection(path_in, features, crs, transform, shape, extra)
    return atomic_write(path_out, lambda tmp: Path(tmp).write_text(text))
