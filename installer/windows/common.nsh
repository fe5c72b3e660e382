; Settings shared by the setup (marble.nsi) and its parts (part.nsi).
; Both are compiled by installer/windows/nsis.py, which passes the -D defines checked here.

!ifndef VERSION | VI_VERSION | VARIANT | PART_COUNT | SETUP_NAME | OUTFILE | FILES_NSH
  !error "Build this script with: python -m installer.windows.nsis --help"
!endif

; Marble is a 64-bit program only, so the installer is one too (and wine64 alone runs it in tests).
Unicode true
Target amd64-unicode
ManifestDPIAware true
; Per user, without administrator rights: nothing here writes outside the user's own folders and HKCU.
RequestExecutionLevel user
; One solid LZMA stream compresses the many small Python files far better than one stream per file.
SetCompressor /SOLID lzma
SetCompressorDictSize 64

!define APP_NAME "Marble Studio"
!define APP_ID "MarbleStudio"
!define PUBLISHER "Marble"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\${APP_ID}"
!define DEFAULT_DIR "$LOCALAPPDATA\Programs\${APP_NAME}"
; The setup and its parts agree on this build before a part installs anything.
!define BUILD_ID "${VERSION}-${VARIANT}"
!define PART_PREFIX "${APP_ID}-${VERSION}-windows-${VARIANT}-part"

!ifndef MARBLE_ICON
  ; Placeholder until the app's own icon is in the frozen folder.
  !define MARBLE_ICON "${NSISDIR}\Contrib\Graphics\Icons\modern-install.ico"
!endif

OutFile "${OUTFILE}"
InstallDir "${DEFAULT_DIR}"

VIProductVersion "${VI_VERSION}"
VIFileVersion "${VI_VERSION}"
VIAddVersionKey /LANG=1033 "ProductName" "${APP_NAME}"
VIAddVersionKey /LANG=1033 "ProductVersion" "${VERSION}"
VIAddVersionKey /LANG=1033 "FileVersion" "${VERSION}"
VIAddVersionKey /LANG=1033 "CompanyName" "${PUBLISHER}"
VIAddVersionKey /LANG=1033 "LegalCopyright" "Apache License 2.0"
