"""A transformer-only Qwen-Image / Z-Image / Flux.2 / Lumina Image 2.0 / Krea 2 / ERNIE-Image / FLUX.3 file run with
its LLM text encoder and VAE from the library.

The encoder file (library/encoder_qwen.py says what it holds) is built into transformers' class from the
model's config folder (resources/configs/<family>/text_encoder, or --config) and loaded strictly, as
encoder_components.py does for CLIP and T5. The tokenizer (and Qwen-Image-Edit's image processor) is
Marble's shipped copy, resources/tokenizers/qwen (Qwen's byte-level BPE, the same vocabulary and merges in
Qwen2.5-VL and Qwen3, with Qwen3's chat template, which Z-Image reads). A folder the user points Marble
at (`--tokenizer-folder`: the model's diffusers folder, its tokenizer/ folder, or the Qwen repository the
encoder came from) takes its place. Flux.2 dev's Mistral encoder (backends/mistral_encoder.py) brings its
own tokenizer inside ComfyUI's file (backends/tekken_tokenizer.py), or takes FLUX.2-dev's from that folder;
ERNIE-Image's Ministral 3 likewise (the file's, else ERNIE-Image's tokenizer/ folder).
Lumina's Gemma-2 (Gemma2Model, the file's `model.` level dropped) takes its tokenizer from that folder only:
Gemma's cannot ship, and the SentencePiece model inside ComfyUI's file is not read.

Runs on the generation thread; torch, diffusers and transformers are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.library.dit import DitInfo
from desktop.engine.library.dit_ernie import ERNIE_IMAGE
from desktop.engine.library.dit_flux2 import FLUX2
from desktop.engine.library.dit_flux3 import FLUX3
from desktop.engine.library.dit_krea2 import KREA2
from desktop.engine.library.dit_qwen_zimage import LUMINA2, QWEN_IMAGE, QWEN_IMAGE_21
from desktop.engine.library.encoder import EncoderInfo
from desktop.engine.library.encoder_qwen import GEMMA2, LLAMA3, QWEN3, QWEN3VL, QWEN25_VL, SPIECE_TENSOR
from desktop.engine.safe_files import read_json_file
from desktop.engine.terminal_text import library_error

KINDS = (QWEN25_VL, QWEN3, GEMMA2, QWEN3VL, LLAMA3)
# Flux.2 Klein's text-encoder class (Z-Image's is Qwen3Model): the same Qwen3 files serve both.
CAUSAL_QWEN3 = "Qwen3ForCausalLM"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_PROCESSOR_CONFIG = "preprocessor_config.json"
# Where each family's tokenizer can be found, for the message when a given folder holds none.
_TOKENIZER_SOURCES = {
    QWEN_IMAGE: "the tokenizer/ folder of Qwen/Qwen-Image (or the Qwen/Qwen2.5-VL-7B-Instruct repository)",
    "z-image": "the tokenizer/ folder of Tongyi-MAI/Z-Image-Turbo (or the Qwen/Qwen3-4B repository)",
    FLUX2: "the tokenizer/ folder of black-forest-labs/FLUX.2-klein-4B (or the Qwen/Qwen3-4B repository)",
    LUMINA2: "the tokenizer/ folder of Alpha-VLLM/Lumina-Image-2.0 (or the google/gemma-2-2b repository)",
    ERNIE_IMAGE: "the tokenizer/ folder of baidu/ERNIE-Image (or the mistralai/Ministral-3-3B-Instruct-2512 "
    "repository)",
    FLUX3: "the tokenizer/ folder of a diffusers FLUX.3 folder (or the Qwen/Qwen3-VL-4B-Instruct repository)",
    QWEN_IMAGE_21: "the processor/ folder of Qwen/Qwen-Image-2.1 (or the Qwen/Qwen3-VL-8B-Instruct repository)",
}
# Marble's own copy under resources/tokenizers/ (its LICENSE-NOTE says what it is and where it comes from).
SHIPPED_FOLDER = "qwen"


def model_names(state: dict[str, Any], kind: str, class_name: str = "", *, whole: bool = False) -> dict[str, Any]:
    """A file's tensors under the names of transformers' class `class_name`: Qwen3Model (Z-Image) holds no
    `model.` level (and no lm_head), Qwen3ForCausalLM (Flux.2 Klein) both; Qwen2_5_VLForConditionalGeneration
    and Qwen3VLForConditionalGeneration (a `whole` Qwen3-VL) hold `model.language_model.*` and `model.visual.*`."""
    if (kind == QWEN3 and class_name == CAUSAL_QWEN3) or kind == LLAMA3:  # LlamaForCausalLM's names are these too
        return {key if key == "lm_head.weight" or key.startswith("model.") else f"model.{key}": value
                for key, value in state.items()}  # fmt: skip
    if kind == QWEN3VL and not whole:
        # Its language model alone (Qwen3VLTextModel: what Krea 2 reads, the vision tower never run), under
        # transformers' names (`model.language_model.*`) or ComfyUI's older ones (`model.*` beside `visual.*`).
        return {key.removeprefix("model.").removeprefix("language_model."): value for key, value in state.items()
                if not key.startswith(("visual.", "model.visual.", "lm_head."))}  # fmt: skip
    if kind in (QWEN3, GEMMA2):  # Qwen3Model, Gemma2Model: no `model.` level, no head, no carried tokenizer
        return {key.removeprefix("model."): value for key, value in state.items()
                if key not in ("lm_head.weight", SPIECE_TENSOR)}  # fmt: skip
    renamed = {}
    for key, value in state.items():
        if key.startswith("visual."):
            key = "model." + key
        elif key.startswith("model.") and not key.startswith(("model.language_model.", "model.visual.")):
            key = "model.language_model." + key.removeprefix("model.")
        renamed[key] = value
    return renamed


def fill_unused(model: Any, state: dict[str, Any], info: EncoderInfo, own: dict[str, Any], dtype: Any) -> set[str]:
    """The model's tensors a file may leave out, made here; returns their names.

    Qwen-Image and Flux.2 Klein read the hidden states, never the logits: a missing lm_head shares the
    embedding (no memory). A text-only file has no vision tower, which only Qwen-Image-Edit uses (refused
    there, before this): it is made as zeros so the model is whole."""
    import torch

    made: set[str] = set()
    if "lm_head.weight" not in state and "lm_head.weight" in own:
        made.add("lm_head.weight")
    if info.kind != QWEN25_VL:
        return made
    if not any(key.startswith("model.visual.") for key in state):
        visual = model.model.visual
        visual.to(dtype)  # still on the meta device: the zeros are then made at the job's dtype, not float32
        visual.to_empty(device="cpu")
        with torch.no_grad():
            for tensor in (*visual.parameters(), *visual.buffers()):
                if tensor.is_floating_point():
                    tensor.zero_()
        made |= {key for key in own if key.startswith("model.visual.")}
    return made


def tie_head(model: Any, made: set[str]) -> None:
    if "lm_head.weight" in made:
        model.lm_head.weight = model.get_input_embeddings().weight


def check_vision(info: DitInfo, encoder: EncoderInfo, shown: str, *, name: str) -> None:
    """Qwen-Image-Edit shows the source image to the encoder's vision tower: a text-only file cannot serve."""
    if encoder.kind == QWEN25_VL and not encoder.vision:
        raise ModelError(
            f"The text encoder {shown} is the text-only Qwen2.5-VL (no visual.* weights), but {name} is a "
            f"{info.label} model, which shows the source image to the encoder's vision tower. Import the full "
            "file (ComfyUI's qwen_2.5_vl_7b.safetensors holds it)."
        )


