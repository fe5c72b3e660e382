"""Upscaler networks, run in overlapping tiles so big images fit in memory. The ESRGAN family and Real-ESRGAN's
compact network are built here; every other architecture has its own backend module (`upscale_<name>.py`, named
by `_BUILDERS` and the branches of `load_upscaler`; docs/architecture.md lists them).

The network is built from what the header says (desktop.engine.library.upscaler) and its tensors are
loaded strictly from safetensors: a pickled `.pth` is converted first, in a child process, by
desktop.engine.backends.pickle_convert, like any pickled checkpoint.

Tiles overlap by `overlap` input pixels on every inner side and are blended with linear ramps across
the overlap, so no seam shows; the network's receptive field reaches about as far as the overlap, so
the tiled result differs from a whole-image run only slightly, in the blended bands.

torch is imported inside the functions: only the backend and `marble upscale` load this module.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from desktop.engine.errors import Cancelled, ModelError
from desktop.engine.library.checkpoint import read_safetensors_header, sniff_file_type
from desktop.engine.library.upscaler import UpscalerInfo, inspect_upscaler

# Layouts whose network is built from the header alone: the backend module (imported only when used) and its
# builder. The others below also adjust the loaded tensors or the shape first.
_BUILDERS: dict[str, tuple[str, str]] = {
    "ditn": ("upscale_ditn", "build_ditn"),
    "rcan": ("upscale_cnn", "build_rcan"),
    "swiftsrgan": ("upscale_cnn", "build_swiftsrgan"),
    "mosr": ("upscale_mosr", "build_mosr"),
    "seemore": ("upscale_seemore", "build_seemore"),
    "moesr": ("upscale_moesr", "build_moesr"),
    "scunet": ("upscale_restoration", "build_scunet"),
    "dncnn": ("upscale_restoration", "build_dncnn"),
    "drunet": ("upscale_restoration", "build_drunet"),
    "dctlsa": ("upscale_dctlsa", "build_dctlsa"),
    "retinexformer": ("upscale_retinexformer", "build_retinexformer"),
    "cidnet": ("upscale_cidnet", "build_cidnet"),
    "mixdehazenet": ("upscale_dehaze", "build_mixdehazenet"),
    "nafnet": ("upscale_nafnet", "build_nafnet"),
    "fbcnn": ("upscale_fbcnn", "build_fbcnn"),
    "aurasr": ("upscale_aurasr", "build_aurasr"),
    "fftformer": ("upscale_fftformer", "build_fftformer"),
    "span": ("upscale_efficient", "build_span"),
    "plksr": ("upscale_efficient", "build_plksr"),
    "safmn": ("upscale_safmn", "build_safmn"),
    "safmn-bcie": ("upscale_safmn", "build_safmn_bcie"),
    "kbnet": ("upscale_kbnet", "build_kbnet"),
    "kbnet-l": ("upscale_kbnet", "build_kbnet_l"),
}

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 16


def load_upscaler(path: Path, device: str = "cpu") -> tuple[Any, UpscalerInfo]:
    """(the network in eval mode on `device`, its shape) from a safetensors file; ModelError otherwise."""
    from safetensors.torch import load_file

    if sniff_file_type(path) != "safetensors":
        raise ModelError(f"{path.name} is not a safetensors file; convert a pickled upscaler on import first.")
    info = inspect_upscaler(read_safetensors_header(path), path.name)
    state = load_file(str(path))
    if info.layout == "basicsr":
        state = _esrgan_names(state, info)
    if info.layout in _BUILDERS:
        module, builder = _BUILDERS[info.layout]
        network = getattr(importlib.import_module(f"desktop.engine.backends.{module}"), builder)(info)
    elif info.layout in ("swinir", "hat", "swin2sr"):
        from desktop.engine.backends.upscale_transformers import build_swinir, loadable_state

        state, network = loadable_state(state), build_swinir(info)
    elif info.layout == "omnisr":
        from desktop.engine.backends.upscale_omni import build_omnisr

        # The published OmniSR files were saved after a FLOP count (thop) left its counters in the state.
        state = {key: value for key, value in state.items() if not key.endswith(("total_ops", "total_params"))}
        network = build_omnisr(info)
    elif info.layout == "drct":
        from desktop.engine.backends.upscale_drct import build_drct
        from desktop.engine.backends.upscale_transformers import loadable_state

        state, network = loadable_state(state), build_drct(info)
    elif info.layout == "dat":
        from desktop.engine.backends.upscale_transformers import build_dat, dat_split_from_biases, loadable_state

        info = dat_split_from_biases(state, info)
        state, network = loadable_state(state), build_dat(info)
    elif info.layout == "rgt":
        from desktop.engine.backends.upscale_rgt import build_rgt
        from desktop.engine.backends.upscale_transformers import dat_split_from_biases, loadable_state

        # RGT's window table is DAT's: the same orientation rule, the same derived buffers left out.
        info = dat_split_from_biases(state, info)
        state, network = loadable_state(state), build_rgt(info)
    elif info.layout == "atd":
        from desktop.engine.backends.upscale_atd import build_atd
        from desktop.engine.backends.upscale_transformers import loadable_state

        state, network = loadable_state(state), build_atd(info)
    elif info.layout == "cugan":
        from desktop.engine.backends.upscale_cugan import build_cugan

        # The pro models' `pro` entry is a flag the header has read, not a weight (its shape varies).
        state, network = {key: value for key, value in state.items() if key != "pro"}, build_cugan(info)
    elif info.layout == "craft":
        from desktop.engine.backends.upscale_craft import DERIVED, build_craft, craft_split_from_biases

        info = craft_split_from_biases(state, info)
        state = {key: value for key, value in state.items() if key not in DERIVED}
        network = build_craft(info)
    elif info.layout == "fdat":
        from desktop.engine.backends.upscale_fdat import build_fdat

        # The upsampler's settings tensor was read with the header; the network holds no copy of it.
        state = {key: value for key, value in state.items() if key != "upsampler.MetaUpsample"}
        network = build_fdat(info)
    elif info.layout == "grl":
        from desktop.engine.backends.upscale_grl import build_grl
        from desktop.engine.library.upscaler_grl import GRL_DERIVED, unprefixed

        # Some published files carry the position buffers the header read the sizes from; not weights.
        state = {key: value for key, value in unprefixed(state).items() if key not in GRL_DERIVED}
        network = build_grl(info)
    elif info.layout == "uformer":
        from desktop.engine.backends.upscale_transformers import loadable_state
        from desktop.engine.backends.upscale_uformer import build_uformer

        state, network = loadable_state(state), build_uformer(info)  # position indices recomputed
    elif info.layout == "ipt":
        from desktop.engine.backends.upscale_ipt import IPT_DERIVED, build_ipt, ipt_colour_range

        state = {key: value for key, value in state.items() if key not in IPT_DERIVED}
        network = build_ipt(info, ipt_colour_range(state))
    elif info.layout == "mmrealsr":
        from desktop.engine.backends.upscale_mmrealsr import build_mmrealsr, mmrealsr_names

        state, network = mmrealsr_names(state), build_mmrealsr(info)
    else:
        network = _build(info)
    try:
        network.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except RuntimeError as error:
        raise ModelError(f"{path.name}'s tensors do not fit the {info.label}: {_load_problem(error)}") from None
    return network.eval().to(device), info


def _load_problem(error: RuntimeError) -> str:
    """The line of torch's strict-load message that says what is missing or extra, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__
    return line if len(line) <= 300 else line[:300] + "..."


