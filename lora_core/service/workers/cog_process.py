"""One local Cog server (coglet, through ``lora_core.service.workers.cog_serve``) running a predictor: start,
watch, stop.

Cog's server spawns its worker as ``python`` from ``PATH``, so this interpreter's folder goes
first. The server and its worker share a new process group, killed together, and the server
dies with the service (``PR_SET_PDEATHSIG``): no orphan holds a GPU or a port.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lora_core.service.config import REPO_ROOT


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


PORTS_FROM = 20_000  # above the usual fixed ports (8000, 9000, 5432, 6379, 11211…)


def free_port() -> int:
    """A free local port for a server about to start, drawn below the kernel's ephemeral range.

    Binding port 0 would hand out an ephemeral port, and the kernel gives that same range to outgoing connections'
    source ports: one found that way can be taken before the server binds it (seen in CI: a Cog server's "address
    already in use"). Below the range only servers take ports; random ones are tried until one binds."""
    low = _ephemeral_low()
    for _ in range(200) if low - PORTS_FROM >= 1000 else ():
        port = random.randrange(PORTS_FROM, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a kernel with a wide ephemeral range, or a crowded machine: any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


class CogProcess:
    def __init__(self, name: str, predictor: str, schema_path: Path, run_dir: Path, env: dict[str, str]) -> None:
        """``env`` holds the worker's secrets (``WEBHOOK_AUTH_TOKEN``, ``COG_UPLOAD_URL``): never on a command line."""
        self.name, self.predictor, self.schema_path = name, predictor, schema_path
        self.run_dir, self.extra_env = run_dir, env
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.log_path = run_dir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server in its own folder holding the model's schema (coglet validates against it)."""
        (self.run_dir / ".cog").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.schema_path, self.run_dir / ".cog" / "openapi_schema.json")
        self.port = free_port()
        path, _, stub_class = self.predictor.rpartition(":")
        env = {
            **os.environ,
            **self.extra_env,
            "PORT": str(self.port),
            "COG_PREDICT_TYPE_STUB": f"{REPO_ROOT / path}:{stub_class}",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "lora_core.service.workers.cog_serve", "--host", "127.0.0.1"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=self.run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def exit_code(self) -> int | None:
        """None while running; the exit code (negative: killed by that signal) once it has died."""
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and the predictor process it spawned
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
