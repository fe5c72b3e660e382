"""`python -m desktop ARGS` in child processes that skip Python's start-up and imports (tests only).

A child started from nothing spends about 10 s of the CI machine importing torch, diffusers and transformers
before the command line runs; the crash tests start one per kill point. The server here is one process that
has imported them and then forks a child per command. Each child is a process of its own: its own files,
database connections and signals (SIGKILL kills it alone), started with nothing open but what the command opens.
It sets the environment it is given, installs the test faults (tests/support/faults/sitecustomize.py, as a fresh
child does at start-up from MARBLE_TEST_FAULT) and runs `python -m desktop`'s main, ending as an interpreter
ends. A process's own start-up is what it does not cover: tests/e2e/test_cli.py starts `python -m desktop` from
nothing.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAULTS = ROOT / "tests" / "support" / "faults"

# The server: imports what the command line would, then reads one JSON request a line. A command is answered with
# its child's pid at once; {"wait": PID} with that child's exit status once it has ended. Its answers go to a copy of
# its stdout made before any child exists; each child points its own stdout and stderr at the request's files.
_SERVER = r"""
import json, os, sys
import sitecustomize as faults  # tests/support/faults, first on PYTHONPATH; MARBLE_TEST_FAULT is unset here
import desktop.__main__ as entry
import desktop.cli
import desktop.engine.backends.diffusers_backend

answers = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        _, status = os.waitpid(request["wait"], 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()
        continue
    pid = os.fork()
    if pid == 0:
        answers.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        faults.install_from_environment()
        sys.argv = [entry.__file__, *request["argv"]]
        sys.exit(entry.main(request["argv"]))  # leaves the loop: the child ends as an interpreter ends
    answers.write(json.dumps({"pid": pid}) + "\n")
    answers.flush()
"""


@dataclass(frozen=True)
class ForkedChild:
    """A started `python -m desktop` child: its pid and the files its stdout and stderr go to."""

    argv: tuple[str, ...]
    pid: int
    out: Path
    err: Path


class ForkedCli:
    """A server for `python -m desktop` children: `run` one, or `start` several and `wait` for each; `close` when
    done."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        env = {**environ, "PYTHONPATH": os.pathsep.join([str(FAULTS), str(ROOT)])}
        env.pop("MARBLE_TEST_FAULT", None)
        self._server = subprocess.Popen(
            [sys.executable, "-c", _SERVER], env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: select() below must see every answer that has come
        )
        self._outputs = tempfile.TemporaryDirectory(prefix="forked-cli-")
        self._started = 0

    def _answer(self) -> dict:
        assert self._server.stdout is not None
        line = b""
        while not line.endswith(b"\n"):
            byte = os.read(self._server.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError(f"the fork server ended (exit status {self._server.wait()})")
            line += byte
        return json.loads(line)

    def start(self, argv: Sequence[str], env: Mapping[str, str]) -> ForkedChild:
        """Start `python -m desktop ARGV` with exactly the environment `env`; `wait` for it."""
        self._started += 1
        out, err = (Path(self._outputs.name) / f"{self._started}.{name}" for name in ("stdout", "stderr"))
        request = {"argv": list(argv), "env": dict(env), "cwd": str(ROOT), "out": str(out), "err": str(err)}
        self._ask(request)
        return ForkedChild(tuple(argv), self._answer()["pid"], out, err)

    def wait(self, child: ForkedChild, timeout: float = 300) -> subprocess.CompletedProcess:
        """`child`'s exit status and output, as subprocess.run with capture_output gives them."""
        self._ask({"wait": child.pid})
        assert self._server.stdout is not None
        ready, _, _ = select.select([self._server.stdout], [], [], timeout)
        if not ready:  # a child that hangs fails its test, as subprocess.run's timeout would
            os.kill(child.pid, signal.SIGKILL)
            self._answer()
            raise subprocess.TimeoutExpired(["python", "-m", "desktop", *child.argv], timeout, *_outputs(child))
        return subprocess.CompletedProcess(
            ["python", "-m", "desktop", *child.argv], self._answer()["returncode"], *_outputs(child)
        )

    def run(self, argv: Sequence[str], env: Mapping[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
        """`python -m desktop ARGV` with exactly the environment `env`, to its end."""
        return self.wait(self.start(argv, env), timeout)

    def _ask(self, request: dict) -> None:
        assert self._server.stdin is not None
        self._server.stdin.write(json.dumps(request).encode() + b"\n")

    def close(self) -> None:
        assert self._server.stdin is not None
        self._server.stdin.close()
        self._server.wait(timeout=60)
        self._outputs.cleanup()


def _outputs(child: ForkedChild) -> tuple[str, str]:
    return tuple(path.read_text(encoding="utf-8", errors="replace") for path in (child.out, child.err))
