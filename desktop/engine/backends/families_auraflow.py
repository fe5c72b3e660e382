"""Loading and running AuraFlow and its descendants, Pony V7 first (called from backends/families.py on the generation
thread; detection is library/dit_auraflow.py's).

Its text encoder, Pile-T5-XL (EleutherAI's UMT5 of width 2048, 2.8B parameters), and its tokenizer (the LLaMA
tokenizer Pile-T5 was trained with) are not shipped, so an AuraFlow transformer file takes them and the VAE (SDXL's)
from a folder the user names (`--text-encoders FOLDER`: fal's AuraFlow folder or Pony V7's, a diffusers
AuraFlowPipeline folder), or the encoder file and the VAE from the libraries with the tokenizer from the user's
tokenizer folder (`tokenizer`).

A file's position table sets how many patches the model places (fal's v0.1: 1024, 32x32; v0.2, v0.3 and Pony V7:
9216, 96x96): the transformer is built with the file's (`position_settings`), not the shipped config's.

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from desktop.engine.backends import user_tokenizer
from desktop.engine.backends.flow_edit import KlVaeTailEdit
from desktop.engine.errors import ModelError
from desktop.engine.library.dit_auraflow import ENCODER, POSITIONS
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file

# The prompt tokens its pipeline reads (diffusers' default and fal's: Pile-T5's 256).
MAX_SEQUENCE = 256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model")
_ENCODER_CLASS = "UMT5EncoderModel"
# Where an all-in-one file keeps Pile-T5-XL (ComfyUI's names).
ENCODER_PREFIX = f"text_encoders.{ENCODER}.transformer."
_LATENT_CHANNELS = 4  # SDXL's VAE
_WHERE = ("fal/AuraFlow-v0.3 or purplesmartai/pony-v7-base (a diffusers AuraFlow folder: text_encoder/, tokenizer/ "
          "and vae/)")  # fmt: skip


def pipeline_class() -> Any:
    import diffusers

    return diffusers.AuraFlowPipeline


def transformer_class() -> Any:
    import diffusers

    return diffusers.AuraFlowTransformer2DModel


def position_settings(state: Mapping[str, Any], layout: str) -> dict[str, int]:
    """The transformer config's `pos_embed_max_size` (how many patches its position table places) from a file's
    table, (1, positions, width); {} when the file holds none (reported by the load)."""
    table = state.get(POSITIONS[layout])
    if table is None:
        return {}
    positions = int(tuple(getattr(table, "quant_shape", table.shape))[1])
    side = math.isqrt(positions)
    # The transformer crops its table as a square grid of this side: a table that is no square is no AuraFlow's.
    return {"pos_embed_max_size": positions} if side * side == positions else {}


def needs_folder_error(name: str) -> ModelError:
    return ModelError(
        f"{name} holds the AuraFlow transformer only. It also needs its text encoder (Pile-T5-XL), its tokenizer and "
        f"SDXL's VAE, which Marble cannot ship: pass --text-encoders FOLDER, {_WHERE}, or the Pile-T5-XL file from "
        "the library with SDXL's VAE (--text-encoders pile_t5xl --vae sdxl_vae) and the tokenizer folder "
        "(--tokenizer-folder: such a folder's tokenizer/)."
    )


def tokenizer(folder: Path | None, *, name: str) -> Any:
    """Pile-T5's tokenizer for a file run with its encoder from the library, from the user's tokenizer folder."""
    import transformers

    place = user_tokenizer.place_in(folder, _TOKENIZER_FILES)
    return user_tokenizer.load(
        place, folder, name=name, encoder="Pile-T5-XL text encoder", where=f"{_WHERE}, or its tokenizer/ folder",
        loader=lambda found: transformers.AutoTokenizer.from_pretrained(found, local_files_only=True),
    )  # fmt: skip


def check_components(folder: Path, *, name: str) -> None:
    """Refuse, naming what is wrong, a folder without Pile-T5-XL, its tokenizer or a 4-channel VAE (before the slow
    transformer load)."""
    index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}", missing_ok=True)
    encoder = index.get("text_encoder") if isinstance(index, dict) else None
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}", missing_ok=True)
    channels = vae.get("latent_channels") if isinstance(vae, dict) else None
    problems = []
    if not (isinstance(encoder, list) and len(encoder) == 2 and encoder[1] == _ENCODER_CLASS):
        problems.append("no Pile-T5-XL text encoder (text_encoder/ of UMT5EncoderModel)")
    if user_tokenizer.place_in(folder, _TOKENIZER_FILES) is None:
        problems.append("no tokenizer/")
    if channels != _LATENT_CHANNELS:
        problems.append("no SDXL VAE (vae/ of 4 latent channels)" if channels is None else
                        f"a VAE of {channels} latent channels, not SDXL's 4")  # fmt: skip
    if problems:
        raise ModelError(f"{folder} cannot serve {name}: it has {'; '.join(problems)}. AuraFlow needs {_WHERE}.")


def generation_arguments(request: GenerationRequest) -> dict[str, Any]:
    """The prompt (256 Pile-T5 tokens, no CLIP chunks); CFG above 1 against the negative prompt (blank when none is
    given, the pipeline's own); none at 1 and below."""
    guided = request.cfg_scale > 1
    return {"prompt": request.prompt, "negative_prompt": (request.negative_prompt or None) if guided else None,
            "guidance_scale": float(request.cfg_scale), "max_sequence_length": MAX_SEQUENCE}  # fmt: skip


@functools.cache
def edit_class() -> Any:
    """AuraFlow's image to image and inpainting (diffusers has none), over its text-to-image pipeline
    (flow_edit.KlVaeTailEdit: its pipeline makes its schedule from the step count, which is kept and cut to its tail;
    the source's latents are SDXL's VAE's mode scaled, as the pipeline decodes by the scale alone)."""
    import diffusers

    class AuraFlowEditPipeline(KlVaeTailEdit, diffusers.AuraFlowPipeline):  # its schedule: a fixed shift
        pass

    return AuraFlowEditPipeline


# Its makers' module names -> diffusers' (the facts of diffusers' single-file converter), per joint block, single block
# and outside the blocks: LoRAs made on ComfyUI's model (or fal's code) name these.
_JOINT_MODULES = {
    "mlpX.c_fc1": "ff.linear_1", "mlpX.c_fc2": "ff.linear_2", "mlpX.c_proj": "ff.out_projection",
    "mlpC.c_fc1": "ff_context.linear_1", "mlpC.c_fc2": "ff_context.linear_2",
    "mlpC.c_proj": "ff_context.out_projection", "modX.1": "norm1.linear", "modC.1": "norm1_context.linear",
    "attn.w2q": "attn.to_q", "attn.w2k": "attn.to_k", "attn.w2v": "attn.to_v", "attn.w2o": "attn.to_out.0",
    "attn.w1q": "attn.add_q_proj", "attn.w1k": "attn.add_k_proj", "attn.w1v": "attn.add_v_proj",
    "attn.w1o": "attn.to_add_out",
}  # fmt: skip
_SINGLE_MODULES = {
    "mlp.c_fc1": "ff.linear_1", "mlp.c_fc2": "ff.linear_2", "mlp.c_proj": "ff.out_projection",
    "modCX.1": "norm1.linear", "attn.w1q": "attn.to_q", "attn.w1k": "attn.to_k", "attn.w1v": "attn.to_v",
    "attn.w1o": "attn.to_out.0",
}  # fmt: skip
_OTHER_MODULES = {
    "t_embedder.mlp.0": "time_step_proj.linear_1", "t_embedder.mlp.2": "time_step_proj.linear_2",
    "cond_seq_linear": "context_embedder", "final_linear": "proj_out", "init_x_linear": "pos_embed.proj",
    "modF.1": "norm_out.linear",
}  # fmt: skip
_BLOCKS = {"double_layers": ("joint_transformer_blocks", _JOINT_MODULES),
           "single_layers": ("single_transformer_blocks", _SINGLE_MODULES)}  # fmt: skip
# Its final modulation holds (shift, scale); diffusers' norm_out (scale, shift): the rows a LoRA adds to are swapped.
_SWAPPED = "norm_out.linear"
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "lora_unet_")


