"""The composition root: parse the arguments, build every object once, wire them, show the window.

No business logic lives here; every object is handed its dependencies, so tests build the same window
with another runner factory (`build_main_window`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from PySide6.QtWidgets import QApplication

import desktop
from desktop.bridge.controller import GenerationController
from desktop.bridge.worker import RunnerFactory
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import HOME_ENV, AppPaths
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.ui.main_window import MainWindow, apply_theme

APP_NAME = "Marble Studio"
ORGANIZATION = "Marble"


def diffusers_runner_factory(
    paths: AppPaths,
    resources: Resources,
    catalog: ModelCatalog,
    writer: ImageWriter,
    preview_every: int = 1,
) -> RunnerFactory:
    """A factory the worker calls on the generation thread at the first job: torch is imported there."""

    def build_runner() -> JobRunner:
        from desktop.engine.backends import create_diffusers_backend

        backend = create_diffusers_backend(paths, resources, catalog, preview_every)
        return JobRunner(backend, writer, desktop.__version__)

    return build_runner


def build_main_window(
    paths: AppPaths,
    runner_factory: RunnerFactory,
    catalog: ModelCatalog | None = None,
) -> tuple[MainWindow, GenerationController]:
    """The window and its controller (whose thread is already running). The caller shows the window
    and must call `controller.shutdown()` when done."""
    catalog = catalog if catalog is not None else ModelCatalog(paths.models)
    controller = GenerationController(runner_factory)
    try:
        window = MainWindow(controller, catalog, paths.outputs)
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
    return parser.parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
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

    QApplication.setApplicationName(APP_NAME)
    QApplication.setOrganizationName(ORGANIZATION)
    QApplication.setApplicationVersion(desktop.__version__)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "marble-studio", *qt_args])
    apply_theme(app)

    catalog = ModelCatalog(paths.models)
    factory = diffusers_runner_factory(paths, Resources.default(), catalog, ImageWriter(paths.outputs))
    window, controller = build_main_window(paths, factory, catalog)
    # Cancel the running job and join the generation thread before Qt tears the objects down.
    app.aboutToQuit.connect(controller.shutdown)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
