"""`marble serve`: the A1111-compatible HTTP API, headless, on the same library, outputs and history.

The web framework is imported only here, when serving starts (and torch only with the first job, on
the API's worker thread): `marble generate` and the window never pay for either.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import sqlite3
from collections.abc import Callable
from typing import TextIO

import desktop
from desktop.api.convert import ApiLimits, ApiOptions
from desktop.api.service import ApiService
from desktop.engine.errors import MarbleError
from desktop.engine.history.store import HistoryStore
from desktop.engine.library.catalog import ModelCatalog
from desktop.engine.library.demo import demo_model_name, install_demo_control, install_demo_model
from desktop.engine.library.index import Library
from desktop.engine.outputs import ImageWriter
from desktop.engine.paths import AppPaths
from desktop.engine.resources import Resources
from desktop.engine.runner import JobRunner
from desktop.engine.settings import saved_prompt_rewriter, saved_tokenizer_folder
from desktop.engine.terminal_text import printable
from desktop.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from desktop.history_cli import open_history


def add_serve_command(commands: argparse._SubParsersAction, parser_class: type, add_home: Callable) -> None:
    serve = commands.add_parser("serve", help="serve the A1111-compatible HTTP API (docs/api.md)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="port (0 picks a free one)")
    serve.add_argument("--listen", action="store_true",
                       help="listen on every network interface (0.0.0.0); needs --api-auth")
    serve.add_argument("--api-auth", metavar="USER:PASSWORD", help="HTTP basic authentication for every request")
    serve.add_argument("--cors-allow-origins", metavar="ORIGIN", nargs="+", default=[],
                       help="origins a web page may call the API from (CORS is off without this)")
    serve.add_argument("--model", help="the library model to start with (default: the demo model)")
    serve.add_argument("--max-queue", type=int, default=ApiLimits.max_queue, help="jobs waiting at most (429 beyond)")
    serve.add_argument("--max-body-mb", type=float, default=ApiLimits.max_body_bytes / 2**20,
                       help="largest request body in MiB (413 beyond)")
    add_home(serve)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace, paths: AppPaths, out: TextIO, err: TextIO) -> int:
    host = "0.0.0.0" if args.listen else args.host
    auth = None
    if args.api_auth is not None:
        user, colon, password = args.api_auth.partition(":")
        if not colon or not user or not password:
            print("marble: error: --api-auth takes USER:PASSWORD, both non-empty.", file=err)
            return EXIT_BAD_INPUT
        auth = (user, password)
    if not is_loopback(host) and auth is None:
        print(f"marble: error: listening on {host} lets other machines generate on yours: add "
              "--api-auth USER:PASSWORD, or serve on 127.0.0.1.", file=err)
        return EXIT_BAD_INPUT
    limits = ApiLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_queue=max(1, args.max_queue))
    try:
        paths.ensure()
        history = open_history(paths)
    except (MarbleError, OSError, sqlite3.Error) as error:
        print(f"marble: error: {printable(str(error))}", file=err)
        return EXIT_FAILED
    try:
        service = build_service(paths, history, limits, args.model)
    except MarbleError as error:
        history.close_all()
        print(f"marble: error: {printable(str(error))}", file=err)
        return EXIT_BAD_INPUT
    try:
        return _serve(service, paths, history, host, args, auth, out, err)
    finally:
        service.stop()
        history.close_all()


def build_service(paths: AppPaths, history: HistoryStore | None, limits: ApiLimits, model: str | None) -> ApiService:
    """The engine objects `marble generate` uses, behind one worker thread."""
    library, catalog = Library(paths), ModelCatalog(paths.models)

    def runner() -> JobRunner:
        from desktop.engine.backends import create_diffusers_backend

        backend = create_diffusers_backend(paths, Resources.default(), catalog, 1,
                                           tokenizer_folder=saved_tokenizer_folder(paths.settings_file),
                                           prompt_rewriter=saved_prompt_rewriter(paths.settings_file))
        return JobRunner(backend, ImageWriter(paths.outputs), desktop.__version__, history)

    service = ApiService(library, catalog, runner, ApiOptions(), limits)
    name = model or _default_model(library, paths)
    service.set_options(ApiOptions(sd_model_checkpoint=service.model_name(name, "--model")))
    return service


def _default_model(library: Library, paths: AppPaths) -> str:
    try:
        install_demo_model(library, Resources.default().demo_model, paths.config)
        install_demo_control(library, Resources.default().demo_control, paths.config)
    except (MarbleError, OSError) as error:
        raise MarbleError(f"No --model given, and the demo model could not be installed: {error}") from error
    name = demo_model_name(library)
    if name is None:
        raise MarbleError("No --model given, and the library has no demo model. Name one with --model.")
    return name


def _serve(service: ApiService, paths: AppPaths, history: HistoryStore, host: str, args: argparse.Namespace,
           auth: tuple[str, str] | None, out: TextIO, err: TextIO) -> int:
    import uvicorn

    from desktop.api.server import ServerConfig, build_app
    from desktop.engine.edit_inputs import inputs_folder

    config = ServerConfig(host, args.port, auth, tuple(args.cors_allow_origins))
    app = build_app(service, inputs_folder(paths), desktop.__version__, config)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, args.port))
    except OSError as error:
        print(f"marble: error: cannot listen on {host}:{args.port}: {error}", file=err)
        return EXIT_FAILED
    # Listening before the address is printed: a client that connects at once waits in the backlog
    # until uvicorn accepts, instead of being refused while the server starts.
    sock.listen(128)
    port = sock.getsockname()[1]
    service.start()
    print(f"Marble API on http://{host}:{port}/sdapi/v1 (docs: http://{host}:{port}/docs)", file=out, flush=True)
    logging.basicConfig(level=logging.INFO)
    class Server(uvicorn.Server):
        """Ctrl+C first stops the running job, so waiting clients get the images already made."""

        def handle_exit(self, sig: int, frame: object) -> None:
            service.cancel_all()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    # uvicorn stops on Ctrl+C; `run_serve` then cancels the running job (images already made are saved).
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl+C it handled once it has shut down: stopping is the normal end here.
        pass
    print("Marble API stopped.", file=out, flush=True)
    return EXIT_OK

