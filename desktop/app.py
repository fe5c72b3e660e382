"""The composition root: parse the arguments, build every object once, wire them, show the window.

No business logic lives here; every object is handed its dependencies, so tests build the same window
with another runner factory (`build_main_window`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, QThreadPool
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QWidget

import desktop
from desktop.bridge.controller import GenerationController
from desktop.bridge.history_model import HistoryModel
from desktop.bridge.job_log import JobLog
from desktop.bridge.library_tasks import LibraryTasks
from desktop.bridge.single_instance import SingleInstance, instance_name
from desktop.bridge.worker import RunnerFactory
from desktop.engine.app_log import log_file_path, start_log_file
from desktop.engine.edit_inputs import inputs_folder
from desktop.engine.errors import MarbleError
from desktop.engine.history import HistoryStore, explain_database_error
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import demo_model_name, install_demo_control, install_demo_model
from desktop.engine.library.index import Library
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import HOME_ENV, AppPaths
from desktop.engine.provenance import signer_for
from desktop.engine.resources import TOKENIZER_FOLDER, Resources
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SettingsStore
from desktop.engine.styles import StyleStore
from desktop.engine.wildcards import Wildcards
from desktop.ui.api_integration import ServeApiIntegration
from desktop.ui.dialogs.library_dialog import LibraryIntegration
from desktop.ui.dialogs.plot_dialog import PlotIntegration
from desktop.ui.dialogs.png_info_dialog import RecipeIntegration
from desktop.ui.dialogs.upscale_dialog import UpscaleIntegration
from desktop.ui.error_hook import ErrorHook
from desktop.ui.history_panel import HistoryPanel
from desktop.ui.main_window import MainWindow
from desktop.ui.self_test import SelfTest
from desktop.ui.session_memory import SessionMemory
from desktop.ui.settings_integration import SettingsIntegration
from desktop.ui.theme import ThemeManager, apply_theme
from desktop.ui.translation import install_translations, translate

APP_NAME = "Marble Studio"
ORGANIZATION = "Marble"
# The name of resources/marble-studio.desktop (and its StartupWMClass): docks and task bars match our
# windows to that entry by it (Wayland's app id is the desktop file name; X11's WM_CLASS instance is argv[0]).
DESKTOP_FILE_NAME = "marble-studio"


def diffusers_runner_factory(
    paths: AppPaths,
    resources: Resources,
    catalog: ModelCatalog,
    writer: ImageWriter,
    preview_every: int = 1,
    history: HistoryStore | None = None,
    cpu_threads: int = 0,
    tokenizer_folder: str = "",
    prompt_rewriter: str = "",
) -> RunnerFactory:
    """A factory the worker calls on the generation thread at the first job: torch is imported there."""

    def build_runner() -> JobRunner:
        from desktop.engine.backends import create_diffusers_backend

        backend = create_diffusers_backend(paths, resources, catalog, preview_every, cpu_threads, tokenizer_folder,
                                           prompt_rewriter)  # fmt: skip
        return JobRunner(backend, writer, desktop.__version__, history, Wildcards(paths.wildcards))

    return build_runner


def build_main_window(
    paths: AppPaths,
    runner_factory: RunnerFactory,
    catalog: ModelCatalog | None = None,
    history: HistoryStore | None = None,
    settings: SettingsStore | None = None,
) -> tuple[MainWindow, GenerationController]:
    """The window and its controller (whose thread is already running). The caller shows the window
    and must call `controller.shutdown()` when done.

    With a history store, the window gets the history panel, the controller persists its queue, and
    the store is checked against the image folder in the background. With a settings store, the
    window gets Edit > Settings and Help > Open log folder, and the saved settings are applied."""
    catalog = catalog if catalog is not None else ModelCatalog(paths.models)
    controller = GenerationController(runner_factory, history=history)
    try:
        window = MainWindow(
            controller,
            catalog,
            paths.outputs,
            inputs_folder=inputs_folder(paths),
            demo_model=lambda: demo_model_name(Library(paths)),
            chosen_variants=lambda: Library(paths).chosen_variants(),
        )
        _offer_styles(window, paths)
        # Parented to the window, which keeps it alive; tests reach the dialog through this attribute.
        library = Library(paths)
        window.library_integration = LibraryIntegration(window, LibraryTasks(library, window), window.file_menu)
        RecipeIntegration(window, library, window.library_integration.import_dropped)
        # Generate > X/Y/Z plot...; the grids go beside the images, as `marble plot` puts them.
        window.plot_integration = PlotIntegration(window, paths.outputs / "grids", desktop.__version__)
        window.api_integration = ServeApiIntegration(window, controller, library, catalog, inputs_folder(paths),
                                                     settings)
        if history is not None:
            model = HistoryModel(history, QThreadPool(window))
            window.add_history_panel(HistoryPanel(model, controller))
            model.reconcile_in_background()
        # History > Upscale... and Generate > Upscale canvas image...: a queued upscale job.
        window.upscale_integration = UpscaleIntegration(window, library)
        window.job_log = JobLog(controller, window)
        if settings is not None:
            app = QApplication.instance()
            assert isinstance(app, QApplication)
            window.settings_integration = SettingsIntegration(
                window, settings, ThemeManager(app, parent=window), log_folder=paths.logs,
                signing_key_folder=paths.config,
            )
            window.settings_integration.apply_at_start()
            window.session_memory = SessionMemory(window, settings)
            window.session_memory.restore()
            window.settings_integration.restore_window()
    except BaseException:
        # The controller's thread is already running; a QThread destroyed while running aborts the process.
        controller.shutdown()
        raise
    return window, controller


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Our options, and whatever is left for Qt (`-platform offscreen`, `-style fusion`, ...)."""
    parser = argparse.ArgumentParser(
        prog="marble-studio", description="Marble Studio: offline text-to-image."
    )
    parser.add_argument("--home", help=f"keep every file of the app under this folder (or set {HOME_ENV})")
    parser.add_argument("--version", action="version", version=f"{APP_NAME} {desktop.__version__}")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check this installation: open the window, generate one image with the selected model, exit 0 if saved",
    )
    parser.add_argument(
        "--self-test-report", type=Path, metavar="FILE", help="also write the self-test's lines to FILE"
    )
    return parser.parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    started = time.time()
    args, qt_args = parse_args(sys.argv[1:] if argv is None else argv)
    paths = AppPaths.resolve(args.home)
    try:
        paths.ensure()
    except OSError as error:
        print(
            f"marble-studio: cannot create the app folders under {paths.models.parent}: {error}",
            file=sys.stderr,
        )
        return 1
    log_file = start_logging(paths)
    settings = SettingsStore.open(paths.settings_file)
    paths = with_chosen_folders(paths, settings)

    QApplication.setApplicationName(APP_NAME)
    QApplication.setOrganizationName(ORGANIZATION)
    QApplication.setApplicationVersion(desktop.__version__)
    QApplication.setDesktopFileName(DESKTOP_FILE_NAME)
    # Our own name as argv[0], not the launcher's (python, a frozen stub), so X11's WM_CLASS matches the entry.
    app = QApplication.instance() or QApplication([DESKTOP_FILE_NAME, *qt_args])
    instance = SingleInstance(instance_name(paths.models.parent), app)
    if not instance.claim():
        print("marble-studio: Marble Studio is already running with this data folder; its window was brought "
              "forward.", file=sys.stderr)
        return 0
    apply_theme(app, settings.get("theme"))

    resources = Resources.default()
    install_translations(app, resources.translations)  # parented to the app, so they live as long
    app.setWindowIcon(application_icon(resources))
    install_demo(paths, resources)
    window, controller, history = build_app_window(paths, resources, settings)
    # Cancel the running job and join the generation thread before Qt tears the objects down.
    app.aboutToQuit.connect(controller.shutdown)
    instance.activation_requested.connect(lambda: bring_forward(window))
    if args.self_test:
        SelfTest(app, window, started, report=args.self_test_report)
    window.show()
    window.load_token_counter(resources.tokenizers / TOKENIZER_FOLDER / "merges.txt", paths.embeddings)
    error_hook = ErrorHook(window, log_file)
    error_hook.install()
    try:
        code = app.exec()
    finally:
        error_hook.uninstall()
    # A quit right after start can come while background reads (the model scan, the counter's merges,
    # the history check) still run; they finish before the objects they report to go with this frame.
    for pool in window.findChildren(QThreadPool):
        pool.waitForDone(10_000)
    if history is not None:
        history.close_all()
    return code


