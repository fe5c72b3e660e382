; One further part of Marble Studio's payload (part PART_NUMBER of PART_COUNT): a silent installer that
; the setup (marble.nsi) runs with /S /MARBLEBUILD=<version>-<variant> /D=<its install folder>, after it
; has installed part 1 there. Started any other way it only says which file to run instead.
; Exit codes: 0 installed, 2 not started by the matching setup, 3 no Marble Studio in the folder.

!ifndef PART_NUMBER
  !error "Build this script with: python -m installer.windows.nsis --help"
!endif
!include "common.nsh"

!include LogicLib.nsh
!include FileFunc.nsh

Name "${APP_NAME} ${VERSION} part ${PART_NUMBER}"
Icon "${MARBLE_ICON}"
SilentInstall silent
VIAddVersionKey /LANG=1033 "FileDescription" "${APP_NAME} ${VERSION} (${VARIANT}), part ${PART_NUMBER} of ${PART_COUNT}: run ${SETUP_NAME}"

Function .onInit
  ${GetOptions} $CMDLINE "/MARBLEBUILD=" $0
  ${If} ${Errors}
  ${OrIf} $0 != "${BUILD_ID}"
    ; Double-clicked (or run by another version's setup): say so, even though parts are silent.
    SetSilent normal
    MessageBox MB_OK|MB_ICONINFORMATION "This file is part ${PART_NUMBER} of ${PART_COUNT} of the ${APP_NAME} ${VERSION} installer.$\r$\n$\r$\nKeep it in the same folder as ${SETUP_NAME} and run that file instead." /SD IDOK
    SetErrorLevel 2
    Abort
  ${EndIf}
  ${IfNot} ${FileExists} "$INSTDIR\marble-studio.exe"
    SetErrorLevel 3
    Abort
  ${EndIf}
FunctionEnd

Section
  SetOutPath "$INSTDIR"
  !include "${FILES_NSH}"
SectionEnd
