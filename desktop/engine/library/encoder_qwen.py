"""The LLM text encoders of Qwen-Image (Qwen2.5-VL), Z-Image and Flux.2 Klein (Qwen3), Flux.2 dev
(Mistral Small 3.x 24B), ERNIE-Image (Ministral 3 3B) and Lumina Image 2.0 (Gemma-2 2B), judged from their tensors.

ComfyUI keeps them as single files in transformers' older names: `model.embed_tokens`, `model.layers.N...`,
`model.norm`, Qwen2.5-VL's vision tower under `visual.*` (left out of the text-only files) and sometimes
`lm_head`. transformers >= 4.52 saves Qwen2.5-VL under `model.language_model.*` / `model.visual.*`, and a
diffusers folder's Qwen3Model without any `model.` level. The two kinds differ in their attention: Qwen2.5
has biases on q/k/v, Qwen3 has none but normalises q and k per head (`q_norm`, `k_norm`), Mistral has
neither, and Gemma 2 has neither but normalises before and after each feed-forward (`pre_feedforward_layernorm`,
`post_feedforward_layernorm`, Gemma's own). ComfyUI's Gemma-2 2B file for Lumina (`gemma_2_2b_fp16.safetensors`)
carries its SentencePiece tokenizer as a uint8 tensor `spiece_model`, which Marble does not read (a tokenizer
folder serves). ComfyUI's Mistral files for Flux.2 dev (`mistral_3_small_flux2_bf16.safetensors`, `_fp8`) hold the
language model in the same names, sometimes cut to the 30 layers Flux.2 reads, and carry Mistral's own
tokenizer (its tekken.json) as a uint8 tensor `tekken_model` (backends/tekken_tokenizer.py reads it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from desktop.engine.errors import ModelError

QWEN25_VL = "qwen2.5-vl"
QWEN3 = "qwen3"
# Qwen3-VL (Krea 2's 4B, Qwen-Image 2.1's 8B): Qwen3's language model beside a vision tower with DeepStack
# mergers; ComfyUI keeps it in transformers' own names (`model.language_model.*`, `model.visual.*`).
QWEN3VL = "qwen3vl"
_QWEN3VL_MARK = "visual.deepstack_merger_list."
MISTRAL3 = "mistral3"
GEMMA2 = "gemma2"
# Llama 3.x (HiDream-I1's Llama 3.1 8B Instruct): Mistral's plain attention, told by Llama 3's vocabulary.
LLAMA3 = "llama3"
_LLAMA3_VOCABULARY = 128256
# The tokenizer a ComfyUI Mistral file carries: tekken.json's bytes, no weight; a ComfyUI Gemma file's, its
# SentencePiece model.
TEKKEN_TENSOR = "tekken_model"
SPIECE_TENSOR = "spiece_model"
# The published widths: Qwen2.5-VL 7B 3584 (Qwen-Image), Qwen3 4B 2560 (Z-Image, Flux.2 Klein 4B), Qwen3 8B
# 4096 (Flux.2 Klein 9B).
QWEN_NAMED = {(QWEN25_VL, 3584): "Qwen2.5-VL 7B", (QWEN3, 2560): "Qwen3 4B", (QWEN3, 4096): "Qwen3 8B",
              (QWEN3VL, 2560): "Qwen3-VL 4B", (QWEN3VL, 4096): "Qwen3-VL 8B",
              (MISTRAL3, 5120): "Mistral Small 24B", (MISTRAL3, 3072): "Ministral 3 3B",
              (GEMMA2, 2304): "Gemma-2 2B", (LLAMA3, 4096): "Llama 3.1 8B"}  # fmt: skip
# Where the language model's layers sit: transformers >= 4.52, ComfyUI / older transformers, Qwen3Model alone, and
# a Mistral3Model saved whole (ERNIE-Image's encoder: `language_model.*` beside `vision_tower.*`) or in older names.
_BASES = ("model.language_model.", "model.", "", "language_model.model.", "language_model.")
_ATTENTION = re.compile(
    r"layers\.(\d+)\.(?:self_attn\.(q_proj\.weight|q_proj\.bias|q_norm\.weight)|(pre_feedforward_layernorm)\.weight)$"
)
VISION_PREFIXES = ("visual.", "model.visual.")


def inspect_qwen(
    shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], name: str
) -> tuple[str, int, int, str, int, bool] | None:
    """(kind, width, layers, prefix, parameters, vision) of a Qwen or Mistral text encoder; None when it is
    none."""
    # Any layer's attention tells the kind, so a file with its first layer gone is still named (and refused).
    base, found = None, set()
    for candidate in _BASES:
        if candidate + "embed_tokens.weight" not in shapes:
            continue
        own = (key[len(candidate):] for key in shapes if key.startswith(candidate))
        found = {m.group(2) or m.group(3) for key in own if (m := _ATTENTION.match(key))}
        if "q_proj.weight" in found:
            base = candidate
            break
    if base is None:
        return None
    if "pre_feedforward_layernorm" in found and "q_norm.weight" not in found:
        kind = GEMMA2
    elif "q_norm.weight" in found:
        kind = QWEN3VL if any(_QWEN3VL_MARK in key for key in shapes) else QWEN3
    elif "q_proj.bias" in found:
        kind = QWEN25_VL
    elif shapes[base + "embed_tokens.weight"][0] == _LLAMA3_VOCABULARY:
        kind = LLAMA3  # plain attention and Llama 3's 128,256 tokens (Mistral's tekken has 131,072)
    else:
        kind = MISTRAL3  # plain attention: Mistral Small (Flux.2 dev's encoder) or Ministral 3 (ERNIE-Image's)
    pattern = re.compile(re.escape(base) + r"layers\.(\d+)\.")
    layers = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
    if sorted(layers) != list(range(max(layers) + 1)):
        missing = sorted(set(range(max(layers) + 1)) - layers)
        raise ModelError(f"{name} is a {kind} text encoder with layer(s) {missing} missing: the file is incomplete.")
    parameters = 0
    for key, shape in shapes.items():
        if key in ("scaled_fp8", TEKKEN_TENSOR, SPIECE_TENSOR) or key.endswith(
            ("weight_scale", "input_scale", "scale_weight", "scale_input", "comfy_quant")
        ):
            continue  # a scaled-fp8 file's scales and a Mistral or Gemma file's tokenizer are no weights
        size = 1
        for dim in shape:
            size *= dim
        parameters += size
    vision = any(key.startswith(VISION_PREFIXES) for key in shapes)
    width = shapes[base + "embed_tokens.weight"][-1]
    return kind, width, len(layers), base, parameters, vision


# llama.cpp's names of a Qwen2 / Qwen3 language model (its GGUF converter's tensor map) -> ComfyUI's.
GGUF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip
_GGUF_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}  # fmt: skip
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.")


def gguf_name(name: str) -> str:
    """A llama.cpp Qwen tensor name in ComfyUI's single-file names (unknown names are left as they are, for
    the strict load to report)."""
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_NAMES:
        return f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}.{parts[3]}"
    return name


def inspect_qwen_gguf(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[str, int, int, int] | None:
    """(kind, width, layers, parameters) of a Qwen2.5-VL (text) or Qwen3 GGUF in llama.cpp's names; else None."""
    if "token_embd.weight" not in shapes or not any(_GGUF_BLOCK.match(key) for key in shapes):
        return None
    renamed = {gguf_name(key): shape for key, shape in shapes.items()}
    found = inspect_qwen(renamed, dict.fromkeys(renamed, ""), name)
    if found is None:
        return None
    kind, width, layers, _, parameters, _ = found
    return kind, width, layers, parameters
