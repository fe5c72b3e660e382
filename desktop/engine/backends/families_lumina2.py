"""Lumina Image 2.0's original transformer names (Alpha-VLLM's release, ComfyUI's files, Neta Lumina) in
diffusers' Lumina2Transformer2DModel names, and its image-to-image and inpainting pipeline class (`edit_class`:
diffusers has none; flow_edit.py).

diffusers' own single-file converter does the same renaming but cuts the fused `attention.qkv` at the real
model's sizes (2304 query rows, 768 key and value rows); here they come from the transformer's config (heads,
key/value heads and the width), so a model of other dimensions converts too. The renaming is a fact of the two
layouts (diffusers' converter and the two model classes agree on it):

- `t_embedder.mlp.0/2` -> `time_caption_embed.timestep_embedder.linear_1/2`, `cap_embedder.N` ->
  `time_caption_embed.caption_embedder.N`;
- in each block (`layers.N`, `noise_refiner.N`, `context_refiner.N`): `attention.qkv` split into `attn.to_q/k/v`,
  `attention.out` -> `attn.to_out.0`, `attention.q_norm/k_norm` -> `attn.norm_q/norm_k`, `feed_forward.w1/2/3` ->
  `feed_forward.linear_1/2/3`, `adaLN_modulation.1` -> `norm1.linear`, `attention_norm1` -> `norm1.norm` (the
  context refiner, which has no modulation: `norm1`), `attention_norm2` -> `norm2`; `ffn_norm1/2` stay;
- `final_layer.adaLN_modulation.1` -> `norm_out.linear_1`, `final_layer.linear` -> `norm_out.linear_2`; the
  original's unused `norm_final` is dropped.

No torch import: the tensors are split with their own methods (diffusers is imported inside `edit_class`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from desktop.engine.backends.flow_edit import FluxLatentEdit

_OUTSIDE = {
    "t_embedder.mlp.0": "time_caption_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_caption_embed.timestep_embedder.linear_2",
    "cap_embedder.0": "time_caption_embed.caption_embedder.0",
    "cap_embedder.1": "time_caption_embed.caption_embedder.1",
    "final_layer.adaLN_modulation.1": "norm_out.linear_1",
    "final_layer.linear": "norm_out.linear_2",
}
_IN_BLOCK = {
    "attention.out": "attn.to_out.0", "attention.q_norm": "attn.norm_q", "attention.k_norm": "attn.norm_k",
    "feed_forward.w1": "feed_forward.linear_1", "feed_forward.w2": "feed_forward.linear_2",
    "feed_forward.w3": "feed_forward.linear_3", "adaLN_modulation.1": "norm1.linear", "attention_norm1": "norm1.norm",
    "attention_norm2": "norm2", "ffn_norm1": "ffn_norm1", "ffn_norm2": "ffn_norm2",
}  # fmt: skip
_BLOCKS = ("layers", "noise_refiner", "context_refiner")


def diffusers_names(state: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """`state` (original names, prefix removed) in diffusers' names, q/k/v cut by `config`
    (transformer/config.json's `hidden_size`, `num_attention_heads`, `num_kv_heads`). KeyError naming a tensor
    that is neither layout's."""
    head = config["hidden_size"] // config["num_attention_heads"]
    sizes = [config["hidden_size"], config["num_kv_heads"] * head, config["num_kv_heads"] * head]
    out: dict[str, Any] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module == "norm_final":
            continue  # the original's unused final norm
        if module in _OUTSIDE or module == "x_embedder":
            out[f"{_OUTSIDE.get(module, module)}.{param}"] = value
            continue
        kind, index, inner = (module.split(".", 2) + ["", ""])[:3]
        if kind not in _BLOCKS or not inner:
            raise KeyError(f"unexpected tensor {key!r}")
        block = f"{kind}.{index}"
        if inner == "attention.qkv":
            for name, part in zip(("to_q", "to_k", "to_v"), value.split(sizes, dim=0), strict=True):
                out[f"{block}.attn.{name}.{param}"] = part
            continue
        renamed = "norm1" if (kind, inner) == ("context_refiner", "attention_norm1") else _IN_BLOCK.get(inner)
        if renamed is None:
            raise KeyError(f"unexpected tensor {key!r}")
        out[f"{block}.{renamed}.{param}"] = value
    return out


@functools.cache
def edit_class() -> Any:
    """Lumina2Pipeline with image to image and inpainting (flow_edit.FluxLatentEdit): its latents are the Flux VAE's,
    (C, h, w) as they are; its pipeline computes the shift's argument from the latents' second dimension (their
    channels), which its static shift ignores."""
    import diffusers

    class Lumina2EditPipeline(FluxLatentEdit, diffusers.Lumina2Pipeline):
        def _edit_mu(self, rows: int, cols: int) -> float:
            return self._edit_shift(self.transformer.config.in_channels)

        def _edit_pack(self, grid: Any) -> Any:
            return grid

    return Lumina2EditPipeline
