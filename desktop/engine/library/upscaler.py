"""Upscaler models without torch: what an ESRGAN-family file is, judged from its tensor names and shapes.

Two layouts name the same RRDB network (ESRGAN, Real-ESRGAN, BSRGAN and the community "4x-..." models):
the original ESRGAN one (`model.0.weight`, `model.1.sub.N.RDB1.conv1.0.weight`, ...) and the BasicSR one
Real-ESRGAN ships (`conv_first.weight`, `body.N.rdb1.conv1.weight`, ...). The header tells the block
count, the width, the colour channels and the scale (how many 2x upsampling convolutions there are), so
the backend builds the exact network and loads the tensors strictly: a file that does not fit is an error.

Real-ESRGAN's compact network (SRVGGNetCompact: realesr-general-x4v3, realesr-animevideov3) is a plain
stack `body.0` conv, PReLU, then `num_conv` x (conv, PReLU), a last conv to out_channels x scale^2, a
pixel shuffle, plus the nearest-upsampled input; its header tells the width, the conv count and the scale.

Every other architecture is read by its own torch-free module (`upscaler_<name>.py`, imported below; its shape
goes into `UpscalerInfo.detail`). Networks that are no upscalers (face restorers, inpainters) are refused with the
reason (`not_an_upscaler`). The maintained loader, spandrel, needs torchvision, which Marble does not ship
(docs/upscalers.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from desktop.engine.errors import ModelError
from desktop.engine.library.checkpoint import SafetensorsHeader
from desktop.engine.library.upscaler_atd import ATDShape, atd_label, inspect_atd, looks_like_atd
from desktop.engine.library.upscaler_aurasr import AuraSRShape, aurasr_label, inspect_aurasr, looks_like_aurasr
from desktop.engine.library.upscaler_cidnet import CIDNetShape, cidnet_label, inspect_cidnet, looks_like_cidnet
from desktop.engine.library.upscaler_cnn import (
    RCANShape,
    inspect_rcan,
    inspect_swiftsrgan,
    looks_like_rcan,
    looks_like_swiftsrgan,
    rcan_label,
    swiftsrgan_label,
)
from desktop.engine.library.upscaler_craft import CRAFTShape, craft_label, inspect_craft, looks_like_craft
from desktop.engine.library.upscaler_cugan import CUGANShape, cugan_label, inspect_cugan, looks_like_cugan
from desktop.engine.library.upscaler_dctlsa import DCTLSAShape, dctlsa_label, inspect_dctlsa, looks_like_dctlsa
from desktop.engine.library.upscaler_dehaze import (
    MixDehazeNetShape,
    inspect_mixdehazenet,
    looks_like_mixdehazenet,
    mixdehazenet_label,
)
from desktop.engine.library.upscaler_ditn import DITNShape, ditn_label, inspect_ditn, looks_like_ditn
from desktop.engine.library.upscaler_drct import DRCTShape, drct_label, inspect_drct, looks_like_drct
from desktop.engine.library.upscaler_efficient import (
    PLKSRShape,
    SPANShape,
    inspect_plksr,
    inspect_span,
    looks_like_plksr,
    looks_like_span,
    plksr_label,
    span_label,
)
from desktop.engine.library.upscaler_fbcnn import FBCNNShape, fbcnn_label, inspect_fbcnn, looks_like_fbcnn
from desktop.engine.library.upscaler_fdat import FDATShape, fdat_label, inspect_fdat, looks_like_fdat
from desktop.engine.library.upscaler_fftformer import (
    FFTformerShape,
    fftformer_label,
    inspect_fftformer,
    looks_like_fftformer,
)
from desktop.engine.library.upscaler_grl import GRLShape, grl_label, inspect_grl, looks_like_grl, unprefixed
from desktop.engine.library.upscaler_ipt import IPTShape, inspect_ipt, ipt_label, looks_like_ipt
from desktop.engine.library.upscaler_kbnet import (
    KBNetLShape,
    KBNetShape,
    inspect_kbnet,
    inspect_kbnet_l,
    kbnet_l_label,
    kbnet_label,
    looks_like_kbnet,
    looks_like_kbnet_l,
)
from desktop.engine.library.upscaler_mmrealsr import (
    MMRealSRShape,
    inspect_mmrealsr,
    looks_like_mmrealsr,
    mmrealsr_label,
)
from desktop.engine.library.upscaler_moesr import (
    MoESRShape,
    inspect_moesr,
    looks_like_moesr,
    moesr_label,
    read_meta_upsample,
)
from desktop.engine.library.upscaler_mosr import MoSRShape, inspect_mosr, looks_like_mosr, mosr_label
from desktop.engine.library.upscaler_nafnet import NAFNetShape, inspect_nafnet, looks_like_nafnet, nafnet_label
from desktop.engine.library.upscaler_omni import OmniSRShape, inspect_omnisr, looks_like_omnisr, omnisr_label
from desktop.engine.library.upscaler_restoration import (
    DnCNNShape,
    DRUNetShape,
    SCUNetShape,
    dncnn_label,
    drunet_label,
    inspect_dncnn,
    inspect_drunet,
    inspect_scunet,
    looks_like_dncnn,
    looks_like_drunet,
    looks_like_scunet,
    scunet_label,
)
from desktop.engine.library.upscaler_retinexformer import (
    RetinexFormerShape,
    inspect_retinexformer,
    looks_like_retinexformer,
    retinexformer_label,
)
from desktop.engine.library.upscaler_rgt import RGTShape, inspect_rgt, looks_like_rgt, rgt_label
from desktop.engine.library.upscaler_safmn import SAFMNShape, inspect_safmn, looks_like_safmn, safmn_label
from desktop.engine.library.upscaler_seemore import SeemoReShape, inspect_seemore, looks_like_seemore, seemore_label
from desktop.engine.library.upscaler_transformers import (
    DATShape,
    HATShape,
    Swin2SRShape,
    SwinIRShape,
    dat_label,
    hat_label,
    inspect_dat,
    inspect_hat,
    inspect_swin2sr,
    inspect_swinir,
    looks_like_dat,
    looks_like_hat,
    looks_like_swin2sr,
    looks_like_swinir,
    swin2sr_label,
    swinir_label,
)
from desktop.engine.library.upscaler_uformer import UformerShape, inspect_uformer, looks_like_uformer, uformer_label

_OLD_BLOCK = re.compile(r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight")
_NEW_BLOCK = re.compile(r"body\.(\d+)\.rdb1\.conv1\.weight")
_OLD_UPCONV = re.compile(r"model\.(\d+)\.weight")
# Networks that chaiNNer's loader (spandrel) also reads but that do not fit the upscaler slot: the tensor names
# that tell them (all present), what they are and why Marble does not run them as an upscaler.
_NOT_UPSCALERS = (
    (("toRGB.0.weight", "stylegan_decoder.style_mlp.1.weight"), "a GFPGAN face restorer",
     "it restores 512 px crops of aligned faces, which needs a face detector Marble does not have"),
    (("quantize.embedding.weight", "quant_conv.weight", "encoder.conv_in.weight", "encoder.conv_out.weight",
      "decoder.conv_out.weight", "encoder.down.0.block.0.norm1.weight"), "a RestoreFormer face restorer",
     "it restores 512 px crops of aligned faces, which needs a face detector Marble does not have"),
    (("model.model.1.bn_l.running_mean",), "a LaMa inpainting model",
     "it fills a masked area of an image rather than enlarging or cleaning the whole image"),
    (("generator.model.1.bn_l.running_mean",), "a LaMa inpainting model",
     "it fills a masked area of an image rather than enlarging or cleaning the whole image"),
)  # fmt: skip
_COMPACT_CONV = re.compile(r"body\.(\d+)\.weight")


@dataclass(frozen=True)
class UpscalerInfo:
    """An upscaler's shape, from its header."""

    # "esrgan" (original names) | "basicsr" (Real-ESRGAN's names) | "srvgg" (the compact net) | "swinir" | "hat" |
    # "swin2sr" | "dat" | "span" | "plksr" | "omnisr" | "drct" | "rgt" | "atd" | "safmn" |
    # "safmn-bcie" | "ditn" | "cugan" | "rcan" | "swiftsrgan" | "craft" | "mosr" | "seemore" | "moesr" |
    # "scunet" | "dncnn" | "drunet" | "fdat" | "dctlsa" | "grl" | "retinexformer" | "cidnet" | "mixdehazenet" |
    # "nafnet" | "fbcnn" | "kbnet" | "kbnet-l" | "aurasr" | "fftformer" | "uformer" | "mmrealsr" | "ipt"
    layout: str
    scale: int  # 1, 2, 4 or 8
    blocks: int  # RRDB blocks; for "srvgg", the body's conv count (num_conv)
    features: int
    in_channels: int
    out_channels: int
    growth: int  # each dense block's inner width (32 in the published models); 0 for "srvgg"
    # The rest of the shape, beyond the fields above (a transformer's, SPAN's, PLKSR's, OmniSR's).
    detail: (
        SwinIRShape | HATShape | Swin2SRShape | DATShape | SPANShape | PLKSRShape | OmniSRShape | DRCTShape | RGTShape
        | ATDShape | SAFMNShape | DITNShape | CUGANShape | RCANShape | CRAFTShape | MoSRShape | SeemoReShape
        | MoESRShape | SCUNetShape | DnCNNShape | DRUNetShape | FDATShape | DCTLSAShape | GRLShape
        | RetinexFormerShape | CIDNetShape | MixDehazeNetShape | NAFNetShape | FBCNNShape | KBNetShape | KBNetLShape
        | AuraSRShape | FFTformerShape | UformerShape | MMRealSRShape | IPTShape
        | None
    ) = None

    @property
    def label(self) -> str:
        shape_label = _SHAPE_LABELS.get(type(self.detail))
        if shape_label is not None:
            return shape_label(self)
        if self.layout == "swiftsrgan":
            return swiftsrgan_label(self.scale, self.blocks, self.features)
        if self.layout == "srvgg":
            return f"Real-ESRGAN compact {self.scale}x ({self.blocks} convs, {self.features} features)"
        return f"ESRGAN {self.scale}x ({self.blocks} blocks, {self.features} features)"


