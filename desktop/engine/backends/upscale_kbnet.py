"""KBNet-S, Marble's own implementation, built from the shape desktop.engine.library.upscaler_kbnet reads: its
kernel-basis blocks in NAFNet's U-Net frame (desktop.engine.backends.upscale_nafnet's `unet_frame`, which pads
with zeros to a multiple of 2^levels as the published network does and crops back). Parameter names follow
the file's (`conv11.1`, `conv2.2`, `w`, `b`, `ga1`, `attgamma`, ...) so a strict load checks every tensor.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_nafnet import unet_frame
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_kbnet import GROUP, KERNEL, KBNetShape


def kbnet_block(width: int, shape: KBNetShape) -> Any:
    """One KBNet-S block: the kernel-basis branch gated by the large-kernel branch and the channel attention,
    then NAFNet's gated feed-forward, each added back scaled per channel (`beta`, `gamma`)."""
    import torch
    from torch import nn
    from torch.nn import functional

    groups = width // GROUP
    per_group = width // groups  # input (and output) channels of each basis conv group
    taps = per_group * KERNEL * KERNEL  # one output channel's weights in a group
    bases, inner = shape.bases, min(width, 32)
    hidden = int(width * shape.ffn_ratio)

    class ChannelNorm(nn.Module):
        """LayerNorm over the channels of an NCHW map (eps 1e-6, as trained)."""

        def __init__(self) -> None:
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(1, keepdim=True)
            variance = (x - mean).pow(2).mean(1, keepdim=True)
            return (x - mean) / (variance + 1e-6).sqrt() * self.weight[:, None, None] + self.bias[:, None, None]

    class Gate(nn.Module):
        """One half of the channels times the other (a parameter-free slot in `conv2`)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = x.chunk(2, dim=1)
            return first * second

    def mixed_kernels(x: torch.Tensor, weights: torch.Tensor, kernels: torch.Tensor, biases: torch.Tensor) -> Any:
        """Each pixel's own grouped 3x3 conv of `x`: the `bases` kernel sets (`kernels`, `biases`) summed with
        that pixel's `weights` (N, bases, H, W)."""
        batch, _, height, side = x.shape
        mix = weights.flatten(2).transpose(1, 2)  # (N, HW, bases)
        kernel = (mix @ kernels[0]).view(batch, height * side, groups, per_group, taps)
        # Each pixel's 3x3 neighbourhood, grouped as the kernel is: (N, HW, groups, taps, 1).
        patches = functional.unfold(x, KERNEL, padding=KERNEL // 2).view(batch, groups, taps, height * side)
        out = kernel @ patches.permute(0, 3, 1, 2)[..., None]
        out = out.reshape(batch, height * side, width) + mix @ biases[0]
        return out.transpose(1, 2).reshape(batch, width, height, side)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.norm2 = ChannelNorm(), ChannelNorm()
            self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, width, 1))
            if shape.lightweight:
                large = nn.Conv2d(width, width, 3, padding=1, groups=width)
            else:
                large = nn.Conv2d(width, width, 5, padding=2, groups=width // 4)
            self.conv11 = nn.Sequential(nn.Conv2d(width, width, 1), large)
            self.conv1 = nn.Conv2d(width, width, 1)
            self.conv21 = nn.Conv2d(width, width, 3, padding=1, groups=width)
            # The per-pixel basis weights: a depth-wise 3x3, a gate, a 1x1 to the bases; plus a plain 1x1.
            self.conv2 = nn.Sequential(
                nn.Conv2d(width, inner, 3, padding=1, groups=inner), Gate(), nn.Conv2d(inner // 2, bases, 1)
            )
            self.conv211 = nn.Conv2d(width, bases, 1)
            self.conv3 = nn.Conv2d(width, width, 1)
            self.conv4 = nn.Conv2d(width, hidden, 1)
            self.conv5 = nn.Conv2d(hidden // 2, width, 1)
            self.w = nn.Parameter(torch.zeros(1, bases, width * taps))
            self.b = nn.Parameter(torch.zeros(1, bases, width))
            self.ga1 = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.attgamma = nn.Parameter(torch.zeros(1, bases, 1, 1))
            self.beta = nn.Parameter(torch.zeros(1, width, 1, 1))
            self.gamma = nn.Parameter(torch.zeros(1, width, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            normed = self.norm1(x)
            weights = self.conv2(normed) * self.attgamma + self.conv211(normed)
            projected = self.conv21(self.conv1(normed))
            branch = mixed_kernels(projected, weights, self.w, self.b) * self.ga1 + projected
            branch = branch * self.conv11(normed) * self.sca(normed)
            y = x + self.conv3(branch) * self.beta
            first, second = self.conv4(self.norm2(y)).chunk(2, dim=1)
            return y + self.conv5(first * second) * self.gamma

    return Block()


def build_kbnet(info: UpscalerInfo) -> Any:
    """The KBNet-S network for `info` (layout "kbnet"), untrained: load the file's tensors into it strictly."""
    assert isinstance(info.detail, KBNetShape)
    shape = info.detail
    return unet_frame(info, shape.unet, lambda width: kbnet_block(width, shape))
