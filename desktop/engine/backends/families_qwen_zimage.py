"""Loading and running Qwen-Image, Z-Image, Lumina Image 2.0, Qwen-Image 2.1, Krea 2, ERNIE-Image, LongCat-Image,
Ovis-Image and FLUX.3 (its pipeline in families_flux3.py) (called from backends/families.py on the generation thread).

Their text encoders are LLMs (Qwen2.5-VL 7B for Qwen-Image and LongCat-Image, Qwen3 4B for Z-Image and 1.7B for
Ovis-Image, Gemma-2 2B for Lumina Image 2.0, Qwen3-VL 8B for Qwen-Image 2.1 and 4B for Krea 2 and FLUX.3, Ministral 3
3B for ERNIE-Image) whose weights Marble cannot ship. So a model of these families takes its text encoder, tokenizer and
VAE from a folder: the model's own diffusers folder, or, for a single transformer file, the folder the user names
(`--text-encoders FOLDER`): a diffusers folder of the family, or any folder holding `text_encoder/`, `tokenizer/`
(Qwen-Image 2.1: `processor/`) and `vae/` in diffusers' form. The scheduler comes from that folder when it has one,
else from the shipped config (resources/configs/).
(A transformer file of most of them with its encoder and VAE from the library instead needs no folder:
qwen_encoders.py, with the shipped tokenizer. Gemma's tokenizer cannot ship, so Lumina always takes a folder.)

torch/diffusers/transformers are imported inside the functions (pyproject's import-linter list).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from desktop.engine.backends import families_flux3 as flux3
from desktop.engine.backends import families_krea2 as krea2
from desktop.engine.backends import families_longcat as longcat
from desktop.engine.backends import families_ovis as ovis
from desktop.engine.backends import families_qwen21 as qwen21
from desktop.engine.backends import families_qwen_edit as qwen_edit
from desktop.engine.errors import ModelError
from desktop.engine.library import dit_ernie, dit_flux3, dit_krea2, dit_longcat, dit_ovis
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_ernie import ERNIE_IMAGE
from desktop.engine.library.dit_flux3 import FLUX3
from desktop.engine.library.dit_krea2 import KREA2
from desktop.engine.library.dit_longcat import LONGCAT
from desktop.engine.library.dit_ovis import OVIS
from desktop.engine.library.dit_qwen_zimage import LABELS, LUMINA2, QWEN_IMAGE, QWEN_IMAGE_21, Z_IMAGE
from desktop.engine.request import GenerationRequest
from desktop.engine.safe_files import read_json_file
from desktop.engine.terminal_text import library_error

FAMILIES = (QWEN_IMAGE, Z_IMAGE, LUMINA2, QWEN_IMAGE_21, KREA2, ERNIE_IMAGE, LONGCAT, OVIS, FLUX3)
_LABELS = {**LABELS, **dit_krea2.LABELS, **dit_ernie.LABELS, **dit_longcat.LABELS, **dit_ovis.LABELS,
           **dit_flux3.LABELS}
# Qwen-Image's and Z-Image's pipelines read up to 512 prompt tokens (their default); nothing is cut into
# 77-token chunks. Lumina Image 2.0's reads 256 (its pipeline's default, as its makers' inference code).
MAX_SEQUENCE = 512
LUMINA2_SEQUENCE = 256
# The prompt length a family's pipeline reads without taking it as an argument (for the long-prompt note).
SEQUENCE_LIMITS = {LONGCAT: 512}
# Ovis-Image's pipeline reads 256 prompt tokens (its default and its makers').
OVIS_SEQUENCE = 256
# Where Lumina's text joins its system prompt and the prompt (diffusers' pipeline and ComfyUI's workflows alike).
PROMPT_START = "<Prompt Start>"
# Qwen's own examples pass a blank negative prompt so that true CFG runs without a user negative.
_QWEN_BLANK_NEGATIVE = " "
_TEXT_ENCODER_NAMES = {QWEN_IMAGE: "the Qwen2.5-VL 7B text encoder", Z_IMAGE: "the Qwen3 4B text encoder",
                       LUMINA2: "the Gemma-2 2B text encoder", QWEN_IMAGE_21: "the Qwen3-VL 8B text encoder",
                       KREA2: "the Qwen3-VL 4B text encoder",
                       ERNIE_IMAGE: "the Ministral 3 3B text encoder",
                       LONGCAT: "the Qwen2.5-VL 7B text encoder",
                       OVIS: "the Ovis 2.5 text encoder (a Qwen3 1.7B)",
                       FLUX3: "the Qwen3-VL text encoder"}  # fmt: skip
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
# (text_encoder/config.json's model_type, vae/config.json's _class_name) each family's pipeline loads.
_EXPECTED_PARTS = {QWEN_IMAGE: ("qwen2_5_vl", "AutoencoderKLQwenImage"), Z_IMAGE: ("qwen3", "AutoencoderKL"),
                   LUMINA2: ("gemma2", "AutoencoderKL"),
                   QWEN_IMAGE_21: ("qwen3_vl", "AutoencoderKLQwenImage21"),
                   KREA2: ("qwen3_vl", "AutoencoderKLQwenImage"),
                   ERNIE_IMAGE: ("mistral3", "AutoencoderKLFlux2"),
                   LONGCAT: ("qwen2_5_vl", "AutoencoderKL"), OVIS: ("qwen3", "AutoencoderKL"),
                   FLUX3: ("qwen3_vl", "AutoencoderKLFlux2")}  # fmt: skip
# Qwen-Image 2.1's pipeline reads its prompt through Qwen3-VL's processor (tokenizer, image and video
# processors and chat template in one folder, `processor/`), not through a bare tokenizer.
_PROCESSOR = {QWEN_IMAGE_21: qwen21.PROCESSOR}
# diffusers' and transformers' classes of each family: pipeline, transformer, text encoder, VAE.
_CLASSES = {
    QWEN_IMAGE: ("QwenImagePipeline", "QwenImageTransformer2DModel", "Qwen2_5_VLForConditionalGeneration",
                 "AutoencoderKLQwenImage"),
    Z_IMAGE: ("ZImagePipeline", "ZImageTransformer2DModel", "Qwen3Model", "AutoencoderKL"),
    LUMINA2: ("Lumina2Pipeline", "Lumina2Transformer2DModel", "Gemma2Model", "AutoencoderKL"),
    QWEN_IMAGE_21: ("QwenImage21Pipeline", "QwenImage21Transformer2DModel", "Qwen3VLForConditionalGeneration",
                    "AutoencoderKLQwenImage21"),
    KREA2: ("Krea2Pipeline", "Krea2Transformer2DModel", "Qwen3VLModel", "AutoencoderKLQwenImage"),
    ERNIE_IMAGE: ("ErnieImagePipeline", "ErnieImageTransformer2DModel", "Mistral3Model", "AutoencoderKLFlux2"),
    LONGCAT: ("LongCatImagePipeline", "LongCatImageTransformer2DModel", "Qwen2_5_VLForConditionalGeneration",
              "AutoencoderKL"),
    OVIS: ("OvisImagePipeline", "OvisImageTransformer2DModel", "Qwen3Model", "AutoencoderKL"),
    FLUX3: ("Flux3Pipeline", "Flux3Transformer2DModel", "Qwen3VLForConditionalGeneration", "AutoencoderKLFlux2"),
}  # fmt: skip


def pipeline_class(family: str) -> Any:
    import diffusers

    if family == LONGCAT:  # diffusers' with a step callback and LoRAs (families_longcat.py)
        return longcat.pipeline_class()
    if family == OVIS:  # diffusers' with LoRAs (families_ovis.py)
        return ovis.pipeline_class()
    if family == FLUX3:  # Marble's own (families_flux3.py)
        return flux3.pipeline_class()
    return getattr(diffusers, _CLASSES[family][0])


def transformer_class(family: str) -> Any:
    import diffusers

    if family == LONGCAT:  # loadable from a state dict in its own names (single_file_entry.py)
        return longcat.transformer_class()
    if family == OVIS:
        return ovis.transformer_class()
    if family == FLUX3:
        return flux3.transformer_class()
    return getattr(diffusers, _CLASSES[family][1])


def _text_encoder_class(family: str) -> Any:
    import transformers

    return getattr(transformers, _CLASSES[family][2])


def _vae_class(family: str) -> Any:
    import diffusers

    return getattr(diffusers, _CLASSES[family][3])


def _label(family: str) -> str:
    return _LABELS[family]


def needs_folder_error(name: str, info: DitInfo) -> ModelError:
    label = _label(info.family)
    return ModelError(
        f"{name} holds the {info.label} transformer only. {label} also needs {_TEXT_ENCODER_NAMES[info.family]}, "
        f"its tokenizer and its VAE, which Marble cannot ship: pass --text-encoders FOLDER, a diffusers {label} "
        f"folder or a folder holding text_encoder/, {_tokenizer_folder(info.family)}/ and vae/."
    )


def check_components(folder: Path, family: str, *, name: str, text_width: int | None = None) -> None:
    """Refuse, naming what is missing, a folder that lacks the text encoder, tokenizer or VAE, or holds another
    family's; `text_width`: the width the transformer reads the encoder's hidden states at, where a folder of another
    model can pass the kind check (ERNIE-Image's Ministral 3 3B, 3072 wide; Flux.2 dev's Mistral Small, 5120)."""
    label = _label(family)
    missing = []
    if not (folder / "text_encoder" / "config.json").is_file():
        missing.append(f"text_encoder/ ({_TEXT_ENCODER_NAMES[family]})")
    tokenizer = _tokenizer_folder(family)
    if not any((folder / tokenizer / file).is_file() for file in _TOKENIZER_FILES):
        missing.append(f"{tokenizer}/ (tokenizer.json, or vocab.json and merges.txt)")
    if not (folder / "vae" / "config.json").is_file():
        missing.append(f"vae/ (the {label} VAE)")
    if missing:
        raise ModelError(
            f"{folder} cannot serve {name}: it has no {', no '.join(missing)}. {label} needs a diffusers "
            f"{label} folder, or a folder holding text_encoder/, {tokenizer}/ and vae/."
        )
    # A folder of the other family would load with the wrong classes, half its weights left random.
    encoder = read_json_file(folder / "text_encoder" / "config.json", label=f"text_encoder/config.json in {folder}")
    vae = read_json_file(folder / "vae" / "config.json", label=f"vae/config.json in {folder}")
    found = (encoder.get("model_type") if isinstance(encoder, dict) else None,
             vae.get("_class_name") if isinstance(vae, dict) else None)  # fmt: skip
    if found != _EXPECTED_PARTS[family]:
        raise ModelError(
            f"{folder} cannot serve {name}: its text encoder and VAE are {found[0]} and {found[1]}, but {label} "
            f"needs {_TEXT_ENCODER_NAMES[family]} ({_EXPECTED_PARTS[family][0]}) and {_EXPECTED_PARTS[family][1]}."
        )
    text = encoder.get("text_config", encoder) if isinstance(encoder, dict) else {}
    width = text.get("hidden_size") if isinstance(text, dict) else None
    if text_width is not None and isinstance(width, int) and width != text_width:
        raise ModelError(
            f"{folder} cannot serve {name}: its text encoder is {width} wide, but the {label} transformer reads "
            f"{text_width} ({_TEXT_ENCODER_NAMES[family]}): it is another model's folder."
        )


# Where a transformer config says the width it reads its text encoder at, for the families whose encoder folder
# another model's could pass for (text_width).
_TEXT_WIDTH_FIELDS = {ERNIE_IMAGE: "text_in_dim", LONGCAT: "joint_attention_dim", OVIS: "joint_attention_dim",
                      Z_IMAGE: "cap_feat_dim"}  # fmt: skip


def text_width(config: Path, family: str) -> int | None:
    """The width at which the transformer of `config` (a config folder) reads its text encoder, where a folder of
    another model could otherwise pass for one of `family`'s (ERNIE-Image's `text_in_dim`: Flux.2 dev's Mistral;
    LongCat-Image's `joint_attention_dim`: a Qwen2.5-VL 3B beside Flux's VAE; Ovis-Image's and Z-Image's: each other's
    Qwen3 beside Flux's VAE); None elsewhere."""
    field = _TEXT_WIDTH_FIELDS.get(family)
    if field is None:
        return None
    expected = read_json_file(config / "transformer" / "config.json", label=f"transformer/config.json in {config}")
    width = expected.get(field) if isinstance(expected, dict) else None
    return width if isinstance(width, int) else None


