"""The history: a SQLite record of every image and job, in step with the image folder."""

from desktop.engine.history.database import explain_database_error
from desktop.engine.history.files import export_image, make_thumbnail, save_unsaved
from desktop.engine.history.records import HistoryQuery, ImageRecord, JobRecord, NewImage, ReconcileReport
from desktop.engine.history.store import HistoryStore

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
