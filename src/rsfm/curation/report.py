"""The report of a curation run: counts per rule and per input, contact sheets, settings.

.. versionadded:: 0.3
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from rsfm.curation.rules import DEDUP_RULES, FILE_RULES, QUALITY_RULES

__all__ = ["contact_sheet", "rule_counts", "write_report"]

_CELL = 96


def rule_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Manifest rows per outcome: ``'kept'`` and each rule that excluded at least one row."""
    counts = Counter("kept" if r["rule"] is None else r["rule"] for r in rows)
    order = ["kept", *FILE_RULES, *QUALITY_RULES, *DEDUP_RULES]
    out = {k: counts[k] for k in order if counts.get(k)}
    out.update({k: v for k, v in sorted(counts.items()) if k not in out})
    return out


def contact_sheet(images: list[bytes], captions: list[str], columns: int = 8) -> bytes:
    """A PNG grid of encoded thumbnails with a caption under each.

    Args:
        images: encoded thumbnails (any PIL format), at most ``_CELL`` pixels a side.
        captions: one short text per image.
        columns: images per row.

    Returns:
        The PNG's bytes.
    """
    from PIL import Image, ImageDraw

    n = max(1, len(images))
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    pad, text_h = 4, 12
    sheet = Image.new("RGB", (cols * (_CELL + pad) + pad, rows * (_CELL + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (data, caption) in enumerate(zip(images, captions, strict=True)):
        r, c = divmod(i, cols)
        x, y = pad + c * (_CELL + pad), pad + r * (_CELL + text_h + pad)
        with Image.open(io.BytesIO(data)) as im:
            sheet.paste(im.convert("RGB"), (x, y))
        draw.text((x, y + _CELL), caption[:18], fill=(0, 0, 0))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _examples(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows spread evenly over the list (deterministic)."""
    if len(rows) <= n:
        return rows
    picks = np.linspace(0, len(rows) - 1, n).round().astype(int)
    return [rows[i] for i in picks]


def write_report(
    rows: list[dict[str, Any]],
    inputs: list[Any],
    out: Path,
    settings: Any,
    thumb_of: Callable[[dict[str, Any]], bytes | None],
) -> Path:
    """Write ``report.md`` and ``report/<outcome>.png`` contact sheets into the corpus folder.

    Args:
        rows: the manifest rows (with their ``work/`` references).
        inputs: the run's inputs.
        out: the corpus folder.
        settings: the run's :class:`~rsfm.curation.pipeline.CurationSettings`.
        thumb_of: a row's encoded thumbnail (None for rows without pixels: files excluded whole).

    Returns:
        The path of ``report.md``.
    """
    from rsfm.utils.files import atomic_write

    sheets = out / "report"
    sheets.mkdir(parents=True, exist_ok=True)
    counts = rule_counts(rows)
    total = len(rows)
    names = [r["input"] for r in rows]
    per_input = {name: Counter() for name in dict.fromkeys(names)}
    files_per_rule: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        outcome = "kept" if r["rule"] is None else r["rule"]
        per_input[r["input"]][outcome] += 1
        files_per_rule.setdefault(outcome, set()).add((r["input"], r["source"]))
    lines = [
        "# Curation report",
        "",
        f"{counts.get('kept', 0)} tiles kept of {total} manifest rows "
        f"({sum(1 for r in rows if r['level'] == 'file')} files excluded whole, "
        f"{sum(1 for r in rows if r['level'] == 'tile')} tiles).",
        "",
        "## Rows per outcome",
        "",
        "| outcome | rows | share | files | examples |",
        "|---|---:|---:|---:|---|",
    ]
    n_examples = settings.shards.examples_per_rule
    for outcome, count in counts.items():
        chosen = [r for r in rows if ("kept" if r["rule"] is None else r["rule"]) == outcome]
        with_pixels = [r for r in chosen if r.get("thumb") or r.get("data")]
        link = ""
        if with_pixels and n_examples > 0:
            ex = _examples(with_pixels, n_examples)
            thumbs = [thumb_of(r) for r in ex]
            png = contact_sheet(
                [t for t in thumbs if t is not None],
                [f"{r['id']} {Path(r['source']).stem}" for r, t in zip(ex, thumbs, strict=True) if t is not None],
            )
            atomic_write(sheets / f"{outcome}.png", lambda tmp, png=png: Path(tmp).write_bytes(png))
            link = f"[contact sheet](report/{outcome}.png)"
        elif chosen:
            link = ", ".join(f"`{r['input']}/{r['source']}`" for r in chosen[:3]) + (" …" if len(chosen) > 3 else "")
        lines.append(
            f"| {outcome} | {count} | {100.0 * count / max(total, 1):.1f} % | {len(files_per_rule[outcome])} | {link} |"
        )
    outcomes = list(counts)
    lines += ["", "## Rows per input", "", "| input | " + " | ".join(outcomes) + " |"]
    lines.append("|---|" + "---:|" * len(outcomes))
    for name, c in per_input.items():
        lines.append(f"| {name} | " + " | ".join(str(c.get(o, 0)) for o in outcomes) + " |")
    lines += ["", "## Inputs", ""]
    for spec in inputs:
        lines.append(f"- `{spec.name or Path(spec.root).resolve().name}`: `{spec.root}`")
    lines += ["", "## Settings", "", "```json"]
    import json

    plain = {
        "tiling": asdict(settings.tiling),
        "rules": {k: v for k, v in asdict(settings.rules).items() if k != "custom"}
        | {"custom": [type(r).__qualname__ for r in settings.rules.custom]},
        "dedup": asdict(settings.dedup),
        "shards": asdict(settings.shards),
    }
    lines += [json.dumps(plain, indent=1, default=str), "```", ""]
    text = "\n".join(lines)
    return atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
