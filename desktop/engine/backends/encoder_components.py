"""A transformer-only Flux / SD3 / Chroma file assembled with text encoders and a VAE from the library.

The encoders are single files as ComfyUI keeps them (library/encoder.py says what each holds): each is
built from the model's config folder (resources/configs/<family>/text_encoder*/config.json, or the
user's --config folder) without random initialisation, and its tensors are loaded strictly, so a file
that does not fit says so instead of running with missing weights. Which slot an encoder fills comes
from the slot's class (CLIP or T5) and width, so `clip_l,t5xxl` and `t5xxl,clip_l` are the same choice.
CLIP files come in transformers' names (ComfyUI's, SD3's) or OpenCLIP's (a bigG cut from an SDXL checkpoint).

Storage: an fp8 (e4m3fn / e5m2) encoder stays stored in fp8 and each linear layer is cast up to the
compute dtype while it runs (diffusers' layer-wise casting, as fp8_storage.py does for transformers);
every fp8 value is exactly representable in the compute dtype, so the result is the file's weights at
full precision. A GGUF encoder's linear layers keep their GGUF blocks and dequantise them as they run
(backends/gguf_layers.py: transformers runs no quantised T5 or Qwen kernels), and so do a scaled-fp8 T5's
or Qwen's with their fp8 weights and scales (backends/scaled_fp8_layers.py) and a bitsandbytes-saved (nf4 /
fp4 / int8) T5's or Qwen's with its codes and statistics (backends/bnb_layers.py, dequantising by the readers
of backends/quantised_weights.py, as model files are). CLIP encoders of those formats are dequantised at load.

Runs on the generation thread; torch, diffusers and transformers are imported inside the functions.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from desktop.engine.backends import bnb_layers, gguf_layers, mistral_encoder, qwen_encoders, scaled_fp8_layers
from desktop.engine.errors import ModelError
from desktop.engine.library import quant_formats
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.dit import read_gguf_tensors
from desktop.engine.library.encoder import EncoderInfo, inspect_encoder, inspect_encoder_gguf
from desktop.engine.library.encoder_qwen import LLAMA3, MISTRAL3, QWEN3VL
from desktop.engine.library.encoder_qwen import gguf_name as qwen_gguf_name
from desktop.engine.library.vae import DC_AE_LAYOUTS, inspect_vae

_ENCODER_CLASSES = {"CLIPTextModel": "clip", "CLIPTextModelWithProjection": "clip", "T5EncoderModel": "t5",
                    "UMT5EncoderModel": "t5",  # AuraFlow's Pile-T5-XL: T5's names, a position bias in every layer
                    "Qwen2_5_VLForConditionalGeneration": "qwen2.5-vl", "Qwen3Model": "qwen3",
                    "Qwen3ForCausalLM": "qwen3", "Mistral3ForConditionalGeneration": MISTRAL3,
                    "MistralModel": MISTRAL3, "Mistral3Model": MISTRAL3, "Gemma2Model": "gemma2",
                    "Qwen3VLModel": QWEN3VL, "Qwen3VLForConditionalGeneration": QWEN3VL,
                    "LlamaForCausalLM": LLAMA3}  # fmt: skip
_WANTED = {("clip", 768): "a CLIP-L", ("clip", 1280): "a CLIP-G", ("t5", 4096): "a T5-XXL",
           ("t5", 2048): "a Pile-T5-XL",
           ("qwen2.5-vl", 3584): "a Qwen2.5-VL 7B", ("qwen3", 2560): "a Qwen3 4B",
           ("qwen3", 4096): "a Qwen3 8B", (MISTRAL3, 5120): "a Mistral Small 24B",
           (MISTRAL3, 3072): "a Ministral 3 3B",
           ("gemma2", 2304): "a Gemma-2 2B", (QWEN3VL, 2560): "a Qwen3-VL 4B",
           (QWEN3VL, 4096): "a Qwen3-VL 8B", (LLAMA3, 4096): "a Llama 3.1 8B Instruct"}  # fmt: skip
_KIND_NAMES = {"clip": "CLIP", "t5": "T5", "qwen2.5-vl": "Qwen2.5-VL", "qwen3": "Qwen3", MISTRAL3: "Mistral",
               "gemma2": "Gemma 2", QWEN3VL: "Qwen3-VL", LLAMA3: "Llama"}  # fmt: skip
# Tensors component files carry that the model class does not hold (a CLIP-L's projection and logit scale
# when it serves Flux's un-projected slot; buffers older exports saved).
_HARMLESS = ("logit_scale", "text_projection.weight")
# llama.cpp's T5 encoder names -> transformers' (gguf's tensor_mapping, ENC_* entries).
_GGUF_T5 = {
    "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o", "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "attn_norm": "layer.0.layer_norm", "ffn_gate": "layer.1.DenseReluDense.wi_0",
    "ffn_up": "layer.1.DenseReluDense.wi_1", "ffn_down": "layer.1.DenseReluDense.wo", "ffn_norm": "layer.1.layer_norm",
}  # fmt: skip

# An all-in-one file's model and VAE (ComfyUI's names; SD's `first_stage_model.`).
_BUNDLED_MODEL = "model.diffusion_model."
_BUNDLED_VAE = ("vae.", "first_stage_model.")
# llama.cpp's tensor of Llama 3.1's rope scaling factors (transformers computes them from the config).
_LLAMA_ROPE_FACTORS = "rope_freqs.weight"
# (LDM VAE state dict, the VAE's diffusers config) -> diffusers state dict; passed in by the backend.
ConvertLdm = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Component:
    """A library entry chosen by name: what messages call it and where its file is."""

    name: str
    path: Path

    @property
    def shown(self) -> str:
        return f"{self.name!r} ({self.path.name})"


def inspect_component(component: Component) -> EncoderInfo:
    """What the encoder file holds; ModelError naming the entry and its file when it is no text encoder."""
    label = f"The text encoder {component.shown}"
    kind = sniff_file_type(component.path, label=label)
    if kind == "gguf":
        tensors, quantization = read_gguf_tensors(component.path, name=label)
        return inspect_encoder_gguf(tensors, quantization, label)
    if kind != "safetensors":
        raise ModelError(f"{label} is not a safetensors or GGUF file ({kind}); Marble loads no pickled weights.")
    return inspect_encoder(read_safetensors_header(component.path, name=label), label)


def match_slots(
    config: Path, encoders: Sequence[Component], model_name: str
) -> dict[str, tuple[Component, EncoderInfo]]:
    """Pipeline slot ("text_encoder", ...) -> the chosen encoder that fills it, by class and width.

    Checked before the slow transformer load, so a wrong or missing encoder is reported at once."""
    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    slots = [
        (slot, _ENCODER_CLASSES[entry[1]]) for slot, entry in sorted(index.items())
        if slot.startswith("text_encoder") and isinstance(entry, list) and entry[1] in _ENCODER_CLASSES
    ]  # fmt: skip
    infos = [(component, inspect_component(component)) for component in encoders]
    free = list(infos)
    chosen: dict[str, tuple[Component, EncoderInfo]] = {}
    for slot, kind in slots:
        width = _slot_width(config, slot)
        fit = next((pair for pair in free if pair[1].kind == kind and pair[1].width == width), None)
        if fit is None:
            given = ", ".join(f"{c.name} ({i.label})" for c, i in infos) or "none"
            wanted = _WANTED.get((kind, width), f"a {_KIND_NAMES[kind]} (width {width})")
            raise ModelError(
                f"{model_name} needs {wanted} text encoder for its {slot} and none of the chosen ones fits "
                f"(chosen: {given}). Import it with `marble encoders import FILE` and name it in --text-encoders."
            )
        free.remove(fit)
        chosen[slot] = fit
    if free:
        extra = ", ".join(f"{c.name} ({i.label})" for c, i in free)
        raise ModelError(f"{model_name} has no place for the text encoder(s) {extra}: leave them out.")
    return chosen


def assemble(
    cls: Any,
    config: Path,
    chosen: dict[str, tuple[Component, EncoderInfo]],
    vae: Component | None,
    *,
    model_name: str,
    dtype: Any,
    tokenizers: dict[str, Any],
    transformer: Any,
    convert_ldm: ConvertLdm,
) -> Any:
    """The family's pipeline from the transformer, the chosen encoders, the chosen VAE and shipped configs."""
    import diffusers

    if vae is None:
        raise ModelError(
            f"{model_name} holds the transformer only: choose its VAE too (--vae NAME from `marble vaes list`; "
            "for Flux.1 and Chroma the Flux VAE, ae.safetensors)."
        )
    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    parts: dict[str, Any] = {"transformer": transformer, **tokenizers}
    for slot, (component, info) in chosen.items():
        # SD3 reads CLIP-L's pooled output unprojected (Stability's reference and ComfyUI; diffusers' single-file
        # loader puts an identity there): a CLIP-L file's own projection, when it has one, is not SD3's.
        unprojected = index.get("_class_name") == "StableDiffusion3Pipeline" and slot == "text_encoder"
        parts[slot] = load_encoder(config / slot, index[slot][1], component, info, dtype=dtype,
                                   unprojected=unprojected)  # fmt: skip
    parts["vae"] = load_vae(config / "vae", vae, model_name=model_name, dtype=dtype, convert_ldm=convert_ldm)
    scheduler_class = getattr(diffusers, index["scheduler"][1])
    parts["scheduler"] = scheduler_class.from_pretrained(str(config), subfolder="scheduler", local_files_only=True)
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls(**{key: value for key, value in parts.items() if key in accepted})
    for component in pipe.components.values():
        if hasattr(component, "eval"):
            component.eval()
    return pipe


