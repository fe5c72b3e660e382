"""Tiny random Flux.2 models (Klein: Qwen3 text encoder; dev: Mistral 3) built from the shipped configs
with small dimensions, and the inverse of diffusers' BFL conversion for their single files.

The text encoders keep the real depths' hidden-state picks (Klein reads layers 9, 18, 27 of Qwen3; dev
10, 20, 30 of Mistral 3) at width 16, so the pipelines run with their defaults; the transformer's text
input is three of those stacked (48 wide).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tests.support.tiny_dit import CONFIGS, _jitter
from tests.support.tiny_qwen_zimage import VOCAB, tiny_tokenizer

WIDTH = 16  # the text encoders' hidden size; the transformer reads 3 stacked layers (48)
RANK = 4  # the tiny LoRAs' rank


def _shipped(name: str, part: str) -> dict:
    return json.loads((CONFIGS / name / part).read_text(encoding="utf-8"))


def tiny_transformer(
    variant: str, seed: int = 0, double: int = 2, single: int = 2, latent_channels: int = 4
) -> Flux2Transformer2DModel:
    """The shipped config's kind (guidance embedder or not) at small dimensions, latents of 4 channels (32,
    the real VAE's, where a test needs Flux.2's own preview table), patchified to 4x that."""
    config = _shipped(f"flux2-{variant}", "transformer/config.json")
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=double, num_single_layers=single,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * WIDTH, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=config["guidance_embeds"], timestep_guidance_channels=32,
    )  # fmt: skip
    _jitter(transformer, seed)
    return transformer


def tiny_vae(latent_channels: int = 4, levels: int = 2) -> AutoencoderKLFlux2:
    vae = AutoencoderKLFlux2(
        block_out_channels=(8,) * levels, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=32,
    )  # fmt: skip
    # Its batch-norm statistics normalise the latents the transformer sees: not the identity, so a VAE left
    # at its defaults would show.
    with torch.no_grad():
        vae.bn.running_mean.uniform_(-0.2, 0.2)
        vae.bn.running_var.uniform_(0.5, 1.5)
    return vae.eval()


def _scheduler(variant: str) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(_shipped(f"flux2-{variant}", "scheduler/scheduler_config.json"))


def build_tiny_flux2_klein(seed: int = 0, is_distilled: bool = True, latent_channels: int = 4) -> Flux2KleinPipeline:
    transformer = tiny_transformer("klein-4b", seed, latent_channels=latent_channels)
    config = Qwen3Config(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=WIDTH, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    return Flux2KleinPipeline(
        scheduler=_scheduler("klein-4b"), vae=tiny_vae(latent_channels), text_encoder=Qwen3ForCausalLM(config).eval(),
        tokenizer=tiny_tokenizer(), transformer=transformer, is_distilled=is_distilled,
    )  # fmt: skip


# Mistral's control tokens the dev pipeline's chat template uses, and Pixtral's image tokens.
_MISTRAL_SPECIALS = ("<pad>", "<s>", "</s>", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[SYSTEM_PROMPT]",
                     "[/SYSTEM_PROMPT]", "[INST]", "[/INST]")  # fmt: skip
_MISTRAL_CHAT = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{% elif m['role'] == 'user' %}"
    "[INST]{% endif %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% if m['role'] == 'system' %}"
    "[/SYSTEM_PROMPT]{% elif m['role'] == 'user' %}[/INST]{% endif %}{% endfor %}"
)
MISTRAL_VOCAB = 256 + len(_MISTRAL_SPECIALS)


def tiny_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """Byte tokens (no merges) and Mistral's control tokens, with a chat template of Mistral's form: the text
    part of FLUX.2 dev's Pixtral processor (the processor itself needs torchvision)."""
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(bytes_to_unicode().values())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(_MISTRAL_SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = _MISTRAL_CHAT
    return tokenizer


def build_tiny_flux2_dev(seed: int = 0) -> Flux2Pipeline:
    transformer = tiny_transformer("dev", seed)
    config = Mistral3Config(
        text_config={"model_type": "mistral", "hidden_size": WIDTH, "intermediate_size": WIDTH,
                     "num_hidden_layers": 31, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
                     "vocab_size": MISTRAL_VOCAB},
        vision_config={"model_type": "pixtral", "hidden_size": WIDTH, "intermediate_size": WIDTH,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8, "image_size": 32,
                       "patch_size": 16},
        image_token_index=_MISTRAL_SPECIALS.index("[IMG]") + 256, spatial_merge_size=1,
        multimodal_projector_bias=False,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    return Flux2Pipeline(
        scheduler=_scheduler("dev"), vae=tiny_vae(), text_encoder=Mistral3ForConditionalGeneration(config).eval(),
        tokenizer=tiny_mistral_tokenizer(), transformer=transformer,
    )  # fmt: skip


def flux2_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Flux2Transformer2DModel names -> Black Forest Labs' original names (fused qkv; the final
    modulation as (shift, scale)), the inverse of diffusers' single-file conversion."""
    renames = {
        "x_embedder": "img_in", "context_embedder": "txt_in",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin", "proj_out": "final_layer.linear",
    }  # fmt: skip
    double = {
        "attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
        "attn.to_out.0": "img_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
        "attn.norm_added_q": "txt_attn.norm.query_norm", "attn.norm_added_k": "txt_attn.norm.key_norm",
        "attn.to_add_out": "txt_attn.proj", "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2",
    }  # fmt: skip
    single = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2", "attn.norm_q": "norm.query_norm",
              "attn.norm_k": "norm.key_norm"}  # fmt: skip
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for key in list(state):
        if key.startswith("transformer_blocks.") and ".attn.to_q." in key:
            index, param = key.split(".")[1], key.rsplit(".", 1)[1]
            base = f"transformer_blocks.{index}.attn."
            out[f"double_blocks.{index}.img_attn.qkv.{param}"] = torch.cat(
                [state.pop(f"{base}to_{x}.{param}") for x in "qkv"]
            )
            out[f"double_blocks.{index}.txt_attn.qkv.{param}"] = torch.cat(
                [state.pop(f"{base}add_{x}_proj.{param}") for x in "qkv"]
            )
    for key, value in state.items():
        stem, param = key.rsplit(".", 1)
        if stem.startswith("transformer_blocks."):
            _, index, inner = stem.split(".", 2)
            param = "scale" if "norm" in inner else param
            out[f"double_blocks.{index}.{double[inner]}.{param}"] = value
        elif stem.startswith("single_transformer_blocks."):
            _, index, inner = stem.split(".", 2)
            param = "scale" if "norm" in inner else param
            out[f"single_blocks.{index}.{single[inner]}.{param}"] = value
        elif stem == "norm_out.linear":
            scale, shift = value.chunk(2)
            out[f"final_layer.adaLN_modulation.1.{param}"] = torch.cat([shift, scale])
        else:
            out[f"{renames[stem]}.{param}"] = value
    return out


