"""The typed event stream of a job. Every event is frozen and safe to hand to another thread."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desktop.engine.errors import ErrorKind
from desktop.engine.request import GenerationRequest


@dataclass(frozen=True)
class JobStarted:
    job_id: str
    request: GenerationRequest


@dataclass(frozen=True)
class ModelLoading:
    job_id: str
    model: str


@dataclass(frozen=True)
class ModelLoaded:
    job_id: str
    model: str
    seconds: float
    reused: bool


# What the CLI and the HTTP API say while a model loads (`.format(model=...)`) and for ModelCompiling; the window
# says the same through its translations.
LOADING_TEXT = "Loading {model}…"
COMPILING_TEXT = "Compiling the model (first fast-mode image)…"


@dataclass(frozen=True)
class ModelCompiling:
    """Fast mode is compiling the model for this job's size before its first step (minutes the first
    time, seconds with the compile cache warm): progress shows that instead of a step counter standing still."""

    job_id: str
    model: str


# What the CLI says for PreviewsFitting (the window says the same through its translations).
FITTING_TEXT = "Preparing live previews for this model (once)…"


@dataclass(frozen=True)
class PreviewsFitting:
    """The model's autoencoder has no published preview colours (Sana's DC-AE): they are being fitted from it before
    the first step (seconds on a GPU, some 20 s on a CPU, once per autoencoder ever); progress shows that instead
    of a step counter standing still, and the job can be cancelled meanwhile."""

    job_id: str
    model: str


# What the CLI and the HTTP API say for PromptRewriting (the window says the same through its translations).
REWRITING_TEXT = "Rewriting the prompt (FLUX.3's prompt rewriter)…"


@dataclass(frozen=True)
class PromptRewriting:
    """FLUX.3's prompt rewriter is writing the caption the picture will be made from (seconds to a minute on a GPU)
    before the first step; progress shows that instead of a step counter standing still, and the job can be
    cancelled meanwhile."""

    job_id: str
    model: str


@dataclass(frozen=True)
class StepProgress:
    """Step `step` (1-based) of `total` finished, in pipeline call `batch_index` of the job."""

    job_id: str
    step: int
    total: int
    batch_index: int
    batch_count: int


@dataclass(frozen=True)
class PreviewReady:
    """A small RGB uint8 picture (H, W, 3) of the predicted clean image; an owned copy."""

    job_id: str
    step: int
    total: int
    image: np.ndarray


@dataclass(frozen=True)
class JobWarning:
    job_id: str
    message: str


@dataclass(frozen=True)
class ImageSaved:
    """One image is on disk with its metadata, reported before the job finishes."""

    job_id: str
    path: str
    seed: int
    index: int


@dataclass(frozen=True)
class ImageUnsaved:
    """An image that could not be written (disk full, no permission), kept in memory as PNG bytes
    with its metadata, so the user can save it elsewhere (`desktop.engine.history.save_unsaved`)."""

    job_id: str
    png: bytes
    seed: int
    index: int
    file_name: str
    message: str


@dataclass(frozen=True)
class JobFinished:
    job_id: str
    paths: tuple[str, ...]
    seeds: tuple[int, ...]
    seconds: float


@dataclass(frozen=True)
class JobFailed:
    """`kind` says what went wrong for callers that act on it (an exit status, a retry offer)."""

    job_id: str
    message: str
    kind: ErrorKind
    # The formatted traceback, for the log file (never shown to the user); "" when there is none.
    detail: str = ""


@dataclass(frozen=True)
class JobCancelled:
    job_id: str


Event = (
    JobStarted
    | ModelLoading
    | ModelLoaded
    | ModelCompiling
    | PreviewsFitting
    | PromptRewriting
    | StepProgress
    | PreviewReady
    | JobWarning
    | ImageSaved
    | ImageUnsaved
    | JobFinished
    | JobFailed
    | JobCancelled
)