def load_encoder(
    config: Path, class_name: str, component: Component, info: EncoderInfo, *, dtype: Any, unprojected: bool = False,
    whole: bool = False,
) -> Any:
    """One encoder model of `class_name` from its config folder and the component's tensors (strict);
    `unprojected`: a CLIPTextModelWithProjection whose projection is the identity, whatever the file holds;
    `whole`: a Qwen3-VL with its vision tower (Qwen-Image 2.1 shows it the condition images), not its language
    model alone."""
    import torch
    import transformers
    from accelerate import init_empty_weights

    if info.kind == MISTRAL3:
        # Flux.2 dev's Mistral: the language model alone, cut to the layers Flux.2 reads; ERNIE-Image's Ministral 3:
        # its language model alone (mistral_encoder.py).
        settings = mistral_encoder.settings(config)
        model_class = mistral_encoder.model_class(settings)
    elif info.kind == QWEN3VL and not whole:
        # Qwen3-VL's language model alone: what Krea 2 reads (its vision tower is never run); the file's
        # hidden states are the whole model's for a prompt without pictures.
        model_class = transformers.Qwen3VLTextModel
        settings = transformers.AutoConfig.from_pretrained(str(config), local_files_only=True)
        settings = getattr(settings, "text_config", settings)
    else:
        model_class = getattr(transformers, class_name)
        settings = model_class.config_class.from_pretrained(str(config), local_files_only=True)
    state = _read_state(component, info, settings, dtype)
    if info.kind in qwen_encoders.KINDS:
        state = qwen_encoders.model_names(state, info.kind, class_name, whole=whole)
    if info.kind == "t5":
        # One embedding, saved under either name (or both): T5EncoderModel ties them.
        shared = state.pop("shared.weight", None)
        embedded = state.pop("encoder.embed_tokens.weight", None)
        if shared is not None or embedded is not None:  # neither: reported as missing below
            state["shared.weight"] = shared if shared is not None else embedded
    with init_empty_weights(include_buffers=False):  # no random initialisation of billions of weights
        model = model_class(settings)
    if info.kind == MISTRAL3:
        mistral_encoder.without_final_norm(model)
    own = model.state_dict()
    if info.kind == "clip":
        # transformers >= 5.6 holds (and saves) CLIPTextModel's layers without the `text_model.` level most
        # files keep, and CLIPTextModelWithProjection with it: the file's names follow the model's.
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
        if any(key.startswith("text_model.") for key in own):
            state = {key if key in _HARMLESS else f"text_model.{key}": value for key, value in state.items()}
    for key in _HARMLESS:
        if key not in own:
            state.pop(key, None)
    if unprojected and "text_projection.weight" in own:
        state["text_projection.weight"] = torch.eye(own["text_projection.weight"].shape[0])
    state = {key: value for key, value in state.items() if key in own or not key.endswith("position_ids")}
    made = qwen_encoders.fill_unused(model, state, info, own, dtype)
    missing = sorted(set(own) - set(state) - {"encoder.embed_tokens.weight"} - _buffers(model) - made)
    unexpected = sorted(set(state) - set(own))
    problem = None
    if missing or unexpected:
        problem = f"{len(missing)} tensor(s) missing ({', '.join(missing[:3])}) and {len(unexpected)} unexpected " \
                  f"({', '.join(unexpected[:3])})"  # fmt: skip
    else:
        wrong = next((k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)), None)
        if wrong is not None:
            problem = f"its tensor {wrong} has shape {tuple(state[wrong].shape)}, the model's {tuple(own[wrong].shape)}"
    if problem:
        raise ModelError(
            f"The text encoder {component.shown} does not fit this model's {config.name} ({problem}): the file is "
            "incomplete, or made for another model."
        )
    if info.layout == "gguf" or info.scaled or info.dtype in quant_formats.BITSANDBYTES:
        # Linear layers keep their GGUF blocks, scaled fp8 weights or bitsandbytes codes (gguf_layers.py,
        # scaled_fp8_layers.py, bnb_layers.py); T5's `wo` cannot: T5 casts its input to its weight's dtype.
        state = gguf_layers.keep_packed(model, state, skip=(".wo",))
    state = {key: value.to(dtype) for key, value in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if info.kind == "t5":
        model.encoder.embed_tokens = model.shared
    qwen_encoders.tie_head(model, made)
    model.to(dtype).eval()
    _keep_fp32(model, dtype)
    if info.fp8_storage is not None:
        from diffusers.hooks import apply_layerwise_casting

        # Linear layers only (diffusers' supported layer types); T5's norms and embedding stay as computed, and
        # so does each feed-forward's `wo`: T5 casts its input to wo's weight dtype before calling it.
        apply_layerwise_casting(
            model, storage_dtype=getattr(torch, info.fp8_storage), compute_dtype=dtype,
            skip_modules_pattern=("norm", "embed", "shared", r"\.wo$", "lm_head"),
        )  # fmt: skip
    return model


def load_vae(config: Path, vae: Component, *, model_name: str, dtype: Any, convert_ldm: ConvertLdm) -> Any:
    """The VAE of `config` (AutoencoderKL, or Flux.2's AutoencoderKLFlux2 as its config names) with the chosen
    library VAE's weights (BFL/LDM or diffusers names)."""
    import diffusers

    label = f"The VAE {vae.shown}"
    kind = sniff_file_type(vae.path, label=label)
    if kind != "safetensors":
        raise ModelError(f"{label} is not a safetensors file ({kind}).")
    header = read_safetensors_header(vae.path, name=label)
    if any(key.startswith(_BUNDLED_MODEL) for key in header.tensors):
        # An all-in-one file's own VAE (ComfyUI's `vae.` beside its model): read from it alone.
        label = f"The VAE inside {vae.shown}"
        header = replace(header, tensors={key: value for key, value in header.tensors.items()
                                          if key.startswith(_BUNDLED_VAE)})  # fmt: skip
    info = inspect_vae(header, label)
    settings = diffusers.AutoencoderKL.load_config(str(config))
    if settings.get("_class_name") == "AutoencoderDC":
        return _load_dc_ae(settings, vae, info, label, model_name=model_name, dtype=dtype)
    flux2 = settings.get("_class_name") == "AutoencoderKLFlux2"
    model = (diffusers.AutoencoderKLFlux2 if flux2 else diffusers.AutoencoderKL).from_config(settings)
    wanted = model.config.latent_channels
    if info.latent_channels != wanted or info.layout in DC_AE_LAYOUTS:  # Flux.2's VAE has DC-AE's 32 channels
        which = "Flux.2: flux2-vae.safetensors" if flux2 else "Flux.1: ae.safetensors"
        kind = "" if info.layout in DC_AE_LAYOUTS else f" with {info.latent_channels} latent channels"
        raise ModelError(
            f"{label} is a {info.label}{kind}; {model_name} works in {wanted} channels of its own VAE's. Pick the VAE "
            f"made for this model ({which})."
        )
    state = tensors_under(vae.path, info.prefix)
    if info.layout == "ldm":
        extra = _flux2_ldm_parts(state) if flux2 else {}
        state = convert_ldm(state, dict(model.config)) | extra
    if flux2 and "bn.num_batches_tracked" not in state:
        # A counter BatchNorm keeps for training only; files leave it out.
        state["bn.num_batches_tracked"] = model.bn.num_batches_tracked
    return _loaded(model, state, label, model_name=model_name, dtype=dtype)


def _loaded(model: Any, state: dict[str, Any], label: str, *, model_name: str, dtype: Any) -> Any:
    """`model` with `state` (strict: a tensor missing or left over is refused, naming the first), in `dtype`."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(f"{label} does not fit {model_name}: {first[1 if len(first) > 1 else 0][:200]}") from None
    # Cast only when needed: diffusers' to(dtype) warns about modules kept in float32 even when none are.
    return (model if model.dtype == dtype else model.to(dtype)).eval()


def _load_dc_ae(settings: dict[str, Any], vae: Component, info: Any, label: str, *, model_name: str, dtype: Any) -> Any:
    """Sana's DC-AE (AutoencoderDC from the shipped config) with the chosen file's weights, in diffusers' names or its
    makers' (converted by diffusers' single-file converter)."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

    if info.layout not in DC_AE_LAYOUTS:
        raise ModelError(
            f"{label} is a {info.label}; {model_name} draws through Sana's deep-compression autoencoder (DC-AE). Pick "
            "that VAE (mit-han-lab/dc-ae-f32c32-sana-1.0's weights), or pass a Sana folder as --text-encoders."
        )
    model = diffusers.AutoencoderDC.from_config(settings)
    state = tensors_under(vae.path, info.prefix)
    if info.layout == "dc-ae-original":
        state = convert_autoencoder_dc_checkpoint_to_diffusers(state)
    return _loaded(model, state, label, model_name=model_name, dtype=dtype)


