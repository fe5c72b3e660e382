"""Flux.1 Control-LoRAs, from their headers (no torch): BFL's FLUX.1-Canny-dev-lora and FLUX.1-Depth-dev-lora.

They turn a Flux.1 dev model into its Canny / Depth dev form for a job: LoRA halves for the transformer's
layers whose input layer reads twice the channels (the control picture's latents beside the noise), plus whole
query/key norm weights. diffusers' `load_lora_weights` widens the input layer and swaps the norms in, and puts
both back on `unload_lora_weights(reset_to_overwritten_params=True)` (backends/flux_control_lora.py).

Two layouts: BFL's own (`img_in.lora_A.weight`, `double_blocks.N.img_attn.norm.query_norm.scale`), and
diffusers' (`transformer.x_embedder.lora_A.weight`, `transformer.transformer_blocks.N.attn.norm_q.weight`).
Told apart from a plain LoRA by the norm weights, which no plain LoRA carries. Kept in the control library
and used in a control unit; refused as a plain LoRA (loaded as one, it would widen the model for good).
"""

from __future__ import annotations

from desktop.engine.library.checkpoint import SafetensorsHeader

_DIFFUSERS_NORMS = (".norm_q.", ".norm_k.", ".norm_added_q.", ".norm_added_k.")


def control_lora_layout(header: SafetensorsHeader) -> str | None:
    """"bfl" or "diffusers" for a Flux.1 Control-LoRA, None for anything else."""
    names = header.tensors
    if "img_in.lora_A.weight" in names and any(name.endswith("query_norm.scale") for name in names):
        return "bfl"
    wide = any(f"{prefix}x_embedder.lora_A.weight" in names for prefix in ("transformer.", ""))
    if wide and any(norm in name and "lora" not in name for name in names for norm in _DIFFUSERS_NORMS):
        return "diffusers"
    return None
