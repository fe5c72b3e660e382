"""MoSR upscalers ("Mamba Out Super-Resolution"), Marble's own implementation, built from the shape the
header tells (desktop.engine.library.upscaler_mosr) so the file's tensors load strictly by their names.

The network is convolutions only: the gated block (MambaOut's unit, `gated_block`, written so that other
MambaOut-based upscalers can pass their own token mixer and residual), the channel LayerNorm and DySample
are shared with RealPLKSR's (desktop.engine.backends.upscale_efficient). Every conv pads by half its
kernel, so any input and tile size runs.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm, dysample
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_mosr import MOSR_DYSAMPLE_GROUPS, MoSRShape

_ENSEMBLE = 8  # the geometric-ensemble upsampler's predictions per output pixel (the 8 flips and rotations)


def gated_block(width: int, hidden: int, conv_channels: int, mixer: Any, layer_scale: bool) -> Any:
    """MambaOut's gated CNN block on an NCHW map: channel LayerNorm (`norm`), a 3x3 conv (`fc1`) to 2 x hidden
    channels split into a gate (hidden), an identity part and the `conv_channels` that `mixer` (`conv`)
    sees; Mish(gate) times (identity, mixed), a 3x3 conv (`fc2`) back to `width`, Mish. The residual is
    MoSR's (x + out - 0.5: its training centres the stack on 0.5) or, with `layer_scale`, out x `gamma`
    (one per channel) + x."""
    import torch
    from torch import nn
    from torch.nn import functional

    class GatedBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = channel_norm(width)
            self.fc1 = nn.Conv2d(width, 2 * hidden, 3, padding=1)
            self.conv = mixer
            self.fc2 = nn.Conv2d(hidden, width, 3, padding=1)
            if layer_scale:
                self.gamma = nn.Parameter(torch.ones(1, width, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate, kept, mixed = torch.split(self.fc1(self.norm(x)), [hidden, hidden - conv_channels, conv_channels], 1)
            out = functional.mish(self.fc2(functional.mish(gate) * torch.cat([kept, self.conv(mixed)], 1)))
            return out * self.gamma + x if layer_scale else out + (x - 0.5)

    return GatedBlock()


def build_mosr(info: UpscalerInfo) -> Any:
    """The MoSR network for `info` (layout "mosr"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    shape = info.detail
    assert isinstance(shape, MoSRShape)
    width, scale, colours = info.features, info.scale, info.out_channels

    def depthwise() -> nn.Conv2d:
        channels, kernel = shape.conv_channels, shape.kernel
        return nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    class Shortcut(nn.Module):
        """Two 3x3 conv + Mish layers beside a 1x1 conv, from the input straight to the features."""

        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(info.in_channels, width, 3, padding=1), nn.Mish(),
                                       nn.Conv2d(width, width, 3, padding=1), nn.Mish())  # fmt: skip
            self.conv11 = nn.Conv2d(info.in_channels, width, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x) + self.conv11(x)

    class EnsembleShuffle(nn.Module):
        """One conv predicting the sub-pixels eight times over (trained on the flips and rotations), averaged,
        then pixel-shuffled."""

        def __init__(self) -> None:
            super().__init__()
            self.in_to_k = nn.Conv2d(width, _ENSEMBLE * colours * scale**2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.in_to_k(x)
            out = out.view(out.shape[0], _ENSEMBLE, -1, *out.shape[2:]).mean(1)
            return functional.pixel_shuffle(out, scale)

    class MoSR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            blocks = [gated_block(width, shape.hidden, shape.conv_channels, depthwise(), False)
                      for _ in range(info.blocks)]  # fmt: skip
            self.gblocks = nn.Sequential(
                nn.Conv2d(info.in_channels, width, 3, padding=1), *blocks,
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.Mish(), nn.Conv2d(2 * width, width, 3, padding=1),
                nn.Mish(), nn.Conv2d(width, width, 1),
            )  # fmt: skip
            self.shortcut = Shortcut()
            if shape.upsampler == "dys":
                self.upsampler = dysample(width, colours, scale, MOSR_DYSAMPLE_GROUPS)
            elif shape.upsampler == "gps":
                self.upsampler = EnsembleShuffle()
            else:
                self.upsampler = nn.Sequential(nn.Conv2d(width, colours * scale**2, 3, padding=1),
                                               nn.PixelShuffle(scale))  # fmt: skip

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.upsampler(self.gblocks(x) + (self.shortcut(x) - 0.5))

    return MoSR()