@functools.cache
def rrdb_class() -> Any:
    """ESRGAN's residual-in-residual dense block class, `Rrdb(features, growth)`, in the original ESRGAN names
    (RDB1..RDB3, convK.0): shared by the ESRGAN family and MMRealSR's trunk. Built once, torch imported late."""
    import torch
    from torch import nn

    def conv(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, 1, 1)

    class DenseBlock(nn.Module):
        def __init__(self, nf: int, gc: int) -> None:
            super().__init__()
            for k in range(1, 6):
                layers: list[nn.Module] = [conv(nf + (k - 1) * gc, gc if k < 5 else nf)]
                if k < 5:
                    layers.append(nn.LeakyReLU(0.2, inplace=True))
                setattr(self, f"conv{k}", nn.Sequential(*layers))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = [x]
            for k in range(1, 5):
                features.append(getattr(self, f"conv{k}")(torch.cat(features, 1)))
            return self.conv5(torch.cat(features, 1)) * 0.2 + x

    class Rrdb(nn.Module):
        def __init__(self, nf: int, gc: int) -> None:
            super().__init__()
            self.RDB1, self.RDB2, self.RDB3 = DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x

    return Rrdb


def _build(info: UpscalerInfo) -> Any:
    if info.layout == "srvgg":
        return _build_compact(info)
    import torch
    from torch import nn

    def conv(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, 1, 1)

    Rrdb = rrdb_class()

    class Shortcut(nn.Module):
        def __init__(self, sub: nn.Module) -> None:
            super().__init__()
            self.sub = sub

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.sub(x)

    class Unshuffled(nn.Sequential):
        """Real-ESRGAN's x2 and x1 models see their input pixel-unshuffled (more channels, smaller)."""

        def __init__(self, factor: int, *layers: nn.Module) -> None:
            super().__init__(*layers)
            self.factor = factor

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.factor > 1:
                x = nn.functional.pixel_unshuffle(x, self.factor)
            return super().forward(x)

    nf, gc = info.features, info.growth
    ups = max(0, (info.scale * _unshuffle(info)).bit_length() - 1)
    layers: list[nn.Module] = [
        conv(info.in_channels * _unshuffle(info) ** 2, nf),
        Shortcut(nn.Sequential(*(Rrdb(nf, gc) for _ in range(info.blocks)), conv(nf, nf))),
    ]
    for _ in range(ups):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(nf, nf), nn.LeakyReLU(0.2, inplace=True)]
    layers += [conv(nf, nf), nn.LeakyReLU(0.2, inplace=True), conv(nf, info.out_channels)]
    network = Unshuffled(_unshuffle(info))
    network.model = nn.Sequential(*layers)
    return network


