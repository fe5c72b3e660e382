; Marble Studio's Windows setup: per user, no administrator rights.
;
; Compiled by installer/windows/nsis.py (python -m installer.windows.nsis --help), which writes the
; File lines of this setup's share of the payload (FILES_NSH) and the program's top-level entries
; (TOPLEVEL_NSH). A payload above one NSIS data block (2 GB: a CUDA build) comes in parts: this setup
; carries part 1 and runs parts 2..PART_COUNT, small silent installers of their own, from its folder.
;
; Command line: /S silent, /D=<folder> (last, unquoted), /ADDTOPATH=1|0 (put marble on the user's PATH;
; default: as the previous install chose, else yes).
; Exit codes: 0 installed, 1 cancelled, 2 failed (a part missing or failing, files in use).
;
; User data (models, LoRAs, history, settings under %LOCALAPPDATA%\Marble\MarbleStudio, images under
; Pictures\MarbleStudio) is never touched: an upgrade and the uninstaller remove only the program's
; own entries in the install folder, listed in TOPLEVEL_NSH.

!ifndef TOPLEVEL_NSH | SIZE_KB
  !error "Build this script with: python -m installer.windows.nsis --help"
!endif
!include "common.nsh"

!include MUI2.nsh
!include LogicLib.nsh
!include FileFunc.nsh
!include Sections.nsh
!include "path.nsh"

Name "${APP_NAME} ${VERSION}"
InstallDirRegKey HKCU "${UNINST_KEY}" "InstallLocation"
VIAddVersionKey /LANG=1033 "FileDescription" "${APP_NAME} ${VERSION} setup (${VARIANT})"

!define MUI_ICON "${MARBLE_ICON}"
!define MUI_UNICON "${MARBLE_ICON}"
!define MUI_ABORTWARNING
!define MUI_FINISHPAGE_RUN "$INSTDIR\marble-studio.exe"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP_NAME}"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

!insertmacro MARBLE_PATH_FUNCTIONS ""
!insertmacro MARBLE_PATH_FUNCTIONS "un."

Var PreviousDir
!if ${PART_COUNT} > 1
  Var PartNumber
  Var PartExit
!endif


Section "${APP_NAME}" SecApp
  SectionIn RO
  ; Moving to another folder: the old copy's own uninstaller removes its program files (never user data).
  ${If} $PreviousDir != ""
  ${AndIf} $PreviousDir != $INSTDIR
  ${AndIf} ${FileExists} "$PreviousDir\uninstall.exe"
    DetailPrint "Removing the previous version from $PreviousDir"
    ExecWait '"$PreviousDir\uninstall.exe" /S _?=$PreviousDir'
    Delete "$PreviousDir\uninstall.exe"
    RMDir "$PreviousDir"
  ${EndIf}

  ; Replace the program files: an older version's libraries must not linger beside the new ones.
  !include "${TOPLEVEL_NSH}"
  ${If} ${FileExists} "$INSTDIR\_internal\*.*"
  ${OrIf} ${FileExists} "$INSTDIR\marble-studio.exe"
  ${OrIf} ${FileExists} "$INSTDIR\marble.exe"
    MessageBox MB_OK|MB_ICONSTOP "The previous version's files in $INSTDIR could not be removed. Close ${APP_NAME} (and any marble command) and run setup again." /SD IDOK
    SetErrorLevel 2
    Abort
  ${EndIf}

  SetOutPath "$INSTDIR"
  !include "${FILES_NSH}"

!if ${PART_COUNT} > 1
  StrCpy $PartNumber 2
  ${Do}
    DetailPrint "Installing part $PartNumber of ${PART_COUNT}"
    ClearErrors
    ExecWait '"$EXEDIR\${PART_PREFIX}$PartNumber.exe" /S /MARBLEBUILD=${BUILD_ID} /D=$INSTDIR' $PartExit
    ${If} ${Errors}
    ${OrIf} $PartExit != 0
      MessageBox MB_OK|MB_ICONSTOP "${PART_PREFIX}$PartNumber.exe failed (exit code $PartExit). ${APP_NAME} is not completely installed: run setup again." /SD IDOK
      SetErrorLevel 2
      Abort
    ${EndIf}
    IntOp $PartNumber $PartNumber + 1
  ${LoopUntil} $PartNumber > ${PART_COUNT}
