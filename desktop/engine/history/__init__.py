"""The history: a SQLite record of every image and job, in step with the image folder."""

from desktop.engine.history.files import export_image, make_thumbnail, save_unsaved
from desktop.engine.history.store import (
    HistoryQuery,
    HistoryStore,
    ImageRecord,
    JobRecord,
    NewImage,
    ReconcileReport,
    explain_database_error,
)

__all__ = [
    "HistoryQuery",
    "HistoryStore",
    "ImageRecord",
    "JobRecord",
    "NewImage",
    "ReconcileReport",
    "explain_database_error",
    "export_image",
    "make_thumbnail",
    "save_unsaved",
]
