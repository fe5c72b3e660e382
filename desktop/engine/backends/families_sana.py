"""Loading and running Sana (called from backends/families.py on the generation thread; detection is
library/dit_sana.py's).

Its text encoder (Gemma-2 2B), Gemma's tokenizer and its autoencoder (DC-AE, 32 channels at 32x) are not shipped, and
the libraries read no DC-AE yet, so a Sana transformer file takes them from a folder the user names
(`--text-encoders FOLDER`: a diffusers Sana folder, such as Efficient-Large-Model/Sana_1600M_1024px_diffusers).

Where Marble differs from diffusers' pipeline as it is: the size asked is drawn (diffusers' pipeline snaps every job to
its nearest trained aspect ratio and resizes the picture back; `use_resolution_binning=False`, as ComfyUI draws it).
A file in its makers' names is converted here (`from_original`): diffusers' converter knows Sana 1.0's tensors, not
Sana 1.5's normalised queries and keys, which are renamed beside it; whether the model normalises them is read from
the file (`settings`).

torch/diffusers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from desktop.engine.backends import user_tokenizer
from desktop.engine.backends.flow_edit import KlVaeTailEdit
from desktop.engine.errors import ModelError
from desktop.engine.library.dit_sana import SPRINT, normalises_queries
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file

# The prompt tokens its pipeline reads (after the instruction it puts before every prompt, as Sana's makers do).
MAX_SEQUENCE = 300
SIDE_MULTIPLE = 32  # its pipeline refuses other sides (the real DC-AE's factor)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_WHERE = ("a diffusers Sana folder (such as Efficient-Large-Model/Sana_1600M_1024px_diffusers: text_encoder/, "
          "tokenizer/ and vae/)")  # fmt: skip
# Sana 1.5's query and key norms in its makers' names -> diffusers' (self-attention attn1, cross-attention attn2).
_NORM = re.compile(r"^blocks\.(\d+)\.(attn|cross_attn)\.(q|k)_norm\.weight$")
# Sana Sprint's guidance embedder in its makers' names (an MLP: layers 0 and 2) -> diffusers', and the tensors of its
# training the model does not use.
_SPRINT_GUIDANCE = re.compile(r"^cfg_embedder\.mlp\.(0|2)\.(weight|bias)$")
_SPRINT_LAYERS = {"0": "linear_1", "2": "linear_2"}
_SPRINT_UNUSED = ("logvar_linear.weight", "logvar_linear.bias")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # Gemma's (fast, SentencePiece)


def pipeline_class(variant: str = "") -> Any:
    """SanaPipeline, or Sana Sprint's own (its SCM sampling and embedded guidance)."""
    import diffusers

    return diffusers.SanaSprintPipeline if variant == SPRINT else diffusers.SanaPipeline