!endif

  SetOutPath "$INSTDIR"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  CreateShortCut "$SMPROGRAMS\${APP_NAME}.lnk" "$INSTDIR\marble-studio.exe" "" "$INSTDIR\marble-studio.exe" 0 \
    SW_SHOWNORMAL "" "Generate images from text, offline"

  WriteRegStr HKCU "${UNINST_KEY}" "DisplayName" "${APP_NAME}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINST_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\marble-studio.exe,0"
  WriteRegStr HKCU "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegStr HKCU "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINST_KEY}" "MarbleVariant" "${VARIANT}"
  WriteRegDWORD HKCU "${UNINST_KEY}" "EstimatedSize" ${SIZE_KB}
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoRepair" 1
SectionEnd

; Checked by default: the command line is half of Marble, and the folder holds only Marble's own
; programs (its DLLs live in _internal), so it shadows nothing else on PATH.
Section "Add marble to PATH (command line)" SecPath
  StrCpy $PathDir "$INSTDIR"
  Call MarbleAddToUserPath
  WriteRegDWORD HKCU "${UNINST_KEY}" "MarbleAddToPath" 1
SectionEnd

; Unchecked on an upgrade: take back the entry an earlier install made.
Section "-PathCleanup"
  ${IfNot} ${SectionIsSelected} ${SecPath}
    StrCpy $PathDir "$INSTDIR"
    Call MarbleRemoveFromUserPath
    WriteRegDWORD HKCU "${UNINST_KEY}" "MarbleAddToPath" 0
  ${EndIf}
SectionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} "The Marble Studio window and the marble command line."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecPath} "Lets you type marble in any new terminal. Changes only your own PATH."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

; After the sections: it names ${SecPath}.
Function .onInit
  SetShellVarContext current
  ReadRegStr $PreviousDir HKCU "${UNINST_KEY}" "InstallLocation"
  ; Keep the previous install's PATH choice unless told otherwise.
  ReadRegDWORD $0 HKCU "${UNINST_KEY}" "MarbleAddToPath"
  ${If} $0 == "0"
    !insertmacro UnselectSection ${SecPath}
  ${EndIf}
  ${GetOptions} $CMDLINE "/ADDTOPATH=" $0
  ${IfNot} ${Errors}
    ${If} $0 == "0"
      !insertmacro UnselectSection ${SecPath}
    ${Else}
      !insertmacro SelectSection ${SecPath}
    ${EndIf}
  ${EndIf}
!if ${PART_COUNT} > 1
  ; Every part must be here before anything is installed: a half-installed program is worse than none.
  StrCpy $PartNumber 2
  ${Do}
    ${IfNot} ${FileExists} "$EXEDIR\${PART_PREFIX}$PartNumber.exe"
      MessageBox MB_OK|MB_ICONSTOP "${APP_NAME} setup needs ${PART_PREFIX}$PartNumber.exe in $EXEDIR.$\r$\n$\r$\nDownload all ${PART_COUNT} files of this release (${SETUP_NAME} and its parts 2 to ${PART_COUNT}) into one folder and run setup again." /SD IDOK
      SetErrorLevel 2
      Abort
    ${EndIf}
    IntOp $PartNumber $PartNumber + 1
  ${LoopUntil} $PartNumber > ${PART_COUNT}
!endif
FunctionEnd

Function un.onInit
  SetShellVarContext current
FunctionEnd

; Removes the program and its traces; models, LoRAs, history, settings and images stay where they are.
Section "Uninstall"
  Delete "$SMPROGRAMS\${APP_NAME}.lnk"
  StrCpy $PathDir "$INSTDIR"
  Call un.MarbleRemoveFromUserPath
  !include "${TOPLEVEL_NSH}"
  Delete "$INSTDIR\uninstall.exe"
  ; Only if empty: whatever a user put in the folder stays.
  RMDir "$INSTDIR"
  ; The key may already describe a newer install in another folder.
  ReadRegStr $0 HKCU "${UNINST_KEY}" "InstallLocation"
  ${If} $0 == "$INSTDIR"
    DeleteRegKey HKCU "${UNINST_KEY}"
  ${EndIf}
SectionEnd
