"""A tiny Flux / SD3's parts saved as the separate files creators download, in ComfyUI's layouts:
`clip_l.safetensors` (transformers' CLIP names, with the projection and logit scale CLIP-L files carry),
`clip_g.safetensors` (CLIPTextModelWithProjection names, as SD3 ships it), `t5xxl_*.safetensors`
(transformers' T5 encoder names, one `shared.weight` embedding), a T5 GGUF in llama.cpp's `enc.blk.N`
names (written with the `gguf` package), and the VAE as `ae.safetensors` (LDM/BFL names, no prefix)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tests.support.tiny_models import _text_model_keys, vae_to_ldm

_GGUF_NAMES = {
    "layer.0.SelfAttention.q": "attn_q", "layer.0.SelfAttention.k": "attn_k", "layer.0.SelfAttention.v": "attn_v",
    "layer.0.SelfAttention.o": "attn_o", "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b",
    "layer.0.layer_norm": "attn_norm", "layer.1.DenseReluDense.wi_0": "ffn_gate",
    "layer.1.DenseReluDense.wi_1": "ffn_up", "layer.1.DenseReluDense.wo": "ffn_down", "layer.1.layer_norm": "ffn_norm",
}  # fmt: skip


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


def save_clip_l(encoder, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    own = _text_model_keys(encoder.state_dict())
    state = {k: v.to(dtype) for k, v in own.items() if not k.endswith("position_ids")}
    width = encoder.config.hidden_size
    if "text_projection.weight" not in state:  # ComfyUI's clip_l carries CLIP's projection and logit scale
        state["text_projection.weight"] = torch.eye(width, dtype=dtype)
        state["logit_scale"] = torch.tensor(4.6052, dtype=dtype)
    return _save(state, path)


def save_t5(encoder, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    state = {k: v.to(dtype) for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return _save(state, path)


def save_t5_gguf(encoder, path: Path, quant: str = "Q8_0") -> Path:
    """The T5 encoder in llama.cpp's names: 2-D weights whose rows fit `quant`'s blocks quantised, the rest F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "t5encoder")
    kind = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    for key, tensor in encoder.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue
        if key == "shared.weight":
            name = "token_embd.weight"
        elif key == "encoder.final_layer_norm.weight":
            name = "enc.output_norm.weight"
        else:
            _, _, index, *rest = key.split(".")
            layer, suffix = ".".join(rest[:-1]), rest[-1]
            name = f"enc.blk.{index}.{_GGUF_NAMES[layer]}.{suffix}"
        data = tensor.detach().float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0 and kind != gguf.GGMLQuantizationType.F32:
            quantised = gguf.quants.quantize(data, kind)
            writer.add_tensor(name, quantised, raw_shape=quantised.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_ae(vae, path: Path) -> Path:
    state = vae_to_ldm(vae.state_dict(), vae.config)
    return _save({k.removeprefix("first_stage_model."): v for k, v in state.items()}, path)
