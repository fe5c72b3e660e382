"""A library VAE decoding instead of the model's own, switched per job without reloading the model.

The chosen VAE's weights are copied into the loaded pipeline's VAE module in place, so the image-to-image
and inpainting pipelines made from it with from_pipe (which share that module) decode with it too; the
model's own weights are kept on the CPU and copied back when a job asks for the model's own VAE again.
The scaling factor stays the model's: SD 1.x and SDXL VAEs have one architecture, and A1111 also decodes
a swapped VAE with the model's latent scale.

Imports no torch itself: tensors come from safetensors and are handled by their own methods; the
LDM-to-diffusers key conversion is passed in by the diffusers backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.engine.backends.base import VaeHash
from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.lora import AdapterCatalog
from desktop.engine.library.vae import inspect_vae
from desktop.engine.terminal_text import library_error

# (LDM state dict without prefix, the VAE's diffusers config) -> diffusers state dict
ConvertLdm = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class _Identity:
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _Identity:
        stat = path.stat()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


class VaeSwitcher:
    """Keeps the loaded pipeline's VAE weights in step with each request's `vae`. One thread, like the pipe."""

    def __init__(self, catalog: AdapterCatalog, convert_ldm: ConvertLdm, autov2: Callable[[Path], str]) -> None:
        self._catalog = catalog
        self._convert_ldm = convert_ldm
        self._autov2 = autov2
        self._original: dict[str, Any] | None = None  # the model's own VAE weights, on the CPU
        self._current: tuple[_Identity, VaeHash] | None = None

    @property
    def catalog(self) -> AdapterCatalog:
        return self._catalog

    def forget(self) -> None:
        """The pipeline is gone (unloaded or replaced): its VAE went with it."""
        self._original = None
        self._current = None

    def apply(self, pipe: Any, name: str, model_name: str) -> VaeHash | None:
        """Decode with the library VAE `name` ("" = the model's own); returns what metadata records."""
        if not name.strip():
            self._restore(pipe)
            return None
        entry = self._catalog.get(name.strip())
        identity = _Identity.of(entry.path)
        if self._current is not None and self._current[0] == identity:
            return self._current[1]
        state = self._read(entry.name, entry.path, pipe.vae, model_name)
        if self._original is None:
            self._original = {key: value.detach().to("cpu", copy=True) for key, value in pipe.vae.state_dict().items()}
        try:
            _copy_into(pipe.vae, state)
        except (RuntimeError, KeyError) as error:
            self._restore(pipe, force=True)
            raise ModelError(
                f"The VAE {entry.name!r} does not fit {model_name}: {_short(error)}. Pick a VAE made for this kind "
                "of model."
            ) from error
        chosen = VaeHash(entry.name, self._autov2(entry.path))
        self._current = (identity, chosen)
        return chosen

    def _read(self, name: str, path: Path, vae: Any, model_name: str) -> dict[str, Any]:
        kind = sniff_file_type(path)
        if kind != "safetensors":
            raise ModelError(
                f"The VAE {name!r} is not a safetensors file ({kind}); a pickled file can run code when loaded, so "
                "Marble refuses it. Get the .safetensors version."
            )
        info = inspect_vae(read_safetensors_header(path, name=path.name), name)
        wanted = getattr(vae.config, "latent_channels", None)
        if info.latent_channels != wanted:
            raise ModelError(
                f"The VAE {name!r} is a {info.label} with {info.latent_channels} latent channels; {model_name} "
                f"works in {wanted}. Pick a VAE made for this kind of model."
            )
        from safetensors.torch import load_file  # torch is loaded already: this runs on the generation thread

        try:
            tensors = load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors' own error type is not an OSError
            raise ModelError(f"The VAE {name!r} cannot be read: {_short(error)}") from error
        own = {key[len(info.prefix):]: value for key, value in tensors.items() if key.startswith(info.prefix)}
        if info.layout == "ldm":
            try:
                own = self._convert_ldm(own, dict(vae.config))
            except (KeyError, IndexError, ValueError, RuntimeError) as error:
                raise ModelError(f"The VAE {name!r} does not fit {model_name}: {_short(error)}.") from error
        return own

    def _restore(self, pipe: Any, force: bool = False) -> None:
        if self._original is not None and (self._current is not None or force):
            _copy_into(pipe.vae, self._original)
        self._current = None


def _copy_into(module: Any, state: Mapping[str, Any]) -> None:
    """Copy weights into the module's own tensors (their device and dtype stay): every key must match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise KeyError(
            f"{len(missing)} of the model's VAE tensors are missing from it ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}) and {len(unexpected)} of its tensors have no place"
        )
    for key, value in state.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise RuntimeError(
                f"its tensor {key} has shape {tuple(value.shape)}, the model's {tuple(own[key].shape)}"
            )
    for key, value in state.items():
        target = own[key]
        target.data.copy_(value.to(device=target.device, dtype=target.dtype))


def _short(error: BaseException) -> str:
    # A missing tensor comes as a KeyError, whose text is the name in quotes: the name alone reads better.
    return library_error(error).strip("'\"")
