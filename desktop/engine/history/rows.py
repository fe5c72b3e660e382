"""The one place an `images` row is built, for an image Marble just wrote and for one found on disk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from desktop.engine.history.records import NewImage, seed_to_sql
from desktop.engine.metadata import ImageMetadata
from desktop.engine.request import GenerationRequest


def image_row(
    path: Path,
    created: float,
    request: GenerationRequest | None,
    *,
    prompt: str,
    negative: str,
    model: str,
    sampler: str,
    source: str,
    model_hash: str | None = None,
    lora_hashes: str = "",
    timings: dict[str, float] | None = None,
    device: str = "",
    job_id: str | None = None,
) -> dict[str, Any]:
    """The `images` columns of one image; the settings columns come from `request`, or stay empty
    (NULL) when the image did not say how it was made."""
    return {
        "path": str(path),
        "created": created,
        "prompt": prompt,
        "negative": negative,
        "model": model,
        "model_hash": model_hash,
        "lora_hashes": lora_hashes,
        "seed": seed_to_sql(request.seed) if request else None,
        "sampler": sampler,
        "steps": request.steps if request else None,
        "cfg": float(request.cfg_scale) if request else None,
        # The image's own size: the hires fix's when it ran (A1111's `Size` stays the first pass's).
        "width": (request.hires_size[0] if request.hires_active else request.width) if request else None,
        "height": (request.hires_size[1] if request.hires_active else request.height) if request else None,
        "request_json": json.dumps(request.to_dict()) if request else None,
        "timings_json": json.dumps(timings or {}),
        "device": device,
        "source": source,
        "job_id": job_id,
    }


def new_image_row(image: NewImage, created: float) -> dict[str, Any]:
    """The row of an image the runner has just written: its request, with the seed it really used."""
    request = replace(image.request, seed=image.seed, model=image.model_name or image.request.model)
    return image_row(
        Path(image.path).resolve(),
        created,
        request,
        prompt=request.prompt,
        negative=request.negative_prompt,
        model=image.model_name,
        sampler=image.sampler or request.sampler,
        source="marble",
        model_hash=image.model_hash,
        lora_hashes=image.lora_hashes,
        timings=image.timings,
        device=image.device,
        job_id=image.job_id,
    )


def found_image_row(path: Path, created: float, metadata: ImageMetadata, job_id: str | None) -> dict[str, Any]:
    """The row of an image found on disk, from its own metadata (ours, A1111's, ComfyUI's, ...);
    `job_id` is the job its file names, if any."""
    request, settings = metadata.request, metadata.settings
    return image_row(
        path,
        created,
        request,
        prompt=metadata.prompt,
        negative=metadata.negative_prompt,
        model=request.model if request else settings.get("Model", ""),
        sampler=settings.get("Sampler", request.sampler if request else ""),
        source=metadata.format,
        model_hash=settings.get("Model hash"),
        lora_hashes=settings.get("Lora hashes", ""),
        job_id=job_id or None,
    )