@functools.cache
def img2img_class() -> Any:
    """Sana Sprint's image to image (diffusers' pipeline) and inpainting (`mask_image`: white is repainted; diffusers
    has none for it), taking the hires fix's upscaled latents too: a tensor of the DC-AE's channels, scaled as its
    `prepare_latents` takes an encoded picture (`sprint_latents`). diffusers' `prepare_image` would first resize any
    tensor to the picture's size.

    Inpainting, by Sprint's own sampler (SCM): each step estimates the clean latents x0 from the sample at its time s,
    x0 = cos(s) x - sin(s) v, and moves to the next time t, cos(t) x0 + sin(t) fresh noise; the last step's x0 is the
    picture. Outside the mask the estimate is made the source's latents, by handing the step the model output that
    gives them (v = (cos(s) x - x0) / sin(s); s > 0 at every step), so the next sample, the previews and the last
    estimate all hold the source there."""
    import diffusers
    import torch

    from desktop.engine.backends.flow_edit import latent_mask

    class SprintImageToImage(diffusers.SanaSprintImg2ImgPipeline):
        def prepare_image(self, image: Any, width: int, height: int, device: Any, dtype: Any) -> Any:
            latents = isinstance(image, torch.Tensor) and image.ndim == 4
            if latents and image.shape[1] == self.vae.config.latent_channels:
                return image.to(device=device, dtype=dtype)
            return super().prepare_image(image, width, height, device, dtype)

        def __call__(self, *, image: Any, width: int, height: int, mask_image: Any = None, **rest: Any) -> Any:
            if mask_image is None:
                return super().__call__(image=image, width=width, height=height, **rest)
            device = self._execution_device
            with torch.no_grad():
                pixels = self.prepare_image(image, width, height, device, self.vae.dtype)
                clean = sprint_latents(self, self.vae.encode(pixels).latent * self.vae.config.scaling_factor)
            factor = self.vae_scale_factor
            keep = 1 - latent_mask(mask_image, height // factor, width // factor).to(device, clean.dtype)
            scheduler = self.scheduler
            step = scheduler.step

            # The pipeline reads step's signature to decide whether to hand it the generator (SCM draws fresh noise
            # each step): the wrapper shows the step's own.
            @functools.wraps(step)
            def kept_outside(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
                s = torch.as_tensor(timestep).flatten()[0].to(sample.device, sample.dtype)  # the step's own time
                estimate = torch.cos(s) * sample - torch.sin(s) * model_output
                wanted = estimate + keep * (clean.to(estimate.dtype) - estimate)
                model_output = (torch.cos(s) * sample - wanted) / torch.sin(s)
                return step(model_output, timestep, sample, *args, **kwargs)

            wrapped = "step" in vars(scheduler)  # Marble's preview watcher's, or none
            scheduler.step = kept_outside
            try:
                return super().__call__(image=clean, width=width, height=height, **rest)
            finally:
                if wrapped:
                    scheduler.step = step
                else:
                    del scheduler.step  # the class's method again

    return SprintImageToImage


def sprint_latents(pipe: Any, latents: Any) -> Any:
    """Sana Sprint's latents as its text-to-image pipeline gives them back (the DC-AE's times its scaling factor) ->
    as its image-to-image pipeline noises them: times the SCM scheduler's sigma_data, as it scales an encoded
    picture."""
    return latents * pipe.scheduler.config.sigma_data


def transformer_class() -> Any:
    import diffusers

    return diffusers.SanaTransformer2DModel


def settings(state: Mapping[str, Any]) -> dict[str, Any]:
    """The transformer config's `qk_norm` as the file holds it (diffusers' names): Sana 1.5 normalises its queries and
    keys, 1.0 does not, at the same sizes."""
    return {"qk_norm": "rms_norm_across_heads" if normalises_queries(state) else None}


def from_original(state: dict[str, Any]) -> dict[str, Any]:
    """A Sana transformer's tensors in its makers' names (prefix removed) -> diffusers' names: diffusers' converter, and
    Sana 1.5's query and key norms beside it; Sana Sprint's guidance embedder (`cfg_embedder`), whose time embedder then
    stands alone (diffusers' `time_embed.timestep_embedder`, not 1.0's `time_embed.emb.`), as diffusers' conversion
    script names them. A tensor none of them knows is reported (KeyError), not dropped."""
    from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers

    sprint = {}
    for key in [key for key in state if _SPRINT_GUIDANCE.match(key)]:
        layer, kind = _SPRINT_GUIDANCE.match(key).groups()  # type: ignore[union-attr]
        sprint[f"time_embed.guidance_embedder.{_SPRINT_LAYERS[layer]}.{kind}"] = state.pop(key)
    for unused in _SPRINT_UNUSED:  # the log-variance head of its distillation's loss
        state.pop(unused, None)
    norms = {}
    for key in [key for key in state if _NORM.match(key)]:
        block, attention, which = _NORM.match(key).groups()  # type: ignore[union-attr]
        norms[f"transformer_blocks.{block}.{'attn1' if attention == 'attn' else 'attn2'}.norm_{which}.weight"] = (
            state.pop(key)
        )
    # Tables the converter drops (Sana places no positions; the caption's learned blank), which some files leave out.
    state.setdefault("pos_embed", None)
    state.setdefault("y_embedder.y_embedding", None)
    converted = convert_sana_transformer_to_diffusers(state)
    if state:
        raise KeyError(f"unexpected tensor {next(iter(state))!r}")
    if sprint:
        converted = {key.replace("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder."): value
                     for key, value in converted.items()}  # fmt: skip
    return converted | norms | sprint


# What NVlabs' ControlNet checkpoints hold beside their ControlNet (`controlnet.N.*`): the whole Sana model it was
# trained on. Its embedders are the ControlNet's own too (diffusers' conversion script takes them); the rest is the
# base's.
_CONTROLNET_SHARED = ("x_embedder.", "t_embedder.", "t_block.", "y_embedder.", "attention_y_norm.")
_CONTROLNET_BASE = re.compile(r"^(blocks\.\d+\.|final_layer\.|pos_embed$)")
_CONTROLNET_BLOCK = re.compile(r"^controlnet\.(\d+)\.(copied_block\.|after_proj\.|before_proj\.)(.+)$")


def controlnet_from_original(state: dict[str, Any]) -> dict[str, Any]:
    """NVlabs' Sana ControlNet checkpoint (its `state_dict`, as `--convert-pickle` writes it) -> diffusers'
    SanaControlNetModel names, with the facts of diffusers' conversion script: each `controlnet.N.copied_block` is a
    Sana block (renamed by `from_original`, diffusers' converter), block 0's `before_proj` the input layer, each
    `after_proj` an output layer; the embedders are the ControlNet's. The base model beside it is left out; a
    ControlNet tensor none of these names is reported (KeyError), not dropped."""
    blocks: dict[str, Any] = {}
    projections: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(_CONTROLNET_SHARED):
            blocks[key] = value
        elif (match := _CONTROLNET_BLOCK.match(key)) is not None:
            index, part, rest = match.groups()
            if part == "copied_block.":
                blocks[f"blocks.{index}.{rest}"] = value
            elif part == "after_proj.":
                projections[f"controlnet_blocks.{index}.{rest}"] = value
            elif index == "0":
                projections[f"input_block.{rest}"] = value
            else:
                raise KeyError(f"unexpected tensor {key!r}")
        elif _CONTROLNET_BASE.match(key) is None:
            raise KeyError(f"unexpected tensor {key!r}")
    # The converter also renames a final layer, which a ControlNet has not.
    blocks |= dict.fromkeys(("final_layer.linear.weight", "final_layer.linear.bias", "final_layer.scale_shift_table"))
    converted = from_original(blocks)
    dropped = ("proj_out.", "scale_shift_table")
    return {key: value for key, value in converted.items() if not key.startswith(dropped)} | projections


def needs_folder_error(name: str) -> ModelError:
    return ModelError(
        f"{name} holds the Sana transformer only. It also needs its text encoder (Gemma-2 2B), Gemma's tokenizer and "
        f"its DC-AE autoencoder, which Marble cannot ship: pass --text-encoders FOLDER, {_WHERE}; or choose them "
        "from the libraries (--text-encoders GEMMA --vae DCAE) with --tokenizer-folder for Gemma's tokenizer."
    )


def library_tokenizer(folder: Path | None, *, name: str) -> Any:
    """Gemma's tokenizer for a Sana file whose Gemma-2 comes from the library (the tokenizer cannot ship), from the
    user's tokenizer folder (a Sana folder, Gemma's own, or a tokenizer/ folder)."""
    import transformers

    return user_tokenizer.load(
        user_tokenizer.place_in(folder, _TOKENIZER_FILES), folder, name=name, encoder="Gemma-2 text encoder",
        where=f"{_WHERE}, or its tokenizer/ folder",
        loader=lambda found: transformers.AutoTokenizer.from_pretrained(found, local_files_only=True),
    )  # fmt: skip


def check_components(folder: Path, *, name: str) -> None:
    """Refuse, naming what is wrong, a folder without Gemma-2, its tokenizer or a 32-channel DC-AE (before the slow
    transformer load)."""
    encoder = read_json_file(folder / "text_encoder" / "config.json", label=f"text_encoder/config.json in {folder}",
                             missing_ok=True)  # fmt: skip
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}", missing_ok=True)
    problems = []
    if not (isinstance(encoder, dict) and encoder.get("model_type") == "gemma2"):
        problems.append("no Gemma-2 text encoder (text_encoder/)")
    if not any((folder / "tokenizer" / file).is_file() for file in _TOKENIZER_FILES):
        problems.append("no tokenizer/")
    if not (isinstance(vae, dict) and vae.get("_class_name") == "AutoencoderDC" and vae.get("latent_channels") == 32):
        problems.append("no DC-AE autoencoder of 32 channels (vae/)")
    if problems:
        raise ModelError(f"{folder} cannot serve {name}: it has {'; '.join(problems)}. Sana needs {_WHERE}.")


def generation_arguments(request: GenerationRequest, variant: str) -> dict[str, Any]:
    """The prompt (300 Gemma tokens after the makers' instruction, the pipeline's own); CFG above 1 against the negative
    prompt (Sprint: the CFG field is its embedded guidance, and it takes no negative prompt); the size asked drawn, not
    snapped to a trained aspect ratio."""
    arguments = {"prompt": request.prompt, "guidance_scale": float(request.cfg_scale),
                 "max_sequence_length": MAX_SEQUENCE, "use_resolution_binning": False}  # fmt: skip
    return arguments if variant == SPRINT else arguments | {"negative_prompt": request.negative_prompt or ""}


class DcAeTailEdit(KlVaeTailEdit):
    """flow_edit.KlVaeTailEdit for Sana's pipelines (its DPM-Solver flow schedule for the step count, cut to its tail):
    the source's latents are DC-AE's scaled (the pipeline decodes by the scale alone), one latent per token as they
    are."""

    def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
        pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
        latents = self.vae.encode(pixels.to(self._execution_device, self.vae.dtype)).latent  # DC-AE: no sampling
        return latents * self.vae.config.scaling_factor


@functools.cache
def edit_class() -> Any:
    """Sana's image to image and inpainting (diffusers has none for it), over its text-to-image pipeline."""
    import diffusers

    class SanaEditPipeline(DcAeTailEdit, diffusers.SanaPipeline):
        pass

    return SanaEditPipeline
