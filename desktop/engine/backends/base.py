"""The contract between the job runner and whatever produces pixels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np
from PIL import Image

from desktop.engine.jobs import CancelToken
from desktop.engine.request import GenerationRequest


@dataclass(frozen=True)
class ModelInfo:
    """What metadata says about the model: its display name and its AutoV2 hash (or None)."""

    name: str
    path: str
    architecture: str
    hash: str | None


@dataclass(frozen=True)
class AdapterHash:
    """A LoRA or textual-inversion embedding an image was made with: its library name and AutoV3 hash
    (sha256 of the safetensors data after the header, first 12 hex), as A1111 records them."""

    name: str
    autov3: str


@dataclass(frozen=True)
class ControlHash:
    """A control model an image was made with: its library name and A1111's old 8-hex model hash, as the
    ControlNet extension writes `Model: name [hash]`."""

    name: str
    hash: str
    module: str = ""  # the extension's module name when the backend decides it (IP-Adapter: by encoder)


@dataclass(frozen=True)
class VaeHash:
    """The VAE an image was decoded with, when it is not the model's own: its library name and AutoV2
    hash (sha256 of the whole file, first 10 hex), as A1111 writes `VAE hash`."""

    name: str
    autov2: str


class Waiting(Enum):
    """What a job waits for before its first step: fast mode compiling for this size (a ModelCompiling event), or
    preview colours being fitted from the autoencoder (PreviewsFitting), or FLUX.3's prompt rewriter writing the
    caption (PromptRewriting); the runner turns each into its event."""

    COMPILING = "compiling"
    FITTING_PREVIEWS = "fitting previews"
    REWRITING_PROMPT = "rewriting the prompt"


@dataclass(frozen=True)
class StepInfo:
    """One finished denoising step; `preview` is set only on steps that asked for one. With `waiting` set it is not
    a step but what the job waits for before its first one (`step` is 0)."""

    step: int
    total: int
    batch_index: int
    preview: np.ndarray | None
    waiting: Waiting | None = None


@dataclass(frozen=True)
class RefinerHash:
    """The SDXL refiner an image was finished with: its library name and AutoV2 hash (None for a
    diffusers folder, which has no one file to hash), as A1111 writes `Refiner: NAME [hash]`."""

    name: str
    autov2: str | None


@dataclass(frozen=True)
class GeneratedBatch:
    """The images of one pipeline call, in order, with the seed each was made from."""

    images: tuple[Image.Image, ...]
    seeds: tuple[int, ...]
    batch_index: int
    # The A1111 name of the sampler that ran (what `default` resolved to), when it has one.
    sampler_used: str | None = None
    notes: tuple[str, ...] = ()
    # What the images were made with, as facts: metadata.py writes them (`Lora hashes`, `TI hashes`),
    # the history records them; nobody parses them back out of text.
    loras: tuple[AdapterHash, ...] = ()
    embeddings: tuple[AdapterHash, ...] = ()
    vae: VaeHash | None = None  # None: the model's own VAE
    controls: tuple[ControlHash, ...] = ()  # one per request.controls unit, in order
    refiner: RefinerHash | None = None  # None: no refiner pass
    # The model's AutoV2 hash when the load left it to be read beside the steps (a file's first load: its
    # sha256 reads the whole file); None: the load report's stands.
    model_hash: str | None = None
    # The caption FLUX.3's prompt rewriter wrote, which the images were made from (request.rewrite_prompt); None:
    # the request's prompt as it was.
    rewritten_prompt: str | None = None


@dataclass(frozen=True)
class LoadReport:
    model: ModelInfo
    seconds: float
    reused: bool
    device: str
    dtype: str
    notes: tuple[str, ...] = ()


class Backend(Protocol):
    """Loads a model once and turns requests into images on the calling thread."""

    def load(self, request: GenerationRequest) -> LoadReport: ...

    def generate(
        self,
        request: GenerationRequest,
        batch_index: int,
        on_step: Callable[[StepInfo], None],
        cancel: CancelToken,
    ) -> GeneratedBatch: ...

    def unload(self) -> None: ...
