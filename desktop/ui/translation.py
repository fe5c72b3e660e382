"""The window speaks the user's language when a translation is shipped for it.

Every string a user reads goes through Qt's translation functions (`self.tr(...)` in a QObject,
`translate(CONTEXT, ...)` elsewhere, `QT_TRANSLATE_NOOP` for tables of constants), so Qt's `lupdate`
extracts them (installer/tools/extract_strings.py writes the English source,
resources/translations/marble_en.ts). A translator turns that file into `marble_<language>.ts`,
`lrelease` compiles it to `.qm`, and this module loads it at start, with Qt's own strings (the
buttons of standard dialogs) for the same language.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QLibraryInfo, QLocale, QTranslator

log = logging.getLogger(__name__)

APP_CATALOGUE = "marble"


def translate(context: str, text: str) -> str:
    """`text` in the user's language (itself when there is no translation); `lupdate` finds these calls."""
    return QCoreApplication.translate(context, text)


def install_translations(app: QCoreApplication, folder: Path, locale: QLocale | None = None) -> list[QTranslator]:
    """Load Marble's and Qt's translations for `locale` (the system's by default); the translators
    installed, kept by the caller (a translator must outlive its use). English needs none."""
    locale = locale or QLocale.system()
    installed = []
    qt_folder = QLibraryInfo.path(QLibraryInfo.LibraryPath.TranslationsPath)
    for name, where in ((APP_CATALOGUE, str(folder)), ("qtbase", qt_folder)):
        translator = QTranslator(app)
        # Qt tries the locale's UI languages in order (fr_CA, fr, ...) and the `_`-joined forms.
        if translator.load(locale, name, "_", where):
            app.installTranslator(translator)
            installed.append(translator)
            log.info("translation loaded: %s", translator.filePath())
    return installed
