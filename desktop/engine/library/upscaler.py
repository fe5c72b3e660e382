"""Upscaler models without torch: what an ESRGAN-family file is, judged from its tensor names and shapes.

Two layouts name the same RRDB network (ESRGAN, Real-ESRGAN, BSRGAN and the community "4x-..." models):
the original ESRGAN one (`model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight`, ...) and the BasicSR one
Real-ESRGAN ships (`conv_first.weight`, `body.N.rdb1.conv1.weight`, ...). The header tells the block
count, the width, the colour channels and the scale (how many 2x upsampling convolutions there are), so
the backend builds the exact network and loads the tensors strictly: a file that does not fit is an error.

Other architectures (SwinIR, DAT, HAT, ...) are refused with their name where it can be recognised: their
loader (spandrel) needs torchvision, which Marble does not ship (docs/upscalers.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader

_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight")
_NEW_BLOCK = re.compile(r"body\.(\d+)\.rdb1\.conv1\.weight")
_OLD_UPCONV = re.compile(r"model\.(\d+)\.weight")
_OTHER_ARCHITECTURES = {
    "layers.0.residual_group.blocks.0.attn.relative_position_bias_table": "SwinIR",
    "layers.0.blocks.0.attn.qkv.weight": "DAT",
    "layers.0.residual_group.blocks.0.attn.relative_position_index": "HAT",
    "body.0.weight": "Real-ESRGAN compact (SRVGG)",
}


@dataclass(frozen=True)
class UpscalerInfo:
    """An RRDB upscaler's shape, from its header."""

    layout: str  # "esrgan" (original names) | "basicsr" (Real-ESRGAN's names)
    scale: int  # 1, 2, 4 or 8
    blocks: int
    features: int
    in_channels: int
    out_channels: int
    growth: int  # each dense block's inner width (32 in the published models)

    @property
    def label(self) -> str:
        return f"ESRGAN {self.scale}x ({self.blocks} blocks, {self.features} features)"


def inspect_upscaler(header: SafetensorsHeader, name: str = "this file") -> UpscalerInfo:
    """The RRDB network a header describes; raise ModelError naming what the file is otherwise."""
    tensors = header.tensors
    if "model.0.weight" in tensors and any(_OLD_BLOCK.fullmatch(key) for key in tensors):
        blocks = 1 + max(int(m[1]) for key in tensors if (m := _OLD_BLOCK.fullmatch(key)))
        first, growth = tensors["model.0.weight"].shape, tensors["model.1.sub.0.RDB1.conv1.0.weight"].shape[0]
        # Upsampling convolutions sit at model.3, model.6, ... (each after an upsample and a LeakyReLU);
        # the last two convolutions (hr, last) follow them.
        indices = sorted(int(m[1]) for key in tensors if (m := _OLD_UPCONV.fullmatch(key)))
        last = tensors[f"model.{indices[-1]}.weight"].shape
        scale = 2 ** max(0, len([i for i in indices if i >= 3]) - 2)
        return _checked(UpscalerInfo("esrgan", scale, blocks, first[0], first[1], last[0], growth), name)
    if "conv_first.weight" in tensors and any(_NEW_BLOCK.fullmatch(key) for key in tensors):
        blocks = 1 + max(int(m[1]) for key in tensors if (m := _NEW_BLOCK.fullmatch(key)))
        first, growth = tensors["conv_first.weight"].shape, tensors["body.0.rdb1.conv1.weight"].shape[0]
        ups = sum(1 for key in tensors if re.fullmatch(r"conv_up\d+\.weight", key))
        # Real-ESRGAN's x2 model unshuffles its input (4x the channels) and upsamples twice.
        unshuffle = {12: 2, 48: 4}.get(first[1], 1) if first[1] not in (1, 3, 4) else 1
        last = tensors["conv_last.weight"].shape
        info = UpscalerInfo("basicsr", 2**ups // unshuffle, blocks, first[0], first[1] // unshuffle**2, last[0], growth)
        return _checked(info, name)
    for probe, architecture in _OTHER_ARCHITECTURES.items():
        if probe in tensors:
            raise ModelError(
                f"{name} looks like a {architecture} upscaler; Marble runs ESRGAN-family (RRDB) upscalers only."
            )
    raise ModelError(f"{name} is not an upscaler model Marble knows (no ESRGAN / Real-ESRGAN tensor names).")


def _checked(info: UpscalerInfo, name: str) -> UpscalerInfo:
    if info.scale not in (1, 2, 4, 8) or info.in_channels not in (1, 3, 4) or info.out_channels not in (1, 3, 4):
        raise ModelError(f"{name} has an ESRGAN layout Marble cannot run ({info}).")
    return info
