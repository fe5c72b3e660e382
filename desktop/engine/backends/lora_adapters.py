"""LoRAs on a loaded pipeline, as diffusers/PEFT adapters, switched per job without reloading the model.

Imports no torch itself: it drives the pipeline's own adapter methods (`load_lora_weights`,
`set_adapters`, `disable_lora`, `delete_adapters`). Like the pipeline, it belongs to one thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from desktop.engine.backends import families_auraflow as auraflow
from desktop.engine.backends import families_ernie as ernie
from desktop.engine.backends import families_flux3 as flux3
from desktop.engine.backends import families_krea2 as krea2
from desktop.engine.backends import families_qwen21 as qwen21
from desktop.engine.backends import lora_forms
from desktop.engine.backends.base import AdapterHash
from desktop.engine.backends.lycoris import LycorisFile, LycorisMerger, RenameSgm, read_lycoris
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import autov3_hash, read_safetensors_header
from desktop.engine.library.dit_auraflow import AURAFLOW
from desktop.engine.library.dit_ernie import ERNIE_IMAGE
from desktop.engine.library.dit_flux3 import FLUX3
from desktop.engine.library.dit_hidream import HIDREAM
from desktop.engine.library.dit_krea2 import KREA2
from desktop.engine.library.dit_qwen_zimage import QWEN_IMAGE_21
from desktop.engine.library.dit_sana import SANA
from desktop.engine.library.lora import (
    AdapterCatalog,
    LoraInfo,
    ModelShape,
    check_lora_fits,
    merge_loras,
    split_lora_tags,
)
from desktop.engine.prompt_syntax import embedding_words
from desktop.engine.request import GenerationRequest
from desktop.engine.terminal_text import library_error

# Loaded adapters stay in memory between jobs (a switch back is then free); beyond this many, the
# least recently used ones not needed by the current job are dropped.
MAX_CACHED_ADAPTERS = 8


@dataclass(frozen=True)
class LoraPlan:
    """What one job runs with: the request as the encoder sees it, and what its metadata says."""

    request: GenerationRequest  # prompt without `<lora:...>` tags; `loras` = panel + tags, merged
    loras: tuple[AdapterHash, ...]  # each LoRA of the job, in the request's order
    notes: tuple[str, ...] = ()
    embeddings: tuple[AdapterHash, ...] = ()  # each embedding the prompts use


@dataclass(frozen=True)
class _Identity:
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _Identity:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns)

    @property
    def adapter_name(self) -> str:
        # Derived from the file, never from the user's name for it: adapter names become module keys.
        digest = hashlib.sha256(f"{self.path}|{self.size}|{self.mtime_ns}".encode()).hexdigest()[:16]
        return f"marble_{digest}"


class LoraAdapters:
    """Keeps the pipeline's adapters in step with each request's LoRAs."""

    def __init__(
        self,
        catalog: AdapterCatalog,
        max_cached: int = MAX_CACHED_ADAPTERS,
        embeddings: AdapterCatalog | None = None,
        rename_sgm: RenameSgm | None = None,
    ) -> None:
        self._catalog = catalog
        # LyCORIS files (LoHa, LoKr, (IA)3, full diff): merged into the weights, since diffusers cannot load them.
        self._lycoris = LycorisMerger(rename_sgm)
        self._lycoris_files: OrderedDict[_Identity, LycorisFile] = OrderedDict()
        self._embeddings = embeddings
        self._tokens: dict[str, _Identity] = {}  # embedding tokens added to the loaded pipeline's tokenizers
        self._max_cached = max(1, max_cached)
        self._loaded: OrderedDict[_Identity, str] = OrderedDict()  # identity -> adapter name, LRU order
        self._facts: dict[_Identity, tuple[LoraInfo, str]] = {}  # survives model switches: header + hash
        self._enabled = True

    @property
    def catalog(self) -> AdapterCatalog:
        return self._catalog

    @property
    def loaded_adapters(self) -> tuple[str, ...]:
        return tuple(self._loaded.values())

    def own_weights(self) -> dict[int, Any]:
        """id(parameter) -> the model's own value of each parameter a merged LyCORIS file changed."""
        return self._lycoris.originals()

    def forget(self) -> None:
        """The pipeline is gone (unloaded or replaced): its adapters went with it."""
        self._loaded.clear()
        self._tokens.clear()
        self._enabled = True
        self._lycoris.forget()

    def adapters_gone(self) -> None:
        """Every adapter was taken off the pipeline by someone else (a Flux.1 Control-LoRA's reset): they load again
        when asked."""
        self._loaded.clear()
        self._enabled = True

    def unload_all(self, pipe: Any) -> None:
        """Every LoRA adapter taken off the pipeline, its layers plain again (a Flux.1 Control-LoRA widens the input
        layer, which diffusers puts back only when no other adapter wraps it); they load again when asked."""
        if self._loaded:
            pipe.unload_lora_weights()
        self.adapters_gone()

    def apply(
        self, pipe: Any, request: GenerationRequest, shape: ModelShape, model_name: str, *, embeddings: bool = True,
        also_active: tuple[tuple[str, float], ...] = (),
    ) -> LoraPlan:
        """Load, weight and switch the job's LoRAs on `pipe`; `embeddings` False for pipelines (Flux, SD3)
        whose prompts take no textual-inversion embeddings. `also_active`: (adapter, weight) of adapters someone
        else loaded on the model for this job (a Flux.1 Control-LoRA), switched on with the job's: diffusers'
        set_adapters switches off every adapter it is not given."""
        prompt, tagged = split_lora_tags(request.prompt)
        negative, negative_tags = split_lora_tags(request.negative_prompt)
        notes = []
        if negative_tags:
            notes.append("LoRA tags in the negative prompt were removed and not applied.")
        refs = merge_loras(request.loras, tagged)
        # Resolve and check every LoRA before touching the pipeline: a bad name fails the job cleanly.
        chosen: list[tuple[str, _Identity, LoraInfo, Path, float]] = []
        hashes: list[AdapterHash] = []
        for ref in refs:
            entry = self._catalog.get(ref.name)
            identity = _Identity.of(entry.path)
            info, digest = self._facts_for(identity, entry)
            check_lora_fits(info, shape, entry.name, model_name)
            chosen.append((entry.name, identity, info, entry.path, float(ref.weight)))
            hashes.append(AdapterHash(entry.name, digest))

        merged = [item for item in chosen if item[2].algorithm != "lora"]
        chosen = [item for item in chosen if item[2].algorithm == "lora"]
        notes += self._merge_lycoris(pipe, merged)
        for name, identity, info, path, weight in chosen:
            if weight != 0 and identity not in self._loaded:
                self._load(pipe, name, identity, path, info)
        active = [(self._loaded[identity], weight) for _, identity, _, _, weight in chosen if weight != 0]
        for _, identity, *_ in chosen:
            if identity in self._loaded:
                self._loaded.move_to_end(identity)
        self._activate(pipe, active, also_active)
        self._evict(pipe, {identity for _, identity, *_ in chosen})
        cleaned = replace(request, prompt=prompt, negative_prompt=negative, loras=refs)
        embedding_hashes = (
            self._apply_embeddings(pipe, f"{prompt}\n{negative}", shape, model_name) if embeddings else ()
        )
        return LoraPlan(cleaned, tuple(hashes), tuple(notes), embedding_hashes)

    def _merge_lycoris(
        self, pipe: Any, merged: list[tuple[str, _Identity, LoraInfo, Path, float]]
    ) -> tuple[str, ...]:
        files = []
        for name, identity, _info, path, weight in merged:
            if weight == 0:
                continue
            lycoris = self._lycoris_files.get(identity)
            if lycoris is None:
                lycoris = read_lycoris(name, path)
                self._lycoris_files[identity] = lycoris
            self._lycoris_files.move_to_end(identity)
            files.append((identity, lycoris, weight))
        while len(self._lycoris_files) > self._max_cached:
            self._lycoris_files.popitem(last=False)
        return self._lycoris.apply(pipe, files)

    # --------------------------------------------------------------------------- embeddings

    def _apply_embeddings(
        self, pipe: Any, text: str, shape: ModelShape, model_name: str
    ) -> tuple[AdapterHash, ...]:
        """Load each library embedding whose name the prompts use as a word (A1111 behaviour)."""
        if self._embeddings is None:
            return ()
        used = []
        for entry in self._embeddings.entries():
            if not embedding_words([entry.name]).search(text):
                continue
            # A token stays in the tokenizer until the model is reloaded (tokenizers cannot drop added
            # tokens cleanly), so a file replaced on disk takes effect at the next model load.
            if entry.name not in self._tokens:
                self._load_embedding(pipe, entry.name, entry.path, shape, model_name)
                self._tokens[entry.name] = _Identity.of(entry.path)
            used.append(AdapterHash(entry.name, autov3_hash(entry.path)))
        return tuple(used)

    def _load_embedding(self, pipe: Any, name: str, path: Path, shape: ModelShape, model_name: str) -> None:
        from safetensors.torch import load_file  # torch is loaded already: this runs on the generation thread

        read_safetensors_header(path, name=path.name)  # a pickle, a FIFO, a damaged header: a clear refusal
        try:
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors' own error type is not an OSError
            raise ModelError(f"The embedding {name!r} cannot be read: {library_error(error)}") from error
        first, second = _embedding_vectors(tensors)
        if first is None:
            raise ModelError(f"{path.name} is not a textual-inversion embedding (no emb_params / clip_l tensors).")
        width = int(first.shape[-1])
        if width != shape.text_width or (second is not None and int(second.shape[-1]) != shape.text_width_2):
            raise ModelError(
                f"The embedding {name!r} does not fit {model_name}: its vectors have width {width}, the model's "
                f"text encoder {shape.text_width}. Use an embedding made for this kind of model."
            )
        if shape.text_width_2 is not None and second is None:
            raise ModelError(f"The embedding {name!r} has no vectors for SDXL's second text encoder.")
        try:
            pipe.load_textual_inversion(first.reshape(-1, width), token=name)
            if second is not None:
                pipe.load_textual_inversion(
                    second.reshape(-1, int(second.shape[-1])), token=name,
                    text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2,
                )  # fmt: skip
        except ValueError as error:
            raise ModelError(
                f"The embedding {name!r} could not be added: {library_error(error)} Rename it in the library."
            ) from error
        vectors = first.reshape(-1, width).shape[0]
        for tokenizer in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None) if second is not None else None):
            if tokenizer is not None:
                _match_whole_words(tokenizer, name, vectors)

    def _facts_for(self, identity: _Identity, entry: Any) -> tuple[LoraInfo, str]:
        facts = self._facts.get(identity)
        if facts is None:
            info = self._catalog.inspect(entry)
            facts = (info, autov3_hash(entry.path))
            self._facts[identity] = facts
        return facts

    def _load(self, pipe: Any, name: str, identity: _Identity, path: Path, info: LoraInfo) -> None:
        adapter = identity.adapter_name
        before = _adapter_count(pipe, adapter)
        try:
            with _without_text_model_alias(pipe), warnings.catch_warnings():
                # PEFT warns whenever a second adapter joins a model; several adapters is the point here.
                warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters")
                # use_safetensors: read as safetensors whatever the file is called, never through torch.load.
                pipe.load_lora_weights(_lora_source(pipe, path, info), adapter_name=adapter, use_safetensors=True)
        except (ValueError, KeyError, RuntimeError, TypeError, OSError, AssertionError) as error:
            # AssertionError: diffusers' kohya Flux conversion asserts the fused layers' widths.
            self._drop(pipe, adapter)
            raise ModelError(f"The LoRA {name!r} could not be applied to this model: {library_error(error)}") from error
        if _adapter_count(pipe, adapter) == before:
            # diffusers skips layers it cannot place with a log line only; say so instead of doing nothing.
            self._drop(pipe, adapter)
            raise ModelError(
                f"The LoRA {name!r} changed nothing: none of its layers match this model's layers. It was "
                "probably made for another base model."
            )
        self._loaded[identity] = adapter

    def _activate(
        self, pipe: Any, active: list[tuple[str, float]], also_active: tuple[tuple[str, float], ...] = ()
    ) -> None:
        if not self._loaded:
            return  # `also_active`'s owner switched its adapters on as it loaded them
        active = [*active, *also_active]
        if not active:
            # Disabled adapter layers call the base layer alone: exactly the image without any LoRA.
            if self._enabled:
                pipe.disable_lora()
                self._enabled = False
            return
        if not self._enabled:
            pipe.enable_lora()
            self._enabled = True
        pipe.set_adapters([name for name, _ in active], [weight for _, weight in active])

    def _evict(self, pipe: Any, keep: set[_Identity]) -> None:
        while len(self._loaded) > self._max_cached:
            oldest = next((identity for identity in self._loaded if identity not in keep), None)
            if oldest is None:
                return
            self._drop(pipe, self._loaded.pop(oldest))

    @staticmethod
    def _drop(pipe: Any, adapter: str) -> None:
        present = {name for names in pipe.get_list_adapters().values() for name in names}
        if adapter in present:
            pipe.delete_adapters([adapter])


