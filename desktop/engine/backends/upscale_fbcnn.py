"""FBCNN, Marble's own implementation, built from the shape desktop.engine.library.upscaler_fbcnn reads.

Module and parameter names follow the file's (`m_down1.N.res.0`, `m_up3.0`, `qf_pred.N`, `to_gamma_3.0`, ...),
so a strict load checks every tensor; parameter-free layers (ReLU, pooling, shuffles) keep their slots so
the indices line up. The network predicts the JPEG quality from the image and restores with it (no
quality is given by hand: desktop.engine.library.upscaler_fbcnn says why). Its U-Net halves the size
three times, so the input is padded at the bottom and right to a multiple of 8 by repeating the edge
pixels, as the published network pads, and the result cropped back: tiles of any size run.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_fbcnn import FBCNNShape


def build_fbcnn(info: UpscalerInfo) -> Any:
    """The FBCNN network for `info` (layout "fbcnn"), untrained: load the file's tensors into it strictly."""
    import torch
    from torch import nn
    from torch.nn import functional

    assert isinstance(info.detail, FBCNNShape)
    shape = info.detail
    top, second, third, bottom = shape.widths
    nb, embedding = shape.blocks, shape.embedding

    def convs(width: int) -> nn.Sequential:
        """The residual branch every block shares: 3x3 conv, ReLU, 3x3 conv (`res.0`, `res.2`)."""
        return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.res = convs(width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.res(x)

    class QualityBlock(nn.Module):
        """A block whose residual is scaled (0..1) and shifted (-1..1) per channel by the quality embedding."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.res = convs(width)

        def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
            return x + scale[:, :, None, None] * self.res(x) + shift[:, :, None, None]

    def down(cin: int, cout: int) -> list[nn.Module]:
        if shape.strided:
            return [nn.Conv2d(cin, cout, 2, stride=2)]
        return [nn.AvgPool2d(2), nn.Conv2d(cin, cout, 3, padding=1)]

    def up(cin: int, cout: int) -> nn.Module:
        if shape.upsample == "convtranspose":
            return nn.ConvTranspose2d(cin, cout, 2, stride=2)
        if shape.upsample == "upconv":
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1))
        return nn.Sequential(nn.Conv2d(cin, cout * 4, 3, padding=1), nn.PixelShuffle(2))

    def level_down(width: int, after: int) -> nn.Sequential:
        return nn.Sequential(*(Block(width) for _ in range(nb)), *down(width, after))

    def level_up(width: int, after: int) -> nn.ModuleList:
        return nn.ModuleList([up(width, after), *(QualityBlock(after) for _ in range(nb))])

    def modulation(width: int, squash: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Linear(embedding, width), squash)

    class FBCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m_head = nn.Conv2d(info.in_channels, top, 3, padding=1)
            self.m_down1, self.m_down2, self.m_down3 = (
                level_down(top, second),
                level_down(second, third),
                level_down(third, bottom),
            )
            self.m_body_encoder = nn.Sequential(*(Block(bottom) for _ in range(nb)))
            self.m_body_decoder = nn.Sequential(*(Block(bottom) for _ in range(nb)))
            self.m_up3, self.m_up2, self.m_up1 = level_up(bottom, third), level_up(third, second), level_up(second, top)
            self.m_tail = nn.Conv2d(top, info.out_channels, 3, padding=1)
            # The quality predictor: blocks, the global mean, three linear layers to one sigmoid value.
            self.qf_pred = nn.Sequential(
                *(Block(bottom) for _ in range(nb)),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(bottom, embedding), nn.ReLU(), nn.Linear(embedding, embedding), nn.ReLU(),
                nn.Linear(embedding, 1), nn.Sigmoid(),
            )  # fmt: skip
            self.qf_embed = nn.Sequential(
                nn.Linear(1, embedding), nn.ReLU(), nn.Linear(embedding, embedding), nn.ReLU(),
                nn.Linear(embedding, embedding), nn.ReLU(),
            )  # fmt: skip
            self.to_gamma_3, self.to_beta_3 = modulation(third, nn.Sigmoid()), modulation(third, nn.Tanh())
            self.to_gamma_2, self.to_beta_2 = modulation(second, nn.Sigmoid()), modulation(second, nn.Tanh())
            self.to_gamma_1, self.to_beta_1 = modulation(top, nn.Sigmoid()), modulation(top, nn.Tanh())

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            height, side = image.shape[-2:]
            unit = shape.padding_unit
            x1 = self.m_head(functional.pad(image, (0, -side % unit, 0, -height % unit), mode="replicate"))
            x2 = self.m_down1(x1)
            x3 = self.m_down2(x2)
            x4 = self.m_down3(x3)
            x = self.m_body_encoder(x4)
            quality = self.qf_embed(self.qf_pred(x))  # predicted from the image: blind restoration
            x = self.m_body_decoder(x) + x4
            for level, skip, scale, shift in (
                (self.m_up3, x3, self.to_gamma_3, self.to_beta_3),
                (self.m_up2, x2, self.to_gamma_2, self.to_beta_2),
                (self.m_up1, x1, self.to_gamma_1, self.to_beta_1),
            ):
                x = level[0](x)
                gains, offsets = scale(quality), shift(quality)
                for block in level[1:]:
                    x = block(x, gains, offsets)
                x = x + skip
            return self.m_tail(x)[..., :height, :side]

    return FBCNN()
