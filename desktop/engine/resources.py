"""The read-only files Marble ships: model configs, CLIP tokenizers, the demo model and the app icon.

diffusers needs a diffusers-layout config folder to load a single-file checkpoint without going
online (docs/architecture.md), so the app ships one per architecture under ``resources/configs/`` and
the CLIP tokenizer files under ``resources/tokenizers/``. This module only finds those folders:
no Qt, no torch, and nothing is computed at import time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import desktop
from desktop.engine.errors import ModelError

# The config folders under resources/configs/. A name is looked up here, never joined into a path
# as given, so a name from a settings file or a checkpoint's metadata cannot point outside resources/.
CONFIG_NAMES: tuple[str, ...] = (
    "sd15",  # Stable Diffusion 1.x, CLIP ViT-L/14
    "sd15-inpaint",  # SD 1.x inpainting (9-channel UNet)
    "sd2",  # SD 2.x 768-v (v-prediction), OpenCLIP ViT-H
    "sd2-base",  # SD 2.x 512 base (epsilon)
    "sd2-inpaint",  # SD 2.x inpainting (9-channel UNet, epsilon)
    "sdxl",  # SDXL base 1.0, CLIP ViT-L + OpenCLIP bigG
    "sdxl-inpaint",  # SDXL inpainting (9-channel UNet)
    "sdxl-refiner",  # SDXL refiner 1.0: OpenCLIP bigG only, aesthetic-score conditioning (a second pass)
)
# The diffusion transformers' config folders (library/dit.py's DIT_CONFIGS): transformer, scheduler and
# VAE configs; their text encoders and tokenizers come from a folder the user names.
DIT_CONFIG_NAMES: tuple[str, ...] = (
    "flux-dev", "flux-schnell", "sd3-medium", "sd3.5-medium", "sd3.5-large", "qwen-image", "z-image",
    "chroma", "flux2-dev", "flux2-klein-4b", "flux2-klein-9b", "lumina2", "qwen-image-2.1", "krea2", "ernie-image",
    "longcat-image", "ovis-image", "hidream-i1", "auraflow", "sana", "sana-sprint",
    "pixart-sigma", "pixart-alpha", "flux3", "flux3-distilled",
)  # fmt: skip

# The one CLIP tokenizer folder under resources/tokenizers/ (OpenAI's vocabulary and merges, 1.6 MB +
# 0.5 MB), shared by every model Marble ships a config for and by the demo model. It pads with
# <|endoftext|> (SD 1.x, SDXL's first tokenizer); SD 2.x's and SDXL's OpenCLIP encoders were trained
# padded with "!" (id 0), which the backend gets from the same folder by overriding the pad token, so
# no second copy of the 2 MB of files is shipped.
TOKENIZER_FOLDER = "clip"
PAD_ZERO_TOKEN = "!"
# The pipeline components that hold a tokenizer, in diffusers' model_index.json.
TOKENIZER_COMPONENTS: tuple[str, ...] = ("tokenizer", "tokenizer_2")

# The application icon's sizes under resources/icons/, rendered from marble.svg by installer/icon/
# (which takes the sizes from here): the window and task bar icon, and the Linux hicolor theme's sizes.
APP_ICON_SIZES: tuple[int, ...] = (16, 24, 32, 48, 64, 128, 256, 512)


def app_icon_name(size: int) -> str:
    return f"marble-{size}.png"


@dataclass(frozen=True)
class Resources:
    """The shipped ``resources/`` folder. Build one with :meth:`default` or, in tests, any root."""

    root: Path

    @classmethod
    def default(cls) -> Resources:
        """The resources of this installation: the frozen app's bundle or the source tree."""
        # PyInstaller unpacks (onefile) or places (onedir) bundled data under sys._MEIPASS; the
        # spec file is expected to bundle the folder as "resources".
        bundle = getattr(sys, "_MEIPASS", None)
        if bundle:
            return cls(Path(bundle) / "resources")
        # A checkout or an editable install: resources/ sits next to the desktop package.
        return cls(Path(desktop.__file__).resolve().parent.parent / "resources")

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def tokenizers(self) -> Path:
        return self.root / "tokenizers"

    @property
    def demo_model(self) -> Path:
        """Marble's own small model (a diffusers folder), trained by installer/demo_model/."""
        return self.root / "demo-model"

    @property
    def demo_control(self) -> Path:
        """The demo model's ControlNet (canny edges; one safetensors file), trained by installer/demo_model/."""
        return self.root / "demo-control" / "demo-control-canny.safetensors"

    @property
    def translations(self) -> Path:
        """The window's strings: `marble_en.ts`, the English source extracted from the code
        (installer/tools/extract_strings.py), and `marble_<language>.qm`, compiled translations."""
        return self.root / "translations"

    @property
    def icons(self) -> Path:
        return self.root / "icons"

    @property
    def app_icon_files(self) -> tuple[Path, ...]:
        """The application icon's PNGs, smallest first; Qt picks the nearest size for each place."""
        return tuple(self.icons / app_icon_name(size) for size in APP_ICON_SIZES)

    def config_folder(self, name: str) -> Path:
        """The diffusers config folder for ``name`` (one of CONFIG_NAMES), for ``config=``.

        Raises ModelError for an unknown name or a folder missing from the installation.
        """
        if name not in CONFIG_NAMES + DIT_CONFIG_NAMES:
            known = ", ".join(CONFIG_NAMES + DIT_CONFIG_NAMES)
            raise ModelError(f"Marble has no model configuration named {name!r}; it knows {known}.")
        folder = self.configs / name
        if not (folder / "model_index.json").is_file():
            raise ModelError(
                f"The model configuration {name!r} is missing from {self.configs}. "
                "Reinstall Marble Studio to restore it."
            )
        return folder

    def tokenizer_folder(self) -> Path:
        """The CLIP tokenizer folder (see TOKENIZER_FOLDER; `pads_with_zero` says which pad a model takes)."""
        folder = self.tokenizers / TOKENIZER_FOLDER
        if not (folder / "vocab.json").is_file():
            raise ModelError(
                f"The CLIP tokenizer files are missing from {folder}. "
                "Reinstall Marble Studio to restore them."
            )
        return folder


def pads_with_zero(family: str, component: str) -> bool:
    """Whether a model's ``component`` tokenizer pads with PAD_ZERO_TOKEN (id 0) instead of <|endoftext|>:
    SD 2.x's text encoder and SDXL's second one are OpenCLIP's, trained with that padding."""
    return component == "tokenizer_2" or family == "sd2"