def assemble(
    folder: Path, info: DitInfo, *, name: str, dtype: Any, shipped: Path, transformer: Any | None = None
) -> Any:
    """The pipeline from `folder`'s text encoder, tokenizer, VAE (and scheduler, else `shipped`'s), with
    `transformer` or, when None, the folder's own."""
    import diffusers

    check_components(folder, info.family, name=name)
    edit = qwen_edit.is_edit(info)
    if edit:
        qwen_edit.check_components(folder, info, name=name)
    scheduler_folder = folder if (folder / "scheduler" / "scheduler_config.json").is_file() else shipped
    try:
        if transformer is None:
            transformer = transformer_class(info.family).from_pretrained(
                str(folder / "transformer"), dtype=dtype, local_files_only=True, use_safetensors=True
            )
        if info.family == FLUX3:  # its width is the transformer's (a file's config comes from its tensors)
            check_components(folder, info.family, name=name, text_width=flux3.text_width(dict(transformer.config)))
        parts = {
            "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                str(scheduler_folder / "scheduler"), local_files_only=True
            ),
            "text_encoder": _text_encoder_class(info.family).from_pretrained(
                str(folder / "text_encoder"), dtype=dtype, local_files_only=True, use_safetensors=True
            ),
            **_reader(folder, info.family),
            "vae": _vae_class(info.family).from_pretrained(
                str(folder / "vae"), dtype=dtype, local_files_only=True, use_safetensors=True
            ),
        }
        if edit:
            parts[qwen_edit.processor_slot(info)] = qwen_edit.load_processor(folder, info)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        raise ModelError(f"Could not load {name!r} with the components in {folder}: {library_error(error)}") from error
    cls = qwen_edit.pipeline_class(info) if edit else pipeline_class(info.family)
    # The pipeline's settings the folder's model_index.json holds (a Turbo folder's fixed schedule or distilled
    # flag, Krea 2's encoder layers): from_pretrained would pass them, so the constructor gets them too.
    # A Krea 2 file the user marked Turbo runs distilled with any folder (families_krea2.variant_settings).
    settings = pipeline_settings(folder, cls) | krea2.variant_settings(info)
    return cls(transformer=transformer, **parts, **settings)


