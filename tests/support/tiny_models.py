"""Tiny real Stable Diffusion models for tests, and writers for the layouts users actually have.

The models use the real SD 1.5 / SDXL block types (cross-attention down/up blocks, a cross-attention mid
block, a 4-level KL VAE with an 8x spatial factor, CLIP text encoders with the real 49,408-token vocab)
at toy widths, with seeded random weights: a 64x64 image takes a fraction of a second on a CPU.

`save_single_file` writes the original LDM / A1111 layout (what people download from model sites), by
inverting the key mapping that diffusers' `from_single_file` applies, so tests drive the real
single-file loading code. Nothing here touches the network.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.modeling_utils import ModelMixin
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedModel,
)

from desktop.engine.backends.diffusers_backend import clip_tokenizer
from desktop.engine.resources import Resources

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "resources" / "configs"

# Betas of every SD 1.x / SDXL release; the schedulers below mirror their published scheduler configs.
_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}

SD15_SCHEDULER_CONFIG = {
    **_BETAS,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
SDXL_SCHEDULER_CONFIG = {
    **_BETAS,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}

# Tiny widths. GroupNorm keeps its real 32 groups, so every UNet/VAE width is a multiple of 32.
_UNET_CHANNELS = (32, 64)
_VAE_CHANNELS = (32, 32, 64, 64)  # four levels: the real 8x latent factor, so 64x64 images -> 8x8 latents
_TEXT_WIDTH = 32
# SDXL's second encoder must be wider than the first, as in the real model (768 vs 1280): diffusers tells
# the two apart in a single file by comparing position-embedding widths, so equal widths would load
# CLIP-L's weights into both encoders.
_TEXT_WIDTH_2 = 64
_SDXL_TIME_EMBED = 8


# --------------------------------------------------------------------------------------------------
# Builders


@contextmanager
def _seeded(seed: int) -> Iterator[torch.Generator]:
    # Module constructors draw from the global RNG: seed it, but leave the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed + 1)


def _jitter(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Make every parameter distinct: fresh norms are all ones, biases all zeros, so swapping two of them
    in a converter would go unnoticed. Small noise keeps the activations sane."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.02)


def _clip_config(**overrides: object) -> CLIPTextConfig:
    values: dict[str, object] = {
        "vocab_size": 49408,
        "hidden_size": _TEXT_WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",  # OpenAI CLIP-L
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    values.update(overrides)
    return CLIPTextConfig(**values)


def _tiny_vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        block_out_channels=_VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def build_tiny_vae(
    seed: int, scaling_factor: float = 0.18215, latent_channels: int = 4, channels: tuple[int, ...] = _VAE_CHANNELS
) -> AutoencoderKL:
    """A stand-alone tiny VAE with seeded random weights, shaped like the tiny models' own by default: the
    VAE people download to decode with instead of a model's own. Jittered more than the models' parts so
    its images differ visibly from the model VAE's."""
    with _seeded(seed) as generator:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(channels),
            up_block_types=("UpDecoderBlock2D",) * len(channels),
            block_out_channels=channels, layers_per_block=1, latent_channels=latent_channels,
            norm_num_groups=32, sample_size=64, scaling_factor=scaling_factor,
        )  # fmt: skip
        with torch.no_grad():
            for param in vae.parameters():
                param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.1)
    return vae.eval()


