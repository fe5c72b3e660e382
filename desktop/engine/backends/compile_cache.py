"""Fast mode's compiled code kept in Marble's cache folder, so it is compiled once, not on every start.

torch.compile's expensive part is inductor generating and building kernels (61-240 s for the first
fast-mode job on an H100). Inductor can keep what it built on disk -- the FX graph cache (generated
code per graph), the AOTAutograd cache (the traced forward around it) and, on CUDA, Triton's compiled
kernels and inductor's autotuning results -- and a later process that traces the same graph finds them
there. By default those live in the system's temporary folder (cleaned at reboot, shared by every
program). This module points them at `AppPaths.compile_cache` before the first compile of the process,
so a fast-mode job after restarting the app skips the kernel building; dynamo's tracing still runs.

Imported by the diffusers backend only, on the generation thread; torch is imported inside functions.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Read by inductor (every cache lookup) and by Triton; the environment is the only switch both honour.
INDUCTOR_DIR_ENV = "TORCHINDUCTOR_CACHE_DIR"
TRITON_DIR_ENV = "TRITON_CACHE_DIR"


@dataclass(frozen=True)
class CompileCacheDirs:
    inductor: Path
    triton: Path


def cache_dirs(root: Path) -> CompileCacheDirs:
    """Where each cache goes under Marble's `compile_cache` folder."""
    return CompileCacheDirs(inductor=root / "inductor", triton=root / "triton")


def use_compile_cache(root: Path, environ: MutableMapping[str, str] | None = None) -> CompileCacheDirs:
    """Point torch.compile's on-disk caches at `root` and switch them on, for this process.

    Call it before the process compiles anything (the backend does, when fast mode loads a model):
    inductor reads the folder from the environment on every lookup, so later compiles use it too.
    """
    environ = os.environ if environ is None else environ
    dirs = cache_dirs(root)
    dirs.inductor.mkdir(parents=True, exist_ok=True)
    dirs.triton.mkdir(parents=True, exist_ok=True)
    environ[INDUCTOR_DIR_ENV] = str(dirs.inductor)
    environ[TRITON_DIR_ENV] = str(dirs.triton)
    import torch._functorch.config as functorch_config  # noqa: PLC0415 - loaded only for fast mode
    import torch._inductor.config as inductor_config  # noqa: PLC0415

    # Both default to on in torch 2.x; set here so an environment that turned them off cannot make
    # every start compile from scratch without anyone noticing.
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    functorch_config.enable_autograd_cache = True
    return dirs


def cache_hits() -> int:
    """Compiled graphs this process took from the on-disk cache instead of compiling (for logs and tests)."""
    from torch._dynamo.utils import counters  # noqa: PLC0415

    return int(counters["inductor"]["fxgraph_cache_hit"])
