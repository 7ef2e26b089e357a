"""``rsfm predict``: run a fine-tuned task on image files of any size and write the results.

What is written depends on the head's :attr:`~rsfm.models.heads.base.Head.output_kind`:

- ``mask`` (segmentation): a label raster (uint8, class colours as a colour map); a
  georeferenced GeoTIFF input gives a GeoTIFF with the input's CRS and transform, its nodata
  pixels set to 255.
- ``change`` (change detection, two inputs): a 0 / 255 change mask, a GeoTIFF with the before
  image's georeference for a ``.tif`` output.
- ``boxes`` (detection): a GeoJSON ``FeatureCollection`` of box polygons, in the raster's map
  coordinates when the input is georeferenced, else in pixels.
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
from rsfm.utils.errors import ConfigError, DataError
from rsfm.utils.files import atomic_write, write_json

if TYPE_CHECKING:
    from rsfm.tasks.module import DownstreamTask

__all__ = ["predict_files"]

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
        "dtype": "uint8",
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
        output: output file, or an existing folder (a name is derived from the input).
        head: the head to predict with; default the first evaluated one.

    Returns:
        The written file.

    Raises:
        DataError: if an input is missing or the pair's sizes differ.
        ConfigError: on an unknown head, a wrong number of inputs or an unsupported output suffix.
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


def _write_boxes(
    path_out: Path, path_in: Path, det: dict[str, Any], classes: list[str], crs: Any, transform: Any, shape: Any
) -> Path:
    """GeoJSON polygons of the boxes (map coordinates through ``transform`` when there is one)."""
    features = []
    for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
        x0, y0, x1, y1 = box
        ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
        if transform is not None:
            ring = [transform @ xy for xy in ring]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[float(x), float(y)] for x, y in ring]]},
                "properties": {
                    "class": classes[int(label)],
                    "label": int(label),
                    "score": float(score),
                    "bbox_px": [float(v) for v in box],
                },
            }
        )
    collection: dict[str, Any] = {
        "type": "FeatureCollection",
        "name": path_in.stem,
        "coordinates": "map" if transform is not None else "pixel",
        "image_size": [int(shape[-1]), int(shape[-2])],
        "features": features,
    }
    if crs is not None:
        collection["crs"] = {"type": "name", "properties": {"name": crs.to_string()}}
    if transform is not None:
        collection["transform"] = [float(v) for v in list(transform)[:6]]
    text = json.dumps(collection, indent=1)
    return atomic_write(path_out, lambda tmp: Path(tmp).write_text(text))
