"""Test-wide settings: offline, offscreen, and the tiny real models every layer tests with."""

from __future__ import annotations

import os

# Before anything imports Qt or the Hugging Face stack: they read these once.
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("MARBLE_HOME", None)
# Tiny models are all overhead: on a 2-core machine, a second torch thread only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.support.aligned_loads import align_safetensors_loads  # noqa: E402

align_safetensors_loads()  # before diffusers and transformers import safe_open by name

from tests.support.fixtures import (  # noqa: E402,F401 - pytest finds fixtures by name
    tiny_sd15_dir,
    tiny_sd15_inpaint_dir,
    tiny_sd15_inpaint_single,
    tiny_sd15_single,
    tiny_sdxl_dir,
    tiny_sdxl_single,
)