def bring_forward(window: QWidget) -> None:
    """Show `window` above the others (a later launch asked for it)."""
    window.setWindowState((window.windowState() & ~Qt.WindowState.WindowMinimized) | Qt.WindowState.WindowActive)
    window.show()
    window.raise_()
    window.activateWindow()


def application_icon(resources: Resources) -> QIcon:
    """Every shipped size of the app icon; Qt picks the nearest for the title bar, task bar and dock."""
    icon = QIcon()
    for path in resources.app_icon_files:
        # A missing size only costs sharpness; the window must open regardless.
        if path.is_file():
            icon.addFile(str(path))
    return icon


def _offer_styles(window: MainWindow, paths: AppPaths) -> None:
    try:
        window.prompt_editor.set_styles(StyleStore(paths.styles_file).all())  # a few KB of JSON
    except MarbleError as error:
        # A damaged styles file must not stop the window: the picker stays empty, the log says why.
        logging.getLogger(__name__).warning("styles not loaded: %s", error)


def start_logging(paths: AppPaths) -> Path | None:
    """The rotating log in the logs folder; None (and a line on stderr) when it cannot be written."""
    try:
        start_log_file(paths.logs)
    except OSError as error:
        print(f"marble-studio: no log file: cannot write in {paths.logs}: {error}", file=sys.stderr)
        return None
    logging.getLogger("desktop").info("Marble Studio %s starting, data in %s", desktop.__version__,
                                      paths.models.parent)
    return log_file_path(paths.logs)


