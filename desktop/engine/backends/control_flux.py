"""Flux.1 ControlNets (diffusers' layout: InstantX's, Shakker-Labs' Union) for a loaded Flux.1 pipeline.

The model is shaped from its own tensors (how many double and single blocks, whether it embeds the guidance
and which kinds of control image a union model tells apart) and from the loaded transformer's config (the
width, the heads, the text and rotary dimensions every Flux.1 ControlNet shares with its base). It runs in
diffusers' FluxControlNetPipeline, built on the loaded pipeline's own modules, as the image-to-image siblings
are (families.edit_pipeline): no tensor is copied, cast or moved.

A union model reads which kind of control image it is given (InstantX's table: canny 0, tile 1, depth 2,
blur 3, pose 4, gray 5, low quality 6): Marble takes it from the unit's preprocessor.

torch and diffusers are imported inside the functions: only the diffusers backend loads this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from desktop.engine.errors import InvalidRequest
from desktop.engine.request import ControlUnit

# InstantX's union modes, keyed by the Marble preprocessor that makes each kind of control image.
UNION_MODES = {"canny": 0, "tile": 1, "depth_anything": 2, "depth_midas": 2, "openpose": 4}


def build(state: dict[str, Any], transformer_config: Any) -> Any:
    """A FluxControlNetModel holding `state`, shaped by its tensors and the base transformer's config."""
    from accelerate import init_empty_weights
    from diffusers import FluxControlNetModel

    def count(prefix: str) -> int:
        return len({key.split(".")[1] for key in state if key.startswith(prefix)})

    mode = state.get("controlnet_mode_embedder.weight")
    hint = "input_hint_block.0.weight" in state  # XLabs-style conditioning converted to diffusers' names
    with init_empty_weights():
        model = FluxControlNetModel(
            patch_size=1,
            in_channels=state["x_embedder.weight"].shape[1],
            num_layers=count("transformer_blocks."),
            num_single_layers=count("single_transformer_blocks."),
            attention_head_dim=transformer_config.attention_head_dim,
            num_attention_heads=transformer_config.num_attention_heads,
            joint_attention_dim=state["context_embedder.weight"].shape[1],
            pooled_projection_dim=transformer_config.pooled_projection_dim,
            guidance_embeds=any(key.startswith("time_text_embed.guidance_embedder.") for key in state),
            axes_dims_rope=list(transformer_config.axes_dims_rope),
            num_mode=mode.shape[0] if mode is not None else None,
            conditioning_embedding_channels=state["input_hint_block.0.weight"].shape[1] if hint else None,
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model


def union_modes(units: Sequence[ControlUnit], models: Sequence[Any], names: Sequence[str]) -> list[int | None]:
    """Each unit's `control_mode`: its preprocessor's kind for a union model, None for a single-kind one."""
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


def pipeline(base: Any, models: Sequence[Any]) -> Any:
    """FluxControlNetPipeline on the loaded Flux pipeline's modules, with one model or several."""
    import inspect

    from diffusers import FluxControlNetPipeline, FluxMultiControlNetModel

    controlnet = models[0] if len(models) == 1 else FluxMultiControlNetModel(list(models))
    accepted = inspect.signature(FluxControlNetPipeline.__init__).parameters
    parts = {key: module for key, module in base.components.items() if key in accepted}
    pipe = FluxControlNetPipeline(**parts, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def arguments(units: Sequence[ControlUnit], images: Sequence[Any], modes: Sequence[int | None]) -> dict[str, Any]:
    """The pipeline call's control arguments: one value for one unit, lists for several (diffusers' forms).

    `images`: (1, 3, H, W) in [0, 1], as the preprocessors make them. The pipeline takes a tensor as it is and
    hands it to the VAE (or the hint block), which read [-1, 1]: it normalises only pictures it converts."""
    images = [image * 2.0 - 1.0 for image in images]
    if len(units) == 1:
        return {
            "control_image": images[0], "control_mode": modes[0],
            "controlnet_conditioning_scale": float(units[0].weight),
            "control_guidance_start": float(units[0].start), "control_guidance_end": float(units[0].end),
        }  # fmt: skip
    return {
        "control_image": list(images), "control_mode": list(modes),
        "controlnet_conditioning_scale": [float(unit.weight) for unit in units],
        "control_guidance_start": [float(unit.start) for unit in units],
        "control_guidance_end": [float(unit.end) for unit in units],
    }  # fmt: skip
