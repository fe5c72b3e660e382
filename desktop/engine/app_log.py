"""The app's log file: a few rotating files in the logs folder, set up by the composition root.

Nothing here runs at import time: `start_log_file` is called once by `desktop.app.main` (tests call it
with a temporary folder and stop it after), so importing the package never opens a file.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

LOG_FILE_NAME = "marble-studio.log"
# A few megabytes keep weeks of jobs; three old files are enough to see what led to a problem.
MAX_LOG_BYTES = 2 * 1024 * 1024
BACKUP_COUNT = 3
_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def start_log_file(folder: Path, level: int = logging.INFO) -> logging.Handler:
    """Send the `desktop` loggers (INFO and up) to `folder`/marble-studio.log; returns the handler so
    the caller can stop it (`stop_log_file`). Raises OSError when the folder cannot be written."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        folder / LOG_FILE_NAME, maxBytes=MAX_LOG_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8", delay=False
    )
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(level)
    logger = logging.getLogger("desktop")
    logger.addHandler(handler)
    # The package logger decides what reaches the file; the root logger's level (WARNING) stays as it is.
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return handler


def stop_log_file(handler: logging.Handler) -> None:
    logging.getLogger("desktop").removeHandler(handler)
    handler.close()


def log_file_path(folder: Path) -> Path:
    return folder / LOG_FILE_NAME
