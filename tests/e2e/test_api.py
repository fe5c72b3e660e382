"""`marble serve`, run as a user runs it (a child process on 127.0.0.1, an ephemeral port), driven by a
real HTTP client (httpx) and by the maintained A1111 client library `webuiapi`. Every picture is
compared pixel for pixel with the same request made by `marble generate`."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from desktop.engine.history.store import HistoryStore
from tests.e2e.test_cli import in_process
from tests.support.aligned_loads import file_alignment

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red fox in a spacesuit"


class Server:
    """`marble serve` in a child process; stderr (the log) goes to a file the tests can read."""

    def __init__(self, home: Path, *extra: str) -> None:
        self.home = home
        self.log = home.parent / f"{home.name}-serve.log"
        env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "desktop.cli", "serve", "--port", "0", "--home", str(home), *extra],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
        )
        line = self.process.stdout.readline()
        assert "Marble API on http://" in line, (line, self.log.read_text())
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=300)

    def post(self, path: str, payload: object, **kwargs) -> httpx.Response:
        return self.client.post(f"/sdapi/v1/{path}", json=payload, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.get(f"/sdapi/v1/{path}", **kwargs)

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)


def make_home(root: Path, models: dict[str, Path]) -> Path:
    home = root / "home"
    for name, folder in models.items():
        shutil.copytree(folder, home / "models" / name)
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd15_dir, tiny_sdxl_dir):
    home = make_home(tmp_path_factory.mktemp("api"), {"tiny-sd15": tiny_sd15_dir, "tiny-sdxl": tiny_sdxl_dir})
    running = Server(home, "--model", "tiny-sd15")
    yield running
    assert running.stop() == 0, running.log.read_text()


@pytest.fixture(autouse=True)
def _first_model(request):
    """Tests switch models: each starts on tiny-sd15."""
    if "server" in request.fixturenames:
        server = request.getfixturevalue("server")
        assert server.post("options", {"sd_model_checkpoint": "tiny-sd15"}).status_code == 200


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def generate(home: Path, out: Path, model: str, *extra: str) -> Image.Image:
    # As the server's process loads them (tests/support/aligned_loads.py moves only this process's tensors).
    with file_alignment():
        code, _out, err = in_process(["generate", "--home", str(home), "--model", model, "--prompt", PROMPT,
                                      "--negative", "blurry", "--seed", "42", "--out", str(out), *extra])
    assert code == 0, err
    return Image.open(out)


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def history_count(home: Path) -> int:
    store = HistoryStore(home / "history" / "history.db", home / "outputs", home / "cache" / "thumbnails")
    try:
        return store.count()
    finally:
        store.close_all()


TXT2IMG = {"prompt": PROMPT, "negative_prompt": "blurry", "seed": 42, "steps": 3, "cfg_scale": 7.5,
           "sampler_name": "DPM++ 2M", "scheduler": "Karras", "width": 64, "height": 64}
CLI_TXT2IMG = ("--steps", "3", "--cfg", "7.5", "--sampler", "DPM++ 2M Karras", "--width", "64", "--height", "64")


# ------------------------------------------------------------------------------------ generation


def test_txt2img_over_http_is_the_image_marble_generate_makes(server, tmp_path):
    before = history_count(server.home)
    response = server.post("txt2img", {**TXT2IMG, "n_iter": 2, "some_future_field": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    images = [decode(b64) for b64 in body["images"]]
    assert len(images) == 2
    # A1111's shapes: `info` is a JSON string, `parameters` the request; each PNG carries `parameters`.
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43] and info["seed"] == 42 and info["sd_model_name"] == "tiny-sd15"
    assert body["parameters"]["prompt"] == PROMPT
    assert images[0].info["parameters"] == info["infotexts"][0]
    assert "Seed: 42" in info["infotexts"][0] and "Model: tiny-sd15" in info["infotexts"][0]
    # Every image made through the API is in the history, recorded by the server itself (counted before
    # `marble generate` runs: its start would index unrecorded files in the outputs folder).
    assert history_count(server.home) == before + 2
    assert same_pixels(images[0], generate(server.home, tmp_path / "cli.png", "tiny-sd15", *CLI_TXT2IMG))
    assert same_pixels(images[1], generate(server.home, tmp_path / "cli43.png", "tiny-sd15", *CLI_TXT2IMG,
                                           "--seed", "43"))
    assert history_count(server.home) == before + 4  # and the two CLI images
    # Unknown fields are ignored, with a warning in the log, as A1111 does.
    assert "ignored unknown field 'some_future_field'" in server.log.read_text()


def test_webuiapi_txt2img_img2img_inpainting_and_png_info(server, tmp_path):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)
    made = api.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=42, cfg_scale=7.5, width=64, height=64)
    cli_args = ("--steps", "3", "--cfg", "7.5", "--sampler", "Euler a", "--width", "64", "--height", "64")
    assert same_pixels(made.image, generate(server.home, tmp_path / "t.png", "tiny-sd15", *cli_args))

    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    edited = api.img2img(images=[Image.open(source)], prompt=PROMPT, negative_prompt="blurry", seed=42,
                         cfg_scale=7.5, width=64, height=64, denoising_strength=0.6, steps=4)
    cli_edit = ("--steps", "4", "--cfg", "7.5", "--sampler", "Euler a", "--init-image", str(source),
                "--strength", "0.6")
    assert same_pixels(edited.image, generate(server.home, tmp_path / "i.png", "tiny-sd15", *cli_edit))

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    inpainted = api.img2img(images=[Image.open(source)], mask_image=mask, inpainting_fill=1, inpaint_full_res=False,
                            mask_blur=4, prompt=PROMPT, negative_prompt="blurry", seed=42, cfg_scale=7.5,
                            width=64, height=64, denoising_strength=0.6, steps=4)
    expected = generate(server.home, tmp_path / "m.png", "tiny-sd15", *cli_edit, "--mask", str(tmp_path / "mask.png"))
    assert same_pixels(inpainted.image, expected)
    assert not same_pixels(inpainted.image, edited.image)
    # Pixels far from the mask are the source's own.
    assert np.array_equal(np.asarray(inpainted.image.convert("RGB"))[:4], np.asarray(Image.open(source))[:4])

    info = api.png_info(made.image)
    assert info.info == made.image.info["parameters"]
    assert info.json["parameters"]["Seed"] == "42"


def test_options_switch_the_model_and_override_settings_switch_one_request(server, tmp_path):
    assert server.get("options").json()["sd_model_checkpoint"] == "tiny-sd15"
    assert server.post("options", {"sd_model_checkpoint": "tiny-sdxl"}).status_code == 200
    assert server.get("options").json()["sd_model_checkpoint"] == "tiny-sdxl"
    body = server.post("txt2img", TXT2IMG).json()
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sdxl"
    assert same_pixels(decode(body["images"][0]), generate(server.home, tmp_path / "x.png", "tiny-sdxl", *CLI_TXT2IMG))
    # One request on another model leaves the setting alone.
    body = server.post("txt2img", {**TXT2IMG, "override_settings": {"sd_model_checkpoint": "tiny-sd15"}}).json()
    assert json.loads(body["info"])["sd_model_name"] == "tiny-sd15"
    assert server.get("options").json()["sd_model_checkpoint"] == "tiny-sdxl"
    titles = {m["model_name"] for m in server.get("sd-models").json()}
    assert titles == {"tiny-sd15", "tiny-sdxl"}


def test_progress_shows_a_preview_and_interrupt_keeps_the_images_made(server):
    before = history_count(server.home)
    result: dict[str, httpx.Response] = {}
    slow = {**TXT2IMG, "steps": 150, "n_iter": 3, "sampler_name": "Euler", "scheduler": "automatic"}
    worker = threading.Thread(target=lambda: result.setdefault("r", server.post("txt2img", slow)))
    worker.start()
    preview = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and worker.is_alive():
        progress = server.get("progress").json()
        if progress["current_image"] and preview is None:
            preview = decode(progress["current_image"])
            assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
        if progress["state"]["job_no"] >= 1:  # the first image is saved; the second is under way
            break
        time.sleep(0.05)
    assert preview is not None and preview.format == "PNG"
    assert server.post("interrupt", {}).status_code == 200
    worker.join(240)
    body = result["r"].json()
    assert result["r"].status_code == 200 and 1 <= len(body["images"]) < 3
    assert history_count(server.home) == before + len(body["images"])
    assert server.get("progress").json()["progress"] == 0


def test_lists_and_docs_work_offline(server):
    assert "Euler a" in {s["name"] for s in server.get("samplers").json()}
    assert {s["name"] for s in server.get("schedulers").json()} == {"automatic", "karras"}
    assert server.get("loras").json() == [] and server.get("embeddings").json()["loaded"] == {}
    assert server.post("refresh-checkpoints", {}).status_code == 200
    assert server.get("memory").json()["ram"]["total"] > 0
    assert {"Lanczos", "Nearest"} <= {u["name"] for u in server.get("upscalers").json()}
    assert {"Latent", "Latent (bicubic antialiased)"} <= {m["name"] for m in server.get("latent-upscale-modes").json()}
    assert server.get("sd-vae").json() == []
    schema = server.client.get("/openapi.json").json()
    assert "/sdapi/v1/txt2img" in schema["paths"] and "/sdapi/v1/img2img" in schema["paths"]
    page = server.client.get("/docs").text
    assert "/sdapi/v1/txt2img" in page and "<script" not in page


# --------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("name", ["../tiny-sd15", "/etc/passwd", "C:\\models\\x", "tiny\x00sd15", "..%2Ftiny-sd15",
                                  "%2e%2e%2fetc", "models/tiny-sd15", "~/x"])
def test_model_names_are_names_never_paths(server, name):
    response = server.post("options", {"sd_model_checkpoint": name})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    response = server.post("txt2img", {**TXT2IMG, "override_settings": {"sd_model_checkpoint": name}})
    assert response.status_code == 422
    assert server.get("options").json()["sd_model_checkpoint"] == "tiny-sd15"


def test_an_unknown_model_is_404(server):
    assert server.post("options", {"sd_model_checkpoint": "no-such-model"}).status_code == 404


@pytest.mark.parametrize(("change", "field"), [
    ({"steps": 0}, "steps"), ({"cfg_scale": 99}, "cfg_scale"), ({"width": 65}, "width"),
    ({"height": 99999}, "height"), ({"sampler_name": "Nope"}, "sampler_name"), ({"seed": 2**70}, "seed"),
    ({"restore_faces": True}, "restore_faces"), ({"hr_checkpoint_name": "other"}, "hr_checkpoint_name"),
    ({"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, "alwayson_scripts"),
    ({"alwayson_scripts": {"ADetailer": {"args": [{"ad_model": "face"}]}}}, "alwayson_scripts"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 40}}, "override_settings"),
])
def test_out_of_range_and_unsupported_fields_are_422_naming_the_field(server, change, field):
    response = server.post("txt2img", {**TXT2IMG, **change})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][1] == field


@pytest.mark.parametrize(("change", "field", "name"), [
    ({"prompt": "a fox <lora:no-such-lora:0.8>"}, ["prompt"], "no-such-lora"),
    ({"override_settings": {"sd_vae": "no-such-vae.safetensors"}}, ["override_settings", "sd_vae"],
     "no-such-vae.safetensors"),
    ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, ["hr_upscaler"], "R-ESRGAN 4x+"),
    ({"alwayson_scripts": {"controlnet": {"args": [{"module": "depth_zoe", "model": "edges",
                                                    "image": base64.b64encode(b"x").decode()}]}}},
     ["alwayson_scripts", "controlnet", "args", "0", "module"], "depth_zoe"),
])
def test_unknown_lora_vae_upscaler_and_module_names_are_422_naming_field_and_name(server, change, field, name):
    response = server.post("txt2img", {**TXT2IMG, **change})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", *field] and repr(name) in detail["msg"]
    # The VAE setting itself refuses an unknown name, and keeps the one it had.
    if "override_settings" in change:
        assert server.post("options", change["override_settings"]).status_code == 422
        assert server.get("options").json()["sd_vae"] == "Automatic"


def test_batch_limits_are_429(server):
    assert server.post("txt2img", {**TXT2IMG, "batch_size": 9}).status_code == 429
    assert server.post("txt2img", {**TXT2IMG, "batch_size": 4, "n_iter": 5}).status_code == 429


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge picture (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


def test_image_limits(server):
    bomb = base64.b64encode(png_declaring(5000, 5000)).decode()
    response = server.post("img2img", {**TXT2IMG, "init_images": [bomb]})
    assert response.status_code == 413 and "5000x5000" in response.text
    huge = base64.b64encode(png_declaring(20000, 20000)).decode()
    assert server.post("png-info", {"image": huge}).status_code in (413, 422)
    not_image = base64.b64encode(b"#!/bin/sh\nrm -rf /\n").decode()
    response = server.post("img2img", {**TXT2IMG, "init_images": [not_image]})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "init_images"]


@pytest.fixture(scope="module")
def strict(tmp_path_factory, tiny_sd15_dir):
    home = make_home(tmp_path_factory.mktemp("strict"), {"tiny-sd15": tiny_sd15_dir})
    running = Server(home, "--model", "tiny-sd15", "--max-body-mb", "0.01", "--max-queue", "1",
                     "--api-auth", "ada:s3cret", "--cors-allow-origins", "http://allowed.example")
    yield running
    running.stop()


def test_body_size_queue_length_auth_and_cors_on_a_strict_server(strict):
    auth = ("ada", "s3cret")
    assert strict.get("options").status_code == 401
    assert strict.get("options", auth=("ada", "wrong")).status_code == 401
    assert strict.client.get("/docs").status_code == 401
    assert strict.get("options", auth=auth).status_code == 200
    big = {**TXT2IMG, "prompt": "x" * 20_000}
    assert strict.post("txt2img", big, auth=auth).status_code == 413
    # Chunked, with no Content-Length: counted as it arrives.
    chunks = (part.encode() for part in [json.dumps(big)[i:i + 1000] for i in range(0, 20_100, 1000)])
    response = strict.client.post("/sdapi/v1/txt2img", content=chunks, auth=auth,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413
    # CORS: the allowed origin gets its header, another none.
    allowed = strict.get("options", auth=auth, headers={"origin": "http://allowed.example"})
    assert allowed.headers.get("access-control-allow-origin") == "http://allowed.example"
    other = strict.get("options", auth=auth, headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # Queue of one: while a slow job runs, the next request is refused with 429.
    slow = threading.Thread(target=lambda: strict.post("txt2img", {**TXT2IMG, "steps": 150}, auth=auth))
    slow.start()
    deadline = time.monotonic() + 120
    while (strict.get("progress", auth=auth).json()["state"]["job_count"] == 0 and time.monotonic() < deadline
           and slow.is_alive()):
        time.sleep(0.05)
    assert strict.post("txt2img", TXT2IMG, auth=auth).status_code == 429
    strict.post("interrupt", {}, auth=auth)
    slow.join(120)
    # A maintained client with credentials works.
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=strict.port, username="ada", password="s3cret")
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd15"


def test_cors_is_off_by_default(server):
    response = server.get("options", headers={"origin": "http://allowed.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = server.client.options("/sdapi/v1/txt2img", headers={
        "origin": "http://allowed.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize("flags", [["--listen"], ["--host", "0.0.0.0"], ["--listen", "--api-auth", "nopassword"]])
def test_listening_beyond_this_machine_needs_auth(tmp_path, flags):
    # A child process with a timeout: a server that started instead of refusing fails the test, not hangs it.
    result = subprocess.run([sys.executable, "-m", "desktop.cli", "serve", "--home", str(tmp_path), "--port", "0",
                             *flags], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "api-auth" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_during_a_job_keeps_the_images_made(tmp_path, tiny_sd15_dir):
    running = Server(make_home(tmp_path, {"tiny-sd15": tiny_sd15_dir}), "--model", "tiny-sd15")
    result: dict[str, httpx.Response] = {}
    slow = {**TXT2IMG, "steps": 150, "n_iter": 3}
    worker = threading.Thread(target=lambda: result.setdefault("r", running.post("txt2img", slow)))
    worker.start()
    deadline = time.monotonic() + 240
    while running.get("progress").json()["state"]["job_no"] < 1 and time.monotonic() < deadline and worker.is_alive():
        time.sleep(0.05)
    running.process.send_signal(signal.SIGINT)
    worker.join(120)
    assert running.process.wait(60) == 0
    with contextlib.suppress(Exception):
        running.client.close()
    made = history_count(running.home)
    assert 1 <= made < 3
    assert len(list((running.home / "outputs").rglob("*.png"))) == made


def test_the_command_line_loads_no_web_framework_until_it_serves():
    code = ("import sys, desktop.cli; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'pydantic', 'torch') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


# ---------------------------------------------------------------------------------- hires fix, ControlNet


def test_hires_fix_over_http_is_the_image_marble_generate_makes(server, tmp_path):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 4,
             "denoising_strength": 0.5, "hr_prompt": "", "hr_negative_prompt": "", "hr_sampler_name": None}
    body = server.post("txt2img", {**TXT2IMG, **hires}).json()
    image, info = decode(body["images"][0]), json.loads(body["info"])
    assert image.size == (96, 96)
    # A1111's info: the second pass's strength, the hires keys in extra_generation_params and the infotext.
    assert info["denoising_strength"] == 0.5 and (info["width"], info["height"]) == (64, 64)
    assert info["extra_generation_params"] == {"Hires upscale": 1.5, "Hires steps": 4, "Hires upscaler": "Latent"}
    assert "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 4, Hires upscaler: Latent" in info["infotexts"][0]
    cli = generate(server.home, tmp_path / "h.png", "tiny-sd15", *CLI_TXT2IMG, "--hires-scale", "1.5",
                   "--hires-steps", "4", "--hires-denoise", "0.5", "--hires-upscaler", "Latent")
    assert same_pixels(image, cli)
    resized = server.post("txt2img", {**TXT2IMG, **hires, "hr_resize_x": 128, "hr_resize_y": 0}).json()
    assert decode(resized["images"][0]).size == (128, 128)


def test_a_variation_seed_over_http_is_the_image_marble_generate_makes(server, tmp_path):
    # Refused with 422 before, though Marble makes variations: strength 1 is the variation seed's picture.
    varied = {"subseed": 7, "subseed_strength": 0.4, "seed_resize_from_w": 96, "seed_resize_from_h": 96}
    body = server.post("txt2img", {**TXT2IMG, **varied}).json()
    image, info = decode(body["images"][0]), json.loads(body["info"])
    assert (info["subseed"], info["subseed_strength"], info["seed_resize_from_w"]) == (7, 0.4, 96)
    assert "Variation seed: 7, Variation seed strength: 0.4" in info["infotexts"][0]
    cli = generate(server.home, tmp_path / "v.png", "tiny-sd15", *CLI_TXT2IMG, "--subseed", "7",
                   "--subseed-strength", "0.4", "--seed-resize-from", "96x96")
    assert same_pixels(image, cli)
    whole = server.post("txt2img", {**TXT2IMG, "subseed": 7, "subseed_strength": 1.0}).json()
    assert same_pixels(decode(whole["images"][0]), generate(server.home, tmp_path / "s7.png", "tiny-sd15",
                                                            *CLI_TXT2IMG, "--seed", "7"))  # fmt: skip


def square_image(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "black")
    image.paste((255, 255, 255), (16, 16, 48, 48))
    image.save(path)
    return path


@pytest.mark.slow
def test_a_controlnet_unit_over_http_is_the_image_marble_generate_makes(server, tmp_path):
    from tests.support import tiny_controls, tiny_models

    controlnet = tiny_controls.build_tiny_controlnet(tiny_models.build_tiny_sd15().unet, seed=3)
    (server.home / "controlnet").mkdir(exist_ok=True)
    tiny_controls.save_controlnet(controlnet, server.home / "controlnet" / "edges.safetensors", "ldm")
    # What the extension's clients probe first.
    assert server.client.get("/controlnet/version").json() == {"version": 2}
    assert [title.split(" [")[0] for title in server.client.get("/controlnet/model_list").json()["model_list"]] \
        == ["edges"]
    modules = server.client.get("/controlnet/module_list").json()
    assert {"none", "canny", "tile_resample", "inpaint_only"} <= set(modules["module_list"])
    assert "controlnet" in server.get("scripts").json()["txt2img"]

    square = square_image(tmp_path / "square.png")
    unit = {"enabled": True, "module": "canny", "model": "edges [0123abcd]", "weight": 0.7, "guidance_start": 0.0,
            "guidance_end": 0.5, "image": base64.b64encode(square.read_bytes()).decode(), "control_mode": "Balanced",
            "pixel_perfect": True, "resize_mode": "Crop and Resize", "processor_res": 64, "threshold_a": 100,
            "threshold_b": 200}
    body = server.post("txt2img", {**TXT2IMG, "alwayson_scripts": {"controlnet": {"args": [unit]}}}).json()
    image = decode(body["images"][0])
    assert 'ControlNet 0: "Module: canny, Model: edges' in json.loads(body["info"])["infotexts"][0]
    cli = generate(server.home, tmp_path / "c.png", "tiny-sd15", *CLI_TXT2IMG, "--control",
                   f"edges:{square}:0.7:0:0.5", "--control-preprocessor", "canny")
    assert same_pixels(image, cli)
    plain = decode(server.post("txt2img", TXT2IMG).json()["images"][0])
    assert not same_pixels(image, plain)  # the unit acted
    # The same unit from a maintained client (its default resize_mode, "Resize and Fill", is the same fit
    # for a square image and output).
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="DPM++ 2M", scheduler="Karras", steps=3)
    client_unit = webuiapi.ControlNetUnit(image=Image.open(square), module="canny", model="edges", weight=0.7,
                                          guidance_end=0.5, threshold_a=100, threshold_b=200)
    made = api.txt2img(prompt=PROMPT, negative_prompt="blurry", seed=42, cfg_scale=7.5, width=64, height=64,
                       controlnet_units=[client_unit])
    assert same_pixels(made.image, cli)


@pytest.mark.slow
def test_inpainting_fill_modes_change_only_the_masked_area_each_differently(server, tmp_path):
    source = Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def b64(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    payload = {**TXT2IMG, "steps": 4, "init_images": [b64(source)], "mask": b64(mask), "mask_blur": 0,
               "inpaint_full_res": False, "denoising_strength": 0.6}
    made = {}
    for fill in (0, 1, 2, 3):
        response = server.post("img2img", {**payload, "inpainting_fill": fill})
        assert response.status_code == 200, response.text
        made[fill] = np.asarray(decode(response.json()["images"][0]).convert("RGB")).astype(int)
    outside = np.asarray(mask) == 0
    for fill, pixels in made.items():
        assert np.array_equal(pixels[outside], np.asarray(source)[outside]), fill
    inside = ~outside
    for a in made:
        for b in made:
            if a < b:
                assert np.abs(made[a][inside] - made[b][inside]).mean() > 2, (a, b)
    assert server.post("img2img", {**payload, "inpainting_fill": 7}).status_code == 422
    # A batch: each image's latent noise is its own seed's (the rows are made one per image).
    pair = server.post("img2img", {**payload, "inpainting_fill": 2, "batch_size": 2}).json()
    assert json.loads(pair["info"])["all_seeds"] == [42, 43] and len(pair["images"]) == 2
    first, second = (np.asarray(decode(b64).convert("RGB")).astype(int) for b64 in pair["images"])
    assert np.abs(first - made[2])[inside].mean() < 1 and np.abs(second - first)[inside].mean() > 2


def test_several_init_images_make_one_batch_as_in_a1111(server, tmp_path):
    sources = []
    for index in range(2):
        path = tmp_path / f"s{index}.png"
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        sources.append(path)
    payload = {**TXT2IMG, "steps": 4, "denoising_strength": 0.6, "batch_size": 2,
               "init_images": [base64.b64encode(p.read_bytes()).decode() for p in sources]}
    body = server.post("img2img", payload).json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [42, 43] and info["batch_size"] == 2 and len(body["images"]) == 2
    cli_edit = (*CLI_TXT2IMG[:-4], "--steps", "4", "--strength", "0.6")
    for index, (b64, path) in enumerate(zip(body["images"], sources, strict=True)):
        expected = generate(server.home, tmp_path / f"e{index}.png", "tiny-sd15", *cli_edit, "--init-image",
                            str(path), "--seed", str(42 + index))
        assert same_pixels(decode(b64), expected), index
    # More images than the batch holds, or with n_iter, are refused naming the field.
    for change in ({"batch_size": 1}, {"n_iter": 2}):
        response = server.post("img2img", {**payload, **change})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "init_images"]
