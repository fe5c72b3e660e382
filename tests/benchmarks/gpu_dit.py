"""gpu.py's diffusion-transformer part (issue 27): Flux-size, SD3.5-large-size and FLUX.3-size at 1024x1024.

Random weights in the real architectures, built on the GPU in bf16 from the configs in resources/configs
(FLUX.1-dev: 12B transformer, T5-XXL, CLIP-L; SD3.5 large: 8B transformer, T5-XXL, CLIP-L, CLIP-G), saved
once as a diffusers folder and loaded both ways. Figures: first-image time (load + one job) of the app
and of bare diffusers, app vs bare per job (interleaved rounds, target >= 0.97), and per memory mode
(full, offload, fp8, group, sequential) the peak VRAM and seconds of a short job, plus what `auto`
picks on this card. `--smoke` runs the same code on the CPU with every dimension cut (no figures).
FLUX.3 (`--families flux3`: its 5.5B transformer at diffusers' defaults, Qwen3-VL 4B, Flux.2's VAE, Marble's Qwen
tokenizer) is compared with diffusers' modular FLUX.3 pipeline, its prompt rewriter taken out, at CFG 3.5.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DIT_FAMILIES = {"flux": "flux-dev", "sd3.5": "sd3.5-large", "flux3": "flux3"}
DIT_SIZE = 1024
ROUNDS = 3
MODE_STEPS = 4  # the memory modes run short jobs: sequential offload moves every layer at every step
MODES = ("full", "offload", "fp8", "group", "sequential")
# --smoke: the same architecture with every width and depth cut to seconds on a CPU.
_SMOKE = {
    "flux": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
             "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 6, 6]},
    "sd3.5": {"num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16, "joint_attention_dim": 32,
              "caption_projection_dim": 32, "pooled_projection_dim": 64, "dual_attention_layers": []},
    "flux3": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16,
              "joint_attention_dim": 8 * 16, "timestep_channels": 32, "axes_dims_rope": [4, 4, 4, 4]},
}  # fmt: skip
# FLUX.3 reads Qwen3-VL's layers 4 ... 32: the smoke encoder keeps 32 layers, 16 wide.
_SMOKE_QWEN3VL = {"hidden_size": 16, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
                  "head_dim": 8, "num_hidden_layers": 32}  # fmt: skip
_SMOKE_FLUX2_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1}
_SMOKE_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 1, "num_heads": 4}
_SMOKE_CLIP = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
               "projection_dim": 32}  # fmt: skip
_SMOKE_VAE = {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1}


def build_flux3(folder: Path, setup: Any) -> Path:
    """A FLUX.3 folder of random weights (Marble's pipeline's layout: tests/support/tiny_flux3.save_folder)."""
    import torch
    import transformers
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux3Transformer2DModel

    from desktop.engine.backends.families_flux3 import pipeline_class
    from desktop.engine.backends.families_qwen21 import load_processor
    from desktop.engine.resources import Resources
    from tests.support.tiny_flux3 import save_folder

    resources = Resources.default()
    configs = resources.configs / "flux3"
    text = json.loads((configs / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    if setup.smoke:
        text["text_config"] |= _SMOKE_QWEN3VL
        text["vision_config"] |= {"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                                  "out_hidden_size": 16, "deepstack_visual_indexes": [0]}  # fmt: skip
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(setup.dtype)
    try:
        with torch.device(setup.device):
            transformer = Flux3Transformer2DModel.from_config(
                Flux3Transformer2DModel.load_config(str(configs / "transformer")) | (_SMOKE["flux3"] if setup.smoke
                                                                                      else {}))  # fmt: skip
            vae_config = AutoencoderKLFlux2.load_config(str(configs / "vae"))
            vae = AutoencoderKLFlux2.from_config(vae_config | (_SMOKE_FLUX2_VAE if setup.smoke else {}))
            encoder = transformers.Qwen3VLForConditionalGeneration(transformers.Qwen3VLConfig(**text))
    finally:
        torch.set_default_dtype(default)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(configs / "scheduler"))
    processor = load_processor(resources.tokenizers / "qwen")
    pipe = pipeline_class()(scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=processor,
                            transformer=transformer)  # fmt: skip
    save_folder(pipe.to(setup.dtype), folder)
    del pipe, transformer, encoder, vae
    setup.reset_peak()
    return folder


def modular_flux3(folder: Path, setup: Any, guidance: float) -> Any:
    """diffusers' modular FLUX.3 pipeline over the folder's parts, its prompt rewriter taken out."""
    import copy

    import transformers
    from diffusers import AutoencoderKLFlux2, Flux3AutoBlocks, Flux3Transformer2DModel
    from diffusers.modular_pipelines.flux3.image_processor import Flux3ImageProcessor

    from desktop.engine.backends.families_qwen21 import load_processor
    from desktop.engine.resources import Resources

    blocks = copy.deepcopy(Flux3AutoBlocks())
    blocks.sub_blocks.pop("prompt_upsampler")
    pipe = blocks.init_pipeline()
    loaded = {"dtype": setup.dtype, "local_files_only": True}
    vae = AutoencoderKLFlux2.from_pretrained(str(folder / "vae"), **loaded).to(setup.device)
    pipe.update_components(
        transformer=Flux3Transformer2DModel.from_pretrained(str(folder / "transformer"), **loaded).to(setup.device),
        vae=vae, tokenizer=load_processor(Resources.default().tokenizers / "qwen"),
        text_encoder=transformers.Qwen3VLForConditionalGeneration.from_pretrained(
            str(folder / "text_encoder"), **loaded).to(setup.device),
        image_processor=Flux3ImageProcessor(vae_scale_factor=2 ** len(vae.config.block_out_channels),
                                            vae_latent_channels=vae.config.latent_channels),
    )  # fmt: skip
    pipe.update_components(guider=pipe.guider.new(guidance_scale=guidance))
    return pipe


def build_dit(family: str, folder: Path, setup: Any) -> Path:
    import torch
    import transformers
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from desktop.engine.backends.families import shipped_tokenizers
    from desktop.engine.resources import Resources

    configs = Resources.default().configs / DIT_FAMILIES[family]

    def config(part: str, smoke: dict | None = None) -> dict:
        values = json.loads((configs / part / "config.json").read_text(encoding="utf-8"))
        return values | (smoke or {}) if setup.smoke else values

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    # bf16 from the start: a 12B transformer would take 48 GB in fp32 before the cast.
    torch.set_default_dtype(setup.dtype)
    try:
        with torch.device(setup.device):
            transformer_cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
            parts: dict[str, Any] = {
                "transformer": transformer_cls.from_config(config("transformer", _SMOKE[family])),
                "vae": AutoencoderKL.from_config(config("vae", _SMOKE_VAE)),
                "scheduler": FlowMatchEulerDiscreteScheduler.from_config(
                    json.loads((configs / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
                ),
            }
            clip = transformers.CLIPTextConfig(**config("text_encoder", _SMOKE_CLIP))
            t5 = transformers.T5Config(**config("text_encoder_2" if family == "flux" else "text_encoder_3", _SMOKE_T5))
            if family == "flux":
                parts["text_encoder"] = transformers.CLIPTextModel(clip)
                parts["text_encoder_2"] = transformers.T5EncoderModel(t5)
                cls = FluxPipeline
            else:
                clip_g = transformers.CLIPTextConfig(**config("text_encoder_2", _SMOKE_CLIP))
                parts |= {
                    "text_encoder": transformers.CLIPTextModelWithProjection(clip),
                    "text_encoder_2": transformers.CLIPTextModelWithProjection(clip_g),
                    "text_encoder_3": transformers.T5EncoderModel(t5),
                }
                cls = StableDiffusion3Pipeline
    finally:
        torch.set_default_dtype(default)
    pipe = cls(**parts, **shipped_tokenizers(Resources.default(), configs, family))
    pipe.to(setup.dtype).save_pretrained(folder, safe_serialization=True)
    for sub in folder.iterdir():  # the shipped tokenizers serve, as for a real folder without them
        if sub.name.startswith("tokenizer"):
            for file in sub.iterdir():
                file.unlink()
            sub.rmdir()
    del pipe, parts
    setup.reset_peak()
    return folder


def bench_dit(family: str, steps: int, work: Path, setup: Any, result: dict, checkpoint: Callable[[], None]) -> None:
    """Fills `result` section by section, calling `checkpoint` after each."""
    import torch
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.backends.dit_memory import choose_dit_mode
    from desktop.engine.backends.families import memory_sizes, shipped_tokenizers
    from desktop.engine.jobs import CancelToken
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    size = 64 if setup.smoke else DIT_SIZE
    precision = "fp32" if setup.smoke else "bf16"
    started = time.perf_counter()
    folder = (build_flux3 if family == "flux3" else lambda f, s: build_dit(family, f, s))(work / family, setup)
    result |= {"family": family, "size": size, "steps": steps, "build_seconds": round(time.perf_counter() - started, 1)}
    checkpoint()
    prompt = "a red fox in a spacesuit, studio light"
    guidance = {"guidance_scale": 3.5, "max_sequence_length": 512} if family == "flux" else {
        "guidance_scale": 7.0, "negative_prompt": None, "max_sequence_length": 256}  # fmt: skip
    cfg = 3.5 if family == "flux3" else 7.0  # FLUX.3's modular pipeline's default guidance
    cls = FluxPipeline if family == "flux" else StableDiffusion3Pipeline

    def request(n: int, mode: str = "full") -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt, negative_prompt="", model=str(folder), steps=n, seed=1, width=size, height=size,
            device=setup.device, precision=precision, memory_mode=mode, distilled_cfg_scale=3.5, cfg_scale=cfg,
        )  # fmt: skip

    paths = AppPaths.for_root(work / f"home-{family}").ensure()
    backend = DiffusersBackend(paths, Resources.default(), ModelCatalog(paths.models), preview_every=1)

    def run_app(n: int, mode: str = "full") -> float:
        setup.synchronize()
        t = time.perf_counter()
        backend.load(request(n, mode))
        backend.generate(request(n, mode), 0, lambda step: None, CancelToken())
        setup.synchronize()
        return time.perf_counter() - t

    setup.synchronize()
    t = time.perf_counter()
    if family == "flux3":
        bare = modular_flux3(folder, setup, cfg)
        guidance = {"negative_prompt": "", "output": "images"}
    else:
        bare = cls.from_pretrained(
            str(folder), dtype=setup.dtype, local_files_only=True,
            **shipped_tokenizers(Resources.default(), folder, family),
        ).to(setup.device)  # fmt: skip
        bare.set_progress_bar_config(disable=True)

    def run_bare(n: int) -> float:
        setup.synchronize()
        t = time.perf_counter()
        bare(prompt=prompt, num_inference_steps=n, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(1), **guidance)  # fmt: skip
        setup.synchronize()
        return time.perf_counter() - t

    bare_first = time.perf_counter() - t + run_bare(steps)
    app_first = run_app(steps)  # load (weights to RAM, then to the GPU by the memory mode) + first job
    times: dict[str, list[float]] = {"bare": [], "app": []}
    for _ in range(ROUNDS):
        times["bare"].append(run_bare(steps))
        times["app"].append(run_app(steps))
    median = {name: statistics.median(values) for name, values in times.items()}
    result |= {
        "first_image_seconds": {"app": round(app_first, 1), "bare": round(bare_first, 1)},
        "bare_steps_per_s": round(steps / median["bare"], 2), "app_steps_per_s": round(steps / median["app"], 2),
        "ratio": round(median["bare"] / median["app"], 3),
        "seconds": {name: [round(v, 2) for v in values] for name, values in times.items()},
    }  # fmt: skip
    sizes = memory_sizes(backend._pipe, backend._dit)
    bare = None
    backend.unload()
    setup.reset_peak()
    if not setup.smoke:
        free = torch.cuda.mem_get_info()[0]
        result["auto_mode_here"] = choose_dit_mode("auto", "cuda", free, sizes, size * size)
        result["model_gib"] = round(sizes.total / 2**30, 1)
    checkpoint()
    vram = {}
    for mode in MODES:
        backend.unload()
        setup.reset_peak()
        try:
            seconds = run_app(MODE_STEPS, mode)
        except Exception as error:  # noqa: BLE001 - a benchmark records a failing mode and goes on
            vram[mode] = {"error": str(error).splitlines()[0][:200]}
        else:
            vram[mode] = {"peak_gib": setup.peak_gib(), "seconds": round(seconds, 2), "steps": MODE_STEPS}
        result["vram_by_mode"] = vram
        checkpoint()
    backend.unload()
