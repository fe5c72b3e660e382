"""The frozen app's entry script: both executables (`marble`, `marble-studio`) are built from it."""

import sys

from desktop.launch import frozen_main

if __name__ == "__main__":
    sys.exit(frozen_main())