def _flux2_ldm_parts(state: dict[str, Any]) -> dict[str, Any]:
    """Black Forest Labs' Flux.2 VAE (flux2-vae.safetensors) in LDM names keeps its quant convs inside the
    encoder and decoder and adds the latents' batch norm `bn`: the quant convs are moved (in `state`) to the
    top-level names the LDM converter reads; `bn`'s statistics are taken out and returned, as diffusers
    names them too."""
    for inner, outer in (("encoder.quant_conv.", "quant_conv."), ("decoder.post_quant_conv.", "post_quant_conv.")):
        for key in [key for key in state if key.startswith(inner)]:
            state[outer + key[len(inner):]] = state.pop(key)
    return {key: state.pop(key) for key in [key for key in state if key.startswith("bn.")]}


def _read_state(component: Component, info: EncoderInfo, settings: Any, dtype: Any) -> dict[str, Any]:
    if info.layout == "gguf":
        if info.kind == LLAMA3:
            # HiDream-I1's Llama 3.1 in llama.cpp's names, its q and k rows permuted by llama.cpp's converter for its
            # rotary layout: put back, as for Mistral (mistral_encoder.py); LlamaForCausalLM keeps `model.`.
            # Its rope factors (`rope_freqs`, Llama 3.1's scaling as llama.cpp stores it) are the config's to make.
            state = gguf_layers.read_gguf(component.path, qwen_gguf_name, lambda name: name != _LLAMA_ROPE_FACTORS)
            return mistral_encoder.rows_unpermuted(state, settings)
        if info.kind == MISTRAL3:
            return mistral_encoder.read_gguf(component.path, settings)
        rename = qwen_gguf_name if info.kind in qwen_encoders.KINDS else _gguf_t5_name
        return gguf_layers.read_gguf(component.path, rename)
    if info.kind == MISTRAL3:
        # Only the tensors of the layers Flux.2 reads, by MistralModel's names (mistral_encoder.py).
        state = mistral_encoder.read_used([component.path], (info.prefix,), settings.num_hidden_layers)
    else:
        # A Qwen file's vision tower and lm_head sit beside its `model.` level: kept whole, renamed at load.
        state = tensors_under(component.path, "" if info.kind in qwen_encoders.KINDS else info.prefix)
    if info.scaled:
        from desktop.engine.backends.quantised_weights import dequantise_scaled_fp8

        # Weight times scale, one tensor at a time in float32, kept in the job's dtype: a 4.7B T5 never
        # sits in memory in float32 whole. T5's and Qwen's linear weights stay in fp8 instead, multiplied as
        # their layers run (scaled_fp8_layers.py); CLIP's stay plain for the LoRAs Marble puts on them.
        keep = None if info.kind == "clip" else scaled_fp8_layers.keeper(dtype)
        state = dequantise_scaled_fp8(state, dtype, name=f"The text encoder {component.shown}", keep=keep)
    if info.dtype in quant_formats.BITSANDBYTES:
        from desktop.engine.backends.quantised_weights import dequantise_bitsandbytes

        # transformers saves a load_in_4bit / load_in_8bit encoder layer by layer as Forge saves a transformer:
        # the model path's reader (transformers has no loader for bnb single files). T5's and Qwen's linear
        # weights stay packed, dequantised by the same functions as their layers run (bnb_layers.py); CLIP's
        # are dequantised here, plain for the LoRAs Marble puts on them.
        keep = None if info.kind == "clip" else bnb_layers.keeper(quant_formats.SHOWN[info.dtype])
        state = dequantise_bitsandbytes(state, info.dtype, dtype, name=f"The text encoder {component.shown}",
                                        keep=keep)  # fmt: skip
    if info.layout == "openclip":
        # SDXL's OpenCLIP bigG names (fused in_proj, resblocks, x @ P projection): diffusers' own converter,
        # which reads only the config's width from the model it is given.
        from types import SimpleNamespace

        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

        state = convert_open_clip_checkpoint(SimpleNamespace(config=settings), state, prefix="")
    return state


