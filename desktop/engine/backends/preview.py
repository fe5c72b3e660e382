"""Predicted clean latents -> a small RGB picture, by a linear map per architecture.

A full VAE decode costs more than a whole denoising step; this costs a 4x3 (or 16x3) matrix product, so
the preview can run at every step. SD factors as published by InvokeAI (Apache-2.0); the 16-channel
tables (Flux.1's autoencoder, also used by Z-Image and Chroma; SD3's; the Wan 2.1 autoencoder that
Qwen-Image uses), Flux.2's 32-channel one and Qwen-Image 2.1's 64-channel one are the published
least-squares fits ComfyUI's previews use, each with its offset. They apply to latents in the space the
transformer works in (after the VAE's shift/scale or mean/std; Flux.2's after its batch-norm statistics,
unpatchified to 32 channels; Qwen-Image 2.1's after its mean/std, unpatched).

An autoencoder with no published table (Sana's DC-AE) gets one fitted the same way from the autoencoder itself
(`fit_colour_table`, fed by preview_fit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ColourTable:
    """rgb = latents . factors + bias, in [-1, 1]: `factors` (C, 3), `bias` (3,). `name` says where it came from."""

    name: str
    factors: np.ndarray
    bias: np.ndarray

    def scaled(self, scale: float) -> ColourTable:
        """The table for latents held `scale` times larger than this one reads (Sana Sprint's estimates of the
        clean latents are its latents times sigma_data)."""
        return ColourTable(self.name, self.factors / np.float32(scale), self.bias)


_SD_FACTORS = np.array(
    [
        [0.3444, 0.1385, 0.0670],
        [0.1247, 0.4027, 0.1494],
        [-0.3192, 0.2513, 0.2103],
        [-0.1307, -0.1874, -0.7445],
    ],
    dtype=np.float32,
)
_SDXL_FACTORS = np.array(
    [
        [0.3816, 0.4930, 0.5320],
        [-0.3753, 0.1631, 0.1739],
        [0.1770, 0.3588, -0.2048],
        [-0.4350, -0.2644, -0.4289],
    ],
    dtype=np.float32,
)

_FLUX_FACTORS = np.array(
    [
        [-0.0346, 0.0244, 0.0681],
        [0.0034, 0.0210, 0.0687],
        [0.0275, -0.0668, -0.0433],
        [-0.0174, 0.0160, 0.0617],
        [0.0859, 0.0721, 0.0329],
        [0.0004, 0.0383, 0.0115],
        [0.0405, 0.0861, 0.0915],
        [-0.0236, -0.0185, -0.0259],
        [-0.0245, 0.0250, 0.1180],
        [0.1008, 0.0755, -0.0421],
        [-0.0515, 0.0201, 0.0011],
        [0.0428, -0.0012, -0.0036],
        [0.0817, 0.0765, 0.0749],
        [-0.1264, -0.0522, -0.1103],
        [-0.0280, -0.0881, -0.0499],
        [-0.1262, -0.0982, -0.0778],
    ],
    dtype=np.float32,
)
_SD3_FACTORS = np.array(
    [
        [-0.0922, -0.0175, 0.0749],
        [0.0311, 0.0633, 0.0954],
        [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902],
        [0.0587, 0.0272, -0.0496],
        [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427],
        [-0.0042, 0.1038, 0.1358],
        [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268],
        [0.0922, 0.0988, 0.0951],
        [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895],
        [-0.0069, -0.0030, -0.0810],
        [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189],
    ],
    dtype=np.float32,
)
_WAN_FACTORS = np.array(
    [
        [-0.1299, -0.1692, 0.2932],
        [0.0671, 0.0406, 0.0442],
        [0.3568, 0.2548, 0.1747],
        [0.0372, 0.2344, 0.1420],
        [0.0313, 0.0189, -0.0328],
        [0.0296, -0.0956, -0.0665],
        [-0.3477, -0.4059, -0.2925],
        [0.0166, 0.1902, 0.1975],
        [-0.0412, 0.0267, -0.1364],
        [-0.1293, 0.0740, 0.1636],
        [0.0680, 0.3019, 0.1128],
        [0.0032, 0.0581, 0.0639],
        [-0.1251, 0.0927, 0.1699],
        [0.0060, -0.0633, 0.0005],
        [0.3477, 0.2275, 0.2950],
        [0.1984, 0.0913, 0.1861],
    ],
    dtype=np.float32,
)
_FLUX2_FACTORS = np.array(
    [
        [0.0058, 0.0113, 0.0073],
        [0.0495, 0.0443, 0.0836],
        [-0.0099, 0.0096, 0.0644],
        [0.2144, 0.3009, 0.3652],
        [0.0166, -0.0039, -0.0054],
        [0.0157, 0.0103, -0.0160],
        [-0.0398, 0.0902, -0.0235],
        [-0.0052, 0.0095, 0.0109],
        [-0.3527, -0.2712, -0.1666],
        [-0.0301, -0.0356, -0.0180],
        [-0.0107, 0.0078, 0.0013],
        [0.0746, 0.0090, -0.0941],
        [0.0156, 0.0169, 0.0070],
        [-0.0034, -0.0040, -0.0114],
        [0.0032, 0.0181, 0.0080],
        [-0.0939, -0.0008, 0.0186],
        [0.0018, 0.0043, 0.0104],
        [0.0284, 0.0056, -0.0127],
        [-0.0024, -0.0022, -0.0030],
        [0.1207, -0.0026, 0.0065],
        [0.0128, 0.0101, 0.0142],
        [0.0137, -0.0072, -0.0007],
        [0.0095, 0.0092, -0.0059],
        [0.0000, -0.0077, -0.0049],
        [-0.0465, -0.0204, -0.0312],
        [0.0095, 0.0012, -0.0066],
        [0.0290, -0.0034, 0.0025],
        [0.0220, 0.0169, -0.0048],
        [-0.0332, -0.0457, -0.0468],
        [-0.0085, 0.0389, 0.0609],
        [-0.0076, 0.0003, -0.0043],
        [-0.0111, -0.0460, -0.0614],
    ],
    dtype=np.float32,
)
_QWEN21_FACTORS = np.array(
    [
        [-0.0158, -0.0115, -0.0174],
        [0.003, 0.012, 0.0027],
        [0.0637, 0.047, -0.0127],
        [0.036, 0.0661, -0.003],
        [0.0159, 0.0181, 0.0082],
        [0.0132, 0.0326, 0.0169],
        [0.0191, 0.0261, 0.0136],
        [-0.0146, -0.0276, -0.0361],
        [0.0187, -0.0024, -0.0072],
        [-0.1059, -0.009, 0.035],
        [-0.0195, -0.0226, -0.0138],
        [-0.0295, 0.0024, -0.0215],
        [0.0191, -0.0393, -0.0001],
        [-0.0144, -0.0166, -0.0272],
        [0.0389, 0.043, 0.0445],
        [-0.0153, -0.0336, 0.0031],
        [0.0339, 0.0122, 0.022],
        [-0.0136, -0.0078, -0.012],
        [-0.034, -0.0282, -0.0245],
        [-0.0133, -0.0176, -0.0133],
        [0.0109, -0.0087, 0.0096],
        [-0.001, 0.0044, 0.0016],
        [0.0301, 0.0053, 0.0361],
        [-0.0281, -0.0205, -0.0032],
        [-0.0725, 0.0002, 0.016],
        [-0.0036, 0.0158, 0.0807],
        [0.0087, 0.004, -0.0053],
        [-0.026, 0.0183, -0.0077],
        [-0.0039, -0.0035, -0.0107],
        [-0.0026, 0.0172, 0.0237],
        [0.0088, 0.0078, 0.0078],
        [-0.0087, -0.031, -0.0122],
        [-0.0027, 0.0018, 0.0094],
        [-0.0064, 0.0292, -0.0256],
        [0.0594, 0.1049, 0.118],
        [0.0103, -0.0103, -0.0026],
        [-0.0091, 0.0025, -0.0015],
        [0.0178, 0.0243, 0.0292],
        [-0.0063, -0.0012, 0.0202],
        [0.0452, 0.0246, 0.0143],
        [0.0149, 0.027, 0.0052],
        [0.1484, 0.0801, 0.0804],
        [-0.012, 0.004, 0.001],
        [0.0181, 0.0051, -0.0021],
        [0.0132, 0.005, 0.0019],
        [0.0291, 0.002, 0.0092],
        [0.0066, -0.041, -0.1314],
        [-0.1153, -0.0629, -0.0802],
        [0.0258, 0.0378, 0.0298],
        [0.0375, 0.1139, 0.0468],
        [-0.0142, -0.0126, -0.0276],
        [0.0339, 0.0153, 0.0138],
        [0.0346, 0.0211, 0.0267],
        [0.0369, -0.0431, -0.0993],
        [-0.0052, -0.0092, 0.0056],
        [-0.0279, 0.041, -0.0357],
        [0.0036, 0.0017, -0.0083],
        [-0.0441, -0.0367, -0.0454],
        [-0.0001, -0.0092, -0.0001],
        [-0.0222, -0.0183, -0.0051],
        [0.0039, 0.0053, -0.0184],
        [-0.0094, -0.0075, -0.0143],
        [-0.0066, -0.0088, -0.0063],
        [0.022, 0.0074, 0.01],
    ],
    dtype=np.float32,
)
_NO_BIAS = np.zeros(3, dtype=np.float32)
_FLUX = (_FLUX_FACTORS, np.array([-0.0329, -0.0718, -0.0851], dtype=np.float32))
_SD3 = (_SD3_FACTORS, np.array([0.2394, 0.2135, 0.1925], dtype=np.float32))
_WAN = (_WAN_FACTORS, np.array([-0.1835, -0.0868, -0.3360], dtype=np.float32))
# Flux.2's offset is Flux.1's, as ComfyUI publishes it.
_FLUX2 = (_FLUX2_FACTORS, np.array([-0.0329, -0.0718, -0.0851], dtype=np.float32))
_QWEN21 = (_QWEN21_FACTORS, np.array([-0.1228, -0.1869, -0.3083], dtype=np.float32))

_FACTORS = {
    "sd1": (_SD_FACTORS, _NO_BIAS), "sd2": (_SD_FACTORS, _NO_BIAS), "sdxl": (_SDXL_FACTORS, _NO_BIAS),
    "flux": _FLUX, "flux-fill": _FLUX, "chroma": _FLUX, "z-image": _FLUX, "lumina2": _FLUX, "longcat-image": _FLUX,
    "ovis-image": _FLUX, "auraflow": (_SDXL_FACTORS, _NO_BIAS),  # AuraFlow draws SDXL VAE latents
    "pixart": (_SDXL_FACTORS, _NO_BIAS), "pixart-alpha": (_SD_FACTORS, _NO_BIAS),  # Sigma: SDXL's VAE; Alpha: SD 1.5's
    "sd3": _SD3, "sd3.5": _SD3,
    "qwen-image": _WAN, "krea2": _WAN, "flux2": _FLUX2, "ernie-image": _FLUX2, "qwen-image-2.1": _QWEN21,
    "hidream-i1": _FLUX,  # HiDream-I1 draws through Flux.1's autoencoder
    "flux3": _FLUX2,  # FLUX.3 draws through Flux.2's autoencoder (its 32 channels, as diffusers' blocks say)
}  # fmt: skip
_BY_CHANNELS = {4: (_SD_FACTORS, _NO_BIAS), 16: _FLUX, 32: _FLUX2, 64: _QWEN21}


def colour_family(family: str, variant: str) -> str:
    """The colour table's key for a model: its family's, or its release's where the releases draw through different
    autoencoders (PixArt-α SD 1.5's, PixArt-Σ SDXL's)."""
    return f"{family}-{variant}" if f"{family}-{variant}" in _FACTORS else family


def has_published_table(family: str) -> bool:
    """Whether the family's autoencoder has a table here; one without (Sana's DC-AE) is better fitted from its own."""
    return family in _FACTORS


def colour_table(family: str) -> ColourTable:
    """The published table of a colour family (`colour_family`); SD 1.5's for one unknown here."""
    factors, bias = _FACTORS.get(family, (_SD_FACTORS, _NO_BIAS))
    return ColourTable(family, factors, bias)


