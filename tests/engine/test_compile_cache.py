"""Compile once (issue 29): fast mode's compiled kernels are kept in Marble's cache folder, and a new
process -- the app after a restart -- takes them from there instead of compiling again.

Checked by inductor's own cache-hit counter and the cache's files, never by time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from desktop.engine.backends.compile_cache import INDUCTOR_DIR_ENV, TRITON_DIR_ENV, cache_dirs, use_compile_cache
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for, run

REPO = Path(__file__).resolve().parents[2]

# One fast-mode job in a fresh process, as the app runs it after a start; prints what inductor counted.
CHILD = """
import json, sys
import numpy as np
from torch._dynamo.utils import counters
from desktop.engine.jobs import CancelToken
from desktop.engine.paths import AppPaths
from tests.engine.test_diffusers_backend import make_backend, pixels, request_for

home, model, out = sys.argv[1:4]
backend = make_backend(AppPaths.for_root(home).ensure())
request = request_for(model, fast_mode=True)
backend.load(request)
batch = backend.generate(request, 0, lambda step: None, CancelToken())
np.save(out, pixels(batch.images[0]))
print(json.dumps({"hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def fast_job_in_child(home: Path, model: Path, out: Path) -> dict[str, int]:
    env = {key: value for key, value in os.environ.items() if key not in (INDUCTOR_DIR_ENV, TRITON_DIR_ENV)}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(home), str(model), str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


def test_cache_folders_are_in_marbles_cache_and_set_for_the_process(tmp_path):
    paths = AppPaths.for_root(tmp_path / "home")
    environ: dict[str, str] = {}
    dirs = use_compile_cache(paths.compile_cache, environ)
    assert paths.compile_cache == paths.cache / "compile_cache"
    assert environ == {INDUCTOR_DIR_ENV: str(dirs.inductor), TRITON_DIR_ENV: str(dirs.triton)}
    assert dirs == cache_dirs(paths.compile_cache) and dirs.inductor.is_dir() and dirs.triton.is_dir()


@pytest.mark.slow
def test_a_second_process_reuses_the_compiled_unet(tmp_path, tiny_sd15_dir):
    home = tmp_path / "home"
    inductor = cache_dirs(AppPaths.for_root(home).compile_cache).inductor

    first = fast_job_in_child(home, tiny_sd15_dir, tmp_path / "first.npy")
    cached = files_under(inductor)
    assert first["misses"] >= 1 and first["hits"] == 0, first
    assert any(path.suffix == ".py" for path in cached), sorted(cached)[:10]  # inductor's generated code

    second = fast_job_in_child(home, tiny_sd15_dir, tmp_path / "second.npy")
    assert second["hits"] >= 1 and second["misses"] == 0, second  # nothing compiled again
    # The cached kernels compute what freshly built ones did: the same pixels.
    assert np.array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))

    # And what eager computes, within fp32 noise through an 8-bit picture (fused kernels round differently).
    eager, _ = run(make_backend(AppPaths.for_root(tmp_path / "eager").ensure()), request_for(tiny_sd15_dir))
    difference = np.abs(np.load(tmp_path / "second.npy").astype(int) - pixels(eager.images[0]).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.1, (difference.max(), difference.mean())
