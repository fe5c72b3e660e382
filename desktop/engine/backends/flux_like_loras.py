"""LoRAs for the families diffusers has no LoRA loader for (LongCat-Image, Ovis-Image, PixArt): loaded onto the
transformer through PEFT (its `load_lora_adapter`), by a mixin their pipeline classes take (families_longcat.py,
families_ovis.py, families_pixart.py, which gives its transformer PEFT's adapter methods and its own `_lora_tensors`).

Their LoRAs carry Flux.1's layer names (their blocks are Flux.1's, in diffusers' names), so the library labels them
Flux.1 (library/lora.py lets them onto these models in diffusers' forms only). A Flux.1 LoRA reaches past their blocks
(Flux.1 has 19 + 38; LongCat-Image 10 + 20, Ovis-Image 6 + 27): refused here, naming the block.
diffusers and safetensors are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from desktop.engine.backends import lora_forms

# A LoRA's block names, after its prefix: `transformer_blocks.N.` (double-stream) or `single_transformer_blocks.N.`.
_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.")
_PREFIXES = ("diffusion_model.", "transformer.", "base_model.model.")


def lora_for(transformer: Any, state: dict[str, Any], label: str) -> dict[str, Any]:
    """A LoRA's tensors (diffusers' or PEFT's names, lora_A / lora_B or lora_down / lora_up with alphas, bare or under
    `transformer.` / `diffusion_model.`) as the transformer's own module names with lora_A / lora_B, alphas folded.
    One reaching past the model's blocks is Flux.1's: ValueError, which the LoRA loader reports with the LoRA's
    name; `label` names the model."""
    plain = {}
    for key, tensor in lora_forms.renamed(state, lambda flat: flat).items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        plain[key] = tensor
    depth = {"transformer_blocks": len(transformer.transformer_blocks),
             "single_transformer_blocks": len(transformer.single_transformer_blocks)}  # fmt: skip
    for key in plain:
        match = _BLOCK.match(key)
        if match and int(match.group(2)) >= depth[match.group(1)]:
            raise ValueError(
                f"its layers reach {match.group(1)}.{match.group(2)}, past this {label} model's "
                f"{depth[match.group(1)]}: it is a LoRA for Flux.1, whose layers share the names"
            )
    return plain


@functools.cache
def loader() -> type:
    """The mixin: LoraBaseMixin's adapter methods (set, list, delete, enable, unload) over the transformer, and
    `load_lora_weights` through `_lora_tensors` (`lora_for` unless the class says otherwise). A class taking it names
    its model in `_lora_label`."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    class FluxLikeLoras(LoraBaseMixin):
        _lora_loadable_modules = ["transformer"]
        transformer_name = "transformer"
        _lora_label = "this"

        def load_lora_weights(self, source: Any, adapter_name: str | None = None, **_: Any) -> None:
            """A LoRA file (or its tensors) onto the transformer, as `adapter_name`."""
            from safetensors.torch import load_file

            state = load_file(source) if isinstance(source, str) else dict(source)
            self.transformer.load_lora_adapter(self._lora_tensors(state), prefix=None, adapter_name=adapter_name,
                                               _pipeline=self)  # fmt: skip

        def _lora_tensors(self, state: dict[str, Any]) -> dict[str, Any]:
            """A LoRA's tensors as the transformer's own module names with lora_A / lora_B."""
            return lora_for(self.transformer, state, self._lora_label)

    return FluxLikeLoras
