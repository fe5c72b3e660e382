"""File ▸ Serve API: the A1111-compatible HTTP API over the window's own queue, library and history.

API jobs join the window's queue (they show in the queue and history panels like the user's own).
The window serves on 127.0.0.1 only: listening beyond this machine needs authentication, which
`marble serve --listen --api-auth` offers. The web framework is imported when serving starts, never
at the window's start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PySide6.QtCore import QCoreApplication, QEvent, QObject, Slot
from PySide6.QtGui import QAction

import desktop
from desktop.api.convert import ApiLimits, ApiOptions
from desktop.bridge.api_jobs import ControllerJobs
from desktop.bridge.controller import GenerationController
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.index import Library
from desktop.engine.settings import SettingsStore

if TYPE_CHECKING:
    from desktop.ui.main_window import MainWindow

log = logging.getLogger(__name__)

API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 7860
# Closing the window waits at most this long for the server's thread (a client mid-upload, say).
STOP_TIMEOUT_S = 5.0


class _Server(Protocol):
    def start(self) -> int: ...

    def stop(self, timeout: float = ...) -> bool: ...


class ServeApiIntegration(QObject):
    """The checkable Serve API action and the server behind it; stopped when the window closes.

    Signals: none; it reports in the window's message bar.
    """

    def __init__(
        self,
        window: MainWindow,
        controller: GenerationController,
        library: Library,
        catalog: ModelCatalog,
        inputs_folder: Path,
        settings: SettingsStore | None = None,
    ) -> None:
        super().__init__(window)
        self._window = window
        self._controller = controller
        self._library = library
        self._catalog = catalog
        self._inputs_folder = inputs_folder
        self._settings = settings
        self.jobs: ControllerJobs | None = None
        self._server: _Server | None = None
        self.url = ""
        self.action = QAction(self.tr("Serve &API"), window, objectName="serve_api_action", checkable=True)
        self.action.setToolTip(
            self.tr("Answer A1111's HTTP API on this machine (127.0.0.1); its jobs join this queue."))
        self.action.toggled.connect(self._on_toggled)
        menu = window.file_menu
        # Before the separator above Quit.
        actions = menu.actions()
        anchor = actions[-2] if len(actions) >= 2 and actions[-2].isSeparator() else None
        menu.insertAction(anchor, self.action)
        window.installEventFilter(self)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def port(self) -> int:
        return int(self._settings.get("api_port")) if self._settings is not None else DEFAULT_API_PORT

    @Slot(bool)
    def _on_toggled(self, on: bool) -> None:
        if on:
            self.start()
        else:
            self.stop()

    def start(self) -> bool:
        """Serve on 127.0.0.1 at the settings' port; a port in use is said, and the action unchecked."""
        if self._server is not None:
            return True
        from desktop.api.server import BackgroundServer, ServerConfig, build_app

        port = self.port()
        jobs = ControllerJobs(self._controller, self._library, self._catalog,
                              ApiOptions(sd_model_checkpoint=self._window.parameter_panel.selected_model() or ""),
                              ApiLimits(), self)
        app = build_app(jobs, self._inputs_folder, desktop.__version__, ServerConfig(API_HOST, port))
        server = BackgroundServer(app, API_HOST, port)
        try:
            port = server.start()
        except OSError as error:
            jobs.close()
            jobs.deleteLater()
            reason = error.strerror or str(error)
            self._window.message_bar.show_message(
                self.tr("Cannot serve the API on {host}:{port}: {reason}. Another program (or another Marble) "
                        "may use that port: choose another API port in Settings.").format(
                    host=API_HOST, port=port, reason=reason), "error")
            self._set_checked(False)
            return False
        self.jobs, self._server = jobs, server
        self.url = f"http://{API_HOST}:{port}"
        log.info("API serving on %s", self.url)
        self._window.message_bar.show_message(self.tr("API serving on {url}").format(url=self.url), "info")
        self._set_checked(True)
        return True

    @Slot()
    def stop(self) -> None:
        """Answer waiting clients, stop the server (never waiting more than a few seconds), free the port.
        Jobs already queued stay in the window's queue and finish as the user's own."""
        if self._server is None:
            return
        jobs, server = self.jobs, self._server
        self.jobs, self._server = None, None
        if jobs is not None:
            jobs.close()
        if not server.stop(STOP_TIMEOUT_S):
            log.warning("the API server did not stop within %s s", STOP_TIMEOUT_S)
        if jobs is not None:
            jobs.deleteLater()  # after the server: no HTTP thread calls it any more
        log.info("API stopped")
        self._set_checked(False)
        if self._window.isVisible():
            self._window.message_bar.show_message(self.tr("API stopped."), "info")

    def _set_checked(self, on: bool) -> None:
        blocked = self.action.blockSignals(True)
        self.action.setChecked(on)
        self.action.blockSignals(blocked)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self._window and event.type() == QEvent.Type.Close:
            self.stop()
        return super().eventFilter(watched, event)
