"""The picture size a model was trained at, so choosing a model can choose a size that suits it.

A diffusers folder says it: the UNet's sample_size (latent side) times the VAE's factor, 2 per level
after the first. That gives 512 for SD 1.x, 768 for SD 2.x, 1024 for SDXL and 128 for the demo model.
A single file carries no config, so its detected architecture decides.
"""

from __future__ import annotations

from pathlib import Path

from desktop.engine.errors import MarbleError
from desktop.engine.library.checkpoint import ArchitectureInfo, detect_model, with_variant
from desktop.engine.library.dit import reference_image_limit
from desktop.engine.library.dit_flux2 import FLUX2
from desktop.engine.library.dit_hidream import HIDREAM
from desktop.engine.library.few_step import PRESETS, few_step_of_file, split_family
from desktop.engine.safe_files import read_json_file

# Published training sizes of the architectures a single file can be (resources/configs names).
_SIZE_BY_CONFIG = {
    "sd15": 512,
    "sd15-inpaint": 512,
    "sd2": 768,
    "sd2-base": 512,
    "sd2-inpaint": 512,
    "sdxl": 1024,
    "sdxl-inpaint": 1024,
    "sdxl-refiner": 1024,
}


def native_size(path: Path) -> int | None:
    """The model's native side in pixels, or None when it cannot be told (unreadable, unknown)."""
    try:
        if path.is_dir():
            unet = _json(path / "unet" / "config.json")
            vae = _json(path / "vae" / "config.json")
            side, levels = unet.get("sample_size"), vae.get("block_out_channels")
            if isinstance(side, int) and isinstance(levels, list) and levels:
                return side * 2 ** (len(levels) - 1)
            return None
        return _SIZE_BY_CONFIG.get(detect_model(path).config_name)
    except (MarbleError, OSError, ValueError):
        return None


# The family a shipped config belongs to: models of one family share good defaults (size, steps, CFG).
_FAMILY_BY_CONFIG = {
    "sd15": "sd1",
    "sd15-inpaint": "sd1",
    "sd2": "sd2",
    "sd2-base": "sd2",
    "sd2-inpaint": "sd2",
    "sdxl": "sdxl",
    "sdxl-inpaint": "sdxl",
    "sdxl-refiner": "sdxl-refiner",  # offered as a refiner, not as a main model's family
    # The diffusion transformers (desktop.engine.library.dit): Flux dev and schnell want different
    # defaults (schnell: 4 steps, no guidance), the SD3 sizes share theirs.
    "flux-dev": "flux-dev",
    "flux-schnell": "flux-schnell",
    "sd3-medium": "sd3",
    "sd3.5-medium": "sd3",
    "sd3.5-large": "sd3",
    "qwen-image": "qwen-image",
    "z-image": "z-image",
    "chroma": "chroma",
    "lumina2": "lumina2",
    "qwen-image-2.1": "qwen-image-2.1",
    "krea2": "krea2",
    "ernie-image": "ernie-image",
    "longcat-image": "longcat-image",
    "ovis-image": "ovis-image",
    "hidream-i1": "hidream-i1",
    "auraflow": "auraflow",
    "sana": "sana",
    "sana-sprint": "sana-sprint",
    "pixart-sigma": "pixart-sigma",
    "pixart-alpha": "pixart-alpha",
    "flux3": "flux3",
    "flux3-distilled": "flux3-distilled",
}
# A diffusers folder's UNet says its family by the width of the text embedding it attends to.
_FAMILY_BY_CROSS_ATTENTION = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


def model_family(path: Path, variant: str = "") -> str | None:
    """"sd1", "sd2", "sdxl", "flux-dev", "flux-schnell", "sd3", "flux2-dev", "flux2-klein", or "unet-<width>"
    for another UNet folder (the demo model); None when unreadable or unknown. A UNet single file whose
    header names a few-step kind (library/few_step.py), or a UNet model the user marked as one, gets it as a
    suffix, "sdxl-turbo": a family of its own, with its defaults. `variant`: the one the user chose for the file
    (LibraryRecord.chosen_variant: a DiT variant, or a UNet model's few-step kind)."""
    family = _plain_family(path, variant)
    if family in ("sd1", "sd2", "sdxl"):
        # The kind the user chose for the file (Library.choose_variant), else the one its header names.
        kind = variant if variant in PRESETS else few_step_of_file(path)
        if kind is not None:
            return f"{family}-{kind}"
    return family


def _plain_family(path: Path, variant: str = "") -> str | None:
    try:
        if path.is_dir() and not (path / "unet").is_dir():
            # A transformer folder (Flux, SD3): its model_index.json and transformer config tell (an ERNIE-Image
            # folder's variant the user says).
            return _dit_family(with_variant(detect_model(path), variant))
        if path.is_dir() and _is_refiner_folder(path):
            return "sdxl-refiner"
        if path.is_dir():
            width = _json(path / "unet" / "config.json").get("cross_attention_dim")
            if isinstance(width, list) and width:
                width = width[0]
            if not isinstance(width, int):
                return None
            return _FAMILY_BY_CROSS_ATTENTION.get(width, f"unet-{width}")
        return _dit_family(with_variant(detect_model(path), variant))
    except (MarbleError, OSError, ValueError):
        return None


