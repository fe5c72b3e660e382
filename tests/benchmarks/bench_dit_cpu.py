"""Issue 27's CPU figure: a Flux-shaped model scaled down, the app's generation path against bare diffusers.

    nice .venv/bin/python tests/benchmarks/bench_dit_cpu.py [--repeats 5] [--size 256] [--steps 8]

The model is FLUX.1-dev's architecture from resources/configs/flux-dev with every width and depth cut
(4 double and 8 single blocks of width 384 instead of 19 and 38 of 3072; a 4-layer T5 and CLIP; the real
VAE layout with narrower channels), seeded random weights, saved once as a diffusers folder. The app
path is DiffusersBackend.load + generate (the DiT path: LoRA switching, memory mode, step callback);
the bare path is FluxPipeline.from_pretrained(...)(...) with the same seed, size, steps and guidance.
The two run interleaved in this process after one untimed run each, so machine noise hits both alike.
Prints the median seconds of each and bare/app (target: app within 5% of bare, i.e. bare/app >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - sets sys.path and the offline environment first


def build(folder: Path, t5_width: int = 256, t5_layers: int = 4) -> Path:
    """The scaled-down Flux as a diffusers folder, its T5 `t5_width` wide and `t5_layers` deep."""
    import json

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from desktop.engine.backends.families import shipped_tokenizers
    from desktop.engine.resources import Resources

    configs = Resources.default().configs / "flux-dev"

    def shipped(part: str) -> dict:
        return json.loads((configs / part).read_text(encoding="utf-8"))

    torch.manual_seed(0)
    transformer_config = shipped("transformer/config.json") | {
        "num_layers": 4, "num_single_layers": 8, "num_attention_heads": 6, "attention_head_dim": 64,
        "joint_attention_dim": t5_width, "pooled_projection_dim": 128, "axes_dims_rope": [8, 28, 28],
    }  # fmt: skip
    transformer = FluxTransformer2DModel.from_config(transformer_config)
    vae_config = shipped("vae/config.json") | {"block_out_channels": [32, 64, 64, 64], "norm_num_groups": 32}
    vae = AutoencoderKL.from_config(vae_config)
    t5 = T5EncoderModel(T5Config(**(shipped("text_encoder_2/config.json") | {
        "d_model": t5_width, "d_kv": 32, "d_ff": 2 * t5_width, "num_layers": t5_layers, "num_heads": t5_width // 32,
    })))  # fmt: skip
    clip = CLIPTextModel(CLIPTextConfig(**(shipped("text_encoder/config.json") | {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "projection_dim": 128,
    })))  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(shipped("scheduler/scheduler_config.json"))
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, text_encoder_2=t5, transformer=transformer,
        **shipped_tokenizers(Resources.default(), configs, "flux"),
    )  # fmt: skip
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for sub in folder.iterdir():  # Marble's shipped tokenizers serve, as for the shipped configs
        if sub.name.startswith("tokenizer"):
            for file in sub.iterdir():
                file.unlink()
            sub.rmdir()
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    import torch
    from diffusers import FluxPipeline

    from desktop.engine.backends.diffusers_backend import DiffusersBackend
    from desktop.engine.backends.families import shipped_tokenizers
    from desktop.engine.jobs import CancelToken
    from desktop.engine.library.catalog import ModelCatalog
    from desktop.engine.paths import AppPaths
    from desktop.engine.request import GenerationRequest
    from desktop.engine.resources import Resources

    prompt = "a red fox in a spacesuit, studio light"
    with tempfile.TemporaryDirectory(prefix="marble-dit-cpu-") as work:
        folder = build(Path(work) / "flux-scaled")
        bare = FluxPipeline.from_pretrained(
            str(folder), local_files_only=True, **shipped_tokenizers(Resources.default(), folder, "flux")
        )
        bare.set_progress_bar_config(disable=True)
        parameters = sum(p.numel() for p in bare.transformer.parameters())
        paths = AppPaths.for_root(Path(work) / "home").ensure()
        threads = torch.get_num_threads()
        # The same thread count for both: by default the app sizes its pool to the cores others leave free.
        backend = DiffusersBackend(
            paths, Resources.default(), ModelCatalog(paths.models), preview_every=1, cpu_threads=threads
        )
        request = GenerationRequest(
            prompt=prompt, negative_prompt="", model=str(folder), steps=args.steps, seed=1, width=args.size,
            height=args.size, device="cpu", distilled_cfg_scale=3.5, memory_mode="auto",
        )  # fmt: skip
        backend.load(request)

        def run_bare() -> float:
            torch.set_num_threads(threads)
            t = time.perf_counter()
            bare(
                prompt=prompt, num_inference_steps=args.steps, width=args.size, height=args.size, guidance_scale=3.5,
                max_sequence_length=512, generator=torch.Generator("cpu").manual_seed(1),
            )  # fmt: skip
            return time.perf_counter() - t

        def run_app() -> float:
            t = time.perf_counter()
            backend.generate(request, 0, lambda step: None, CancelToken())
            return time.perf_counter() - t

        run_app()
        run_bare()
        times: dict[str, list[float]] = {"bare": [], "app": []}
        for _ in range(args.repeats):
            times["bare"].append(run_bare())
            times["app"].append(run_app())
        bare_median, app_median = statistics.median(times["bare"]), statistics.median(times["app"])
        print(f"Flux-shaped model, {parameters / 1e6:.1f}M transformer parameters, {args.size}x{args.size}, "
              f"{args.steps} steps, torch threads {threads}")  # fmt: skip
        print(f"bare diffusers: median {bare_median:.3f} s  {[round(t, 3) for t in times['bare']]}")
        print(f"app (DiT path): median {app_median:.3f} s  {[round(t, 3) for t in times['app']]}")
        print(f"app/bare time: {app_median / bare_median:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
