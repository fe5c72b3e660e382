from desktop.engine.backends.memory import attempts, choose_mode, lower_mode

GB = 2**30


def test_auto_picks_by_size_and_free_memory():
    assert choose_mode("auto", "cuda", 1024, 1024, device_bytes=20 * GB, model_bytes=5 * GB) == "full"
    assert choose_mode("auto", "cuda", 1536, 1536, device_bytes=20 * GB, model_bytes=5 * GB) == "tiled"
    assert choose_mode("auto", "cuda", 512, 512, device_bytes=6 * GB, model_bytes=5 * GB) == "offload"
    assert choose_mode("auto", "cpu", 512, 512) == "full"
    assert choose_mode("auto", "cpu", 2048, 1024) == "tiled"


def test_forced_modes_are_kept_where_the_device_supports_them():
    assert choose_mode("full", "cuda", 2048, 2048) == "full"
    assert choose_mode("offload", "cuda", 512, 512) == "offload"
    assert choose_mode("offload", "cpu", 512, 512) == "tiled"  # offload moves weights to a GPU: none here


def test_the_ladder_goes_down_once_per_step():
    assert lower_mode("full", "cuda") == "tiled"
    assert lower_mode("tiled", "cuda") == "offload"
    assert lower_mode("offload", "cuda") is None
    assert lower_mode("full", "cpu") == "tiled"
    assert lower_mode("tiled", "mps") is None


def test_a_job_tries_its_mode_then_one_lower_mode_saying_why():
    assert [attempt.mode for attempt in attempts("full", "cuda")] == ["full", "tiled"]
    assert [attempt.mode for attempt in attempts("tiled", "cuda")] == ["tiled", "offload"]
    assert [attempt.mode for attempt in attempts("tiled", "cpu")] == ["tiled"]
    first, retry = attempts("full", "cpu")
    assert first.reason == ""
    assert retry.reason.startswith("Ran out of memory with everything on the device; retried with VAE tiling")