def pipeline_settings(folder: Path, cls: Any) -> dict[str, Any]:
    """The entries of `folder`'s model_index.json that are `cls`'s settings rather than its components (whose
    entries are [library, class] pairs) or diffusers' own bookkeeping (`_class_name` ...)."""
    import inspect

    try:
        index = read_json_file(folder / "model_index.json", label=f"model_index.json in {folder}")
    except (ModelError, OSError, ValueError):
        return {}
    accepted = inspect.signature(cls.__init__).parameters
    if not isinstance(index, dict):
        return {}
    return {
        key: value for key, value in index.items()
        if key in accepted and not key.startswith("_") and not (isinstance(value, list) and len(value) == 2
                                                                and all(isinstance(v, str | None) for v in value))
    }  # fmt: skip


def _tokenizer_folder(family: str) -> str:
    return _PROCESSOR.get(family, "tokenizer")


def _reader(folder: Path, family: str) -> dict[str, Any]:
    """The pipeline's prompt reader from `folder`: a processor (Qwen-Image 2.1) or a tokenizer."""
    import transformers

    if family in _PROCESSOR:
        return {qwen21.PROCESSOR: qwen21.load_processor(folder / qwen21.PROCESSOR)}
    return {"tokenizer": transformers.AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)}


def check_blocks(info: DitInfo, expected: dict[str, Any], *, name: str) -> None:
    """A file whose last block(s) are missing passes detection (the indices stay contiguous): compare the
    counts with the configuration's before loading."""
    if "num_single_layers" in expected:  # LongCat-Image, Ovis-Image: Flux's double- and single-stream blocks
        wanted, kinds = (expected.get("num_layers"), expected["num_single_layers"]), ("double", "single")
    else:
        wanted = (expected.get("num_layers", expected.get("n_layers")),
                  expected.get("n_refiner_layers", expected.get("num_refiner_layers", 0)))  # fmt: skip
        kinds = ("main", "refiner")
    for found, want, kind in zip(info.blocks, wanted, kinds, strict=True):
        if isinstance(want, int) and found != want:
            raise ModelError(
                f"{name} has {found} {kind} blocks but the {info.label} configuration has {want}: the file is "
                "incomplete, or a variant with other dimensions (pass its diffusers config folder)."
            )


