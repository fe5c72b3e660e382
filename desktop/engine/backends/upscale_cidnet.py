"""HVI-CIDNet, Marble's own implementation, built from the shape desktop.engine.library.upscaler_cidnet reads;
module and parameter names follow the file's (`HVE_block1.down.0`, `HV_LCA1.ffn.q_dwconv`, `trans.density_k`,
...) so a strict load checks every tensor.

The image goes into the HVI colour space: hue as an angle and saturation as a radius on a plane (H, V) that
is squeezed towards the centre where the image is dark (by sin(pi/2 x intensity) to a learned power k), and
the intensity I (the channel maximum). Two U-Nets of three levels each, one for the (H, V) plane and one for
I, exchange information at every level through cross-attention blocks (queries from one branch, keys and
values from the other, attention across channels); their outputs are added to the HVI image, which is mapped
back to RGB by inverting the squeeze and reading the hue and saturation as HSV.

The published forward pass is followed exactly, including where a block's output is kept only for a skip
connection (the second level's attention outputs) or not used at all (`I_LCA5`'s): the trained weights
expect that data flow. Its three halvings must meet their skips again, so the input is padded at the bottom
and right to a multiple of 8 by mirroring (spandrel's size requirement) and the result cropped back.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import math
from typing import Any

from desktop.engine.backends.upscale_efficient import channel_norm
from desktop.engine.backends.upscale_transformers import pad_to_multiple
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_cidnet import CIDNetShape

_EPS = 1e-8  # the colour transforms' guard against division by zero, as trained
# HSV -> RGB: for each sextant of the hue (0..5), which of (v, t, p, q) each of R, G, B takes.
_SEXTANTS = ((0, 3, 2, 2, 1, 0), (1, 0, 0, 3, 2, 2), (2, 2, 1, 0, 0, 3))


def build_cidnet(info: UpscalerInfo) -> Any:
    """The HVI-CIDNet network for `info` (layout "cidnet"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, CIDNetShape)
    shape = info.detail
    widths, heads = shape.channels, (0, *shape.heads)  # heads indexed by level; level 0 has no attention

    def resized(x: torch.Tensor, factor: float) -> torch.Tensor:
        # Bilinear with the corners aligned: what the published network's resampling layers do.
        return functional.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)

    class Down(nn.Module):
        """A 3x3 conv to the next width, halved bilinearly, a PReLU, optionally a layer norm."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            self.prelu = nn.PReLU()
            if shape.norm:
                self.norm = channel_norm(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.prelu(resized(self.down(x), 0.5))
            return self.norm(x) if shape.norm else x

    class Up(nn.Module):
        """A 3x3 conv to the level's width, doubled bilinearly, joined with the skip by a 1x1 (`up`), a
        PReLU, optionally a layer norm."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.up_scale = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            self.up = nn.Conv2d(cout * 2, cout, 1, bias=False)
            self.prelu = nn.PReLU()
            if shape.norm:
                self.norm = channel_norm(cout)

        def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            x = self.prelu(self.up(torch.cat((resized(self.up_scale(x), 2.0), skip), 1)))
            return self.norm(x) if shape.norm else x

    def edge_conv(cin: int, cout: int) -> nn.Sequential:
        """A 3x3 conv over edge-replicated borders (the file's `*_block0.1`)."""
        return nn.Sequential(nn.ReplicationPad2d(1), nn.Conv2d(cin, cout, 3, bias=False))

    class CrossAttention(nn.Module):
        """Queries from x, keys and values from y (each a 1x1 then a depth-wise 3x3); per head, the c x c
        similarity of L2-normalised channels over all pixels, times the head's temperature, mixes the values."""

        def __init__(self, dim: int, count: int) -> None:
            super().__init__()
            self.heads = count
            self.temperature = nn.Parameter(torch.ones(count, 1, 1))
            self.q = nn.Conv2d(dim, dim, 1, bias=False)
            self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
            self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
            self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=False)
            self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            b, c, h, w = x.shape

            def per_head(t: torch.Tensor) -> torch.Tensor:  # (b, c, h, w) -> (b, heads, c / heads, h w)
                return t.reshape(b, self.heads, c // self.heads, h * w)

            k, v = self.kv_dwconv(self.kv(y)).chunk(2, 1)
            q = functional.normalize(per_head(self.q_dwconv(self.q(x))), dim=-1)
            k = functional.normalize(per_head(k), dim=-1)
            attention = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(-1)
            return self.project_out((attention @ per_head(v)).reshape(b, c, h, w))

    class Enhance(nn.Module):
        """The intensity-enhancement feed-forward: a 1x1 out to two 2.66x halves through a depth-wise 3x3,
        each half plus tanh(its own depth-wise 3x3), their product back through a 1x1."""

        def __init__(self, dim: int) -> None:
            super().__init__()
            hidden = int(dim * 2.66)
            self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
            self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
            self.dwconv1 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
            self.dwconv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
            self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            first, second = self.dwconv(self.project_in(x)).chunk(2, 1)
            first = torch.tanh(self.dwconv1(first)) + first
            second = torch.tanh(self.dwconv2(second)) + second
            return self.project_out(first * second)

    class Exchange(nn.Module):
        """One cross-attention block (one norm for both inputs): attention from the other branch added, then
        the feed-forward -- added back on the intensity branch, replacing on the colour branch (`keep`)."""

        def __init__(self, level: int, keep: bool) -> None:
            super().__init__()
            dim = widths[level]
            self.keep = keep
            self.norm, self.gdfn, self.ffn = channel_norm(dim), Enhance(dim), CrossAttention(dim, heads[level])

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = x + self.ffn(self.norm(x), self.norm(y))
            return x + self.gdfn(self.norm(x)) if self.keep else self.gdfn(self.norm(x))

    class ColourSpace(nn.Module):
        """RGB <-> HVI, with the learned density k (`density_k`)."""

        def __init__(self) -> None:
            super().__init__()
            self.density_k = nn.Parameter(torch.full([1], 0.2))

        def to_hvi(self, rgb: torch.Tensor) -> torch.Tensor:
            red, green, blue = rgb.unbind(1)
            value, low = rgb.max(1)[0], rgb.min(1)[0]
            spread = value - low + _EPS
            # The channel that is the maximum picks the hue formula; red wins ties, then green; grey is 0.
            hue = 4.0 + (red - green) / spread
            hue = torch.where(green == value, 2.0 + (blue - red) / spread, hue)
            hue = torch.where(red == value, (0.0 + (green - blue) / spread) % 6, hue)
            hue = torch.where(low == value, torch.zeros_like(hue), hue)[:, None] / 6.0
            saturation = ((value - low) / (value + _EPS)).masked_fill(value == 0, 0)[:, None]
            value = value[:, None]
            squeeze = ((value * 0.5 * math.pi).sin() + _EPS).pow(self.density_k)
            angle = 2.0 * math.pi * hue
            return torch.cat((squeeze * saturation * angle.cos(), squeeze * saturation * angle.sin(), value), 1)

        def to_rgb(self, hvi: torch.Tensor) -> torch.Tensor:
            x, y = hvi[:, 0].clamp(-1, 1), hvi[:, 1].clamp(-1, 1)
            value = hvi[:, 2].clamp(0, 1)
            # The exponent as a Python number, as published (the same float32 value).
            squeeze = ((value * 0.5 * math.pi).sin() + _EPS).pow(self.density_k.item())
            x, y = (x / (squeeze + _EPS)).clamp(-1, 1), (y / (squeeze + _EPS)).clamp(-1, 1)
            hue = (torch.atan2(y, x) / (2 * math.pi)) % 1
            saturation = torch.sqrt(x**2 + y**2).clamp(0, 1)
            value = value.clamp(0, 1)
            sextant = torch.floor(hue * 6.0)
            fraction = hue * 6.0 - sextant
            levels = torch.stack((
                value,
                value * (1.0 - ((1.0 - fraction) * saturation)),
                value * (1.0 - saturation),
                value * (1.0 - (fraction * saturation)),
            ))  # fmt: skip
            index = sextant.long()
            valid = (index >= 0) & (index < 6)  # a hue of exactly 1 after rounding: black, as published
            channels = []
            for table in _SEXTANTS:
                pick = torch.tensor(table, device=hvi.device)[index.clamp(0, 5)]
                channels.append(torch.where(valid, levels.gather(0, pick[None])[0], torch.zeros_like(value)))
            return torch.stack(channels, 1)

    class CIDNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.HVE_block0, self.IE_block0 = edge_conv(3, widths[0]), edge_conv(1, widths[0])
            for level in (1, 2, 3):
                setattr(self, f"HVE_block{level}", Down(widths[level - 1], widths[level]))
                setattr(self, f"IE_block{level}", Down(widths[level - 1], widths[level]))
                setattr(self, f"HVD_block{level}", Up(widths[level], widths[level - 1]))
                setattr(self, f"ID_block{level}", Up(widths[level], widths[level - 1]))
            self.HVD_block0, self.ID_block0 = edge_conv(widths[0], 2), edge_conv(widths[0], 1)
            # Blocks 1-3 on the way down (levels 1, 2, 3), 4-6 on the way up (levels 3, 2, 1).
            for number, level in enumerate((1, 2, 3, 3, 2, 1), start=1):
                setattr(self, f"HV_LCA{number}", Exchange(level, keep=False))
                setattr(self, f"I_LCA{number}", Exchange(level, keep=True))
            self.trans = ColourSpace()

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            hvi = self.trans.to_hvi(pad_to_multiple(image, shape.padding_unit))
            i0, hv0 = self.IE_block0(hvi[:, 2:]), self.HVE_block0(hvi)
            i1, hv1 = self.IE_block1(i0), self.HVE_block1(hv0)
            i_skip1, hv_skip1 = self.I_LCA1(i1, hv1), self.HV_LCA1(hv1, i1)
            i2, hv2 = self.IE_block2(i_skip1), self.HVE_block2(hv_skip1)
            # Level 2's attention outputs serve only the skips; level 3 starts from its inputs.
            i_skip2, hv_skip2 = self.I_LCA2(i2, hv2), self.HV_LCA2(hv2, i2)
            i3, hv3 = self.IE_block3(i2), self.HVE_block3(hv2)
            i4, hv4 = self.I_LCA3(i3, hv3), self.HV_LCA3(hv3, i3)
            i_up, hv_up = self.I_LCA4(i4, hv4), self.HV_LCA4(hv4, i4)
            hv_up = self.HVD_block3(hv_up, hv_skip2)
            i_up = self.ID_block3(i_up, i_skip2)
            hv_up = self.HVD_block2(self.HV_LCA5(hv_up, i_up), hv_skip1)  # I_LCA5's output is never used
            i_up = self.ID_block2(i_up, i_skip1)
            i_up, hv_up = self.I_LCA6(i_up, hv_up), self.HV_LCA6(hv_up, i_up)
            i_out = self.ID_block0(self.ID_block1(i_up, i0))
            hv_out = self.HVD_block0(self.HVD_block1(hv_up, hv0))
            rgb = self.trans.to_rgb(torch.cat((hv_out, i_out), 1) + hvi)
            return rgb[..., :height, :side]

    return CIDNet()
