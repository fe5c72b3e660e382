"""Loading and running Flux.2 (called from backends/families.py on the generation thread).

Flux.2 dev reads prompts with Mistral Small 3.1 (Mistral3ForConditionalGeneration and its Pixtral
processor), Klein 4B / 9B with Qwen3 4B / 8B; their weights and tokenizers cannot be shipped. So, as for
Qwen-Image, a Flux.2 model takes its text encoder, tokenizer and VAE from a folder: its own diffusers
folder, or, for a single transformer file, the folder the user names (`--text-encoders FOLDER`: a
diffusers Flux.2 folder of the same kind, or any folder holding `text_encoder/`, `tokenizer/` and `vae/`).
The scheduler comes from that folder when it has one, else from the shipped config. A single file can take
them from the libraries instead (backends/qwen_encoders.py: ComfyUI's Qwen3 or Mistral file, whose Mistral
carries its own tokenizer, and flux2-vae).

Which pipeline: dev (a guidance embedder: distilled guidance, "Distilled CFG") runs in Flux2Pipeline,
Klein (no guidance embedder) in Flux2KleinPipeline, whose CFG is true CFG against an empty prompt. A
Klein folder's model_index.json says whether it is step-distilled (the 4-step models ignore CFG, as the
pipeline does); a single file cannot say, so there the CFG scale decides (1 = no CFG: the distilled
models' setting and Marble's Klein default; the Base models want about 4).

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from desktop.engine.backends.flow_edit import FlowEdit
from desktop.engine.errors import InvalidRequest, ModelError
from desktop.engine.library import dit_flux2
from desktop.engine.library.dit import DitInfo
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file
from desktop.engine.terminal_text import library_error

# Both pipelines read up to 512 prompt tokens (their default and BFL's); no 77-token chunks.
MAX_SEQUENCE = 512
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# Where dev's Mistral tokenizer is found, for a library encoder file that carries none.
_DEV_TOKENIZER = ("the tokenizer/ folder of black-forest-labs/FLUX.2-dev (or use ComfyUI's mistral_3_small_flux2 "
                  "file, which carries its own)")  # fmt: skip
# Each kind's text encoder: its name and its config's model_type.
_ENCODERS = {"dev": ("the Mistral Small 3.1 text encoder", "mistral3"), "klein": ("the Qwen3 text encoder", "qwen3")}
# The transformer reads three of the encoder's hidden layers stacked (the pipelines' text_encoder_out_layers).
_STACKED_LAYERS = 3
# Both pipelines shrink a reference image larger than this many pixels to about this area, keeping its aspect.
_REFERENCE_AREA = 1024 * 1024
# The smallest side and the longest side's ratio to it that both pipelines take in a reference.
_REFERENCE_MIN_SIDE, _REFERENCE_MAX_RATIO = 64, 8


def check_references(references: Sequence[tuple[str, Image.Image]]) -> None:
    """InvalidRequest for a reference picture (path, picture) Flux.2's pipelines refuse (Flux2ImageProcessor's
    check_image_input, diffusers 0.42: a side under 64 pixels, one side over 8 times the other), named, before any
    work is done: their ValueError came out of the middle of the job."""
    for path, image in references:
        width, height = image.size
        if min(width, height) < _REFERENCE_MIN_SIDE:
            raise InvalidRequest(f"The reference image {Path(path).name} is {width}x{height} pixels: Flux.2 reads "
                                 f"references of at least {_REFERENCE_MIN_SIDE} pixels a side.")  # fmt: skip
        if max(width, height) > _REFERENCE_MAX_RATIO * min(width, height):
            raise InvalidRequest(f"The reference image {Path(path).name} is {width}x{height} pixels: Flux.2 reads "
                                 f"references no more than {_REFERENCE_MAX_RATIO} times as long as wide.")  # fmt: skip


def is_dev(info: DitInfo) -> bool:
    """Whether a Flux.2 model is dev (the caller knows the family: HiDream has a "dev" too)."""
    return info.variant == "dev"


def is_dev_model(info: DitInfo) -> bool:
    """Whether a model of any family is Flux.2 dev."""
    return info.family == dit_flux2.FLUX2 and is_dev(info)


def transformer_class() -> Any:
    import diffusers

    return diffusers.Flux2Transformer2DModel


def _kind(info: DitInfo) -> str:
    return "dev" if is_dev(info) else "klein"


# ComfyUI's file of each kind's text encoder, for messages.
_COMFY_ENCODERS = {"dev": "mistral_3_small_flux2_bf16", "klein": "qwen_3_4b"}


def needs_folder_error(name: str, info: DitInfo) -> ModelError:
    encoder = _ENCODERS[_kind(info)][0]
    return ModelError(
        f"{name} holds the {info.label} transformer only. Flux.2 also needs {encoder}, its tokenizer and the "
        "Flux.2 VAE, which Marble cannot ship: choose them from the libraries (--text-encoders "
        f"{_COMFY_ENCODERS[_kind(info)]} --vae flux2-vae, ComfyUI's files imported with `marble encoders import` "
        "and `marble vaes import`), or pass --text-encoders FOLDER, a diffusers Flux.2 folder of the same kind or "
        "a folder holding text_encoder/, tokenizer/ and vae/."
    )


def check_components(folder: Path, info: DitInfo, *, name: str, text_width: int | None = None) -> None:
    """Refuse, naming what is missing or wrong, a folder that cannot serve `info`'s transformer: no text
    encoder, tokenizer or VAE; the other kind's text encoder; an encoder of another width than the
    transformer reads (`text_width`: a Klein 9B file with a Klein 4B folder)."""
    encoder_name, model_type = _ENCODERS[_kind(info)]
    missing = []
    if not (folder / "text_encoder" / "config.json").is_file():
        missing.append(f"text_encoder/ ({encoder_name})")
    if not any((folder / "tokenizer" / file).is_file() for file in _TOKENIZER_FILES):
        missing.append("tokenizer/ (tokenizer.json)")
    if not (folder / "vae" / "config.json").is_file():
        missing.append("vae/ (the Flux.2 VAE)")
    if missing:
        raise ModelError(
            f"{folder} cannot serve {name}: it has no {', no '.join(missing)}. Flux.2 needs a diffusers Flux.2 "
            "folder, or a folder holding text_encoder/, tokenizer/ and vae/."
        )
    encoder = read_json_file(folder / "text_encoder" / "config.json", label=f"text_encoder/config.json in {folder}")
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}")
    encoder = encoder if isinstance(encoder, dict) else {}
    found = (encoder.get("model_type"), vae.get("_class_name") if isinstance(vae, dict) else None)
    if found != (model_type, "AutoencoderKLFlux2"):
        raise ModelError(
            f"{folder} cannot serve {name}: its text encoder and VAE are {found[0]} and {found[1]}, but {info.label} "
            f"needs {encoder_name} ({model_type}) and AutoencoderKLFlux2."
        )
    text = encoder.get("text_config", encoder) if model_type == "mistral3" else encoder
    hidden = text.get("hidden_size") if isinstance(text, dict) else None
    if isinstance(hidden, int) and text_width is not None and _STACKED_LAYERS * hidden != text_width:
        raise ModelError(
            f"{folder} cannot serve {name}: its text encoder is {hidden} wide, but this transformer reads "
            f"{_STACKED_LAYERS} x {text_width // _STACKED_LAYERS} (a text encoder of another Flux.2 size)."
        )


def assemble(
    folder: Path, info: DitInfo, *, name: str, dtype: Any, shipped: Path, transformer: Any | None = None
) -> Any:
    """The pipeline from `folder`'s text encoder, tokenizer, VAE (and scheduler, else `shipped`'s), with
    `transformer` or, when None, the folder's own (then the folder's step-distilled flag counts too)."""
    import diffusers
    import transformers

    from desktop.engine.backends import mistral_encoder

    own = transformer is None
    width = _text_width(folder, transformer)
    check_components(folder, info, name=name, text_width=width)
    scheduler_folder = folder if (folder / "scheduler" / "scheduler_config.json").is_file() else shipped
    dev = is_dev(info)
    try:
        if transformer is None:
            transformer = transformer_class().from_pretrained(
                str(folder / "transformer"), dtype=dtype, local_files_only=True, use_safetensors=True
            )
        encoder_class = transformers.Mistral3ForConditionalGeneration if dev else transformers.Qwen3ForCausalLM
        # dev: only the part of Mistral Small that Flux.2 reads (backends/mistral_encoder.py), when the folder
        # holds it plainly; transformers loads the rest (quantised folders) whole.
        encoder = mistral_encoder.from_folder(folder / "text_encoder", dtype) if dev else None
        parts = {
            "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                str(scheduler_folder / "scheduler"), local_files_only=True
            ),
            "text_encoder": encoder if encoder is not None else encoder_class.from_pretrained(
                str(folder / "text_encoder"), dtype=dtype, local_files_only=True, use_safetensors=True
            ),
            # dev's folder holds a Pixtral processor; the pipeline reads prompts only through its tokenizer's
            # chat template, and the processor's image half needs torchvision, which Marble does not ship.
            "tokenizer": _with_chat_template(
                transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True),
                folder / "tokenizer",
            ),
            "vae": diffusers.AutoencoderKLFlux2.from_pretrained(
                str(folder / "vae"), dtype=dtype, local_files_only=True, use_safetensors=True
            ),
        }
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"Could not load {name!r} with the components in {folder}: {library_error(error)}") from error
    if dev:
        return diffusers.Flux2Pipeline(transformer=transformer, **parts)
    return diffusers.Flux2KleinPipeline(transformer=transformer, is_distilled=_distilled(folder, own), **parts)


def _with_chat_template(tokenizer: Any, folder: Path) -> Any:
    """The tokenizer, given its processor's chat template when it has none of its own: a processor saved
    in the older form keeps the template in chat_template.json or processor_config.json, which a tokenizer
    does not read (both pipelines build their prompts with it)."""
    for file in ("chat_template.json", "processor_config.json"):
        if tokenizer.chat_template is not None or not (folder / file).is_file():
            continue
        data = read_json_file(folder / file, label=f"{file} in {folder}")
        template = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(template, str):
            tokenizer.chat_template = template
    return tokenizer


def library_tokenizer(
    folder: Path | None, encoder: Path, shown: str, *, name: str, source: str = _DEV_TOKENIZER, chat: bool = True
) -> Any:
    """dev's tokenizer for a Mistral encoder from the library: the tekken.json ComfyUI's encoder file carries,
    or a GGUF's metadata holds (backends/tekken_tokenizer.py), the one made for its weights; for a file
    without one, from `folder` (FLUX.2-dev's diffusers folder, its tokenizer/ folder, or a Mistral
    repository's tekken.json), which may also be the Qwen tokenizer folder set for Qwen-Image: it is only
    read when the file carries none. ERNIE-Image's Ministral 3 the same way, with its own `source` named in
    messages and no chat template needed (`chat`: its pipeline tokenizes the prompt as it is)."""
    import transformers

    from desktop.engine.backends import tekken_tokenizer

    data = tekken_tokenizer.embedded_tekken(encoder)
    if data is not None:
        return tekken_tokenizer.tokenizer_from_tekken(data, source=f"The text encoder {shown}")
    if folder is None:
        raise ModelError(
            f"The text encoder {shown} carries no tokenizer (ComfyUI's Mistral files for Flux.2 hold theirs), "
            f"and {name} needs Mistral's. Point --tokenizer-folder (in the window: Settings, Tokenizer folder) "
            f"at {source}."
        )
    for candidate in (folder / "tokenizer", folder):
        if any((candidate / file).is_file() for file in _TOKENIZER_FILES):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(candidate), local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ModelError(f"The tokenizer in {candidate} does not load: {library_error(error)}") from error
            tokenizer = _with_chat_template(tokenizer, candidate)
            if chat and tokenizer.chat_template is None:
                raise ModelError(
                    f"The tokenizer in {candidate} has no chat template, which {name} needs: use FLUX.2-dev's "
                    "tokenizer/ folder (its tokenizer_config.json or chat_template.json holds it)."
                )
            return tokenizer
        if (candidate / "tekken.json").is_file():
            return tekken_tokenizer.tokenizer_from_tekken(
                (candidate / "tekken.json").read_bytes(), source=str(candidate / "tekken.json")
            )
    raise ModelError(
        f"The tokenizer folder {folder} holds no tokenizer.json nor tekken.json (nor tokenizer/ with one), which "
        f"{name} needs: point it at {source}."
    )


def _text_width(folder: Path, transformer: Any | None) -> int | None:
    if transformer is not None:
        return int(transformer.config.joint_attention_dim)
    config = read_json_file(folder / "transformer" / "config.json", label=f"transformer/config.json in {folder}")
    width = config.get("joint_attention_dim") if isinstance(config, dict) else None
    return width if isinstance(width, int) else None


def _distilled(folder: Path, own: bool) -> bool:
    """A Klein folder's step-distilled flag, for its own transformer only: a single file's kind is unknown,
    so there the CFG scale decides."""
    if not own or not (folder / "model_index.json").is_file():
        return False
    index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}")
    return isinstance(index, dict) and index.get("is_distilled") is True


def generation_arguments(pipe: Any, request: GenerationRequest, info: DitInfo) -> dict[str, Any]:
    """dev: the distilled guidance its transformer embeds ("Distilled CFG"); no negative prompt. Klein: the
    CFG scale (true CFG above 1, as the pipeline runs it) against the negative prompt, empty by default."""
    arguments: dict[str, Any] = {"prompt": request.prompt, "max_sequence_length": MAX_SEQUENCE}
    if is_dev(info):
        return arguments | {"guidance_scale": float(request.distilled_cfg_scale)}
    arguments["guidance_scale"] = float(request.cfg_scale)
    if request.negative_prompt and not ignores_negative(pipe, request, info):
        # The pipeline takes no negative text (its CFG runs against ""): the user's goes in as its encoding.
        embeds, _ids = pipe.encode_prompt(prompt=request.negative_prompt, max_sequence_length=MAX_SEQUENCE)
        arguments["negative_prompt_embeds"] = embeds
    return arguments


def ignores_negative(pipe: Any, request: GenerationRequest, info: DitInfo) -> bool:
    """Whether this job runs without a negative prompt: dev never has one; Klein only with true CFG on
    (CFG above 1 and a pipeline not marked step-distilled)."""
    return is_dev(info) or request.cfg_scale <= 1 or bool(pipe.config.is_distilled)


@contextlib.contextmanager
def references_beside_source(pipe: Any, references: Sequence[Image.Image]) -> Iterator[None]:
    """For one call of Flux2KleinInpaintPipeline `pipe`: condition on every one of `references` beside the
    source, as Flux2KleinPipeline conditions on its `image=` list in text-to-image.

    The inpainting pipeline conditions on a list of images through `prepare_image_latents`, which packs each
    image's tokens after the noisy latents and gives the i-th image of the list the time coordinate
    10 (i + 1) (its `_prepare_image_ids`), the text-to-image pipelines' packing; it hands that method the
    source's latents plus its one `image_reference` (a list there is read as a batch, every image cropped to
    the first's size). So the references are prepared here as the pipeline prepares its one, each at its own
    size, and appended to that list for the length of the call: the source is image 1 (t = 10), reference k
    image k + 1 (t = 10 (k + 1)), in the user's order. With one reference this is the pipeline's own
    `image_reference`, pixel for pixel (tests/engine/test_flux2.py)."""
    if not references:
        yield
        return
    prepared = [_reference_tensor(pipe, image) for image in references]
    own = pipe.prepare_image_latents

    def with_references(images: list[Any], *rest: Any, **named: Any) -> Any:
        return own([*images, *prepared], *rest, **named)

    # An attribute on the instance, removed after the call: the class's method is never changed.
    pipe.prepare_image_latents = with_references
    try:
        yield
    finally:
        del pipe.prepare_image_latents


def _reference_tensor(pipe: Any, image: Image.Image) -> Any:
    """`image` as Flux2KleinInpaintPipeline prepares its `image_reference` (diffusers 0.42): above about a
    megapixel shrunk to it with the pipeline's own resize, its sides cut down to a multiple of the latent
    patch, centre-cropped to that (not stretched)."""
    width, height = image.size
    if width * height > _REFERENCE_AREA:
        scale = math.sqrt(_REFERENCE_AREA / (width * height))
        image = pipe.image_processor.resize(image, int(height * scale), int(width * scale))
        width, height = image.size
    multiple = pipe.vae_scale_factor * 2
    return pipe.image_processor.preprocess(
        image, height // multiple * multiple, width // multiple * multiple, resize_mode="crop"
    )


class _DevLoopArguments:
    """Between FlowEdit and Flux2Pipeline: hands the pipeline the job's step count beside FlowEdit's tail of sigmas
    (its schedule's shift, mu, depends on the step count: it would take its default 50 while running the tail it is
    given), and the starting latents as the grid it takes, (B, 4C, h, w), where FlowEdit holds them as the loop does,
    packed into tokens in row order (its inpainting blend works on the loop's latents)."""

    _edit_steps = 50

    def __call__(self, *, latents: Any, width: int, height: int, **rest: Any) -> Any:
        side = self.vae_scale_factor * 2  # type: ignore[attr-defined]
        grid = latents.transpose(1, 2).reshape(latents.shape[0], latents.shape[2], height // side, width // side)
        return super().__call__(  # type: ignore[misc]
            num_inference_steps=self._edit_steps, latents=grid, width=width, height=height, **rest
        )


@functools.cache
def dev_edit_class() -> Any:
    """Flux.2 dev's image-to-image and inpainting pipeline. diffusers' Flux2Pipeline edits by instruction from
    reference pictures (another thing); so Marble's own over it (flow_edit.FlowEdit), as for ERNIE-Image, which draws
    through the same VAE: the source's latents are the pipeline's own encoding of a reference (the VAE's mode in 2x2
    patches, normalised by its batch-norm statistics), noised to where the tail of the job's schedule starts.
    Reference pictures still go with the prompt (`image=`)."""
    import diffusers
    import numpy as np
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    class Flux2DevEditPipeline(FlowEdit, _DevLoopArguments, diffusers.Flux2Pipeline):
        def __call__(self, *, num_inference_steps: int = 50, **rest: Any) -> Any:
            self._edit_steps = num_inference_steps
            return super().__call__(num_inference_steps=num_inference_steps, **rest)

        def _edit_grid(self, width: int, height: int) -> tuple[int, int]:
            side = self.vae_scale_factor * 2  # the VAE's factor times the 2x2 patches
            return height // side, width // side

        def _edit_raw_sigmas(self, steps: int) -> Any:
            return np.linspace(1.0, 1 / steps, steps)  # the pipeline's own

        def _edit_mu(self, rows: int, cols: int) -> float:
            return compute_empirical_mu(image_seq_len=rows * cols, num_steps=self._edit_steps)

        def _edit_encode(self, picture: Any, width: int, height: int, generator: Any) -> Any:
            pixels = self.image_processor.preprocess(picture.convert("RGB"), height=height, width=width)
            return self._encode_vae_image(pixels.to(self._execution_device, self.vae.dtype), generator)

        def _edit_pack(self, grid: Any) -> Any:
            return self._pack_latents(grid)  # tokens, as the loop holds them (_DevLoopArguments makes a grid again)

        def _edit_conditions(self, references: Any) -> dict[str, Any]:
            return {"image": list(references)} if references else {}

    return Flux2DevEditPipeline