def generation_arguments(request: GenerationRequest, info: DitInfo) -> dict[str, Any]:
    """Qwen-Image: true CFG (`true_cfg_scale`) against the negative prompt (a blank one by default, as
    Qwen's examples do). Z-Image and Lumina Image 2.0: their own CFG (`guidance_scale`; 0 or 1 for Z-Image
    Turbo turns it off). Lumina's pipeline puts its makers' system prompt before the prompt itself."""
    length = LUMINA2_SEQUENCE if info.family == LUMINA2 else MAX_SEQUENCE
    arguments: dict[str, Any] = {"prompt": request.prompt, "max_sequence_length": length}
    if info.family == LUMINA2 and PROMPT_START in request.prompt:
        # ComfyUI's Lumina prompts carry their system prompt themselves ("You are an assistant ... <Prompt Start>
        # 1girl, ..."; Neta Lumina's model card asks for its own): it replaces the pipeline's, which would
        # otherwise be put before it a second time.
        system, _, prompt = request.prompt.partition(PROMPT_START)
        arguments |= {"prompt": prompt.strip(), "system_prompt": system.strip()}
    if info.family == KREA2:
        # Its pipeline's guidance is the step beyond the conditional prediction (cond + g (cond - uncond)): A1111's
        # CFG scale less one. 1 and below run without CFG (Turbo), the negative prompt then unused.
        guidance = max(float(request.cfg_scale) - 1.0, 0.0)
        return {"prompt": request.prompt, "max_sequence_length": MAX_SEQUENCE, "guidance_scale": guidance,
                "negative_prompt": (request.negative_prompt or None) if guidance > 0 else None}  # fmt: skip
    if info.family == ERNIE_IMAGE:
        # The prompt whole (no sequence limit); CFG above 1 against the negative prompt, blank when none is given (its
        # pipeline's default). Its prompt enhancer (a 3B LLM that rewrites the prompt by sampling) is never loaded:
        # a picture follows from its prompt and seed.
        return {"prompt": request.prompt, "negative_prompt": request.negative_prompt or "",
                "guidance_scale": float(request.cfg_scale), "use_pe": False}  # fmt: skip
    if info.family == LONGCAT:
        # Its pipeline reads the prompt's first 512 tokens (SEQUENCE_LIMITS), quoted text letter by letter; CFG above 1
        # against the negative prompt, blank when none is given (its pipeline's default), renormalised as Meituan's
        # settings do (the pipeline's default). Its prompt rewriter (the text encoder writing a new prompt by
        # sampling) never runs: a picture follows from its prompt and seed.
        # (LongCat-Image-Edit's pipeline has no rewriter.)
        arguments = {"prompt": request.prompt, "negative_prompt": request.negative_prompt or "",
                     "guidance_scale": float(request.cfg_scale)}  # fmt: skip
        return arguments if qwen_edit.is_edit(info) else arguments | {"enable_prompt_rewrite": False}
    if info.family == FLUX3:
        return flux3.generation_arguments(request, info.variant == dit_flux3.DISTILLED)
    if info.family == OVIS:
        # Its makers' system prompt before the prompt (the pipeline's own), 256 tokens of it read; CFG above 1 against
        # the negative prompt, blank when none is given (the pipeline's default).
        return {"prompt": request.prompt, "negative_prompt": request.negative_prompt or "",
                "guidance_scale": float(request.cfg_scale), "max_sequence_length": OVIS_SEQUENCE}  # fmt: skip
    if info.family == QWEN_IMAGE_21:
        # No sequence limit (the processor reads the prompt whole). Qwen recommends no guidance (CFG 1); above 1
        # true CFG runs against the negative prompt, blank when none is given, as for Qwen-Image.
        # Condition images are shown at the job's pixel count (the pipeline's `output_resolution`, a side).
        arguments = {"prompt": request.prompt, "output_resolution": round(math.sqrt(request.width * request.height))}
        if request.cfg_scale <= 1:
            return arguments
        return arguments | {"negative_prompt": request.negative_prompt or _QWEN_BLANK_NEGATIVE,
                            "true_cfg_scale": float(request.cfg_scale)}  # fmt: skip
    if info.family == QWEN_IMAGE:
        return arguments | {
            "negative_prompt": request.negative_prompt or _QWEN_BLANK_NEGATIVE,
            "true_cfg_scale": float(request.cfg_scale),
        }
    return arguments | {"negative_prompt": request.negative_prompt or None, "guidance_scale": float(request.cfg_scale)}