def tokenizer_parts(folder: Path | None, info: DitInfo, *, name: str, edit: bool, shipped: Path) -> dict[str, Any]:
    """The tokenizer (and for an Edit model the processor) from the user's tokenizer folder: the folder
    itself, or its tokenizer/ and processor/ subfolders (a diffusers folder of the family); with no folder,
    from `shipped` (resources/tokenizers/qwen), which holds both."""
    import transformers

    source = _TOKENIZER_SOURCES.get(info.family, "the model's diffusers folder")
    needed = "tokenizer.json (or vocab.json and merges.txt) with tokenizer_config.json"
    if folder is None and info.family == LUMINA2:
        raise ModelError(
            f"{name} runs with its Gemma-2 text encoder from the library, whose tokenizer Marble cannot ship: point "
            f"--tokenizer-folder (in the window: Settings, Tokenizer folder) at {source}."
        )
    chosen = folder if folder is not None else shipped
    tokenizer_dir = _holding(chosen, "tokenizer", TOKENIZER_FILES)
    if tokenizer_dir is None:
        if folder is None:
            raise ModelError(
                f"Marble's Qwen tokenizer is missing from {shipped}. Reinstall Marble Studio to restore it."
            )
        raise ModelError(
            f"{name} runs with its text encoder from the library, and the tokenizer folder {folder} holds no "
            f"{needed}. Point --tokenizer-folder (in the window: Settings, Tokenizer folder) at a folder holding "
            f"them, such as {source}"
            + ("." if info.family == LUMINA2 else ", or leave it empty for Marble's own Qwen tokenizer.")
        )
    parts: dict[str, Any] = {}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        if not edit:
            parts["tokenizer"] = tokenizer
        else:
            from desktop.engine.backends import families_qwen_edit as qwen_edit

            processor_dir = qwen_edit.processor_folder(chosen, info)
            if processor_dir is None:
                raise ModelError(
                    f"{name} is a {info.label} model: it needs the Qwen2VL image processor too, and {folder} holds "
                    f"no {_PROCESSOR_CONFIG} (nor its processor folder). Point --tokenizer-folder at the model's "
                    f"diffusers folder ({qwen_edit.edit_source(info)}), or leave it empty for Marble's own."
                )
            images = transformers.Qwen2VLImageProcessorPil.from_pretrained(str(processor_dir), local_files_only=True)
            parts["tokenizer"] = tokenizer
            parts[qwen_edit.processor_slot(info)] = qwen_edit.image_only_processor(images, tokenizer)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"The tokenizer in {tokenizer_dir} does not load: {library_error(error)}") from error
    if info.family not in (QWEN_IMAGE, LUMINA2) and not getattr(tokenizer, "chat_template", None):
        # Z-Image wraps the prompt in Qwen3's chat template, which tokenizer_config.json (or
        # chat_template.jinja) carries.
        raise ModelError(
            f"The tokenizer in {tokenizer_dir} has no chat template, which {info.label} needs: use the folder with "
            f"its tokenizer_config.json (or chat_template.jinja), such as {source}."
        )
    return parts


