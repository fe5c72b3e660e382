"""ControlNets for the diffusion transformers, in diffusers' layout: Flux.1's (InstantX's, Shakker-Labs' Union;
text-to-image, image-to-image and inpainting) and Qwen-Image's (InstantX's Union; text-to-image), for a
loaded pipeline of their family.

A model is shaped from its own tensors (how many blocks, whether it embeds the guidance, which kinds of control
image a union model tells apart) and from the loaded transformer's config (the width, the heads, the rotary
dimensions a ControlNet shares with its base). It runs in diffusers' ControlNet pipeline of the family, built on
the loaded pipeline's own modules, as the image-to-image siblings are (families.edit_pipeline): no tensor is
copied, cast or moved.

A Flux union model reads which kind of control image it is given (InstantX's table: canny 0, tile 1, depth 2,
blur 3, pose 4, gray 5, low quality 6): Marble takes it from the unit's preprocessor. Qwen-Image's union model
tells the kinds apart by itself.

torch and diffusers are imported inside the functions: only the diffusers backend loads this module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library.control import FLUX, QWEN_IMAGE
from desktop.engine.request import ControlUnit

# InstantX's Flux union modes, keyed by the Marble preprocessor that makes each kind of control image.
UNION_MODES = {"canny": 0, "tile": 1, "depth_anything": 2, "depth_midas": 2, "openpose": 4}


@dataclass(frozen=True)
class _Classes:
    model: str  # diffusers' ControlNet model class
    several: str  # the class that runs several of them together
    pipelines: dict[str, str]  # the pipeline with ControlNets for each mode ("txt2img", "img2img", "inpaint")


CLASSES = {
    FLUX: _Classes("FluxControlNetModel", "FluxMultiControlNetModel", {
        "txt2img": "FluxControlNetPipeline", "img2img": "FluxControlNetImg2ImgPipeline",
        "inpaint": "FluxControlNetInpaintPipeline",
    }),
    # Qwen-Image's ControlNet inpainting pipeline wants InstantX's inpainting ControlNet (a mask input), which
    # is another model: text-to-image only.
    QWEN_IMAGE: _Classes("QwenImageControlNetModel", "QwenImageMultiControlNetModel",
                         {"txt2img": "QwenImageControlNetPipeline"}),
}  # fmt: skip


def runs(family: str, mode: str) -> bool:
    """Whether Marble runs `family`'s ControlNets for a job of `mode`."""
    return family in CLASSES and mode in CLASSES[family].pipelines


def build(family: str, state: dict[str, Any], transformer_config: Any) -> Any:
    """The `family`'s ControlNet holding `state`, shaped by its tensors and the base transformer's config."""
    import diffusers
    from accelerate import init_empty_weights

    def count(prefix: str) -> int:
        return len({key.split(".")[1] for key in state if key.startswith(prefix)})

    cls = getattr(diffusers, CLASSES[family].model)
    config = transformer_config
    if family == FLUX:
        mode = state.get("controlnet_mode_embedder.weight")
        hint = state.get("input_hint_block.0.weight")  # XLabs-style conditioning in diffusers' names
        context = state["context_embedder.weight"].shape[1]
        shape = dict(
            patch_size=1, in_channels=state["x_embedder.weight"].shape[1], num_layers=count("transformer_blocks."),
            num_single_layers=count("single_transformer_blocks."), attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads, joint_attention_dim=context,
            pooled_projection_dim=config.pooled_projection_dim,
            guidance_embeds=any(key.startswith("time_text_embed.guidance_embedder.") for key in state),
            axes_dims_rope=list(config.axes_dims_rope), num_mode=mode.shape[0] if mode is not None else None,
            conditioning_embedding_channels=hint.shape[1] if hint is not None else None,
        )  # fmt: skip
    else:
        in_channels = state["img_in.weight"].shape[1]
        if state["controlnet_x_embedder.weight"].shape[1] != in_channels:
            # InstantX's inpainting ControlNet reads the masked picture too: its own pipeline, not run here.
            raise ModelError("an inpainting ControlNet (it reads a mask beside the control picture)")
        shape = dict(
            patch_size=config.patch_size, in_channels=in_channels, out_channels=config.out_channels,
            num_layers=count("transformer_blocks."), attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads, joint_attention_dim=state["txt_in.weight"].shape[1],
            axes_dims_rope=tuple(config.axes_dims_rope),
        )  # fmt: skip
    with init_empty_weights():
        model = cls(**shape)
    model.load_state_dict(state, strict=True, assign=True)
    return model


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


def pipeline(family: str, mode: str, base: Any, models: Sequence[Any]) -> Any:
    """The family's ControlNet pipeline for `mode` on the loaded pipeline's modules, with one model or several."""
    import diffusers

    classes = CLASSES[family]
    controlnet = models[0] if len(models) == 1 else getattr(diffusers, classes.several)(list(models))
    cls = getattr(diffusers, classes.pipelines[mode])
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls(**{key: module for key, module in base.components.items() if key in accepted}, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def arguments(
    units: Sequence[ControlUnit], images: Sequence[Any], modes: Sequence[int | None] | None
) -> dict[str, Any]:
    """The pipeline call's control arguments: one value for one unit, lists for several (diffusers' forms).

    `images`: (1, 3, H, W) in [0, 1], as the preprocessors make them. The pipelines take a tensor as it is and
    hand it to the VAE (or a hint block), which read [-1, 1]: they normalise only pictures they convert."""
    images = [image * 2.0 - 1.0 for image in images]
    one = len(units) == 1
    values: dict[str, Any] = {
        "control_image": images[0] if one else list(images),
        "controlnet_conditioning_scale": float(units[0].weight) if one else [float(u.weight) for u in units],
        "control_guidance_start": float(units[0].start) if one else [float(u.start) for u in units],
        "control_guidance_end": float(units[0].end) if one else [float(u.end) for u in units],
    }
    if modes is not None:
        values["control_mode"] = modes[0] if one else list(modes)
    return values
