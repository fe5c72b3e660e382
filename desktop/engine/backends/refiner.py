"""A1111's SDXL refiner: the base model runs the first `refiner_switch_at` of the steps and hands its
latents to the refiner, which runs the rest (diffusers' `denoising_end` / `denoising_start` handoff).

The refiner is an SDXL img2img pipeline with only the OpenCLIP-G encoder and aesthetic-score
conditioning (`requires_aesthetics_score`). It is loaded from the library by name on the generation
thread, kept while the same one is asked for, and run with a fresh scheduler of the job's sampler made
from its own config, as the base model's is.

A single file is converted once: its key map goes in the converted-model cache beside the main models'
(conversion_cache.py), and later starts build the refiner over the file's own bytes. Where it sits follows
the base model's memory mode: on the device whole, tiled and sliced as the base is, or with model offload when
the base is offloaded (the auto mode counts both models' weights against the card's memory).

torch and diffusers are imported inside the functions: this module is loaded only by the diffusers backend
during a job.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import RefinerHash
from desktop.engine.backends.conversion_cache import ConversionCache
from desktop.engine.backends.memory import apply_mode
from desktop.engine.backends.schedulers import DEFAULT_SAMPLER, SAMPLERS
from desktop.engine.errors import ModelError
from desktop.engine.library.catalog import HashCache, ModelCatalog
from desktop.engine.library.checkpoint import check_model_folder, detect_model, read_safetensors_header
from desktop.engine.request import GenerationRequest
from desktop.engine.resources import Resources

# diffusers' handoff: the base denoises while t >= this cutoff, the refiner below it.
_TRAIN_TIMESTEPS = 1000
CONFIG_NAME = "sdxl-refiner"  # the shipped config folder a single file is converted with


class Refiners:
    """Loads the SDXL refiner a request names, once, places it as the base model's memory mode says, and runs
    its pass."""

    def __init__(
        self, catalog: ModelCatalog, hashes: HashCache, resources: Resources, conversions: ConversionCache,
        converted_folder: Callable[[Path, Path, str], Path],
    ) -> None:
        self._catalog = catalog
        self._hashes = hashes
        self._resources = resources
        self._conversions = conversions
        self._converted_folder = converted_folder  # (file, config folder, config name) -> its cache entry
        self._key: tuple[str, str] | None = None
        self._pipe: Any = None
        self._mode: str | None = None  # the memory mode it was placed in (memory.py); None: on the CPU as loaded

    def forget(self) -> None:
        if self._mode == "offload":
            self._pipe.remove_all_hooks()  # the offload hooks hold the modules too
        self._key, self._pipe, self._mode = None, None, None

    def used(self, request: GenerationRequest) -> RefinerHash | None:
        """What metadata records: the refiner's name and, for a single file, its AutoV2 hash."""
        if not request.refiner:
            return None
        entry = self._catalog.resolve(request.refiner)
        return RefinerHash(entry.name, None if entry.is_folder else self._hashes.autov2(entry.path))

    def pipe(self, name: str, dtype: Any) -> Any:
        """The refiner `name` in `dtype`, loaded on the CPU the first time (`place` puts it on the device)."""
        entry = self._catalog.resolve(name)
        key = (str(entry.path), str(dtype))
        if self._pipe is not None and key == self._key:
            return self._pipe
        self.forget()
        arch = detect_model(entry.path)
        if not arch.refiner:
            raise ModelError(f"{entry.name} is {arch.label}, not an SDXL refiner: choose a refiner model.")
        if entry.is_folder:
            self._pipe = _load_folder(entry.path, entry.name, dtype)
        else:
            self._pipe = self._load_file(entry.path, entry.name, dtype)
        self._key = key
        return self._pipe

    def place(self, device: str, mode: str) -> Any:
        """The loaded refiner on `device` in the base model's memory `mode` (memory.apply_mode, as the base): whole,
        tiled and sliced, or with model offload (each module on the device only while it runs), so the two fit a
        card that holds neither whole beside the other."""
        if mode != self._mode:
            apply_mode(self._pipe, self._mode, mode, device)
            self._mode = mode
        return self._pipe

    def _load_file(self, path: Path, name: str, dtype: Any) -> Any:
        """An original-layout refiner file (sd_xl_refiner_1.0.safetensors) through the shipped config; from its
        key map when an earlier start converted it."""
        from diffusers import StableDiffusionXLImg2ImgPipeline

        if not path.name.endswith(".safetensors"):
            # diffusers picks its reader by the name; any other name would go through torch.load.
            raise ModelError(
                f"The refiner {name!r} must be a .safetensors file; rename it or import it into the library."
            )
        config = self._resources.config_folder(CONFIG_NAME)
        target = self._converted_folder(path, config, CONFIG_NAME)
        modules = self._conversions.load(target, path, dtype)
        try:
            if modules is not None:
                pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                    str(target), dtype=dtype, local_files_only=True, use_safetensors=True, **modules
                )
            else:
                pipe = _convert_file(path, config, self._resources)
                self._conversions.save(pipe, target, path)  # a failure is only logged: converted again next time
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise ModelError(f"{name} looks like an SDXL refiner but could not be loaded: {error}") from error
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(dtype=dtype)

    def extra_steps(self, pipe: Any, request: GenerationRequest) -> int:
        """How many steps the refiner will run: the schedule's timesteps below the handoff."""
        scheduler = make_scheduler(pipe.scheduler, request.sampler)
        scheduler.set_timesteps(request.steps)
        cutoff = handoff_timestep(request.refiner_switch_at)
        return int(sum(1 for t in scheduler.timesteps if float(t) < cutoff))

    def run(
        self, pipe: Any, request: GenerationRequest, seeds: tuple[int, ...], latents: Any, on_step: Callable[..., Any],
        make_watcher: Callable[[Any], Any],
    ) -> Any:
        """The refiner's pass over the base pass's latents, seeded as the base pass was."""
        import torch

        scheduler = make_scheduler(pipe.scheduler, request.sampler)
        default = pipe.scheduler
        pipe.scheduler = scheduler
        watcher = make_watcher(scheduler)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        try:
            return pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                image=latents,
                num_inference_steps=request.steps,
                denoising_start=float(request.refiner_switch_at),
                guidance_scale=request.cfg_scale,
                num_images_per_prompt=request.batch_size,
                generator=generators[0] if len(generators) == 1 else generators,
                callback_on_step_end=on_step(watcher),
                callback_on_step_end_tensor_inputs=["latents"],
            )
        finally:
            watcher.detach()
            pipe.scheduler = default


def handoff_timestep(switch_at: float) -> int:
    return int(round(_TRAIN_TIMESTEPS - switch_at * _TRAIN_TIMESTEPS))


def make_scheduler(default: Any, sampler: str) -> Any:
    import diffusers

    if sampler == DEFAULT_SAMPLER:
        return type(default).from_config(default.config)
    spec = SAMPLERS[sampler]
    return getattr(diffusers, spec.scheduler_class).from_config(default.config, **dict(spec.overrides))


def _convert_file(path: Path, config: Path, resources: Resources) -> Any:
    """The refiner converted from its single file in the file's own float type (what the key map records)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from desktop.engine.backends.diffusers_backend import header_dtype, shared_tokenizers

    return StableDiffusionXLImg2ImgPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=header_dtype(read_safetensors_header(path)),
        **shared_tokenizers(resources, config, "sdxl"),
    )


def _load_folder(folder: Path, name: str, dtype: Any) -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    check_model_folder(folder, name=name)
    try:
        pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            str(folder), dtype=dtype, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ModelError(f"Could not load the refiner {name!r} from {folder}: {error}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe
