"""LyCORIS files (LoHa, LoKr, (IA)3, full diff) merged into a loaded pipeline's weights, and taken out again.

diffusers loads kohya LoRAs as PEFT adapters but has no converter for SD 1.x / SDXL LyCORIS files, so
these are applied as A1111's built-in Lora extension applies them: each file gives a weight change per
layer, scaled by the LoRA's weight, added to the layer's weight. The weights each job starts from are the
model's own, kept (on their device) the first time a layer is changed and copied back before the next
job's files are merged, so a job without them is exactly the model's image again.

The weight change per layer, at weight 1 (A1111's network_*.py; scale = alpha / rank when the file has
an alpha and the layer a rank, else 1):
- LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) * scale
- LoKr: kron(w1, w2) * scale, w1 = lokr_w1 or lokr_w1_a @ lokr_w1_b, w2 likewise
- (IA)3: W * w (w along the input features when `on_input`, else along the outputs)
- full: diff (and diff_b for the bias)

Imports no torch: tensors (from safetensors, and the module's own) are handled by their methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError

ALGORITHM_LABELS = {"loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)3", "full": "full-diff"}
_COMPONENTS = (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"),
               ("lora_te_", "text_encoder"))  # fmt: skip
# Layer names kohya writes for SDXL's UNet (input_blocks_4_1_...) in diffusers' names: passed in by the
# diffusers backend ({old key: value} -> {new key: value}, keys only renamed).
RenameSgm = Callable[[dict[str, Any], Any], dict[str, Any]]


def layer_parts(tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{layer key (lora_unet_...): {suffix: tensor}} for every LyCORIS layer of a file."""
    layers: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        stem, dot, suffix = key.partition(".")
        if dot:
            layers.setdefault(stem, {})[suffix] = value
    return layers


