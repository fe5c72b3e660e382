"""A tiny random Sana: diffusers' SanaTransformer2DModel with small dimensions (Sana 1.0's, or 1.5's with normalised
queries and keys), a tiny DC-AE autoencoder of the real one's 32 latent channels (8x here, 32x in the real one), a tiny
Gemma-2 with the tiny Gemma tokenizer of tiny_lumina2 (Gemma's own cannot ship), and the shipped DPM-Solver flow
scheduler, saved as a complete diffusers folder; its transformer also in its makers' names (`original_names`: the
inverse of diffusers' converter, Sana 1.5's norms beside it), as NVlabs' and ComfyUI's files hold it."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderDC,
    DPMSolverMultistepScheduler,
    SanaPipeline,
    SanaSprintPipeline,
    SanaTransformer2DModel,
    SCMScheduler,
)
from transformers import Gemma2Config, Gemma2Model

from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_lumina2 import tiny_gemma_tokenizer

WIDTH = 32  # the Gemma encoder's hidden size = the transformer's caption input


def build_tiny_sana(seed: int = 0, *, layers: int = 2, qk_norm: bool = False, sprint: bool = False) -> SanaPipeline:
    """`sprint`: Sana Sprint (normalised queries and keys, an embedded guidance value, its SCM scheduler)."""
    torch.manual_seed(seed)
    qk_norm = qk_norm or sprint
    transformer = SanaTransformer2DModel(
        in_channels=32, out_channels=32, num_attention_heads=4, attention_head_dim=8, num_layers=layers,
        num_cross_attention_heads=4, cross_attention_head_dim=8, cross_attention_dim=32, caption_channels=WIDTH,
        sample_size=8, patch_size=1, qk_norm="rms_norm_across_heads" if qk_norm else None, guidance_embeds=sprint,
    )  # fmt: skip
    _jitter(transformer.eval(), seed)
    vae = AutoencoderDC(
        latent_channels=32, attention_head_dim=4, encoder_block_types="ResBlock", decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (), ()), decoder_qkv_multiscales=((), (), (), ()), scaling_factor=0.41407,
    ).eval()  # fmt: skip
    _jitter(vae, seed + 2)
    tokenizer = tiny_gemma_tokenizer()
    # Long positions: the pipeline puts its makers' instruction (some 1,300 of these one-character tokens) first.
    encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
        query_pre_attn_scalar=16, sliding_window=4096, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )).eval()  # fmt: skip
    _jitter(encoder, seed + 1)
    scheduler = (SCMScheduler.from_pretrained(str(CONFIGS / "sana-sprint" / "scheduler")) if sprint else
                 DPMSolverMultistepScheduler.from_pretrained(str(CONFIGS / "sana" / "scheduler")))  # fmt: skip
    pipe = (SanaSprintPipeline if sprint else SanaPipeline)(tokenizer=tokenizer, text_encoder=encoder, vae=vae,
                                                             transformer=transformer, scheduler=scheduler)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


# diffusers' names -> Sana's makers', per block and for the rest.
_BLOCK = {"scale_shift_table": "scale_shift_table", "attn1.to_out.0.weight": "attn.proj.weight",
          "attn1.to_out.0.bias": "attn.proj.bias", "attn2.to_q.weight": "cross_attn.q_linear.weight",
          "attn2.to_q.bias": "cross_attn.q_linear.bias", "attn2.to_out.0.weight": "cross_attn.proj.weight",
          "attn2.to_out.0.bias": "cross_attn.proj.bias", "ff.conv_inverted.weight": "mlp.inverted_conv.conv.weight",
          "ff.conv_inverted.bias": "mlp.inverted_conv.conv.bias", "ff.conv_depth.weight": "mlp.depth_conv.conv.weight",
          "ff.conv_depth.bias": "mlp.depth_conv.conv.bias", "ff.conv_point.weight": "mlp.point_conv.conv.weight",
          "attn1.norm_q.weight": "attn.q_norm.weight", "attn1.norm_k.weight": "attn.k_norm.weight",
          "attn2.norm_q.weight": "cross_attn.q_norm.weight",
          "attn2.norm_k.weight": "cross_attn.k_norm.weight"}  # fmt: skip
_REST = {"patch_embed.proj.weight": "x_embedder.proj.weight", "patch_embed.proj.bias": "x_embedder.proj.bias",
         "time_embed.emb.timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
         "time_embed.emb.timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
         "time_embed.emb.timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
         "time_embed.emb.timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
         "time_embed.linear.weight": "t_block.1.weight", "time_embed.linear.bias": "t_block.1.bias",
         "caption_projection.linear_1.weight": "y_embedder.y_proj.fc1.weight",
         "caption_projection.linear_1.bias": "y_embedder.y_proj.fc1.bias",
         "caption_projection.linear_2.weight": "y_embedder.y_proj.fc2.weight",
         "caption_projection.linear_2.bias": "y_embedder.y_proj.fc2.bias",
         "caption_norm.weight": "attention_y_norm.weight",
         "proj_out.weight": "final_layer.linear.weight", "proj_out.bias": "final_layer.linear.bias",
         "scale_shift_table": "final_layer.scale_shift_table"}  # fmt: skip
# Sana Sprint's time and guidance embedders (diffusers' conversion script's names).
_SPRINT = {f"time_embed.{ours}.linear_{n}.{kind}": f"{theirs}.mlp.{2 * n - 2}.{kind}"
           for ours, theirs in (("timestep_embedder", "t_embedder"), ("guidance_embedder", "cfg_embedder"))
           for n in (1, 2) for kind in ("weight", "bias")}  # fmt: skip


def original_names(state: dict[str, torch.Tensor], extras: bool = True) -> dict[str, torch.Tensor]:
    """A diffusers Sana transformer's tensors in its makers' names, q/k/v fused as they keep them; `extras`: the tables
    NVlabs' checkpoints carry that the model does not use (`pos_embed`, the caption's learned blank)."""
    out = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _REST or key in _SPRINT:
            out[_REST.get(key) or _SPRINT[key]] = tensor
            continue
        _, index, rest = key.split(".", 2)
        if rest in ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"):
            fused.setdefault(f"blocks.{index}.attn.qkv.weight", {})[rest] = tensor
        elif rest.startswith(("attn2.to_k.", "attn2.to_v.")):
            suffix = rest.rpartition(".")[2]
            fused.setdefault(f"blocks.{index}.cross_attn.kv_linear.{suffix}", {})[rest] = tensor
        else:
            out[f"blocks.{index}.{_BLOCK[rest]}"] = tensor
    for key, parts in fused.items():
        out[key] = torch.cat([parts[name] for name in sorted(parts, key=lambda n: "qkv".index(n.split(".")[1][-1]))])
    if extras:
        out["pos_embed"] = torch.zeros(1, 4, 4)
        out["y_embedder.y_embedding"] = torch.zeros(4, WIDTH)
    return out