def with_chosen_folders(paths: AppPaths, settings: SettingsStore) -> AppPaths:
    """The paths with the output folder the user chose in the settings (empty: the app's own)."""
    chosen = settings.get("output_folder")
    if not chosen:
        return paths
    return dataclasses.replace(paths, outputs=Path(chosen).expanduser())


def build_app_window(
    paths: AppPaths, resources: Resources, settings: SettingsStore | None = None
) -> tuple[MainWindow, GenerationController, HistoryStore | None]:
    """The window as `main` shows it, over the diffusers backend; a history that cannot be opened is
    said in the window's message bar (the window still works, without the history panel)."""
    models_folder = settings.get("models_folder") if settings is not None else ""
    catalog = ModelCatalog(Path(models_folder).expanduser() if models_folder else paths.models)
    history, problem = open_history(paths)
    preview_every = settings.get("preview_every") if settings is not None else 1
    cpu_threads = settings.get("cpu_threads") if settings is not None else 0
    tokenizer_folder = settings.get("tokenizer_folder") if settings is not None else ""
    prompt_rewriter = settings.get("prompt_rewriter") if settings is not None else ""
    writer = ImageWriter(paths.outputs)
    try:
        writer.signer = signer_for(paths.config, bool(settings is not None and settings.get("c2pa")))
    except MarbleError as error:
        # Images are still saved, with their XMP mark; the user learns why they are not signed.
        problem = f"{problem} {error}".strip()
    factory = diffusers_runner_factory(
        paths, resources, catalog, writer, preview_every=preview_every, history=history,
        cpu_threads=cpu_threads, tokenizer_folder=tokenizer_folder, prompt_rewriter=prompt_rewriter,
    )
    window, controller = build_main_window(paths, factory, catalog, history, settings)
    if settings is not None:
        follow_signing_setting(window, writer, paths.config, settings)
    if problem:
        window.message_bar.show_message(problem, "error")
    return window, controller, history


def follow_signing_setting(window: MainWindow, writer: ImageWriter, key_folder: Path, settings: SettingsStore) -> None:
    """The writer signs (or stops) from the next image on when C2PA signing or its key changes."""

    def refresh() -> None:
        try:
            # An attribute swap: the generation thread reads it once per image.
            writer.signer = signer_for(key_folder, bool(settings.get("c2pa")))
        except MarbleError as error:
            writer.signer = None
            window.message_bar.show_message(str(error), "error")

    integration = window.settings_integration
    integration.settings_changed.connect(lambda keys: refresh() if "c2pa" in keys else None)
    integration.signing_key_created.connect(refresh)


def install_demo(paths: AppPaths, resources: Resources) -> None:
    """First start: put the demo model and its ControlNet in the library, so the first Generate works offline."""
    try:
        library = Library(paths)
        install_demo_model(library, resources.demo_model, paths.config)
        install_demo_control(library, resources.demo_control, paths.config)
    except (MarbleError, OSError) as error:
        # Not fatal: the window still says where to put models. The next start tries again.
        print(f"marble-studio: could not install the demo model: {error}", file=sys.stderr)


def open_history(paths: AppPaths) -> tuple[HistoryStore | None, str]:
    """The history store, or None and why; without it the app still runs (images keep their metadata)."""
    try:
        return HistoryStore(paths.history_db, paths.outputs, paths.thumbnails), ""
    except sqlite3.Error as error:
        problem = explain_database_error(paths.history_db, error, paths.outputs)
    except (MarbleError, OSError) as error:
        problem = str(error)
    print(f"marble-studio: The history is unavailable: {problem}", file=sys.stderr)  # the log stays English
    return None, translate("App", "The history is unavailable: {problem}").format(problem=problem)


if __name__ == "__main__":
    sys.exit(main())
