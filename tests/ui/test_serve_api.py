"""File ▸ Serve API: the real window (fake backend, history, settings) serving A1111's API on 127.0.0.1,
driven by httpx from other threads while the Qt event loop runs. API jobs go through the window's own
controller, so they show in its queue and history; the server stops with the window."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import desktop
from desktop.app import build_main_window
from desktop.bridge.controller import GenerationController
from desktop.engine.history import HistoryStore
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.runner import JobRunner
from desktop.engine.settings import SettingsStore
from desktop.ui.api_integration import ServeApiIntegration
from desktop.ui.main_window import MainWindow
from tests.support.fake_backend import FakeBackend
from tests.ui.conftest import FAKE_MODEL, FAKE_STEPS, TIMEOUT_MS
from tests.ui.test_settings_and_logs import keep_app_look  # noqa: F401 - autouse: the settings apply a theme

TXT2IMG = {"prompt": "a red fox", "seed": 7, "steps": FAKE_STEPS, "width": 64, "height": 64}


@dataclass
class Served:
    window: MainWindow
    controller: GenerationController
    backend: FakeBackend
    store: HistoryStore
    settings: SettingsStore
    paths: AppPaths
    pool: ThreadPoolExecutor

    @property
    def api(self) -> ServeApiIntegration:
        return self.window.api_integration

    def call(self, method: str, path: str, **kwargs: object) -> Future[httpx.Response]:
        """An HTTP call from another thread: the GUI thread keeps running its event loop meanwhile."""
        url = f"{self.api.url}/sdapi/v1/{path}"
        return self.pool.submit(lambda: httpx.request(method, url, timeout=60, **kwargs))


@pytest.fixture
def served(qtbot, tmp_path: Path) -> Iterator[Served]:
    paths = AppPaths.for_root(tmp_path / "home").ensure()
    (paths.models / f"{FAKE_MODEL}.safetensors").write_bytes(b"")
    store = HistoryStore(paths.history_db, paths.outputs, paths.thumbnails)
    settings = SettingsStore.open(paths.settings_file)
    settings.set("api_port", 0)  # any free port: tests never take 7860
    backend = FakeBackend(steps=FAKE_STEPS)
    writer = ImageWriter(paths.outputs)
    window, controller = build_main_window(
        paths, lambda: JobRunner(backend, writer, desktop.__version__, store), history=store, settings=settings
    )
    pool = ThreadPoolExecutor(4)
    try:
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        qtbot.waitUntil(lambda: window.parameter_panel.selected_model() == FAKE_MODEL, timeout=TIMEOUT_MS)
        yield Served(window, controller, backend, store, settings, paths, pool)
    finally:
        backend.release.set()
        window.api_integration.stop()
        controller.shutdown()
        pool.shutdown(wait=True)
        window.wait_for_background()
        if window.history_panel is not None:
            window.history_panel.model.wait_for_background()
        store.close_all()


def wait(qtbot, future: Future[httpx.Response], timeout_ms: int = 30_000) -> httpx.Response:
    qtbot.waitUntil(future.done, timeout=timeout_ms)
    return future.result()


def turn_on(qtbot, served: Served) -> None:
    served.api.action.trigger()
    assert served.api.action.isChecked() and served.api.serving, served.window.message_bar.text()
    assert served.window.message_bar.text() == f"API serving on {served.api.url}"


def refused(url: str) -> bool:
    try:
        httpx.get(f"{url}/sdapi/v1/options", timeout=5)
    except httpx.ConnectError:
        return True
    return False


def recorder(signal) -> list[object]:  # noqa: ANN001 - a Qt signal
    seen: list[object] = []
    signal.connect(seen.append)
    return seen


def test_an_api_job_runs_in_the_windows_queue_and_lands_in_its_history(qtbot, served: Served) -> None:
    turn_on(qtbot, served)
    assert served.api.url.startswith("http://127.0.0.1:")
    started = recorder(served.controller.job_started)
    submitted = recorder(served.api.jobs.job_submitted)

    response = wait(qtbot, served.call("POST", "txt2img", json=TXT2IMG))

    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1 and base64.b64decode(body["images"][0]).startswith(b"\x89PNG")
    # The window's own controller ran it: its queue saw the job start.
    assert [event.job_id for event in started] == [job.id for job in submitted]
    assert served.backend.generated[0][0].prompt == "a red fox"
    model = served.window.history_panel.model
    qtbot.waitUntil(lambda: model.total == 1, timeout=TIMEOUT_MS)
    assert model.record_at(0).prompt == "a red fox"
    assert served.window.result_paths() == [model.record_at(0).path]


def test_progress_follows_the_api_job_and_interrupt_stops_it(qtbot, served: Served) -> None:
    turn_on(qtbot, served)
    served.backend.block_at_step = 2
    cancelled = recorder(served.controller.job_cancelled)
    pending = served.call("POST", "txt2img", json=TXT2IMG)
    qtbot.waitUntil(lambda: (served.api.jobs.progress()[0] or None) is not None
                    and served.api.jobs.progress()[0].step == 2, timeout=TIMEOUT_MS)

    progress = wait(qtbot, served.call("GET", "progress")).json()
    assert progress["progress"] == pytest.approx(0.5)
    assert progress["state"]["sampling_step"] == 2 and progress["state"]["job_count"] == 1
    assert progress["current_image"]  # the step's preview
    assert wait(qtbot, served.call("POST", "interrupt")).status_code == 200

    response = wait(qtbot, pending)
    assert response.status_code == 200 and response.json()["images"] == []
    assert len(cancelled) == 1
    assert wait(qtbot, served.call("GET", "progress")).json()["state"]["job_count"] == 0


def test_interrupt_stops_the_windows_own_job(qtbot, served: Served) -> None:
    turn_on(qtbot, served)
    served.backend.block_at_step = 1
    job = served.window.generate()
    assert job is not None
    qtbot.waitUntil(served.backend.blocked.is_set, timeout=TIMEOUT_MS)
    qtbot.waitUntil(lambda: served.api.jobs.progress()[0] is not None, timeout=TIMEOUT_MS)
    assert wait(qtbot, served.call("GET", "progress")).json()["current_task"] == job.id

    with qtbot.waitSignal(served.controller.job_cancelled, timeout=TIMEOUT_MS) as blocker:
        assert wait(qtbot, served.call("POST", "interrupt")).status_code == 200
    assert blocker.args[0].job_id == job.id


def test_turning_it_off_frees_the_port_and_a_port_in_use_is_said(qtbot, served: Served) -> None:
    turn_on(qtbot, served)
    url, port = served.api.url, int(served.api.url.rsplit(":", 1)[1])
    assert wait(qtbot, served.pool.submit(lambda: httpx.get(f"{url}/sdapi/v1/options"))).status_code == 200

    served.api.action.trigger()
    assert not served.api.serving and not served.api.action.isChecked()
    assert refused(url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))  # the port is free again
        taken.listen(1)
        served.settings.set("api_port", port)
        served.api.action.trigger()  # now that port is someone else's
        assert not served.api.serving and not served.api.action.isChecked()
        text = served.window.message_bar.text()
        assert f"Cannot serve the API on 127.0.0.1:{port}" in text and "Settings" in text


def test_closing_the_window_while_serving_stops_the_server_and_answers_waiting_clients(
    qtbot, served: Served
) -> None:
    turn_on(qtbot, served)
    url = served.api.url
    served.backend.block_at_step = 1
    pending = served.call("POST", "txt2img", json=TXT2IMG)
    qtbot.waitUntil(served.backend.blocked.is_set, timeout=TIMEOUT_MS)  # the GUI thread must queue it

    served.window.close()

    assert not served.api.serving and refused(url)
    assert wait(qtbot, pending, timeout_ms=10_000).status_code in (200, 503)


def test_the_window_does_not_load_the_web_framework_until_serving(qapp) -> None:
    code = ("import sys; from desktop.app import build_main_window; "
            "print('fastapi' in sys.modules or 'uvicorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(desktop.__file__).parents[1])
    assert out.stdout.strip() == "False", out.stderr
