"""LoRAs in trainers' forms that diffusers' newer family loaders (Krea 2's, ERNIE-Image's, FLUX.3's ...) do not read,
renamed to the one they do: `diffusion_model.<module>.lora_A/B.weight`.

The forms: kohya's flattened names (`lora_unet_<module with its dots made underscores>`), and lora_down / lora_up
with an alpha per module (musubi-tuner's and kohya's trainers), whose scale alpha / rank is folded into the up matrix
(diffusers would apply 1). Only dict and string work: the tensors are multiplied as they come.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

KOHYA = "lora_unet_"
_PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")
_DOWN_UP = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight"}


def needs_renaming(names: Iterable[str]) -> bool:
    """Whether a LoRA holds kohya's flattened names or lora_down / lora_up with alphas."""
    return any(name.startswith(KOHYA) or name.endswith((".lora_down.weight", ".alpha")) for name in names)


def renamed_for(state: dict[str, Any], modules: Iterable[str]) -> dict[str, Any]:
    """`state` in diffusers' form, kohya's names matched to the transformer's own `modules` (their dots made
    underscores: the families whose module names are their release's)."""
    dotted = {name.replace(".", "_"): name for name in modules}
    return renamed(state, lambda flat: dotted.get(flat, flat))


def needs_transformer_prefix(names: Iterable[str]) -> bool:
    """Whether a LoRA is in a form the loaders that read diffusers' and PEFT's names under `transformer.` only
    (AuraFlow's, Sana's) do not read: kohya's names, lora_down / lora_up with alphas, or ComfyUI's `diffusion_model.`
    prefix (ai-toolkit's and SimpleTuner's ComfyUI exports)."""
    names = list(names)
    return needs_renaming(names) or any(name.startswith("diffusion_model.") for name in names)


def under_transformer(state: dict[str, Any], modules: Iterable[str]) -> dict[str, Any]:
    """`state` in diffusers' form under `transformer.`, kohya's names matched to the transformer's own `modules`."""
    prefix = "diffusion_model."
    return {("transformer." + key.removeprefix(prefix)) if key.startswith(prefix) else key: value
            for key, value in renamed_for(state, modules).items()}  # fmt: skip


def renamed(state: dict[str, Any], dotted: Callable[[str], str]) -> dict[str, Any]:
    """`state` in diffusers' form; `dotted(flat)`: the module a kohya name (its `lora_unet_` cut) stands for."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith(".alpha"):
            continue
        module, _, part = key.rpartition(".lora_")
        part = "lora_" + part
        if module.startswith(KOHYA):
            module = "diffusion_model." + dotted(module.removeprefix(KOHYA))
        elif not module.startswith(_PREFIXES):
            module = "diffusion_model." + module
        alpha = key.removesuffix(part) + "alpha"
        if part == "lora_up.weight" and alpha in state:
            tensor = tensor * (float(state[alpha]) / tensor.shape[1])
        out[f"{module}.{_DOWN_UP.get(part, part)}"] = tensor
    return out
