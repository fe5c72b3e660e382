"""User preferences: each setting declared once, and a JSON store in the config folder.

The declarations carry everything a settings dialog needs (title, help, type, range or choices), so
the dialog builds itself from them and a new setting is one more entry in `SETTINGS`. The store never
fails a start: a missing file gives the defaults, a damaged one gives the defaults and a warning, and
a value of the wrong type or out of range is clamped or replaced by its default (with a warning).

Beside the declared settings the file keeps state the user never edits by hand: the last parameters
per model family, what the window held when it closed (the session), and the window's geometry and
layout (Qt's byte blobs, as base64).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.engine.errors import MarbleError, StorageError
from desktop.engine.outputs import write_atomically
from desktop.engine.request import BITSANDBYTES_MEMORY_MODES, DEVICES, MEMORY_MODES
from desktop.engine.safe_files import read_json_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# The kinds a declaration may have; the dialog picks one widget per kind.
CHOICE, INTEGER, BOOLEAN, FOLDER = "choice", "integer", "boolean", "folder"
THEMES = ("dark", "light", "system")


@dataclass(frozen=True)
class Setting:
    """One user preference. `choices` pairs each stored value with the label a user sees."""

    key: str
    title: str
    help: str
    kind: str
    default: Any
    choices: tuple[tuple[str, str], ...] = ()
    minimum: int = 0
    maximum: int = 0
    # Shown by an integer field instead of `minimum` ("Off" for a rate of 0).
    minimum_label: str = ""
    # Shown by an empty folder field: what empty means ("" = the app's own folder).
    empty_label: str = ""

    def coerce(self, value: Any) -> Any:
        """`value` as this setting stores it; raises ValueError with a sentence when it cannot be one."""
        if self.kind == CHOICE:
            if value not in {choice for choice, _ in self.choices}:
                raise ValueError(f"{value!r} is not one of {', '.join(choice for choice, _ in self.choices)}")
            return value
        if self.kind == INTEGER:
            # bool is an int in Python; a JSON true is no number of steps.
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise ValueError(f"{value!r} is not a whole number")
            return min(max(int(value), self.minimum), self.maximum)
        if self.kind == BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"{value!r} is not true or false")
            return value
        if self.kind == FOLDER:
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(f"{value!r} is not a folder path")
            return value.strip()
        raise ValueError(f"unknown kind {self.kind!r}")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "theme", "Theme", "Dark keeps the colours of your images the brightest thing on screen; "
        "Follow the system uses your desktop's light or dark palette.", CHOICE, "dark",
        choices=(("dark", "Dark"), ("light", "Light"), ("system", "Follow the system")),
    ),
    Setting(
        "preview_every", "Live preview", "Show the picture taking shape every N denoising steps "
        "(Off: no previews, a little faster). Takes effect at the next start.", INTEGER, 1,
        minimum=0, maximum=50, minimum_label="Off",
    ),
    Setting(
        "memory_mode", "Memory mode", "The memory mode new jobs start with: Auto picks one for your GPU; "
        "Tiled and Offload use less graphics memory and run slower.", CHOICE, "auto",
        # nf4/int8 too: a job's memory mode chosen in the window is kept as the next start's default.
        choices=tuple((mode, {"nf4": "NF4", "fp8": "fp8"}.get(mode, mode.capitalize()))
                      for mode in MEMORY_MODES + BITSANDBYTES_MEMORY_MODES),
    ),
    Setting(
        "device", "Device", "Where new jobs run: Auto uses the GPU when there is one.", CHOICE, "auto",
        choices=tuple((device, {"auto": "Auto", "cpu": "CPU", "cuda": "CUDA (NVIDIA)", "mps": "Apple GPU"}
                       .get(device, device)) for device in DEVICES),
    ),
    Setting(
        "cpu_threads", "CPU threads", "Threads a job on the CPU uses. Auto: the cores other programs "
        "leave free when the job starts (a busy machine slows a job several-fold when both compete for "
        "every core). Takes effect at the next start.", INTEGER, 0, minimum=0, maximum=256, minimum_label="Auto",
    ),
    Setting(
        "output_folder", "Output folder", "Where new images are saved; empty: the app's own outputs "
        "folder. Takes effect at the next start.", FOLDER, "",
    ),
    Setting(
        "models_folder", "Models folder", "A folder of models to use instead of the app's own; empty: "
        "the app's own models folder. Takes effect at the next start.", FOLDER, "",
    ),
    Setting(
        "tokenizer_folder", "Tokenizer folder", "For a Qwen-Image, Z-Image or Flux.2 file run with a text "
        "encoder from the library: a folder holding the tokenizer to use instead of Marble's own Qwen tokenizer "
        "(tokenizer.json and tokenizer_config.json; the model's diffusers folder serves), and for a Flux.2 dev "
        "Mistral file that carries none, Mistral's; for a Lumina Image 2.0 file run with a Gemma-2 file, Gemma's (it "
        "cannot ship: needed); empty: Marble's own. Takes effect at the next start.",
        FOLDER, "",
    ),
    Setting(
        "prompt_rewriter", "FLUX.3 prompt rewriter", "The folder of FLUX.3's prompt rewriter "
        "(flux-3-image-klein-pup: its weights, tokenizer and system_prompts.json), which Rewrite prompt runs to "
        "expand a short prompt into the detailed caption FLUX.3 is trained on; empty: none. Takes effect at the "
        "next start.", FOLDER, "", empty_label="(none)",
    ),
    # The window serves on 127.0.0.1 only: listening beyond this machine needs authentication, which
    # `marble serve --listen --api-auth` offers (docs/api.md).
    Setting(
        "api_port", "API port", "The port File ▸ Serve API listens on, on this machine only "
        "(127.0.0.1). Any free port: one is picked each time.", INTEGER, 7860,
        minimum=0, maximum=65535, minimum_label="Any free port",
    ),
    # Off by default: a signature needs the user's own key, made on purpose ("Create signing key"
    # turns this on). Every image is marked AI-generated in its XMP either way.
    Setting(
        "c2pa", "C2PA signing", "Sign every new image with a C2PA manifest (Content Credentials) naming Marble "
        "and the model, with your own key (Create signing key, below).", BOOLEAN, False,
    ),
)


class SettingsStore:
    """The settings file: read once, changed in memory, written whole and atomically by `save`.

    `problems` lists, as sentences, what was wrong with the file when it was read (the app shows them).
    """

    def __init__(self, path: Path, declarations: Sequence[Setting] = SETTINGS) -> None:
        self._path = path
        self._declarations = {setting.key: setting for setting in declarations}
        self._values: dict[str, Any] = {key: setting.default for key, setting in self._declarations.items()}
        self._last_parameters: dict[str, dict[str, Any]] = {}
        self._session: dict[str, Any] = {}
        self._window_state: dict[str, str] = {}
        self.problems: list[str] = []

    @property
    def path(self) -> Path:
        return self._path

    @property
    def declarations(self) -> tuple[Setting, ...]:
        return tuple(self._declarations.values())

    @classmethod
    def open(cls, path: Path, declarations: Sequence[Setting] = SETTINGS) -> SettingsStore:
        store = cls(path, declarations)
        store.load()
        return store

    def load(self) -> None:
        """Read the file; whatever cannot be used is replaced by defaults and said in `problems`."""
        self.problems = []
        try:
            data = read_json_file(self._path, label=f"the settings file {self._path}", missing_ok=True,
                                  error=MarbleError)
        except MarbleError as error:
            self._problem(f"{error} Using the default settings; the file is replaced at the next save.")
            return
        if data is None:
            return
        if not isinstance(data, dict):
            self._problem(f"The settings file {self._path} is not a settings object. Using the default settings.")
            return
        values = data.get("settings", {})
        if isinstance(values, dict):
            for key, value in values.items():
                if key in self._declarations:
                    self._set_loaded(key, value)
        last = data.get("last_parameters", {})
        if isinstance(last, dict):
            self._last_parameters = {str(k): dict(v) for k, v in last.items() if isinstance(v, dict)}
        session = data.get("session", {})
        if isinstance(session, dict):
            self._session = session
        state = data.get("window_state", {})
        if isinstance(state, dict):
            self._window_state = {str(k): v for k, v in state.items() if isinstance(v, str)}

    def _set_loaded(self, key: str, value: Any) -> None:
        setting = self._declarations[key]
        try:
            coerced = setting.coerce(value)
        except ValueError as error:
            self._problem(f"Setting {setting.title!r} in {self._path}: {error}; using {setting.default!r}.")
            return
        if coerced != value:
            self._problem(f"Setting {setting.title!r} in {self._path}: {value!r} is out of range; using {coerced!r}.")
        self._values[key] = coerced

    def _problem(self, text: str) -> None:
        log.warning("%s", text)
        self.problems.append(text)

    # ------------------------------------------------------------------------------ the settings

    def get(self, key: str) -> Any:
        return self._values[key]

    def values(self) -> dict[str, Any]:
        return dict(self._values)

    def set(self, key: str, value: Any) -> Any:
        """Change one setting in memory (raises ValueError for a value it cannot hold); the stored value."""
        if key not in self._declarations:
            raise KeyError(f"no setting named {key!r}")
        self._values[key] = self._declarations[key].coerce(value)
        return self._values[key]

    def update(self, values: Mapping[str, Any]) -> list[str]:
        """Change several settings; the keys whose value changed."""
        changed = []
        for key, value in values.items():
            before = self._values.get(key)
            if self.set(key, value) != before:
                changed.append(key)
        return changed

    def defaults(self) -> dict[str, Any]:
        return {key: setting.default for key, setting in self._declarations.items()}

    # --------------------------------------------------------------------- state the user never edits

    def last_parameters(self, family: str) -> dict[str, Any]:
        return dict(self._last_parameters.get(family, {}))

    def set_last_parameters(self, family: str, parameters: Mapping[str, Any]) -> None:
        """Remember a model family's parameters (JSON values only: checked now, not at save time)."""
        json.dumps(dict(parameters))
        self._last_parameters[family] = dict(parameters)

    def session(self) -> dict[str, Any]:
        """What the window held when it last closed (prompts, parameters, canvas); checked by its reader."""
        return dict(self._session)

    def set_session(self, session: Mapping[str, Any]) -> None:
        """Remember the window's contents (JSON values only: checked now, not at save time)."""
        json.dumps(dict(session))
        self._session = dict(session)

    def save_window_state(self, state: Mapping[str, bytes]) -> None:
        """Qt's geometry and layout blobs by name ("geometry", "state", "splitter.main", ...)."""
        self._window_state = {name: base64.b64encode(bytes(blob)).decode("ascii") for name, blob in state.items()}

    def window_state(self) -> dict[str, bytes]:
        """The saved blobs; a damaged entry is left out (Qt then keeps its default layout)."""
        state = {}
        for name, text in self._window_state.items():
            try:
                state[name] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                log.warning("window state %r in %s is not base64; ignored", name, self._path)
        return state

    # ---------------------------------------------------------------------------------- saving

    def save(self) -> None:
        """Write the whole file atomically; raises StorageError with a sentence when it cannot."""
        document = {
            "schema_version": SCHEMA_VERSION,
            "settings": self._values,
            "last_parameters": self._last_parameters,
            "session": self._session,
            "window_state": self._window_state,
        }
        text = json.dumps(document, indent=2, sort_keys=True).encode("utf-8")
        try:
            write_atomically(self._path, lambda stream: stream.write(text))  # type: ignore[attr-defined]
        except StorageError as error:
            raise StorageError(f"Could not save the settings: {error}") from error


def saved_tokenizer_folder(settings_file: Path) -> str:
    """The window's Tokenizer folder setting, read by the command line and `marble serve` too, so they run
    the library-encoder models the window runs without --tokenizer-folder (the flag, kept in the request,
    still wins over it)."""
    return str(SettingsStore.open(settings_file).get("tokenizer_folder") or "")


def saved_prompt_rewriter(settings_file: Path, chosen: str | None = None) -> str:
    """`chosen` (--prompt-rewriter's folder) when given, else the window's FLUX.3 prompt rewriter setting."""
    if chosen:
        return str(Path(chosen).expanduser().resolve())
    return str(SettingsStore.open(settings_file).get("prompt_rewriter") or "")
