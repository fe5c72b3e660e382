"""The HTTP side of the API: FastAPI routes with A1111's paths, fields and response shapes.

FastAPI (Starlette + pydantic) with uvicorn is what A1111 itself runs, so clients meet the same
validation errors, OpenAPI document and behaviour. This module is imported only by `marble serve`,
by the window when Serve API is turned on, and by the tests: `marble generate` and a window that does
not serve never load a web framework.
"""

from __future__ import annotations

import base64
import binascii
import html
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict

from desktop.api import controlnet
from desktop.api.convert import (
    ApiError,
    LibraryNames,
    apply_override_settings,
    decode_image,
    info_json,
    merge_options,
    png_base64,
    request_from_payload,
    vae_name,
)
from desktop.api.service import JobSource, Ticket, preview_png
from desktop.engine.backends.hires import LATENT_MODES, PIXEL_RESAMPLERS
from desktop.engine.backends.schedulers import SAMPLER_NAMES
from desktop.engine.errors import ErrorKind, InvalidRequest
from desktop.engine.imaging import save_png_by_hash
from desktop.engine.metadata import parse_parameters, read_text_chunks

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None
    cors_origins: tuple[str, ...] = ()


class BackgroundServer:
    """uvicorn on a thread of its own, for the window (`marble serve` runs it on the main thread).

    `start` binds and listens before the thread starts, so a port in use is an OSError the caller shows
    at once, and a client that connects right away waits in the backlog. `stop` asks uvicorn to exit
    and joins with a timeout: a window that closes must never hang on a slow client.
    """

    def __init__(self, app: Asgi, host: str, port: int) -> None:
        self.host, self.port = host, port
        # log_config=None: the app's logging stays as the window set it up.
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Listen on host:port (0: a free port) and serve; the port listened on. Raises OSError."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Lets a stopped server's port be taken again at once (TIME_WAIT), never a port another listens on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._socket, self.port = sock, sock.getsockname()[1]
        # uvicorn installs no signal handlers off the main thread: the window keeps its own.
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="marble-api-http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop serving and free the port; False when the thread did not end within `timeout`."""
        self._server.should_exit = True
        stopped = True
        if self._thread is not None:
            self._thread.join(timeout)
            stopped = not self._thread.is_alive()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        return stopped

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


# ------------------------------------------------------------------------------------- schemas


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI: the fields Marble reads; others pass as extras."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    seed: int | None = -1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    override_settings: dict[str, Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    mask: str | None = None
    denoising_strength: float | None = 0.75
    mask_blur: int | None = 4
    inpainting_fill: int | None = 1
    inpaint_full_res: bool | None = True
    inpaint_full_res_padding: int | None = 0
    inpainting_mask_invert: int | None = 0
    resize_mode: int | None = 0


class PngInfoRequest(BaseModel):
    image: str


# ---------------------------------------------------------------------------------- middleware


