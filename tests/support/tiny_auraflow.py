"""A tiny random AuraFlow (the architecture of fal's AuraFlow and Pony V7): diffusers' AuraFlowTransformer2DModel with
small dimensions (two joint and two single blocks, register tokens, a 16x16-patch position table), a UMT5 encoder as
Pile-T5-XL is (a position bias in every layer), SDXL's 4-channel VAE shape (8x, scaled, no shift), saved as a complete
diffusers folder; its transformer also in its makers' names (`original_names`), as fal's, ComfyUI's and Pony V7's
files hold it. The tokenizer is the shipped T5 one (Pile-T5's LLaMA tokenizer cannot ship; any T5-style tokenizer
runs the pipeline)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
from safetensors.torch import save_file
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

from desktop.engine.resources import Resources
from tests.support.tiny_dit import _jitter, _vae

WIDTH = 32  # the transformer's: 2 heads of 16
TEXT_WIDTH = 24  # the encoder's (Pile-T5-XL's is 2048)
POSITIONS = 256  # a 16x16-patch table: up to 256x256 pixels


def tokenizer() -> T5TokenizerFast:
    return T5TokenizerFast.from_pretrained(str(Resources.default().tokenizers / "t5"), local_files_only=True)


def build_tiny_auraflow(seed: int = 0, *, joint: int = 2, single: int = 2, shift: float = 1.73) -> AuraFlowPipeline:
    torch.manual_seed(seed)
    transformer = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_mmdit_layers=joint,
        num_single_dit_layers=single, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_WIDTH,
        caption_projection_dim=WIDTH, pos_embed_max_size=POSITIONS,
    )  # fmt: skip
    _jitter(transformer.eval(), seed)
    tokens = tokenizer()
    encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokens), d_model=TEXT_WIDTH, d_kv=6, d_ff=37, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0,
    )).eval()  # fmt: skip
    _jitter(encoder, seed + 1)
    vae = _vae(4, None, 0.13025, blocks=4)  # SDXL's: 4 channels, 8x, scaled without a shift
    _jitter(vae, seed + 2)
    pipe = AuraFlowPipeline(tokenizer=tokens, text_encoder=encoder, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


# diffusers' names -> AuraFlow's own, per joint block, single block and the rest (the inverse of diffusers' converter).
_JOINT = {"ff.linear_1": "mlpX.c_fc1", "ff.linear_2": "mlpX.c_fc2", "ff.out_projection": "mlpX.c_proj",
          "ff_context.linear_1": "mlpC.c_fc1", "ff_context.linear_2": "mlpC.c_fc2",
          "ff_context.out_projection": "mlpC.c_proj", "norm1.linear": "modX.1", "norm1_context.linear": "modC.1",
          "attn.to_q": "attn.w2q", "attn.to_k": "attn.w2k", "attn.to_v": "attn.w2v", "attn.to_out.0": "attn.w2o",
          "attn.add_q_proj": "attn.w1q", "attn.add_k_proj": "attn.w1k", "attn.add_v_proj": "attn.w1v",
          "attn.to_add_out": "attn.w1o"}  # fmt: skip
_SINGLE = {"ff.linear_1": "mlp.c_fc1", "ff.linear_2": "mlp.c_fc2", "ff.out_projection": "mlp.c_proj",
           "norm1.linear": "modCX.1", "attn.to_q": "attn.w1q", "attn.to_k": "attn.w1k", "attn.to_v": "attn.w1v",
           "attn.to_out.0": "attn.w1o"}  # fmt: skip
_REST = {"register_tokens": "register_tokens", "time_step_proj.linear_1.weight": "t_embedder.mlp.0.weight",
         "time_step_proj.linear_1.bias": "t_embedder.mlp.0.bias",
         "time_step_proj.linear_2.weight": "t_embedder.mlp.2.weight",
         "time_step_proj.linear_2.bias": "t_embedder.mlp.2.bias", "context_embedder.weight": "cond_seq_linear.weight",
         "proj_out.weight": "final_linear.weight", "pos_embed.pos_embed": "positional_encoding",
         "pos_embed.proj.weight": "init_x_linear.weight", "pos_embed.proj.bias": "init_x_linear.bias"}  # fmt: skip


def original_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AuraFlow transformer's tensors in its makers' names (the final modulation's halves swapped back)."""
    out = {}
    for key, tensor in state.items():
        if key in _REST:
            out[_REST[key]] = tensor
            continue
        if key == "norm_out.linear.weight":
            scale, shift = tensor.chunk(2, dim=0)
            out["modF.1.weight"] = torch.cat([shift, scale], dim=0)
            continue
        kind, index, rest = key.split(".", 2)
        module, _, suffix = rest.rpartition(".")
        table, prefix = (_JOINT, "double_layers") if kind == "joint_transformer_blocks" else (_SINGLE, "single_layers")
        out[f"{prefix}.{index}.{table[module]}.{suffix}"] = tensor
    return out


def library_files(pipe: AuraFlowPipeline, folder: Path) -> dict[str, Path]:
    """The encoder and the VAE as ComfyUI keeps them apart: Pile-T5 in transformers' names (as Pony V7's
    text_encoder/model.fp16.safetensors), the VAE in diffusers' names."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "pile_t5xl": {key: value for key, value in pipe.text_encoder.state_dict().items()
                      if key != "encoder.embed_tokens.weight"},  # tied to `shared`, which files keep
        "sdxl_vae": pipe.vae.state_dict(),
    }  # fmt: skip
    written = {}
    for name, state in parts.items():
        written[name] = folder / f"{name}.safetensors"
        save_file({key: value.contiguous() for key, value in state.items()}, str(written[name]))
    return written


def makers_lora(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA in diffusers' names (`transformer.<module>.lora_A/B.weight`) in AuraFlow's own module names under
    `diffusion_model.` (a LoRA made on ComfyUI's model); the final modulation's up rows back in (shift, scale)."""
    out = {}
    for key, tensor in tensors.items():
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        if module == "norm_out.linear":
            makers = "modF.1"
            if part == "B.weight":
                scale, shift = tensor.chunk(2, dim=0)
                tensor = torch.cat([shift, scale], dim=0)
        else:
            kind, index, rest = module.split(".", 2)
            joint = kind == "joint_transformer_blocks"
            table, prefix = (_JOINT, "double_layers") if joint else (_SINGLE, "single_layers")
            makers = f"{prefix}.{index}.{table[rest]}"
        out[f"diffusion_model.{makers}.lora_{part}"] = tensor
    return out
