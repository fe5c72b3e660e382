"""Tiny random Flux.1 and SD3 models built from Marble's shipped configs with small dimensions.

Each is saved as a diffusers folder; Flux also as a Black Forest Labs single file (the inverse of
diffusers' key conversion, written here) and as GGUF transformers written with the `gguf` package.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from desktop.engine.backends.families import shipped_tokenizers
from desktop.engine.resources import Resources

CONFIGS = Resources.default().configs


def _shipped(name: str, part: str) -> dict:
    return json.loads((CONFIGS / name / part).read_text(encoding="utf-8"))


def _clip(projection: bool, width: int = 32) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=width, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _t5() -> T5EncoderModel:
    base = _shipped("flux-dev", "text_encoder_2/config.json")
    config = T5Config(
        vocab_size=base["vocab_size"], d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        feed_forward_proj=base.get("feed_forward_proj", "gated-gelu"), relative_attention_num_buckets=8,
    )  # fmt: skip
    return T5EncoderModel(config)


def _vae(latent_channels: int, shift: float, scale: float, blocks: int = 2) -> AutoencoderKL:
    """`blocks` down blocks: 2 halve the picture's side once; 4, as the real autoencoders, shrink it by 8."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=(8,) * blocks, layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=4, sample_size=32, shift_factor=shift, scaling_factor=scale,
        use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip


def _jitter(module: torch.nn.Module, seed: int) -> None:
    """Random small values everywhere (norm scales too), so a mis-mapped tensor changes the image."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)


def build_tiny_flux(
    variant: str = "dev", double: int = 2, single: int = 2, seed: int = 0, latent_channels: int = 4,
    vae_blocks: int = 2,
) -> FluxPipeline:
    """`latent_channels`: the autoencoder's (16 as in the real Flux.1, for the preview's factor table);
    `vae_blocks` 4 for latents an eighth of the picture's side, as the real one's (XLabs' ControlNets need it)."""
    config = _shipped(f"flux-{variant}", "transformer/config.json")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=double, num_single_layers=single,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=config["guidance_embeds"], axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    _jitter(transformer, seed)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        _shipped(f"flux-{variant}", "scheduler/scheduler_config.json")
    )
    parts = shipped_tokenizers(Resources.default(), CONFIGS / f"flux-{variant}", "flux")
    return FluxPipeline(
        scheduler=scheduler, vae=_vae(latent_channels, 0.1159, 0.3611, vae_blocks), text_encoder=_clip(False),
        text_encoder_2=_t5(), transformer=transformer, **parts,
    )  # fmt: skip