def save_vae_file(vae: AutoencoderKL, path: Path | str, layout: str = "ldm", prefix: str = "") -> Path:
    """One .safetensors VAE file: `ldm` in the original names (encoder.down.0..., with `prefix` such as
    `first_stage_model.`), `diffusers` in diffusers' own names."""
    state = {k: v.detach().contiguous() for k, v in vae.state_dict().items()}
    if layout == "ldm":
        state = {k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(state, vae.config).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _tiny_sd15_unet(in_channels: int) -> UNet2DConditionModel:
    # SD 1.5's shape in miniature: attention in every level but the deepest, conv 1x1 proj_in/out.
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=_UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _tokenizer(pad_zero: bool = False) -> CLIPTokenizer:
    # The app's own loader of the one shipped copy (pad "!" for OpenCLIP's encoders).
    return clip_tokenizer(Resources(REPO_ROOT / "resources"), pad_zero)


def _build_sd15(
    seed: int, in_channels: int, pipeline_cls: type, open_clip: bool = False
) -> StableDiffusionPipeline:
    with _seeded(seed) as generator:
        unet = _tiny_sd15_unet(in_channels)
        vae = _tiny_vae(scaling_factor=0.18215)
        # SD 2.x: an OpenCLIP-H-style encoder (GELU, pad id 0), stored fused as OpenCLIP does.
        text_encoder = CLIPTextModel(_clip_config(hidden_act="gelu", pad_token_id=0) if open_clip else _clip_config())
        for module in (unet, vae, text_encoder):
            _jitter(module, generator)
    pipe = pipeline_cls(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=_tokenizer(pad_zero=open_clip),
        unet=unet.eval(),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd15(seed: int = 0) -> StableDiffusionPipeline:
    return _build_sd15(seed, in_channels=4, pipeline_cls=StableDiffusionPipeline)


def build_tiny_sd2(seed: int = 0) -> StableDiffusionPipeline:
    """SD 2.x in miniature: SD 1.5's UNet and VAE with an OpenCLIP-style text encoder (save with open_clip=True,
    which writes its q/k/v fused into `in_proj` under `cond_stage_model.model.`)."""
    return _build_sd15(seed, in_channels=4, pipeline_cls=StableDiffusionPipeline, open_clip=True)


def build_tiny_sd15_inpaint(seed: int = 0) -> StableDiffusionInpaintPipeline:
    """SD 1.5 inpainting: the UNet also takes the mask (1 channel) and the masked image's latents (4)."""
    return _build_sd15(seed, in_channels=9, pipeline_cls=StableDiffusionInpaintPipeline)


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL base in miniature: CLIP-L + OpenCLIP-G-style encoders (contexts concatenated: 32 + 64 = 96),
    pooled text embeddings + size/crop conditioning through `add_embedding`, linear proj_in/out."""
    with _seeded(seed) as generator:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=_UNET_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=_TEXT_WIDTH + _TEXT_WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=_SDXL_TIME_EMBED,
            # pooled OpenCLIP embedding + 6 size/crop numbers, each embedded in addition_time_embed_dim
            projection_class_embeddings_input_dim=_TEXT_WIDTH_2 + 6 * _SDXL_TIME_EMBED,
            norm_num_groups=32,
        )
        vae = _tiny_vae(scaling_factor=0.13025)
        text_encoder = CLIPTextModel(_clip_config())
        # OpenCLIP ViT-bigG: GELU, a text projection, and pad id 0 in its tokenizer.
        text_encoder_2 = CLIPTextModelWithProjection(
            _clip_config(
                hidden_size=_TEXT_WIDTH_2,
                intermediate_size=2 * _TEXT_WIDTH_2 + 3,
                hidden_act="gelu",
                projection_dim=_TEXT_WIDTH_2,
                pad_token_id=0,
            )
        )
        for module in (unet, vae, text_encoder, text_encoder_2):
            _jitter(module, generator)
    pipe = StableDiffusionXLPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(pad_zero=True),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_refiner(seed: int = 5) -> StableDiffusionXLImg2ImgPipeline:
    """The SDXL refiner in miniature, as stabilityai/stable-diffusion-xl-refiner-1.0 is laid out: only the
    OpenCLIP-G-style encoder (its context alone, 64 wide), and 5 conditioning numbers (size, crop and the
    aesthetic score) instead of the base's 6."""
    with _seeded(seed) as generator:
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=_UNET_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=_TEXT_WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=_SDXL_TIME_EMBED,
            projection_class_embeddings_input_dim=_TEXT_WIDTH_2 + 5 * _SDXL_TIME_EMBED,
            norm_num_groups=32,
        )
        vae = _tiny_vae(scaling_factor=0.13025)
        text_encoder_2 = CLIPTextModelWithProjection(
            _clip_config(
                hidden_size=_TEXT_WIDTH_2, intermediate_size=2 * _TEXT_WIDTH_2 + 3, hidden_act="gelu",
                projection_dim=_TEXT_WIDTH_2, pad_token_id=0,
            )
        )  # fmt: skip
        for module in (unet, vae, text_encoder_2):
            _jitter(module, generator)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae.eval(),
        text_encoder=None,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=None,
        tokenizer_2=_tokenizer(pad_zero=True),
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------------------------------
# Diffusers layout


def save_diffusers(pipe: DiffusionPipeline, folder: Path | str) -> Path:
    """`pipe` as a diffusers folder, its CLIP tokenizers in the files the releases ship."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    classic_clip_tokenizer_files(folder)
    return folder


def classic_clip_tokenizer_files(folder: Path) -> None:
    """Each CLIP tokenizer saved under `folder` in the files the SD 1.x, 2.x and SDXL releases ship: vocab.json and
    merges.txt (the shipped copy's, which `_tokenizer` loaded these from) beside tokenizer_config.json, without the
    tokenizer.json transformers saves. transformers reads those two files natively; from tokenizer.json it rebuilds
    the tokenizer in Python, five times slower, and the tests load these folders hundreds of times."""
    shipped = Resources(REPO_ROOT / "resources").tokenizer_folder()
    for config in folder.glob("*/tokenizer_config.json"):
        saved = config.parent / "tokenizer.json"
        clip = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == "CLIPTokenizer"
        if not clip or not saved.is_file():
            continue
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(shipped / name, config.parent / name)
        saved.unlink()


def save_config_folder(pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, folder: Path | str) -> Path:
    """Everything `from_pretrained` needs except weights: what `from_single_file(config=...)` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_config(folder)  # model_index.json
    for name, component in pipe.components.items():
        if component is None:
            continue
        sub = folder / name
        if isinstance(component, ModelMixin):
            component.save_config(sub)
        elif isinstance(component, PreTrainedModel):
            component.config.save_pretrained(sub)
        else:  # schedulers and tokenizers save only their configs / vocab anyway
            component.save_pretrained(sub)
    classic_clip_tokenizer_files(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Original (LDM / A1111) single-file layout


def _resnet_to_ldm(rest: str) -> str:
    """diffusers ResnetBlock2D -> LDM ResBlock parameter names (UNet)."""
    head, _, tail = rest.partition(".")
    renamed = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }[head]
    return f"{renamed}.{tail}"


StateDict = Mapping[str, torch.Tensor]


def unet_to_ldm(state_dict: StateDict, config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel state dict -> `model.diffusion_model.*` keys of an LDM checkpoint.

    LDM numbers the UNet as flat lists: input_blocks[0] is conv_in, then each down level contributes
    layers_per_block (resnet, attention) pairs plus one downsampler; output_blocks hold layers_per_block+1
    entries per up level, the last one also carrying the upsampler.
    """
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-level layers_per_block has no LDM layout")
    up_has_attention = [t.startswith("CrossAttn") for t in config["up_block_types"]]  # type: ignore[union-attr]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }

    def convert(key: str) -> str:
        module, _, param = key.rpartition(".")
        if module in fixed:
            return f"{fixed[module]}.{param}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + level * (lpb + 1) + layer
            if kind == "resnets":
                return f"input_blocks.{index}.0.{_resnet_to_ldm(rest)}"
            return f"input_blocks.{index}.1.{rest}"
        if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            index = 1 + int(m[1]) * (lpb + 1) + lpb
            return f"input_blocks.{index}.0.op.{m[2]}"
        if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"middle_block.{2 * int(m[1])}.{_resnet_to_ldm(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = level * (lpb + 1) + layer
            if kind == "resnets":
                return f"output_blocks.{index}.0.{_resnet_to_ldm(rest)}"
            return f"output_blocks.{index}.1.{rest}"
        if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            level = int(m[1])
            index = level * (lpb + 1) + lpb
            # The upsampler follows the attention when the level has one: slot 2, else slot 1.
            slot = 2 if up_has_attention[level] else 1
            return f"output_blocks.{index}.{slot}.conv.{m[2]}"
        raise KeyError(f"no LDM name for UNet parameter {key!r}")

    return {"model.diffusion_model." + convert(k): v for k, v in state_dict.items()}


def vae_to_ldm(state_dict: StateDict, config: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> `first_stage_model.*` keys of an LDM checkpoint."""
    levels = len(config["up_block_types"])  # type: ignore[arg-type]
    attention = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}

    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut", "nin_shortcut")

    def convert(key: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key):
            return f"{m[1]}.norm_out.{m[2]}", value
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}", value
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
            return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", value
        # LDM orders the decoder levels from the deepest up; diffusers from the latent side.
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}", value
        if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
            return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}", value
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}", value
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = attention[m[2]]
            if m[3] == "weight" and name != "norm":
                value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
            return f"{m[1]}.mid.attn_1.{name}.{m[3]}", value
        if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.\w+|(post_)?quant_conv\.\w+", key):
            return key, value
        raise KeyError(f"no LDM name for VAE parameter {key!r}")

    return {"first_stage_model." + k: v for k, v in (convert(k, v) for k, v in state_dict.items())}


