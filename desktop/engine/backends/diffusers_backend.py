"""The one module that imports torch, diffusers and transformers.

It is imported on the generation thread after the window is shown (see `desktop.engine.backends.create`)
and owns exactly one pipeline. Nothing here is thread-safe: one thread calls every method.
"""

from __future__ import annotations

import os

# Set before diffusers/transformers/huggingface_hub import: they read these once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_TELEMETRY", "1")

import concurrent.futures  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


class _TorchvisionNotice(logging.Filter):
    """Drops transformers' "`X` requires torchvision (not installed); falling back to `XPil`" notices.

    diffusers' pipelines touch CLIP/SigLIP image processor names, and without torchvision (Marble never
    needs it) transformers 5 warns about each on every start; the fallback is what Marble wants, so the
    notice would only tell the user to install something they do not need. Nothing else is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


class _AttentionsNotice(logging.Filter):
    """Drops transformers' "`sdpa` attention does not support `output_attentions=True`" notice: HiDream-I1's pipeline
    asks its Llama for attention maps it never reads, and the notice would tell the user to switch to a slower
    attention for nothing. Nothing else is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not support `output_attentions=True`" not in record.getMessage()


# On transformers' own loggers, before transformers is imported: the notices come at diffusers' import.
logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionNotice())
logging.getLogger("transformers.integrations.sdpa_attention").addFilter(_AttentionsNotice())
# bitsandbytes (optional; PEFT imports it with the first LoRA once it is installed) asks the Hub, offline, for a
# faster CPU kernel at import and warns twice that it cannot have it; its own kernel runs. Not the user's concern.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import SingleFileComponentError  # noqa: E402
from diffusers.utils.torch_utils import get_module_execution_device  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import SafetensorError  # noqa: E402

from desktop.engine.backends import control_dit, families, flux_control_lora  # noqa: E402
from desktop.engine.backends import families_flux2 as flux2  # noqa: E402
from desktop.engine.backends import families_qwen_edit as qwen_edit  # noqa: E402
from desktop.engine.backends.base import (  # noqa: E402
    AdapterHash,
    ControlHash,
    GeneratedBatch,
    LoadReport,
    ModelInfo,
    StepInfo,
    Waiting,
)
from desktop.engine.backends.compile_cache import use_compile_cache  # noqa: E402
from desktop.engine.backends.control import ControlModels, ControlRun, crop_and_resize  # noqa: E402
from desktop.engine.backends.control import advance as advance_control  # noqa: E402
from desktop.engine.backends.conversion_cache import ConversionCache  # noqa: E402
from desktop.engine.backends.cpu_threads import choose_threads, others_busy_cores, usable_cores  # noqa: E402
from desktop.engine.backends.dit_memory import DESCRIPTIONS as DIT_DESCRIPTIONS  # noqa: E402
from desktop.engine.backends.dit_memory import choose_dit_mode, needs_reload  # noqa: E402
from desktop.engine.backends.dit_memory import fallback_mode as dit_fallback_mode  # noqa: E402
from desktop.engine.backends.dit_prompt_cache import cached_encoding  # noqa: E402
from desktop.engine.backends.encoder_components import Component  # noqa: E402
from desktop.engine.backends.faceid import FaceAnalyser, library_face_analyser  # noqa: E402
from desktop.engine.backends.few_step_schedulers import spaced  # noqa: E402
from desktop.engine.backends.flow_edit import tail_steps  # noqa: E402
from desktop.engine.backends.flux_control_lora import FluxControlLoras  # noqa: E402
from desktop.engine.backends.flux_ip_adapter import FluxIpAdapters, FluxIpRun  # noqa: E402
from desktop.engine.backends.flux_redux import ReduxModels, ReduxPrompt, image_units  # noqa: E402
from desktop.engine.backends.gentle_import import collector_paused  # noqa: E402
from desktop.engine.backends.hires import (  # noqa: E402
    BUILT_IN_UPSCALERS,
    PIXEL_RESAMPLERS,
    canonical_upscaler,
    is_latent,
    upscale_images,
    upscale_latents,
)
from desktop.engine.backends.ip_adapter import IpAdapters  # noqa: E402
from desktop.engine.backends.lora_adapters import LoraAdapters, model_shape  # noqa: E402
from desktop.engine.backends.masked_content import masked_latents  # noqa: E402
from desktop.engine.backends.memory import DESCRIPTIONS, apply_mode, attempts, choose_mode  # noqa: E402
from desktop.engine.backends.preview import (  # noqa: E402
    ColourTable,
    colour_family,
    colour_table,
    has_published_table,
    latents_to_rgb,
)
from desktop.engine.backends.preview_fit import FitStopped, FitWatch, cached_fit, fingerprint  # noqa: E402
from desktop.engine.backends.prompt_cache import PromptCache, PromptKey  # noqa: E402
from desktop.engine.backends.prompt_rewriter import PromptRewriter  # noqa: E402
from desktop.engine.backends.refiner import Refiners  # noqa: E402
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLERS, sampler_for_scheduler  # noqa: E402
from desktop.engine.backends.sde_noise import use_brownian_noise  # noqa: E402
from desktop.engine.backends.tiling import circular_padding  # noqa: E402
from desktop.engine.backends.upscale import load_upscaler, upscale  # noqa: E402
from desktop.engine.backends.vae_swap import VaeSwitcher  # noqa: E402
from desktop.engine.backends.variation import initial_noise  # noqa: E402
from desktop.engine.errors import Cancelled, DeviceError, InvalidRequest, MarbleError, ModelError, OutOfMemory  # noqa: E402
from desktop.engine.imaging import (  # noqa: E402
    EditPlan,
    fill_masked,
    finish_edit,
    load_mask,
    load_source,
    mask_is_empty,
    padded_side,
    plan_edit,
    to_working,
)
from desktop.engine.jobs import CancelToken  # noqa: E402
from desktop.engine.library.catalog import HashCache, ModelCatalog, ModelEntry  # noqa: E402
from desktop.engine.library.checkpoint import (  # noqa: E402
    ArchitectureInfo,
    check_model_folder,
    detect_architecture,
    detect_diffusers_folder,
    dit_architecture,
    prediction_scheduler_overrides,
    read_safetensors_header,
    sniff_file_type,
    with_variant,
)
from desktop.engine.library.control import BUILT_IN, controlnet_family, is_built_in  # noqa: E402
from desktop.engine.library.dit import detect_gguf, reference_image_limit  # noqa: E402
from desktop.engine.library.dit_flux2 import FLUX2  # noqa: E402
from desktop.engine.library.dit_flux3 import FLUX3  # noqa: E402
from desktop.engine.library.dit_qwen_zimage import QWEN_IMAGE_21  # noqa: E402
from desktop.engine.library.dit_sana import SPRINT as SANA_SPRINT  # noqa: E402
from desktop.engine.library.encoder import encoder_names  # noqa: E402
from desktop.engine.library.few_step import PRESETS as FEW_STEP_PRESETS  # noqa: E402
from desktop.engine.library.index import Library  # noqa: E402
from desktop.engine.library.lora import AdapterCatalog, prompt_with_lora_tags, split_lora_tags  # noqa: E402
from desktop.engine.paths import AppPaths  # noqa: E402
from desktop.engine.prompt_schedule import PromptPlan, plan_prompts  # noqa: E402
from desktop.engine.prompt_syntax import (  # noqa: E402
    Chunk,
    PromptPiece,
    needs_chunked_encoding,
    pack_prompt,
    prompt_pieces,
)
from desktop.engine.request import MAX_SIDE, ControlUnit, GenerationRequest, hires_target, upscale_target  # noqa: E402
from desktop.engine.resources import PAD_ZERO_TOKEN, TOKENIZER_COMPONENTS, Resources, pads_with_zero  # noqa: E402
from desktop.engine.terminal_text import library_error  # noqa: E402
from desktop.engine.upscale_tiles import Box, blend_tiles, tile_boxes  # noqa: E402

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_CONVERTED_SCHEMA = 2  # 1: converted weights as a diffusers folder; 2: a key map over the file
# What loading a user's files can raise from inside diffusers, transformers and safetensors: a model error.
_LOAD_ERRORS = (
    OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, SafetensorError, SingleFileComponentError
)


class _OutOfMemoryRaised(Exception):
    """The device ran out of memory inside the pipeline; handled outside the except block."""


class _CompileFailed(Exception):
    """torch.compile could not build the fast-mode UNet (no compiler, no Triton); handled by running eagerly."""


class _CancelRequested(Exception):
    """Raised inside the step callback to leave the pipeline at once, skipping the VAE decode."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype: torch.dtype

    @property
    def precision(self) -> str:
        return next(name for name, value in _DTYPES.items() if value == self.dtype)


def pick_device(device: str, precision: str) -> DeviceChoice:
    """Resolve `auto` and check that what was asked for exists on this machine."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    elif device == "cuda" and not cuda:
        build = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
        raise DeviceError(
            f"CUDA was requested, but no CUDA GPU is available (torch {torch.__version__} is built {build}). "
            "Use --device cpu or auto."
        )
    elif device == "mps" and not mps:
        raise DeviceError("MPS (Apple GPU) was requested, but it is not available here. Use --device cpu or auto.")
    if precision == "auto":
        precision = "fp32" if device == "cpu" else "fp16"
    if device == "cpu" and precision == "fp16":
        raise DeviceError("fp16 is not supported on the CPU. Use --precision fp32 (or bf16).")
    if device == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeviceError("This GPU does not support bf16. Use --precision fp16.")
    return DeviceChoice(device, _DTYPES[precision])


@dataclass(frozen=True)
class _LoadKey:
    path: str
    config: str | None
    device: str
    dtype: str
    fast: bool  # fast mode compiles the loaded UNet in place, so switching it means loading again
    text_encoders: str | None = None  # the folder a transformer-only DiT file takes its other parts from
    component_vae: str | None = None  # the library VAE built in at load, with text encoders from the library
    tokenizer_folder: str | None = None  # a Qwen-Image / Z-Image file's tokenizer, with a library encoder
    variant: str = ""  # the variant the user chose for the library's file (LibraryRecord.chosen_variant)