@contextlib.contextmanager
def _without_text_model_alias(pipe: Any) -> Iterator[None]:
    """Hide the backend's clip-skip alias `text_encoder.text_model` while diffusers loads a LoRA.

    diffusers strips the `text_model.` prefix from LoRA keys only when the encoder has no `text_model`
    attribute (transformers 5 flattened CLIPTextModel); the alias would make it keep the prefix and
    find no layer.
    """
    hidden = []
    for attribute in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, attribute, None)
        if encoder is not None and encoder.__dict__.get("text_model") is encoder:
            del encoder.__dict__["text_model"]
            hidden.append(encoder)
    try:
        yield
    finally:
        for encoder in hidden:
            object.__setattr__(encoder, "text_model", encoder)


def _match_whole_words(tokenizer: Any, name: str, vectors: int) -> None:
    """Added tokens match anywhere in a word by default, so once an embedding is loaded "glowstyles"
    would read as the embedding "glowstyle" and an "s". As A1111 (which matches whole tokens) and
    `_apply_embeddings` do, only the name as a word of its own is the embedding: the same tokens,
    ids unchanged, added again as single words."""
    # The tokenizer's own AddedToken class (transformers' or the tokenizers library's), taken from a
    # token it holds, so that only the diffusers backend imports transformers.
    added = tokenizer.added_tokens_decoder
    token_id = tokenizer.convert_tokens_to_ids(name)
    if token_id not in added:
        return
    kind = type(added[token_id])
    names = [name] + [f"{name}_{index}" for index in range(1, vectors)]
    tokenizer.add_tokens([kind(token, single_word=True) for token in names])


