"""The history's records as callers see them, and how a database row becomes one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from desktop.engine.errors import InvalidRequest
from desktop.engine.request import GenerationRequest

IMAGE_COLUMNS = (
    "id, path, created, prompt, negative, model, model_hash, lora_hashes, seed, sampler, steps, cfg, "
    "width, height, request_json, timings_json, device, favourite, missing, trash_path, trashed_at, "
    "thumbnail, source, job_id"
)
JOB_COLUMNS = "id, request_json, state, created, updated, images_done, message, pid"


@dataclass(frozen=True)
class ImageRecord:
    """One row of the history, as the panel, the command line and exports see it."""

    id: int
    path: str
    created: float
    prompt: str
    negative: str
    model: str
    model_hash: str | None
    lora_hashes: str
    seed: int | None
    sampler: str
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    request_json: str | None
    timings_json: str
    device: str
    favourite: bool
    missing: bool
    trash_path: str | None
    trashed_at: float | None
    thumbnail: str | None
    source: str
    job_id: str | None

    @property
    def trashed(self) -> bool:
        return self.trashed_at is not None

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}" if self.width and self.height else ""

    @property
    def timings(self) -> dict[str, float]:
        try:
            value = json.loads(self.timings_json or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def request(self) -> GenerationRequest | None:
        """The request that made this image with its concrete seed, or None when the file did not say."""
        if not self.request_json:
            return None
        try:
            return GenerationRequest.from_dict(json.loads(self.request_json))
        except (ValueError, TypeError, InvalidRequest):
            return None

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["request"] = json.loads(self.request_json) if self.request_json else None
        data["timings"] = self.timings
        del data["request_json"], data["timings_json"]
        return data


@dataclass(frozen=True)
class NewImage:
    """What the runner knows about an image it has just written."""

    path: str
    request: GenerationRequest
    seed: int
    model_name: str
    model_hash: str | None = None
    lora_hashes: str = ""
    sampler: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    device: str = ""
    job_id: str | None = None
    created: float | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    request: GenerationRequest
    state: str
    created: float
    updated: float
    images_done: int
    message: str
    pid: int | None

    def remaining_request(self) -> GenerationRequest:
        """The part of the job still to do: whole batches already written are not made again.

        Image k uses seed + k, so skipping the first n batches and adding n * batch_size to the seed
        makes exactly the images the interrupted job would have made next.
        """
        request = self.request
        done_batches = min(self.images_done // request.batch_size, request.batch_count - 1)
        if done_batches <= 0:
            return request
        return replace(
            request,
            seed=request.seed + done_batches * request.batch_size,
            batch_count=request.batch_count - done_batches,
        )


@dataclass(frozen=True)
class HistoryQuery:
    """A filter over the history. `text` is full-text search over the prompts."""

    text: str = ""
    model: str | None = None
    favourites_only: bool = False
    since: float | None = None
    until: float | None = None
    trashed: bool = False
    newest_first: bool = True


@dataclass(frozen=True)
class ReconcileReport:
    indexed: int = 0
    marked_missing: int = 0
    found_again: int = 0
    partials_removed: int = 0
    jobs_interrupted: int = 0
    unreadable: tuple[str, ...] = ()


# SQLite's INTEGER is signed 64-bit, and seeds go to 2**64 - 1 (ComfyUI, Fooocus): the upper half is
# stored as its two's-complement negative. No stored seed is negative otherwise: an image's row holds
# the concrete seed it was made with, never -1 (Random).
_SEED_WRAP = 2**64


def seed_to_sql(seed: int | None) -> int | None:
    return seed - _SEED_WRAP if seed is not None and seed >= 2**63 else seed


def seed_from_sql(value: int | None) -> int | None:
    return value + _SEED_WRAP if value is not None and value < 0 else value


def image_from_row(row: Sequence[Any]) -> ImageRecord:
    """An `images` row, selected as IMAGE_COLUMNS, as a record."""
    values = list(row)
    values[8] = seed_from_sql(values[8])  # seed
    values[17] = bool(values[17])  # favourite
    values[18] = bool(values[18])  # missing
    return ImageRecord(*values)


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A `jobs` row, selected as JOB_COLUMNS, as a record; an unreadable request becomes an empty one."""
    job_id, request_json, state, created, updated, images_done, message, pid = row
    try:
        request = GenerationRequest.from_dict(json.loads(request_json))
    except (ValueError, TypeError, InvalidRequest):
        request = GenerationRequest(prompt="", model="")
    return JobRecord(job_id, request, state, created, updated, images_done, message, pid)