def _dit_family(arch: ArchitectureInfo) -> str | None:
    # Qwen-Image-Edit shares Qwen-Image's config but not its defaults: "qwen-image-edit", "-edit-plus";
    # LongCat-Image-Edit ("longcat-image-edit") likewise, and Krea 2's and ERNIE-Image's Turbo, as "krea2-distilled"
    # and "ernie-image-distilled": a "-turbo" ending is the few-step kinds' mark (library/few_step.py split_family:
    # SDXL Turbo's 1-step preset).
    if arch.dit is not None and arch.dit.variant in ("edit", "edit-plus"):
        return f"{arch.dit.family}-{arch.dit.variant}"
    if arch.dit is not None and arch.dit.variant == "turbo":
        return f"{arch.dit.family}-distilled"
    if arch.dit is not None and arch.dit.family == HIDREAM and arch.dit.variant:
        return f"{HIDREAM}-{arch.dit.variant}"  # Dev's and Fast's defaults; Full's is the plain family
    if arch.family == FLUX2:
        # Every Klein size shares its defaults (and a Klein of other dimensions has no shipped config).
        return "flux2-dev" if arch.dit is not None and arch.dit.variant == "dev" else "flux2-klein"
    return _FAMILY_BY_CONFIG.get(arch.config_name)


# The families that read a prompt with CLIP's 75-token window once, beside T5, and how many T5 tokens they read
# (the pipelines' max_sequence_length: BFL's 512 for dev, 256 for schnell; SAI's 256 for SD3), and the families
# no CLIP encoder reads a prompt for (T5 alone, or a Qwen / Mistral LLM). The backend passes the lengths to
# the pipelines; the prompt editor counts by them.
T5_TOKENS: dict[str, int] = {"flux-dev": 512, "flux-schnell": 256, "sd3": 256}
# "qwen-image" covers 2.1.
# HiDream-I1 reads its CLIP encoders' 128 tokens in one window (not CLIP's 75), beside T5's and Llama's 128.
CLIP_FREE_FAMILIES = ("chroma", "qwen-image", "z-image", "flux2", "lumina2", "krea2", "ernie-image",
                      "longcat-image", "ovis-image", "hidream-i1", "auraflow", "sana", "pixart", "flux3")

# The families FLUX.3's prompt rewriter writes captions for (backends/prompt_rewriter.py).
FLUX3_FAMILIES = ("flux3", "flux3-distilled")

_DIT_FAMILIES = ("flux", "sd3", "chroma", "qwen-image", "z-image", "lumina2", "krea2", "ernie-image",
                 "longcat-image", "ovis-image", "hidream-i1", "auraflow", "sana", "pixart")


def is_dit_family(family: str | None) -> bool:
    """A diffusion transformer's family (Flux.1 and .2, SD3, Chroma, Qwen-Image, Z-Image): none of the UNet
    families' seamless tiling or compiled fast mode. False for a UNet family and for an unknown model."""
    return bool(family) and family.startswith(_DIT_FAMILIES)


def takes_controls(family: str | None) -> bool:
    """Whether Marble runs control units with the family: the UNet families, and the DiTs with ControlNets
    (Flux.1, Qwen-Image, Z-Image, SD3 / SD3.5, Sana: backends/control_dit.py). True for an unknown model."""
    return not is_dit_family(family) or family in ("flux-dev", "flux-schnell", "qwen-image", "z-image", "sd3", "sana")


