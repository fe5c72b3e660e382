"""Loading and running PixArt-Σ and PixArt-α (called from backends/families.py on the generation thread; detection is
library/dit_pixart.py's).

Both read T5-XXL (Flux.1's and SD3's encoder, so the library's `t5xxl` file serves them; the T5 tokenizer ships) and
draw SD's 4-channel latents: Sigma SDXL's VAE, Alpha SD 1.5's. A transformer file takes them from a folder
(`--text-encoders FOLDER`: a diffusers PixArt folder) or from the libraries (`--text-encoders t5xxl --vae NAME`).

Where Marble differs from diffusers' pipelines as they are:
- the size asked is drawn (`use_resolution_binning=False`: the pipelines snap every job to a trained aspect ratio and
  resize the picture back);
- they report steps through the old `callback` argument, which cannot stop a job or change its latents; `step_end`
  gives them the `callback_on_step_end` the other pipelines take (previews, cancel, the edits' blend);
- diffusers has no single-file loader for PixArt: a file's tensors (its makers' names converted by `from_original`)
  are put into the model built from the config (`transformer_from_state`); a GGUF file is dequantised at load (0.6B
  parameters: 1.2 GB in bf16), as no GGUF layer of diffusers' runs without its single-file loader.

torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from desktop.engine.backends import flux_like_loras, lora_forms
from desktop.engine.backends.flow_edit import KlVaeTailEdit, VarianceEdit
from desktop.engine.errors import ModelError
from desktop.engine.library.dit_pixart import ALPHA, ALPHA_TOKENS, SIGMA_TOKENS, embeds_size
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file

_LATENT_CHANNELS = 4
_ENCODER_CLASS = "T5EncoderModel"
_WHERE = {ALPHA: "a diffusers PixArt-α folder (such as PixArt-alpha/PixArt-XL-2-1024-MS: text_encoder/ and vae/)",
          "": "a diffusers PixArt-Σ folder (such as PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: text_encoder/ and vae/)"}
_LIBRARY_VAE = {ALPHA: "SD 1.5's VAE", "": "SDXL's VAE (sdxl_vae)"}
# Its makers' names -> diffusers', outside the blocks (the size and aspect-ratio embedders are Alpha 1024's).
_REST = {"x_embedder.proj": "pos_embed.proj", "y_embedder.y_proj.fc1": "caption_projection.linear_1",
         "y_embedder.y_proj.fc2": "caption_projection.linear_2", "t_block.1": "adaln_single.linear",
         "final_layer.linear": "proj_out"}  # fmt: skip
_EMBEDDERS = {"t_embedder": "timestep_embedder", "csize_embedder": "resolution_embedder",
              "ar_embedder": "aspect_ratio_embedder"}  # fmt: skip
_BLOCK = {"attn.proj": "attn1.to_out.0", "cross_attn.q_linear": "attn2.to_q", "cross_attn.proj": "attn2.to_out.0",
          "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}  # fmt: skip
# The fused layers' parts, numbered as OneTrainer's OMI LoRAs name them (q, k, v of the self-attention; k, v of the
# cross one), and how many parts each holds.
_FUSED = {"attn.qkv": 3, "cross_attn.kv_linear": 2}
_SPLIT = {"attn.qkv.0": "attn1.to_q", "attn.qkv.1": "attn1.to_k", "attn.qkv.2": "attn1.to_v",
          "cross_attn.kv_linear.0": "attn2.to_k", "cross_attn.kv_linear.1": "attn2.to_v"}  # fmt: skip
# OneTrainer's OMI names: the makers' modules under `transformer.`; its other parts (T5's, bundled embeddings).
_OMI_HEADS = tuple(f"transformer.{head}." for head in ("blocks", "x_embedder", "y_embedder", "t_block", "final_layer",
                                                        "t_embedder", "csize_embedder", "ar_embedder"))  # fmt: skip
_ONETRAINER_OTHERS = ("t5.", "lora_te", "bundle_emb")
# Tables its checkpoints carry that the model does not use: the learned blank caption (the pipelines encode an empty
# negative prompt instead) and the fixed-size models' position table (diffusers computes the positions).
_UNUSED = ("y_embedder.y_embedding", "pos_embed")


def pipeline_class(variant: str) -> Any:
    """PixArtSigmaPipeline or PixArtAlphaPipeline, taking `callback_on_step_end` (`step_end`)."""
    import diffusers

    return step_end(diffusers.PixArtAlphaPipeline if variant == ALPHA else diffusers.PixArtSigmaPipeline)


@functools.cache
def step_end(base: Any) -> Any:
    """`base` with diffusers' `callback_on_step_end` on top of its old `callback` (called after every step with the
    step's latents): the callback sees {"latents": ...} and what it gives back replaces them, in place. The size asked
    is drawn and the prompt read as written unless the caller says otherwise."""

    class StepEndPipeline(flux_like_loras.loader(), base):  # type: ignore[misc, valid-type]
        _lora_label = "PixArt"

        def _lora_tensors(self, state: dict[str, Any]) -> dict[str, Any]:
            return lora_tensors(self.transformer, state)

        def __call__(self, *args: Any, callback_on_step_end: Any = None, callback_on_step_end_tensor_inputs: Any = None,
                     **rest: Any) -> Any:  # fmt: skip
            # Marble's defaults whoever calls (the edits' checks call it bare): the size asked, the prompt as written.
            rest = {"use_resolution_binning": False, "clean_caption": False} | rest
            if callback_on_step_end is None:
                return super().__call__(*args, **rest)

            def callback(step: int, t: Any, latents: Any) -> None:
                # callback_on_step_end gets the loop's index (the blend reads the schedule by it). The old callback's
                # step is that divided by the scheduler's order, and it is called after whole steps only (Heun's
                # second evaluation) and not for a warm-up step (PLMS's first): the scheduler's own count after its
                # step says the index; DDIM and PNDM keep none, and are first order (the step is the index).
                done = getattr(self.scheduler, "step_index", None)
                index = done - 1 if done is not None else step
                given = callback_on_step_end(self, index, t, {"latents": latents}) or {}
                if given.get("latents") is not None and given["latents"] is not latents:
                    latents.copy_(given["latents"])

            return super().__call__(*args, callback=callback, callback_steps=1, **rest)

    StepEndPipeline.__name__ = StepEndPipeline.__qualname__ = base.__name__
    return StepEndPipeline


@functools.cache
def transformer_class() -> Any:
    """PixArtTransformer2DModel with diffusers' PEFT adapter methods, which its own class lacks (diffusers has no PixArt
    LoRA loader): LoRAs load onto it as onto the other families' transformers (flux_like_loras.py)."""
    import diffusers
    from diffusers.loaders.peft import PeftAdapterMixin

    class PixArtTransformer(PeftAdapterMixin, diffusers.PixArtTransformer2DModel):
        pass

    # Its config and messages say the class it is.
    PixArtTransformer.__name__ = PixArtTransformer.__qualname__ = diffusers.PixArtTransformer2DModel.__name__
    return PixArtTransformer


