"""Compile once (issue 29): fast mode's compiled kernels are kept in Marble's cache folder. That a new process
takes them from there is checked in tests/engine/test_fast_mode.py, whose first test compiles cold."""

from __future__ import annotations

from desktop.engine.backends.compile_cache import INDUCTOR_DIR_ENV, TRITON_DIR_ENV, cache_dirs, use_compile_cache
from desktop.engine.paths import AppPaths


def test_cache_folders_are_in_marbles_cache_and_set_for_the_process(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home")
    environ: dict[str, str] = {}
    dirs = use_compile_cache(paths.compile_cache, environ)
    assert paths.compile_cache == paths.cache / "compile_cache"
    assert environ == {INDUCTOR_DIR_ENV: str(dirs.inductor), TRITON_DIR_ENV: str(dirs.triton)}
    assert dirs == cache_dirs(paths.compile_cache) and dirs.inductor.is_dir() and dirs.triton.is_dir()