def layer_delta(parts: Mapping[str, Any], weight: Any, layer: str) -> tuple[Any, Any | None]:
    """(change of the layer's weight, change of its bias or None) at LoRA weight 1, in float32."""
    if "dora_scale" in parts or "hada_t1" in parts or "lokr_t2" in parts:
        raise ModelError(
            f"its layer {layer} uses DoRA or a Tucker-decomposed (CP) convolution, which Marble does not apply yet"
        )
    weight = weight.float()
    rank = None
    bias = None
    if "hada_w1_a" in parts:
        w1 = parts["hada_w1_a"].float() @ parts["hada_w1_b"].float()
        w2 = parts["hada_w2_a"].float() @ parts["hada_w2_b"].float()
        delta = w1 * w2
        rank = parts["hada_w1_b"].shape[0]
    elif any(name.startswith("lokr_") for name in parts):
        w1 = _factor(parts, "lokr_w1")
        w2 = _factor(parts, "lokr_w2")
        delta = _kron(w1, w2)
        for factor in ("lokr_w1_b", "lokr_w2_b"):
            if factor in parts:
                rank = parts[factor].shape[0]
                break
    elif "on_input" in parts:
        scale = parts["weight"].float().to(weight.device)
        on_input = bool(parts["on_input"].reshape(-1)[0].item()) if hasattr(parts["on_input"], "reshape") else True
        flat = weight.reshape(weight.shape[0], -1)
        if on_input:
            delta = flat * scale.reshape(1, -1).repeat_interleave(flat.shape[1] // scale.numel(), dim=1)
        else:
            delta = flat * scale.reshape(-1, 1)
    elif "diff" in parts:
        delta = parts["diff"].float()
        if "diff_b" in parts:
            bias = parts["diff_b"].float()
    else:
        raise ModelError(f"its layer {layer} has no LoHa, LoKr, (IA)3 or full-diff tensors")
    if delta.numel() != weight.numel():
        raise ModelError(
            f"its layer {layer} changes {delta.numel()} weights and the model's layer has {weight.numel()}"
        )
    delta = delta.reshape(weight.shape).to(weight.device)
    alpha = parts.get("alpha")
    if alpha is not None and rank:
        delta = delta * (float(alpha.float().reshape(-1)[0].item()) / rank)
    return delta, bias


def _factor(parts: Mapping[str, Any], name: str) -> Any:
    if name in parts:
        return parts[name].float()
    return parts[f"{name}_a"].float() @ parts[f"{name}_b"].float()


def _kron(a: Any, b: Any) -> Any:
    """The Kronecker product, by broadcasting (torch.kron without importing torch). A convolution's w1 is a
    matrix and its w2 has the kernel dimensions: w1 gets trailing 1s first, as A1111's make_kron does."""
    a = a.reshape(*a.shape, *([1] * (b.dim() - a.dim())))
    interleaved_a = [size for pair in zip(a.shape, [1] * a.dim(), strict=True) for size in pair]
    interleaved_b = [size for pair in zip([1] * b.dim(), b.shape, strict=True) for size in pair]
    product = a.reshape(interleaved_a) * b.reshape(interleaved_b)
    return product.reshape([x * y for x, y in zip(a.shape, b.shape, strict=True)])


@dataclass(frozen=True)
class LycorisFile:
    """One LyCORIS file's layers, read once: its name (for messages) and {layer key: {suffix: tensor}}."""

    name: str
    layers: Mapping[str, Mapping[str, Any]]


class LycorisMerger:
    """Adds the weight changes of the current job's LyCORIS files to the pipeline's layers, and removes them.

    Keeps each changed parameter's original values; `apply` first puts every one back, so weights never
    drift over many jobs (no subtraction of what was added). One thread, like the pipeline.
    """

    def __init__(self, rename_sgm: RenameSgm | None = None) -> None:
        self._rename_sgm = rename_sgm
        self._originals: dict[tuple[int, str], tuple[Any, Any]] = {}  # (id of module, param) -> (param, copy)
        self._applied: tuple[tuple[object, float], ...] = ()

    def forget(self) -> None:
        """The pipeline is gone: nothing of it to restore."""
        self._originals.clear()
        self._applied = ()

    def apply(self, pipe: Any, files: list[tuple[object, LycorisFile, float]]) -> tuple[str, ...]:
        """Merge `files` ((identity, file, weight), weight 0 skipped) after restoring the model's own weights;
        returns notes on layers that matched nothing."""
        wanted = tuple((identity, weight) for identity, _, weight in files if weight != 0)
        if wanted == self._applied:
            return ()
        self.restore()
        notes = []
        try:
            for _, lycoris, weight in files:
                if weight != 0 and (skipped := self._merge(pipe, lycoris, weight)):
                    notes.append(
                        f"{skipped} of the {len(lycoris.layers)} layers of the LoRA {lycoris.name!r} match no layer of "
                        "this model and were skipped."
                    )
        except BaseException:
            self.restore()
            raise
        self._applied = wanted
        return tuple(notes)

    def originals(self) -> dict[int, Any]:
        """id(parameter) -> its value before the merged files' changes, for code that builds on the model's own
        weights (a Control-LoRA's ControlNet)."""
        return {id(param): original for param, original in self._originals.values()}

    def restore(self) -> None:
        for param, original in self._originals.values():
            param.data.copy_(original)
        self._originals.clear()
        self._applied = ()

    def _merge(self, pipe: Any, lycoris: LycorisFile, weight: float) -> int:
        """Add one file's changes; returns how many of its layers found no place."""
        placed = 0
        for layer, module in self._place(pipe, lycoris.layers):
            module = getattr(module, "base_layer", module)  # a layer PEFT wrapped for a plain LoRA
            target = getattr(module, "weight", None)
            if target is None:
                continue
            try:
                delta, bias = layer_delta(lycoris.layers[layer], target.data, layer)
            except (RuntimeError, KeyError) as error:  # tensors that do not multiply, a missing half of a pair
                raise ModelError(
                    f"The LoRA {lycoris.name!r} could not be applied to this model: its layer {layer} is damaged or "
                    f"does not fit ({str(error)[:160]})."
                ) from None
            except ModelError as error:
                raise ModelError(f"The LoRA {lycoris.name!r} could not be applied to this model: {error}.") from None
            self._add(module, "weight", delta * weight)
            if bias is not None and getattr(module, "bias", None) is not None:
                self._add(module, "bias", bias.reshape(module.bias.shape) * weight)
            placed += 1
        if not placed:
            raise ModelError(
                f"The LoRA {lycoris.name!r} changed nothing: none of its layers match this model's layers. It was "
                "probably made for another base model."
            )
        return len(lycoris.layers) - placed

    def _add(self, module: Any, name: str, delta: Any) -> None:
        param = getattr(module, name)
        key = (id(module), name)
        if key not in self._originals:
            self._originals[key] = (param, param.detach().clone())
        param.data.add_(delta.to(device=param.device, dtype=param.dtype))

    def _place(self, pipe: Any, layers: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """Each layer key with the module it names in the pipeline (None where there is none)."""
        found: list[tuple[str, Any]] = []
        tables: dict[str, dict[str, Any]] = {}
        renamed = self._sgm_names([key for key in layers if key.startswith("lora_unet_")], pipe)
        for key in layers:
            prefix, component = next(((p, c) for p, c in _COMPONENTS if key.startswith(p)), ("", ""))
            model = getattr(pipe, component, None) if component else None
            if model is None:
                found.append((key, None))
                continue
            if component not in tables:
                tables[component] = _module_table(model)
            name = renamed.get(key, key)[len(prefix):]
            found.append((key, tables[component].get(name)))
        return found

    def _sgm_names(self, keys: list[str], pipe: Any) -> dict[str, str]:
        if self._rename_sgm is None or not any("_input_blocks_" in k or "_output_blocks_" in k for k in keys):
            return {}
        marked = {f"{key}.x": key for key in keys}
        try:
            renamed = self._rename_sgm(dict(marked), pipe.unet.config)
        except (ValueError, KeyError, IndexError):
            return {}
        # diffusers renames the block numbering here and the block words later (_convert_unet_lora_key).
        words = (
            ("_input_blocks_", "_down_blocks_"), ("_middle_block_", "_mid_block_"), ("_output_blocks_", "_up_blocks_"),
        )  # fmt: skip
        table = {}
        for new, old in renamed.items():
            new = new.removesuffix(".x")
            for sgm, diffusers in words:
                new = new.replace(sgm, diffusers)
            table[old] = new
        return table


def _module_table(model: Any) -> dict[str, Any]:
    """{module path with `_` for `.`: module}; CLIP layers also under the `text_model_` path LoRA files use
    (transformers 5 flattened CLIPTextModel)."""
    table: dict[str, Any] = {}
    for name, module in model.named_modules():
        if not name or ".base_layer" in name or ".lora_" in name:
            continue
        flat = name.replace(".", "_")
        table.setdefault(flat, module)
        if not name.startswith("text_model."):
            table.setdefault(f"text_model_{flat}", module)
    return table


def read_lycoris(name: str, path: Path) -> LycorisFile:
    from safetensors.torch import load_file  # torch is loaded already: this runs on the generation thread

    try:
        tensors = load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors' own error type is not an OSError
        raise ModelError(f"The LoRA {name!r} cannot be read: {str(error)[:200]}") from error
    return LycorisFile(name, layer_parts(tensors))
