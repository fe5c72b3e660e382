"""Control-LoRA (Stability's "control-lora" files) as a diffusers ControlNetModel on the loaded UNet.

Loaded only by the diffusers backend during a job (desktop/engine/backends/control.py's loader); torch and
diffusers are imported inside functions (the import-linter contract lists this module).

A Control-LoRA is a ControlNet stored as a difference from its base model. The file uses the original
(LDM) ControlNet names without a prefix (`input_blocks.*`, `middle_block.*`, `time_embed.*`, `label_emb.*`,
`zero_convs.*`, `middle_block_out.*`, `input_hint_block.*`) plus the marker tensor `lora_controlnet`:

- `<module>.up` / `<module>.down`: a low-rank pair for the module's weight. The ControlNet's weight is the
  base UNet's weight plus `up @ down` (both flattened after their first axis, the product reshaped to the
  weight's shape: convolutions keep their kernel in `down`), with no alpha or scale;
- every other tensor (the hint encoder, zero convolutions, norms, biases, ...) is the ControlNet's own and
  replaces what the UNet has there.

That is how ComfyUI and A1111's extension apply them: build the ControlNet from the base UNet's encoder and
middle block, load the file on top. Names are mapped with diffusers' own single-file ControlNet converter
(pure renames), fed the names instead of the tensors, so the two ControlNet paths share one mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.control import ControlInfo

MARKER = "lora_controlnet"
# Parts a ControlNet has and a UNet has not: they must come from the file.
_OWN_PREFIXES = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
_FAMILY_WORDS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_MAPPING_PREFIX = "control_model."  # the converter strips it; adding it keeps its "prefixed" path


def build_control_lora(
    state: dict[str, Any], info: ControlInfo, unet: Any, name: str, originals: Mapping[int, Any] | None = None
) -> Any:
    """The ControlNetModel a Control-LoRA's tensors describe on `unet`; ModelError (naming the file) when the
    file is incomplete or made for another kind of model. `originals` (id(parameter) -> value) gives the
    model's own value of parameters a job has changed in place (merged LyCORIS files)."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    _check_family(state, info, unet, name)
    pairs, full = _split(state, name)
    mapping = _diffusers_names(set(full) | {f"{module}.weight" for module in pairs}, unet, name)
    lora_weights = {mapping[f"{module}.weight"]: module for module in pairs}
    from_file = {mapping[key]: tensor for key, tensor in full.items()}

    required = ("controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")
    missing = [key for key in required if key not in from_file]
    if missing:
        raise ModelError(f"The Control-LoRA {name!r} is incomplete: it has no {_ldm(mapping, missing[0])} tensor.")
    blocks = sorted({int(k.split(".")[2]) for k in from_file if k.startswith("controlnet_cond_embedding.blocks.")})
    outs = (
        from_file["controlnet_cond_embedding.conv_in.weight"].shape[0],
        *(from_file[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in blocks[1::2]),
    )
    with init_empty_weights():
        model = ControlNetModel.from_unet(
            unet,
            load_weights_from_unet=False,
            conditioning_channels=info.conditioning_channels or 3,
            conditioning_embedding_out_channels=outs,
        )
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    base = _unet_weights(unet, originals or {})
    device = next(iter(base.values())).device
    dtype = unet.dtype
    weights: dict[str, Any] = {}
    for key, shape in expected.items():
        if key in from_file:
            tensor = from_file[key]
        elif key.startswith(_OWN_PREFIXES):
            raise ModelError(f"The Control-LoRA {name!r} is incomplete: it has no {_ldm(mapping, key)} tensor.")
        elif key in base:
            # A copy: the ControlNet must not share (and below, change) the UNet's own parameters.
            tensor = base[key].detach().clone()
        else:
            raise ModelError(f"The Control-LoRA {name!r} needs {key} from the model, which the loaded model lacks.")
        if tuple(tensor.shape) != shape:
            raise ModelError(
                f"The Control-LoRA {name!r} does not fit the loaded model: {_ldm(mapping, key)} is "
                f"{list(tensor.shape)}, the model needs {list(shape)}. Pick a Control-LoRA made for this kind of model."
            )
        weights[key] = tensor.to(device=device, dtype=dtype)
    with torch.no_grad():
        for key, module in lora_weights.items():
            up, down = pairs[module]
            shape = expected[key]
            if up.ndim < 2 or down.ndim < 2 or up.shape[1] != down.shape[0]:
                raise ModelError(
                    f"The Control-LoRA {name!r} has a broken pair at {module}: up {list(up.shape)} and down "
                    f"{list(down.shape)} do not multiply."
                )
            rows, columns = up.shape[0], down[0].numel()
            if rows * columns != _numel(shape) or rows != shape[0]:
                raise ModelError(
                    f"The Control-LoRA {name!r} does not fit the loaded model: {module} changes a "
                    f"{[rows, columns]} weight, the model's is {list(shape)}. Pick a Control-LoRA made for this kind "
                    "of model."
                )
            delta = up.to(device, torch.float32).flatten(1) @ down.to(device, torch.float32).flatten(1)
            weights[key] = (weights[key].to(torch.float32) + delta.reshape(shape)).to(dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    return model


def _split(state: dict[str, Any], name: str) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
    """LoRA pairs by module name, and the full tensors."""
    pairs: dict[str, tuple[Any, Any]] = {}
    full: dict[str, Any] = {}
    for key, tensor in state.items():
        if key == MARKER:
            continue
        module, _, part = key.rpartition(".")
        if part in ("up", "down"):
            other = f"{module}.{'down' if part == 'up' else 'up'}"
            if other not in state:
                raise ModelError(f"The Control-LoRA {name!r} is incomplete: {key} has no matching {other}.")
            if part == "up":
                pairs[module] = (tensor, state[other])
        else:
            full[key] = tensor
    return pairs, full


def _diffusers_names(ldm_names: set[str], unet: Any, name: str) -> dict[str, str]:
    """LDM name -> diffusers name for every tensor, by running diffusers' converter on the names."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    named = {_MAPPING_PREFIX + key: key for key in ldm_names}
    converted = convert_controlnet_checkpoint(named, {"layers_per_block": unet.config.layers_per_block})
    mapping = {ldm: ours for ours, ldm in converted.items() if ldm is not None}
    # diffusers' converter leaves SDXL's added (size/crop) embedding to its single-file loader.
    for ldm, ours in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for param in ("weight", "bias"):
            if f"{ldm}.{param}" in ldm_names:
                mapping[f"{ldm}.{param}"] = f"{ours}.{param}"
    unknown = sorted(ldm_names - set(mapping))
    if unknown:
        raise ModelError(
            f"The Control-LoRA {name!r} has tensors no ControlNet has (for example {unknown[0]}); it is not a "
            "Control-LoRA Marble can read."
        )
    return mapping


def _check_family(state: dict[str, Any], info: ControlInfo, unet: Any, name: str) -> None:
    """Refuse a Control-LoRA made for another family with a sentence (before any shape says it less kindly)."""
    model_xl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    file_xl = any(key.startswith("label_emb.") for key in state)
    width = unet.config.cross_attention_dim
    model_family = "sdxl" if model_xl else {768: "sd1", 1024: "sd2"}.get(width)
    if model_xl != file_xl or (info.family and model_family and info.family != model_family):
        made = _FAMILY_WORDS.get(info.family or "", "SDXL" if file_xl else "SD 1.x/2.x")
        loaded = _FAMILY_WORDS.get(model_family or "", "SDXL" if model_xl else "SD 1.x/2.x")
        raise ModelError(
            f"The Control-LoRA {name!r} is made for {made} models; the loaded model is {loaded}. Pick a "
            f"Control-LoRA made for {loaded}."
        )


def _unet_weights(unet: Any, originals: Mapping[int, Any]) -> dict[str, Any]:
    """The UNet's own weights by their plain names: a PEFT LoRA wraps layers as `<layer>.base_layer` (its
    `lora_*` halves are left out), a merged LyCORIS file's changes are undone from `originals`."""
    parameters = dict(unet.named_parameters())
    weights = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key:
            continue
        param = parameters.get(key)
        own = originals.get(id(param)) if param is not None else None
        weights[key.replace(".base_layer.", ".")] = value if own is None else own
    return weights


def _ldm(mapping: dict[str, str], key: str) -> str:
    """The file's own name for a diffusers name (what the user could look for in the file)."""
    for ldm, ours in mapping.items():
        if ours == key:
            return ldm
    for ours, ldm in (
        ("controlnet_cond_embedding.conv_in.", "input_hint_block.0."),
        ("controlnet_mid_block.", "middle_block_out.0."),
    ):
        if key.startswith(ours):
            return ldm + key.removeprefix(ours)
    if key.startswith("controlnet_down_blocks."):
        index, param = key.split(".")[1:3]
        return f"zero_convs.{index}.0.{param}"
    return key


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