def build_tiny_sd3(
    seed: int = 0,
    qk_norm: str | None = "rms_norm",
    dual_attention_layers: tuple[int, ...] = (),
    clip_g_width: int = 32,
) -> StableDiffusion3Pipeline:
    """`dual_attention_layers`: SD3.5 medium's MMDiT-X second attention in those blocks. `clip_g_width` other
    than CLIP-L's 32: the two CLIPs told apart by width, as real files are (768 and 1280)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32 + clip_g_width, out_channels=4,
        pos_embed_max_size=32, qk_norm=qk_norm, dual_attention_layers=dual_attention_layers,
    )  # fmt: skip
    _jitter(transformer, seed)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(_shipped("sd3-medium", "scheduler/scheduler_config.json"))
    parts = shipped_tokenizers(Resources.default(), CONFIGS / "sd3-medium", "sd3")
    return StableDiffusion3Pipeline(
        scheduler=scheduler, vae=_vae(4, 0.0609, 1.5305), text_encoder=_clip(True),
        text_encoder_2=_clip(True, clip_g_width),
        text_encoder_3=_t5(), transformer=transformer, **parts,
    )  # fmt: skip


def tiny_fill_transformer(seed: int = 5, blocks: int = 1, in_channels: int = 48) -> FluxTransformer2DModel:
    """A Flux Fill transformer for the tiny Flux: its input layer also takes the masked image's latents (16
    packed channels here) and the mask (2x2 VAE pixels per latent, packed 2x2: 16), beside the noise (16).
    `in_channels` 32: a Canny/Depth dev transformer instead (the control picture's latents beside the noise).
    `blocks` of each kind: 2 as the tiny Flux's config says, for a file loaded with that config."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=16, num_layers=blocks, num_single_layers=blocks,
        attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip


def save_pipeline(pipe, folder: Path) -> Path:
    """A diffusers folder without tokenizer files, as Marble's configs are: the shipped ones serve."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for sub in folder.iterdir():
        if sub.name.startswith("tokenizer"):
            for file in sub.iterdir():
                file.unlink()
            sub.rmdir()
    return folder


def config_folder(pipe, folder: Path) -> Path:
    """A diffusers config folder (no weights) describing `pipe`, as `--config` takes."""
    save_pipeline(pipe, folder)
    for file in folder.rglob("*.safetensors"):
        file.unlink()
    return folder


def flux_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' FluxTransformer2DModel names -> Black Forest Labs' original names (fused qkv)."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(dst: str, src: str) -> None:
        for suffix in ("weight", "bias"):
            if f"{src}.{suffix}" in state:
                out[f"{dst}.{suffix}"] = state.pop(f"{src}.{suffix}")

    for dst, src in (
        ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
        ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
        ("txt_in", "context_embedder"),
        ("img_in", "x_embedder"),
        ("final_layer.linear", "proj_out"),
    ):
        move(dst, src)
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks.")})
    for i in blocks:
        s, d = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for suffix in ("weight", "bias"):
            out[f"{d}img_attn.qkv.{suffix}"] = torch.cat([state.pop(f"{s}attn.to_{x}.{suffix}") for x in "qkv"])
            out[f"{d}txt_attn.qkv.{suffix}"] = torch.cat([state.pop(f"{s}attn.add_{x}_proj.{suffix}") for x in "qkv"])
        out[d + "img_attn.norm.query_norm.scale"] = state.pop(s + "attn.norm_q.weight")
        out[d + "img_attn.norm.key_norm.scale"] = state.pop(s + "attn.norm_k.weight")
        out[d + "txt_attn.norm.query_norm.scale"] = state.pop(s + "attn.norm_added_q.weight")
        out[d + "txt_attn.norm.key_norm.scale"] = state.pop(s + "attn.norm_added_k.weight")
        for dst, src in (("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
                         ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
                         ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
                         ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out")):  # fmt: skip
            move(d + dst, s + src)
    singles = sorted({int(k.split(".")[1]) for k in state if k.startswith("single_transformer_blocks.")})
    for i in singles:
        s, d = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for suffix in ("weight", "bias"):
            parts = [state.pop(f"{s}attn.to_{x}.{suffix}") for x in "qkv"] + [state.pop(f"{s}proj_mlp.{suffix}")]
            out[f"{d}linear1.{suffix}"] = torch.cat(parts)
        out[d + "norm.query_norm.scale"] = state.pop(s + "attn.norm_q.weight")
        out[d + "norm.key_norm.scale"] = state.pop(s + "attn.norm_k.weight")
        move(d + "modulation.lin", s + "norm.linear")
        move(d + "linear2", s + "proj_out")
    for suffix in ("weight", "bias"):
        if f"norm_out.linear.{suffix}" not in state:
            continue  # Chroma: no final modulation weights
        scale, shift = state.pop(f"norm_out.linear.{suffix}").chunk(2)
        out[f"final_layer.adaLN_modulation.1.{suffix}"] = torch.cat([shift, scale])
    assert not state, sorted(state)
    return out


# diffusers' SD3 names -> Stability's MMDiT names, for the tensors that are only renamed.
_SD3_FIXED = {"pos_embed.proj": "x_embedder.proj", "context_embedder": "context_embedder",
              "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
              "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
              "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
              "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}
# Within transformer block N -> joint_blocks.N: diffusers' module -> Stability's.
_SD3_BLOCK = {"attn.to_out.0": "x_block.attn.proj", "attn.to_add_out": "context_block.attn.proj",
              "attn.norm_q": "x_block.attn.ln_q", "attn.norm_k": "x_block.attn.ln_k",
              "attn.norm_added_q": "context_block.attn.ln_q", "attn.norm_added_k": "context_block.attn.ln_k",
              "attn2.to_out.0": "x_block.attn2.proj", "attn2.norm_q": "x_block.attn2.ln_q",
              "attn2.norm_k": "x_block.attn2.ln_k", "norm1.linear": "x_block.adaLN_modulation.1",
              "norm1_context.linear": "context_block.adaLN_modulation.1", "ff.net.0.proj": "x_block.mlp.fc1",
              "ff.net.2": "x_block.mlp.fc2", "ff_context.net.0.proj": "context_block.mlp.fc1",
              "ff_context.net.2": "context_block.mlp.fc2"}  # fmt: skip
# The fused projections: Stability's qkv rows are q, k, v in that order.
_SD3_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
            "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
            "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}  # fmt: skip


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    # diffusers' AdaLayerNormContinuous reads (scale, shift) where Stability's final modulations hold
    # (shift, scale): the converter swaps the halves, and so does its inverse.
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def sd3_to_sai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' SD3Transformer2DModel names -> Stability's original MMDiT names (`joint_blocks.N`, fused
    qkv, `final_layer`), as sd3_medium.safetensors and sd3.5_*.safetensors hold them (the inverse of
    diffusers' converter). Every tensor is used once: a leftover raises."""
    left = dict(state)
    out: dict[str, torch.Tensor] = {"pos_embed": left.pop("pos_embed.pos_embed")}
    last = max(int(key.split(".")[1]) for key in left if key.startswith("transformer_blocks."))
    for kind in ("weight", "bias"):
        for src, dst in _SD3_FIXED.items():
            out[f"{dst}.{kind}"] = left.pop(f"{src}.{kind}")
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(left.pop(f"norm_out.linear.{kind}"))
        for n in range(last + 1):
            block = f"transformer_blocks.{n}."
            for dst, sources in _SD3_QKV.items():
                if f"{block}{sources[0]}.{kind}" in left:
                    out[f"joint_blocks.{n}.{dst}.{kind}"] = torch.cat([left.pop(f"{block}{s}.{kind}") for s in sources])
            for src, dst in _SD3_BLOCK.items():
                if f"{block}{src}.{kind}" in left:
                    value = left.pop(f"{block}{src}.{kind}")
                    # The last block's context modulation is a final-layer-style (shift, scale) pair.
                    swap = n == last and src == "norm1_context.linear"
                    out[f"joint_blocks.{n}.{dst}.{kind}"] = _swap_halves(value) if swap else value
    if left:
        raise AssertionError(f"sd3_to_sai left tensors unnamed: {sorted(left)}")
    return out


def save_sai_sd3(pipe: StableDiffusion3Pipeline, path: Path, *, all_in_one: bool = False) -> Path:
    """An SD3 single file in Stability's layout: the MMDiT under `model.diffusion_model.`; `all_in_one` adds
    the text encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (transformers' names) and the
    VAE under `first_stage_model.` (LDM names), as sd3_medium_incl_clips_t5xxlfp16.safetensors holds them.
    CLIP-L goes without its text projection: SD3 reads CLIP-L's pooled output unprojected (diffusers' loader
    puts an identity there), so a pipe written this way should hold an identity projection itself."""
    from tests.support.tiny_models import clip_to_ldm, vae_to_ldm

    state = {"model.diffusion_model." + k: v for k, v in sd3_to_sai(pipe.transformer.state_dict()).items()}
    if all_in_one:
        clip_l = {k: v for k, v in pipe.text_encoder.state_dict().items() if k != "text_projection.weight"}
        state |= clip_to_ldm(clip_l, "text_encoders.clip_l.transformer.")
        state |= clip_to_ldm(pipe.text_encoder_2.state_dict(), "text_encoders.clip_g.transformer.")
        state |= {"text_encoders.t5xxl.transformer." + k: v for k, v in pipe.text_encoder_3.state_dict().items()}
        state |= vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path


def save_bfl_file(pipe: FluxPipeline, path: Path, prefix: str = "", drop: str | None = None) -> Path:
    state = {prefix + k: v.contiguous() for k, v in flux_to_bfl(pipe.transformer.state_dict()).items()}
    if drop is not None:
        state = {k: v for k, v in state.items() if f".{drop}." not in f".{k}"}
    save_file(state, str(path))
    return path


def save_gguf(
    state: dict[str, torch.Tensor], path: Path, quant: str = "Q8_0", arch: str = "flux", keep: tuple[str, ...] = ()
) -> Path:
    """Tensors to a GGUF file: 2-D weights whose rows fit the quantisation's blocks as `quant`, the rest (and
    the tensors named in `keep`) F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    kind = gguf.GGMLQuantizationType[quant]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        quantise = data.ndim == 2 and data.shape[-1] % block == 0 and name not in keep
        if quantise and kind != gguf.GGMLQuantizationType.F32:
            quantised = gguf.quants.quantize(data, kind)
            writer.add_tensor(name, quantised, raw_shape=quantised.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_all_in_one(pipe: FluxPipeline, path: Path, encoders: tuple[str, ...] = ("clip_l", "t5xxl")) -> Path:
    """A ComfyUI all-in-one Flux checkpoint: the BFL transformer under `model.diffusion_model.`, CLIP-L under
    `text_encoders.clip_l.transformer.`, T5 under `text_encoders.t5xxl.transformer.` and the VAE in LDM
    names under `vae.` (the names diffusers' single-file loader reads)."""
    from tests.support.tiny_models import clip_to_ldm, vae_to_ldm

    state = {"model.diffusion_model." + k: v for k, v in flux_to_bfl(pipe.transformer.state_dict()).items()}
    if "clip_l" in encoders:
        clip_l = {k: v for k, v in pipe.text_encoder.state_dict().items() if k != "text_projection.weight"}
        state |= clip_to_ldm(clip_l, "text_encoders.clip_l.transformer.")
    if "t5xxl" in encoders:
        state |= {"text_encoders.t5xxl.transformer." + k: v for k, v in pipe.text_encoder_2.state_dict().items()}
    vae = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    state |= {"vae." + k.removeprefix("first_stage_model."): v for k, v in vae.items()}
    # Tied tensors (T5's shared embedding) are saved as copies, as the real files hold them.
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(path))
    return path
