"""A tiny random PixArt (the architecture of PixArt-Σ and PixArt-α): diffusers' PixArtTransformer2DModel with small
dimensions (Alpha's with its size and aspect-ratio embedders), a tiny T5 encoder with the shipped T5 tokenizer
(T5-XXL's, which both releases read), a 4-channel 8x VAE scaled as SDXL's (Sigma) or SD 1.5's (Alpha), and the shipped
DPM-Solver++ scheduler, saved as a complete diffusers folder; its transformer also in its makers' names
(`original_names`: the inverse of Marble's converter, written from the published key table), as PixArt's checkpoints
and the ComfyUI nodes' files hold it."""

from __future__ import annotations

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

from tests.support.tiny_auraflow import tokenizer
from tests.support.tiny_dit import CONFIGS, _jitter, _t5, _vae

WIDTH = 96  # the transformer's: 3 heads of 32 (Alpha's size embedders take a third of it each; GGUF blocks of 32)
TEXT_WIDTH = 32  # the tiny T5's (T5-XXL's is 4096)
SAMPLE = 8  # latent side of the tiny model's native size (64 pixels)


def build_tiny_pixart(seed: int = 0, *, alpha: bool = False, layers: int = 2) -> PixArtSigmaPipeline:
    """`alpha`: PixArt-α's 1024-pixel model (its size and aspect-ratio embedders, SD 1.5's VAE scale, its pipeline;
    its pipeline hands the size to a model of the real one's sample size only)."""
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=3, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=WIDTH, caption_channels=TEXT_WIDTH, sample_size=128 if alpha else SAMPLE, patch_size=2,
        interpolation_scale=1, use_additional_conditions=alpha, norm_num_groups=3,
    )  # fmt: skip
    _jitter(transformer.eval(), seed)
    encoder = _t5().eval()
    _jitter(encoder, seed + 1)
    vae = _vae(4, None, 0.18215 if alpha else 0.13025, blocks=4)
    _jitter(vae, seed + 2)
    variant = "pixart-alpha" if alpha else "pixart-sigma"
    scheduler = DPMSolverMultistepScheduler.from_pretrained(str(CONFIGS / variant / "scheduler"))
    cls = PixArtAlphaPipeline if alpha else PixArtSigmaPipeline
    pipe = cls(tokenizer=tokenizer(), text_encoder=encoder, vae=vae, transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# diffusers' names -> PixArt's makers', per block and for the rest.
_BLOCK = {"scale_shift_table": "scale_shift_table", "attn1.to_out.0.weight": "attn.proj.weight",
          "attn1.to_out.0.bias": "attn.proj.bias", "attn2.to_q.weight": "cross_attn.q_linear.weight",
          "attn2.to_q.bias": "cross_attn.q_linear.bias", "attn2.to_out.0.weight": "cross_attn.proj.weight",
          "attn2.to_out.0.bias": "cross_attn.proj.bias", "ff.net.0.proj.weight": "mlp.fc1.weight",
          "ff.net.0.proj.bias": "mlp.fc1.bias", "ff.net.2.weight": "mlp.fc2.weight",
          "ff.net.2.bias": "mlp.fc2.bias"}  # fmt: skip
_REST = {"pos_embed.proj.weight": "x_embedder.proj.weight", "pos_embed.proj.bias": "x_embedder.proj.bias",
         "caption_projection.linear_1.weight": "y_embedder.y_proj.fc1.weight",
         "caption_projection.linear_1.bias": "y_embedder.y_proj.fc1.bias",
         "caption_projection.linear_2.weight": "y_embedder.y_proj.fc2.weight",
         "caption_projection.linear_2.bias": "y_embedder.y_proj.fc2.bias",
         "adaln_single.linear.weight": "t_block.1.weight", "adaln_single.linear.bias": "t_block.1.bias",
         "proj_out.weight": "final_layer.linear.weight", "proj_out.bias": "final_layer.linear.bias",
         "scale_shift_table": "final_layer.scale_shift_table"}  # fmt: skip
_EMBEDDERS = {"adaln_single.emb.timestep_embedder": "t_embedder",
              "adaln_single.emb.resolution_embedder": "csize_embedder",
              "adaln_single.emb.aspect_ratio_embedder": "ar_embedder"}  # fmt: skip


def original_names(state: dict[str, torch.Tensor], *, caption_tokens: int = 300,
                   extras: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """A diffusers PixArt transformer's tensors in its makers' names, q/k/v and k/v fused as they keep them;
    `extras`: the tables its checkpoints carry that the model does not use (the caption's learned blank, whose length
    `caption_tokens` says the release, 300 Sigma and 120 Alpha, and the position table of its fixed-size models)."""
    out = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in _REST:
            out[_REST[key]] = tensor
            continue
        embedder = next((name for name in _EMBEDDERS if key.startswith(name + ".")), None)
        if embedder is not None:
            linear, suffix = key.removeprefix(embedder + ".").split(".")
            out[f"{_EMBEDDERS[embedder]}.mlp.{0 if linear == 'linear_1' else 2}.{suffix}"] = tensor
            continue
        _, index, rest = key.split(".", 2)
        if rest.startswith(("attn1.to_q.", "attn1.to_k.", "attn1.to_v.")):
            suffix = rest.rpartition(".")[2]
            fused.setdefault(f"blocks.{index}.attn.qkv.{suffix}", {})[rest] = tensor
        elif rest.startswith(("attn2.to_k.", "attn2.to_v.")):
            suffix = rest.rpartition(".")[2]
            fused.setdefault(f"blocks.{index}.cross_attn.kv_linear.{suffix}", {})[rest] = tensor
        else:
            out[f"blocks.{index}.{_BLOCK[rest]}"] = tensor
    for key, parts in fused.items():
        out[key] = torch.cat([parts[name] for name in sorted(parts, key=lambda n: "qkv".index(n.split(".")[1][-1]))])
    if extras:
        out["y_embedder.y_embedding"] = torch.randn(caption_tokens, TEXT_WIDTH)
        out["pos_embed"] = torch.zeros(1, SAMPLE * SAMPLE // 4, WIDTH)
    return out