def fit_colour_table(latents: np.ndarray, rgb: np.ndarray, name: str) -> ColourTable:
    """The least-squares table (with its offset) taking (N, C) latents to (N, 3) colours in [-1, 1]: how the
    published tables were made, from pairs of latents and the autoencoder's decoded colours.

    A little ridge keeps channels the samples hardly move from taking huge weights that would blow up on the
    sampler's noisier early estimates."""
    samples, channels = latents.shape
    if samples <= channels or rgb.shape != (samples, 3):
        raise ValueError(f"need more than {channels} samples of (latents, rgb), got {latents.shape} and {rgb.shape}")
    x = np.concatenate([latents.astype(np.float64), np.ones((samples, 1))], axis=1)
    ridge = 1e-3 * np.eye(channels + 1) * (x**2).mean()
    ridge[-1, -1] = 0.0  # the offset is not shrunk
    solution = np.linalg.solve(x.T @ x + samples * ridge, x.T @ rgb.astype(np.float64))
    return ColourTable(name, solution[:-1].astype(np.float32), solution[-1].astype(np.float32))


def latents_to_rgb(latents: np.ndarray, colours: ColourTable | str) -> np.ndarray:
    """(C, H, W) float latents of one image (C: 4 for SD, 16 for the DiT families, 32 for Flux.2) -> an owned (H, W, 3)
    uint8 array, through a table or a colour family's published one.

    The linear map yields roughly [-1, 1]; values outside are clipped, as every tool's preview does.
    """
    table = colours if isinstance(colours, ColourTable) else colour_table(colours)
    factors, bias = table.factors, table.bias
    if latents.ndim == 3 and latents.shape[0] != factors.shape[0]:
        # An autoencoder of another width than the family's usual one (a test model, an odd fine-tune): the
        # table of that width gives a rough but recognisable picture, better than none.
        factors, bias = _BY_CHANNELS.get(latents.shape[0], (factors, bias))
    if latents.ndim != 3 or latents.shape[0] != factors.shape[0]:
        raise ValueError(f"expected latents of shape ({factors.shape[0]}, H, W), got {latents.shape}")
    rgb = np.einsum("chw,cr->hwr", latents.astype(np.float32, copy=False), factors) + bias
    return np.ascontiguousarray(((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
