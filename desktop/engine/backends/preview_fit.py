"""A preview colour table fitted from an autoencoder that has no published one (Sana's DC-AE).

The published tables (preview.py) are least-squares fits of the decoder's colours on the latents; the same fit
is made here at the first job with previews, from the loaded autoencoder itself: calibration pictures, one patch
of colour and texture per latent cell, are encoded and decoded, and each cell's latent vector is paired with the
mean colour its decoded patch came out in. Cells are what the preview shows (one pixel per latent), so this is
the best linear preview of what the decoder would draw, at the cost of one small encode and decode (a 256x256
batch of two at the DC-AE's 32x factor: 128 cells for 33 unknowns per colour). The textures matter: flat patches
alone would give latents that move along only a few directions, leaving the other channels' weights to chance.

That encode and decode take some 19 s on a 2-core CPU for Sana's 312M-parameter DC-AE (a fraction of a second on a
GPU), so each fitted table is kept in the cache folder under a fingerprint of the autoencoder's weights: one fit per
autoencoder, ever. torch is imported inside the functions (pyproject's list of heavy imports).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.engine.backends.preview import ColourTable, fit_colour_table
from desktop.engine.errors import StorageError
from desktop.engine.outputs import write_atomically

_SAMPLED = 256  # values of each tensor in the fingerprint

CELLS = 8  # per side of each calibration picture
PICTURES = 2


class FitStopped(Exception):
    """The fit was stopped (the job cancelled) between two of its encodes and decodes; nothing was kept."""


@dataclass(frozen=True)
class FitWatch:
    """The job's view of a fit: `starting` is called once before a fit begins (not for a table read from the cache),
    `stopped` is asked before each encode and decode, so a cancelled job waits for one of them at most."""

    starting: Callable[[], None] = lambda: None
    stopped: Callable[[], bool] = lambda: False


def calibration_pictures(cell: int, seed: int = 0) -> np.ndarray:
    """(PICTURES, 3, CELLS*cell, CELLS*cell) pictures in [-1, 1]: per latent cell, a seeded colour from across the
    colour cube (saturated and grey ones alike) with a seeded amount of per-pixel texture on it."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(-0.8, 0.8, size=(PICTURES, 3, CELLS, CELLS))
    amounts = rng.uniform(0.0, 0.3, size=(PICTURES, 1, CELLS, CELLS))
    side = CELLS * cell
    texture = rng.normal(size=(PICTURES, 3, side, side)) * amounts.repeat(cell, axis=2).repeat(cell, axis=3)
    pictures = colours.repeat(cell, axis=2).repeat(cell, axis=3) + texture
    return pictures.clip(-1.0, 1.0).astype(np.float32)


def fit_from_autoencoder(
    vae: Any, factor: int, latent_scale: float, device: Any, stopped: Callable[[], bool] = lambda: False
) -> ColourTable:
    """The table for latents in the space the transformer works in (the autoencoder's times `latent_scale`, its
    config's scaling factor), from `vae` whose pictures are `factor` times its latents' size, run on `device` (the
    pipeline's execution device; offload hooks bring the weights there). Raises FitStopped when `stopped()` says
    so before one of the pictures' encodes or decodes (each picture goes through on its own for that)."""
    import torch
    import torch.nn.functional as F

    loaded = vae.dtype
    # bf16 convolutions on a CPU run many times slower than float32 ones (the DC-AE's fit took minutes, not 19 s):
    # there it runs in float32, and the weights go back to bf16 exactly as they were.
    upcast = torch.device(device).type == "cpu" and loaded != torch.float32
    if upcast:
        vae.to(torch.float32)
    try:
        pictures = torch.from_numpy(calibration_pictures(factor)).to(device, vae.dtype)
        encoded, decoded_parts = [], []
        with torch.inference_mode():
            for picture in pictures.split(1):
                _check(stopped)
                latent = vae.encode(picture, return_dict=False)[0]
                encoded.append(latent if isinstance(latent, torch.Tensor) else latent.mode())  # a KL autoencoder's
                _check(stopped)
                decoded_parts.append(vae.decode(encoded[-1], return_dict=False)[0])
    finally:
        if upcast:
            vae.to(loaded)
    latents, decoded = torch.cat(encoded), torch.cat(decoded_parts)
    cells = F.avg_pool2d(decoded.float().clamp(-1.0, 1.0), kernel_size=factor)
    channels = latents.shape[1]
    samples = (latents.float() * latent_scale).permute(0, 2, 3, 1).reshape(-1, channels)
    return fit_colour_table(
        samples.cpu().numpy(), cells.permute(0, 2, 3, 1).reshape(-1, 3).cpu().numpy(), "fitted from the autoencoder"
    )


def _check(stopped: Callable[[], bool]) -> None:
    if stopped():
        raise FitStopped


def fingerprint(vae: Any) -> str:
    """A key for the autoencoder's weights: every tensor's name, shape and first values (a fine-tune changes them
    all; reading them all would cost a second per GB). Read before a memory mode moves the weights away."""
    digest = hashlib.sha256()
    for name, tensor in vae.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().reshape(-1)[:_SAMPLED].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_fit(
    vae: Any, factor: int, latent_scale: float, device: Any, folder: Path, key: str, watch: FitWatch = FitWatch()
) -> ColourTable:
    """`fit_from_autoencoder`'s table, read from `folder` when this autoencoder (`key`: its `fingerprint`) was fitted
    before, else fitted (`watch` told, and asked whether to stop) and kept there. A table that cannot be read is
    fitted again; one that cannot be written is used all the same (previews only: a full disk costs the next load
    the fit). A stopped fit raises FitStopped and keeps nothing."""
    path = folder / f"{key}-{factor}-{latent_scale:.6g}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        factors, bias = np.array(stored["factors"], np.float32), np.array(stored["bias"], np.float32)
        if factors.shape == (vae.config.latent_channels, 3) and bias.shape == (3,) and np.isfinite(factors).all():
            return ColourTable(str(stored["name"]), factors, bias)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # fitted again below
    watch.starting()
    table = fit_from_autoencoder(vae, factor, latent_scale, device, watch.stopped)
    text = json.dumps({"name": table.name, "factors": table.factors.tolist(), "bias": table.bias.tolist()})
    try:
        write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))
    except StorageError:
        pass
    return table