def flux2_vae_to_bfl(vae: AutoencoderKLFlux2) -> dict[str, torch.Tensor]:
    """AutoencoderKLFlux2's tensors in Black Forest Labs' names (flux2-vae.safetensors): the LDM names, with
    the quant convs inside the encoder and decoder and the latents' batch norm `bn` (its buffers: no affine)."""
    from tests.support.tiny_models import vae_to_ldm

    state = {k: v for k, v in vae.state_dict().items() if not k.startswith("bn.")}
    out = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(state, vae.config).items()}
    for outer, inner in (("quant_conv.", "encoder.quant_conv."), ("post_quant_conv.", "decoder.post_quant_conv.")):
        for key in [key for key in out if key.startswith(outer)]:
            out[inner + key[len(outer):]] = out.pop(key)
    # BFL's AutoEncoder loads its file strictly, so the file holds the batch norm's counter too.
    out |= {"bn.running_mean": vae.bn.running_mean, "bn.running_var": vae.bn.running_var,
            "bn.num_batches_tracked": vae.bn.num_batches_tracked}  # fmt: skip
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def save_transformer_file(
    state: dict[str, torch.Tensor], path: Path, prefix: str = "", drop: str | None = None
) -> Path:
    """A transformer-only single file; `drop` leaves out one block's tensors ("single_blocks.1")."""
    tensors = {prefix + k: v.contiguous() for k, v in state.items() if drop is None or not k.startswith(drop + ".")}
    save_file(tensors, str(path))
    return path


def lora_for(transformer: Flux2Transformer2DModel, layout: str, seed: int = 0, scale: float = 0.5) -> dict:
    """A tiny random LoRA in the layouts diffusers converts for Flux.2 (Flux2LoraLoaderMixin): "peft"
    (diffusers' names under `transformer.`), "aitoolkit" (BFL names under `diffusion_model.`, lora_A/B) and
    "kohya" (`lora_unet_single_blocks_0_linear1`, lora_down/up + alpha). Attention and the fused/MLP layers,
    whose widths tell Flux.2 from Flux.1."""
    generator = torch.Generator().manual_seed(seed)
    if layout == "peft":
        targets = (".attn.to_q", ".attn.to_qkv_mlp_proj", ".ff.linear_in")
        shapes = {f"transformer.{name}": (module.in_features, module.out_features)
                  for name, module in transformer.named_modules()
                  if name.endswith(targets) and isinstance(module, torch.nn.Linear)}  # fmt: skip
    else:
        bfl = flux2_to_bfl(transformer.state_dict())
        shapes = {name.removesuffix(".weight"): (value.shape[1], value.shape[0]) for name, value in bfl.items()
                  if name.endswith((".img_attn.qkv.weight", ".linear1.weight", ".img_mlp.0.weight"))}  # fmt: skip
    tensors = {}
    for name, (inputs, outputs) in shapes.items():
        down = torch.randn(RANK, inputs, generator=generator) * scale
        up = torch.randn(outputs, RANK, generator=generator) * scale
        if layout == "kohya":
            key = "lora_unet_" + name.replace(".", "_")
            tensors |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(RANK / 2)}  # fmt: skip
        else:
            key = name if layout == "peft" else f"diffusion_model.{name}"
            tensors |= {f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up}
    return tensors



