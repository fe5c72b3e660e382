"""1x restoration networks (denoisers: SCUNet, DnCNN and FDnCNN, DRUNet), Marble's own implementations,
built from the shape the header tells (desktop.engine.library.upscaler_restoration) so the file's tensors
load strictly by their published names.

They take any input size, so tiles of any size go through desktop.engine.backends.upscale's tiling
unchanged: SCUNet pads its input by mirroring to a multiple of 8 windows (three halvings, then whole
windows at the bottom), as the published network does, and crops the result back; DRUNet pads the same
way to a multiple of 8 (its three halvings); DnCNN is convolutions only. A grey (1-channel) model
denoises the red, green and blue channels one by one (as a batch of three): upscale() feeds RGB. The
noise-level channel FDnCNN and DRUNet take is filled with their NOISE_LEVEL / 255 (15: spandrel's
default and the published test scripts').

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_transformers import (
    pad_to_multiple,
    window_bias_rows,
    window_merge,
    window_partition,
    window_shift_mask,
)
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_restoration import (
    DRUNET_NOISE_LEVEL,
    FDNCNN_NOISE_LEVEL,
    SCUNET_STAGES,
    DnCNNShape,
    DRUNetShape,
    SCUNetShape,
)

_LEVELS = 3  # SCUNet's down stages, each halving the image
_BATCH_NORM_EPS = 1e-4  # DnCNN's BatchNorm epsilon: a constructor argument in the published code, not in the file


def per_channel(network: Any, x: Any, channels: int) -> Any:
    """`network` over `x` (B, 3, H, W); a grey network (`channels` 1) sees each colour channel on its own."""
    if channels != 1:
        return network(x)
    b, c, h, w = x.shape
    out = network(x.reshape(b * c, 1, h, w))
    return out.reshape(b, c, *out.shape[-2:])


def with_noise_map(x: Any, level: float) -> Any:
    """`x` (B, C, H, W) with one more channel, every pixel `level` (a 0..255 sigma, as 0..1)."""
    import torch

    return torch.cat((x, torch.full_like(x[:, :1], level / 255.0)), 1)


def build_dncnn(info: UpscalerInfo) -> Any:
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, DnCNNShape)

    class DnCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width, extra = info.features, int(shape.noise_map)
            layers: list[nn.Module] = [nn.Conv2d(info.in_channels + extra, width, 3, 1, 1), nn.ReLU(True)]
            for _ in range(shape.convs - 2):
                layers.append(nn.Conv2d(width, width, 3, 1, 1))
                if shape.batch_norm:
                    layers.append(nn.BatchNorm2d(width, eps=_BATCH_NORM_EPS))
                layers.append(nn.ReLU(True))
            layers.append(nn.Conv2d(width, info.out_channels, 3, 1, 1))
            self.model = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return per_channel(self._restore, x, info.out_channels)

        def _restore(self, x: torch.Tensor) -> torch.Tensor:
            if shape.noise_map:  # FDnCNN: told the noise level, it outputs the clean image
                return self.model(with_noise_map(x, FDNCNN_NOISE_LEVEL))
            return x - self.model(x)  # DnCNN outputs the noise it sees

    return DnCNN()


def build_scunet(info: UpscalerInfo) -> Any:
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, SCUNetShape)
    window, head_width = shape.window, shape.head_width

    class WindowAttention(nn.Module):
        """Multi-head attention within windows, with a learned bias per (query, key) offset; shifted by half
        a window (and masked where the roll joined far-apart regions) in every other block."""

        def __init__(self, width: int, shifted: bool) -> None:
            super().__init__()
            self.heads, self.shifted = width // head_width, shifted
            self.embedding_layer = nn.Linear(width, 3 * width)  # q, k, v, each heads x head_width
            self.relative_position_params = nn.Parameter(torch.zeros(self.heads, 2 * window - 1, 2 * window - 1))
            self.linear = nn.Linear(width, width)
            self.register_buffer("rows", window_bias_rows(window), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C), H and W whole windows
            b, h, w, c = x.shape
            shift = window // 2
            if self.shifted:
                x = torch.roll(x, (-shift, -shift), (1, 2))
            tokens = window_partition(x, window)
            n = tokens.shape[1]
            q, k, v = self.embedding_layer(tokens).view(-1, n, 3, self.heads, head_width).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-2, -1) * head_width**-0.5
            # The (heads, 2w-1, 2w-1) table read flat: row dy * (2w-1) + dx, as window_bias_rows numbers them.
            scores = scores + self.relative_position_params.flatten(1)[:, self.rows][None]
            if self.shifted:
                # The published network masks with -inf (not Swin's -100): blocked pairs get exactly 0.
                blocked = window_shift_mask(h, w, window, shift).to(x.device) < 0
                scores = scores.view(b, -1, self.heads, n, n).masked_fill(blocked[None, :, None], float("-inf"))
                scores = scores.view(-1, self.heads, n, n)
            out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
            out = window_merge(self.linear(out), b, h, w, window)
            return torch.roll(out, (shift, shift), (1, 2)) if self.shifted else out

    class SwinBlock(nn.Module):
        def __init__(self, width: int, shifted: bool) -> None:
            super().__init__()
            self.ln1, self.msa = nn.LayerNorm(width), WindowAttention(width, shifted)
            self.ln2 = nn.LayerNorm(width)
            self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.msa(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class SwinConvBlock(nn.Module):
        """A 1x1 conv mixes the channels, one half goes through a residual conv pair, the other through a
        Swin block; a second 1x1 conv joins them, added to the input."""

        def __init__(self, width: int, shifted: bool) -> None:
            super().__init__()
            self.half = width // 2
            self.conv1_1 = nn.Conv2d(width, width, 1)
            self.conv1_2 = nn.Conv2d(width, width, 1)
            self.conv_block = nn.Sequential(
                nn.Conv2d(self.half, self.half, 3, 1, 1, bias=False), nn.ReLU(True),
                nn.Conv2d(self.half, self.half, 3, 1, 1, bias=False),
            )  # fmt: skip
            self.trans_block = SwinBlock(self.half, shifted)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            local, attended = self.conv1_1(x).split(self.half, 1)
            local = local + self.conv_block(local)
            attended = self.trans_block(attended.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            return x + self.conv1_2(torch.cat((local, attended), 1))

    def blocks(width: int, depth: int) -> list[nn.Module]:
        # The odd blocks shift (the published network trained at 256 px, which every stage's size exceeds).
        return [SwinConvBlock(width, index % 2 == 1) for index in range(depth)]

    class SCUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dim, depths = info.features, dict(zip(SCUNET_STAGES, shape.depths, strict=True))
            self.m_head = nn.Sequential(nn.Conv2d(info.in_channels, dim, 3, 1, 1, bias=False))
            for level, stage in enumerate(("m_down1", "m_down2", "m_down3")):
                width = dim * 2**level
                down = nn.Conv2d(width, 2 * width, 2, 2, 0, bias=False)
                setattr(self, stage, nn.Sequential(*blocks(width, depths[stage]), down))
            self.m_body = nn.Sequential(*blocks(8 * dim, depths["m_body"]))
            for level, stage in zip((2, 1, 0), ("m_up3", "m_up2", "m_up1"), strict=True):
                width = dim * 2**level
                up = nn.ConvTranspose2d(2 * width, width, 2, 2, 0, bias=False)
                setattr(self, stage, nn.Sequential(up, *blocks(width, depths[stage])))
            self.m_tail = nn.Sequential(nn.Conv2d(dim, info.out_channels, 3, 1, 1, bias=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return per_channel(self._restore, x, info.in_channels)

        def _restore(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            x1 = self.m_head(pad_to_multiple(x, 2**_LEVELS * window))
            x2 = self.m_down1(x1)
            x3 = self.m_down2(x2)
            x4 = self.m_down3(x3)
            y = self.m_up3(self.m_body(x4) + x4)
            y = self.m_up2(y + x3)
            y = self.m_up1(y + x2)
            return self.m_tail(y + x1)[..., :h, :w]

    return SCUNet()


def build_drunet(info: UpscalerInfo) -> Any:
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, DRUNetShape)

    def conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2 if stride == 1 else 0, bias=False)

    class ResidualBlock(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.res = nn.Sequential(conv(width, width), nn.ReLU(), conv(width, width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.res(x)

    def down(cin: int, cout: int) -> list[nn.Module]:
        if shape.down == "avgpool":
            return [nn.AvgPool2d(2), conv(cin, cout)]
        return [conv(cin, cout, 2, 2)]

    def up(cin: int, cout: int) -> list[nn.Module]:
        if shape.up == "pixelshuffle":
            return [conv(cin, 4 * cout), nn.PixelShuffle(2)]
        if shape.up == "upconv":
            return [nn.Upsample(scale_factor=2, mode="nearest"), conv(cin, cout)]
        return [nn.ConvTranspose2d(cin, cout, 2, 2, 0, bias=False)]

    class DRUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths, nb = shape.widths, shape.blocks

            def blocks(width: int) -> list[nn.Module]:
                return [ResidualBlock(width) for _ in range(nb)]

            self.m_head = conv(info.in_channels + 1, widths[0])  # + the noise-level map
            self.m_down1 = nn.Sequential(*blocks(widths[0]), *down(widths[0], widths[1]))
            self.m_down2 = nn.Sequential(*blocks(widths[1]), *down(widths[1], widths[2]))
            self.m_down3 = nn.Sequential(*blocks(widths[2]), *down(widths[2], widths[3]))
            self.m_body = nn.Sequential(*blocks(widths[3]))
            self.m_up3 = nn.Sequential(*up(widths[3], widths[2]), *blocks(widths[2]))
            self.m_up2 = nn.Sequential(*up(widths[2], widths[1]), *blocks(widths[1]))
            self.m_up1 = nn.Sequential(*up(widths[1], widths[0]), *blocks(widths[0]))
            self.m_tail = conv(widths[0], info.out_channels)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return per_channel(self._restore, x, info.out_channels)

        def _restore(self, x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            x1 = self.m_head(with_noise_map(pad_to_multiple(x, 2**_LEVELS), DRUNET_NOISE_LEVEL))
            x2 = self.m_down1(x1)
            x3 = self.m_down2(x2)
            x4 = self.m_down3(x3)
            y = self.m_up3(self.m_body(x4) + x4)
            y = self.m_up2(y + x3)
            y = self.m_up1(y + x2)
            return self.m_tail(y + x1)[..., :h, :w]

    return DRUNet()
