"""Hostile HTTP servers on 127.0.0.1 for the hostile suite: bad LoRA files, endless and trickling bodies,
redirect loops; and webhook receivers that fail on purpose. Each records what it was asked and what it sent."""

from __future__ import annotations

import http.server
import json
import pickle
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

GB = 2**30


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def lora_for_tiny(rank: int = 2) -> bytes:
    """A valid (all-zero) LoRA for the tiny base: one attention layer, PEFT names, ours' metadata."""
    module = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    size = 4 * rank * 64
    header = {
        f"{module}.lora_A.weight": {"dtype": "F32", "shape": [rank, 64], "data_offsets": [0, size]},
        f"{module}.lora_B.weight": {"dtype": "F32", "shape": [64, rank], "data_offsets": [size, 2 * size]},
        "__metadata__": {"format": "pt", "lora_studio.base_family": "sd-1", "lora_studio.base_model": "tiny"},
    }
    return safetensors_bytes(header, b"\0" * (2 * size))


def lora_for_sdxl() -> bytes:
    """A well-formed LoRA for another base family (SDXL-sized attention: 640 wide), kohya names."""
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    header = {
        f"{name}.lora_down.weight": {"dtype": "F16", "shape": [4, 640], "data_offsets": [0, 5120]},
        f"{name}.lora_up.weight": {"dtype": "F16", "shape": [640, 4], "data_offsets": [5120, 10240]},
        f"{name}.alpha": {"dtype": "F16", "shape": [], "data_offsets": [10240, 10242]},
        "__metadata__": {"ss_base_model_version": "sdxl_base_v1-0", "ss_sd_model_name": "sd_xl_base_1.0"},
    }
    return safetensors_bytes(header, b"\0" * 10242)


class _Pwned:
    def __reduce__(self):  # what a malicious pickle does when loaded: never called here, only pickled
        return (print, ("a pickle ran code",))


STATIC = {
    "/good.safetensors": lora_for_tiny(),
    "/pickle.safetensors": pickle.dumps({"state_dict": _Pwned()}, protocol=2),
    "/truncated.safetensors": lora_for_tiny()[:-300],
    "/huge-claim.safetensors": safetensors_bytes(
        {"w.lora_A.weight": {"dtype": "F32", "shape": [2**20, 2**14], "data_offsets": [0, 2**36]}}, b"\0" * 64
    ),
    "/other-base.safetensors": lora_for_sdxl(),
}


@dataclass
class Hit:
    path: str
    started: float
    sent: int = 0  # body bytes written
    closed_by_client: bool = False
    finished: float | None = None


@dataclass
class Log:
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, path: str) -> Hit:
        hit = Hit(path, time.monotonic())
        with self.lock:
            self.hits.append(hit)
        return hit

    def of(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


def _stream(handler, hit: Hit, total: int, chunk: bytes, pause: float = 0.0, limit_s: float = 60) -> None:
    """Write ``total`` bytes in ``chunk``s until done, the client hangs up, or ``limit_s`` passes."""
    deadline = time.monotonic() + limit_s
    try:
        while hit.sent < total and time.monotonic() < deadline:
            piece = chunk[: total - hit.sent]
            handler.wfile.write(piece)
            handler.wfile.flush()
            hit.sent += len(piece)
            if pause:
                time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError, OSError):
        hit.closed_by_client = True
    finally:
        hit.finished = time.monotonic()


class HostileFiles(http.server.BaseHTTPRequestHandler):
    """GET routes of bad LoRA files and bad servers. ``log`` is set per server."""

    log: Log
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        hit = self.log.add(self.path.split("?")[0])
        path = hit.path
        if path in STATIC:
            body = STATIC[path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            _stream(self, hit, len(body), body)
        elif path == "/5gb-declared.safetensors":  # says 5 GB up front, then streams zeros
            self.send_response(200)
            self.send_header("Content-Length", str(5 * GB))
            self.end_headers()
            _stream(self, hit, 5 * GB, b"\0" * 2**16, limit_s=30)
        elif path == "/5gb-undeclared.safetensors":  # no length: 5 GB of zeros until the client hangs up
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            _stream(self, hit, 5 * GB, b"\0" * 2**16, limit_s=30)
            self.close_connection = True
        elif path == "/trickle-body.safetensors":  # headers at once, then one byte a second
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            _stream(self, hit, 100000, b"\0", pause=1.0)
        elif path == "/trickle-headers.safetensors":  # even the status line comes one byte a second
            self.close_connection = True
            self._trickle_headers(hit)
        elif path == "/loop":
            self._redirect("/loop")
        elif path == "/redirect-to-private":
            self._redirect("http://10.0.0.1/lora.safetensors")
        elif path == "/redirect-to-loopback":  # to another port of this machine, which is not allowed
            self._redirect(type(self).private_target)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    private_target = "http://127.0.0.1:9/"

    def _trickle_headers(self, hit: Hit) -> None:
        status = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 100000
        deadline = time.monotonic() + 60
        try:
            for byte in status:
                if time.monotonic() > deadline:
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                hit.sent += 1
                time.sleep(1.0)
        except (BrokenPipeError, ConnectionResetError, OSError):
            hit.closed_by_client = True
        finally:
            hit.finished = time.monotonic()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class Server:
    """A threaded HTTP server on 127.0.0.1 (a given port, or any) with its own request log."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], port: int = 0, **attributes) -> None:
        self.log = Log()
        handler_class = type(handler.__name__, (handler,), {"log": self.log, **attributes})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler_class)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver whose answers are scripted: ``answers`` is a list of statuses, then 200 forever."""

    log: Log
    answers: list[int]
    bodies: list[tuple[dict, dict]]  # (headers, JSON body)

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hit = self.log.add(self.path)
        hit.sent = len(body)
        type(self).bodies.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body or b"{}")))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def receiver(port: int, answers: list[int]) -> Server:
    return Server(Receiver, port, answers=list(answers), bodies=[])


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return result
