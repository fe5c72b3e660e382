"""Where Marble keeps its files: one object, built once by the composition root."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "MarbleStudio"
APP_AUTHOR = "Marble"
HOME_ENV = "MARBLE_HOME"


@dataclass(frozen=True)
class AppPaths:
    """Every location the app reads or writes. Nothing computes a path at import time."""

    models: Path
    loras: Path
    outputs: Path
    cache: Path
    logs: Path
    config: Path

    @property
    def settings_file(self) -> Path:
        return self.config / "settings.json"

    @property
    def history_db(self) -> Path:
        """The history database, beside the models in the user's data folder (not in the cache:
        it is the only record of favourites, trash and queued jobs, and must survive a cache clean)."""
        return self.models.parent / "history" / "history.db"

    @property
    def thumbnails(self) -> Path:
        """History thumbnails: made again from the images whenever they are missing."""
        return self.cache / "thumbnails"

    @property
    def library_index(self) -> Path:
        """The model/LoRA/embedding library index, in the data folder beside the files it describes."""
        return self.models.parent / "library.json"

    @property
    def embeddings(self) -> Path:
        """Textual-inversion embeddings, used by name in prompts."""
        return self.models.parent / "embeddings"

    @property
    def vaes(self) -> Path:
        """VAEs chosen per job by library name (A1111's "SD VAE"), beside the models."""
        return self.models.parent / "vae"

    @property
    def text_encoders(self) -> Path:
        """Text encoders (CLIP-L, CLIP-G, T5) shared by transformer-only models, each stored once."""
        return self.models.parent / "text_encoders"

    @property
    def styles_file(self) -> Path:
        """Saved prompt styles (names with prompt and negative pieces), in the data folder."""
        return self.models.parent / "styles.json"

    @property
    def wildcards(self) -> Path:
        """Wildcard lists: `__name__` in a prompt picks a line of `wildcards/name.txt`."""
        return self.models.parent / "wildcards"

    @property
    def controls(self) -> Path:
        """Control models (ControlNet, Control-LoRA, T2I-Adapter) chosen per control unit by library name."""
        return self.models.parent / "controlnet"

    @property
    def upscalers(self) -> Path:
        """Upscaler models (ESRGAN family) for the hires fix and `marble upscale`, beside the models."""
        return self.models.parent / "upscalers"

    @property
    def converted_models(self) -> Path:
        """Key maps of converted single-file checkpoints (configs, and where each converted tensor lies in the
        file), reused on later loads."""
        return self.cache / "converted"

    @property
    def compile_cache(self) -> Path:
        """Fast mode's compiled kernels (torch.compile's inductor and Triton caches), reused after a restart."""
        return self.cache / "compile_cache"

    @property
    def preview_tables(self) -> Path:
        """Preview colour tables fitted from autoencoders that have no published one, by the weights' fingerprint."""
        return self.cache / "preview_tables"

    @classmethod
    def for_root(cls, root: Path | str) -> AppPaths:
        """Everything under one folder: portable installs, `--home`, tests."""
        root = Path(root).expanduser().resolve()
        return cls(
            models=root / "models",
            loras=root / "loras",
            outputs=root / "outputs",
            cache=root / "cache",
            logs=root / "logs",
            config=root / "config",
        )

    @classmethod
    def for_user(cls) -> AppPaths:
        """The platform's per-user folders (XDG on Linux, AppData on Windows)."""
        import platformdirs

        dirs = platformdirs.PlatformDirs(APP_NAME, APP_AUTHOR)
        data = Path(dirs.user_data_dir)
        return cls(
            models=data / "models",
            loras=data / "loras",
            outputs=Path(platformdirs.user_pictures_dir()) / APP_NAME,
            cache=Path(dirs.user_cache_dir),
            logs=Path(dirs.user_log_dir),
            config=Path(dirs.user_config_dir),
        )

    @classmethod
    def resolve(cls, home: Path | str | None, environ: Mapping[str, str] | None = None) -> AppPaths:
        """`--home` wins, then MARBLE_HOME, then the platform folders."""
        environ = os.environ if environ is None else environ
        chosen = home or environ.get(HOME_ENV)
        return cls.for_root(chosen) if chosen else cls.for_user()

    def ensure(self) -> AppPaths:
        for folder in (self.models, self.loras, self.outputs, self.cache, self.logs, self.config):
            folder.mkdir(parents=True, exist_ok=True)
        return self