def lora_in_makers_names(names: Any) -> bool:
    """Whether a LoRA names AuraFlow's own modules (`double_layers.N`, `single_layers.N`), dotted or kohya's way."""
    return any(_bare(name).startswith(tuple(_BLOCKS)) for name in names)


def _bare(name: str) -> str:
    return next((name.removeprefix(prefix) for prefix in _PREFIXES if name.startswith(prefix)), name)


def _either(table: Mapping[str, str]) -> dict[str, str]:
    """`table` with each makers' name also flattened, as kohya writes it (`attn.w2q` -> `attn_w2q`)."""
    return table | {makers.replace(".", "_"): ours for makers, ours in table.items()}


_IN_BLOCK = re.compile(r"^(double_layers|single_layers)[._](\d+)[._](.+)$")


def _diffusers_module(module: str) -> str | None:
    """diffusers' name for a makers' module name (dotted or flattened), or None."""
    match = _IN_BLOCK.match(module)
    if match is None:
        return _either(_OTHER_MODULES).get(module)
    block, index, rest = match.groups()
    diffusers_block, modules = _BLOCKS[block]
    ours = _either(modules).get(rest)
    return f"{diffusers_block}.{index}.{ours}" if ours is not None else None


def convert_lora(state: dict[str, Any], *, name: str) -> dict[str, Any]:
    """A LoRA in AuraFlow's own module names (`diffusion_model.double_layers.0.attn.w2q.lora_A.weight`, kohya's
    `lora_unet_double_layers_0_attn_w2q.lora_down.weight` with alphas ...) in diffusers' module names under
    `diffusion_model.`, its form kept (lora_forms.under_transformer then reads it). A module it cannot place is
    refused by name: diffusers would skip it without a word."""
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        module, part = (key.removesuffix(".alpha"), "alpha") if key.endswith(".alpha") else key.rsplit(".lora_", 1)
        part = part if part == "alpha" else "lora_" + part
        ours = _diffusers_module(_bare(module))
        if ours is None:
            raise ModelError(
                f"The LoRA {name!r} names a layer AuraFlow does not have ({module}): it may be made for another model."
            )
        if ours == _SWAPPED and part in ("lora_B.weight", "lora_up.weight", "lora_B.bias", "lora_up.bias"):
            tensor = tensor.roll(tensor.shape[0] // 2, dims=0)  # (shift, scale) -> (scale, shift)
        out[f"diffusion_model.{ours}.{part}"] = tensor
    return out
