"""The converted-model cache: for a single-file checkpoint, a key map over the user's own file instead of a
second copy of its weights.

Why a key map: converting an SD 1.5 file takes about 2 s, but writing the converted 4.3 GB fp32 diffusers
folder took a 2-core machine about 8 s, which a plain diffusers script never spends (docs/benchmarks.md). Yet
nearly every converted tensor is one of the file's own tensors under a diffusers name, or a view of one: the
VAE's attention 1x1 convs reshaped to linear weights, SD 2.x/SDXL OpenCLIP's fused q/k/v `in_proj` cut into
three, its text projection transposed. So the cache records, per component and converted key, where its bytes
lie in the original file (offset, dtype, shape, strides); only tensors that are none of these (none in SD 1.x,
2.x or SDXL as diffusers 0.42 converts them) are written, into a small `computed.safetensors`. Beside it go the
component configs, the scheduler and tokenizers: a diffusers folder without weights. The first run writes a
few hundred KB; a later load maps the original file, builds each tensor as a view of the mapping, builds each
component from its config with empty weights and assigns the views.

How a tensor is found: `from_single_file` leaves renamed tensors as views of safetensors' mapping of the file,
so their addresses minus the mapping's start are file offsets. That start is not exposed; it is the address
shift most tensors agree on (each tensor against the file tensors of its byte size), and every tensor so
placed is checked against our own mapping of the file at a few elements. Tensors diffusers copied (the q/k/v
slices and the transposed projection in diffusers 0.42) are matched by their bytes: a dim-0 slice or
transpose of a file tensor of the same dtype, checked at its leading bytes, three elements and then whole, bit
for bit (0.10 s for OpenCLIP-G's 0.32 GB of fp16 q/k/v on the 2-core VM at load average 5; SD 1.x has none).
Matching is byte equality, so a match is correct whatever name it came from. Such a tensor is copied again at
load, as diffusers copied it: on the CPU a matmul over a transposed view or differently aligned memory rounds
differently, and the images must be the first run's. Casts are not searched: a tensor from_single_file cast (a
mixed-precision file) is stored as computed.

Why the source's identity is stored: the entry is only valid for the same bytes. The folder's name already
digests the path, size and mtime; the key map also keeps a hash of the safetensors header, and a load that
finds any of them changed (or the file gone) ignores the entry, so the backend converts again.

Why the job's precision is applied at load: the views are in the file's dtype (what from_single_file produced
before the backend cast the pipeline); a job in another precision casts each tensor once, as the first run's
`pipe.to(dtype)` did.

Writing is quick, so it happens during the load, before a job can touch the modules: the entry is built in a
folder named for this process and renamed into place (a killed process leaves only a half-written folder that
is never read; one over an hour old is removed). Another process converting the same file at once writes its
own copy; the first complete one is kept. Entries of the previous schema (4.3 GB weight folders) and entries
whose original file is gone or changed are removed when a new entry is written.

Torch is imported inside the functions: the module runs on the generation thread only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import mmap
import os
import shutil
import struct
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.library.checkpoint import SafetensorsHeader, read_safetensors_header

log = logging.getLogger(__name__)

KEYMAP = "keymap.json"  # written last inside the entry; an entry without it is not one
COMPUTED = "computed.safetensors"
SCHEMA = 2  # 1: the converted weights written out as a diffusers folder
_LIBRARIES = ("diffusers", "transformers")  # where a component's class may come from

_DTYPE_CODES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}  # fmt: skip


class ConversionCache:
    """Writes and reads the key-map entries of converted single-file checkpoints."""

    def save(self, pipe: Any, target: Path, source: Path) -> str | None:
        """Record `pipe` (just converted from `source`, in the file's dtype) as the entry `target`; returns a note
        when that failed (the job goes on from memory, and the next start converts again)."""
        import torch

        _tidy(target.parent)
        # Named for this process: another Marble process converting the same file writes its own copy, and the
        # first complete one is kept.
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.perf_counter()
        try:
            with _Mapped(source) as mapped:
                keymap: dict[str, Any] = {"schema": SCHEMA, "source": mapped.identity, "components": {}}
                computed: dict[str, Any] = {}
                partial.mkdir(parents=True)
                for name, component in pipe.components.items():
                    if isinstance(component, torch.nn.Module):
                        _save_config(component, partial / name)
                        state = component.state_dict()
                        tensors, extra = key_map(state, mapped)
                        # Buffers outside the state dict (CLIP's position ids): the load builds the module on
                        # the meta device, where they would be empty.
                        buffers = {key: value for key, value in component.named_buffers() if key not in state}
                        keymap["components"][name] = {"class": _class_of(component), "tensors": tensors,
                                                      "buffers": sorted(buffers)}  # fmt: skip
                        computed.update({f"{name}/{key}": value for key, value in (extra | buffers).items()})
                    elif component is not None:
                        # Schedulers, tokenizers, feature extractors: saved before a job can add a
                        # textual-inversion token to a tokenizer.
                        component.save_pretrained(str(partial / name))
            pipe.save_config(str(partial))  # model_index.json
            if computed:
                write_safetensors(computed, partial / COMPUTED)
            (partial / KEYMAP).write_text(json.dumps(keymap, separators=(",", ":")))
            if _entry_of(target, keymap["source"]):
                shutil.rmtree(partial, ignore_errors=True)  # another process finished first: its copy serves
            else:
                shutil.rmtree(target, ignore_errors=True)  # a damaged or stale entry under the same name
                os.replace(partial, target)
        except (OSError, RuntimeError, ValueError, KeyError) as error:
            # Only a cache: the loaded model is unaffected, and the next start converts again.
            shutil.rmtree(partial, ignore_errors=True)
            note = _failure_note(target, error)
            log.warning("%s", note)
            return note
        log.info(
            "Key map of %s: %d computed tensors, %.2f s", source.name, len(computed), time.perf_counter() - started
        )
        return None

    def load(self, target: Path, source: Path, dtype: Any) -> dict[str, Any] | None:
        """The components of entry `target` over `source`'s bytes, in `dtype`; None when there is no complete
        entry or it was made from other bytes than the file has now (the caller converts again)."""
        if not (target / KEYMAP).is_file():
            return None
        try:
            return self._components(target, source, dtype)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as error:
            # A damaged entry (or one of another schema): converting again rewrites it.
            log.warning("Ignoring the converted-model entry %s: %s", target, error)
            return None

    def _components(self, target: Path, source: Path, dtype: Any) -> dict[str, Any] | None:
        computed: Mapping[str, Any] = {}
        with _Mapped(source) as mapped:
            if not _entry_of(target, mapped.identity):
                return None
            keymap = json.loads((target / KEYMAP).read_text())
            if (target / COMPUTED).is_file():
                from safetensors.torch import load_file

                computed = load_file(str(target / COMPUTED))
            modules = {}
            for name, spec in keymap["components"].items():
                state = {}
                for key, place in spec["tensors"].items():
                    state[key] = _cast(computed[f"{name}/{key}"] if place is None else mapped.view(*place), dtype)
                buffers = {key: _cast(computed[f"{name}/{key}"], dtype) for key in spec["buffers"]}
                modules[name] = _build(spec["class"], target / name, state, buffers)
        return modules


def key_map(state: Mapping[str, Any], mapped: _Mapped) -> tuple[dict[str, list[Any] | None], dict[str, Any]]:
    """For each tensor of `state`: where its bytes lie in the mapped file ([offset, dtype, shape, strides, whether
    the load copies them]), or None and the tensor itself among the computed ones."""
    shift = mapped.address_shift(state.values())
    places: dict[str, list[Any] | None] = {}
    computed: dict[str, Any] = {}
    for key, tensor in state.items():
        place = mapped.place_by_address(tensor, shift) if shift is not None else None
        place = place or mapped.place_by_bytes(tensor)
        places[key] = place
        if place is None:
            computed[key] = tensor.detach()
    return places, computed


@dataclass(frozen=True)
class _Candidate:
    offset: int  # absolute, in the file
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    # The converted tensor was a copy of the bytes there (a q/k/v slice, a transposed weight), made again at
    # load: a CPU matmul over a transposed view, or over memory aligned otherwise than a fresh allocation, can
    # round differently, and the images must stay those of the first run.
    copy: bool = False


class _Mapped:
    """A safetensors file mapped copy-on-write (as safetensors maps it), as one byte tensor."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._header: SafetensorsHeader = read_safetensors_header(path)
        stat = path.stat()
        with path.open("rb") as stream:
            digest = hashlib.sha256(stream.read(self._header.data_offset)).hexdigest()
        self.identity = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                         "header_sha256": digest}  # fmt: skip
        self._map: mmap.mmap | None = None
        self._bytes: Any = None
        self._index: dict[tuple[str, Any], list[tuple[int, tuple[int, ...]]]] | None = None

    def __enter__(self) -> _Mapped:
        return self

    def __exit__(self, *exc: object) -> None:
        # The tensors made from the mapping keep it alive (torch.frombuffer holds the mmap object).
        self._map = None
        self._bytes = None

    @property
    def whole(self) -> Any:
        import torch

        if self._bytes is None:
            with self._path.open("rb") as stream:
                self._map = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY)
            self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)
        return self._bytes

    def view(self, offset: int, dtype: str, shape: list[int], stride: list[int], copy: bool = False) -> Any:
        """The tensor at `offset` of the file, as a view of the mapping (`copy`: its contiguous copy)."""
        import torch

        torch_dtype = _torch_dtype(dtype)
        extent = _extent(shape, stride) * torch_dtype.itemsize
        if offset < self._header.data_offset or offset + extent > self._header.file_size:
            raise ValueError(f"the key map points outside {self._path.name}")
        view = self.whole[offset : offset + extent].view(torch_dtype).as_strided(shape, stride)
        return view.clone(memory_format=torch.contiguous_format) if copy else view

    def address_shift(self, tensors: Any) -> int | None:
        """The address of file byte 0 in the mapping the converted tensors still view, if they view one: the
        shift most tensors agree on when set against the file's tensors of their byte size."""
        starts: dict[int, list[int]] = {}
        for info in self._header.tensors.values():
            starts.setdefault(info.nbytes, []).append(self._header.data_offset + info.offsets[0])
        votes: Counter[int] = Counter()
        for tensor in tensors:
            if tensor.device.type != "cpu" or not tensor.numel():
                continue
            for start in starts.get(tensor.numel() * tensor.element_size(), ())[:8]:
                votes[tensor.data_ptr() - start] += 1
        return votes.most_common(1)[0][0] if votes else None

    def place_by_address(self, tensor: Any, shift: int) -> list[Any] | None:
        if tensor.device.type != "cpu" or not tensor.numel():
            return None
        offset = tensor.data_ptr() - shift
        candidate = _Candidate(offset, tuple(tensor.shape), tuple(tensor.stride()))
        return self._matching(tensor, candidate, whole=False)

    def place_by_bytes(self, tensor: Any) -> list[Any] | None:
        """A file tensor, a dim-0 slice of one, a reshaped or a transposed one with exactly `tensor`'s bits."""
        if tensor.device.type != "cpu" or not tensor.numel() or not tensor.is_contiguous():
            return None
        code = _DTYPE_CODES.get(str(tensor.dtype).removeprefix("torch."))
        shape = tuple(tensor.shape)
        contiguous = _contiguous_strides(shape)
        nbytes = tensor.numel() * tensor.element_size()
        index = self._tensor_index()
        candidates = []
        for start, source_shape in index.get((code, shape[1:]), ()):  # the same, or slices along dim 0
            if shape and source_shape and source_shape[0] % shape[0] == 0:
                candidates += [_Candidate(start + j * nbytes, shape, contiguous, copy=True)
                               for j in range(source_shape[0] // shape[0])]  # fmt: skip
            elif not shape and not source_shape:
                candidates.append(_Candidate(start, shape, contiguous, copy=True))
        seen = {candidate.offset for candidate in candidates}
        candidates += [_Candidate(start, shape, contiguous, copy=True)  # reshaped (the VAE's 1x1 attention convs)
                       for start, _ in index.get((code, "N", tensor.numel()), ()) if start not in seen]  # fmt: skip
        if len(shape) == 2:
            candidates += [_Candidate(start, shape, (1, shape[0]), copy=True)
                           for start, _ in index.get((code, "T", (shape[1], shape[0])), ())]  # fmt: skip
        # First the leading bytes, straight from the map (a slice starts with the tensor's first elements, a
        # transpose with its first one): most candidates end there, without a tensor op.
        import torch

        head = tensor.reshape(-1)[:4].view(torch.uint8).numpy().tobytes()
        self.whole  # noqa: B018 - maps the file
        assert self._map is not None
        for candidate in candidates:
            lead = head if candidate.stride == contiguous else head[: tensor.element_size()]
            if self._map[candidate.offset : candidate.offset + len(lead)] != lead:
                continue
            if place := self._matching(tensor, candidate, whole=True):
                return place
        return None

    def _tensor_index(self) -> dict[tuple[Any, ...], list[tuple[int, tuple[int, ...]]]]:
        if self._index is None:
            self._index = {}
            for info in self._header.tensors.values():
                start = self._header.data_offset + info.offsets[0]
                self._index.setdefault((info.dtype, info.shape[1:]), []).append((start, info.shape))
                self._index.setdefault((info.dtype, "N", math.prod(info.shape)), []).append((start, info.shape))
                if len(info.shape) == 2:
                    self._index.setdefault((info.dtype, "T", info.shape), []).append((start, info.shape))
        return self._index

    def _matching(self, tensor: Any, candidate: _Candidate, whole: bool) -> list[Any] | None:
        """The key-map place of `candidate` when the file's bytes there are `tensor`'s: compared at the first,
        middle and last elements, and with `whole` bit for bit."""
        size = tensor.element_size()
        end = candidate.offset + _extent(candidate.shape, candidate.stride) * size
        if candidate.offset % size or candidate.offset < self._header.data_offset or end > self._header.file_size:
            return None
        code = _DTYPE_CODES.get(str(tensor.dtype).removeprefix("torch."))
        if code is None:
            return None
        place = [candidate.offset, code, list(candidate.shape), list(candidate.stride), candidate.copy]
        view = self.view(*place[:4])  # compared where it lies; copied only at load
        last = tuple(n - 1 for n in candidate.shape)
        for index in (tuple(0 for _ in last), tuple(n // 2 for n in candidate.shape), last):
            if not _same_bits(view[index], tensor[index]):
                return None
        return place if not whole or _same_bits(view, tensor) else None


def _same_bits(a: Any, b: Any) -> bool:
    import torch

    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    # numpy's comparison runs at memory speed; torch.equal took 18x as long here.
    return bool(np.array_equal(a.view(bits).numpy(), b.view(bits).numpy()))


def _extent(shape: Any, stride: Any) -> int:
    """Elements from a view's first to its last element, inclusive."""
    return 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) if all(shape) else 0


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _torch_dtype(code: str) -> Any:
    import torch

    names = {value: key for key, value in _DTYPE_CODES.items()}
    return getattr(torch, names[code])


def _class_of(module: Any) -> list[str]:
    library = type(module).__module__.split(".")[0]
    if library not in _LIBRARIES:
        raise ValueError(f"cannot record a {type(module).__name__} from {library}")
    return [library, type(module).__name__]


def _save_config(module: Any, folder: Path) -> None:
    from diffusers import ModelMixin

    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(module, ModelMixin):
        module.save_config(str(folder))
    else:  # a transformers model (the text encoders)
        module.config.save_pretrained(str(folder))


def _build(class_of: list[str], folder: Path, state: dict[str, Any], buffers: dict[str, Any]) -> Any:
    """A component from its config on the meta device (nothing allocated), then `state` and `buffers` assigned to
    it: no weight is copied."""
    import torch
    from diffusers import ModelMixin

    library, name = class_of
    if library not in _LIBRARIES:
        raise ValueError(f"the key map names a class from {library}")
    cls = getattr(importlib.import_module(library), name)
    with torch.device("meta"):
        if issubclass(cls, ModelMixin):
            module = cls.from_config(cls.load_config(str(folder)))
        else:
            module = cls(cls.config_class.from_pretrained(str(folder)))
    module.load_state_dict(state, strict=True, assign=True)
    for key, value in buffers.items():
        owner, _, leaf = key.rpartition(".")
        holder = module.get_submodule(owner)
        if leaf not in holder._buffers:
            raise KeyError(f"{name} has no buffer {key}")
        holder._buffers[leaf] = value  # in place of the meta one; persistence is kept
    left = [key for key, value in (*module.named_parameters(), *module.named_buffers()) if value.is_meta]
    if left:
        raise ValueError(f"the key map leaves {name}'s {left[0]} empty")
    return module.eval()


def _cast(tensor: Any, dtype: Any) -> Any:
    """`tensor` in the job's precision, as `pipe.to(dtype)` casts it (floating-point tensors only)."""
    return tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor


_ABANDONED_AFTER_S = 3600  # a write takes seconds: an older half-written folder's process died


def _tidy(folder: Path) -> None:
    """Remove what no load will use again: half-written entries of killed processes (hours old), folders of
    the previous schema (full weight copies) and entries whose original file is gone or changed."""
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                if ".partial" in entry.name:
                    if time.time() - entry.stat().st_mtime > _ABANDONED_AFTER_S:
                        shutil.rmtree(entry, ignore_errors=True)
                elif (entry / KEYMAP).is_file():
                    if _source_changed(entry / KEYMAP):
                        shutil.rmtree(entry, ignore_errors=True)
                elif (entry / "model_index.json").is_file():
                    shutil.rmtree(entry, ignore_errors=True)


def _entry_of(target: Path, source: dict[str, Any]) -> bool:
    """Whether `target` holds a complete entry of this schema for the file `source` describes."""
    try:
        keymap = json.loads((target / KEYMAP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(keymap, dict) and keymap.get("schema") == SCHEMA and keymap.get("source") == source


def _source_changed(keymap: Path) -> bool:
    try:
        source = json.loads(keymap.read_text())["source"]
        stat = Path(source["path"]).stat()
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False  # unreadable here: leave it to the load that finds it
    return (stat.st_size, stat.st_mtime_ns) != (source["size"], source["mtime_ns"])


def write_safetensors(state: dict[str, Any], path: Path) -> None:
    """`state` as a safetensors file (the format's header, then each tensor's bytes in header order), each
    tensor's memory handed straight to the file."""
    import torch

    names = sorted(state)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        tensor = state[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPE_CODES[str(tensor.dtype).removeprefix("torch.")],
                        "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for name in names:
            tensor = state[name].detach().cpu().contiguous().reshape(-1)
            if tensor.numel():
                stream.write(tensor.view(torch.uint8).numpy())


def _failure_note(target: Path, error: BaseException) -> str:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return (
        f"Could not cache the converted model in {target.parent} ({reason}); it will be converted again on the "
        "next start."
    )
