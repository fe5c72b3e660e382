"""ControlNets for the diffusion transformers, in diffusers' layout: Flux.1's (InstantX's, Shakker-Labs' Union,
XLabs' -- theirs converted from their own names; text-to-image, image-to-image and inpainting), Qwen-Image's
(InstantX's Union), Z-Image's (alibaba-pai's Fun ControlNet Union 1.0, 2.0, 2.1), SD3's and Sana's (text-to-image;
image-to-image and inpainting through control_dit_edits.py, and the family's ControlNet inpainting pipeline for the
ControlNets that read the masked source), for a loaded pipeline of their family.

A model is shaped from its own tensors (how many blocks, whether it embeds the guidance, which kinds of control
image a union model tells apart) and from the loaded transformer's config (the width, the heads, the rotary
dimensions a ControlNet shares with its base). It runs in diffusers' ControlNet pipeline of the family, built on
the loaded pipeline's own modules, as the image-to-image siblings are (families.edit_pipeline): no tensor is
copied, cast or moved.

A Flux union model reads which kind of control image it is given (InstantX's table: canny 0, tile 1, depth 2,
blur 3, pose 4, gray 5, low quality 6): Marble takes it from the unit's preprocessor. Qwen-Image's and
Z-Image's union models tell the kinds apart by themselves.

XLabs' Flux.1 ControlNets encode the control picture themselves (eight convolutions; the pipeline hands it over
in pixels, not VAE latents) and their few double blocks feed the transformer's double blocks in turn (diffusers'
`controlnet_blocks_repeat`, which the pipeline sets from the first model): they run together, never beside the
other kind.

A Z-Image ControlNet borrows the base transformer's embedders and refiner blocks (diffusers' `from_transformer`):
they are lent for one call (`z_image_hooks`) and taken back after it, so a cached ControlNet never keeps a model that
was unloaded. Its pipeline takes one ControlNet and no step range: the range is applied by a hook that sets the
ControlNet's scale at each step (diffusers' rule for the other families: a step counts when it lies inside).
Which transformer layers its blocks feed is configuration, not weights: the published configs spread them
evenly from layer 0 (6 blocks -> every 5th of 30 layers, 15 -> every 2nd, 3 -> every 10th), the rule used here.

torch and diffusers are imported inside the functions: only the diffusers backend loads this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from desktop.engine.backends import control_dit_edits, families_sana
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.control import FLUX, QWEN_IMAGE, SANA, SD3, Z_IMAGE, family_label
from desktop.engine.request import ControlUnit

# InstantX's Flux union modes, keyed by the Marble preprocessor that makes each kind of control image (its
# "low quality" mode 6 has none).
UNION_MODES = {
    "canny": 0, "tile": 1, "depth": 2, "blur": 3, "openpose": 4, "openpose_hand": 4, "openpose_face": 4,
    "openpose_full": 4, "gray": 5,
}  # fmt: skip


@dataclass(frozen=True)
class _Classes:
    model: str  # diffusers' ControlNet model class
    several: str  # the class that runs several of them together ("": the pipeline takes one)
    # The pipeline with ControlNets for each mode ("txt2img", "img2img", "inpaint"); a mode a family's lacks runs
    # Marble's own over its text-to-image one (control_dit_edits.py).
    pipelines: dict[str, str]


CLASSES = {
    FLUX: _Classes("FluxControlNetModel", "FluxMultiControlNetModel", {
        "txt2img": "FluxControlNetPipeline", "img2img": "FluxControlNetImg2ImgPipeline",
        "inpaint": "FluxControlNetInpaintPipeline",
    }),
    # Qwen-Image's ControlNet inpainting pipeline runs InstantX's inpainting ControlNet (the masked source and the
    # mask as its picture, painted from pure noise: strength 1); the other ControlNets' image to image and inpainting
    # are Marble's own over the text-to-image pipeline, as for Z-Image, SD3 and Sana (control_dit_edits.py).
    QWEN_IMAGE: _Classes("QwenImageControlNetModel", "QwenImageMultiControlNetModel",
                         {"txt2img": "QwenImageControlNetPipeline", "inpaint": "QwenImageControlNetInpaintPipeline"}),
    # Z-Image's ControlNet inpainting pipeline paints from pure noise (no strength) with the masked picture as
    # the 2.x models' extra condition: Marble's inpainting at strength 1 with them (_reads_the_mask).
    Z_IMAGE: _Classes("ZImageControlNetModel", "", {"txt2img": "ZImageControlNetPipeline",
                                                     "inpaint": "ZImageControlNetInpaintPipeline"}),
    # SD3's ControlNet inpainting pipeline runs an inpainting ControlNet (alimama's, in InstantX's shape: the mask
    # beside the masked source's latents), as Qwen-Image's does.
    SD3: _Classes("SD3ControlNetModel", "SD3MultiControlNetModel", {
        "txt2img": "StableDiffusion3ControlNetPipeline", "inpaint": "StableDiffusion3ControlNetInpaintingPipeline",
    }),
    # Sana's pipeline takes one ControlNet and no step range (StepScales applies it).
    SANA: _Classes("SanaControlNetModel", "", {"txt2img": "SanaControlNetPipeline"}),
}  # fmt: skip
# Stability's own names in its SD3.5 ControlNet files -> diffusers' (the rest are the same in both).
_SAI_NAMES = {".attn.proj.": ".attn.to_out.0.", ".mlp.fc1.": ".ff.net.0.proj.", ".mlp.fc2.": ".ff.net.2.",
              ".adaLN_modulation.1.": ".norm1.linear."}  # fmt: skip
# XLabs' Flux.1 ControlNets in Black Forest Labs' names -> diffusers': the modules outside the blocks (the
# ControlNet's own layers, `controlnet_blocks.N`, have the same names in both) ...
_XLABS_NAMES = {
    "img_in": "x_embedder", "txt_in": "context_embedder", "pos_embed_input": "controlnet_x_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
}  # fmt: skip
# ... and within double block N -> transformer_blocks.N (the fused qkv is split apart).
_XLABS_BLOCK = {
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q", "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q", "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2", "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}  # fmt: skip
# The transformer's modules a Z-Image ControlNet runs with (diffusers' ZImageControlNetModel.from_transformer).
_Z_IMAGE_BORROWED = ("t_embedder", "all_x_embedder", "cap_embedder", "rope_embedder", "noise_refiner",
                     "context_refiner", "x_pad_token", "cap_pad_token")  # fmt: skip


def refuse_memory_mode(family: str, mode: str, asked: str, label: str) -> None:
    """InvalidRequest for a Z-Image ControlNet under group or sequential offload: it runs the transformer's
    embedders and refiners outside the transformer's call, where those modes' hooks would not have brought
    them to the GPU. (Model offload brings the whole transformer first: z_image_hooks.)"""
    if family != Z_IMAGE or mode not in ("group", "sequential"):
        return
    chosen = f"the auto mode chose {mode} offload for this card" if asked == "auto" else f"memory mode {mode}"
    raise InvalidRequest(
        f"A Z-Image ControlNet runs with the memory modes full, offload, fp8, nf4 and int8, not {mode} offload "
        f"({chosen}): set Memory to offload or fp8, or remove the control unit. ({label})"
    )


def refuse_several(family: str, count: int, label: str) -> None:
    """InvalidRequest for more units than the family's pipeline takes (Z-Image's takes one)."""
    if count > 1 and not CLASSES[family].several:
        raise InvalidRequest(
            f"{label} runs one ControlNet unit at a time ({count} are on): its ControlNet pipeline takes one. Its "
            "union ControlNet reads canny, depth, pose and other pictures by itself: keep the unit you need."
        )


def build(family: str, state: dict[str, Any], transformer_config: Any) -> Any:
    """The `family`'s ControlNet holding `state`, shaped by its tensors and the base transformer's config."""
    import diffusers
    from accelerate import init_empty_weights

    def count(prefix: str) -> int:
        return len({key.split(".")[1] for key in state if key.startswith(prefix)})

    cls = getattr(diffusers, CLASSES[family].model)
    config = transformer_config
    if family == FLUX:
        state = _xlabs_diffusers_names(state)
        mode = state.get("controlnet_mode_embedder.weight")
        hint = state.get("input_hint_block.conv_out.weight")  # XLabs' own encoder of the control picture
        context = state["context_embedder.weight"].shape[1]
        # XLabs' encoder writes a quarter of the input layer's channels, packed 2x2 into it (diffusers' patch size;
        # it is used for nothing else).
        patch = 1 if hint is None else round((state["controlnet_x_embedder.weight"].shape[1] / hint.shape[0]) ** 0.5)
        shape = dict(
            patch_size=patch, in_channels=state["x_embedder.weight"].shape[1], num_layers=count("transformer_blocks."),
            num_single_layers=count("single_transformer_blocks."), attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads, joint_attention_dim=context,
            pooled_projection_dim=config.pooled_projection_dim,
            guidance_embeds=any(key.startswith("time_text_embed.guidance_embedder.") for key in state),
            axes_dims_rope=list(config.axes_dims_rope), num_mode=mode.shape[0] if mode is not None else None,
            conditioning_embedding_channels=hint.shape[1] if hint is not None else None,
        )  # fmt: skip
    elif family == SD3:
        state = _sd3_diffusers_names(state)
        shape = _sd3_shape(state, config)
    elif family == SANA:
        if "controlnet.0.before_proj.weight" in state:  # NVlabs' checkpoint, converted from its pickle
            state = families_sana.controlnet_from_original(state)
        shape = _sana_shape(state, config)
    elif family == Z_IMAGE:
        shape = _z_image_shape(state, config)
        if shape.pop("drop_refiner"):
            state = {key: value for key, value in state.items() if not key.startswith("control_noise_refiner.")}
    else:
        in_channels = state["img_in.weight"].shape[1]
        # InstantX's inpainting ControlNet also reads the mask (one channel, packed 2x2: 4 more).
        extra = state["controlnet_x_embedder.weight"].shape[1] - in_channels
        if extra < 0:
            raise ModelError(f"its input layer reads {extra + in_channels} channels, fewer than the model's")
        shape = dict(
            extra_condition_channels=extra,
            patch_size=config.patch_size, in_channels=in_channels, out_channels=config.out_channels,
            num_layers=count("transformer_blocks."), attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads, joint_attention_dim=state["txt_in.weight"].shape[1],
            axes_dims_rope=tuple(config.axes_dims_rope),
        )  # fmt: skip
    with init_empty_weights():
        model = cls(**shape)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _xlabs_diffusers_names(state: dict[str, Any]) -> dict[str, Any]:
    """An XLabs Flux.1 ControlNet in its own (Black Forest Labs') names in diffusers' FluxControlNetModel names:
    the double blocks' fused `qkv` split in three and their layers renamed, the embedders renamed, the control
    picture's encoder (a Sequential of eight convolutions, SiLU between) as diffusers' conv_in, blocks, conv_out.
    A file in diffusers' names comes back as it is."""
    if "double_blocks.0.img_attn.qkv.weight" not in state:
        return state
    out: dict[str, Any] = {}
    convolutions = sorted({int(key.split(".")[1]) for key in state if key.startswith("input_hint_block.")})
    hint_names = {index: f"blocks.{n - 1}" for n, index in enumerate(convolutions)}
    hint_names[convolutions[0]], hint_names[convolutions[-1]] = "conv_in", "conv_out"
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "double_blocks":
            index, _, inner = rest.partition(".")
            module, _, param = inner.rpartition(".")  # "img_attn.qkv", "weight"
            param = "weight" if param == "scale" else param  # the RMS norms' scales
            if module.endswith("_attn.qkv"):
                names = ("to_q", "to_k", "to_v") if module == "img_attn.qkv" else ("add_q_proj", "add_k_proj",
                                                                                   "add_v_proj")  # fmt: skip
                for name, part in zip(names, value.chunk(3, dim=0), strict=True):
                    out[f"transformer_blocks.{index}.attn.{name}.{param}"] = part
                continue
            out[f"transformer_blocks.{index}.{_XLABS_BLOCK[module]}.{param}"] = value
        elif head == "input_hint_block":
            index, _, param = rest.partition(".")
            out[f"input_hint_block.{hint_names[int(index)]}.{param}"] = value
        else:
            module, _, param = key.rpartition(".")
            out[f"{_XLABS_NAMES.get(module, module)}.{param}"] = value
    return out


def _sd3_diffusers_names(state: dict[str, Any]) -> dict[str, Any]:
    """A Stability-layout SD3.5 ControlNet in diffusers' names: the fused `attn.qkv` split in three, the output,
    feed-forward and modulation layers renamed. A file in diffusers' names comes back as it is."""
    if "transformer_blocks.0.attn.qkv.weight" not in state:
        return state
    out: dict[str, Any] = {}
    for key, value in state.items():
        if ".attn.qkv." in key:
            for letter, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[key.replace(".attn.qkv.", f".attn.to_{letter}.")] = part
            continue
        for old, new in _SAI_NAMES.items():
            key = key.replace(old, new)
        out[key] = value
    return out


def _sd3_shape(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """SD3ControlNetModel's arguments from its tensors: InstantX's (SD3 medium) embed the latents and read the
    prompt themselves (joint blocks, zero pooled projections, as they were trained); Stability's SD3.5 Large
    ones take the transformer's position embedding and read no prompt (single blocks)."""
    width = state["controlnet_blocks.0.weight"].shape[0]
    if width != config.num_attention_heads * config.attention_head_dim:
        made_for = {1536: "SD3 / SD3.5 Medium", 2432: "SD3.5 Large"}.get(width, f"a model {width} wide")
        raise ModelError(f"it is made for {made_for}")
    hint = state["pos_embed_input.proj.weight"]  # (width, latent channels + extra, patch, patch)
    extra = hint.shape[1] - config.in_channels  # an inpainting ControlNet's mask channel
    if extra < 0:
        raise ModelError(f"its input reads {hint.shape[1]} latent channels, fewer than the model's")
    context = state.get("context_embedder.weight")
    positions = state.get("pos_embed.pos_embed")  # (1, side * side, width), kept where a maximum size is set
    own_positions = "pos_embed.proj.weight" in state
    blocks = len({key.split(".")[1] for key in state if key.startswith("transformer_blocks.")})
    return dict(
        sample_size=config.sample_size, patch_size=hint.shape[2], in_channels=config.in_channels, num_layers=blocks,
        extra_conditioning_channels=extra,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=context.shape[1] if context is not None else None,
        caption_projection_dim=context.shape[0] if context is not None else config.caption_projection_dim,
        pooled_projection_dim=state["time_text_embed.text_embedder.linear_1.weight"].shape[1],
        out_channels=config.out_channels,
        pos_embed_max_size=round(positions.shape[1] ** 0.5) if positions is not None else None,
        dual_attention_layers=tuple(i for i in range(blocks) if f"transformer_blocks.{i}.attn2.to_q.weight" in state),
        qk_norm="rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in state else None,
        pos_embed_type="sincos" if own_positions else None, use_pos_embed=own_positions,
        force_zeros_for_pooled_projection=own_positions,
    )  # fmt: skip


def _sana_shape(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """A Sana ControlNet's constructor arguments: its block count from its tensors, the rest from the loaded
    transformer's config (a ControlNet copies its base's first blocks); one of another width is refused."""
    width = config.num_attention_heads * config.attention_head_dim
    made = state["input_block.weight"].shape[0]
    if made != width:
        raise ModelError(f"its blocks are {made} wide and the model's {width}: it was made for another Sana size")
    blocks = len({key.split(".")[1] for key in state if key.startswith("transformer_blocks.")})
    kept = ("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_cross_attention_heads",
            "cross_attention_head_dim", "cross_attention_dim", "caption_channels", "mlp_ratio", "sample_size",
            "patch_size", "norm_elementwise_affine", "norm_eps", "interpolation_scale")  # fmt: skip
    return {key: config[key] for key in kept} | {"num_layers": blocks}


def _z_image_shape(state: dict[str, Any], config: Any) -> dict[str, Any]:
    """ZImageControlNetModel's arguments for alibaba-pai's files, by version, told apart as diffusers' single-file
    loader does: 1.0 refines the control picture with plain transformer blocks (no `after_proj`); 2.1 with
    control blocks whose `before_proj` was trained (not zero); 2.0's refiner blocks were never used in training
    (zero or missing) and are left out, its control blocks refining instead ("control_layers")."""
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("control_layers.")}
    refiner = {int(key.split(".")[1]) for key in state if key.startswith("control_noise_refiner.")}
    before = state.get("control_noise_refiner.0.before_proj.weight")
    if refiner and "control_noise_refiner.0.after_proj.weight" not in state:
        variant = None  # 1.0
    elif before is not None and bool(before.any()):
        variant = "control_noise_refiner"  # 2.1
    else:
        variant = "control_layers"  # 2.0
    embedders = sorted({key.split(".")[1] for key in state if key.startswith("control_all_x_embedder.")})
    patches = [tuple(int(n) for n in name.split("-")) for name in embedders]  # "2-1": patch 2, frame patch 1
    patch, frames = patches[0]
    in_dim = state[f"control_all_x_embedder.{embedders[0]}.weight"].shape[1] // (patch * patch * frames)
    layers = config.n_layers
    if not blocks or len(blocks) > layers:
        raise ModelError(f"{len(blocks)} control blocks for a transformer of {layers} layers")
    places = list(range(0, layers, layers // len(blocks)))[: len(blocks)]
    # Which base refiner blocks the refining blocks' outputs feed: one each, in order (the configs' [0, 1]).
    refining = len(refiner) if variant == "control_noise_refiner" else len(blocks)
    feeds_refiner = list(range(min(config.n_refiner_layers, refining))) if variant else []
    return dict(
        control_layers_places=places, control_refiner_layers_places=feeds_refiner, control_in_dim=in_dim,
        add_control_noise_refiner=variant, all_patch_size=tuple(p for p, _ in patches),
        all_f_patch_size=tuple(f for _, f in patches), dim=config.dim,
        n_refiner_layers=len(refiner) if refiner else config.n_refiner_layers, n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads, norm_eps=config.norm_eps, qk_norm=config.qk_norm,
        drop_refiner=variant == "control_layers",
    )  # fmt: skip


def union_modes(
    family: str, units: Sequence[ControlUnit], models: Sequence[Any], names: Sequence[str]
) -> list[int | None] | None:
    """Each unit's `control_mode` for Flux (its preprocessor's kind for a union model, None for a single-kind
    one); None for a family whose pipeline takes no modes."""
    if family != FLUX:
        return None
    modes: list[int | None] = []
    for unit, model, name in zip(units, models, names, strict=True):
        if not model.union:
            modes.append(None)
            continue
        mode = UNION_MODES.get(unit.preprocessor)
        if mode is None:
            kinds = ", ".join(sorted(UNION_MODES))
            raise InvalidRequest(
                f"{name!r} is a union ControlNet: it needs to know what its control image shows, which Marble "
                f"takes from the unit's preprocessor ({kinds}), not {unit.preprocessor!r}."
            )
        modes.append(mode)
    return modes


def pipeline(family: str, mode: str, base: Any, models: Sequence[Any], strength: float = 1.0) -> Any:
    """The family's ControlNet pipeline for `mode` (an edit at `strength`) on the loaded pipeline's modules, with one
    model or several."""
    import diffusers

    classes = CLASSES[family]
    if family == SD3 and len({model.config.use_pos_embed for model in models}) > 1:
        # diffusers' pipeline reads the first model's config for all: the prompt goes to all or none.
        raise InvalidRequest(
            "InstantX's SD3 ControlNets (which read the prompt) and Stability's SD3.5 ones (which do not) cannot "
            "run in one job: keep units of one kind."
        )
    if family == FLUX and len({model.input_hint_block is None for model in models}) > 1:
        # diffusers' pipeline asks the first model whether the control pictures go through the VAE (InstantX's,
        # Shakker-Labs') or as pixels (XLabs' encode them themselves) and how its blocks feed the transformer.
        raise InvalidRequest(
            "XLabs' Flux.1 ControlNets (which encode the control picture themselves) and the others (InstantX's, "
            "Shakker-Labs') cannot run in one job: keep units of one kind."
        )
    if family in (QWEN_IMAGE, SD3):
        _refuse_inpainting_kind(family, mode, models, strength)
    borrows_positions = family == SD3 and any(not model.config.use_pos_embed for model in models)
    if borrows_positions and base.transformer.pos_embed.proj.weight.is_meta:
        # The pipeline copies the transformer's position embedding into Stability's SD3.5 ControlNets when it is
        # built; sequential offload keeps it nowhere but in its hooks' store.
        raise InvalidRequest(
            "Stability's SD3.5 ControlNets take the transformer's position embedding, which sequential offload "
            "keeps off the GPU: set Memory to another mode, or remove the control unit."
        )
    controlnet = models[0] if len(models) == 1 else getattr(diffusers, classes.several)(list(models))
    own = family in control_dit_edits.FAMILIES and mode != "txt2img"
    if own and not _reads_the_mask(family, mode, base, models, strength):  # Marble's own over text to image
        cls = control_dit_edits.edit_class(family, classes.pipelines["txt2img"])
    else:
        cls = getattr(diffusers, classes.pipelines[mode])
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls(**{key: module for key, module in base.components.items() if key in accepted}, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def is_inpainting(family: str, model: Any) -> bool:
    """Whether `model` is an inpainting ControlNet (InstantX's for Qwen-Image, alimama's for SD3): it reads the
    masked source and the mask."""
    if family == QWEN_IMAGE:
        return model.config.extra_condition_channels > 0
    return family == SD3 and model.config.extra_conditioning_channels > 0


def _reads_the_mask(family: str, mode: str, base: Any, models: Sequence[Any], strength: float) -> bool:
    """Whether a job's ControlNets run in the family's ControlNet inpainting pipeline, which hands them the
    masked source and paints from pure noise (strength 1): Qwen-Image's and SD3's inpainting ControlNets
    (_refuse_inpainting_kind: alone, at strength 1), Z-Image's 2.x Unions at strength 1. The others inpaint through
    Marble's own over the text-to-image pipeline (control_dit_edits.py), the unit's picture as their control, as A1111
    inpaints with a ControlNet; a 2.x Union below strength 1 so too, its masked-picture channels empty as in text to
    image."""
    if mode != "inpaint":
        return False
    if family in (QWEN_IMAGE, SD3):
        return is_inpainting(family, models[0])
    return family == Z_IMAGE and strength >= 1 and models[0].config.control_in_dim != base.transformer.in_channels


_INPAINTING_CONTROLNETS = {QWEN_IMAGE: "InstantX's Qwen-Image inpainting ControlNet",
                           SD3: "an SD3 inpainting ControlNet (alimama's)"}  # fmt: skip


def _refuse_inpainting_kind(family: str, mode: str, models: Sequence[Any], strength: float) -> None:
    """An inpainting ControlNet runs alone, in an inpainting job at strength 1 (the family's ControlNet inpainting
    pipeline feeds it the masked source and paints from pure noise)."""
    inpainting = [is_inpainting(family, model) for model in models]
    which = _INPAINTING_CONTROLNETS[family]
    if not any(inpainting):
        return
    if mode != "inpaint":
        raise InvalidRequest(
            f"{which[0].upper()}{which[1:]} repaints a masked source: it runs in an inpainting job (a source image "
            "and a mask), not this one. Remove its unit, or paint a mask."
        )
    if len(models) > 1:
        raise InvalidRequest(
            f"{family_label(family)} inpaints with {which} alone (it reads the masked source and the mask): remove "
            "the other control units, or inpaint with those alone."
        )
    if strength < 1:
        raise InvalidRequest(
            f"{which[0].upper()}{which[1:]} inpaints from pure noise (the masked picture goes to the ControlNet), so "
            f"its denoising strength is 1, not {strength:g}: set it to 1, or use another ControlNet."
        )


def arguments(
    family: str, units: Sequence[ControlUnit], images: Sequence[Any], modes: Sequence[int | None] | None
) -> dict[str, Any]:
    """The pipeline call's control arguments: one value for one unit, lists for several (diffusers' forms).
    Z-Image's and Sana's pipelines take no step range (`StepScales` applies it).

    `images`: (1, 3, H, W) in [0, 1], as the preprocessors make them. The pipelines take a tensor as it is and
    hand it to the VAE (or a hint block), which read [-1, 1]: they normalise only pictures they convert."""
    images = [image * 2.0 - 1.0 for image in images]
    one = len(units) == 1
    values: dict[str, Any] = {
        "control_image": images[0] if one else list(images),
        "controlnet_conditioning_scale": float(units[0].weight) if one else [float(u.weight) for u in units],
    }
    if family not in (Z_IMAGE, SANA):
        values |= {
            "control_guidance_start": float(units[0].start) if one else [float(u.start) for u in units],
            "control_guidance_end": float(units[0].end) if one else [float(u.end) for u in units],
        }
    if modes is not None:
        values["control_mode"] = modes[0] if one else list(modes)
    return values


def step_scales(unit: ControlUnit, steps: int) -> list[float]:
    """The unit's weight at each of `steps` steps: 0 outside its range (diffusers' rule for the pipelines that
    take one: step i counts unless i/steps < start or (i+1)/steps > end)."""
    return [0.0 if i / steps < unit.start or (i + 1) / steps > unit.end else float(unit.weight) for i in range(steps)]


class _Loan:
    """The transformer's modules lent to a Z-Image ControlNet; `remove` takes them back."""

    def __init__(self, model: Any, transformer: Any) -> None:
        self._model = model
        type(model).from_transformer(model, transformer)

    def remove(self) -> None:
        for name in _Z_IMAGE_BORROWED:
            setattr(self._model, name, None)


def z_image_hooks(model: Any, transformer: Any) -> list[Any]:
    """Readies a Z-Image ControlNet for one job: the transformer's modules lent, and a hook that, where the
    transformer is offloaded between its calls (model offload), brings it to the GPU first, since the ControlNet runs
    its embedders and refiners. Returns what to `remove()` after the job. (Its step range: StepScales.)"""
    loan = _Loan(model, transformer)

    def onload(module: Any, args: tuple[Any, ...]) -> None:
        pre_forward = getattr(getattr(transformer, "_hf_hook", None), "pre_forward", None)
        if pre_forward is not None:  # accelerate's model offload: the whole transformer to the GPU, the rest away
            pre_forward(transformer)

    return [loan, model.register_forward_pre_hook(onload)]


class StepScales:
    """A hook that gives a ControlNet whose pipeline takes no step range (Z-Image's, Sana's; they call it once a step)
    the unit's scale at each step of the pass it is armed for: its weight inside the range, 0 outside. `arm` again
    before each pass (the hires fix's second pass counts its own steps); `remove` takes the hook off."""

    def __init__(self, model: Any, unit: ControlUnit, steps: int) -> None:
        self._unit = unit
        self.arm(steps)
        self._handle = model.register_forward_pre_hook(self._before, with_kwargs=True)

    def arm(self, steps: int) -> None:
        """The scales of a pass of `steps` steps, counted from its first."""
        self._scales = step_scales(self._unit, steps)
        self._calls = 0

    def remove(self) -> None:
        self._handle.remove()

    def _before(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
        kwargs["conditioning_scale"] = self._scales[min(self._calls, len(self._scales) - 1)]
        self._calls += 1
        return args, kwargs
