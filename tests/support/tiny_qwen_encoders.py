"""The tiny Qwen-Image / Z-Image text encoders saved as ComfyUI keeps them: one file in transformers' older
names (`model.layers.N...`, Qwen2.5-VL's vision tower under `visual.*`), and a tokenizer folder apart."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def comfy_qwen_state(encoder, *, vision: bool = True, head: bool = True) -> dict[str, torch.Tensor]:
    """A Qwen3Model's or Qwen2_5_VLForConditionalGeneration's tensors in ComfyUI's single-file names."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("model.language_model."):
            key = "model." + key.removeprefix("model.language_model.")
        elif key.startswith("model.visual."):
            if not vision:
                continue
            key = key.removeprefix("model.")
        elif key == "lm_head.weight":
            if not head:
                continue
        else:
            key = "model." + key  # Qwen3Model: no `model.` level of its own
        out[key] = value.detach().clone().contiguous()
    return out


def save_comfy_qwen(encoder, path: Path, dtype: torch.dtype | None = None, **options: bool) -> Path:
    state = comfy_qwen_state(encoder, **options)
    if dtype is not None:
        state = {k: v.to(dtype) if v.ndim >= 2 else v for k, v in state.items()}
    save_file(state, str(path))
    return path


def save_tokenizer_folder(pipe, folder: Path) -> Path:
    """The tokenizer alone (tokenizer.json, tokenizer_config.json, chat template), as Qwen's repositories hold."""
    pipe.tokenizer.save_pretrained(str(folder))
    return folder


_RESIDUAL = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
             "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
             "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}  # fmt: skip
_FIXED = {"encoder.conv_in": "encoder.conv1", "decoder.conv_in": "decoder.conv1", "quant_conv": "conv1",
          "post_quant_conv": "conv2", "encoder.norm_out": "encoder.head.0", "encoder.conv_out": "encoder.head.2",
          "decoder.norm_out": "decoder.head.0", "decoder.conv_out": "decoder.head.2"}  # fmt: skip


def wan_vae_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKLQwenImage's tensors in Wan 2.1's original names, as ComfyUI's qwen_image_vae.safetensors
    holds them (for a VAE of Wan's block layout: four levels, two residual blocks each)."""
    out = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        parts = key.split(".")
        if head in _FIXED:
            new = f"{_FIXED[head]}.{leaf}"
        elif ".mid_block." in key:
            side = parts[0]
            if parts[2] == "attentions":
                new = f"{side}.middle.1.{'.'.join(parts[4:])}"
            else:
                new = f"{side}.middle.{2 * int(parts[3])}.{_RESIDUAL['.'.join(parts[4:])]}"
        elif key.startswith("encoder.down_blocks."):
            rest = ".".join(parts[3:])
            new = f"encoder.downsamples.{parts[2]}.{_RESIDUAL.get(rest, rest)}"
        elif ".upsamplers.0." in key:
            new = f"decoder.upsamples.{4 * int(parts[2]) + 3}.{'.'.join(parts[5:])}"
        else:  # decoder.up_blocks.B.resnets.R.*
            new = f"decoder.upsamples.{4 * int(parts[2]) + int(parts[4])}.{_RESIDUAL['.'.join(parts[5:])]}"
        out[new] = value.detach().clone().contiguous()
    return out


_LLAMA = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip


def save_qwen_gguf(encoder, path: Path, arch: str = "qwen3", quant: str = "F16") -> Path:
    """The language model in llama.cpp's names (as its converter writes a Qwen2/Qwen3 GGUF): matrices in F16,
    or with `quant` ("Q8_0") those whose rows fill its 32-weight blocks; the rest in F32; no vision tower
    (llama.cpp keeps it apart)."""
    return save_llama_gguf(comfy_qwen_state(encoder, vision=False), path, arch, quant)


def save_llama_gguf(
    state: dict[str, torch.Tensor], path: Path, arch: str, quant: str = "F16", heads: tuple[int, int] | None = None,
    tokenizer=None, extra: dict[str, torch.Tensor] | None = None,
) -> Path:  # fmt: skip
    """A language model in ComfyUI's names (`model.layers.N...`) written in llama.cpp's, as save_qwen_gguf
    says; `heads` (query heads, key/value heads): q and k rows permuted as llama.cpp's converter does for
    Llama-family models (Mistral), each head's two rotary halves interleaved; `tokenizer` (a byte-level BPE
    tokenizer): its vocabulary as llama.cpp writes a "gpt2" one, every id's token, special ones typed control;
    `extra`: tensors written under their own (llama.cpp) names in float32, such as Llama 3.1's `rope_freqs.weight`."""
    import gguf
    import numpy as np

    def permuted(rows: np.ndarray, count: int) -> np.ndarray:
        return rows.reshape(count, 2, rows.shape[0] // count // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

    writer = gguf.GGUFWriter(str(path), arch)
    if tokenizer is not None:
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("tekken")
        writer.add_token_list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
        writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                                for i in range(len(tokenizer))])  # fmt: skip
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
    for key, tensor in state.items():
        if key in top:
            name = top[key]
        else:
            _, _, index, *rest = key.split(".")
            name = f"blk.{index}.{_LLAMA['.'.join(rest[:-1])]}.{rest[-1]}"
        data = tensor.float().numpy()
        if heads is not None and name.endswith(("attn_q.weight", "attn_k.weight")):
            data = permuted(data, heads[0] if name.endswith("attn_q.weight") else heads[1])
        if quant != "F16" and data.ndim == 2 and data.shape[1] % 32 == 0:
            kind = gguf.GGMLQuantizationType[quant]
            quantised = gguf.quants.quantize(data, kind)
            writer.add_tensor(name, quantised, raw_shape=quantised.shape, raw_dtype=kind)
            continue
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float16 if data.ndim == 2 else np.float32))
    for name, tensor in (extra or {}).items():
        writer.add_tensor(name, np.ascontiguousarray(tensor.float().numpy(), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
