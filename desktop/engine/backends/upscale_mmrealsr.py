"""MMRealSR, Marble's own implementation, built from the shape its header gives
(desktop.engine.library.upscaler_mmrealsr).

The trunk is ESRGAN's: the RRDB blocks are the shared class from desktop.engine.backends.upscale (the file's
BasicSR names are renamed to its ESRGAN ones by `mmrealsr_names`, as for Real-ESRGAN's files). After each
block the features are modulated, (1 + gamma) x + beta, by a per-channel scale and shift that three linear
layers make from an embedding of the image's degradation strengths. The strengths are estimated from the
input image by the estimator network, one small conv net per strength, each ending in a sigmoid: spandrel's
default, as the published models were trained; the original's hand-set strengths are not offered.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

import re
from typing import Any

from desktop.engine.backends.upscale import rrdb_class
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_mmrealsr import EMBEDDING, MMRealSRShape

_TRUNK_CONV = re.compile(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)")


def mmrealsr_names(state: dict[str, Any]) -> dict[str, Any]:
    """The file's trunk names (body.N.rdbK.convJ) in the shared RRDB class's (body.N.RDBK.convJ.0)."""
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        m = _TRUNK_CONV.fullmatch(key)
        renamed[f"body.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}" if m else key] = value
    return renamed


def build_mmrealsr(info: UpscalerInfo) -> Any:
    import torch
    from torch import nn

    shape = info.detail
    assert isinstance(shape, MMRealSRShape)
    nf = info.features

    def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, stride, 1)

    class PlainResidual(nn.Module):
        """The estimator's block: conv, ReLU, conv, plus the input (no normalisation, no scaling)."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.conv1, self.conv2 = conv(width, width), conv(width, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv2(torch.relu(self.conv1(x)))

    class Estimator(nn.Module):
        """Per strength: conv, body, global average, two linear layers and a sigmoid: one number per image."""

        def __init__(self) -> None:
            super().__init__()
            count, first = shape.degradations, shape.estimator_width
            self.conv_first = nn.ModuleList(conv(info.in_channels, first) for _ in range(count))
            self.body = nn.ModuleList(
                nn.Sequential(*(PlainResidual(step.width_out) if step.residual else
                                conv(step.width_in, step.width_out, stride=2) for step in shape.steps))
                for _ in range(count)
            )  # fmt: skip
            last = shape.steps[-1].width_out
            self.fc_degree = nn.ModuleList(
                nn.Sequential(nn.Linear(last, 512), nn.ReLU(), nn.Linear(512, 1), nn.Sigmoid()) for _ in range(count)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            strengths = []
            for first, body, head in zip(self.conv_first, self.body, self.fc_degree, strict=True):
                pooled = body(first(x)).mean(dim=(2, 3))
                strengths.append(head(pooled)[:, 0])
            return torch.stack(strengths, dim=1)  # (batch, strengths)

    class Modulation(nn.Module):
        """The embedding -> a per-channel scale and shift (the hidden width is halfway: (512 + 2 nf) / 2)."""

        def __init__(self) -> None:
            super().__init__()
            hidden = (EMBEDDING + 2 * nf) // 2
            self.fc = nn.Sequential(
                nn.Linear(EMBEDDING, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * nf)
            )

        def forward(self, features: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
            gamma, beta = self.fc(embedding)[:, :, None, None].chunk(2, dim=1)
            return features * (1 + gamma) + beta

    class MMRealSR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            Rrdb = rrdb_class()
            self.conv_first = conv(info.in_channels, nf)
            self.body = nn.ModuleList(Rrdb(nf, info.growth) for _ in range(info.blocks))
            self.am_list = nn.ModuleList(Modulation() for _ in range(info.blocks))
            self.conv_body, self.conv_up1, self.conv_up2 = conv(nf, nf), conv(nf, nf), conv(nf, nf)
            self.conv_hr, self.conv_last = conv(nf, nf), conv(nf, info.out_channels)
            self.de_net = Estimator()
            self.dd_embed = nn.Sequential(nn.Linear(shape.degradations, EMBEDDING), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            embedding = self.dd_embed(self.de_net(x))
            shallow = self.conv_first(x)
            features = shallow
            for block, modulation in zip(self.body, self.am_list, strict=True):
                features = modulation(block(features), embedding)
            features = shallow + self.conv_body(features)
            lrelu = nn.functional.leaky_relu
            for up in (self.conv_up1, self.conv_up2):  # 4x: two nearest 2x steps, each with a conv
                features = lrelu(up(nn.functional.interpolate(features, scale_factor=2, mode="nearest")), 0.2)
            return self.conv_last(lrelu(self.conv_hr(features), 0.2))

    return MMRealSR()