def _embedding_vectors(tensors: dict[str, Any]) -> tuple[Any, Any]:
    """(vectors for the first text encoder, for SDXL's second or None) in the formats people share."""
    if "clip_l" in tensors:
        return tensors["clip_l"], tensors.get("clip_g")
    for key in ("emb_params", "string_to_param.*"):
        if key in tensors:
            return tensors[key], None
    if len(tensors) == 1:
        return next(iter(tensors.values())), None  # diffusers: {token: vectors}
    return None, None


def _lora_source(pipe: Any, path: Path, info: LoraInfo) -> Any:
    """What diffusers loads a LoRA from: the file, or, for a Qwen-Image 2.1 LoRA in kohya's names or made on
    ComfyUI's fused MLP (families_qwen21.py), or a Krea 2, ERNIE-Image, HiDream-I1, AuraFlow, Sana or FLUX.3 one in
    kohya's names or with alphas (families_krea2.py, lora_forms.py, families_flux3.lora_modules), or an AuraFlow one
    in its makers' module names (families_auraflow.convert_lora), its tensors renamed for diffusers' loader."""
    if info.family == QWEN_IMAGE_21 and qwen21.lora_needs_conversion(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        modules = (name for name, _ in pipe.transformer.named_modules())
        return qwen21.convert_lora(load_file(str(path)), modules)
    if info.family == KREA2 and krea2.lora_needs_conversion(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        return krea2.convert_lora(load_file(str(path)))
    if info.family == AURAFLOW and auraflow.lora_in_makers_names(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        modules = (name for name, _ in pipe.transformer.named_modules())
        return lora_forms.under_transformer(auraflow.convert_lora(load_file(str(path)), name=path.stem), modules)
    if info.family in (AURAFLOW, SANA) and lora_forms.needs_transformer_prefix(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        modules = (name for name, _ in pipe.transformer.named_modules())
        return lora_forms.under_transformer(load_file(str(path)), modules)
    if info.family == HIDREAM and lora_forms.needs_renaming(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        return lora_forms.renamed_for(load_file(str(path)), (name for name, _ in pipe.transformer.named_modules()))
    if info.family == FLUX3 and lora_forms.needs_renaming(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        modules = flux3.lora_modules(name for name, _ in pipe.transformer.named_modules())
        return lora_forms.renamed_for(load_file(str(path)), modules)
    if info.family == ERNIE_IMAGE and ernie.lora_needs_conversion(read_safetensors_header(path).tensors):
        from safetensors.torch import load_file

        return ernie.convert_lora(load_file(str(path)), (name for name, _ in pipe.transformer.named_modules()))
    return str(path)


def _adapter_count(pipe: Any, adapter: str) -> int:
    """How many pipeline components carry this adapter."""
    return sum(adapter in names for names in pipe.get_list_adapters().values())


def model_shape(pipe: Any, family: str) -> ModelShape:
    """The widths of a loaded pipeline that decide whether a LoRA fits."""
    unet_config = getattr(getattr(pipe, "unet", None), "config", None)
    context = getattr(unet_config, "cross_attention_dim", None) if unet_config is not None else None
    # A Flux.1 / SD3 transformer: its block width is heads x head size (what a LoRA's layers read).
    transformer_config = getattr(getattr(pipe, "transformer", None), "config", None)
    heads = getattr(transformer_config, "num_attention_heads", None)
    head_dim = getattr(transformer_config, "attention_head_dim", None)
    width = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None
    for field in ("dim", "hidden_size"):  # Z-Image names its block width `dim`, Lumina Image 2.0 `hidden_size`
        if width is None and isinstance(getattr(transformer_config, field, None), int):
            width = getattr(transformer_config, field)
    return ModelShape(
        family="sd3" if family == "sd3.5" else family,  # one LoRA family covers SD3 and SD3.5
        context_dim=context if isinstance(context, int) else None,
        text_width=_hidden_size(getattr(pipe, "text_encoder", None)),
        text_width_2=_hidden_size(getattr(pipe, "text_encoder_2", None)),
        transformer_width=width,
    )


def _hidden_size(encoder: Any) -> int | None:
    size = getattr(getattr(encoder, "config", None), "hidden_size", None)
    return size if isinstance(size, int) else None