def tensors_under(path: Path, prefix: str) -> dict[str, Any]:
    """The tensors of a safetensors file whose names start with `prefix`, the prefix cut; only those are read (an
    encoder or VAE inside an all-in-one file leaves the model's gigabytes on disk)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return {key[len(prefix):]: file.get_tensor(key) for key in file.keys() if key.startswith(prefix)}


def bundled_encoder(path: Path, prefix: str, name: str) -> tuple[Component, EncoderInfo]:
    """The text encoder an all-in-one file holds under `prefix` (ComfyUI's `text_encoders.<name>.transformer.`), as a
    chosen component: what it is, read from its tensors alone."""
    label = f"The text encoder inside {name}"
    header = read_safetensors_header(path, name=label)
    own = replace(header, tensors={key: value for key, value in header.tensors.items() if key.startswith(prefix)})
    return Component(name, path), inspect_encoder(own, label)


def _gguf_t5_name(name: str) -> str:
    if name == "token_embd.weight":
        return "shared.weight"
    if name == "enc.output_norm.weight":
        return "encoder.final_layer_norm.weight"
    parts = name.split(".")
    if len(parts) == 5 and parts[0] == "enc" and parts[1] == "blk" and parts[3] in _GGUF_T5:
        return f"encoder.block.{parts[2]}.{_GGUF_T5[parts[3]]}.{parts[4]}"
    return name  # left for load_encoder to report as unexpected


def _keep_fp32(model: Any, dtype: Any) -> None:
    """The modules transformers' from_pretrained keeps in float32 at this dtype (T5's `wo` in float16, where
    its activations overflow), so an encoder from a file computes as one loaded from a folder does."""
    import torch

    names = set(getattr(model, "_keep_in_fp32_modules", None) or []) if dtype == torch.float16 else set()
    if dtype in (torch.float16, torch.bfloat16):
        names |= set(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if not names:
        return
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in names:
            module.to(torch.float32)


def _slot_width(config: Path, slot: str) -> int:
    settings = json.loads((config / slot / "config.json").read_text(encoding="utf-8"))
    text = settings.get("text_config") if isinstance(settings.get("text_config"), dict) else {}
    return int(settings.get("hidden_size") or settings.get("d_model") or text.get("hidden_size") or 0)


def _buffers(model: Any) -> set[str]:
    return {name for name, _ in model.named_buffers()}