# Generation defaults a family needs where the UNet ones (30 steps, CFG 7.5) ruin its images: Flux
# schnell is distilled to 4 steps without guidance (BFL's reference settings).
# Qwen-Image's CFG is true CFG at 4 in Qwen's examples; 7.5 burns its images. Flux.2 Klein (4B and 9B) is
# step-distilled to 4 steps without CFG (its Base models want 50 steps and CFG 4: the user sets those);
# Flux.2 dev runs BFL's reference distilled guidance 4 (its CFG scale is unused).
_FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "flux-schnell": {"steps": 4, "cfg_scale": 1.0},
    "qwen-image": {"cfg_scale": 4.0},
    # The Edit model cards: true CFG 4 with 50 steps (Edit) and 40 (Edit-2509, "Plus").
    "qwen-image-edit": {"steps": 50, "cfg_scale": 4.0},
    "qwen-image-edit-plus": {"steps": 40, "cfg_scale": 4.0},
    "flux2-klein": {"steps": 4, "cfg_scale": 1.0},
    "flux2-dev": {"steps": 50, "cfg_scale": 1.0, "distilled_cfg_scale": 4.0},
    # Lumina Image 2.0's pipeline defaults (its makers' inference settings): 30 steps, CFG 4.
    "lumina2": {"cfg_scale": 4.0},
    # Qwen-Image 2.1: 40 steps without guidance, as Qwen recommends (diffusers' pipeline defaults).
    "qwen-image-2.1": {"steps": 40, "cfg_scale": 1.0},
    # Krea 2 Raw: Krea's own settings, 52 steps and guidance 3.5 in its pipeline's terms, which is CFG 4.5 in
    # A1111's (families_qwen_zimage.generation_arguments). Turbo: below.
    "krea2": {"steps": 52, "cfg_scale": 4.5},
    # Krea 2 Turbo (a folder saying so, or a file the user marked): 8 steps without guidance, Krea's settings.
    "krea2-distilled": {"steps": 8, "cfg_scale": 1.0},
    # ERNIE-Image: Baidu's settings, 50 steps and CFG 4 (its pipeline's defaults). Turbo (a file the user marked):
    # 8 steps without guidance, Baidu's settings for it.
    "ernie-image": {"steps": 50, "cfg_scale": 4.0},
    "ernie-image-distilled": {"steps": 8, "cfg_scale": 1.0},
    # LongCat-Image: Meituan's settings, 50 steps and CFG 4.5 (its pipeline's defaults and model card).
    "longcat-image": {"steps": 50, "cfg_scale": 4.5},
    # LongCat-Image-Edit: the same (its pipeline's defaults and model card).
    "longcat-image-edit": {"steps": 50, "cfg_scale": 4.5},
    # Ovis-Image: AIDC-AI's settings, 50 steps and CFG 5 (its pipeline's defaults and model card).
    "ovis-image": {"steps": 50, "cfg_scale": 5.0},
    # HiDream-I1: HiDream.ai's settings for each release. Full 50 steps at CFG 5; Dev and Fast are guidance-distilled,
    # 28 and 16 steps without CFG.
    "hidream-i1": {"steps": 50, "cfg_scale": 5.0},
    "hidream-i1-dev": {"steps": 28, "cfg_scale": 1.0},
    "hidream-i1-fast": {"steps": 16, "cfg_scale": 1.0},
    # AuraFlow and Pony V7: fal's settings, 50 steps at CFG 3.5 (diffusers' AuraFlowPipeline defaults).
    "auraflow": {"steps": 50, "cfg_scale": 3.5},
    # Sana: NVIDIA's settings, 20 steps at CFG 4.5 (diffusers' SanaPipeline defaults and its model cards).
    "sana": {"steps": 20, "cfg_scale": 4.5},
    # Sana Sprint: 2 steps, its embedded guidance 4.5 in the CFG field (its pipeline's defaults and model card).
    "sana-sprint": {"steps": 2, "cfg_scale": 4.5},
    # PixArt-Σ and PixArt-α: their makers' settings, 20 steps at CFG 4.5 (diffusers' PixArt pipelines' defaults).
    "pixart-sigma": {"steps": 20, "cfg_scale": 4.5},
    "pixart-alpha": {"steps": 20, "cfg_scale": 4.5},
    # FLUX.3: 50 steps at CFG 3.5 (diffusers' modular pipeline's defaults, its guider's scale being A1111's CFG); the
    # distilled flow map 16 steps without CFG.
    "flux3": {"steps": 50, "cfg_scale": 3.5},
    "flux3-distilled": {"steps": 16, "cfg_scale": 1.0},
}


def family_defaults(family: str | None) -> dict[str, object]:
    """The request fields (`steps`, `cfg_scale`, and for few-step kinds `sampler` and `few_step`) a family
    needs other than the usual defaults; {} for most. A few-step family ("sdxl-lightning", or "-lcm" for
    the kind alone, as a chosen LoRA gives it) gets its kind's published settings (library/few_step.py)."""
    _base, kind = split_family(family)
    if kind is not None:
        return PRESETS[kind].request_fields()
    return dict(_FAMILY_DEFAULTS.get(family or "", {}))


def _is_refiner_folder(path: Path) -> bool:
    try:
        return detect_model(path).refiner
    except MarbleError:
        return False  # another UNet folder (the demo model): told by its width below


def _json(file: Path) -> dict:
    data = read_json_file(file)  # a FIFO or /dev/zero is refused, not waited on
    if not isinstance(data, dict):
        raise ValueError(f"{file} is not a JSON object")
    return data


def needs_components(path: Path) -> bool:
    """Whether `path` is a transformer-only DiT file whose text encoders and VAE come from a folder the
    user names (the window's "Text encoders" row); False for folders, UNet checkpoints and unreadable files."""
    try:
        if path.is_dir():
            return False
        dit = detect_model(path).dit
        return dit is not None and dit.needs_components
    except (MarbleError, OSError, ValueError):
        return False


def reads_control_picture(path: Path) -> bool:
    """Whether the model at `path` reads a control picture through its own input (Flux.1 Canny / Depth dev: the
    window's control units offer library/control.py's BUILT_IN for it); False for unreadable files."""
    try:
        dit = detect_model(path).dit
    except (MarbleError, OSError, ValueError):
        return False
    return dit is not None and dit.control_input


def reference_limit(path: Path, variant: str = "") -> int:
    """How many reference images the model at `path` (as the `variant` the user chose for it) reads beside its
    prompt (the window's "References" row; `dit.reference_image_limit`); 0 for every other model and for
    unreadable files."""
    try:
        return reference_image_limit(with_variant(detect_model(path), variant).dit)
    except (MarbleError, OSError, ValueError):
        return 0
