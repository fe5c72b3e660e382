"""Flux.2 dev's Mistral text encoder, from a library file (safetensors or GGUF) or a diffusers folder: only
the part Flux.2 reads; and ERNIE-Image's Ministral 3 3B from a library file, its language model alone.

Flux2Pipeline reads hidden states 10, 20 and 30 of Mistral Small 3.x's language model (the outputs of
layers 9, 19 and 29) and never its logits, its last ten layers or its final norm (hidden state 30 of 40
comes before it). So Marble builds transformers' MistralModel (the language model Mistral3's pipeline
class wraps) with the first 30 layers and no final norm, from the text half of the config folder's
Mistral3 config, and loads only those layers: the same numbers as the whole 24B model for those hidden
states (tests/engine/test_flux2_dev_library.py compares with diffusers' pipeline around the whole model),
in three quarters of its memory. ComfyUI's files hold either all 40 layers or exactly these 30.

ErnieImagePipeline reads the second-to-last hidden state of Ministral 3 3B's language model (Ministral3Model:
Mistral's layers with YaRN positions and Llama 4's attention scaling), never its logits or final norm: built whole
from the text half of the config folder's Mistral3 config, without the final norm, the file's vision tower and
projector never read.

Runs on the generation thread; transformers and torch are imported inside the functions.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from desktop.engine.errors import ModelError
from desktop.engine.safe_files import read_json_file

# The deepest hidden state Flux.2 dev reads (Flux2Pipeline's text_encoder_out_layers, (10, 20, 30)).
READ_LAYERS = 30
MINISTRAL3 = "ministral3"  # ERNIE-Image's Ministral 3 3B language model (transformers' model type)
_LAYER = re.compile(r"layers\.(\d+)\.")


def settings(config: Path) -> Any:
    """The language model's config of `config`'s text encoder (a Mistral3 config's text half, or a Mistral
    config): Flux.2 dev's Mistral Small cut to the layers Flux.2 reads; ERNIE-Image's Ministral 3 whole (it reads
    the second-to-last hidden state, which the last layer and the final norm come after)."""
    import transformers

    loaded = transformers.AutoConfig.from_pretrained(str(config), local_files_only=True)
    text = getattr(loaded, "text_config", loaded)
    kind = getattr(text, "model_type", None)
    if kind == MINISTRAL3:
        return transformers.Ministral3Config.from_dict(text.to_dict())
    if kind != "mistral":
        raise ModelError(
            f"The text-encoder config in {config} is a {kind or 'unknown'!r} model, not Mistral: it cannot build "
            "Flux.2 dev's or ERNIE-Image's text encoder."
        )
    text = transformers.MistralConfig.from_dict(text.to_dict())
    text.num_hidden_layers = min(text.num_hidden_layers, READ_LAYERS)
    return text


def model_class(text: Any) -> Any:
    """transformers' class of the language model `text` (settings()) describes: Ministral 3's own (its YaRN
    positions and attention scaling) or Mistral's."""
    import transformers

    return transformers.Ministral3Model if text.model_type == MINISTRAL3 else transformers.MistralModel


def check_depth(layers: int, shown: str, *, name: str) -> None:
    """Refuse, before any load, a Mistral file with fewer layers than Flux.2 dev reads."""
    if layers < READ_LAYERS:
        raise ModelError(
            f"The text encoder {shown} holds {layers} layers, but {name} reads the first {READ_LAYERS} of Mistral "
            "Small's 40: the file is incomplete or another Mistral model."
        )


def _used(key: str, layers: int) -> bool:
    """Whether MistralModel of `layers` layers holds the tensor `key` (a file's name, its `model.` level cut):
    the embedding and those layers (with their scales and quantisation states); not the later layers, the final
    norm, nor a vision tower or projector kept under the same level."""
    match = _LAYER.match(key)
    return key.startswith("embed_tokens.") or (match is not None and int(match.group(1)) < layers)


def read_used(files: list[Path], prefixes: tuple[str, ...], layers: int) -> dict[str, Any]:
    """The tensors of the safetensors `files` under one of `prefixes` that MistralModel of `layers` layers
    uses, by their names without the prefix, read one by one: the later layers, the final norm, a vision
    tower and the tokenizer bytes are never read into memory (a whole bf16 file is 48 GB, a quarter unused)."""
    from safetensors import safe_open

    used = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                prefix = next((p for p in prefixes if key.startswith(p)), None)
                if prefix is not None and _used(key[len(prefix):], layers):
                    used[key[len(prefix):]] = handle.get_tensor(key)
    return used


