"""The Windows installer: an NSIS script (marble.nsi, part.nsi) and the build step that feeds it (nsis.py)."""