def check_vocabulary(tokenizer: Any, encoder_config: Path, shown: str, *, name: str) -> None:
    """Refuse, before the slow load, a tokenizer whose ids run past the encoder's embedding rows (a
    tokenizer of another model): the first prompt would fail inside the embedding lookup."""
    config = read_json_file(encoder_config / "config.json", label=f"config.json in {encoder_config}")
    text = config.get("text_config") if isinstance(config, dict) else None
    rows = (text if isinstance(text, dict) and "vocab_size" in text else config).get("vocab_size")
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise ModelError(
            f"The tokenizer for {name} has {len(tokenizer):,} tokens, but its text encoder {shown} has only "
            f"{rows:,} embedding rows: they belong to different models. Point --tokenizer-folder (in the window: "
            "Settings, Tokenizer folder) at the tokenizer that came with this encoder."
        )


def _holding(folder: Path, sub: str, files: tuple[str, ...]) -> Path | None:
    for candidate in (folder / sub, folder):
        if any((candidate / file).is_file() for file in files):
            return candidate
    return None


def assemble(
    info: DitInfo,
    config: Path,
    parts: Any,
    *,
    name: str,
    dtype: Any,
    tokenizer_folder: Path | None,
    shipped_tokenizer: Path,
    load_transformer: Any,
) -> Any:
    """The family's pipeline from the chosen library encoder and VAE (`parts`: families.LibraryParts), the
    tokenizer folder (else a whole diffusers --config folder's, else `shipped_tokenizer`) and the config
    folder; `load_transformer()` reads the transformer file, last (slow)."""
    import diffusers

    from desktop.engine.backends import encoder_components, mistral_encoder
    from desktop.engine.backends import families_flux2 as flux2
    from desktop.engine.backends import families_krea2 as krea2
    from desktop.engine.backends import families_qwen21 as qwen21
    from desktop.engine.backends import families_qwen_edit as qwen_edit
    from desktop.engine.backends import families_qwen_zimage as qwen_zimage

    # Everything that can be refused is checked before the slow loads: encoder kind, vision tower, VAE, tokenizer.
    if not (config / "text_encoder" / "config.json").is_file():
        raise ModelError(
            f"The config folder {config} has no text_encoder/config.json, which says how to build {name}'s library "
            "text encoder: leave out --config (Marble ships it), or use a diffusers folder of the family."
        )
    chosen = encoder_components.match_slots(config, parts.encoders, name)
    dev = info.family == FLUX2 and flux2.is_dev(info)
    if dev:
        for component, encoder in chosen.values():
            mistral_encoder.check_depth(encoder.layers, component.shown, name=name)
    edit = qwen_edit.is_edit(info)
    if edit:
        for component, encoder in chosen.values():
            check_vision(info, encoder, component.shown, name=name)
    if parts.vae is None:
        which = {QWEN_IMAGE: "qwen_image_vae.safetensors", KREA2: "Qwen-Image's qwen_image_vae.safetensors",
                 FLUX2: "the Flux.2 VAE, flux2-vae.safetensors",
                 ERNIE_IMAGE: "the Flux.2 VAE, flux2-vae.safetensors",
                 FLUX3: "the Flux.2 VAE, flux2-vae.safetensors",
                 QWEN_IMAGE_21: "the Qwen-Image 2.1 VAE, its folder's vae/diffusion_pytorch_model.safetensors",
                 }.get(  # fmt: skip
            info.family, "the Flux VAE, ae.safetensors"
        )
        raise ModelError(
            f"{name} holds the transformer only: choose its VAE too (--vae NAME from `marble vaes list`; for "
            f"{info.label}: {which})."
        )
    folder = tokenizer_folder or _config_tokenizer(config)
    processor = None
    if dev:
        component, _encoder = chosen["text_encoder"]
        pipeline_parts = {"tokenizer": flux2.library_tokenizer(folder, component.path, component.shown, name=name)}
    elif info.family == ERNIE_IMAGE:  # Ministral 3's tekken tokenizer, carried by the file or from the folder
        component, _encoder = chosen["text_encoder"]
        tokenizer = flux2.library_tokenizer(folder, component.path, component.shown, name=name, chat=False,
                                            source=_TOKENIZER_SOURCES[ERNIE_IMAGE])  # fmt: skip
        pipeline_parts = {"tokenizer": tokenizer}
    elif info.family == QWEN_IMAGE_21:  # Qwen3-VL's processor (tokenizer, image settings, chat template)
        processor = qwen21.library_processor(tokenizer_folder, config, shipped_tokenizer, info, name=name)
        pipeline_parts = {qwen21.PROCESSOR: processor}
    else:
        pipeline_parts = tokenizer_parts(folder, info, name=name, edit=edit, shipped=shipped_tokenizer)
    tokenizer = pipeline_parts["tokenizer"] if "tokenizer" in pipeline_parts else processor.tokenizer
    # Qwen-Image 2.1 shows its condition images to Qwen3-VL's vision tower: the encoder is built whole.
    whole = info.family == QWEN_IMAGE_21
    for slot, (component, encoder) in chosen.items():
        check_vocabulary(tokenizer, config / slot, component.shown, name=name)
        class_name = _class_name(config, slot)
        pipeline_parts[slot] = encoder_components.load_encoder(config / slot, class_name, component, encoder,
                                                               dtype=dtype, whole=whole)  # fmt: skip
    if info.family in (QWEN_IMAGE, KREA2, QWEN_IMAGE_21):  # Qwen-Image's VAE, or 2.1's
        pipeline_parts["vae"] = load_qwen_vae(config / "vae", parts.vae, model_name=name, dtype=dtype,
                                              qwen21=info.family == QWEN_IMAGE_21)  # fmt: skip
    else:
        pipeline_parts["vae"] = encoder_components.load_vae(config / "vae", parts.vae, model_name=name, dtype=dtype,
                                                            convert_ldm=parts.convert_ldm)  # fmt: skip
    pipeline_parts["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
        str(config / "scheduler"), local_files_only=True
    )
    if dev:
        return diffusers.Flux2Pipeline(transformer=load_transformer(), **pipeline_parts)
    if info.family == FLUX2:
        # A single file cannot say whether it is step-distilled: the CFG scale decides (families_flux2.py).
        return diffusers.Flux2KleinPipeline(transformer=load_transformer(), is_distilled=False, **pipeline_parts)
    cls = qwen_edit.pipeline_class(info) if edit else qwen_zimage.pipeline_class(info.family)
    # The settings the config folder's model_index.json holds (Krea 2's tapped layers, Turbo's distilled shift).
    settings = qwen_zimage.pipeline_settings(config, cls) | krea2.variant_settings(info)
    return cls(transformer=load_transformer(), **pipeline_parts, **settings)


