"""IPT, Marble's own implementation, built from the shape its header gives (desktop.engine.library.upscaler_ipt).

The network proper sees one fixed-size crop (the patch size): mean shift, the task's conv head, the transformer
body over patch_dim x patch_dim tokens (pre-norm encoder and decoder layers, torch's multi-head attention with
no biases, as published), the head's features added back, the task's upsampling tail, mean shift back. A whole
image runs as the published test code runs it: crops every quarter crop along each side plus one flush with
the bottom / right edge; each output pixel is the average of the grid crops whose middle half (a quarter crop
trimmed off each side, kept where the crop meets the image's top or left edge) covers it, and the band along
the bottom and right edges comes from the flush crops, split where the published code splits it. The result is
that code's, written as per-crop weights. Inputs under one crop are mirrored up to it and cropped back.

torch is imported inside the functions: only desktop.engine.backends.upscale loads this module.
"""

from __future__ import annotations

from typing import Any

from desktop.engine.backends.upscale_rgt import pad_to_size
from desktop.engine.library.upscaler import UpscalerInfo
from desktop.engine.library.upscaler_ipt import HEADS, IPTShape

# The mean colour the published mean shift removes (times the colour range); the range is read back from it.
_MEAN = (0.4488, 0.4371, 0.4040)
IPT_DERIVED = ("body.position_encoding.position_ids",)  # a buffer of 0..N-1, not a weight
_CROPS_PER_CALL = 16


def ipt_colour_range(state: dict[str, Any]) -> float:
    """The colour range the file works in (255 in the published models), from its mean shift's bias
    (-range x the mean colour), rounded as spandrel rounds it."""
    bias = state["sub_mean.bias"].float()
    return float(round(float((-bias / bias.new_tensor(_MEAN)).mean())))


