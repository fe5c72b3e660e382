"""Images annotated by the tests themselves in every format Marble reads, with the fields each must give.

Each case writes the text chunks the named tool writes (shapes taken from real files of those tools)
onto a small PNG; `fields` is what using all its parameters must set in Marble.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

BIG_SEED = 2**64 - 1


@dataclass(frozen=True)
class RecipeCase:
    name: str
    format: str
    chunks: dict[str, str]
    fields: dict[str, Any]

    def write(self, folder: Path) -> Path:
        info = PngImagePlugin.PngInfo()
        for key, value in self.chunks.items():
            info.add_text(key, value)
        path = folder / f"{self.name}.png"
        Image.new("RGB", (64, 48), (40, 90, 160)).save(path, pnginfo=info)
        return path


def _comfy_graph() -> str:
    return json.dumps({
        "3": {"class_type": "KSampler", "inputs": {
            "seed": BIG_SEED, "steps": 22, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "folder/comfy-model.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 640, "height": 448, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a comfy lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "fog", "clip": ["4", 1]}},
    })  # fmt: skip


CASES = (
    RecipeCase(
        "a1111", "a1111",
        {"parameters": "a red fox, snow\nNegative prompt: blurry\nSteps: 24, Sampler: Euler a, CFG scale: 6.5, "
                       "Seed: 1234, Size: 576x448, Clip skip: 2, Version: v1.10.1"},
        {"prompt": "a red fox, snow", "negative_prompt": "blurry", "steps": 24, "sampler": "Euler a",
         "cfg_scale": 6.5, "seed": 1234, "width": 576, "height": 448, "clip_skip": 2},
    ),
    RecipeCase(
        "forge", "forge",
        {"parameters": "forge castle\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 99, "
                       "Size: 512x768, Version: f2.0.1v1.10.1-previous-313"},
        {"prompt": "forge castle", "negative_prompt": "", "steps": 12, "sampler": "DPM++ 2M Karras",
         "cfg_scale": 4.0, "seed": 99, "width": 512, "height": 768},
    ),
    RecipeCase(
        "swarmui", "swarmui",
        {"parameters": json.dumps({"sui_image_params": {
            "prompt": "swarm of bees", "negativeprompt": "people", "seed": 31337, "steps": 18, "cfgscale": 5.5,
            "width": 704, "height": 512, "sampler": "euler", "scheduler": "normal"}})},
        {"prompt": "swarm of bees", "negative_prompt": "people", "steps": 18, "sampler": "Euler",
         "cfg_scale": 5.5, "seed": 31337, "width": 704, "height": 512},
    ),
    RecipeCase(
        "comfyui", "comfyui", {"prompt": _comfy_graph()},
        {"prompt": "a comfy lighthouse", "negative_prompt": "fog", "steps": 22, "sampler": "DPM++ 2M Karras",
         "cfg_scale": 6.5, "seed": BIG_SEED, "width": 640, "height": 448},
    ),
    RecipeCase(
        "invokeai3", "invokeai",
        {"invokeai_metadata": json.dumps({
            "positive_prompt": "invoke garden", "negative_prompt": "weeds", "seed": 77, "steps": 26,
            "cfg_scale": 7.0, "width": 768, "height": 768, "scheduler": "euler"})},
        {"prompt": "invoke garden", "negative_prompt": "weeds", "steps": 26, "sampler": "Euler",
         "cfg_scale": 7.0, "seed": 77, "width": 768, "height": 768},
    ),
    RecipeCase(
        "invokeai2", "invokeai",
        {"sd-metadata": json.dumps({"model_weights": "stable-diffusion-1.5", "image": {
            "prompt": [{"prompt": "old mill [rain]"}], "steps": 40, "cfg_scale": 8.5, "seed": 5,
            "width": 512, "height": 576, "sampler": "k_lms"}})},
        {"prompt": "old mill", "negative_prompt": "rain", "steps": 40, "sampler": "LMS",
         "cfg_scale": 8.5, "seed": 5, "width": 512, "height": 576},
    ),
    RecipeCase(
        "invokeai1", "invokeai", {"Dream": '"dream boat [storm]" -s 33 -S 4242 -W 448 -H 512 -C 9 -A k_euler_a'},
        {"prompt": "dream boat", "negative_prompt": "storm", "steps": 33, "sampler": "Euler a",
         "cfg_scale": 9.0, "seed": 4242, "width": 448, "height": 512},
    ),
    RecipeCase(
        "novelai", "novelai",
        {"Software": "NovelAI", "Description": "space cat",
         "Comment": json.dumps({"prompt": "space cat", "uc": "lowres", "steps": 28, "scale": 11.0, "seed": 2024,
                                "width": 832, "height": 576, "sampler": "k_euler"})},
        {"prompt": "space cat", "negative_prompt": "lowres", "steps": 28, "sampler": "Euler",
         "cfg_scale": 11.0, "seed": 2024, "width": 832, "height": 576},
    ),
    RecipeCase(
        "fooocus", "fooocus",
        {"fooocus_scheme": "fooocus",
         "parameters": json.dumps({"prompt": "fooocus goldfish", "negative_prompt": "", "steps": 30,
                                   "guidance_scale": 4.0, "seed": str(BIG_SEED - 1), "resolution": "(1024, 768)",
                                   "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras"})},
        {"prompt": "fooocus goldfish", "negative_prompt": "", "steps": 30, "sampler": "DPM++ 2M SDE Karras",
         "cfg_scale": 4.0, "seed": BIG_SEED - 1, "width": 1024, "height": 768},
    ),
)  # fmt: skip