# A tiny Mistral tekken.json: the 256 byte tokens (ranks 0-255, as in Mistral's files) and a few merges, after
# the 20 named special tokens; a real file has 1000 (the rest "<SPECIAL_n>") and 130,072 ranks.
_TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
    r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
_TEKKEN_MERGED = ("th", "he", "the", " a", " c", "at", "cat", " cat", "re", "red", " red", "ir", "ci", "cir")
TEKKEN_SPECIALS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
                   "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                   "[TOOL_CONTENT]")  # fmt: skip
TEKKEN_VOCAB = len(TEKKEN_SPECIALS) + 256 + len(_TEKKEN_MERGED)


def tiny_tekken(with_specials: bool) -> dict:
    """The tekken.json; `with_specials`: in the newer form that lists its special tokens (the older form,
    Mistral Small 3's, leaves their names to mistral-common's defaults)."""
    import base64

    tokens = [bytes([i]) for i in range(256)] + [text.encode() for text in _TEKKEN_MERGED]
    vocab = [{"rank": rank, "token_bytes": base64.b64encode(token).decode(), "token_str": token.decode("latin-1")}
             for rank, token in enumerate(tokens)]  # fmt: skip
    config = {"pattern": _TEKKEN_PATTERN, "num_vocab_tokens": len(tokens), "default_vocab_size": TEKKEN_VOCAB,
              "default_num_special_tokens": len(TEKKEN_SPECIALS), "version": "v7"}  # fmt: skip
    tekken: dict = {"config": config, "vocab": vocab}
    if with_specials:
        tekken["special_tokens"] = [{"rank": rank, "token_str": name, "is_control": True}
                                    for rank, name in enumerate(TEKKEN_SPECIALS)]  # fmt: skip
    return tekken


def tekken_reference_tokenizer(folder: Path):
    """transformers' own conversion of the tiny tekken.json, with Mistral's chat form, padded on the left as
    Mistral's processor and ComfyUI pad: the tokenizer bare diffusers runs with in the tests."""
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tekken.json").write_text(json.dumps(tiny_tekken(with_specials=True)), encoding="utf-8")
    tokenizer = convert_tekken_tokenizer(str(folder / "tekken.json"), chat_template=_MISTRAL_CHAT)
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_flux2_dev_tekken(folder: Path, seed: int = 0) -> Flux2Pipeline:
    """dev with a Mistral 3 of the tiny tekken vocabulary and 31 layers (the pipeline reads hidden states 10,
    20 and 30; the 31st layer stands for the 10 a whole Mistral Small has after those)."""
    transformer = tiny_transformer("dev", seed)
    return Flux2Pipeline(
        scheduler=_scheduler("dev"), vae=tiny_vae(), text_encoder=tiny_mistral3(seed),
        tokenizer=tekken_reference_tokenizer(folder), transformer=transformer,
    )  # fmt: skip


def tiny_mistral3(seed: int = 0) -> Mistral3ForConditionalGeneration:
    """Mistral 3 of the tiny tekken vocabulary, 31 layers, norms jittered away from 1 (a final norm left in
    would show)."""
    config = Mistral3Config(
        text_config={"model_type": "mistral", "hidden_size": WIDTH, "intermediate_size": WIDTH,
                     "num_hidden_layers": 31, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                     "vocab_size": TEKKEN_VOCAB, "rope_theta": 1e9, "sliding_window": None},
        vision_config={"model_type": "pixtral", "hidden_size": WIDTH, "intermediate_size": WIDTH,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8, "image_size": 32,
                       "patch_size": 16},
        image_token_index=TEKKEN_SPECIALS.index("[IMG]"), spatial_merge_size=1, multimodal_projector_bias=False,
    )  # fmt: skip
    torch.manual_seed(seed + 1)
    encoder = Mistral3ForConditionalGeneration(config).eval()
    _jitter(encoder, seed + 2)
    return encoder


def comfyui_mistral_file(encoder: Mistral3ForConditionalGeneration, path: Path, *, layers: int | None = None,
                         tekken: dict | None = None) -> Path:  # fmt: skip
    """ComfyUI's mistral_3_small_flux2 layout (comfyui_mistral_state), its tekken.json as the uint8 tensor
    `tekken_model`."""
    state = comfyui_mistral_state(encoder, layers=layers)
    if tekken is not None:
        state["tekken_model"] = torch.frombuffer(bytearray(json.dumps(tekken).encode()), dtype=torch.uint8)
    save_file(state, str(path))
    return path


def comfyui_mistral_state(encoder: Mistral3ForConditionalGeneration, *, layers: int | None = None) -> dict:
    """The language model under `model.` (no vision tower, projector or lm_head); `layers`: cut to that many
    (the "pruned" files keep 30 and their final norm)."""
    state = {}
    for key, value in encoder.state_dict().items():
        if not key.startswith("model.language_model."):
            continue
        inner = key.removeprefix("model.language_model.")
        if layers is not None and inner.startswith("layers.") and int(inner.split(".")[1]) >= layers:
            continue
        state["model." + inner] = value.detach().clone().contiguous()
    return state
