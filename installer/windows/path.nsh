; The user's PATH (HKCU\Environment "Path"): add or remove one folder, leaving every other entry as it was.
;
; NSIS strings hold at most NSIS_MAX_STRLEN (1024) characters. ReadRegStr fails on a longer value and
; returns "", and a careless script would then write "<our folder>" over the whole PATH. So a value
; that exists but cannot be read whole, or a result that would not fit, is never written: the
; installer says so and the user edits PATH by hand.

!include LogicLib.nsh
!include WinMessages.nsh

; The longest string NSIS holds whole; a PATH read or built at this length may have been cut short.
!define /math MARBLE_PATH_MAX ${NSIS_MAX_STRLEN} - 1

Var PathIn      ; the list being split (consumed)
Var PathDir     ; the folder to add or drop
Var PathOut     ; the list without PathDir
Var PathFound   ; 1 if PathDir was in the list
Var PathState   ; "absent", "ok" or "unreadable"
Var PathSeg
Var PathChar
Var PathPos
Var PathKept
Var PathOrig

!macro MARBLE_PATH_FUNCTIONS un

; Reads the user's PATH into $PathIn and says in $PathState whether it may be rewritten.
Function ${un}MarbleReadUserPath
  StrCpy $PathIn ""
  ClearErrors
  ReadRegStr $PathIn HKCU "Environment" "Path"
  ${IfNot} ${Errors}
    StrLen $PathPos $PathIn
    ${If} $PathPos >= ${MARBLE_PATH_MAX}
      StrCpy $PathState "unreadable"
    ${Else}
      StrCpy $PathState "ok"
    ${EndIf}
    Return
  ${EndIf}
  ; ReadRegStr failed: tell a missing value from one too long (or of an odd type) to read.
  StrCpy $PathState "absent"
  StrCpy $PathPos 0
  ${Do}
    ClearErrors
    EnumRegValue $PathSeg HKCU "Environment" $PathPos
    ${If} ${Errors}
    ${OrIf} $PathSeg == ""
      ${Break}
    ${EndIf}
    ${If} $PathSeg == "Path"
      StrCpy $PathState "unreadable"
      ${Break}
    ${EndIf}
    IntOp $PathPos $PathPos + 1
  ${Loop}
FunctionEnd

; Splits $PathIn at ";" into $PathOut without any entry equal to $PathDir (with or without a
; trailing backslash; StrCmp ignores case, as Windows does). Empty entries are kept as they were.
Function ${un}MarbleDropFromList
  StrCpy $PathOut ""
  StrCpy $PathFound 0
  StrCpy $PathKept 0
  ${Do}
    StrCpy $PathPos 0
    ${Do}
      StrCpy $PathChar $PathIn 1 $PathPos
      ${If} $PathChar == ""
      ${OrIf} $PathChar == ";"
        ${Break}
      ${EndIf}
      IntOp $PathPos $PathPos + 1
    ${Loop}
    ${If} $PathPos > 0
      StrCpy $PathSeg $PathIn $PathPos
    ${Else}
      StrCpy $PathSeg ""
    ${EndIf}
    IntOp $PathPos $PathPos + 1
    StrCpy $PathIn $PathIn "" $PathPos
    ${If} $PathSeg == $PathDir
    ${OrIf} $PathSeg == "$PathDir\"
      StrCpy $PathFound 1
    ${Else}
      ${If} $PathKept > 0
        StrCpy $PathOut "$PathOut;$PathSeg"
      ${Else}
        StrCpy $PathOut $PathSeg
      ${EndIf}
      IntOp $PathKept $PathKept + 1
    ${EndIf}
  ${LoopUntil} $PathChar != ";"
FunctionEnd

; Removes $PathDir from the user's PATH, if it is there and PATH can be edited safely.
Function ${un}MarbleRemoveFromUserPath
  Call ${un}MarbleReadUserPath
  ${If} $PathState == "absent"
    Return
  ${EndIf}
  ${If} $PathState == "unreadable"
    DetailPrint "Your PATH is too long to edit safely here: remove $PathDir from it by hand."
    Return
  ${EndIf}
  Call ${un}MarbleDropFromList
  ${If} $PathFound == 1
    ${If} $PathKept == 0
      DeleteRegValue HKCU "Environment" "Path"
    ${Else}
      WriteRegExpandStr HKCU "Environment" "Path" $PathOut
    ${EndIf}
    DetailPrint "Removed $PathDir from your PATH."
    ; Terminals started from now on (by Explorer) see the change without signing out.
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
  ${EndIf}
FunctionEnd

!macroend

; Only the installer adds: appends $PathDir unless it is there already.
Function MarbleAddToUserPath
  Call MarbleReadUserPath
  ${If} $PathState == "unreadable"
    MessageBox MB_OK|MB_ICONINFORMATION "Your PATH is too long to edit safely here. To use marble in a terminal, add $PathDir to it by hand." /SD IDOK
    Return
  ${EndIf}
  ${If} $PathState == "absent"
  ${OrIf} $PathIn == ""
    StrCpy $PathOut $PathDir
  ${Else}
    StrCpy $PathOrig $PathIn
    Call MarbleDropFromList
    ${If} $PathFound == 1
      Return
    ${EndIf}
    StrCpy $PathChar $PathOrig 1 -1
    ${If} $PathChar == ";"
      StrCpy $PathOut "$PathOrig$PathDir"
    ${Else}
      StrCpy $PathOut "$PathOrig;$PathDir"
    ${EndIf}
    StrLen $PathPos $PathOut
    ${If} $PathPos >= ${MARBLE_PATH_MAX}
      MessageBox MB_OK|MB_ICONINFORMATION "Your PATH is too long to edit safely here. To use marble in a terminal, add $PathDir to it by hand." /SD IDOK
      Return
    ${EndIf}
  ${EndIf}
  WriteRegExpandStr HKCU "Environment" "Path" $PathOut
  DetailPrint "Added $PathDir to your PATH."
  SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=5000
FunctionEnd