class BodyLimit:
    """413 for a body over the limit, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: Asgi, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _plain(send, 413, f"The request body is over this server's limit of {self.limit:,} bytes.")
            return
        # Read the whole body first (at most `limit` bytes): a chunked upload has no Content-Length, and
        # refusing it half-way inside the app would surface as the framework's 400, not a 413.
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await _plain(send, 413, f"The request body is over this server's limit of {self.limit:,} bytes.")
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class BasicAuth:
    """HTTP basic authentication on every path (docs too), compared in constant time."""

    def __init__(self, app: Asgi, user: str, password: str) -> None:
        self.app = app
        self._expected = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            if scheme.casefold() != "basic" or not secrets.compare_digest(token.strip(), self._expected):
                await _plain(send, 401, "Authentication required.", [(b"www-authenticate", b'Basic realm="marble"')])
                return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------- app


def build_app(service: JobSource, inputs: Path, version: str, config: ServerConfig) -> Asgi:
    """The ASGI application: routes, then CORS (only when asked), auth, and the body limit outermost."""
    app = FastAPI(title="Marble Studio API (A1111-compatible)", version=version, docs_url=None, redoc_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        if error.status == 422:
            loc = ["body", *(error.field_name.split(".") if error.field_name else [])]
            detail: Any = [{"loc": loc, "msg": str(error), "type": "value_error"}]
        else:
            detail = str(error)
        return JSONResponse({"detail": detail, "error": str(error)}, status_code=error.status)

    def save_input(image: Image.Image) -> str:
        return str(save_png_by_hash(image, inputs))

    def library_names() -> LibraryNames:
        def names(kind: str) -> tuple[str, ...]:
            return tuple(record.name for record in service.records(kind))

        return LibraryNames(names("lora"), names("vae"), names("upscaler"), names("control"), names("model"))

    def generate(body: Txt2ImgRequest, img2img: bool) -> dict[str, Any]:
        payload = body.model_dump(exclude_unset=True)
        options, notes = apply_override_settings(service.options, payload.get("override_settings"))
        for note in notes:
            log.warning("API request: %s", note)
        model = options.sd_model_checkpoint
        if "override_settings" in payload and "sd_model_checkpoint" in (payload["override_settings"] or {}):
            model = service.model_name(model, "override_settings.sd_model_checkpoint")
        options = replace(options, sd_model_checkpoint=model)
        converted = request_from_payload(payload, options, save_input, service.limits, img2img, log.warning,
                                         library_names())
        tickets: list[Ticket] = []
        try:
            for request in (converted.request, *converted.more):
                tickets.append(service.submit(request))
        except ApiError:
            for queued in tickets:  # a request is answered whole or not at all
                queued.job.cancel_token.cancel()
            raise
        for index, ticket in enumerate(tickets):
            ticket.done.wait()
            if ticket.interrupted:  # an interrupt stops the whole request, as it stops A1111's batch
                for later in tickets[index + 1:]:
                    later.job.cancel_token.cancel()
        return _result(_merged(tickets), payload, body.send_images is not False)

    @app.post("/sdapi/v1/txt2img")
    def txt2img(body: Txt2ImgRequest) -> dict[str, Any]:
        return generate(body, img2img=False)

    @app.post("/sdapi/v1/img2img")
    def img2img(body: Img2ImgRequest) -> dict[str, Any]:
        return generate(body, img2img=True)

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        ticket, count = service.progress()
        return _progress(ticket, count, skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    def interrupt() -> dict[str, Any]:
        service.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    def skip() -> dict[str, Any]:
        # Marble runs a request as one job: skipping its current image stops the job, as interrupt does.
        service.interrupt()
        return {}

    @app.get("/sdapi/v1/options")
    def get_options() -> dict[str, Any]:
        return service.options.to_json()

    @app.post("/sdapi/v1/options")
    def set_options(changes: dict[str, Any] = Body(...)) -> None:  # noqa: B008 - FastAPI's idiom
        options, notes = merge_options(service.options, changes, "options")
        for note in notes:
            log.warning("API options: %s", note)
        if "sd_model_checkpoint" in changes:
            options = replace(options, sd_model_checkpoint=service.model_name(options.sd_model_checkpoint,
                                                                              "sd_model_checkpoint"))
        if "sd_vae" in changes:
            vae_name(options.sd_vae, library_names().vaes, "sd_vae")  # an unknown VAE is refused now
        service.set_options(options)

    @app.get("/sdapi/v1/sd-models")
    def sd_models() -> list[dict[str, Any]]:
        found = []
        for record in service.records("model"):
            title = f"{record.name} [{record.autov2}]" if record.autov2 else record.name
            found.append({"title": title, "model_name": record.name, "hash": record.autov2,
                          "sha256": record.sha256, "filename": record.file, "config": None})
        return found

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints() -> dict[str, Any]:
        return {}  # the library folder is scanned on every request

    @app.get("/sdapi/v1/samplers")
    def samplers() -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [], "options": {}} for name in SAMPLER_NAMES]

    @app.get("/sdapi/v1/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return [
            {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
            {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False},
        ]

    @app.get("/sdapi/v1/loras")
    def loras() -> list[dict[str, Any]]:
        return [{"name": r.name, "alias": r.name, "path": r.file, "metadata": {}} for r in service.records("lora")]

    @app.get("/sdapi/v1/embeddings")
    def embeddings() -> dict[str, Any]:
        loaded = {r.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                           "vectors": None} for r in service.records("embedding")}
        return {"loaded": loaded, "skipped": {}}

    @app.get("/sdapi/v1/upscalers")
    def upscalers() -> list[dict[str, Any]]:
        # A1111 lists pixel upscalers here; the latent modes are in /latent-upscale-modes.
        built_in = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                    for name in PIXEL_RESAMPLERS]
        return built_in + [{"name": r.name, "model_name": r.architecture, "model_path": r.file, "model_url": None,
                            "scale": 4} for r in service.records("upscaler")]

    @app.get("/sdapi/v1/latent-upscale-modes")
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_MODES]

    @app.get("/sdapi/v1/sd-vae")
    def sd_vae() -> list[dict[str, Any]]:
        # A1111 names VAEs by file name; `filename` is the name in the library, never a path.
        return [{"model_name": f"{r.name}.safetensors", "filename": r.file} for r in service.records("vae")]

    @app.get("/controlnet/model_list")
    def controlnet_models(update: bool = True) -> dict[str, Any]:
        # The extension's "name [hash]" titles (first 8 hex digits of the sha256); clients send them back.
        return {"model_list": [f"{r.name} [{r.sha256[:8]}]" if r.sha256 else r.name
                               for r in service.records("control")]}

    @app.get("/controlnet/module_list")
    def controlnet_modules(alias_names: bool = False) -> dict[str, Any]:
        return controlnet.module_list()

    @app.get("/controlnet/version")
    def controlnet_version() -> dict[str, Any]:
        return {"version": controlnet.EXTENSION_VERSION}

    @app.get("/sdapi/v1/scripts")
    def scripts() -> dict[str, Any]:
        # The alwayson scripts Marble takes (lower case, as A1111 lists them).
        return {"txt2img": ["controlnet"], "img2img": ["controlnet"]}

    @app.post("/sdapi/v1/png-info")
    def png_info(body: PngInfoRequest) -> dict[str, Any]:
        data = body.image.partition(",")[2] if body.image.startswith("data:") else body.image
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(422, "image is not valid base64.", "image") from None
        decode_image(body.image, "image", service.limits)  # the pixel cap before any chunk is read
        try:
            chunks = read_text_chunks(raw)
        except InvalidRequest as error:
            raise ApiError(422, str(error), "image") from None
        text = chunks.get("parameters", "")
        parameters: dict[str, Any] = {}
        if text:
            parsed = parse_parameters(text)
            parameters = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt, **dict(parsed.settings)}
        return {"info": text, "items": {k: v for k, v in chunks.items() if k != "parameters"},
                "parameters": parameters}

    @app.get("/sdapi/v1/memory")
    def memory() -> dict[str, Any]:
        return _memory()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_docs_page(app.openapi()))

    wrapped: Asgi = app
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        wrapped = CORSMiddleware(wrapped, allow_origins=list(config.cors_origins), allow_methods=["*"],
                                 allow_headers=["*"], allow_credentials=True)
    if config.auth is not None:
        wrapped = BasicAuth(wrapped, *config.auth)
    return BodyLimit(wrapped, service.limits.max_body_bytes)


def _merged(tickets: list[Ticket]) -> Ticket:
    """One request's jobs (several init images) as one ticket: images and seeds in order, the first
    failure, and the batch size A1111 reports (one place per init image)."""
    if len(tickets) == 1:
        return tickets[0]
    first = tickets[0]
    request = replace(first.job.request, batch_size=len(tickets))
    merged = Ticket(replace(first.job, request=request))
    for ticket in tickets:
        merged.paths += ticket.paths
        merged.seeds += ticket.seeds
        merged.failure = merged.failure or ticket.failure
        merged.cancelled = merged.cancelled or ticket.cancelled
        merged.interrupted = merged.interrupted or ticket.interrupted
    return merged


def _result(ticket: Ticket, payload: dict[str, Any], send_images: bool) -> dict[str, Any]:
    if ticket.failure is not None and not ticket.paths:
        status = {ErrorKind.INVALID_REQUEST: 422, ErrorKind.MODEL: 404, ErrorKind.OUT_OF_MEMORY: 507}.get(
            ticket.failure.kind, 500)
        raise ApiError(status, ticket.failure.message)
    if ticket.cancelled and not ticket.paths and not ticket.interrupted:
        raise ApiError(503, "The server stopped before this request ran.")
    infotexts, model_hash = [], ""
    for path in ticket.paths:
        chunks = read_text_chunks(path)
        infotexts.append(chunks.get("parameters", ""))
        settings = parse_parameters(infotexts[-1]).settings if infotexts[-1] else {}
        model_hash = model_hash or str(settings.get("Model hash", ""))
    request = ticket.job.request
    parameters = {key: value for key, value in payload.items() if key not in ("init_images", "mask")}
    return {
        "images": [png_base64(path) for path in ticket.paths] if send_images else [],
        "parameters": parameters,
        "info": info_json(request, ticket.seeds, infotexts, model_hash),
    }


def _progress(ticket: Ticket | None, count: int, skip_image: bool) -> dict[str, Any]:
    state = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
             "job_count": count, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    if ticket is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None,
                "current_task": None}
    fraction = ticket.fraction
    elapsed = time.perf_counter() - ticket.started
    eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
    state.update(job=ticket.job.id, interrupted=ticket.interrupted, job_no=ticket.batch_index,
                 sampling_step=ticket.step, sampling_steps=ticket.total)
    image = None if skip_image else preview_png(ticket.preview)
    return {"progress": fraction, "eta_relative": eta, "state": state,
            "current_image": base64.b64encode(image).decode("ascii") if image else None,
            "textinfo": ticket.textinfo, "current_task": ticket.job.id}


def _memory() -> dict[str, Any]:
    total = free = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            table = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in stream if line.split()}
        total, free = table.get("MemTotal", 0), table.get("MemAvailable", 0)
    except OSError:
        pass
    ram = {"free": free, "used": total - free, "total": total}
    torch = sys.modules.get("torch")  # only if the backend loaded it already: never imported for this
    cuda: dict[str, Any] = {"error": "no CUDA device in use"}
    if torch is not None and torch.cuda.is_available():
        free_b, total_b = torch.cuda.mem_get_info()
        cuda = {"system": {"free": free_b, "used": total_b - free_b, "total": total_b}}
    return {"ram": ram, "cuda": cuda, "pid": os.getpid()}


def _docs_page(schema: dict[str, Any]) -> str:
    """A page that works offline: FastAPI's Swagger page loads its scripts from a CDN."""
    rows = []
    for path, methods in sorted(schema.get("paths", {}).items()):
        for method, spec in methods.items():
            rows.append(f"<tr><td>{html.escape(method.upper())}</td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(spec.get('summary', ''))}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Marble API</title></head><body>"
            f"<h1>{html.escape(schema['info']['title'])}</h1>"
            "<p>The full OpenAPI document: <a href='/openapi.json'>/openapi.json</a> "
            "(load it into any OpenAPI viewer).</p>"
            "<table border='1' cellpadding='4'><tr><th>Method</th><th>Path</th><th>Summary</th></tr>"
            + "".join(rows) + "</table></body></html>")