# Where PixArt LoRAs keep their layers: diffusers' PixArt trainer saves PEFT's names under the UNet's prefix
# (`unet.transformer_blocks.N.attn1.to_q.lora_A.weight`), others under `transformer.` or ComfyUI's `diffusion_model.`.
_LORA_PREFIXES = ("unet.", "transformer.", "diffusion_model.", "base_model.model.")


def lora_tensors(transformer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """A PixArt LoRA's tensors (PEFT's or diffusers' names under any of its prefixes, lora_A / lora_B or lora_down /
    lora_up with alphas folded, kohya's flattened names, OneTrainer's forms) as the transformer's own module names. A
    layer of Sana's (whose attention names PixArt's share) is refused: ValueError, which the LoRA loader reports with
    its name."""
    modules = [name for name, _ in transformer.named_modules()]
    out = {}
    for key, tensor in lora_forms.renamed_for(onetrainer_names(state), modules).items():
        while key.startswith(_LORA_PREFIXES):
            key = key.removeprefix(next(prefix for prefix in _LORA_PREFIXES if key.startswith(prefix)))
        if ".ff.conv_" in key:
            raise ValueError(f"its layer {key.partition('.lora_')[0]!r} is Sana's convolutional feed-forward, which "
                             "PixArt's blocks have not: it is a LoRA for Sana")  # fmt: skip
        out[key] = tensor
    return out


def onetrainer_names(state: dict[str, Any]) -> dict[str, Any]:
    """A LoRA in OneTrainer's forms in the forms `lora_tensors` reads; any other comes back as it is. OneTrainer names
    diffusers' modules under `lora_transformer` (dotted, or flattened in its legacy files) or the makers' modules under
    `transformer.` (its OMI files: `transformer.blocks.N.attn.qkv.0` for q, `.1` k, `.2` v). Its text-encoder (T5) and
    embedding layers are refused by name (ValueError): Marble applies PixArt LoRAs to the transformer."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.startswith(_ONETRAINER_OTHERS):
            layer = key.rpartition(".lora_")[0] or key
            raise ValueError(f"its layer {layer!r} is not the transformer's (OneTrainer's T5 or embedding layers): "
                             "Marble applies PixArt LoRAs to the transformer only")  # fmt: skip
        if key.startswith("lora_transformer."):
            key = "transformer." + key.removeprefix("lora_transformer.")
        elif key.startswith("lora_transformer_"):
            key = lora_forms.KOHYA + key.removeprefix("lora_transformer_")
        elif key.startswith(_OMI_HEADS):
            module, part = (key.removesuffix(".alpha"), "alpha") if key.endswith(".alpha") else key.rsplit(".lora_", 1)
            ours = _diffusers_module(module.removeprefix("transformer."))
            if ours is None:
                raise ValueError(f"its layer {module!r} is no PixArt transformer's")
            key = f"transformer.{ours}.{part if part == 'alpha' else 'lora_' + part}"
        out[key] = tensor
    return out


def _diffusers_module(module: str) -> str | None:
    """diffusers' module for one of PixArt's makers' module names, the fused layers' parts as OneTrainer's OMI LoRAs
    name them (`blocks.N.attn.qkv.0` for q), or None (a fused layer whole, a table, another model's)."""
    if module in _REST:
        return _REST[module]
    head, _, rest = module.partition(".")
    if head in _EMBEDDERS and rest in ("mlp.0", "mlp.2"):
        return f"adaln_single.emb.{_EMBEDDERS[head]}.{'linear_1' if rest == 'mlp.0' else 'linear_2'}"
    index, _, inner = rest.partition(".")
    if head == "blocks" and index.isdigit() and (inner in _BLOCK or inner in _SPLIT):
        return f"transformer_blocks.{index}.{_BLOCK.get(inner) or _SPLIT[inner]}"
    return None


def from_original(state: dict[str, Any]) -> dict[str, Any]:
    """A PixArt transformer's tensors in its makers' names (prefix removed) -> diffusers' names: q/k/v and the cross
    attention's k/v split, the unused tables dropped. A tensor it does not know is reported (KeyError), not dropped."""
    import torch

    for unused in _UNUSED:
        state.pop(unused, None)
    out: dict[str, Any] = {}
    for key in list(state):
        module, _, suffix = key.rpartition(".")
        head, _, rest = module.partition(".")
        index, _, inner = rest.partition(".")
        ours = _diffusers_module(module)
        if ours is not None:
            out[f"{ours}.{suffix}"] = state.pop(key)
        elif head == "blocks" and inner in _FUSED:  # its parts named as OneTrainer's LoRAs name them (`attn.qkv.0`)
            for number, part in enumerate(torch.chunk(state.pop(key), _FUSED[inner])):
                out[f"{_diffusers_module(f'{module}.{number}')}.{suffix}"] = part
        elif key == "final_layer.scale_shift_table":
            out["scale_shift_table"] = state.pop(key)
        elif head == "blocks" and index.isdigit() and not inner and suffix == "scale_shift_table":
            out[f"transformer_blocks.{index}.scale_shift_table"] = state.pop(key)
    if state:
        raise KeyError(f"unexpected tensor {next(iter(state))!r}")
    return out


def transformer_from_state(state: dict[str, Any], config: Mapping[str, Any], dtype: Any) -> Any:
    """The transformer built from `config` (a file's own settings over it: whether it embeds the picture's size) with
    the file's tensors in diffusers' names; every tensor of the model must be there, at the model's size, and nothing
    else (ValueError naming the first one otherwise)."""
    from accelerate import init_empty_weights

    settings = {key: value for key, value in config.items() if not key.startswith("_")}
    settings["use_additional_conditions"] = embeds_size(state)
    with init_empty_weights():  # parameters on the meta device; the computed position table is made for real
        model = transformer_class().from_config(settings)
    wanted = model.state_dict()
    unknown = sorted(set(state) - set(wanted))
    if unknown:
        raise ValueError(f"it holds {unknown[0]!r}, which PixArt's transformer has not: the file is damaged, or "
                         "another model's")  # fmt: skip
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise ValueError(f"{missing[0]!r} is missing: the file is damaged or incomplete")
    for key, tensor in state.items():
        shape = tuple(tensor.shape)
        if shape != tuple(wanted[key].shape):
            raise ValueError(f"{key!r} is {list(shape)} where the configuration's model has "
                             f"{list(wanted[key].shape)}: a PixArt of other sizes (pass its diffusers folder as "
                             "--config)")  # fmt: skip
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval()


def plain_state(state: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """A GGUF file's tensors dequantised to `dtype` (others as they are)."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return {key: (dequantize_gguf_tensor(value).to(dtype) if hasattr(value, "quant_type") else value)
            for key, value in state.items()}  # fmt: skip


def needs_folder_error(name: str, variant: str) -> ModelError:
    where = _WHERE[ALPHA if variant == ALPHA else ""]
    vae = _LIBRARY_VAE[ALPHA if variant == ALPHA else ""]
    return ModelError(
        f"{name} holds the PixArt transformer only. It also needs its text encoder (T5-XXL) and VAE: pass "
        f"--text-encoders FOLDER, {where}, or the T5-XXL file from the library with {vae} (--text-encoders t5xxl "
        "--vae NAME)."
    )


def check_components(folder: Path, variant: str, *, name: str) -> None:
    """Refuse, naming what is wrong, a folder without a T5 text encoder or a 4-channel VAE (before the transformer
    load)."""
    index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}", missing_ok=True)
    encoder = index.get("text_encoder") if isinstance(index, dict) else None
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}", missing_ok=True)
    channels = vae.get("latent_channels") if isinstance(vae, dict) else None
    problems = []
    if not (isinstance(encoder, list) and len(encoder) == 2 and encoder[1] == _ENCODER_CLASS):
        problems.append("no T5 text encoder (text_encoder/ of T5EncoderModel)")
    if channels != _LATENT_CHANNELS:
        problems.append("no VAE (vae/ of 4 latent channels)" if channels is None else
                        f"a VAE of {channels} latent channels, not 4")  # fmt: skip
    if problems:
        where = _WHERE[ALPHA if variant == ALPHA else ""]
        raise ModelError(f"{folder} cannot serve {name}: it has {'; '.join(problems)}. PixArt needs {where}.")


def max_tokens(variant: str) -> int:
    """The T5 tokens each release was trained with and its pipeline reads: Alpha 120, Sigma 300."""
    return ALPHA_TOKENS if variant == ALPHA else SIGMA_TOKENS


def generation_arguments(request: GenerationRequest, variant: str) -> dict[str, Any]:
    """The prompt whole to T5 (its release's tokens); CFG above 1 against the negative prompt (blank when none is given,
    the pipelines' own). The size asked is drawn and the caption not cleaned (that needs packages Marble does not ship,
    and changes what the user wrote) by `step_end`'s defaults."""
    return {"prompt": request.prompt, "negative_prompt": request.negative_prompt or "",
            "guidance_scale": float(request.cfg_scale), "max_sequence_length": max_tokens(variant)}  # fmt: skip


@functools.cache
def edit_class(variant: str = "") -> Any:
    """PixArt's image to image and inpainting (diffusers has none), over its text-to-image pipeline
    (flow_edit.KlVaeTailEdit with VarianceEdit's noising: its DPM-Solver++ schedule for the step count, cut to its
    tail; the source's latents, the VAE's mode scaled, noised as a noise-prediction model's are)."""

    class PixArtEditPipeline(VarianceEdit, KlVaeTailEdit, pipeline_class(variant)):  # type: ignore[misc]
        pass

    return PixArtEditPipeline