def build_ipt(info: UpscalerInfo, colour_range: float) -> Any:
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812 - the usual name

    shape = info.detail
    assert isinstance(shape, IPTShape)
    nf, dim, patch = info.features, shape.patch_dim, shape.patch_size
    embed, tokens = nf * dim * dim, (patch // dim) ** 2

    def conv(cin: int, cout: int, kernel: int = 3) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)

    def norm() -> nn.Module:
        return nn.LayerNorm(embed) if shape.norms else nn.Identity()

    class Residual(nn.Module):
        """The heads' 5x5 residual block: conv, ReLU, conv, plus the input."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(nf, nf, 5), nn.ReLU(), conv(nf, nf, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    def feed_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return layer.linear2(F.relu(layer.linear1(x)))

    class EncoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = nn.MultiheadAttention(embed, HEADS, bias=False)
            self.linear1, self.linear2 = nn.Linear(embed, 4 * embed), nn.Linear(4 * embed, embed)
            self.norm1, self.norm2 = norm(), norm()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            normed = self.norm1(x)
            x = x + self.self_attn(normed, normed, normed, need_weights=False)[0]
            return x + feed_forward(self, self.norm2(x))

    class DecoderLayer(nn.Module):
        """Self-attention, then attention to the encoder's output; the task query offsets the queries (and
        the self-attention's keys), never the values."""

        def __init__(self) -> None:
            super().__init__()
            self.self_attn = nn.MultiheadAttention(embed, HEADS, bias=False)
            self.multihead_attn = nn.MultiheadAttention(embed, HEADS, bias=False)
            self.linear1, self.linear2 = nn.Linear(embed, 4 * embed), nn.Linear(4 * embed, embed)
            self.norm1, self.norm2, self.norm3 = norm(), norm(), norm()

        def forward(self, x: torch.Tensor, memory: torch.Tensor, query: torch.Tensor | None) -> torch.Tensor:
            normed = self.norm1(x)
            keyed = normed if query is None else normed + query
            x = x + self.self_attn(keyed, keyed, normed, need_weights=False)[0]
            normed = self.norm2(x)
            asked = normed if query is None else normed + query
            x = x + self.multihead_attn(asked, memory, memory, need_weights=False)[0]
            return x + feed_forward(self, self.norm3(x))

    class Positions(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pe = nn.Embedding(tokens, embed)

    class Body(nn.Module):
        """The transformer over one crop's tokens (sequence first, as torch's attention takes them)."""

        def __init__(self) -> None:
            super().__init__()
            if shape.mlp:
                self.linear_encoding = nn.Linear(embed, embed)
                # Indices 0 and 3 hold weights (1 and 4 were dropouts), as in the file.
                self.mlp_head = nn.Sequential(
                    nn.Linear(embed, 4 * embed), nn.Identity(), nn.ReLU(), nn.Linear(4 * embed, embed), nn.Identity()
                )
                self.query_embed = nn.Embedding(shape.queries, embed * tokens)
            self.encoder = nn.Module()
            self.encoder.layers = nn.ModuleList(EncoderLayer() for _ in range(shape.layers))
            self.decoder = nn.Module()
            self.decoder.layers = nn.ModuleList(DecoderLayer() for _ in range(shape.layers))
            if shape.positions:
                self.position_encoding = Positions()

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            x = F.unfold(features, dim, stride=dim).permute(2, 0, 1)  # (tokens, batch, embed)
            query = None
            if shape.mlp:
                x = x + self.linear_encoding(x)
                query = self.query_embed.weight[shape.task].view(tokens, 1, embed)
            if shape.positions:
                x = x + self.position_encoding.pe.weight[:, None]
            for layer in self.encoder.layers:
                x = layer(x)
            memory = x
            for layer in self.decoder.layers:
                x = layer(x, memory, query)
            if shape.mlp:
                x = x + self.mlp_head(x)
            return F.fold(x.permute(1, 2, 0), (patch, patch), dim, stride=dim)

    def upsampler(scale: int) -> nn.Sequential:
        steps = [3] if scale == 3 else [2] * (scale.bit_length() - 1)
        layers: list[nn.Module] = []
        for step in steps:
            layers += [conv(nf, step * step * nf), nn.PixelShuffle(step)]
        return nn.Sequential(*layers)

    class IPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sub_mean, self.add_mean = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)
            self.head = nn.ModuleList(nn.Sequential(conv(3, nf), Residual(), Residual()) for _ in shape.scales)
            self.body = Body()
            self.tail = nn.ModuleList(nn.Sequential(upsampler(s), conv(nf, 3)) for s in shape.scales)

        def crop(self, x: torch.Tensor) -> torch.Tensor:
            """One patch x patch crop (in the colour range) through the task's head, body and tail."""
            features = self.head[shape.task](self.sub_mean(x))
            return self.add_mean(self.tail[shape.task](features + self.body(features)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            x = pad_to_size(x, max(height, patch), max(width, patch)) * colour_range
            out = _crops_blended(self.crop, x, patch, info.scale) / colour_range
            return out[..., : height * info.scale, : width * info.scale]

    return IPT()


def _crops_blended(run: Any, x: Any, patch: int, scale: int) -> Any:
    """`run` over crops of `x` (N, C, H, W; H, W >= patch) laid out and blended as IPT's test code does."""
    import torch

    rows, cols = _weights(x.shape[-2], patch, scale), _weights(x.shape[-1], patch, scale)
    # One exception to the per-side weights: the published code writes its left strip over the top band's
    # first crop width last, so there (above the first quarter crop, right of it) the first crop stands alone.
    margin = patch // 2 // 2 * scale
    corner = (margin, min(patch * scale, _split(x.shape[-1], patch, scale)))  # output columns, in the top band
    batch = x.shape[0]
    out = x.new_zeros((batch, 3, x.shape[-2] * scale, x.shape[-1] * scale))
    places = [(top, left) for top in rows for left in cols]
    size = patch * scale
    for start in range(0, len(places), _CROPS_PER_CALL):
        group = places[start : start + _CROPS_PER_CALL]
        crops = torch.cat([x[..., top : top + patch, left : left + patch] for top, left in group])
        results = run(crops).split(batch)
        for (top, left), result in zip(group, results, strict=True):
            weight = rows[top][top * scale : top * scale + size, None] * cols[left][left * scale : left * scale + size]
            if top == 0:
                start, stop = max(0, corner[0] - left * scale), max(0, corner[1] - left * scale)
                weight[:margin, start:stop] = 1.0 if left == 0 else 0.0
            out[..., top * scale : top * scale + size, left * scale : left * scale + size] += result * weight.to(out)
    return out


def _weights(length: int, patch: int, scale: int) -> dict[int, Any]:
    """For one side of `length` input pixels: crop start -> its weight per output pixel along that side.

    Grid crops start every quarter crop (`step`) while they fit; each covers the middle of its output (a
    quarter crop in from each side, or from the image's start for the first), and a pixel covered by several
    takes their average. Past the split the published code uses ((length - cut) * scale minus half of
    (patch - cut) * scale, `cut` being what the grid leaves over), the crop flush with the end has it alone."""
    import torch

    step = patch // 2 // 2
    margin, size, total = step * scale, patch * scale, length * scale
    split = _split(length, patch, scale)
    covered: dict[int, Any] = {}
    for start in range(0, length - patch + 1, step):
        mask = torch.zeros(total)
        mask[(start * scale + margin if start else 0) : start * scale + size - margin] = 1
        covered[start] = mask
    count = torch.stack(list(covered.values())).sum(0).clamp(min=1)
    weights = {start: torch.where(torch.arange(total) < split, mask / count, 0.0) for start, mask in covered.items()}
    end = length - patch
    weights[end] = weights.get(end, torch.zeros(total)) + (torch.arange(total) >= split).float()
    return weights


def _split(length: int, patch: int, scale: int) -> int:
    """Where, along a side, the published code switches from the grid crops to the crop flush with the end."""
    step = patch // 2 // 2
    cut = (length - patch) % step  # what the grid of crops leaves over
    return (length - cut) * scale - (patch - cut) * scale // 2
