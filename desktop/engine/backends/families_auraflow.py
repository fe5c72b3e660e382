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


def _tokenizer_place(folder: Path) -> Path | None:
    """Where a folder keeps Pile-T5's tokenizer: its tokenizer/ (a diffusers folder), or the folder itself
    (EleutherAI's pile-t5-xl folder, or a tokenizer/ folder named directly)."""
    for place in (folder / "tokenizer", folder):
        if any((place / file).is_file() for file in _TOKENIZER_FILES):
            return place
    return None


def tokenizer(folder: Path | None, *, name: str) -> Any:
    """Pile-T5's tokenizer for a file run with its encoder from the library, from the user's tokenizer folder."""
    import transformers

    place = _tokenizer_place(folder) if folder is not None else None
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
    if _tokenizer_place(folder) is None:
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
