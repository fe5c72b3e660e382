"""One window per data folder: a second `marble-studio` on the same home brings the first window forward.

Two windows over one history would each see the other's queued jobs as interrupted work and offer to
run them again, so the first launch claims a local socket named after its data folder and a later
launch on the same folder only asks it to show itself, then exits. Another `--home` is another
instance. The command line (`marble`) is not affected: it shares the history safely through SQLite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

_ACTIVATE = b"activate\n"
_CONNECT_MS = 500


def instance_name(data_folder: Path) -> str:
    """The socket's name for `data_folder`: short (Unix socket paths are limited) and per user folder."""
    digest = hashlib.sha256(str(data_folder.resolve()).encode("utf-8")).hexdigest()[:16]
    return f"marble-studio-{digest}"


class SingleInstance(QObject):
    """Claims `name` for this process, or hands over to the process that holds it.

    Signals:
        activation_requested(): a later launch on the same data folder asked this one to come forward.
    """

    activation_requested = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._name = name
        self._server: QLocalServer | None = None

    def claim(self) -> bool:
        """True if this process is now the instance; False if another one holds the name (and was asked
        to come forward)."""
        socket = QLocalSocket()
        socket.connectToServer(self._name)
        if socket.waitForConnected(_CONNECT_MS):
            socket.write(_ACTIVATE)
            socket.waitForBytesWritten(_CONNECT_MS)
            socket.disconnectFromServer()
            return False
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        # Qt replaces a socket file left by a killed instance (tests/ui/test_single_instance.py checks it).
        if not server.listen(self._name):
            return True  # no socket to be had: run anyway rather than refuse to start
        server.newConnection.connect(self._on_new_connection)
        self._server = server
        return True

    def close(self) -> None:
        """Give the name up (the app does so by exiting)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    @Slot()
    def _on_new_connection(self) -> None:
        assert self._server is not None
        while (socket := self._server.nextPendingConnection()) is not None:
            # The other launch writes its one line as soon as it connects; a brief wait here is all it costs.
            if socket.bytesAvailable() or socket.waitForReadyRead(_CONNECT_MS):
                if bytes(socket.readAll().data()).startswith(_ACTIVATE.strip()):
                    self.activation_requested.emit()
            socket.disconnectFromServer()
            socket.deleteLater()
