"""AuraSR, Marble's own implementation (fal's GigaGAN-style upsampler; layout in
desktop.engine.library.upscaler_aurasr), built from the header's shape and loaded strictly.

The published forward is random twice over: it adds faint noise (0.001) to its input and draws the noise
its mapping network turns into a style vector. Marble draws both from a generator seeded with `seed` on the
CPU (the same numbers on every device), in the published order, so an image upscales the same way each
time and every tile of it gets the same style (the published tiler drew one per tile).

The network attends over whole feature maps (its middle and first two up levels), so its cost grows with
the square of the pixel count, and it was trained on 64 px tiles, as fal's tiler feeds it: `TILE` is the
size Marble feeds it too. upscale() reads `largest_tile` and cuts images into tiles of at most 64 px
(overlaps included), and the forward mirrors a smaller input up to 64 px (as spandrel pads: reflection,
then the edge repeated) and crops the result back. A larger input runs whole, as spandrel runs it.

torch is imported inside build_aurasr: only load_upscaler calls it.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_aurasr import HEADS, UPS, AuraSRShape

TILE = 64  # the published tile: fal's tiler cuts images into 64 px squares
INPUT_NOISE = 0.001  # the published forward's input jitter
STYLE_LR = 0.1  # the mapping network's learning-rate multiplier, folded into its weights at run time
SKIP_SCALE = 0.4  # how much of a down level's output the matching up level adds (spandrel's setting)


def build_aurasr(info: UpscalerInfo, seed: int = 0) -> Any:
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name
    from torch import nn

    from desktop.engine.backends.upscale_rgt import pad_to_size

    shape = info.detail
    assert isinstance(shape, AuraSRShape)

    class ChannelRMSNorm(nn.Module):
        """Unit length over channels, times sqrt(channels) and a learned gain (`g`)."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.g = nn.Parameter(torch.ones(1, width, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x, dim=1) * self.g * x.shape[1] ** 0.5

    class ModulatedConv(nn.Module):
        """A 3x3 conv whose kernel is a softmax mix of a bank (`weights`), scaled per input channel by
        1 + the style's modulation and demodulated (StyleGAN2), one kernel per image of the batch."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.weights = nn.Parameter(torch.empty(shape.kernels, cout, cin, 3, 3))

        def forward(self, x: torch.Tensor, scale: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
            batch = x.shape[0]
            kernel = torch.einsum("bn,noikl->boikl", mix.softmax(-1), self.weights)
            kernel = kernel * (scale[:, None, :, None, None] + 1)
            kernel = kernel * kernel.square().sum((2, 3, 4), keepdim=True).clamp(min=1e-8).rsqrt()
            out = F.conv2d(x.reshape(1, -1, *x.shape[2:]), kernel.flatten(0, 1), padding=1, groups=batch)
            return out.view(batch, -1, *out.shape[2:])

    class Conv(nn.Module):  # the published `Block`: a modulated conv, then SiLU
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.proj = ModulatedConv(cin, cout)

        def forward(self, x: torch.Tensor, mods: Any) -> torch.Tensor:
            return F.silu(self.proj(x, next(mods), next(mods)))

    class ResBlock(nn.Module):
        def __init__(self, cin: int, cout: int, splits: list[int]) -> None:
            super().__init__()
            # Each conv takes its channel scales (its input width) and its kernel mix (the bank's size).
            splits.extend([cin, shape.kernels, cout, shape.kernels])
            self.block1, self.block2 = Conv(cin, cout), Conv(cout, cout)
            self.res_conv = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, x: torch.Tensor, mods: Any) -> torch.Tensor:
            return self.block2(self.block1(x, mods), mods) + self.res_conv(x)

    class SelfAttention(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            inner = HEADS * shape.head_width
            self.norm = ChannelRMSNorm(width)
            self.to_qkv = nn.Conv2d(width, 3 * inner, 1, bias=False)
            self.to_out = nn.Conv2d(inner, width, 1)
            # The published attention keeps a learned scale (`attend.scale`) for an unfused path it never
            # takes; held here only so the file loads strictly.
            self.attend = nn.Module()
            self.attend.scale = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, h, w = x.shape
            q, k, v = (
                part.reshape(b, HEADS, -1, h * w).transpose(2, 3) for part in self.to_qkv(self.norm(x)).chunk(3, 1)
            )
            out = F.scaled_dot_product_attention(q, k, v)  # the published fused path (softmax at 1/sqrt(d))
            return self.to_out(out.transpose(2, 3).reshape(b, -1, h, w))

    class Attention(nn.Module):
        """Full attention layers, each followed by a conv feed-forward, both residual."""

        def __init__(self, width: int, depth: int) -> None:
            super().__init__()
            hidden = width * shape.ff_mult
            self.layers = nn.ModuleList(
                nn.ModuleList([
                    SelfAttention(width),
                    nn.Sequential(ChannelRMSNorm(width), nn.Conv2d(width, hidden, 1), nn.GELU(),
                                  nn.Conv2d(hidden, width, 1)),
                ])  # fmt: skip
                for _ in range(depth)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for attend, feed in self.layers:
                x = attend(x) + x
                x = feed(x) + x
            return x

    class Upsample(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    class StyleMapping(nn.Module):
        """Noise -> style: unit-length noise through linear layers (their weights scaled by STYLE_LR, as
        the published equalised-learning-rate layers are) with LeakyReLU(0.2) after each."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for index in range(shape.style_layers):
                width = shape.style_width if index else shape.style_in
                layers += [nn.Linear(width, shape.style_width), nn.LeakyReLU(0.2)]
            self.net = nn.Sequential(*layers)

        def forward(self, noise: torch.Tensor) -> torch.Tensor:
            x = F.normalize(noise, dim=1)
            for layer in self.net[::2]:  # the linear layers; each LeakyReLU follows below
                x = F.leaky_relu(F.linear(x, layer.weight * STYLE_LR, layer.bias * STYLE_LR), 0.2)
            return x

    def level(*modules: nn.Module | None) -> nn.ModuleList:
        # The published levels hold an absent attention as a None entry, which keeps the indices in the names.
        return nn.ModuleList(list(modules))

    class AuraSR(nn.Module):
        largest_tile = TILE  # upscale() never feeds it more (overlaps included)

        def __init__(self) -> None:
            super().__init__()
            splits: list[int] = []  # the style projection's split, in the order the blocks run
            ups, downs = shape.up_widths, shape.down_widths
            self.init_conv = nn.Conv2d(info.in_channels, downs[0], 7, padding=3)
            self.downs = nn.ModuleList()
            for index in range(shape.downs):
                blocks = nn.ModuleList(ResBlock(downs[index], downs[index], splits) for _ in range(shape.blocks))
                depth = shape.down_attention[index]
                attend = Attention(downs[index], depth) if depth else None
                self.downs.append(level(blocks, level(attend, nn.Conv2d(downs[index], downs[index + 1], 3, 2, 1))))
            self.mid_block1 = ResBlock(ups[-1], ups[-1], splits)
            self.mid_attn = Attention(ups[-1], shape.mid_attention)
            self.mid_block2 = ResBlock(ups[-1], ups[-1], splits)
            self.ups = nn.ModuleList()
            for index in range(UPS):
                into, out = ups[UPS - index], ups[UPS - 1 - index]
                cin = 2 * out if index < shape.downs else out  # skips double the first levels' input
                blocks = nn.ModuleList(ResBlock(cin, out, splits) for _ in range(shape.blocks))
                depth = shape.up_attention[index]
                self.ups.append(level(blocks, level(Upsample(into, out), Attention(out, depth) if depth else None)))
            self.final_res_block = ResBlock(info.features, info.features, splits)
            self.final_to_rgb = nn.Conv2d(info.features, info.out_channels, 1)
            self.style_network = StyleMapping()
            self.style_to_conv_modulations = nn.Linear(shape.style_width, sum(splits))
            self.splits = splits
            self.seed = seed

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            unit = shape.padding_unit
            x = pad_to_size(x, max(TILE, -(-height // unit) * unit), max(TILE, -(-width // unit) * unit))
            # The published draws, in its order: the input's jitter, then the style noise.
            generator = torch.Generator().manual_seed(self.seed)
            jitter = torch.randn(x.shape, generator=generator).to(x)
            noise = torch.randn((x.shape[0], shape.style_in), generator=generator).to(x)
            x = (x + jitter * INPUT_NOISE).clamp(0, 1)
            mods = iter(self.style_to_conv_modulations(self.style_network(noise)).split(self.splits, -1))
            x = self.init_conv(x)
            skips = []
            for blocks, (attend, down) in self.downs:
                for block in blocks:
                    x = block(x, mods)
                    skips.append(x)
                x = down(attend(x) if attend is not None else x)
            x = self.mid_block2(self.mid_attn(self.mid_block1(x, mods)), mods)
            for blocks, (upsample, attend) in self.ups:
                x = upsample(x)
                for block in blocks:
                    if skips:
                        x = torch.cat((x, skips.pop() * SKIP_SCALE), 1)
                    x = block(x, mods)
                x = attend(x) if attend is not None else x
            x = self.final_to_rgb(self.final_res_block(x, mods))
            return x[..., : height * info.scale, : width * info.scale]

    return AuraSR()