class DiffusersBackend:
    """Loads SD 1.x / 2.x / SDXL pipelines offline and runs them with previews and cancel."""

    def __init__(
        self,
        paths: AppPaths,
        resources: Resources,
        catalog: ModelCatalog,
        preview_every: int = 1,
        loras: AdapterCatalog | None = None,
        cpu_threads: int = 0,
        busy_cores: Callable[[], float | None] = others_busy_cores,
        tokenizer_folder: str = "",
        face_analyser: Callable[[], FaceAnalyser] | None = None,
        prompt_rewriter: str = "",
        rewriter: PromptRewriter | None = None,
    ) -> None:
        self._paths = paths
        # The Settings' tokenizer folder: a request that names none (the window's) uses it.
        self._tokenizer_folder = tokenizer_folder
        # FLUX.3's prompt rewriter: its folder (the Settings' or --prompt-rewriter's), loaded on first use.
        self._rewriter_folder = prompt_rewriter
        self._rewriter = rewriter or PromptRewriter()
        # 0: each CPU job sizes torch's thread pool to the cores other processes leave free.
        self._cpu_threads = max(0, cpu_threads)
        self._busy_cores = busy_cores
        self._default_threads = torch.get_num_threads()
        self._resources = resources
        self._catalog = catalog
        self._preview_every = max(0, preview_every)
        self._hashes = HashCache(paths.cache / "hashes.json")
        self._loras = LoraAdapters(
            loras or AdapterCatalog(paths.loras), embeddings=AdapterCatalog(paths.embeddings), rename_sgm=_rename_sgm
        )
        self._controls = ControlModels(
            AdapterCatalog(paths.controls, "control model", "controls"), own_weights=self._loras.own_weights
        )
        controls = AdapterCatalog(paths.controls, "control model", "controls")
        # FaceID units' face analyser; by default the seam that will build it from the library's face models.
        self._ip_adapters = IpAdapters(controls, face_analyser or library_face_analyser(controls))
        self._redux = ReduxModels(controls)  # Flux.1's image prompt (flux_redux.py)
        self._flux_ip = FluxIpAdapters(controls)  # XLabs' Flux.1 IP-Adapter (flux_ip_adapter.py)
        self._control_loras = FluxControlLoras(controls)  # BFL's Canny / Depth LoRAs (flux_control_lora.py)
        self._upscalers = AdapterCatalog(paths.upscalers, "upscaler", "upscalers")
        self._vaes = VaeSwitcher(AdapterCatalog(paths.vaes, "VAE", "vaes"), _convert_ldm_vae, self._hashes.autov2)
        self._conversions = ConversionCache()
        self._refiners = Refiners(catalog, self._hashes, resources, self._conversions, self._converted_folder)
        self._pipe: Any = None
        self._key: _LoadKey | None = None
        self._model: ModelInfo | None = None
        # The loaded file's AutoV2 hash while it is still being read (a file's first load): the steps run
        # meanwhile, and the first batch after it is done carries it (GeneratedBatch.model_hash).
        self._hash_pending: concurrent.futures.Future[str] | None = None
        self._family = "sd1"
        self._dit: Any = None  # DitInfo of a loaded Flux/SD3 model (backends/families.py), else None
        self._fitted_colours: ColourTable | None = None  # the loaded model's preview table, when fitted
        self._autoencoder_key: str | None = None  # its autoencoder's fingerprint, when its table must be fitted
        self._dit_mode: str | None = None  # its memory mode (dit_memory.py); None: as loaded
        self._default_scheduler: Any = None
        self._notes: list[str] = []
        self._inpaint_model = False
        self._memory_mode = "full"
        # Image-to-image and inpainting pipelines made from the loaded one with from_pipe: same weights.
        self._pipes: dict[str, Any] = {}
        # The shapes fast mode's compiled UNet has run at: a new one compiles (dynamo recompiles per shape).
        self._compiled_shapes: set[tuple[Any, ...]] = set()
        # The last jobs' prompt encodings (prompt_cache.py); `_loads` tells one load's from the next's.
        self._prompts = PromptCache()
        self._loads = 0
        self._adapters_used: tuple[tuple[AdapterHash, ...], tuple[AdapterHash, ...]] = ((), ())
        # Progress comes from our step callback; loaders' tqdm bars would only litter stderr.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()

    # ----------------------------------------------------------------------------------- loading

    def load(self, request: GenerationRequest) -> LoadReport:
        started = time.perf_counter()
        entry = self._catalog.resolve(request.model)
        choice = pick_device(request.device, request.precision)
        key = _LoadKey(
            str(entry.path), request.model_config, choice.device, str(choice.dtype), request.fast_mode,
            request.text_encoders, request.vae if encoder_names(request.text_encoders or "") else None,
            request.tokenizer_folder, Library(self._paths).chosen_variant_of(entry.path),
        )  # fmt: skip
        if self._pipe is not None and key == self._key:
            assert self._model is not None
            if self._inpaint_model:
                _refuse_inpaint_only(self._model.name, request.mode)
            return LoadReport(self._model, time.perf_counter() - started, True, choice.device, choice.precision)
        self.unload()
        self._notes = []
        try:
            with collector_paused():
                dit = self._load_dit(entry, request, choice, key.variant)
                if dit is not None:
                    pipe, arch, hashing = dit
                else:
                    pipe, arch, hashing = self._load_entry(entry, request.model_config, choice, request.mode)
        except torch.cuda.OutOfMemoryError:
            oom = True
        else:
            oom = False
        if oom:
            # Free outside the except block: the traceback would otherwise keep the tensors alive.
            _free_memory()
            raise OutOfMemory(f"Not enough {choice.device.upper()} memory to load {entry.name}.")
        pipe.set_progress_bar_config(disable=True)
        _expose_text_model(pipe)
        self._dit = arch.dit
        if request.fast_mode and arch.dit is None:
            # Before the first compile: a restarted app then finds the kernels it built last time.
            use_compile_cache(self._paths.compile_cache)
            _make_fast(pipe)
            self._compiled_shapes = set()
            self._notes.append(
                "Fast mode: the first image compiles the UNet, which takes a while; later ones run faster."
            )
        self._pipe = pipe
        self._key = key
        self._loads += 1
        self._prompts.clear()
        self._family = arch.family
        self._fitted_colours = None
        # Read while every weight is still in memory (a memory mode may move them off before the first job).
        self._autoencoder_key = fingerprint(pipe.vae) if not has_published_table(self._colour_family) else None
        self._inpaint_model = arch.inpaint
        self._default_scheduler = with_prediction_overrides(pipe.scheduler, arch)
        self._hash_pending = hashing
        self._model = ModelInfo(entry.name, str(entry.path), arch.config_name, self._model_hash())
        return LoadReport(
            self._model, time.perf_counter() - started, False, choice.device, choice.precision, tuple(self._notes)
        )

    def wait_for_caches(self) -> None:
        """Nothing to wait for: a converted file's key map is written during its load (conversion_cache.py).
        Kept for callers that wait before exiting."""

    def unload(self) -> None:
        self._rewriter.unload()
        if self._pipe is None:
            return
        self._pipe = None
        self._key = None
        self._model = None
        self._hash_pending = None
        self._loras.forget()
        self._vaes.forget()
        self._controls.forget()
        self._ip_adapters.forget()
        self._redux.forget()
        self._flux_ip.forget()
        self._control_loras.forget()
        self._refiners.forget()
        self._pipes.clear()
        self._memory_mode = "full"
        self._dit_mode = None
        self._default_scheduler = None
        _free_memory()

    def _load_dit(
        self, entry: ModelEntry, request: GenerationRequest, choice: DeviceChoice, variant: str = ""
    ) -> tuple[Any, ArchitectureInfo, concurrent.futures.Future[str] | None] | None:
        """A Flux / SD3 model, detected from its tensors (as `variant` when the user chose one for its file), and its
        file's hash being read (`_in_background`); None for the UNet families."""
        if entry.is_folder:
            arch = detect_diffusers_folder(entry.path, name=entry.name)
            if arch.dit is None:
                return None
            check_model_folder(entry.path, name=entry.name)
            hashing = None
        else:
            kind = sniff_file_type(entry.path)
            if kind == "gguf":
                arch = dit_architecture(detect_gguf(entry.path))
            elif kind == "safetensors":
                arch = detect_architecture(read_safetensors_header(entry.path), name=entry.path.name)
                if arch.dit is None:
                    return None
            else:
                return None
            # A 12B Flux file is 24 GB: its hash would hold the first step back some 15 s; read beside the load.
            hashing = self._hash_of(entry.path)
        parts = self._library_parts(request)
        text_encoders = Path(request.text_encoders).expanduser() if request.text_encoders and not parts else None
        arch = families.with_components_variant(with_variant(arch, variant), text_encoders)
        _refuse_dit_edit(entry.name, arch.dit, request.mode)
        _refuse_references(entry.name, arch.dit, request)
        _refuse_dit_controls(arch.dit, request)  # before a load of minutes, not after it
        if arch.inpaint and request.mode == "txt2img":
            raise ModelError(
                f"{entry.name} is a {arch.label} model: it edits a source image. Pick a regular model for "
                "text-to-image, or give it a source image (and a mask) to work on."
            )
        config = Path(request.model_config).expanduser() if request.model_config else None
        name = entry.path.name if not entry.is_folder else entry.name
        tokenizers = request.tokenizer_folder or self._tokenizer_folder
        pipe = families.load_pipeline(
            entry.path, arch, name=name, dtype=choice.dtype, resources=self._resources, config_folder=config,
            text_encoders=text_encoders, library_parts=parts,
            tokenizer_folder=Path(tokenizers).expanduser() if tokenizers else None,
        )  # fmt: skip
        # On CUDA the weights stay in RAM until the first job's memory mode puts them where they run: a
        # 12B Flux would not fit a 12-24 GB card whole.
        return (pipe if choice.device == "cuda" else pipe.to(choice.device)), arch, hashing

    def _hash_of(self, path: Path) -> concurrent.futures.Future[str]:
        """The file's AutoV2 hash: the one the library took while copying it in, when it holds the file; else
        read on a thread of its own (remembered in the hash cache for later loads)."""
        known = self._library_autov2(path)
        if known is None:
            return _in_background(self._hashes.autov2, path)
        done: concurrent.futures.Future[str] = concurrent.futures.Future()
        done.set_result(known)
        return done

    def _library_autov2(self, path: Path) -> str | None:
        try:
            return Library(self._paths).known_autov2(path)
        except (MarbleError, OSError):
            return None  # an unreadable index only costs reading the file once more

    def _library_parts(self, request: GenerationRequest) -> families.LibraryParts | None:
        """Text encoders (and the VAE) a request names from the library; None when it names a folder or none."""
        names = encoder_names(request.text_encoders or "")
        if not names:
            return None
        library = Library(self._paths)
        vae = library.get("vae", request.vae.strip()) if request.vae.strip() else None
        if vae is None:
            # Forge's `Module N` list holds the VAE among the encoders: a name only the VAE library has is it.
            vae = next((v for n in names if not library.find("encoder", n) and (v := library.find("vae", n))), None)
            names = tuple(n for n in names if vae is None or n.casefold() != vae.name.casefold())
        encoders = tuple(Component(r.name, library.path_of(r)) for r in (library.get("encoder", n) for n in names))
        return families.LibraryParts(
            encoders, Component(vae.name, library.path_of(vae)) if vae else None, _convert_ldm_vae
        )

    def _load_entry(
        self, entry: ModelEntry, config: str | None, choice: DeviceChoice, mode: str = "txt2img"
    ) -> tuple[Any, ArchitectureInfo, concurrent.futures.Future[str] | None]:
        if entry.is_folder:
            arch = detect_diffusers_folder(entry.path, name=entry.name)
            _refuse_refiner(entry.name, arch)
            # Pickled weights are refused by their bytes; from_pretrained reads safetensors only anyway.
            check_model_folder(entry.path, name=entry.name)
            if arch.inpaint:
                _refuse_inpaint_only(entry.name, mode)
            pipe = self._from_pretrained(arch, entry.path, choice.dtype, entry.name)
            return pipe.to(choice.device), arch, None
        kind = sniff_file_type(entry.path)
        if kind != "safetensors":
            raise ModelError(_not_safetensors_message(entry.path, kind))
        header = read_safetensors_header(entry.path)
        arch = detect_architecture(header, name=entry.path.name)
        _refuse_refiner(entry.name, arch)
        if arch.inpaint:
            _refuse_inpaint_only(entry.name, mode)
        # The AutoV2 hash reads the whole file (2.7 s for a 4.3 GB one the first time, then remembered): on its
        # own thread it overlaps the conversion, which reads the same pages (hashlib releases the GIL), and
        # the first steps; the first batch finished after it carries it (`_model_hash`).
        hashing = self._hash_of(entry.path)
        config_folder = Path(config).expanduser() if config else self._resources.config_folder(arch.config_name)
        if not (config_folder / "model_index.json").is_file():
            raise ModelError(f"The config folder {config_folder} has no model_index.json.")
        converted = self._converted_folder(entry.path, config_folder, arch.config_name)
        modules = self._conversions.load(converted, entry.path, choice.dtype)
        if modules is not None:
            pipe = self._from_pretrained(arch, converted, choice.dtype, entry.name, modules)
        else:
            # Later starts build the pipeline over the file's own bytes from the key map written here (the
            # same pixels: tests/engine/test_conversion_cache.py).
            pipe = self._convert_single_file(entry.path, config_folder, arch, header_dtype(header))
            note = self._conversions.save(pipe, converted, entry.path)
            self._notes.append(
                note
                or f"{entry.path.name} is converted on its first use; a map of its converted weights is saved "
                f"in {converted.parent}, so later starts load it faster."
            )
            if pipe.dtype != choice.dtype:
                pipe = pipe.to(dtype=choice.dtype)
        return pipe.to(choice.device), arch, hashing

    def _from_pretrained(
        self, arch: ArchitectureInfo, folder: Path, dtype: torch.dtype, name: str, modules: dict[str, Any] | None = None
    ) -> Any:
        """The pipeline in `folder`; `modules` are components built already (a converted file's, from its key
        map), which the folder then has no weights for."""
        cls = _pipeline_class(arch)
        try:
            # use_safetensors=True: a component without .safetensors weights is an error, never a pickle load.
            return cls.from_pretrained(
                str(folder), dtype=dtype, local_files_only=True, use_safetensors=True, **_extra_kwargs(cls),
                **self._shared_tokenizers(folder, arch), **(modules or {}),
            )
        except _LOAD_ERRORS as error:
            raise ModelError(f"Could not load the model {name!r} from {folder}: {library_error(error)}") from error

    def _converted_folder(self, path: Path, config_folder: Path, config_name: str) -> Path:
        """The converted-model cache entry of the single file `path` converted with `config_folder`."""
        stat = path.stat()
        identity = json.dumps(
            [str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(config_folder.resolve()),
             config_name, diffusers.__version__, _CONVERTED_SCHEMA]
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return self._paths.converted_models / f"{path.stem}-{digest}"

    def _convert_single_file(self, path: Path, config_folder: Path, arch: ArchitectureInfo, dtype: torch.dtype) -> Any:
        cls = _pipeline_class(arch)
        try:
            with self._safetensors_named(path) as readable:
                return cls.from_single_file(
                    str(readable), config=str(config_folder), local_files_only=True, dtype=dtype,
                    **_extra_kwargs(cls), **self._shared_tokenizers(config_folder, arch),
                )
        except SingleFileComponentError as error:
            raise ModelError(
                f"{path.name} looks like {arch.label} but lacks some of its parts ({library_error(error)}). Get the "
                "complete checkpoint."
            ) from error
        except _LOAD_ERRORS as error:
            raise ModelError(
                f"{path.name} looks like {arch.family.upper()} but its tensors do not fit the "
                f"{arch.config_name} layout: {library_error(error)}. If it has unusual dimensions, pass a "
                "matching diffusers config folder (--config)."
            ) from error

    def _shared_tokenizers(self, folder: Path, arch: ArchitectureInfo) -> dict[str, Any]:
        return shared_tokenizers(self._resources, folder, arch.family)

    @contextlib.contextmanager
    def _safetensors_named(self, path: Path) -> Iterator[Path]:
        """`path` under a name ending in .safetensors: diffusers picks its reader by the name, and any other
        name (a safetensors file called .ckpt) would go through torch.load. The bytes were sniffed already."""
        if path.name.endswith(".safetensors"):
            yield path
            return
        self._paths.cache.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".single-file-", dir=self._paths.cache))
        alias = folder / "checkpoint.safetensors"
        try:
            try:
                alias.symlink_to(path.resolve())
            except OSError:  # Windows without the symlink right: a hard link, else a copy
                try:
                    os.link(path, alias)
                except OSError:
                    shutil.copyfile(path, alias)
            yield alias
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -------------------------------------------------------------------------------- generation

    def generate(
        self,
        request: GenerationRequest,
        batch_index: int,
        on_step: Callable[[StepInfo], None],
        cancel: CancelToken,
    ) -> GeneratedBatch:
        if request.upscale_job and not request.sd_upscale:
            return self._upscale_job(request, batch_index, on_step, cancel)  # no model: none of its hash
        make = self._upscale_job if request.upscale_job else self._generate_batch
        rewritten = self._rewritten_prompt(request, batch_index, on_step, cancel) if request.rewrite_prompt else None
        if rewritten is not None:
            request = request.with_rewritten_prompt(rewritten)
        batch = make(request, batch_index, on_step, cancel)
        model_hash = self._model_hash(wait=True)
        return replace(batch, model_hash=model_hash or batch.model_hash, rewritten_prompt=rewritten)

    def _rewritten_prompt(
        self, request: GenerationRequest, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken
    ) -> str:
        """The prompt as FLUX.3's rewriter expands it (prompt_rewriter.py), from the reference pictures when there
        are some, its `<lora:...>` tags kept after the caption, so the caption is what the encoder reads and the
        LoRAs still apply."""
        if self._pipe is None:
            self.load(request)
        if self._dit is None or self._dit.family != FLUX3:
            label = self._dit.label if self._dit is not None else "Stable Diffusion"
            raise InvalidRequest(f"The prompt rewriter is FLUX.3's; {label} models read the prompt as written. "
                                 "Turn rewriting off for this model.")  # fmt: skip
        if not self._rewriter_folder:
            raise InvalidRequest("No prompt rewriter is set: choose its folder in Settings (FLUX.3 prompt rewriter) "
                                 "or pass --prompt-rewriter FOLDER.")  # fmt: skip
        text, tags = split_lora_tags(request.prompt)
        if not text.strip():
            raise InvalidRequest("The prompt is empty: the prompt rewriter needs a request to expand.")
        on_step(StepInfo(0, request.steps, batch_index, None, Waiting.REWRITING_PROMPT))
        assert self._key is not None
        dtype = getattr(torch, self._key.dtype.removeprefix("torch."))  # the job's, not fp8 storage's
        references = [load_source(path, "The reference image") for path in request.reference_images]
        caption = self._rewriter.rewrite(Path(self._rewriter_folder).expanduser(), text, request.width,
                                         request.height, self._key.device, dtype, cancelled=lambda: cancel.cancelled,
                                         references=references, boxes=request.layout_boxes)  # fmt: skip
        return prompt_with_lora_tags(caption, tags)

    @property
    def _colour_family(self) -> str:
        return colour_family(self._family, self._dit.variant if self._dit is not None else "")

    def _colours(
        self, every: int, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken
    ) -> ColourTable:
        """The preview's colour table for the loaded model: its autoencoder's published one (preview.py), or for one
        without (Sana's DC-AE) a table fitted from it (preview_fit.py) the first time a job shows previews. A fit
        says so in the progress first (some 20 s on a CPU) and raises Cancelled when the job is cancelled meanwhile."""
        family = self._colour_family
        if self._autoencoder_key is None or not every or self._pipe is None:
            return colour_table(family)
        if self._fitted_colours is None:
            starting = functools.partial(on_step, StepInfo(0, 0, batch_index, None, Waiting.FITTING_PREVIEWS))
            watch = FitWatch(starting, lambda: cancel.cancelled)
            self._fitted_colours = self._fit_colours(self._pipe, family, self._autoencoder_key, watch)
        return self._fitted_colours

    def _fit_colours(self, pipe: Any, family: str, key: str, watch: FitWatch) -> ColourTable:
        vae = pipe.vae
        try:
            table = cached_fit(vae, pipe.vae_scale_factor, vae.config.scaling_factor, pipe._execution_device,
                               self._paths.preview_tables, key, watch)  # fmt: skip
        except FitStopped as stopped:
            raise Cancelled("Cancelled while the live previews were being prepared.") from stopped
        except (RuntimeError, ValueError, AttributeError) as error:  # out of memory included: previews only
            log.warning("Could not fit preview colours from %s's autoencoder: %s", family, error)
            return colour_table(family)
        # Sana Sprint's sampler (SCM) estimates the clean latents times its sigma_data.
        sigma_data = pipe.scheduler.config.get("sigma_data")
        return table.scaled(sigma_data) if sigma_data else table

    def _model_hash(self, wait: bool = False) -> str | None:
        """The loaded file's AutoV2 hash: None for a folder, or while it is still being read unless `wait`;
        None too when the file could not be read through (the job does not fail for its metadata)."""
        pending = self._hash_pending
        if pending is None:
            return self._model.hash if self._model is not None else None
        if not wait and not pending.done():
            return None
        self._hash_pending = None
        try:
            value = pending.result()
        except Exception as error:  # noqa: BLE001 - only the metadata's hash is lost: the images are made
            log.warning("The model's hash could not be read: %s", error)
            return None
        if self._model is not None:
            self._model = replace(self._model, hash=value)
        return value

    def _generate_batch(
        self,
        request: GenerationRequest,
        batch_index: int,
        on_step: Callable[[StepInfo], None],
        cancel: CancelToken,
    ) -> GeneratedBatch:
        if self._pipe is None:
            self.load(request)
        if cancel.cancelled:
            raise Cancelled("Cancelled before the first step.")
        if batch_index == 0 and (self._key is None or self._key.device == "cpu"):
            self._set_cpu_threads()
        _refuse_references(self._model.name if self._model else "the model", self._dit, request)
        if self._dit is not None:
            return self._generate_dit(request, batch_index, on_step, cancel)  # its refusals: _refuse_dit_controls
        _refuse_built_in(None, request)
        # LoRAs from the request and the prompt's <lora:...> tags; the encoder gets the prompt without tags.
        lora_plan = self._loras.apply(
            self._pipe, request, model_shape(self._pipe, self._family), self._model.name if self._model else ""
        )
        request = lora_plan.request
        self._adapters_used = (lora_plan.loras, lora_plan.embeddings)
        vae = self._vaes.apply(self._pipe, request.vae, self._model.name if self._model else "the model")
        seeds = tuple(request.seed_for(batch_index, k) for k in range(request.batch_size))
        plan = _edit_plan(request) if request.mode != "txt2img" else None
        if plan is not None and (request.strength <= 0 or (plan.alpha is not None and mask_is_empty(plan.alpha))):
            # Nothing to denoise: the source itself is the exact answer (no VAE round trip).
            note = ("The mask is empty, so nothing was repainted.",) if request.strength > 0 else ()
            images = tuple(plan.source.copy() for _ in seeds)
            return GeneratedBatch(
                images, seeds, batch_index, self._sampler_name(request), note, lora_plan.loras, lora_plan.embeddings,
                vae,
            )
        if request.refiner and (self._family != "sdxl" or plan is not None):
            raise InvalidRequest("The refiner finishes SDXL text-to-image jobs only: choose an SDXL model.")
        refiner_used = self._refiners.used(request)
        # The refiner is loaded (on the CPU) before the mode is chosen, as the card must hold both models, and
        # before the control units are prepared, which only the attempts below close again.
        refiner = self._refiners.pipe(request.refiner, self._pipe.dtype) if request.refiner else None
        pipe = self._pipe_for(request.mode, plan)
        control = self._controls.prepare(self._pipe, pipe, request, plan)
        if control is not None:
            pipe = control.pipe
        control = self._ip_adapters.prepare(pipe, request, control)
        device = self._key.device if self._key else "cpu"
        width, height = request.hires_size if request.hires_active else (request.width, request.height)
        mode = choose_mode(request.memory_mode, device, width, height, *_memory_budget(pipe, device, refiner))
        run_notes: list[str] = []
        if request.varies_noise and plan is not None:
            run_notes.append(_VARIATION_IGNORED)
        if request.hires_fix and plan is not None:
            run_notes.append("The hires fix applies to text-to-image only (as in A1111); it was ignored.")
        shape = (request.mode, request.width, request.height, request.batch_size, request.cfg_scale > 1)
        if _is_compiled(self._pipe.unet) and shape not in self._compiled_shapes:
            # The first step waits for the compile: say so, rather than leave the step counter standing.
            on_step(StepInfo(0, request.steps, batch_index, None, Waiting.COMPILING))
        run = functools.partial(
            self._run_pipeline, pipe, request, plan, seeds, batch_index, on_step, cancel, control
        )
        exhausted = False
        try:
            for attempt in attempts(mode, device):
                if attempt.reason:
                    run_notes.append(attempt.reason)
                self._apply_memory_mode(pipe, attempt.mode)
                try:
                    result = _eager_if_compile_fails(run, pipe, run_notes)
                    break
                except _OutOfMemoryRaised:
                    pass
                # Recover outside the except block, so the traceback no longer pins the tensors.
                _free_memory()
            else:
                exhausted = True
        finally:
            if control is not None:
                control.close()
        if exhausted:
            raise OutOfMemory(
                f"The {device} ran out of memory at {request.width}x{request.height}, batch size "
                f"{request.batch_size}, even with {DESCRIPTIONS[attempt.mode]}. Try a smaller size or batch, or "
                "close other programs using the GPU."
            )
        if result is None:
            raise Cancelled("Cancelled.")
        if _is_compiled(self._pipe.unet):
            self._compiled_shapes.add(shape)
        first = lora_plan.notes if batch_index == 0 else ()
        notes = (*run_notes, *first)
        images = tuple(result.images if plan is None else (finish_edit(plan, image) for image in result.images))
        return GeneratedBatch(
            images, seeds, batch_index, self._sampler_name(request), notes, lora_plan.loras, lora_plan.embeddings, vae,
            control.hashes if control is not None else (), refiner=refiner_used,
        )

    def _upscale_job(
        self, request: GenerationRequest, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken
    ) -> GeneratedBatch:
        """An upscale of `request.init_image` (A1111's extras tab), then for SD upscale image-to-image
        over overlapping tiles of the upscaled image, blended (desktop.engine.upscale_tiles)."""
        assert request.init_image is not None  # validate() makes sure
        source = load_source(request.init_image)
        target = upscale_target(source.size, request.upscale_by, request.sd_upscale)
        if max(target) > MAX_SIDE or min(target) < 8:
            raise InvalidRequest(
                f"Upscaling {source.width}x{source.height} by {request.upscale_by:g} makes {target[0]}x{target[1]}: "
                f"keep both sides from 8 to {MAX_SIDE} pixels."
            )
        seed = request.seed_for(batch_index, 0)
        # SD upscale counts its progress over the tiles it denoises; a plain one over the upscaler's tiles.
        upscaled = self._upscale_pixels(
            source, target, request, cancel, batch_index, None if request.sd_upscale else on_step
        )
        if not request.sd_upscale:
            return GeneratedBatch((upscaled,), (seed,), batch_index)
        if self._pipe is None:
            self.load(request)
        if self._dit is not None:
            raise InvalidRequest(f"SD upscale runs with SD 1.x and SDXL models, not {self._dit.label}.")
        if batch_index == 0 and (self._key is None or self._key.device == "cpu"):
            self._set_cpu_threads()
        lora_plan = self._loras.apply(
            self._pipe, request, model_shape(self._pipe, self._family), self._model.name if self._model else ""
        )
        request = lora_plan.request
        self._adapters_used = (lora_plan.loras, lora_plan.embeddings)
        vae = self._vaes.apply(self._pipe, request.vae, self._model.name if self._model else "the model")
        pipe = self._pipe_for("img2img", None)
        boxes = tile_boxes(target, request.sd_upscale_tile, request.sd_upscale_overlap)
        # The job's memory mode and out-of-memory fallback, as for a generation, sized by one tile: each pass
        # denoises and decodes one tile. A retry runs every tile again, the progress from the start.
        device = self._key.device if self._key else "cpu"
        tile_w, tile_h = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
        mode = choose_mode(request.memory_mode, device, tile_w, tile_h, *_memory_budget(pipe, device))
        notes: list[str] = []
        for attempt in attempts(mode, device):
            if attempt.reason:
                notes.append(attempt.reason)
            self._apply_memory_mode(pipe, attempt.mode)
            try:
                tiles = self._denoise_tiles(pipe, request, upscaled, boxes, seed, batch_index, on_step, cancel)
                break
            except _OutOfMemoryRaised:
                pass
            _free_memory()  # outside the except block, so the traceback no longer pins the tensors
        else:
            raise OutOfMemory(
                f"The {device} ran out of memory on SD upscale's {tile_w}x{tile_h} tiles, even with "
                f"{DESCRIPTIONS[attempt.mode]}. Try a smaller SD upscale tile, or close other programs using the GPU."
            )
        blended = blend_tiles(target, boxes, tiles)
        return GeneratedBatch(
            (blended,), (seed,), batch_index, self._sampler_name(request), (*notes, *lora_plan.notes),
            lora_plan.loras, lora_plan.embeddings, vae,
        )

    def _denoise_tiles(
        self, pipe: Any, request: GenerationRequest, upscaled: Image.Image, boxes: list[Box],
        seed: int, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken,
    ) -> list[Image.Image]:
        """SD upscale's image-to-image pass over each tile of `upscaled`, in the current memory mode; raises
        _OutOfMemoryRaised on out-of-memory, Cancelled when cancelled."""
        # Exact, as for the hires fix's second pass: the first step already shows the total of all tiles.
        per_tile = self._img2img_timesteps(request.sampler, request.steps, request.strength, request.few_step)
        colours = self._colours(self._preview_every, batch_index, on_step, cancel)
        progress = _Progress(batch_index, on_step, cancel, self._preview_every, colours,
                             self._key.device if self._key else "cpu", per_tile * (len(boxes) - 1))
        tiles = []
        try:
            with torch.inference_mode():
                for index, box in enumerate(boxes):
                    crop = upscaled.crop(box)
                    # Every tile with the job's seed, as A1111's script runs each batch of tiles.
                    tile_request = replace(request, width=crop.width, height=crop.height)
                    arguments = {"image": crop, "strength": float(request.strength)}
                    result = self._one_pass(pipe, tile_request, (seed,), request.sampler, progress, arguments)
                    tiles.append(result.images[0])
                    progress.next_pass(per_tile * (len(boxes) - index - 2))
        except _CancelRequested:
            raise Cancelled("Cancelled.") from None
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            raise _OutOfMemoryRaised from None
        return tiles

    def _upscale_pixels(
        self, source: Image.Image, target: tuple[int, int], request: GenerationRequest, cancel: CancelToken,
        batch_index: int = 0, on_step: Callable[[StepInfo], None] | None = None,
    ) -> Image.Image:
        """`source` at `target` size: a resampler, or an upscaler model (its own factor, in tiles) and
        then Lanczos to the exact size, as A1111 does with a factor the model does not have."""
        name = canonical_upscaler(request.upscale_upscaler) or request.upscale_upscaler
        if name in PIXEL_RESAMPLERS:
            return source.resize(target, PIXEL_RESAMPLERS[name])
        if name in BUILT_IN_UPSCALERS:
            raise InvalidRequest(f"{name} works on latents during the hires fix; upscale an image with Lanczos, "
                                 "Nearest or a library upscaler.")
        entry = self._upscalers.find(name)
        if entry is None:
            known = ", ".join([*PIXEL_RESAMPLERS, *self._upscalers.names()])
            raise InvalidRequest(f"Unknown upscaler {name!r}: use one of {known}.")
        network, info = load_upscaler(entry.path, pick_device(request.device, request.precision).device)
        image = source
        # A 4x model asked for 8x runs twice; asked for 2x, once and then Lanczos down (A1111's way).
        while image.width < target[0] or image.height < target[1]:
            tile = request.upscale_tile
            total = math.ceil(image.width / tile) * math.ceil(image.height / tile) if tile > 0 else 1
            done = [0]

            def next_tile(total: int = total, done: list[int] = done) -> bool:
                # Called before each tile: the tile before it is done, so the job's progress moves on.
                if done[0] and on_step is not None:
                    on_step(StepInfo(done[0], total, batch_index, None))
                done[0] += 1
                return cancel.cancelled

            image = upscale(network, info.scale, image, tile=tile, should_cancel=next_tile)
            if on_step is not None:
                on_step(StepInfo(total, total, batch_index, None))
            if info.scale <= 1:
                break
        return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)

    def _generate_dit(
        self, request: GenerationRequest, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken
    ) -> GeneratedBatch:
        """Flux / SD3 / Qwen-Image / Z-Image: the pipeline's own flow-matching scheduler and prompt encoding
        (families.py); image-to-image and inpainting through the family's own pipelines (families.edits),
        sharing the loaded weights.

        Out of memory, the job runs again one memory mode down (dit_memory.fallback_mode), the model loaded
        again where the mode needs it and its LoRAs applied again, and the result says so."""
        _refuse_dit_edit(self._model.name if self._model else "the model", self._dit, request.mode)
        _refuse_dit_controls(self._dit, request)
        if not self._control_loras.find(request.controls):
            # A Flux.1 Control-LoRA kept from the last job comes off before the memory mode and LoRAs touch the model.
            self._release_control_lora()
        self._dit_memory(request)
        fallbacks: list[str] = []
        while True:
            try:
                batch = self._generate_dit_once(request, batch_index, on_step, cancel)
                break
            except _OutOfMemoryRaised:
                pass
            # Recover outside the except block, so the traceback no longer pins the tensors.
            _free_memory()
            assert self._key is not None and self._dit_mode is not None
            failed = self._dit_mode
            sizes = families.memory_sizes(self._pipe, self._dit)
            lower = dit_fallback_mode(failed, self._key.device, sizes.fp8_possible, sizes.bitsandbytes_possible)
            if lower is None:
                raise OutOfMemory(
                    f"The {self._key.device} ran out of memory running {self._dit.label} at {request.width}x"
                    f"{request.height}, even with {DIT_DESCRIPTIONS[failed]}. Try a smaller size or batch, or close "
                    "other programs using the GPU."
                )
            fallbacks.append(
                f"Out of memory with {DIT_DESCRIPTIONS[failed]}; ran with {DIT_DESCRIPTIONS[lower]} instead."
            )
            self._dit_memory(request, lower)
        return replace(batch, notes=(*fallbacks, *batch.notes)) if fallbacks else batch

    def _generate_dit_once(
        self, request: GenerationRequest, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken
    ) -> GeneratedBatch:
        """One try of a DiT job in the current memory mode; raises _OutOfMemoryRaised on out-of-memory."""
        pipe = self._pipe
        seeds = tuple(request.seed_for(batch_index, k) for k in range(request.batch_size))
        notes: list[str] = []
        # A Flux.1 Control-LoRA goes on the model's plain layers before the job's LoRAs (flux_control_lora.py).
        control_lora = self._control_lora_on(request)
        also_active = ((flux_control_lora.ADAPTER, control_lora[0]),) if control_lora is not None else ()
        # LoRAs from the panel and `<lora:...>` tags, in the layouts diffusers converts (kohya, XLabs, PEFT).
        lora_plan = self._loras.apply(
            pipe, request, model_shape(pipe, self._family), self._model.name if self._model else "", embeddings=False,
            also_active=also_active,
        )
        request = lora_plan.request
        if self._dit_mode == "fp8":
            _lora_weights_to(pipe.transformer, pipe.vae.dtype)
        self._adapters_used = (lora_plan.loras, lora_plan.embeddings)
        if batch_index == 0:
            notes.extend(lora_plan.notes)
        samplers = families.takes_samplers(self._dit)  # else the pipeline's own flow-matching one runs
        ignored_samplers = [request.sampler] if request.sampler != DEFAULT_SAMPLER and not samplers else []
        hires_sampler = request.hires_sampler not in ("", DEFAULT_SAMPLER, request.sampler)
        if request.hires_active and hires_sampler and not samplers:
            ignored_samplers.append(request.hires_sampler)
        if ignored_samplers:
            notes.append(f"{self._dit.label} models use their own flow-matching sampler; "
                         f"{' and '.join(ignored_samplers)} {'was' if len(ignored_samplers) == 1 else 'were'} "
                         "ignored.")  # fmt: skip
        if (ignored := families.ignored_negative_note(pipe, request, self._dit)) is not None:
            notes.append(ignored)
        if (low := families.low_guidance_note(request, self._dit)) is not None:
            notes.append(low)
        if (fixed := families.fixed_schedule_note(pipe, request, self._dit)) is not None:
            notes.append(fixed)
        # The DiTs read 2x2 patches of latents: sides a multiple of 16 pixels (SD's 8 would fail or be cut short).
        multiple = families.side_multiple(pipe, self._dit)
        plan = _edit_plan(request, multiple) if request.mode != "txt2img" else None
        if batch_index == 0:
            notes.extend(_dit_ignored_notes(request, self._dit.label, plan is not None))
        # A Qwen-Image-Edit instruction edit has no strength (families_qwen_edit.py): 0 is not "keep the source".
        strength_zero = request.strength <= 0 and qwen_edit.uses_strength(self._dit, request.mode)
        if plan is not None and (strength_zero or (plan.alpha is not None and mask_is_empty(plan.alpha))):
            # Nothing to denoise: the source itself is the exact answer (no VAE round trip).
            note = ("The mask is empty, so nothing was repainted.",) if request.strength > 0 else ()
            images = tuple(plan.source.copy() for _ in seeds)
            return GeneratedBatch(images, seeds, batch_index, None, note, lora_plan.loras, (), None)
        # Any other size runs at the next multiple up and is cropped to the size asked for, as Forge and ComfyUI
        # pad a DiT's latents to whole patches and crop the picture.
        size = {"width": padded_side(request.width, multiple), "height": padded_side(request.height, multiple)}
        beside: list[Image.Image] = []
        if plan is not None:
            pipe = self._dit_pipe_for(request.mode)
        if plan is not None and qwen_edit.is_edit(self._dit):
            references = [load_source(path, "The reference image") for path in request.reference_images]
            size = qwen_edit.call_arguments(
                pipe, self._dit, request.mode, plan.image, plan.mask, plan.size, request.strength, references
            )
        elif plan is not None:
            # One source per image, so image k is encoded with its own seed's generator (per_image_sources).
            size = {"image": per_image_sources(plan.image, request.batch_size), "strength": float(request.strength),
                    "width": plan.size[0], "height": plan.size[1]}  # fmt: skip
            if plan.mask is not None or self._inpaint_model or families.img2img_by_inpainting(self._dit, request.mode):
                size["mask_image"] = plan.mask if plan.mask is not None else Image.new("L", plan.size, 255)
            if request.reference_images:  # Flux.2 Klein: the references go beside the source (families_flux2)
                beside = self._references(request, checked=flux2.is_dev_model(self._dit))  # Klein's: read as tensors
            if beside and (self._dit.family in (QWEN_IMAGE_21, FLUX3) or flux2.is_dev_model(self._dit)):
                size["references"], beside = beside, []  # their pipelines' own condition images (flow_edit.py)
        if plan is None and request.reference_images:
            # Flux.2's multi-reference editing: the images go with the prompt (no source, no strength).
            size["image"] = self._references(request, checked=self._dit.family == FLUX2)
            if self._dit.family == "flux":  # FLUX.1 Kontext: one picture, read beside the noise
                # Fitted to the job's size (A1111's crop and resize), not to Kontext's trained ~1 MP sizes as
                # diffusers' default does: the output follows the picture it edits, and costs what the job costs.
                size["image"] = crop_and_resize(size["image"][0], (size["width"], size["height"]))
                # The pipeline rescales the output to `max_area` (1 MP by default) whatever size it is given.
                size |= {"_auto_resize": False, "max_area": size["width"] * size["height"]}
                pipe = families.kontext_pipeline(pipe)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        # Previews at the UNet path's cadence: x0 of the flow-matching step, unpacked to (B, C, h, w).
        device = self._key.device if self._key else "cpu"
        control = None
        family = controlnet_family(self._dit.family)
        redux: ReduxPrompt | None = None
        images = image_units(request)
        # What the text encoders' outputs depend on besides the prompt: the same prompt again (another seed, the
        # next batch) is not encoded again (dit_prompt_cache.py; Redux's, flux_redux.py).
        encoders = tuple(id(module) for name in families.ENCODER_SLOTS
                         if (module := getattr(pipe, name, None)) is not None)  # fmt: skip
        context = (self._loads, encoders, request.loras, lora_plan.loras, self._dit_mode)
        # XLabs' IP-Adapter units (flux_ip_adapter.py) and Redux units: the reference picture as prompt tokens
        # (flux_redux.py).
        ip_units = self._flux_ip.find(images) if images and family == "flux" else []
        redux_units = tuple(unit for unit in images if unit not in ip_units)
        if redux_units and family == "flux":
            redux = self._redux.prompt(self._pipe, request, redux_units, self._dit.label, device, context)
        controlnets = replace(request, controls=tuple(u for u in request.controls if u not in images))
        if self._dit.control_input:  # Canny / Depth dev: the BUILT_IN unit's picture (_refuse_built_in)
            control = self._controls.prepare_built_in(pipe, controlnets.controls[0], plan,
                                                      (size["width"], size["height"]),
                                                      functools.partial(self._dit_pipe_for, "img2img"))  # fmt: skip
        elif control_lora is not None:  # Flux.1 dev with BFL's Canny / Depth LoRA (flux_control_lora.py)
            control = self._control_lora_run(request, control_lora[1], plan, size)
            pipe = control.pipe
        elif controlnets.controls:  # Flux.1, Qwen-Image, Z-Image or SD3 (_refuse_dit_controls): its ControlNets
            control_dit.refuse_memory_mode(family, self._dit_mode or "full", request.memory_mode, self._dit.label)
            control = self._controls.prepare_dit(family, self._pipe, controlnets, plan,
                                                 (size["width"], size["height"]), self._dit.label, device,
                                                 pipe.vae.dtype)  # fmt: skip
            pipe = control.pipe
        image_prompt: FluxIpRun | None = None
        every = self._preview_every
        hires = self._dit_hires_pipe(request, plan, notes)
        if samplers:  # A1111's samplers over the model's schedule, a fresh scheduler each pass (they keep state)
            pipe.scheduler = self._make_scheduler(request.sampler, request.few_step)
            if hires is not None:
                hires.scheduler = self._make_scheduler(request.hires_sampler or request.sampler, request.few_step)
        # A size the model cannot draw is refused before the first pass, the hires fix's second pass's too.
        second = tuple(padded_side(side, multiple) for side in request.hires_size) if hires is not None else None
        families.check_size(pipe, self._dit, (size["width"], size["height"]), *(second,) if second else ())
        extra = tail_steps(request.hires_steps or request.steps, request.hires_denoise) if hires else 0
        progress = _Progress(
            batch_index, on_step, cancel, every, self._colours(every, batch_index, on_step, cancel), device, extra
        )
        watcher = _X0Watcher(pipe.scheduler)
        width, height = (size["width"], size["height"])
        on_step_end = progress.callback(watcher, unpack=functools.partial(dit_preview_latents, pipe, width, height))
        try:
            if ip_units:  # loaded on the model for this call (closed below)
                image_prompt = self._flux_ip.prepare(self._pipe, pipe, ip_units, (width, height),
                                                     self._dit_mode or "full", self._dit.label,
                                                     bool(self._dit.quantization or self._dit.fp8_storage))  # fmt: skip
            drawn = seeds[0] if control is not None and control.global_draws else None
            with torch.inference_mode(), flux2.references_beside_source(pipe, beside), \
                    cached_encoding(pipe, self._prompts, context), _seeded_global_rng(drawn, device):
                arguments = families.generation_arguments(pipe, request, self._dit) | size
                if batch_index == 0:
                    notes.extend(families.long_prompt_notes(pipe, arguments, self._dit))
                arguments = qwen_edit.per_image_batch(self._dit, request.mode, arguments, request.batch_size)
                if redux is not None:
                    del arguments["prompt"]
                    arguments |= {"prompt_embeds": redux.prompt_embeds,
                                  "pooled_prompt_embeds": redux.pooled_prompt_embeds}  # fmt: skip
                if image_prompt is not None:
                    arguments |= image_prompt.arguments
                if control is not None:
                    arguments |= control.arguments
                    # Z-Image's ControlNet inpainting takes no strength (1: refused else), one source for the batch
                    # (encoded without sampling) and, in diffusers 0.42, a mask per image (it tiles none).
                    if _unaccepted(pipe, arguments, ("strength",)) and isinstance(arguments.get("image"), list):
                        arguments["image"] = arguments["image"][0]
                        arguments["mask_image"] = [arguments["mask_image"]] * request.batch_size
                    # An inpainting ControlNet's pipeline (Qwen-Image's, SD3's) takes the source and the mask as its
                    # control picture only (control_dit.py).
                    _unaccepted(pipe, arguments, ("image", "mask_image"))
                    dropped = _unaccepted(pipe, arguments, ("negative_prompt", "true_cfg_scale"))
                    if dropped and batch_index == 0:
                        notes.append(f"{type(pipe).__name__} has no true CFG: the negative prompt was ignored.")
                if plan is None and request.varies_noise:
                    shape, cell, pack = families.noise_layout(pipe, self._dit, width, height)
                    arguments["latents"] = pack(_variation_noise(request, seeds, shape, cell)).to(pipe.vae.dtype)
                latent_hires = hires is not None and is_latent(request.hires_upscaler)
                if latent_hires:
                    arguments["output_type"] = "latent"  # no VAE decode: the second pass upscales the latents
                result = pipe(
                    **arguments, num_inference_steps=request.steps,
                    generator=generators[0] if len(generators) == 1 else generators,
                    callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
                )  # fmt: skip
                pictures = result.images
                if hires is not None:
                    watcher.detach()
                    progress.next_pass()
                    with cached_encoding(hires, self._prompts, context):  # its own pipeline's encode_prompt
                        pictures = self._dit_hires_pass(hires, request, seeds, pictures, (width, height), progress,
                                                        control, redux, image_prompt)  # fmt: skip
        except _CancelRequested:
            raise Cancelled("Cancelled.") from None
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            raise _OutOfMemoryRaised from None
        finally:
            watcher.detach()  # the DiT's scheduler outlives the job: leave it unwrapped
            if control is not None:
                control.close()  # a Z-Image ControlNet gives the transformer's modules back (control_dit.py)
            if image_prompt is not None:
                image_prompt.close()  # the transformer's own attention again
        if plan is None:
            asked = request.hires_size if hires is not None else (request.width, request.height)
            images = tuple(_cropped(picture, asked) for picture in pictures)
        else:
            images = tuple(finish_edit(plan, picture) for picture in pictures)
        by_unit = dict(image_prompt.hashes) if image_prompt is not None else {}
        if redux is not None:
            by_unit |= dict.fromkeys(redux_units, redux.hash)
        hashes = _in_unit_order(request, control.hashes if control is not None else (), by_unit)
        # The sampler a "default" job ran, for its PNG: PixArt's own (DPM++ 2M); the flow-matching DiTs' has no name.
        used = self._sampler_name(request) if samplers else None
        return GeneratedBatch(images, seeds, batch_index, used, tuple(notes), lora_plan.loras, (), None, hashes)

    def _release_control_lora(self) -> None:
        """A kept Flux.1 Control-LoRA off the model; the LoRA adapters taken off with it load again when asked."""
        if self._control_loras.release(self._pipe):
            self._loras.adapters_gone()

    def _control_lora_on(self, request: GenerationRequest) -> tuple[float, tuple[ControlUnit, ControlHash]] | None:
        """The job's Flux.1 Control-LoRA on the model, after its refusals: (its weight, (its unit, its hash)); None
        for a job without one. It stays loaded until a job asks for another or none (_generate_dit)."""
        if controlnet_family(self._dit.family) != "flux":
            return None
        units = self._control_loras.find(request.controls)
        if not units:
            return None
        others = len([unit for unit in request.controls if unit not in image_units(request)]) - len(units)
        flux_control_lora.refuse(self._dit, units, others, self._dit_mode or "full", self._dit.label)
        hashed = self._control_loras.load(self._pipe, units[0], functools.partial(self._loras.unload_all, self._pipe))
        return float(units[0].weight), (units[0], hashed)

    def _control_lora_run(
        self, request: GenerationRequest, loaded: tuple[ControlUnit, ControlHash], plan: EditPlan | None,
        size: dict[str, Any],
    ) -> ControlRun:
        """The job's pipeline for a Flux.1 Control-LoRA loaded on the model (_control_lora_on), for the job's mode,
        reading the unit's picture."""
        unit, hashed = loaded
        pipe = families.control_input_pipeline(self._pipe, request.mode)
        return self._controls.prepare_built_in(
            pipe, unit, plan, (size["width"], size["height"]),
            functools.partial(families.control_input_pipeline, self._pipe, "img2img"), hashed,
        )  # fmt: skip

    def _references(self, request: GenerationRequest, checked: bool) -> list[Image.Image]:
        """The job's reference pictures, loaded; `checked`: against what Flux.2's pipelines take as `image=`."""
        references = [load_source(path, "The reference image") for path in request.reference_images]
        if checked:
            flux2.check_references(list(zip(request.reference_images, references, strict=True)))
        return references

    def _dit_hires_pipe(self, request: GenerationRequest, plan: EditPlan | None, notes: list[str]) -> Any | None:
        """The image-to-image pipeline of the hires fix's second pass for a DiT text-to-image job, or None (no
        hires fix asked for, or the family has no image-to-image: then said in `notes`)."""
        if not request.hires_active or plan is not None:
            return None
        if request.reference_images:
            notes.append("The hires fix does not run with reference images; it was ignored.")
            return None
        info = self._dit
        # An image-to-image pass (Flux.2 Klein's is its inpainting pipeline with everything masked): not Flux
        # Fill's or the Qwen-Image-Edit models' (instruction edits), which would answer another question.
        if not (info.fill or qwen_edit.is_edit(info)) and families.edits(info.family, info.variant):
            with contextlib.suppress(ModelError):
                return self._dit_pipe_for("img2img")
        notes.append(f"The hires fix needs a plain image-to-image pass, which {info.label} models do not have in "
                     "Marble yet; it was ignored.")  # fmt: skip
        return None

    def _dit_hires_pass(
        self, pipe: Any, request: GenerationRequest, seeds: tuple[int, ...], first: Any, first_size: tuple[int, int],
        progress: _Progress, control: ControlRun | None = None, redux: ReduxPrompt | None = None,
        image_prompt: FluxIpRun | None = None,
    ) -> list[Image.Image]:
        """A1111's second pass for a DiT: the first pass's latents (a latent upscaler) or pictures (a pixel one)
        upscaled, then image-to-image at the hires denoising strength with the hires prompt and steps, seeded
        with the same seeds, one image per seed. `first_size`: the first pass's size, padded to whole patches;
        the pictures returned are the second pass's, padded likewise (the caller crops them)."""
        up_w, up_h, width, height = hires_target(
            request.width, request.height, request.hires_scale, request.hires_resize_w, request.hires_resize_h
        )
        factor, multiple = pipe.vae_scale_factor, families.side_multiple(pipe, self._dit)
        padded = (padded_side(width, multiple), padded_side(height, multiple))
        control_arguments: dict[str, Any] = {}
        if control is not None and control.hires is not None:
            # The ControlNet units again (Flux.1), their images made at this pass's size.
            pipe, control_arguments = control.hires(padded)
        by_inpainting = families.img2img_by_inpainting(self._dit, "img2img")
        upscaler = request.hires_upscaler
        if is_latent(upscaler):
            # Unpacked to (B, C, h, w), the first pass's padding cut off, interpolated as SD's are, and padded
            # to whole patches by repeating the last row and column. ERNIE-Image's and Flux.2's latents are
            # interpolated as their VAE's (families.hires_vae_latents), and patched again for their pipelines.
            vae = families.hires_vae_latents(pipe, self._dit, first, first_size)
            grid, factor = vae if vae is not None else (dit_preview_latents(pipe, *first_size, first), factor)
            grid = grid[:, :, : request.height // factor, : request.width // factor]
            scaled = upscale_latents(grid, (up_w, up_h), (width, height), request.hires_upscaler, factor)
            extra = ((padded[0] - width) // factor, (padded[1] - height) // factor)
            image: Any = torch.nn.functional.pad(scaled.float(), (0, extra[0], 0, extra[1]), mode="replicate")
            image = families.hires_edit_latents(pipe, self._dit, image.to(scaled.dtype))
            _take_latents(pipe, image.shape[1])
        else:
            model = None if upscaler in PIXEL_RESAMPLERS else self._upscaler(upscaler)
            asked = (request.width, request.height)
            pictures = [_cropped(picture, asked) for picture in first]
            images = upscale_images(pictures, (up_w, up_h), (width, height), upscaler, model)
            images = [to_working(picture, padded, "pad") for picture in images]
            image = images if len(images) > 1 else images[0]
        second = replace(request, prompt=request.hires_prompt or request.prompt,
                         negative_prompt=request.hires_negative_prompt or request.negative_prompt)  # fmt: skip
        arguments = families.generation_arguments(pipe, second, self._dit) | {
            "image": image, "strength": float(request.hires_denoise), "width": padded[0], "height": padded[1],
            "num_images_per_prompt": len(seeds),  # one prompt, one picture per seed
        }  # fmt: skip
        if by_inpainting:
            arguments["mask_image"] = Image.new("L", padded, 255)
        if redux is not None and not request.hires_prompt:  # the Redux picture in this pass too
            del arguments["prompt"]
            arguments |= {"prompt_embeds": redux.prompt_embeds, "pooled_prompt_embeds": redux.pooled_prompt_embeds}
        if image_prompt is not None:  # the IP-Adapter's picture in this pass too
            arguments |= image_prompt.arguments
        if control_arguments:
            arguments |= control_arguments
            _unaccepted(pipe, arguments, ("negative_prompt", "true_cfg_scale"))  # said for the first pass
        watcher = _X0Watcher(pipe.scheduler)
        unpack = functools.partial(dit_preview_latents, pipe, *padded)
        try:
            return pipe(
                **arguments, num_inference_steps=request.hires_steps or request.steps,
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                callback_on_step_end=progress.callback(watcher, unpack=unpack),
                callback_on_step_end_tensor_inputs=["latents"],
            ).images  # fmt: skip
        finally:
            watcher.detach()

    def _dit_memory(self, request: GenerationRequest, forced: str | None = None) -> None:
        """Put the loaded DiT in the job's memory mode (dit_memory.py), or in `forced` (the out-of-memory
        fallback), loading it again first when it is in a mode that changed its weights or hooks (fp8,
        group, sequential)."""
        assert self._key is not None
        device, pipe = self._key.device, self._pipe
        sizes, free = families.memory_sizes(pipe, self._dit), None
        if device == "cuda":
            on_device = sizes.total if self._dit_mode in ("full", "tiled") else 0
            free = torch.cuda.mem_get_info()[0] + on_device
        element = pipe.vae.dtype.itemsize  # the compute dtype's (the VAE is never cast to fp8)
        pixels = request.width * request.height
        mode = forced or choose_dit_mode(request.memory_mode, device, free, sizes, pixels, element)
        if mode == self._dit_mode:
            return
        # A mode changes the plain model (hooks, casts, quantised layers): a kept Flux.1 Control-LoRA comes off
        # first, and the job that wants it loads it again in the new mode (or is refused there).
        self._release_control_lora()
        if self._dit_mode is not None and needs_reload(self._dit_mode, mode):
            self.unload()
            self.load(request)
        elif mode in ("fp8", "nf4", "int8") and self._loras.loaded_adapters:
            # LoRA layers made before the casting would be cast with the model's: drop them, so the job loads
            # them as a job that started in fp8 does (the same pixels either way).
            self._pipe.unload_lora_weights()
            self._loras.forget()
        families.apply_memory_mode(self._pipe, mode, self._dit_mode, device, self._pipe.dtype)
        self._dit_mode = self._memory_mode = mode

    def _dit_pipe_for(self, mode: str) -> Any:
        """The DiT family's image-to-image / inpainting pipeline, made once per loaded model."""
        pipe = self._pipes.get(mode)
        if pipe is None:
            pipe = families.edit_pipeline(self._pipe, mode, self._dit)
            self._pipes[mode] = pipe
        return pipe

    def _set_cpu_threads(self) -> None:
        # Here, on the generation thread: torch's OpenMP pool takes its size from the calling thread.
        busy = None if self._cpu_threads else self._busy_cores()
        choice = choose_threads(self._cpu_threads, self._default_threads, usable_cores(), busy)
        torch.set_num_threads(choice.threads)
        log.info("CPU threads for this job: %s", choice.reason)

    def _run_pipeline(
        self,
        pipe: Any,
        request: GenerationRequest,
        plan: EditPlan | None,
        seeds: tuple[int, ...],
        batch_index: int,
        on_step: Callable[[StepInfo], None],
        cancel: CancelToken,
        control: ControlRun | None = None,
    ) -> Any:
        """One job's pipeline calls (two with the hires fix): a fresh scheduler and generators each
        time, so a retry is reproducible.

        Returns the last pipeline output, or None when cancelled; raises _OutOfMemoryRaised on OOM."""
        hires = request.hires_active and plan is None
        arguments = {**self._mode_arguments(request, plan), **_variation_arguments(pipe, request, plan, seeds)}
        if hires:
            # Latent upscalers take the first pass's latents as they are; pixel ones need its image.
            arguments["output_type"] = "latent" if is_latent(request.hires_upscaler) else "pil"
        device = self._key.device if self._key else "cpu"
        refiner = None
        if request.refiner and not plan:  # placed as the base is: whole, or offloaded module by module
            refiner = self._refiners.pipe(request.refiner, pipe.dtype)
            refiner = self._refiners.place(device, self._memory_mode)
        extra = self._hires_timesteps(request) if hires else 0
        if refiner is not None:
            # The base stops at the switch and hands its (still noisy) latents on, undecoded.
            arguments |= {"denoising_end": float(request.refiner_switch_at), "output_type": "latent"}
            extra = self._refiners.extra_steps(refiner, request)
        progress = _Progress(
            batch_index, on_step, cancel, self._preview_every,
            self._colours(self._preview_every, batch_index, on_step, cancel), device, extra,
        )
        try:
            tiled = (pipe.unet, pipe.vae) if request.tiling else ()
            # A1111's latent masked content (below 1 the source's latents start the sampling; at 1 noise does).
            fill = request.inpaint_fill if plan is not None and request.strength < 1 else "original"
            with torch.inference_mode(), circular_padding(tiled), \
                    masked_latents(pipe, fill, plan.mask if plan else None, seeds):
                first = self._one_pass(pipe, request, seeds, request.sampler, progress, arguments, control)
                if refiner is not None:
                    progress.next_pass()
                    return self._refiners.run(refiner, request, seeds, first.images, progress.callback, _X0Watcher)
                if not hires:
                    return first
                return self._hires_pass(request, seeds, first.images, progress, control)
        except _CancelRequested:
            return None
        except torch._dynamo.exc.TorchDynamoException as error:  # a RuntimeError too: before the next clause
            if not _is_compiled(pipe.unet):
                raise
            # A backend's failure reads "backend='inductor' raised:" on its first line; what it raised says why.
            raise _CompileFailed(library_error(getattr(error, "inner_exception", None) or error)) from None
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            raise _OutOfMemoryRaised from None

    def _one_pass(
        self,
        pipe: Any,
        request: GenerationRequest,
        seeds: tuple[int, ...],
        sampler: str,
        progress: _Progress,
        arguments: dict[str, Any],
        control: ControlRun | None = None,
        stepping: ControlRun | None = None,
    ) -> Any:
        """One pipeline call; control units, when given, act in this pass (the first of a hires job). `stepping`: the
        first pass's units, told this pass's steps (the hires fix's second pass, whose arguments are its own)."""
        pipe.scheduler = self._make_scheduler(sampler, request.few_step)
        use_brownian_noise(pipe.scheduler, seeds)  # the SDE samplers' noise, seeded as A1111 seeds it
        watcher = _X0Watcher(pipe.scheduler)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        try:
            with _conditioning(pipe, request, self._cached_prompt_arguments) as prompt_arguments:
                return pipe(
                    **prompt_arguments,
                    num_inference_steps=request.steps,
                    guidance_scale=request.cfg_scale,
                    num_images_per_prompt=request.batch_size,
                    generator=generators[0] if len(generators) == 1 else generators,
                    clip_skip=request.clip_skip - 1 if request.clip_skip > 1 else None,
                    callback_on_step_end=progress.callback(watcher, control or stepping),
                    callback_on_step_end_tensor_inputs=["latents"],
                    **arguments,
                    **(control.arguments if control is not None else {}),
                )
        finally:
            watcher.detach()

    def _cached_prompt_arguments(self, pipe: Any, request: GenerationRequest) -> dict[str, Any]:
        """`_prompt_arguments` as encodings, taken from the last jobs' when nothing that changes them did."""
        key = PromptKey(
            self._loads, tuple(id(encoder) for _, encoder in _text_encoders(pipe)), request.prompt,
            request.negative_prompt, request.clip_skip, request.emphasis, request.loras, *self._adapters_used,
        )
        found = self._prompts.get(key)
        if found is None:
            found = _as_encodings(pipe, _prompt_arguments(pipe, request))
            self._prompts.put(key, found)
        return found

    def _hires_pass(
        self, request: GenerationRequest, seeds: tuple[int, ...], first: Any, progress: _Progress,
        control: ControlRun | None = None,
    ) -> Any:
        """A1111's second pass: the first pass's latents or images upscaled, then image-to-image at the
        hires denoising strength, with the hires prompt and sampler, seeded with the same seeds."""
        pipe = self._pipe_for("img2img", None)
        up_w, up_h, width, height = hires_target(
            request.width, request.height, request.hires_scale, request.hires_resize_w, request.hires_resize_h
        )
        if is_latent(request.hires_upscaler):
            image: Any = upscale_latents(first, (up_w, up_h), (width, height), request.hires_upscaler,
                                         pipe.vae_scale_factor)
        else:
            model = None if request.hires_upscaler in PIXEL_RESAMPLERS else self._upscaler(request.hires_upscaler)
            image = upscale_images(first, (up_w, up_h), (width, height), request.hires_upscaler, model)
        second = replace(
            request,
            prompt=request.hires_prompt or request.prompt,
            negative_prompt=request.hires_negative_prompt or request.negative_prompt,
            steps=request.hires_steps or request.steps,
        )
        progress.next_pass()
        arguments = {"image": image, "strength": float(request.hires_denoise)}
        if control is not None and control.hires is not None:
            # ControlNet units act in both passes, as A1111 runs them: their images made again at this size.
            pipe, extra = control.hires((width, height))
            arguments |= extra
        for second_pass in control.second_passes if control is not None else ():
            # IP-Adapter and T2I-Adapter units act in both passes.
            arguments |= second_pass(pipe, (width, height))
        return self._one_pass(pipe, second, seeds, request.hires_sampler or request.sampler, progress, arguments,
                              stepping=control)  # fmt: skip

    def _hires_timesteps(self, request: GenerationRequest) -> int:
        """How many steps the second pass will call back for: image-to-image's own rule (the last
        int(steps x strength) of the schedule, times the scheduler's order), so the count that the first
        pass shows is exact for every sampler (PLMS adds a step, Heun doubles them)."""
        return self._img2img_timesteps(
            request.hires_sampler or request.sampler, request.hires_steps or request.steps, request.hires_denoise,
            request.few_step,
        )

    def _img2img_timesteps(self, sampler: str, steps: int, strength: float, few_step: str = "") -> int:
        scheduler = self._make_scheduler(sampler, few_step)
        scheduler.set_timesteps(steps)
        start = steps - min(int(steps * strength), steps)
        return len(scheduler.timesteps[start * scheduler.order :])

    def _upscaler(self, name: str) -> Callable[[Image.Image], Image.Image]:
        """A library upscaler model as an image -> image function, loaded once per job, tiled."""
        entry = self._upscalers.find(name)
        if entry is None:
            known = ", ".join([*BUILT_IN_UPSCALERS, *self._upscalers.names()])
            raise InvalidRequest(f"Unknown hires upscaler {name!r}: use one of {known}.")
        network, info = load_upscaler(entry.path, self._key.device if self._key else "cpu")
        return functools.partial(upscale, network, info.scale)

    def _apply_memory_mode(self, pipe: Any, mode: str) -> None:
        """Switch tiling, slicing and offload on the modules `pipe` shares with its siblings."""
        if mode == self._memory_mode:
            return
        apply_mode(pipe, self._memory_mode, mode, self._key.device if self._key else "cpu")
        self._memory_mode = mode

    @property
    def memory_mode(self) -> str:
        return self._memory_mode

    def _pipe_for(self, mode: str, plan: EditPlan | None) -> Any:
        """The pipeline for `mode`, sharing the loaded weights: from_pipe moves no tensor.

        An inpainting (9-channel) model does image-to-image through its inpainting pipeline with
        everything masked, as A1111 does: its UNet needs the mask channels.
        """
        if mode == "img2img" and self._inpaint_model:
            mode = "inpaint"
        if mode == "txt2img":
            return self._pipe
        pipe = self._pipes.get(mode)
        if pipe is None:
            factory = AutoPipelineForInpainting if mode == "inpaint" else AutoPipelineForImage2Image
            # Without the dtype, from_pipe would upcast the shared modules to fp32 (docs/architecture.md).
            pipe = factory.from_pipe(self._pipe, dtype=self._pipe.dtype)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[mode] = pipe
        return pipe

    def _mode_arguments(self, request: GenerationRequest, plan: EditPlan | None) -> dict[str, Any]:
        if plan is None:
            return {"width": request.width, "height": request.height}
        image = plan.image
        if request.inpaint_fill == "fill" and plan.mask is not None:
            image = fill_masked(image, plan.mask)  # A1111's "fill": the hole starts as the colours around it
        # One source per image, so image k is encoded with its own seed's generator (per_image_sources).
        image = per_image_sources(image, request.batch_size)
        arguments: dict[str, Any] = {"image": image, "strength": float(request.strength)}
        if plan.mask is not None or self._inpaint_model:
            mask = plan.mask if plan.mask is not None else Image.new("L", plan.size, 255)
            arguments |= {"mask_image": mask, "width": plan.size[0], "height": plan.size[1]}
        return arguments

    def _sampler_name(self, request: GenerationRequest) -> str | None:
        if request.sampler != DEFAULT_SAMPLER:
            return request.sampler
        base = self._default_scheduler
        return sampler_for_scheduler(type(base).__name__, base.config)

    @property
    def model_info(self) -> ModelInfo | None:
        return self._model

    def _make_scheduler(self, sampler: str, few_step: str = "") -> Any:
        """A fresh scheduler every job: schedulers keep state between steps. A few-step kind adds its
        timestep spacing (Turbo, Lightning, Hyper, DMD2: trailing) to whichever sampler runs."""
        base = self._default_scheduler
        preset = FEW_STEP_PRESETS.get(few_step)
        spacing = {"timestep_spacing": preset.timestep_spacing} if preset and preset.timestep_spacing else {}
        if sampler == DEFAULT_SAMPLER:
            return spaced(type(base), spacing.get("timestep_spacing", "")).from_config(base.config, **spacing)
        spec = SAMPLERS[sampler]
        cls = spaced(getattr(diffusers, spec.scheduler_class), spacing.get("timestep_spacing", ""))
        return cls.from_config(base.config, **dict(spec.overrides), **spacing)


class _Progress:
    """The step callback of a job's passes: checks cancel, makes previews, and counts the hires fix's
    second pass on from the first, so one job reads "step 25 of 35" through both passes.

    The first pass's total includes the second pass's expected steps (`extra`); the second reports
    its own exact count once it runs."""

    def __init__(
        self, batch_index: int, on_step: Callable[[StepInfo], None], cancel: CancelToken, every: int,
        colours: ColourTable, device: str, extra: int,
    ) -> None:
        self._batch_index, self._on_step, self._cancel = batch_index, on_step, cancel
        self._every, self._colours, self._device = every, colours, device
        self._extra = extra
        self._offset = 0
        self._last_total = 0

    def next_pass(self, still_to_come: int = 0) -> None:
        """The next pass starts; `still_to_come`: the steps of the passes after it (SD upscale's tiles)."""
        self._offset += self._last_total
        self._extra = max(0, still_to_come)

    def callback(
        self, watcher: _X0Watcher, control: ControlRun | None = None,
        unpack: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Callable[..., dict[str, Any]]:
        """`unpack`: the batch's latents as the pipeline holds them -> (B, C, H, W), for the DiTs' packed ones."""
        copies = PreviewCopies(self._device)

        def on_step_end(pipeline: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if self._cancel.cancelled:
                raise _CancelRequested
            # ERNIE-Image's pipeline keeps no count of its own: its scheduler's steps are the pass's.
            total = getattr(pipeline, "_num_timesteps", None) or len(pipeline.scheduler.timesteps)
            self._last_total = total
            step = i + 1
            advance_control(control, step)  # the pass's own step: control ranges are fractions of it
            wanted = bool(self._every) and (step % self._every == 0 or step == total)
            x0 = watcher.predicted_x0(tensors["latents"]) if wanted else None
            x0 = (unpack(x0) if unpack is not None else x0)[0] if x0 is not None else None
            latents = copies.step(x0, last=step == total)
            preview = latents_to_rgb(latents, self._colours) if latents is not None else None
            grand_total = self._offset + total + self._extra
            self._on_step(StepInfo(self._offset + step, grand_total, self._batch_index, preview))
            return {}

        return on_step_end


class PreviewCopies:
    """Brings each preview's latents to the host without making the CPU wait for the GPU every step.

    On CUDA, `.cpu()` waits until every queued kernel has run, so the CPU stops queuing the next
    step until the GPU is idle; at SD 1.5 size on an H200 (30 steps a second) that was the likely cost
    of previews (README, GPU figures). There the copy goes into pinned host memory on the GPU's own
    queue, and the latents are handed out at a later step, once an event says the copy is done: a
    preview lags by about one step, and the last step waits for its own. One copy is in flight at a
    time; a step that finds it still running asks for no other. Elsewhere the copy is synchronous, so
    each step's preview is its own, as before. `start_copy` is the seam for tests.
    """

    def __init__(self, device: str, start_copy: Callable[[torch.Tensor], tuple[Any, Any]] | None = None) -> None:
        self._asynchronous = device == "cuda"
        self._start_copy = start_copy or _start_cuda_copy
        self._in_flight: tuple[Any, Any] | None = None  # (host tensor, event)

    def step(self, latents: torch.Tensor | None, last: bool) -> Any:
        """Latents (C, H, W) of this step, or None when no preview is wanted; returns a float32 numpy
        array to show now, or None."""
        if not self._asynchronous:
            return None if latents is None else latents.detach().float().cpu().numpy()
        ready = self._take(wait=last)
        if latents is not None and self._in_flight is None:
            self._in_flight = self._start_copy(latents)
            if last:
                ready = self._take(wait=True)
        return ready

    def _take(self, wait: bool) -> Any:
        if self._in_flight is None:
            return None
        host, event = self._in_flight
        if not wait and not event.query():
            return None
        event.synchronize()
        self._in_flight = None
        # A copy: once `host` is freed, torch's pinned-memory cache may hand its block to the next copy.
        return host.numpy().copy()


def _start_cuda_copy(latents: torch.Tensor) -> tuple[torch.Tensor, Any]:
    host = torch.empty(latents.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(latents.detach().float(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


class _X0Watcher:
    """Records the scheduler's estimate of the clean latents at each step, for the preview.

    Wraps `scheduler.step` on this one scheduler instance and returns exactly what the pipeline asked
    for, so the output pixels cannot change whether or not a preview is made.
    """

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self._original = scheduler.step
        self._x0: torch.Tensor | None = None
        self._eps: tuple[torch.Tensor, Any, torch.Tensor] | None = None
        # The pipeline inspects step's signature to decide whether to pass `generator` and `eta`;
        # a wrapper with another signature would silently switch ancestral samplers to global RNG.
        @functools.wraps(self._original)
        def step(*args: Any, **kwargs: Any) -> Any:
            return self._step(*args, **kwargs)

        scheduler.step = step

    def _step(self, model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        return_dict = kwargs.pop("return_dict", True)
        output = self._original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        x0 = getattr(output, "pred_original_sample", None)
        if x0 is None:
            x0 = getattr(output, "denoised", None)
        if x0 is None:
            outputs = getattr(self._scheduler, "model_outputs", None)
            if outputs and outputs[-1] is not None and outputs[-1].shape == sample.shape:
                x0 = outputs[-1]
        self._x0 = x0
        self._eps = (model_output, timestep, sample) if x0 is None else None
        return output if return_dict else output.to_tuple()

    def predicted_x0(self, latents: torch.Tensor) -> torch.Tensor:
        if self._x0 is not None:
            return self._x0
        if self._eps is not None:
            estimate = self._from_alphas(*self._eps)
            if estimate is None:
                estimate = self._from_flow(self._eps[0], self._eps[2])
            if estimate is not None:
                return estimate
        return latents

    def _from_flow(self, model_output: Any, sample: Any) -> torch.Tensor | None:
        """x0 of a flow-matching step (the DiT families): the Euler step taken all the way to sigma 0,
        x0 = x - sigma * v, with the sigma of the step just taken (step_index moved on by one)."""
        sigmas, index = getattr(self._scheduler, "sigmas", None), getattr(self._scheduler, "step_index", None)
        if sigmas is None or index is None or not 0 < index <= len(sigmas):
            return None
        sigma = sigmas[index - 1].to(sample.device, torch.float32)
        return sample.float() - sigma * model_output.float()

    def _from_alphas(self, model_output: Any, timestep: Any, sample: Any) -> torch.Tensor | None:
        """x0 from a noise (or v) prediction, for schedulers that do not report it (PLMS)."""
        alphas = getattr(self._scheduler, "alphas_cumprod", None)
        if alphas is None:
            return None
        index = int(timestep)
        if not 0 <= index < len(alphas):
            return None
        alpha = alphas[index].to(sample.device, torch.float32)
        out, noisy = model_output.float(), sample.float()
        if self._scheduler.config.get("prediction_type") == "v_prediction":
            return alpha.sqrt() * noisy - (1 - alpha).sqrt() * out
        return (noisy - (1 - alpha).sqrt() * out) / alpha.sqrt()

    def detach(self) -> None:
        with contextlib.suppress(AttributeError):
            del self._scheduler.step


def _convert_ldm_vae(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """An original-layout (encoder.down.0...) VAE state dict in diffusers' names, for VaeSwitcher."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, config)


def _rename_sgm(state: dict[str, Any], unet_config: Any) -> dict[str, Any]:
    """kohya's SDXL UNet layer names (input_blocks_4_1_...) in diffusers' names, for LyCORIS files."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    return _maybe_map_sgm_blocks_to_diffusers(state, unet_config)


def header_dtype(header: Any) -> torch.dtype:
    """The checkpoint's own float type, so the cached conversion loses nothing."""
    counts: dict[str, int] = {}
    for info in header.tensors.values():
        counts[info.dtype] = counts.get(info.dtype, 0) + 1
    floats = {k: v for k, v in counts.items() if k in _SAFETENSORS_DTYPES}
    if not floats:
        return torch.float32
    return _SAFETENSORS_DTYPES[max(floats, key=floats.__getitem__)]


def _expose_text_model(pipe: Any) -> None:
    """Keep clip skip working across transformers versions.

    diffusers' clip-skip path reads `text_encoder.text_model.final_layer_norm`; transformers 5 dropped
    that inner module. Point the old name at the encoder itself, outside `_modules`, so no weight,
    state dict or module walk sees a second copy.
    """
    encoder = getattr(pipe, "text_encoder", None)
    if encoder is not None and "text_model" not in encoder._modules and hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", encoder)


def clip_tokenizer(resources: Resources, pad_zero: bool) -> transformers.CLIPTokenizer:
    """The shipped CLIP tokenizer; ``pad_zero`` pads with "!" (id 0), as OpenCLIP's encoders expect.

    Built from the one folder with only the pad token overridden: transformers then treats "!" as a
    special token, exactly as it did with the separate pad-"!" folder Marble used to ship (the ids are
    pinned by tests/engine/test_resources.py)."""
    overrides = {"pad_token": PAD_ZERO_TOKEN} if pad_zero else {}
    return transformers.CLIPTokenizer.from_pretrained(
        str(resources.tokenizer_folder()), local_files_only=True, **overrides
    )


def shared_tokenizers(resources: Resources, folder: Path, family: str) -> dict[str, Any]:
    """The shipped CLIP tokenizer for each tokenizer that `folder`'s model_index.json names but whose
    subfolder has no tokenizer files, as keyword arguments for from_pretrained / from_single_file:
    Marble's config folders and its demo model ship none (one copy under resources/tokenizers/ serves
    them all), while a user's folder or --config folder with its own files keeps them."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    missing = [
        name for name in TOKENIZER_COMPONENTS
        if isinstance(index.get(name), list) and index[name] and index[name][0] is not None
        and not any((folder / name / file).is_file() for file in ("vocab.json", "tokenizer.json"))
    ]
    return {name: clip_tokenizer(resources, pads_with_zero(family, name)) for name in missing}


def _variation_arguments(
    pipe: Any, request: GenerationRequest, plan: EditPlan | None, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """`latents=` with A1111's variation/resized noise; nothing (the pipeline draws it) otherwise."""
    if not request.varies_noise or plan is not None:
        return {}
    factor = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, request.height // factor, request.width // factor)
    return {"latents": _variation_noise(request, seeds, shape, factor).to(pipe.unet.dtype)}


def _variation_noise(request: GenerationRequest, seeds: tuple[int, ...], shape: tuple[int, int, int], cell: int) -> Any:
    """A1111's variation / resized starting noise for `seeds`, (B, *shape); a cell of `shape` spans `cell` pixels."""
    resize = None
    if request.seed_resize_from_w > 0:
        resize = (request.seed_resize_from_h // cell, request.seed_resize_from_w // cell)
    subseeds = [request.subseed_for(seed) for seed in seeds]
    return initial_noise(seeds, subseeds, request.subseed_strength, shape, resize)


def _is_out_of_memory(error: RuntimeError) -> bool:
    """CUDA's OutOfMemoryError, or a plain RuntimeError saying so (MPS and older CUDA paths report it that way)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def per_image_sources(image: Image.Image, count: int) -> Image.Image | list[Image.Image]:
    """The source once per image of a batch: diffusers' inpainting pipelines encode a single source with
    the first generator only, so generator k would start its noise where a lone job with that seed
    samples the source's latents; one source per image makes the pipeline encode image k with generator
    k, as a lone job does (request.seed_for). A lone job gets the image itself, as before."""
    return image if count == 1 else [image] * count


def with_prediction_overrides(scheduler: Any, arch: ArchitectureInfo) -> Any:
    """The model's scheduler, reconfigured for a marked v-prediction SDXL (library/checkpoint.py); every
    sampler is made from this one's config, so they all inherit the prediction type and spacing."""
    overrides = prediction_scheduler_overrides(arch)
    return type(scheduler).from_config(scheduler.config, **overrides) if overrides else scheduler


def _pipeline_class(arch: ArchitectureInfo) -> Any:
    return StableDiffusionXLPipeline if arch.family == "sdxl" else StableDiffusionPipeline


def _extra_kwargs(cls: Any) -> dict[str, Any]:
    # Marble shows what the user asked for, as A1111 does; the SD 1.x/2.x safety checker is also a
    # 1.2 GB download that an offline install does not have.
    if cls is StableDiffusionPipeline:
        return {"safety_checker": None, "requires_safety_checker": False, "feature_extractor": None}
    return {}


def _edit_plan(request: GenerationRequest, multiple: int = 8) -> EditPlan:
    if request.init_image is None:
        raise InvalidRequest("Image-to-image needs a source image.")
    source = load_source(request.init_image)
    mask = load_mask(request.mask, source.size) if request.mask is not None else None
    return plan_edit(source, mask, request, multiple)


def _lora_weights_to(transformer: Any, dtype: Any) -> None:
    """PEFT makes a LoRA's layers in its base layer's dtype, float8 under fp8 layer-wise casting, where
    they cannot compute (layer-wise casting hooks only the layers that were there before): the LoRA's
    small matrices go to the compute dtype (their values were rounded to float8 on the way, as the
    model's own weights are in this mode)."""
    for name, parameter in transformer.named_parameters():
        if "lora_" in name and parameter.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            parameter.data = parameter.data.to(dtype)


def _unaccepted(pipe: Any, arguments: dict[str, Any], names: Sequence[str]) -> list[str]:
    """Removes from `arguments` those of `names` the pipeline's call does not take; returns them. A call Marble mixes in
    (flow_edit.py, control_dit_edits.py) hands what it does not name to the pipeline's own: every class's counts."""
    calls = [cls.__dict__["__call__"] for cls in type(pipe).__mro__ if "__call__" in cls.__dict__]
    accepted = {name for call in calls for name in inspect.signature(call).parameters}
    dropped = [name for name in names if name in arguments and name not in accepted]
    for name in dropped:
        del arguments[name]
    return dropped


# Said for an edit asking for A1111's variation seed or seed resize, by the UNet and the DiT paths alike.
_VARIATION_IGNORED = "Variation seed and seed resize apply to text-to-image only; they were ignored."


def _dit_ignored_notes(request: GenerationRequest, label: str, edit: bool) -> list[str]:
    """What a DiT job leaves out of the request, said once rather than silently."""
    notes = []
    if request.vae.strip() and not encoder_names(request.text_encoders or ""):
        # A library VAE goes with library text encoders, for a transformer-only file (_library_parts).
        notes.append(
            f"The VAE {request.vae.strip()!r} was not used: {label} decodes with its own VAE. A VAE from the "
            "library goes with text encoders from it, for a file holding the transformer only."
        )
    if request.varies_noise and edit:
        notes.append(_VARIATION_IGNORED)
    if request.tiling:
        # Seamless tiling wraps the UNet's convolutions around the edges; a DiT's attention has no edges to wrap.
        notes.append(f"Seamless tiling works with the Stable Diffusion 1.x, 2.x and SDXL models only; {label} "
                     "ignored it.")  # fmt: skip
    if request.fast_mode:
        notes.append(f"Fast mode compiles the UNet of Stable Diffusion 1.x, 2.x and SDXL models; {label} ran "
                     "without it.")  # fmt: skip
    return notes


def _cropped(picture: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`picture` cut to `size` from its top left (a pass run padded to whole patches)."""
    return picture if picture.size == size else picture.crop((0, 0, *size))


def _take_latents(pipe: Any, channels: int) -> None:
    """Lets an image-to-image pipeline take latents of `channels` as they are: Z-Image's builds its image
    processor for SD's 4 channels, so its own 16 would be read as a picture (resized, normalised)."""
    processor = pipe.image_processor
    if processor.config.vae_latent_channels != channels:
        pipe.image_processor = type(processor).from_config(processor.config, vae_latent_channels=channels)


@functools.cache
def _unpack_takes_factor(cls: type) -> bool:
    """Whether a pipeline class's `_unpack_latents` is told the VAE's scale factor (Krea 2's knows its own); asked
    once per class, not at every previewed step."""
    return "vae_scale_factor" in inspect.signature(cls._unpack_latents).parameters


def dit_preview_latents(pipe: Any, width: int, height: int, latents: torch.Tensor) -> torch.Tensor:
    """A DiT pipeline's latents -> (B, C, h, w): Flux, Chroma and Qwen-Image pack 2x2 patches into tokens
    (B, tokens, 4C), undone with the pipeline's own `_unpack_latents` at the job's pixel size; Qwen-Image's
    are video-shaped (B, C, 1, h, w), one frame; SD3 and Z-Image hold (B, C, h, w) already.

    Flux.2's tokens are its patch grid in row order, each patch's 4C channels ordered (channel, row, column),
    normalised by the VAE's batch-norm statistics: made a (B, 4C, h/2, w/2) grid and unpatchified with the
    pipeline's own `_unpatchify_latents`. The normalisation stays: the published 32-channel preview table
    (preview.py) was fitted to the normalised latents, which is also what ComfyUI's samplers hold. ERNIE-Image
    holds the same VAE's normalised patches as a (B, 4C, h/2, w/2) grid already."""
    if latents.ndim == 4 and hasattr(pipe, "_unpatchify_latents"):
        return pipe._unpatchify_latents(latents)
    if latents.ndim == 3 and hasattr(pipe, "_unpatchify_latents"):
        rows, cols = height // (pipe.vae_scale_factor * 2), width // (pipe.vae_scale_factor * 2)
        grid = latents.transpose(1, 2).reshape(latents.shape[0], latents.shape[2], rows, cols)
        return pipe._unpatchify_latents(grid)
    if latents.ndim == 3 and not _unpack_takes_factor(type(pipe)):
        latents = pipe._unpack_latents(latents, height, width)  # Krea 2's knows its own scale factor
    elif latents.ndim == 3:
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    if latents.ndim == 5:
        latents = latents[:, :, 0]
    return latents


def _refuse_references(name: str, dit: Any, request: GenerationRequest) -> None:
    """Reference images only for a model that reads them, no more than it reads (library.dit's
    reference_image_limit), with or without a source image (Flux.2 Klein reads them beside its source too:
    families_flux2.references_beside_source). Qwen-Image-Edit (not Plus) is left to families_qwen_edit, whose
    refusal names the model that takes them."""
    count = len(request.reference_images)
    if not count or (qwen_edit.is_edit(dit) and reference_image_limit(dit) == 0):
        return
    limit = reference_image_limit(dit)
    if limit == 0:
        article = "an" if dit is not None and dit.label[:1] in "AEIOU" else "a"  # an AuraFlow, an ERNIE-Image
        kind = f"{article} {dit.label} model" if dit is not None else "a Stable Diffusion model"
        raise ModelError(
            f"{name} is {kind}: it reads no reference images. Flux.2 (dev up to 10, Klein up to 4), FLUX.1 Kontext "
            "(1), Qwen-Image-Edit Plus (2) and Qwen-Image 2.1 (10) do; remove them (--reference-image) or pick such "
            "a model."
        )
    if count > limit:
        besides = " besides the source image" if qwen_edit.is_edit(dit) or request.mode != "txt2img" else ""
        raise ModelError(f"{count} reference images: {dit.label} takes at most {limit}{besides}.")
    controlnets = len(request.controls) > len(image_units(request))  # a Redux unit goes with Kontext
    if dit.family == "flux" and (request.mode != "txt2img" or controlnets):
        # FluxKontextPipeline is text-to-image with the picture to edit as its reference, without ControlNets.
        what = "a source image" if request.mode != "txt2img" else "ControlNet units"
        raise ModelError(
            f"{name} reads its reference image (FLUX.1 Kontext's picture to edit) in a text-to-image job without "
            f"{what}: the reference is the picture the prompt edits. Remove the {what} or the reference image."
        )


def _in_unit_order(
    request: GenerationRequest, controlnets: Sequence[ControlHash], images: Mapping[ControlUnit, ControlHash]
) -> tuple[ControlHash, ...]:
    """The job's control hashes in its units' order: the ControlNet units' and the image-prompt units' (Redux,
    XLabs' IP-Adapter), which `images` maps."""
    if not images:
        return tuple(controlnets)
    others = iter(controlnets)
    return tuple(images[u] if u in images else next(others) for u in request.controls)


@contextlib.contextmanager
def _seeded_global_rng(seed: int | None, device: str) -> Iterator[None]:
    """torch's global generators seeded with `seed` inside, as they were after (None: left alone), so a pipeline
    that draws from them gives the same picture for the same seed."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
        torch.manual_seed(seed)
        yield


def _refuse_built_in(dit: Any, request: GenerationRequest) -> None:
    """A unit naming the model's own control input (BUILT_IN) only for a Flux.1 Canny / Depth dev model, which
    needs exactly one (its pipeline reads a control picture at every step), at full weight over every step (it
    has no weight or range), and no ControlNet beside it; Redux units may join it."""
    own = [unit for unit in request.controls if is_built_in(unit.model)]
    if dit is None or not dit.control_input:
        if own:
            label = dit.label if dit is not None else "a Stable Diffusion model"
            raise InvalidRequest(
                f"The control model {BUILT_IN!r} is the control input of Flux.1 Canny / Depth dev models; the chosen "
                f"model ({label}) has none: pick a ControlNet for the unit, or such a model."
            )
        return
    images = image_units(request)
    others = [unit for unit in request.controls if not is_built_in(unit.model) and unit not in images]
    if others:
        raise InvalidRequest(
            f"{dit.label} models read their control picture through their own input: ControlNets do not run with "
            f"them. Remove the {len(others)} ControlNet unit(s), and give the picture to a unit whose model is "
            f"{BUILT_IN!r}."
        )
    if len(own) != 1:
        raise InvalidRequest(
            f"{dit.label} models read one control picture (a canny edge map for Canny dev, a depth map for Depth "
            f"dev): add one control unit whose model is {BUILT_IN!r}, with the picture or the preprocessor that "
            f"makes it from yours."
            if not own else f"{dit.label} models read one control picture: remove all but one {BUILT_IN!r} unit."
        )
    unit = own[0]
    if unit.weight != 1.0 or unit.start != 0.0 or unit.end != 1.0 or unit.mode != "balanced":
        raise InvalidRequest(
            f"{dit.label} models read their control picture at every step, as trained: set the {BUILT_IN!r} unit's "
            "weight to 1, its range to 0-1 and its control mode to Balanced."
        )


def _refuse_dit_controls(dit: Any, request: GenerationRequest) -> None:
    """Control units only where they run: ControlNets of the model's family, for a job of any mode (control_dit.py);
    a Canny / Depth dev model's own input (_refuse_built_in)."""
    _refuse_built_in(dit, request)
    if dit is None or not request.controls or dit.control_input:
        return
    family = controlnet_family(dit.family)
    images = image_units(request)
    if images and family != "flux":
        raise InvalidRequest(
            f"Image-prompt (IP-Adapter) units work with Stable Diffusion 1.x and SDXL models, and Flux.1 with a "
            f"Flux.1 Redux model; {dit.label} has none."
        )
    if len(images) == len(request.controls):
        return  # Redux units only: any Flux.1 model (Fill too), in every mode (flux_redux.py)
    sprint = family == "sana" and dit.variant == SANA_SPRINT  # Sana Sprint's pipeline has no ControlNet sibling
    if family not in control_dit.CLASSES or dit.fill or qwen_edit.is_edit(dit) or sprint:
        raise InvalidRequest(
            f"Control units work with Stable Diffusion 1.x, 2.x, SDXL, SD3 / SD3.5, Flux.1, Qwen-Image, Z-Image and "
            f"Sana models in Marble; "
            f"{dit.label} has none yet. Remove the {len(request.controls)} control unit(s), or choose such a model."
        )  # fmt: skip


def _refuse_dit_edit(name: str, dit: Any, mode: str) -> None:
    if qwen_edit.is_edit(dit):
        qwen_edit.refuse_text_to_image(name, dit, mode)
    if mode != "txt2img" and not families.edits(dit.family, dit.variant, mode):
        # Every family Marble runs edits both ways since Sana Sprint's inpainting (2026-12-07); kept for the next.
        raise ModelError(
            f"{name} is a {dit.label} model; Marble runs it for text-to-image only so far (docs/model-families.md)."
        )


def _refuse_refiner(name: str, arch: ArchitectureInfo) -> None:
    if arch.refiner:
        raise ModelError(
            f"{name} is an SDXL refiner: it finishes an SDXL model's image. Choose an SDXL model, and this one as "
            "its refiner (--refiner, or Refiner in the window)."
        )


def _refuse_inpaint_only(name: str, mode: str) -> None:
    if mode == "txt2img":
        raise ModelError(
            f"{name} is an inpainting model (its UNet takes 9 input channels): it edits a source image. "
            "Pick a regular model for text-to-image, or give it a source image (and a mask) to work on."
        )


def _not_safetensors_message(path: Path, kind: str) -> str:
    if kind in ("pickle", "zip"):
        return (
            f"{path.name} is a pickled PyTorch checkpoint, not safetensors, whatever its name says. "
            "Loading a pickle can run arbitrary code, so Marble refuses it. Convert it to .safetensors first."
        )
    return f"{path.name} is not a safetensors file (its bytes match no known model format)."


def _memory_budget(pipe: Any, device: str, refiner: Any = None) -> tuple[int | None, int | None]:
    """(device memory, model bytes) for the auto memory mode; unknown off CUDA. A job's refiner counts too:
    both models sit on the card in the full modes."""
    if device != "cuda":
        return None, None
    return torch.cuda.mem_get_info()[1], weight_bytes(pipe) + (weight_bytes(refiner) if refiner is not None else 0)


def weight_bytes(pipe: Any) -> int:
    """The bytes of a pipeline's weights (its modules' parameters)."""
    return sum(
        p.numel() * p.element_size()
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module)
        for p in component.parameters()
    )


def _make_fast(pipe: Any) -> None:
    """Fast mode: channels_last convolutions for the UNet and VAE, and the UNet compiled in place.

    Compiled in place (nn.Module.compile), not wrapped: the image-to-image and inpainting pipelines
    made by from_pipe, and the LoRA adapters, keep working on the same module object. Compilation
    happens on the first call, so a loaded model costs nothing until it generates.
    """
    # The UNet's many 1x1 convolutions run faster as matrix products once compiled (a process-wide
    # inductor setting; it only affects code compiled from now on, which is this UNet's).
    import torch._inductor.config as inductor_config  # noqa: PLC0415 - loaded only for fast mode

    inductor_config.conv_1x1_as_mm = True
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    # torch.compile guards on the input's strides: text to image's latents come from randn in the default
    # layout, image to image's and inpainting's from the channels_last VAE, and the first edit after a
    # picture compiled the whole UNet a second time. Outside the compiled call, one layout for every mode.
    pipe.unet.register_forward_pre_hook(torch.compiler.disable(_channels_last_sample), with_kwargs=True)
    pipe.unet.compile()


def _channels_last_sample(
    module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The UNet's call with its `sample` (first argument or keyword) in the UNet's own channels_last layout."""
    if args:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:]), kwargs
    return args, {**kwargs, "sample": kwargs["sample"].contiguous(memory_format=torch.channels_last)}


def _is_compiled(module: Any) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def _make_eager(pipe: Any) -> None:
    """Undo nn.Module.compile: torch keeps the compiled call in this attribute and falls back to the
    module's own call when it is None."""
    pipe.unet._compiled_call_impl = None


def _eager_if_compile_fails(run: Callable[[], Any], pipe: Any, notes: list[str]) -> Any:
    """`run()`, and once more without the compiled UNet if fast mode's compile failed in the first call."""
    try:
        return run()
    except _CompileFailed as error:
        # Fast mode is an optimisation: without a working compiler the job still runs, eagerly.
        _make_eager(pipe)
        notes.append(f"Fast mode is off: torch.compile failed here ({error}).")
    return run()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ prompt encoding


def _prompt_arguments(pipe: Any, request: GenerationRequest) -> dict[str, Any]:
    """The prompts for one pipeline call, read with A1111's syntax (desktop.engine.prompt_syntax).

    Plain prompts that fit one chunk go to the pipeline as text, so its own encoding (the same as
    ours for them) runs unchanged. Weights, BREAK or more than one chunk of tokens go as embeddings:
    each chunk encoded on its own in the tokenizer's own layout (start, ids, end, padding), weighted,
    and joined; a shorter prompt or negative prompt is padded with encodings of the empty prompt, as
    A1111 pads them. One plain chunk comes out exactly as the pipeline's own encoding (tested)."""
    positive, negative = (prompt_pieces(text, request.emphasis) for text in (request.prompt, request.negative_prompt))
    encoders = _text_encoders(pipe)
    if not encoders:
        return {"prompt": request.prompt, "negative_prompt": request.negative_prompt or None}
    _check_clip_skip(encoders, request.clip_skip)
    packed = [[_pack(tokenizer, pieces) for tokenizer, _ in encoders] for pieces in (positive, negative)]
    # diffusers applies clip skip to the prompt only; A1111 (whose "Clip skip: 2" we read and write)
    # applies it to the negative prompt too, so clip skip takes the chunked path, which does both.
    # diffusers expands a multi-vector embedding by replacing its name in the text, which also hits
    # longer words that contain it ("inkstyles"); the chunked path expands the name's token instead.
    multi_vector = {start for tokenizer, _ in encoders for start in _embedding_runs(tokenizer)}
    used = {token for side in packed for chunks in side for chunk in chunks for token in chunk.ids}
    plain = not needs_chunked_encoding(positive + negative) and request.clip_skip == 1 and not used & multi_vector
    if plain and all(len(chunks) == 1 for side in packed for chunks in side):
        # Escapes such as \( are resolved by the parser; a plain prompt is one piece (or none).
        return {"prompt": positive[0].text, "negative_prompt": negative[0].text or None}
    clip_skip = request.clip_skip - 1
    xl = _is_xl(pipe)
    normalise = request.emphasis == "Original"
    embeds, pooled = _encode_chunks(encoders, packed[0], clip_skip, xl, normalise)
    if xl and not request.negative_prompt and pipe.config.force_zeros_for_empty_prompt:
        negative_embeds, negative_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
    else:
        negative_embeds, negative_pooled = _encode_chunks(encoders, packed[1], clip_skip, xl, normalise)
        if embeds.shape[1] != negative_embeds.shape[1]:
            empty = [[Chunk((), ())] for _ in encoders]
            blank, _ = _encode_chunks(encoders, empty, clip_skip, xl, normalise)
            embeds, negative_embeds = _pad_to_same_length(embeds, negative_embeds, blank)
    arguments = {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}
    if xl:
        arguments |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    return arguments


def _as_encodings(pipe: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Plain prompt texts encoded by the pipeline's own `encode_prompt`, as its call would encode them,
    so they can be kept for the next job; the call then only repeats them per image (same numbers)."""
    if "prompt" not in arguments or getattr(pipe, "text_encoder", None) is None or not hasattr(pipe, "encode_prompt"):
        return arguments  # a pipeline without SD's encode_prompt (an SDXL refiner): it encodes the text itself
    encoded = pipe.encode_prompt(
        prompt=arguments["prompt"], device=pipe._execution_device, num_images_per_prompt=1,
        do_classifier_free_guidance=True, negative_prompt=arguments["negative_prompt"],
    )
    if _is_xl(pipe):
        embeds, negative, pooled, negative_pooled = encoded
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative = encoded
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


def _check_clip_skip(encoders: list[tuple[Any, Any]], clip_skip: int) -> None:
    # The panel offers A1111's 1-12 (SD's CLIP has 12 layers); a smaller text encoder has fewer.
    layers = min(encoder.config.num_hidden_layers for _, encoder in encoders)
    if clip_skip > layers:
        raise InvalidRequest(
            f"Clip skip {clip_skip} is too deep for this model: its text encoder has {layers} layers, "
            f"so use 1 to {layers}."
        )


@contextlib.contextmanager
def _conditioning(
    pipe: Any, request: GenerationRequest,
    prompt_arguments: Callable[[Any, GenerationRequest], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """The prompt arguments for one pipeline call; while it runs, a prompt that changes between steps
    (A1111's prompt editing and alternation) or has AND parts conditions each UNet call through
    hooks (`_StepConditioning`). A prompt with none of these takes `_prompt_arguments` unchanged."""
    plan = plan_prompts(request.prompt, request.negative_prompt, _steps_run(request))
    encoders = _text_encoders(pipe)
    if not encoders or (plan.is_plain and plan.positive[0].schedule.entries[0][1] == request.prompt):
        yield (prompt_arguments or _prompt_arguments)(pipe, request)
        return
    _check_clip_skip(encoders, request.clip_skip)
    conditioning = _StepConditioning(pipe, request, plan, encoders)
    # Outside torch.compile (fast mode compiles the UNet's call, hooks included): the hooks count calls
    # and pick tensors by step, which traced code would guard on and recompile for at every step.
    handles = [
        pipe.unet.register_forward_pre_hook(torch.compiler.disable(conditioning.before_unet), with_kwargs=True),
        pipe.unet.register_forward_hook(torch.compiler.disable(conditioning.after_unet), with_kwargs=True),
    ]
    try:
        yield conditioning.arguments()
    finally:
        for handle in handles:
            handle.remove()


def _steps_run(request: GenerationRequest) -> int:
    """The denoising steps the pipeline runs: image-to-image skips the first (1 - strength), as
    diffusers' get_timesteps does; A1111 schedules prompts over the steps actually run."""
    if request.mode == "txt2img":
        return request.steps
    return max(1, min(int(request.steps * request.strength), request.steps))


class _StepConditioning:
    """Gives each UNet call the conditioning of its step, for a scheduled or AND prompt.

    diffusers' pipelines concatenate [negative; positive] once, before the loop, so a step callback
    cannot change them for classifier-free guidance; instead a forward pre-hook on the UNet replaces
    `encoder_hidden_states` (and SDXL's pooled `text_embeds`) with the encodings of the texts this
    call's step uses, each text encoded once. With AND parts (or a weight on the one part) the hook
    runs the UNet on [uncond; cond_1; ...; cond_n] in one batch and the forward hook folds the result
    back to [uncond; uncond + sum(w_i * (cond_i - uncond))]: the pipeline's own guidance then makes
    A1111's composable `uncond + cfg * sum(w_i * (cond_i - uncond))`. Calls are counted as steps
    through the scheduler's order, so a second-order sampler's two calls share their step."""

    def __init__(self, pipe: Any, request: GenerationRequest, plan: PromptPlan, encoders: list[tuple[Any, Any]]):
        self._pipe = pipe
        self._plan = plan
        self._calls = 0
        self._combine: tuple[int, tuple[float, ...]] | None = None
        self._composed = len(plan.positive) > 1 or plan.positive[0].weight != 1.0
        xl = _is_xl(pipe)
        clip_skip, normalise = request.clip_skip - 1, request.emphasis == "Original"

        def encode(text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
            packed = [_pack(tokenizer, prompt_pieces(text, request.emphasis)) for tokenizer, _ in encoders]
            return _encode_chunks(encoders, packed, clip_skip, xl, normalise)

        positive = {text: encode(text) for part in plan.positive for text in part.schedule.texts}
        negative = {text: encode(text) for text in plan.negative.texts}
        length = max(embeds.shape[1] for embeds, _ in [*positive.values(), *negative.values()])
        # Every step's texts are batched together, so all are padded to one length, as A1111 pads.
        blank = None
        for table in (positive, negative):
            for text, (embeds, pooled) in table.items():
                if embeds.shape[1] < length:
                    if blank is None:
                        empty = [[Chunk((), ())] for _ in encoders]
                        blank = _encode_chunks(encoders, empty, clip_skip, xl, normalise)[0]
                    copies = (length - embeds.shape[1]) // blank.shape[1]
                    table[text] = (torch.cat([embeds, *[blank] * copies], dim=1), pooled)
        if xl and not request.negative_prompt and pipe.config.force_zeros_for_empty_prompt:
            # As the plain path: SDXL's empty negative prompt is zeros (the pipeline's own choice).
            embeds, pooled = next(iter(positive.values()))
            negative = {"": (torch.zeros_like(embeds), torch.zeros_like(pooled))}
        self._positive, self._negative = positive, negative

    def arguments(self) -> dict[str, Any]:
        """The first step's encodings: the pipeline checks and batches these, and the hook replaces them."""
        positive, pooled = self._positive[self._plan.positive[0].schedule.at(0)]
        negative, negative_pooled = self._negative[self._plan.negative.at(0)]
        arguments = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
        if pooled is not None:
            arguments |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
        return arguments

    def before_unet(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        order = max(1, int(getattr(self._pipe.scheduler, "order", 1)))
        step = (self._calls + order - 1) // order
        self._calls += 1
        sample = args[0] if args else kwargs["sample"]
        guided = bool(self._pipe.do_classifier_free_guidance)
        images = sample.shape[0] // 2 if guided else sample.shape[0]
        parts = [self._positive[part.schedule.at(step)] for part in self._plan.positive]
        negative = self._negative[self._plan.negative.at(step)]
        # AND needs the unconditioned prediction even without guidance (A1111's formula at CFG 1).
        rows = [negative, *parts] if guided or self._composed else parts
        reference = kwargs["encoder_hidden_states"]
        kwargs = dict(kwargs)
        kwargs["encoder_hidden_states"] = torch.cat(
            [embeds.to(reference.device, reference.dtype).expand(images, -1, -1) for embeds, _ in rows]
        )
        added = kwargs.get("added_cond_kwargs")
        if added and "text_embeds" in added:
            pooled_reference = added["text_embeds"]
            added = dict(added)
            added["text_embeds"] = torch.cat(
                [pooled.to(pooled_reference.device, pooled_reference.dtype).expand(images, -1) for _, pooled in rows]
            )
            if self._composed:
                time_ids = added["time_ids"]
                added["time_ids"] = torch.cat([time_ids[:images]] + [time_ids[-images:]] * len(parts))
            kwargs["added_cond_kwargs"] = added
        self._combine = None
        if self._composed:
            latents = torch.cat([sample[:images]] + [sample[-images:]] * len(parts))
            args = (latents, *args[1:]) if args else args
            if not args:
                kwargs["sample"] = latents
            self._combine = (images, tuple(part.weight for part in self._plan.positive), guided)
        return args, kwargs

    def after_unet(self, module: Any, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self._combine is None:
            return None
        images, weights, guided = self._combine
        self._combine = None
        prediction = output[0] if isinstance(output, tuple) else output.sample
        uncond = prediction[:images]
        total = sum(
            weight * (prediction[images * (number + 1) : images * (number + 2)] - uncond)
            for number, weight in enumerate(weights)
        )
        combined = uncond + total
        result = torch.cat([uncond, combined]) if guided else combined
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output


def _is_xl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _text_encoders(pipe: Any) -> list[tuple[Any, Any]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None))]
    if _is_xl(pipe):
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None and encoder is not None]


def _pack(tokenizer: Any, pieces: tuple[PromptPiece, ...]) -> tuple[Chunk, ...]:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    runs = _embedding_runs(tokenizer)

    def tokenize(text: str) -> list[int | tuple[int, ...]]:
        # An embedding's name is one added token, matched only as a whole word (lora_adapters); a
        # multi-vector one becomes its run of ids, as one tuple, so the packer keeps it in one chunk.
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        return [runs.get(token, token) for token in ids]

    size = tokenizer.model_max_length - 2
    return pack_prompt(pieces, tokenize, size, comma if comma != tokenizer.unk_token_id else None)


def _embedding_runs(tokenizer: Any) -> dict[int, tuple[int, ...]]:
    """Each multi-vector embedding's token id -> the ids of all its vectors (`name`, `name_1`,
    `name_2`... as diffusers' textual-inversion loader adds them)."""
    vocab = tokenizer.get_added_vocab()
    runs: dict[int, tuple[int, ...]] = {}
    for token, token_id in vocab.items():
        run = [token_id]
        while f"{token}_{len(run)}" in vocab:
            run.append(vocab[f"{token}_{len(run)}"])
        if len(run) > 1:
            runs[token_id] = tuple(run)
    return runs


def _encode_chunks(
    encoders: list[tuple[Any, Any]], packed: list[tuple[Chunk, ...]], clip_skip: int, xl: bool, normalise: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, 77 * chunks, width) hidden states, and for SDXL the pooled embedding of the first chunk.
    With `normalise` (A1111's "Original" emphasis) a weighted chunk keeps its mean ("No norm": not)."""
    pooled = None
    joined = []
    for index, chunk in enumerate(packed[0]):
        parts = []
        for (tokenizer, encoder), chunks in zip(encoders, packed, strict=True):
            size = tokenizer.model_max_length
            ids = [tokenizer.bos_token_id, *chunks[index].ids, tokenizer.eos_token_id]
            ids += [tokenizer.pad_token_id] * (size - len(ids))
            ids_tensor = torch.tensor([ids], device=get_module_execution_device(encoder))
            output = encoder(ids_tensor, output_hidden_states=True)
            if xl:
                if pooled is None and output[0].ndim == 2:
                    pooled = output[0]
                parts.append(output.hidden_states[-(clip_skip + 2)])
            elif clip_skip:
                norm = getattr(encoder, "final_layer_norm", None) or encoder.text_model.final_layer_norm
                parts.append(norm(output.hidden_states[-(clip_skip + 1)]))
            else:
                parts.append(output.last_hidden_state)
        hidden = torch.cat(parts, dim=-1)
        if any(weight != 1.0 for weight in chunk.weights):
            # A1111's emphasis: scale each token's vector, then restore the chunk's mean, so weights
            # change the balance between words rather than the overall strength of the prompt.
            weights = [1.0, *chunk.weights] + [1.0] * (hidden.shape[1] - 1 - len(chunk.weights))
            mean = hidden.mean()
            hidden = hidden * hidden.new_tensor(weights)[None, :, None]
            if normalise:
                hidden = hidden * (mean / hidden.mean())
        joined.append(hidden)
    return torch.cat(joined, dim=1), pooled


def _pad_to_same_length(
    first: torch.Tensor, second: torch.Tensor, blank: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    def padded(embeds: torch.Tensor, length: int) -> torch.Tensor:
        missing = (length - embeds.shape[1]) // blank.shape[1]
        return torch.cat([embeds, *([blank] * missing)], dim=1)

    length = max(first.shape[1], second.shape[1])
    return padded(first, length), padded(second, length)


def _in_background(work: Callable[[Path], str], path: Path) -> concurrent.futures.Future[str]:
    """`work(path)` on a thread of its own (a daemon: a hash is worth nothing once the process ends); its
    result, or its exception, comes from `.result()`."""
    future: concurrent.futures.Future[str] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(work(path))
        except BaseException as error:  # handed to whoever waits for the result
            future.set_exception(error)

    threading.Thread(target=run, name="marble-model-hash", daemon=True).start()
    return future