# Each shape's label from the info it details, looked up by the shape's exact type (so HAT's and Swin2SR's,
# which extend SwinIR's, find their own).
_SHAPE_LABELS: dict[type, Callable[[UpscalerInfo], str]] = {
    Swin2SRShape: lambda info: swin2sr_label(info.detail, info.scale, info.features),
    HATShape: lambda info: hat_label(info.detail, info.scale, info.features),
    SwinIRShape: lambda info: swinir_label(info.detail, info.scale, info.features),
    DATShape: lambda info: dat_label(info.detail, info.scale, info.features),
    SPANShape: lambda info: span_label(info.detail, info.scale, info.features),
    PLKSRShape: lambda info: plksr_label(info.detail, info.scale, info.features, info.blocks),
    OmniSRShape: lambda info: omnisr_label(info.detail, info.scale, info.features),
    DRCTShape: lambda info: drct_label(info.detail, info.scale, info.features),
    RGTShape: lambda info: rgt_label(info.detail, info.scale, info.features),
    ATDShape: lambda info: atd_label(info.detail, info.scale, info.features),
    SAFMNShape: lambda info: safmn_label(info.detail, info.scale, info.features),
    DITNShape: lambda info: ditn_label(info.detail, info.scale, info.features),
    CUGANShape: lambda info: cugan_label(info.detail, info.scale),
    RCANShape: lambda info: rcan_label(info.detail, info.scale, info.features),
    CRAFTShape: lambda info: craft_label(info.detail, info.scale, info.features),
    FDATShape: lambda info: fdat_label(info.detail, info.scale, info.features),
    DCTLSAShape: lambda info: dctlsa_label(info.detail, info.scale, info.features),
    GRLShape: lambda info: grl_label(info.detail, info.scale, info.features),
    RetinexFormerShape: lambda info: retinexformer_label(info.detail, info.features),
    CIDNetShape: lambda info: cidnet_label(info.detail),
    MixDehazeNetShape: lambda info: mixdehazenet_label(info.detail),
    NAFNetShape: lambda info: nafnet_label(info.detail, info.features),
    FBCNNShape: lambda info: fbcnn_label(info.detail, info.features),
    KBNetLShape: lambda info: kbnet_l_label(info.detail, info.features),
    KBNetShape: lambda info: kbnet_label(info.detail, info.features),
    AuraSRShape: lambda info: aurasr_label(info.detail, info.scale, info.features),
    FFTformerShape: lambda info: fftformer_label(info.detail, info.features),
    UformerShape: lambda info: uformer_label(info.detail, info.features),
    IPTShape: lambda info: ipt_label(info.detail, info.scale, info.features),
    MMRealSRShape: lambda info: mmrealsr_label(info.detail, info.scale, info.blocks, info.features),
    MoSRShape: lambda info: mosr_label(info.detail, info.scale, info.features, info.blocks),
    SeemoReShape: lambda info: seemore_label(info.detail, info.scale, info.features, info.blocks),
    MoESRShape: lambda info: moesr_label(info.detail, info.scale, info.features),
    SCUNetShape: lambda info: scunet_label(info.features, info.in_channels),
    DnCNNShape: lambda info: dncnn_label(info.detail, info.features, info.out_channels),
    DRUNetShape: lambda info: drunet_label(info.detail, info.out_channels),
}  # fmt: skip