def _build_compact(info: UpscalerInfo) -> Any:
    """Real-ESRGAN's SRVGGNetCompact, from its published layout: conv, PReLU, num_conv x (conv, PReLU),
    conv to out x scale^2 channels, pixel shuffle; the network learns the residual over a nearest upsample."""
    import torch
    from torch import nn

    class Compact(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            nf, convs = info.features, info.blocks
            layers: list[nn.Module] = [nn.Conv2d(info.in_channels, nf, 3, 1, 1), nn.PReLU(nf)]
            for _ in range(convs):
                layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)]
            layers.append(nn.Conv2d(nf, info.out_channels * info.scale**2, 3, 1, 1))
            self.body = nn.ModuleList(layers)
            self.shuffle = nn.PixelShuffle(info.scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x
            for layer in self.body:
                out = layer(out)
            base = nn.functional.interpolate(x, scale_factor=info.scale, mode="nearest")
            return self.shuffle(out) + base

    return Compact()


def _unshuffle(info: UpscalerInfo) -> int:
    return {2: 2, 1: 4}.get(info.scale, 1) if info.layout == "basicsr" else 1


def _esrgan_names(state: dict[str, Any], info: UpscalerInfo) -> dict[str, Any]:
    """Real-ESRGAN's (BasicSR's) tensor names in the original ESRGAN ones that `_build` uses."""
    ups = max(0, (info.scale * _unshuffle(info)).bit_length() - 1)
    hr = 2 + 3 * ups  # after conv_first, the trunk and (upsample, conv, LeakyReLU) per 2x
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        if key.startswith("conv_first."):
            new = "model.0." + key.split(".", 1)[1]
        elif key.startswith("body."):
            block, rdb, layer, rest = key.split(".")[1:5]
            new = f"model.1.sub.{block}.{rdb.upper()}.{layer}.0.{rest}"
        elif key.startswith("conv_body."):
            new = f"model.1.sub.{info.blocks}." + key.split(".", 1)[1]
        elif key.startswith("conv_up"):
            index = int(key[len("conv_up")]) - 1
            new = f"model.{3 + 3 * index}." + key.split(".", 1)[1]
        elif key.startswith("conv_hr."):
            new = f"model.{hr}." + key.split(".", 1)[1]
        elif key.startswith("conv_last."):
            new = f"model.{hr + 2}." + key.split(".", 1)[1]
        renamed[new] = value
    return renamed


def upscale(
    network: Any,
    scale: int,
    image: Image.Image,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    should_cancel: Callable[[], bool] | None = None,
) -> Image.Image:
    """`image` upscaled by the network's `scale`, in tiles of `tile` input pixels (0 = whole image)."""
    import torch

    largest = getattr(network, "largest_tile", 0)
    if largest:  # a network sized for fixed tiles (AuraSR's 64 px): no tile, overlap included, is larger
        overlap = min(overlap, largest // 8)
        tile = largest - 2 * overlap if tile <= 0 else min(tile, largest - 2 * overlap)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    height, width = rgb.shape[:2]
    source = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    device = next(network.parameters()).device
    if tile <= 0 or (tile >= width and tile >= height):
        with torch.inference_mode():
            out = network(source.to(device)).float().cpu()[0]
        return _to_image(out)
    # One row of tiles at a time: rows that no later tile reaches are written out as 8-bit pixels at
    # once, and only the band the next row shares is carried over, so memory holds one strip, not a
    # float copy of the whole result (a 2048 px image at 4x would be 1 GB of floats).
    overlap = min(overlap, tile // 2)
    result = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    carry: tuple[Any, Any] | None = None
    for top in range(0, height, tile):
        y0, y1 = max(0, top - overlap), min(height, top + tile + overlap)
        more_rows = top + tile < height
        total = torch.zeros((3, (y1 - y0) * scale, width * scale))
        weights = torch.zeros((1, (y1 - y0) * scale, width * scale))
        if carry is not None:
            rows = carry[0].shape[1]
            total[:, :rows] += carry[0]
            weights[:, :rows] += carry[1]
        for left in range(0, width, tile):
            if should_cancel is not None and should_cancel():
                raise Cancelled("Upscale cancelled.")
            x0, x1 = max(0, left - overlap), min(width, left + tile + overlap)
            with torch.inference_mode():
                out = network(source[:, :, y0:y1, x0:x1].to(device)).float().cpu()[0]
            # A side blends only where a neighbouring tile shares it (one exists beyond this tile's own cells).
            ramp = _ramp(y1 - y0, y0 > 0, more_rows, overlap, scale)[:, None] * _ramp(
                x1 - x0, x0 > 0, left + tile < width, overlap, scale
            )[None, :]
            total[:, :, x0 * scale : x1 * scale] += out * ramp
            weights[:, :, x0 * scale : x1 * scale] += ramp
            del out
        done = ((top + tile - overlap) if more_rows else y1) * scale - y0 * scale
        result[y0 * scale : y0 * scale + done] = _to_array(total[:, :done] / weights[:, :done])
        carry = (total[:, done:], weights[:, done:])
    return Image.fromarray(result, "RGB")


def _ramp(length: int, before: bool, after: bool, overlap: int, scale: int) -> Any:
    """Per-pixel blend weight along one side of a tile: rising across the shared band with the tile
    before it, falling across the band with the tile after it (2 x overlap wide), 1 elsewhere."""
    import torch

    ramp = torch.ones(length * scale)
    band = 2 * overlap * scale
    if band:
        rising = (torch.arange(band, dtype=torch.float32) + 0.5) / band
        if before:
            n = min(band, ramp.numel())
            ramp[:n] = torch.minimum(ramp[:n], rising[:n])
        if after:
            n = min(band, ramp.numel())
            ramp[-n:] = torch.minimum(ramp[-n:], rising.flip(0)[-n:])
    return ramp


def _to_image(chw: Any) -> Image.Image:
    return Image.fromarray(_to_array(chw), "RGB")


def _to_array(chw: Any) -> np.ndarray:
    return (chw.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