def _config_tokenizer(config: Path) -> Path | None:
    # A --config folder that is a whole diffusers folder (or holds tokenizer/) serves as the tokenizer folder.
    return config if (config / "tokenizer").is_dir() else None


def _class_name(config: Path, slot: str) -> str:
    import json

    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    return str(index[slot][1])


def load_qwen_vae(config: Path, vae: Any, *, model_name: str, dtype: Any, qwen21: bool = False) -> Any:
    """Qwen-Image's AutoencoderKLQwenImage with the chosen library VAE's weights (Wan's names or diffusers'), or with
    `qwen21` Qwen-Image 2.1's AutoencoderKLQwenImage21 (diffusers' names: no converter from others exists)."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import load_file

    from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
    from desktop.engine.library.vae import WAN_LAYOUTS, inspect_vae

    label = f"The VAE {vae.shown}"
    kind = sniff_file_type(vae.path, label=label)
    if kind != "safetensors":
        raise ModelError(f"{label} is not a safetensors file ({kind}).")
    info = inspect_vae(read_safetensors_header(vae.path, name=label), label)
    wanted = "the Qwen-Image 2.1 VAE (vae/ of the Qwen/Qwen-Image-2.1 folder)" if qwen21 else \
        "the Qwen-Image VAE (qwen_image_vae.safetensors)"  # fmt: skip
    if info.layout not in WAN_LAYOUTS or info.qwen21 != qwen21:
        raise ModelError(f"{label} is a {info.label}; {model_name} decodes with {wanted}.")
    if qwen21 and info.layout != "wan-diffusers":
        raise ModelError(
            f"{label} holds the Qwen-Image 2.1 VAE in Wan's own names, which Marble cannot convert: import "
            "vae/diffusion_pytorch_model.safetensors from the Qwen/Qwen-Image-2.1 folder (diffusers' names) instead."
        )
    cls = diffusers.AutoencoderKLQwenImage21 if qwen21 else diffusers.AutoencoderKLQwenImage
    model = cls.from_config(cls.load_config(str(config)))
    tensors = load_file(str(vae.path))
    state = {key[len(info.prefix):]: value for key, value in tensors.items() if key.startswith(info.prefix)}
    if info.layout == "wan":
        state = convert_wan_vae_to_diffusers(state)  # diffusers' own map of Wan 2.1's names
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ModelError(f"{label} does not fit {model_name}: {first[1 if len(first) > 1 else 0][:200]}") from None
    return (model if model.dtype == dtype else model.to(dtype)).eval()