def _text_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers >= 5.6 flattened CLIPTextModel (no `text_model.` prefix); older versions and
    # CLIPTextModelWithProjection keep it. Normalise to the prefixed names the checkpoints use.
    out = {}
    for key, value in state_dict.items():
        if key == "text_projection.weight" or key.startswith("text_model."):
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face CLIPTextModel -> the same names under `prefix` (LDM keeps the HF layout for CLIP-L)."""
    return {prefix + k: v for k, v in _text_model_keys(state_dict).items()}


def open_clip_to_ldm(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Hugging Face CLIPTextModelWithProjection -> OpenCLIP's layout under `prefix`.

    OpenCLIP fuses q, k, v into one `in_proj` (rows in that order), names its blocks `resblocks`, and stores
    the text projection as (width, embed_dim) for `x @ P`, the transpose of a Linear weight.
    """
    sd = _text_model_keys(state_dict)
    out: dict[str, torch.Tensor] = {}
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    fused: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(\w+)", key):
            fused.setdefault((int(m[1]), m[3]), {})[m[2]] = value
        elif m := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"{prefix}transformer.resblocks.{m[1]}.{layer_names[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder parameter {key!r}")
    for (layer, kind), parts in fused.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0
        )
    return out


def ldm_state_dict(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline, open_clip: bool = False
) -> dict[str, torch.Tensor]:
    """The whole pipeline as one original-layout state dict (UNet, VAE, text encoder(s)); `open_clip`: an SD 2.x
    text encoder in OpenCLIP's layout."""
    sd = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    sd.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    text_encoder_2 = getattr(pipe, "text_encoder_2", None)
    if open_clip:
        sd.update(open_clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.model."))
    elif text_encoder_2 is None:
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "cond_stage_model.transformer."))
    elif pipe.text_encoder is None:  # the SDXL refiner: OpenCLIP-G alone, as the first embedder
        sd.update(open_clip_to_ldm(text_encoder_2.state_dict(), "conditioner.embedders.0.model."))
    else:
        sd.update(clip_to_ldm(pipe.text_encoder.state_dict(), "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_ldm(text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return sd


def save_single_file(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
    path: Path | str,
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    open_clip: bool = False,
) -> Path:
    """Write the pipeline as ONE original-layout `.safetensors` file, like the checkpoints users download."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {}
    for key, value in ldm_state_dict(pipe, open_clip).items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        sd[key] = value.contiguous()
    save_file(sd, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


# --------------------------------------------------------------------------------------------------
# Full-size SD 1.5 (one slow test)


def build_full_sd15_single_file(
    path: Path | str, config_folder: Path | str | None = None, seed: int = 0
) -> Path:
    """The real SD 1.5 architecture (configs from resources/configs/sd15) with random fp16 weights, written
    as an original-layout single file (~2 GB).

    The modules are built on the meta device and materialised directly in fp16, filled from one shared
    block of seeded noise at a different offset per tensor: normal fp32 init would spend ~20 s and twice
    the memory on weights that only a loading test will ever look at.
    """
    folder = Path(config_folder) if config_folder is not None else CONFIGS / "sd15"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    generator = torch.Generator().manual_seed(seed)
    noise = (torch.randn(1 << 22, generator=generator) * 0.02).to(torch.float16)
    for module in (unet, vae, text_encoder):
        _materialise_random(module, noise, generator)

    class _Components:  # save_single_file only needs these three attributes
        pass

    parts = _Components()
    parts.unet, parts.vae, parts.text_encoder = unet, vae, text_encoder  # type: ignore[attr-defined]
    return save_single_file(parts, path)  # type: ignore[arg-type]


def _materialise_random(module: torch.nn.Module, noise: torch.Tensor, generator: torch.Generator) -> None:
    # nn.Module.to, not ModelMixin.to: the latter warns about fp32-only modules, irrelevant on meta.
    torch.nn.Module.to(module, torch.float16)
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            if tensor.ndim == 1:
                tensor.fill_(1.0 if name.endswith("weight") else 0.0)  # norm scales, biases
                continue
            flat = tensor.view(-1)
            start = int(torch.randint(0, noise.numel(), (1,), generator=generator))
            done = 0
            while done < flat.numel():
                take = min(flat.numel() - done, noise.numel() - start)
                flat[done : done + take].copy_(noise[start : start + take])
                done += take
                start = 0


def iter_ldm_mismatches(
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
    path: Path | str,
    compare: Callable[[torch.Tensor, torch.Tensor], bool] = torch.equal,
) -> Iterator[str]:
    """Names where the pipeline, converted back to the original layout, differs from the file `path`.

    Streams the file tensor by tensor, so a 2 GB checkpoint is never in memory twice.
    """
    from safetensors import safe_open

    mine = ldm_state_dict(pipe)
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        yield from sorted(names ^ set(mine))
        for name in sorted(names & set(mine)):
            theirs = f.get_tensor(name)
            ours = mine[name].detach().to(theirs.dtype)
            if ours.shape != theirs.shape or not compare(ours, theirs):
                yield name