def read_gguf(path: Path, text: Any) -> dict[str, Any]:
    """The used tensors of a Mistral GGUF in llama.cpp's names (blk.N.attn_q, ...), by MistralModel's names
    (`text`: its MistralConfig), q and k rows put back in Hugging Face's order.

    llama.cpp's converter permutes the rows of every Llama-family model's q and k projections (Mistral's
    among them) so that each head's two rotary halves interleave, the order its own rope reads; ComfyUI-GGUF
    undoes it at load, as this does. A quantised weight's rows are whole blocks, so its bytes move by row
    and stay packed. (The tokenizer in its metadata: tekken_tokenizer.gguf_tekken.)"""
    from desktop.engine.backends import gguf_layers
    from desktop.engine.library.encoder_qwen import gguf_name

    def keep(name: str) -> bool:
        return name.startswith("model.") and _used(name.removeprefix("model."), text.num_hidden_layers)

    state = {key.removeprefix("model."): value for key, value in gguf_layers.read_gguf(path, gguf_name, keep).items()}
    return rows_unpermuted(state, text)


def rows_unpermuted(state: dict[str, Any], text: Any) -> dict[str, Any]:
    """`state` (a Llama-family GGUF's tensors in Hugging Face's names, any prefix) with its q and k projections' rows
    in Hugging Face's order again (`text`: the model's config, for its query and key/value head counts)."""
    for key, value in state.items():
        if key.endswith("self_attn.q_proj.weight"):
            state[key] = _rows_unpermuted(value, text.num_attention_heads)
        elif key.endswith("self_attn.k_proj.weight"):
            state[key] = _rows_unpermuted(value, text.num_key_value_heads)
    return state


def _rows_unpermuted(weight: Any, heads: int) -> Any:
    """llama.cpp's q/k row order (each head's rotary halves interleaved) back to Hugging Face's (halves one
    after the other), for a plain tensor or a GGUF weight kept packed."""
    from desktop.engine.backends.gguf_layers import PackedWeight

    def unpermuted(rows: Any) -> Any:
        return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

    if isinstance(weight, PackedWeight):
        return PackedWeight(unpermuted(weight.blocks).contiguous(), weight.quant_type, weight.shape)
    return unpermuted(weight).contiguous()


# Where transformers saves Mistral3ForConditionalGeneration's language model: since 4.52, and before.
_FOLDER_PREFIXES = ("model.language_model.", "language_model.model.")


def from_folder(folder: Path, dtype: Any) -> Any | None:
    """MistralModel of the layers Flux.2 reads, from a diffusers text_encoder/ folder that holds a whole
    Mistral3ForConditionalGeneration in safetensors (13 GB less than the whole 24B model in bf16, and no
    vision tower); None when transformers should load the folder itself (quantised weights, other names)."""
    from accelerate import init_empty_weights
    from transformers import MistralModel

    config = read_json_file(folder / "config.json", label=f"config.json in {folder}")
    index = folder / "model.safetensors.index.json"
    if not isinstance(config, dict) or "quantization_config" in config:
        return None
    if index.is_file():
        listed = read_json_file(index, label=f"model.safetensors.index.json in {folder}")
        weight_map = listed.get("weight_map") if isinstance(listed, dict) else None
        if not isinstance(weight_map, dict):
            return None  # transformers' own loader says what is wrong with the folder
        files = sorted({folder / str(name) for name in weight_map.values()})
    else:
        files = [folder / "model.safetensors"]
    if not files or not all(file.is_file() for file in files):
        return None
    text = settings(folder)
    state = {key: value.to(dtype) for key, value in read_used(files, _FOLDER_PREFIXES, text.num_hidden_layers).items()}
    if not state:
        return None
    with init_empty_weights(include_buffers=False):
        model = without_final_norm(MistralModel(text))
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise ModelError(f"The text encoder in {folder} does not fit its config: {lines[-1][:200]}") from None
    return model.eval()


def without_final_norm(model: Any) -> Any:
    """`model` (MistralModel) with its final norm made the identity: hidden state 30 is then layer 29's
    output as the whole model's is, whichever way transformers collects the last hidden state."""
    import torch

    model.norm = torch.nn.Identity()
    return model
