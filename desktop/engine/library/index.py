"""The library: models, LoRAs, embeddings and VAEs in the data folder, with a versioned JSON index.

Import copies a file (or hard-links it when source and library share a volume) into the kind's folder,
checks what it is from its bytes, and records name, architecture, size, sha256, AutoV2 (and AutoV3 for
safetensors files), source path and import date in `library.json`. Files users drop into the folders by
hand are listed too; they are hashed and recorded the first time `info` looks at them.

Names are data: a name typed by a user becomes a file name only through `check_name`, and a name from a
prompt, a PNG or a header is only ever compared with the listing. A pickled checkpoint is refused unless
the caller asks to convert it, which happens in a child process with `weights_only=True` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from desktop.engine.errors import Cancelled, InvalidRequest, MarbleError, ModelError, StorageError
from desktop.engine.library.annotator import is_depth_folder, pack_depth_folder
from desktop.engine.library.catalog import is_model_folder
from desktop.engine.library.checkpoint import (
    HASH_CHUNK_BYTES,
    autov3_hash,
    check_model_folder,
    detect_architecture,
    detect_diffusers_folder,
    detect_model,
    read_safetensors_header,
    sha256_file,
    sniff_file_type,
    with_variant,
)
from desktop.engine.library.control import (
    dit_controlnet_family,
    inspect_control,
    inspect_onnx_control,
    is_xlabs_controlnet,
)
from desktop.engine.library.dit import folder_says_variant, read_gguf_tensors, shown_dtype, variant_choices
from desktop.engine.library.dit_pixart import PIXART, user_variant_choices
from desktop.engine.library.encoder import EncoderInfo, inspect_encoder, inspect_encoder_gguf
from desktop.engine.library.few_step import (
    FEW_STEP_KINDS,
    NOT_FEW_STEP,
    UNET_LABELS,
    few_step_from_metadata,
    few_step_of_file,
    few_step_variants,
)
from desktop.engine.library.flux_control_lora import control_lora_layout
from desktop.engine.library.ip_adapter import is_xlabs_flux_ip_adapter
from desktop.engine.library.lora import inspect_lora
from desktop.engine.library.upscaler import inspect_upscaler, not_an_upscaler
from desktop.engine.library.vae import inspect_vae
from desktop.engine.paths import AppPaths
from desktop.engine.safe_files import loads_json, open_regular, read_regular_bytes
from desktop.engine.terminal_text import BIDI_AND_SEPARATORS, library_text

SCHEMA_VERSION = 1
KINDS = ("model", "lora", "embedding", "vae", "control", "upscaler", "encoder")
MAX_NAME_CHARS = 120
# File systems count a name in bytes (ext4, APFS: 255 UTF-8 bytes; NTFS: 255 UTF-16 units). The longest
# name a library entry writes is its hidden copy during import: "." + name + ".safetensors" + ".partial".
MAX_FILE_NAME_BYTES = 255
_LONGEST_WRITTEN = ".{}.safetensors.partial"
# The library index is kilobytes per entry; this is room for tens of thousands of entries.
MAX_INDEX_BYTES = 64 * 1024 * 1024
# Names Windows will not create as files, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_FORBIDDEN_CHARS = set('<>:"/\\|?*')
# Kinds whose one file serves many models: importing the same file twice is refused (stored once).
_SHARED_KINDS = ("encoder", "vae")
# How the LoRA list names LyCORIS files (LoraInfo.algorithm), which apply like LoRAs.
_LYCORIS_LABELS = {"loha": "LoHa", "lokr": "LoKr", "ia3": "(IA)3", "full": "full-diff LoRA"}

Progress = Callable[[int, int], None]
ShouldCancel = Callable[[], bool]


@dataclass(frozen=True)
class LibraryRecord:
    """One library entry as the index stores it and the CLI/window show it."""

    name: str
    kind: str  # "model" | "lora" | "embedding" | "vae" | "control"
    file: str  # the file or folder name inside the kind's folder (made by check_name, never from a prompt)
    architecture: str  # a label: "SD 1.x", "SDXL inpainting", "SD 1.x LoRA", ...
    family: str | None
    format: str  # "safetensors" | "diffusers" | "kohya" | "peft" | ...
    size: int
    sha256: str | None  # None for folders
    autov2: str | None
    autov3: str | None
    source: str | None
    imported_at: str | None  # ISO 8601, UTC
    indexed: bool = True  # False: found in the folder but not hashed yet
    demo: bool = False  # Marble's own demo model, installed on first start
    # Diffusion-transformer models (library/dit.py): transformer parameters, weight type or GGUF
    # quantisation, tensor layout ("bfl" | "diffusers") and what the file holds besides the transformer.
    parameters: int | None = None
    dtype: str | None = None
    layout: str | None = None
    components: tuple[str, ...] | None = None
    # A LoRA's few-step kind its header names (library/few_step.py: "lcm", ...): "" none; None not read yet
    # (imported before Marble recorded it, or not indexed yet: `records` reads the header then).
    few_step: str | None = None
    # The model variant the user chose for a file whose tensors cannot say it (library/dit.py variant_choices: a
    # Qwen-Image or LongCat-Image file that is their Edit model, a Krea 2 file or an ERNIE-Image file or folder that
    # is Turbo); "" as the file says.
    chosen_variant: str = ""
    # The few-step kind the user chose for a LoRA (Library.choose_few_step): "" as its header says, NOT_FEW_STEP
    # for none, or a kind. An LCM-LoRA as latent-consistency publishes it has no metadata naming it, and its
    # tensors are any LoRA's, so only the user can say what it is.
    chosen_few_step: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @property
    def few_step_kind(self) -> str:
        """A LoRA's few-step kind ("lcm", ...): the user's choice, else what its header names; "" for none."""
        chosen = self.chosen_few_step
        if chosen == NOT_FEW_STEP:
            return ""
        if isinstance(chosen, str) and chosen in FEW_STEP_KINDS:  # an index edited by hand may hold anything
            return chosen
        return self.few_step or ""

    @property
    def shown_architecture(self) -> str:
        """The architecture as lists show it, with the demo model marked and a DiT's size and weight type."""
        shown = f"{self.architecture} (Marble demo)" if self.demo else self.architecture
        details = [part for part in (describe_parameters(self.parameters), shown_dtype(self.dtype)) if part]
        return f"{shown}, {', '.join(details)}" if details and self.family not in ("sd1", "sd2", "sdxl") else shown

    @property
    def dit_details(self) -> list[tuple[str, str]]:
        """(label, value) rows `info` shows for a diffusion-transformer model; none for the UNet families."""
        if self.layout is None:
            return []
        return [
            ("parameters", describe_parameters(self.parameters) or "-"), ("dtype", shown_dtype(self.dtype) or "-"),
            ("layout", self.layout), ("contains", ", ".join(self.components or ()) or "-"),
        ]  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LibraryRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("components"), list):  # JSON has no tuples
            values["components"] = tuple(values["components"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


def check_name(name: str) -> str:
    """A user-chosen library name that is safe as a single file name on every platform, or InvalidRequest.

    The name comes back NFC-normalised, so the same name typed on macOS (NFD) and Linux is one name.
    """
    cleaned = unicodedata.normalize("NFC", name.strip()) if isinstance(name, str) else ""
    problem = None
    written = _LONGEST_WRITTEN.format(cleaned)
    if not cleaned:
        problem = "it is empty"
    elif len(cleaned) > MAX_NAME_CHARS:
        problem = f"it is longer than {MAX_NAME_CHARS} characters"
    elif any(_is_control(c) for c in cleaned) or _FORBIDDEN_CHARS & set(cleaned):
        problem = 'it contains a control or text-direction character, or one of < > : " / \\ | ? *'
    elif (
        len(written.encode("utf-8")) > MAX_FILE_NAME_BYTES
        or len(written.encode("utf-16-le")) // 2 > MAX_FILE_NAME_BYTES
    ):
        problem = (
            f"with the extension Marble adds, its file name would take {len(written.encode('utf-8'))} bytes, more "
            f"than the {MAX_FILE_NAME_BYTES} file systems allow (emoji and many scripts take 3 or 4 bytes a character)"
        )
    elif cleaned.startswith(".") or cleaned.endswith("."):
        problem = "it starts or ends with a dot"
    elif cleaned.split(".")[0].casefold() in _RESERVED:
        problem = "Windows reserves it as a device name"
    if problem:
        raise InvalidRequest(f"{name!r} cannot be a library name: {problem}. Pick another name.")
    return cleaned


def _is_control(char: str) -> bool:
    # Cc: C0, DEL and C1 (U+0085 NEL ends a line in some terminals); Cs: a lone surrogate cannot be
    # written as a file name; bidi controls make a listed name read differently from what it is.
    return unicodedata.category(char) in ("Cc", "Cs") or char in BIDI_AND_SEPARATORS


def same_name(a: str, b: str) -> bool:
    """Whether two names are the same once normalised (NFC): how lookups compare names."""
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


class Library:
    """The library folders and their index. Thread-safe: the window hashes on a thread pool."""

    def __init__(self, paths: AppPaths) -> None:
        self._paths = paths
        self._folders = {
            "model": paths.models, "lora": paths.loras, "embedding": paths.embeddings, "vae": paths.vaes,
            "control": paths.controls,
            "upscaler": paths.upscalers, "encoder": paths.text_encoders,
        }
        self._file = paths.library_index
        self._lock = threading.RLock()

    def folder(self, kind: str) -> Path:
        _check_kind(kind)
        return self._folders[kind]

    # ------------------------------------------------------------------------------------ listing

    def records(self, kind: str, read_headers: bool = True) -> list[LibraryRecord]:
        """Everything in the kind's folder: indexed entries, plus unindexed ones found on disk.

        `read_headers` False: what the index and the folder say, without reading the headers of files put there
        by hand (a LoRA's few-step kind, a control model's family): for a caller that matches names and hashes
        only, on the GUI thread (reading a recipe), where a slow disk would freeze the window."""
        folder = self.folder(kind)
        with self._lock:
            stored = self._load().get(kind, {})
        found = []
        for file_name in _library_files(folder, kind):
            record = stored.get(file_name)
            path = folder / file_name
            if record is None or not _same_size(record, path):
                record = _unindexed(kind, path)
            if read_headers and kind == "lora" and record.few_step is None:
                # A header read (kilobytes), so the window can offer a few-step LoRA's preset.
                record = replace(record, few_step=few_step_of_file(path) or "")
            if read_headers and kind == "control" and not record.indexed:
                # A file put in the folder by hand: its header says its kind and family (kilobytes), so the
                # window offers it for the models it fits and knows an IP-Adapter as one.
                record = _control_header(record, path)
            found.append(record)
        return sorted(found, key=lambda r: r.name.casefold())

    def find(self, kind: str, name: str) -> LibraryRecord | None:
        """By name (exact, then ignoring case); a name is compared, never joined into a path."""
        if not isinstance(name, str):
            return None
        records = self.records(kind)
        wanted = unicodedata.normalize("NFC", name)
        exact = next((r for r in records if unicodedata.normalize("NFC", r.name) == wanted), None)
        if exact is not None:
            return exact
        folded = wanted.casefold()
        return next((r for r in records if unicodedata.normalize("NFC", r.name).casefold() == folded), None)

    def get(self, kind: str, name: str) -> LibraryRecord:
        record = self.find(kind, name)
        if record is None:
            known = ", ".join(r.name for r in self.records(kind)) or "none yet"
            raise ModelError(f"No {_noun(kind)} named {name!r} in the library ({known}).")
        return record

    def path_of(self, record: LibraryRecord) -> Path:
        return self.folder(record.kind) / record.file

    def known_autov2(self, path: Path) -> str | None:
        """The AutoV2 hash the library took while importing the model file at `path`, when the file has not
        changed since (same size, not modified after the import); None otherwise (hash it then)."""
        wanted = path.resolve()
        for record in self.records("model"):
            if not (record.indexed and record.autov2 and record.imported_at):
                continue
            file = self.path_of(record)
            if file.resolve() != wanted:
                continue
            try:
                imported = datetime.fromisoformat(record.imported_at).timestamp()
            except ValueError:
                return None
            # A second of slack: the recorded time is cut to whole seconds.
            return record.autov2 if file.stat().st_mtime <= imported + 1 else None
        return None

    def info(self, kind: str, name: str, on_progress: Progress | None = None) -> LibraryRecord:
        """The full record, hashing and recording a hand-copied file on first look."""
        record = self.get(kind, name)
        if record.indexed:
            return record
        path = self.path_of(record)
        full = self._describe(kind, path, source=None, on_progress=on_progress)
        full = replace(full, name=record.name, file=record.file, imported_at=None)
        self._store(full)
        return full

    def header_metadata(self, record: LibraryRecord) -> dict[str, str]:
        """The `__metadata__` of a safetensors file (training notes, trigger words); {} for folders."""
        path = self.path_of(record)
        if path.is_dir() or record.format == "gguf" or path.suffix.lower() == ".onnx":
            return {}
        return dict(read_safetensors_header(path).metadata)

    # ------------------------------------------------------------------------------------- import

    def import_path(
        self,
        source: Path | str,
        kind: str,
        name: str | None = None,
        *,
        convert_pickle: bool = False,
        on_progress: Progress | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> LibraryRecord:
        """Copy (or hard-link) a file or diffusers folder into the library and index it.

        Cancelled or failed imports leave no file behind: the copy goes to a hidden `.partial` name and
        is renamed into place only when complete and checked.
        """
        _check_kind(kind)
        source = Path(source).expanduser()
        try:
            if not source.exists():
                raise ModelError(f"{source} does not exist.")
            source = source.resolve()
        except (OSError, ValueError) as error:  # a path too long for the file system, a NUL byte
            raise ModelError(f"{source} cannot be read ({getattr(error, 'strerror', None) or error}).") from None
        if (
            kind == "control" and source.is_dir() and (source / "model.safetensors").is_file()
            and not is_depth_folder(source)
        ):
            # A transformers folder (an IP-Adapter's image_encoder/): its weights are the entry; the
            # encoder is rebuilt from their shapes, so the config is not needed.
            name = name if name is not None else source.name
            source = source / "model.safetensors"
        elif kind == "encoder" and source.is_dir() and (source / "model.safetensors").is_file():
            # A diffusers text_encoder/ folder: its weights are the entry; the config is Marble's own.
            name = name if name is not None else source.parent.name + "-" + source.name
            source = source / "model.safetensors"
        folder = self.folder(kind)
        folder.mkdir(parents=True, exist_ok=True)
        is_folder = source.is_dir()
        base = check_name(name if name is not None else (source.name if is_folder else source.stem))
        # A depth preprocessor's folder (config.json + model.safetensors) becomes one control-library file.
        packs = is_folder and kind == "control" and is_depth_folder(source)
        file_name = base if is_folder and not packs else f"{base}{_model_suffix(source, kind)}"
        with self._lock:
            if self.find(kind, base) is not None or (folder / file_name).exists():
                raise ModelError(
                    f"The library already has a {_noun(kind)} named {base!r}. Remove it first, or pick another name."
                )
        target = folder / file_name
        partial = folder / f".{file_name}.partial"
        known_sha: str | None = None
        _remove(partial)
        try:
            if packs:
                pack_depth_folder(source, partial)
                is_folder = False
            elif is_folder:
                if kind != "model":
                    raise ModelError(f"{source.name} is a folder; a {_noun(kind)} is a single .safetensors file.")
                detect_diffusers_folder(source)  # refuse anything that is not a model folder before copying
                check_model_folder(source)  # pickled weights, FIFOs, devices
                _copy_tree(source, partial, on_progress, should_cancel)
            else:
                file_type = sniff_file_type(source)
                if file_type in ("pickle", "zip"):
                    if not convert_pickle:
                        raise ModelError(_pickle_refusal(source, kind))
                    from desktop.engine.backends.pickle_convert import convert_in_child

                    try:
                        convert_in_child(source, partial)
                    except ModelError as error:
                        # The child's reason is torch's text, which styles words with ANSI codes.
                        raise ModelError(library_text(error)) from None
                elif file_type == "gguf" and kind in ("model", "encoder"):
                    known_sha = _copy_or_link(source, partial, on_progress, should_cancel)
                elif file_type == "onnx":
                    if kind != "control":
                        raise ModelError(
                            f"{source.name} is an ONNX model: Marble takes ONNX files only as face detectors and "
                            f"recognizers, into the control library (marble controls import {source.name})."
                        )
                    inspect_onnx_control(source, source.name)  # a non-face graph is refused before copying
                    known_sha = _copy_or_link(source, partial, on_progress, should_cancel)
                elif file_type != "safetensors":
                    raise ModelError(
                        f"{source.name} is not a safetensors file or a diffusers folder (its bytes match no known "
                        "model format)."
                    )
                else:
                    known_sha = _copy_or_link(source, partial, on_progress, should_cancel)
            record = self._describe(
                kind,
                partial,
                source=str(source),
                on_progress=on_progress,
                is_folder=is_folder,
                sha256=known_sha,
                display=source.name,
            )
            record = replace(record, name=base, file=file_name)
            if kind in _SHARED_KINDS:
                self._refuse_duplicate(record, source)
            os.replace(partial, target)
        except BaseException:
            _remove(partial)
            raise
        self._store(record)
        return record

    def mark_demo(self, record: LibraryRecord) -> LibraryRecord:
        """Record that this entry is Marble's demo model (shown as such; kept through renames)."""
        marked = replace(record, demo=True)
        self._store(marked)
        return marked

    # ---------------------------------------------------------------------------- remove / rename

    def remove(self, kind: str, name: str) -> LibraryRecord:
        record = self.get(kind, name)
        path = self.path_of(record)
        with self._lock:
            try:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                raise StorageError(f"Could not remove {path}: {error.strerror or error}.") from error
            table = self._load()
            table.get(kind, {}).pop(record.file, None)
            self._save(table)
        return record

    def rename(self, kind: str, name: str, new_name: str) -> LibraryRecord:
        record = self.get(kind, name)
        base = check_name(new_name)
        path = self.path_of(record)
        suffix = path.suffix.lower() if path.suffix.lower() in (".gguf", ".onnx") else ".safetensors"
        new_file = base if path.is_dir() else f"{base}{suffix}"
        with self._lock:
            clash = self.find(kind, base)
            if clash is not None and clash.file != record.file:
                raise ModelError(f"The library already has a {_noun(kind)} named {base!r}.")
            try:
                os.replace(path, self.folder(kind) / new_file)
            except OSError as error:
                raise StorageError(f"Could not rename {path.name}: {error.strerror or error}.") from error
            table = self._load()
            entries = table.setdefault(kind, {})
            entries.pop(record.file, None)
            renamed = replace(record, name=base, file=new_file)
            if renamed.indexed:
                entries[new_file] = renamed
            self._save(table)
        return renamed

    def chosen_variants(self) -> dict[str, str]:
        """Model name -> the variant the user chose for its file (choose_variant), for those that have one. A damaged
        index (said where the library is shown) chooses none: the files run as they say."""
        try:
            records = self.records("model")
        except ModelError:
            return {}
        return {record.name: variant for record in records if (variant := _chosen(record))}

    def chosen_variant_of(self, path: Path) -> str:
        """The variant the user chose for the library's model file or folder at `path` (choose_variant); "" for any
        other path (the same file elsewhere runs as it says) and with a damaged index."""
        if path.parent != self.folder("model"):
            return ""
        try:
            with self._lock:
                record = self._load().get("model", {}).get(path.name)
        except ModelError:
            return ""
        return _chosen(record) if record is not None and _same_size(record, path) else ""

    def choose_variant(self, name: str, variant: str) -> LibraryRecord:
        """Mark the model file `name` as `variant` of its family ("" : as its file says), for a file whose tensors
        cannot tell (Qwen-Image-Edit's, LongCat-Image-Edit's, Krea 2 Turbo's and ERNIE-Image Turbo's are their base
        models'; ComfyUI's repackaged files carry no metadata saying so), or an ERNIE-Image folder (Turbo's has the
        base's pipeline and configs); or an SD 1.x / SD 2.x / SDXL model as a few-step kind ("lightning" ...: a merge
        shared without metadata). A hand-copied file is hashed and recorded first."""
        record = self.info("model", name)
        choices = record_variant_choices(record)
        if record.format == "diffusers" and not choices:
            raise ModelError(f"{record.name} is a diffusers folder: its model_index.json says which model it is.")
        if not choices:
            raise ModelError(
                f"{record.name} is a {record.architecture} model, which its tensors tell. Only these can be marked: "
                "Qwen-Image and LongCat-Image files as their Edit models; Krea 2 and ERNIE-Image files as Turbo; "
                "SD 1.x, SD 2.x and SDXL models as a few-step kind; PixArt files in diffusers' names as Alpha."
            )
        if variant not in choices:
            known = ", ".join(repr(v) if v else "'' (as the file says)" for v in choices)
            raise ModelError(f"{variant!r} is not a variant of {record.name}: choose {known}.")
        arch = with_variant(detect_model(self.path_of(record)), variant)
        label = choices[variant] if arch.dit is None and variant else arch.label  # "SD 1.x Lightning"
        chosen = replace(record, chosen_variant=variant, architecture=label)
        self._store(chosen)
        return chosen

    def choose_few_step(self, name: str, kind: str) -> LibraryRecord:
        """Mark the LoRA `name` as a few-step kind ("lcm", "turbo", ...), NOT_FEW_STEP, or "" (as its header says),
        for a LoRA whose header names no kind or the wrong one. A hand-copied file is hashed and recorded first."""
        if kind not in ("", NOT_FEW_STEP, *FEW_STEP_KINDS):
            known = ", ".join((*FEW_STEP_KINDS, NOT_FEW_STEP))
            raise InvalidRequest(f"{kind!r} is not a few-step kind: choose {known}, or '' for what the header says.")
        chosen = replace(self.info("lora", name), chosen_few_step=kind)
        self._store(chosen)
        return chosen

    # ---------------------------------------------------------------------------------- internals

    def _refuse_duplicate(self, record: LibraryRecord, source: Path) -> None:
        """A text encoder or VAE serves every model that names it: the same file twice is refused, so it is
        stored once (a T5-XXL is 5-10 GB)."""
        same = next((r for r in self.records(record.kind) if r.sha256 and r.sha256 == record.sha256), None)
        if same is not None:
            raise ModelError(
                f"{source.name} is already in the library as the {_noun(record.kind)} {same.name!r} (same sha256); "
                f"every model uses it by that name, so it is not stored twice."
            )

    def _describe(
        self,
        kind: str,
        path: Path,
        source: str | None,
        on_progress: Progress | None,
        is_folder: bool | None = None,
        sha256: str | None = None,
        display: str | None = None,
    ) -> LibraryRecord:
        display = display or path.name
        is_folder = path.is_dir() if is_folder is None else is_folder
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if is_folder:
            arch = detect_diffusers_folder(path, name=display)
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            return _with_dit(LibraryRecord(
                path.name, kind, path.name, arch.label, arch.family, "diffusers", size, None, None, None, source, now
            ), arch.dit)  # fmt: skip
        if kind == "encoder" and sniff_file_type(path, label=display) == "gguf":
            tensors, quantization = read_gguf_tensors(path, name=display)
            encoder = inspect_encoder_gguf(tensors, quantization, display)
            digest = sha256 or sha256_file(path, on_progress, name=display)
            return _with_encoder(LibraryRecord(
                path.stem, kind, path.name, encoder.label, encoder.family, "gguf", path.stat().st_size, digest,
                digest[:10], None, source, now,
            ), encoder)  # fmt: skip
        if kind == "control" and sniff_file_type(path, label=display) == "onnx":
            # insightface's face models: stored as they ship (protobuf, no code runs when read).
            control = inspect_onnx_control(path, display)
            digest = sha256 or sha256_file(path, on_progress, name=display)
            return LibraryRecord(
                path.stem, kind, path.name, control.label, None, f"{control.kind} ({control.layout})",
                path.stat().st_size, digest, digest[:10], None, source, now,
            )  # fmt: skip
        if kind == "model" and sniff_file_type(path, label=display) == "gguf":
            arch = detect_model(path)
            digest = sha256 or sha256_file(path, on_progress, name=display)
            return _with_dit(LibraryRecord(
                path.stem, kind, path.name, arch.label, arch.family, "gguf", path.stat().st_size, digest, digest[:10],
                None, source, now,
            ), arch.dit)  # fmt: skip
        dit, few_step = None, None
        header = read_safetensors_header(path, name=display)
        if kind == "model":
            arch = detect_architecture(header, name=display)
            label, family, fmt, dit = arch.label, arch.family, "safetensors", arch.dit
        elif kind == "lora":
            info = inspect_lora(header, display)
            kind_label = _LYCORIS_LABELS.get(info.algorithm, "LoRA")
            label, family, fmt = f"{info.label} {kind_label}", info.family, info.format
            few_step = few_step_from_metadata(header.metadata) or ""
        elif kind == "vae":
            vae = inspect_vae(header, display)
            label, family, fmt = vae.label, vae.family, vae.layout
        elif kind == "control":
            control = inspect_control(header, display)
            label, family, fmt = control.label, control.family, f"{control.kind} ({control.layout})"
        elif kind == "upscaler":
            upscaler = inspect_upscaler(header, display)
            label, family, fmt = upscaler.label, None, upscaler.layout
        elif kind == "encoder":
            encoder = inspect_encoder(header, display)
            label, family, fmt, dit = encoder.label, encoder.family, encoder.layout, encoder
        else:
            label, family, fmt = _embedding_label(header, display), None, "embedding"
        digest = sha256 or sha256_file(path, on_progress, name=display)
        return _with_dit(LibraryRecord(
            path.stem, kind, path.name, label, family, fmt, header.file_size, digest, digest[:10],
            autov3_hash(path, name=display), source, now, few_step=few_step,
        ), dit)  # fmt: skip

    def _store(self, record: LibraryRecord) -> None:
        with self._lock:
            table = self._load()
            table.setdefault(record.kind, {})[record.file] = record
            self._save(table)

    def _load(self) -> dict[str, dict[str, LibraryRecord]]:
        # Not a regular file (a FIFO, a link to a device) or absurdly large: refused, never read.
        raw = read_regular_bytes(
            self._file, label=f"the library index {self._file}", max_bytes=MAX_INDEX_BYTES, missing_ok=True
        )
        if raw is None:
            return {}
        try:
            document = loads_json(raw.decode("utf-8"))
        except ValueError as error:  # UnicodeDecodeError is one too
            # A damaged index loses only hashes and import dates: the files themselves are still listed.
            backup = self._file.with_suffix(".damaged.json")
            with contextlib.suppress(OSError):
                shutil.copyfile(self._file, backup)
            raise ModelError(
                f"The library index {self._file} is damaged ({error}); a copy was kept as {backup.name}. Delete "
                "the index to rebuild it from the files."
            ) from None
        document = _migrate(document)
        table: dict[str, dict[str, LibraryRecord]] = {}
        for kind, entries in document.get("entries", {}).items():
            if kind in KINDS and isinstance(entries, dict):
                table[kind] = {
                    file: LibraryRecord.from_json(data) for file, data in entries.items() if isinstance(data, dict)
                }
        return table

    def _save(self, table: dict[str, dict[str, LibraryRecord]]) -> None:
        document = {
            "schema_version": SCHEMA_VERSION,
            "entries": {kind: {file: r.to_json() for file, r in entries.items()} for kind, entries in table.items()},
        }
        tmp = self._file.with_name(f".{self._file.name}.partial")
        try:
            self._file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self._file)
        except OSError as error:
            _remove(tmp)
            raise StorageError(f"Could not write the library index {self._file}: {error.strerror or error}.") from error


def guess_kind(path: Path | str) -> str:
    """Which library a dropped file belongs in, judged from its bytes: "model", "lora", "embedding", "vae",
    "control" or "upscaler".

    Anything unclear goes to "model", whose import then explains what the file is (a pickle, a VAE, ...).
    """
    path = Path(path)
    if path.is_dir():
        return "model"
    file_type = sniff_file_type(path)
    if file_type == "onnx":
        return "control"  # insightface's face models; the control import says why another graph is refused
    if file_type == "gguf":
        # A GGUF is a quantised transformer (a model) or a T5 encoder (llama.cpp's enc.blk names).
        with contextlib.suppress(ModelError):
            inspect_encoder_gguf(*read_gguf_tensors(path), path.name)
            return "encoder"
        return "model"
    if file_type != "safetensors":
        return "model"
    try:
        header = read_safetensors_header(path)
    except ModelError:
        return "model"
    if not_an_upscaler(header.tensors):
        return "upscaler"  # a face restorer or an inpainter: the upscaler import says why it is refused
    if (
        dit_controlnet_family(header)
        or is_xlabs_controlnet(header)
        or is_xlabs_flux_ip_adapter(header)
        or control_lora_layout(header) is not None
    ):
        return "control"  # before the LoRA reader, which takes their transformer blocks' names
    # Tried in turn: the first reader that accepts the header names the library. Upscalers first: their
    # readers want exact tensor names, while the LoRA reader takes HAT's `layers.N...attention.` names
    # for a Z-Image LoRA's.
    readers = (
        ("upscaler", inspect_upscaler), ("lora", inspect_lora), ("embedding", _embedding_label),
        ("control", inspect_control), ("vae", inspect_vae), ("encoder", inspect_encoder),
    )  # fmt: skip
    for kind, read in readers:
        with contextlib.suppress(ModelError):
            read(header, path.name)
            return kind
    return "model"


def _migrate(document: object) -> dict:
    if not isinstance(document, dict):
        return {}
    version = document.get("schema_version", 0)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ModelError(
            f"The library index was written by a newer Marble (schema {version}); update Marble to use it."
        )
    # Version 1 is the first; later versions add a step here, oldest first.
    return document


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidRequest(f"Unknown library kind {kind!r}: use one of {', '.join(KINDS)}.")


def _noun(kind: str) -> str:
    return {
        "model": "model", "lora": "LoRA", "embedding": "embedding", "vae": "VAE", "control": "control model",
        "upscaler": "upscaler", "encoder": "text encoder",
    }[kind]


def _library_files(folder: Path, kind: str) -> list[str]:
    if not folder.is_dir():
        return []
    names = []
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        suffix = child.suffix.lower()
        if child.is_file() and (
            suffix == ".safetensors"
            or (kind in ("model", "encoder") and suffix == ".gguf")
            or (kind == "control" and suffix == ".onnx")
        ):
            names.append(child.name)
        elif kind == "model" and is_model_folder(child):
            names.append(child.name)
    return names


def _same_size(record: LibraryRecord, path: Path) -> bool:
    # A file replaced by hand under the same name must not keep the old file's hashes.
    return path.is_dir() or (path.is_file() and path.stat().st_size == record.size)


def _control_header(record: LibraryRecord, path: Path) -> LibraryRecord:
    if path.suffix.lower() != ".safetensors":
        return record
    try:
        control = inspect_control(read_safetensors_header(path, name=path.name), path.name)
    except (MarbleError, OSError, ValueError):
        return record  # damaged or foreign: said when it is imported or used
    return replace(record, family=control.family, format=f"{control.kind} ({control.layout})")


def _unindexed(kind: str, path: Path) -> LibraryRecord:
    is_dir = path.is_dir()
    size = 0 if is_dir else path.stat().st_size
    name = path.name if is_dir else path.stem
    suffix = path.suffix.lower()
    fmt = "diffusers" if is_dir else suffix[1:] if suffix in (".gguf", ".onnx") else "safetensors"
    return LibraryRecord(name, kind, path.name, "not indexed yet", None, fmt,
                         size, None, None, None, None, None, indexed=False)  # fmt: skip


def _embedding_label(header, name: str) -> str:
    tensors = header.tensors
    if "clip_l" in tensors and "clip_g" in tensors:
        return "SDXL embedding"
    for key in ("emb_params", "string_to_param.*", "clip_l"):
        if key in tensors:
            shape = tensors[key].shape
            width = shape[-1] if shape else None
            return {768: "SD 1.x embedding", 1024: "SD 2.x embedding"}.get(width, "embedding")
    raise ModelError(f"{name} is not a textual-inversion embedding (no emb_params / clip_l tensors).")


def _pickle_refusal(source: Path, kind: str) -> str:
    return (
        f"{source.name} is a pickled PyTorch checkpoint, whatever its name says. Loading a pickle can run "
        "arbitrary code, so Marble does not import it as it is. If you trust where it came from, convert it: "
        f"`marble {kind}s import --convert-pickle {source}` loads only its tensors (weights_only) in a separate "
        "process and writes a .safetensors copy; a file that needs anything more is rejected."
    )


def _copy_or_link(
    source: Path, target: Path, on_progress: Progress | None, should_cancel: ShouldCancel | None
) -> str | None:
    """A hard link when both sit on one volume (instant, no extra space), otherwise a chunked copy.

    Returns the sha256 when the copy computed it on the way (a link has not read the file).
    """
    with contextlib.suppress(OSError, NotImplementedError):
        os.link(source, target)
        return None
    digest = hashlib.sha256()
    _copy_file(source, target, on_progress, should_cancel, 0, source.stat().st_size, digest)
    return digest.hexdigest()


def _copy_file(
    source: Path,
    target: Path,
    on_progress: Progress | None,
    should_cancel: ShouldCancel | None,
    done: int,
    total: int,
    digest: hashlib._Hash | None = None,
) -> int:
    src = open_regular(source, label=source.name)  # a FIFO or a device would be read forever
    assert src is not None
    with src, open(target, "wb") as dst:
        while chunk := src.read(HASH_CHUNK_BYTES):
            if should_cancel is not None and should_cancel():
                raise Cancelled("The import was cancelled; nothing was added to the library.")
            dst.write(chunk)
            if digest is not None:
                digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, total)
        dst.flush()
        os.fsync(dst.fileno())
    shutil.copystat(source, target)
    return done


def _copy_tree(source: Path, target: Path, on_progress: Progress | None, should_cancel: ShouldCancel | None) -> None:
    files = [f for f in sorted(source.rglob("*")) if f.is_file() and not f.is_symlink()]
    total = sum(f.stat().st_size for f in files)
    done = 0
    for file in files:
        destination = target / file.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        done = _copy_file(file, destination, on_progress, should_cancel, done, total)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _model_suffix(source: Path, kind: str) -> str:
    """The library file's extension: a GGUF model keeps ".gguf" (diffusers picks its reader by it), an ONNX
    face model ".onnx"."""
    if kind in ("model", "encoder") and source.is_file() and sniff_file_type(source) == "gguf":
        return ".gguf"
    if kind == "control" and source.is_file() and sniff_file_type(source) == "onnx":
        return ".onnx"
    return ".safetensors"


def record_variant_choices(record: LibraryRecord) -> dict[str, str]:
    """The variants the library's model `record` may be marked as (library/dit.py variant_choices), each with its label;
    {} for other kinds, for families whose tensors tell, and for folders that say which model they hold."""
    if record.kind != "model" or (record.format == "diffusers" and folder_says_variant(record.family)):
        return {}
    if record.family in UNET_LABELS and "refiner" not in record.architecture:
        return few_step_variants(record.family)  # a few-step model whose header does not say so
    if record.family == PIXART:  # only a file in diffusers' names may be Alpha's without saying so
        return user_variant_choices() if record.layout == "diffusers" and record.format != "diffusers" else {}
    return variant_choices(record.family)


def _chosen(record: LibraryRecord) -> str:
    """The record's chosen variant when it is one it may be marked as (an index edited by hand may hold anything)."""
    variant = record.chosen_variant
    return variant if isinstance(variant, str) and variant and variant in record_variant_choices(record) else ""


def _with_encoder(record: LibraryRecord, encoder: EncoderInfo) -> LibraryRecord:
    return replace(record, parameters=encoder.parameters, dtype=encoder.dtype, layout=encoder.layout,
                   components=(encoder.kind,))  # fmt: skip


def _with_dit(record: LibraryRecord, dit: object) -> LibraryRecord:
    """`record` with the DiT details (parameters, dtype/quantisation, layout) when there are any."""
    if dit is None:
        return record
    if isinstance(dit, EncoderInfo):
        return _with_encoder(record, dit)
    return replace(
        record, parameters=dit.parameters, dtype=dit.dtype, layout=dit.layout,  # type: ignore[attr-defined]
        components=dit.components,  # type: ignore[attr-defined]
    )


def describe_parameters(count: int | None) -> str:
    """1.2B, 860M: how model cards state sizes."""
    if not count:
        return ""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M" if count >= 1e6 else f"{count:,}"