def not_an_upscaler(tensors: Mapping[str, object]) -> str | None:
    """Why a file of a network spandrel reads but that is no upscaler is refused ("looks like ..."), or None."""
    for probes, what, why in _NOT_UPSCALERS:
        if all(probe in tensors for probe in probes):
            return f"looks like {what}, not an upscaler: {why}."
    return None


def inspect_upscaler(header: SafetensorsHeader, name: str = "this file") -> UpscalerInfo:
    """The upscaler network a header describes; raise ModelError naming what the file is otherwise. Settings
    stored as tiny tensors (MoESR's and FDAT's upsampler records) come with the header (`small_values`)."""
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
    if looks_like_mmrealsr(tensors):  # before Real-ESRGAN's names: its trunk has them too
        return _mmrealsr(tensors, name)
    if "conv_first.weight" in tensors and any(_NEW_BLOCK.fullmatch(key) for key in tensors):
        blocks = 1 + max(int(m[1]) for key in tensors if (m := _NEW_BLOCK.fullmatch(key)))
        first, growth = tensors["conv_first.weight"].shape, tensors["body.0.rdb1.conv1.weight"].shape[0]
        ups = sum(1 for key in tensors if re.fullmatch(r"conv_up\d+\.weight", key))
        # Real-ESRGAN's x2 model unshuffles its input (4x the channels) and upsamples twice.
        unshuffle = {12: 2, 48: 4}.get(first[1], 1) if first[1] not in (1, 3, 4) else 1
        last = tensors["conv_last.weight"].shape
        info = UpscalerInfo("basicsr", 2**ups // unshuffle, blocks, first[0], first[1] // unshuffle**2, last[0], growth)
        return _checked(info, name)
    # RCAN's attention gates, Swift-SRGAN's separable convs and CRAFT's fusion temperatures are names of
    # their own; RCAN before the compact net, whose test is for body.N names RCAN has too.
    if looks_like_rcan(tensors):
        return _rcan(tensors, name)
    if looks_like_swiftsrgan(tensors):
        return _swiftsrgan(tensors, name)
    if looks_like_craft(tensors):
        return _transformer("CRAFT", "craft", inspect_craft, tensors, name)
    if looks_like_fdat(tensors):  # its upsampler's settings tensor is FDAT's own name
        return _fdat(header, name)
    if looks_like_dctlsa(tensors):  # its modules' names (B1.body..., fea_conv) are its own
        return _dctlsa(tensors, name)
    if "body.0.weight" in tensors and "body.1.weight" in tensors:
        return _compact(tensors, name)
    if looks_like_span(tensors):
        return _span(tensors, name)
    if looks_like_plksr(tensors):
        return _plksr(tensors, name)
    if looks_like_omnisr(tensors):
        return _omnisr(tensors, name)
    if looks_like_drct(tensors):
        return _drct(tensors, name)
    if looks_like_atd(tensors):  # before SwinIR and HAT: ATD has their group names (residual_group) too
        return _transformer("ATD", "atd", inspect_atd, tensors, name)
    if looks_like_safmn(tensors):
        return _safmn(tensors, name)
    if looks_like_ditn(tensors):
        return _ditn(tensors, name)
    if looks_like_cugan(tensors):
        return _cugan(tensors, name)
    if looks_like_mosr(tensors):
        return _mosr(tensors, name)
    if looks_like_seemore(tensors):
        return _seemore(tensors, name)
    if looks_like_moesr(tensors):
        meta = read_meta_upsample(header)
        return _moesr(tensors, name, meta)
    if looks_like_scunet(tensors):
        return _scunet(tensors, name)
    if looks_like_dncnn(tensors):  # after ESRGAN's original names, which start with model.0 too
        return _dncnn(tensors, name)
    if looks_like_drunet(tensors):
        return _drunet(tensors, name)
    if looks_like_grl(tensors):
        return _transformer("GRL", "grl", inspect_grl, unprefixed(tensors), name)
    if looks_like_retinexformer(tensors):
        return _retinexformer(tensors, name)
    if looks_like_cidnet(tensors):
        return _cidnet(tensors, name)
    if looks_like_mixdehazenet(tensors):
        return _mixdehazenet(tensors, name)
    if looks_like_nafnet(tensors):
        return _nafnet(tensors, name)
    if looks_like_fbcnn(tensors):
        return _fbcnn(tensors, name)
    if looks_like_kbnet(tensors):
        return _kbnet(tensors, name)
    if looks_like_kbnet_l(tensors):
        return _kbnet_l(tensors, name)
    if looks_like_aurasr(tensors):  # modulated kernel banks (`proj.weights`): AuraSR's own names
        return _aurasr(tensors, name)
    if looks_like_fftformer(tensors):  # its spectral filters (`ffn.fft`) are its own
        return _fftformer(tensors, name)
    if looks_like_uformer(tensors):  # its layer names (encoderlayer_N, input_proj.proj.0) are its own
        return _uformer(tensors, name)
    if looks_like_ipt(tensors):  # its decoder's cross-attention is its own name
        return _ipt(tensors, name)
    if refusal := not_an_upscaler(tensors):
        raise ModelError(f"{name} {refusal}")
    if looks_like_swin2sr(tensors):  # SwinIR's names too, but no bias table
        return _transformer("Swin2SR", "swin2sr", inspect_swin2sr, tensors, name)
    if looks_like_hat(tensors):  # before SwinIR: HAT has SwinIR's names too
        return _transformer("HAT", "hat", inspect_hat, tensors, name)
    if looks_like_swinir(tensors):
        return _transformer("SwinIR", "swinir", inspect_swinir, tensors, name)
    if looks_like_rgt(tensors):  # before DAT: RGT has DAT's position-table names too
        return _transformer("RGT", "rgt", inspect_rgt, tensors, name)
    if looks_like_dat(tensors):
        return _transformer("DAT", "dat", inspect_dat, tensors, name)
    raise ModelError(f"{name} is not an upscaler model Marble knows (no ESRGAN / Real-ESRGAN tensor names).")


def _compact(tensors: dict, name: str) -> UpscalerInfo:
    """SRVGGNetCompact: convs at the even body indices, a PReLU (one weight per feature) after each but
    the last; the last conv makes out_channels x scale^2 channels for the pixel shuffle."""
    convs = sorted(int(m[1]) for key in tensors if (m := _COMPACT_CONV.fullmatch(key)) and len(tensors[key].shape) == 4)
    first, last = tensors["body.0.weight"].shape, tensors[f"body.{convs[-1]}.weight"].shape
    prelus = [f"body.{index + 1}.weight" for index in convs[:-1]]
    if convs != list(range(0, 2 * len(convs), 2)) or any(
        key not in tensors or tuple(tensors[key].shape) != (first[0],) for key in prelus
    ):
        raise ModelError(f"{name} has a Real-ESRGAN compact layout Marble cannot run (PReLU activations only).")
    in_channels = first[1]
    scale = round((last[0] / in_channels) ** 0.5)
    if scale * scale * in_channels != last[0]:
        raise ModelError(f"{name}'s last convolution ({last[0]} channels) fits no scale of {in_channels} channels.")
    return _checked(UpscalerInfo("srvgg", scale, len(convs) - 2, first[0], in_channels, in_channels, 0), name)


def _span(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_span(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a SPAN for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")
    return UpscalerInfo("span", scale, 6, width, in_channels, out_channels, 0, detail)


def _plksr(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_plksr(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a PLKSR for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")
    blocks = sum(1 for key in tensors if key.startswith("feats.") and key.endswith(".refine.weight"))
    return UpscalerInfo("plksr", scale, blocks, width, in_channels, out_channels, 0, detail)


def _omnisr(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_omnisr(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is an OmniSR for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")
    return UpscalerInfo("omnisr", scale, detail.groups * detail.blocks, width, in_channels, out_channels, 0, detail)


def _drct(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_drct(tensors, name)
    if in_channels != 3 or out_channels != 3 or scale not in (2, 3, 4, 8):
        raise ModelError(f"{name} is a DRCT for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("drct", scale, detail.groups * 5, width, in_channels, out_channels, detail.growth, detail)


def _safmn(tensors: dict, name: str) -> UpscalerInfo:
    """SAFMN, or SAFMN-BCIE (its 1x enhancement variant: blocks in groups, layout "safmn-bcie")."""
    detail, scale, width, in_channels, out_channels = inspect_safmn(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a SAFMN for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    layout, blocks = ("safmn-bcie", detail.blocks * detail.layers) if detail.layers else ("safmn", detail.blocks)
    return UpscalerInfo(layout, scale, blocks, width, in_channels, out_channels, 0, detail)


def _ditn(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_ditn(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a DITN for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    blocks = detail.units * (detail.itl + detail.sal)
    return UpscalerInfo("ditn", scale, blocks, width, in_channels, out_channels, 0, detail)


def _cugan(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_cugan(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is a Real-CUGAN for {in_channels}-channel images; Marble runs colour (RGB) "
                         "ones only.")  # fmt: skip
    return UpscalerInfo("cugan", scale, 2, width, in_channels, out_channels, 0, detail)  # blocks: its two U-Nets


def _nafnet(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_nafnet(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is a NAFNet for {in_channels}-channel images; Marble runs colour (RGB) ones only.")
    return UpscalerInfo("nafnet", scale, detail.blocks, width, in_channels, out_channels, 0, detail)


def _fbcnn(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_fbcnn(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is an FBCNN for {in_channels}-channel images; Marble runs colour (RGB) ones only.")
    return UpscalerInfo("fbcnn", scale, detail.blocks * 9, width, in_channels, out_channels, 0, detail)


def _kbnet(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_kbnet(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is a KBNet-S for {in_channels}-channel images; Marble runs colour (RGB) ones only.")
    return UpscalerInfo("kbnet", scale, detail.unet.blocks, width, in_channels, out_channels, 0, detail)


def _kbnet_l(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_kbnet_l(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is a KBNet-L for {in_channels}-channel images; Marble runs colour (RGB) ones only.")
    blocks = 2 * sum(detail.blocks) - detail.blocks[3] + detail.refinement
    return UpscalerInfo("kbnet-l", scale, blocks, width, in_channels, out_channels, 0, detail)


def _rcan(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_rcan(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is an RCAN for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("rcan", scale, detail.groups * detail.blocks, width, in_channels, out_channels, 0, detail)


def _swiftsrgan(tensors: dict, name: str) -> UpscalerInfo:
    blocks, scale, width, in_channels, out_channels = inspect_swiftsrgan(tensors, name)
    if in_channels != 3 or out_channels != 3 or scale not in (1, 2, 4, 8):
        raise ModelError(f"{name} is a Swift-SRGAN for {in_channels}-channel images at {scale}x; Marble runs colour "
                         "(RGB) ones at 1x, 2x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("swiftsrgan", scale, blocks, width, in_channels, out_channels, 0)


def _mosr(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, blocks, in_channels, out_channels = inspect_mosr(tensors, name)
    if in_channels != 3 or out_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a MoSR for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("mosr", scale, blocks, width, in_channels, out_channels, 0, detail)


def _seemore(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, groups, channels = inspect_seemore(tensors, name)
    if channels != 3 or scale not in (1, 2, 3, 4, 8):
        # Colour only: the network subtracts a mean RGB colour from its input.
        raise ModelError(f"{name} is a SeemoRe for {channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("seemore", scale, groups, width, channels, channels, 0, detail)


def _moesr(tensors: dict, name: str, meta: tuple[int, ...] | None) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_moesr(tensors, name, meta)
    if in_channels != 3 or out_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a MoESR for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    blocks = detail.groups * detail.blocks
    return UpscalerInfo("moesr", scale, blocks, width, in_channels, out_channels, 0, detail)
def _scunet(tensors: dict, name: str) -> UpscalerInfo:
    detail, width, channels = inspect_scunet(tensors, name)
    if channels not in (1, 3):
        raise ModelError(f"{name} is a SCUNet for {channels}-channel images; Marble runs colour (RGB) and grey ones.")
    # A grey model denoises each of the image's three channels on its own (upscale() feeds RGB).
    return UpscalerInfo("scunet", 1, sum(detail.depths), width, channels, channels, 0, detail)


def _dncnn(tensors: dict, name: str) -> UpscalerInfo:
    detail, width, in_channels, out_channels = inspect_dncnn(tensors, name)
    if out_channels not in (1, 3):
        raise ModelError(f"{name} is a DnCNN for {out_channels}-channel images; Marble runs colour (RGB) and grey "
                         "ones.")
    # in_channels without FDnCNN's noise map: what the image brings (a grey model sees each channel alone).
    return UpscalerInfo("dncnn", 1, detail.convs, width, in_channels, out_channels, 0, detail)


def _drunet(tensors: dict, name: str) -> UpscalerInfo:
    detail, in_channels, out_channels = inspect_drunet(tensors, name)
    if out_channels not in (1, 3):
        raise ModelError(f"{name} is a DRUNet for {out_channels}-channel images; Marble runs colour (RGB) and grey "
                         "ones.")
    return UpscalerInfo("drunet", 1, 7 * detail.blocks, detail.widths[0], in_channels, out_channels, 0, detail)
def _retinexformer(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_retinexformer(tensors, name)
    blocks = detail.stages * sum(detail.blocks)  # attention blocks per stage's encoder side and bottleneck
    return UpscalerInfo("retinexformer", scale, blocks, width, in_channels, out_channels, 0, detail)


def _cidnet(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_cidnet(tensors, name)
    # blocks: the cross-attention pairs (three down, three up)
    return UpscalerInfo("cidnet", scale, 6, width, in_channels, out_channels, 0, detail)


def _mixdehazenet(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_mixdehazenet(tensors, name)
    return UpscalerInfo("mixdehazenet", scale, sum(detail.depths), width, in_channels, out_channels, 0, detail)


def _aurasr(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_aurasr(tensors, name)
    if in_channels != 3 or out_channels != 3:
        raise ModelError(f"{name} is an AuraSR for {in_channels}-channel images; Marble runs colour (RGB) ones only.")
    blocks = detail.blocks * (detail.downs + 5) + 3  # the residual blocks: each level's, the two middle ones, the last
    return UpscalerInfo("aurasr", scale, blocks, width, in_channels, out_channels, 0, detail)


def _fftformer(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_fftformer(tensors, name)
    blocks = 2 * sum(detail.blocks) + detail.refinement  # encoder and decoder levels, refinement
    return UpscalerInfo("fftformer", scale, blocks, width, in_channels, out_channels, 0, detail)


def _uformer(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_uformer(tensors, name)
    return UpscalerInfo("uformer", scale, sum(detail.depths), width, in_channels, out_channels, 0, detail)


def _transformer(architecture: str, layout: str, inspect: Callable, tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, embed, in_channels, out_channels = inspect(tensors, name)
    if in_channels != 3 or out_channels != 3:
        # upscale() feeds RGB; the grey-level denoising and JPEG models would need their own path.
        raise ModelError(f"{name} is a {architecture} for {in_channels}-channel images; Marble runs colour (RGB) "
                         "ones only.")
    if scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a {architecture} at {scale}x; Marble runs 1x, 2x, 3x, 4x and 8x ones.")
    return UpscalerInfo(layout, scale, sum(detail.depths), embed, in_channels, out_channels, 0, detail)


def _fdat(header: SafetensorsHeader, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_fdat(header.tensors, header.small_values, name)
    if in_channels != 3 or out_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is an FDAT for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("fdat", scale, sum(detail.depths), width, in_channels, out_channels, 0, detail)


def _dctlsa(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width, in_channels, out_channels = inspect_dctlsa(tensors, name)
    if in_channels != 3 or scale not in (1, 2, 3, 4, 8):
        raise ModelError(f"{name} is a DCTLSA for {in_channels}-channel images at {scale}x; Marble runs colour (RGB) "
                         "ones at 1x, 2x, 3x, 4x and 8x.")  # fmt: skip
    return UpscalerInfo("dctlsa", scale, 24, width, in_channels, out_channels, 0, detail)  # 6 modules x 2 x 2 blocks


def _mmrealsr(tensors: dict, name: str) -> UpscalerInfo:
    detail, blocks, width, growth, scale = inspect_mmrealsr(tensors, name)
    return UpscalerInfo("mmrealsr", scale, blocks, width, 3, 3, growth, detail)


def _ipt(tensors: dict, name: str) -> UpscalerInfo:
    detail, scale, width = inspect_ipt(tensors, name)
    return UpscalerInfo("ipt", scale, detail.layers, width, 3, 3, 0, detail)


def _checked(info: UpscalerInfo, name: str) -> UpscalerInfo:
    if info.scale not in (1, 2, 4, 8) or info.in_channels not in (1, 3, 4) or info.out_channels not in (1, 3, 4):
        raise ModelError(f"{name} has an ESRGAN layout Marble cannot run ({info}).")
    return info
