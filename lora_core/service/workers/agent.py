"""One worker agent: a Cog server fed from the shared queue, its webhooks and uploads received, its results stored.

The agent takes the next queued prediction of its model from the database (fair across owners), hands it to its
Cog server with Cog's protocol (``PUT /predictions/{id}``, ``Prefer: respond-async``, a webhook back to where the
agent listens) and writes every change (start, logs, output files, the end) straight to the database and the file
store, so nothing about a running prediction lives only in another process. It runs inside ``lora-studio serve``
(one per worker, listening through the service's own routes) or alone as ``lora-studio worker`` beside a Cog
container (``workers/agent_server.py``). A Cog server it started is restarted when it dies, failing the prediction
it held ("worker died"); one at a URL is health-checked instead.
"""

from __future__ import annotations

import datetime
import io
import logging
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from pydantic import ValidationError

from lora_core import provenance
from lora_core.net import cog_uploads
from lora_core.net.fetch import Fetcher, FetchError, FetchPolicy
from lora_core.service.auth.signing import Signer, upload_url
from lora_core.service.config import ServiceConfig
from lora_core.service.models import Model
from lora_core.service.queue import limits, outputs, predictions
from lora_core.service.runtime import Runtime
from lora_core.service.storage import files, loras
from lora_core.service.storage.file_store import StorageFull
from lora_core.service.workers.cog_process import CogProcess

log = logging.getLogger("lora_studio.workers")
# From the worker only logs and the final state: the PUT's answer says it started, and outputs come with the end
# (two webhooks fewer per prediction; a 1-step prediction spends more time in webhooks than in sampling).
EVENTS = ["logs", "completed"]
LOST_AFTER_CHECKS = 60  # ~30 s of an idle worker without its final webhook (Cog retries that one for ~7 s)


@dataclass
class Worker:
    name: str  # "lora-1": unique among the agents that share a listener, used in its URLs there
    model: Model
    url: str
    process: CogProcess | None = None  # None: a remote Cog server at ``url``
    ready: threading.Event = field(default_factory=threading.Event)
    current: str | None = None  # prediction id being run
    row: dict | None = None  # its row as claimed (owner, input), so updates need no extra read
    logs: str = ""  # the logs last stored for it
    lock: threading.Lock = field(default_factory=threading.Lock)  # one progress update at a time
    finished: threading.Event = field(default_factory=threading.Event)
    upload_errors: list[str] = field(default_factory=list)
    restarts: int = 0
    last_seen: float = 0.0
    misses: int = 0  # health checks unanswered in a row
    idle_checks: int = 0  # health checks in a row saying "idle" while we think it runs something


def worker_env(config: ServiceConfig, signer: Signer) -> dict[str, str]:
    """What every Cog worker of this service needs, started here or in a GPU container: the token its webhooks
    carry, the one private host its LoRA and input URLs may use (the service's internal address), its LoRA cache and
    the cache of users' own checkpoints."""
    service = urlsplit(config.internal_url)
    return {
        "WEBHOOK_AUTH_TOKEN": signer.worker_token(),
        "LORA_STUDIO_ALLOWED_PRIVATE_HOSTS": ",".join(
            sorted({f"{service.hostname}:{service.port or 80}", *config.allowed_private_hosts})
        ),
        "LORA_STUDIO_CACHE_DIR": str(lora_cache_dir(config)),
        "LORA_STUDIO_CHECKPOINT_CACHE_DIR": str(config.data_dir / "cache" / "checkpoints"),  # users' own bases
    }


def lora_cache_dir(config: ServiceConfig) -> Path:
    """The LoRA download cache the local workers share with their agents (``Agent.pin_loras`` reads it)."""
    return config.data_dir / "cache" / "loras"


def local_worker(runtime: Runtime, model: Model, name: str, listen_url: str, threads: int) -> Worker:
    """A worker whose Cog server the agent starts itself, uploading its outputs to ``listen_url``, its torch using
    ``threads`` cores (``ServiceConfig.threads_per_worker``)."""
    config, signer = runtime.config, runtime.signer
    env = {
        **worker_env(config, signer),
        cog_uploads.ENV: upload_url(listen_url, name, signer.worker_token()),
        **{var: str(threads) for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},  # torch's intra-op threads
    }
    process = CogProcess(name, model.predictor, model.schema_path, config.data_dir / "workers" / name, env)
    return Worker(name, model, "", process)


class Agent:
    def __init__(self, runtime: Runtime, worker: Worker, listen_url: str) -> None:
        """``listen_url`` is where this agent's Cog server reaches it (webhooks, uploads)."""
        self.runtime, self.worker, self.listen_url = runtime, worker, listen_url.rstrip("/")
        self.config, self.engine, self.store = runtime.config, runtime.engine, runtime.store
        self.session = requests.Session()  # the dispatch thread's alone, to its Cog server (not for sharing)
        self.draining = threading.Event()  # take no more work; the current prediction finishes
        self._thread: threading.Thread | None = None
        # LoRAs at outside URLs kept (pin_loras): the workers' limits (a bad LORA_STUDIO_* value stops the service at
        # start), the local workers' disk cache, never file:// and only the service's private hosts
        policy = FetchPolicy.from_env().model_dump()
        policy.update(
            cache_dir=lora_cache_dir(self.config),
            allow_file_urls=False,
            allowed_private_hosts=self.config.allowed_private_hosts,
        )
        self.lora_fetcher = Fetcher(FetchPolicy(**policy), log=lambda _: None)

    @property
    def output_prefix(self) -> str:
        """Where uploaded outputs say they are (coglet puts the upload's Location into the output)."""
        return f"{self.listen_url}/internal/outputs/"

    # ---- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        worker = self.worker
        if worker.process:
            worker.process.start()
            worker.url = worker.process.url
        self._thread = threading.Thread(target=self._dispatch_loop, name=f"dispatch-{worker.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.worker.finished.set()
        if self.worker.process:
            self.worker.process.stop()

    def drain(self, timeout: float) -> bool:
        """Take nothing new and wait up to ``timeout`` s for the current prediction to end; True if it did."""
        self.stop_taking()
        return self.drained(timeout)

    def stop_taking(self) -> None:
        self.draining.set()
        self.runtime.wakeups.prediction_queued()  # an idle dispatch loop wakes, sees it and ends

    def drained(self, timeout: float) -> bool:
        """Waits for the dispatch loop itself to end: a prediction it has just claimed (and not yet marked current)
        runs to its end too, instead of being left claimed by a process about to exit."""
        if self._thread is None:
            return self.worker.current is None
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> dict:
        w = self.worker
        return {
            "name": w.name,
            "model": w.model.full_name,
            "url": w.url,
            "ready": w.ready.is_set(),
            "current": w.current,
            "restarts": w.restarts,
            "local": w.process is not None,
            "pid": w.process.process.pid if w.process and w.process.process else None,
        }

    # ---- dispatch -----------------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        worker = self.worker
        while not self.runtime.stopping.is_set() and not self.draining.is_set():
            if not worker.ready.wait(0.5):
                continue
            try:
                row = predictions.claim_next(
                    self.engine,
                    worker.model.full_name,
                    worker.name,
                    self.config.instance,
                    self.config.owner_limits.running,
                )
            except Exception:
                log.exception("claiming from the queue failed")
                time.sleep(1)
                continue
            if row is None:
                self.runtime.wakeups.wait_for_queue(1.0)
                continue
            try:
                self._run(row)
            except Exception as e:
                log.exception("running %s failed", row["id"])
                self._complete(row["id"], "failed", error=f"internal error handing over the prediction: {e}")
            finally:
                worker.current = None

    def _run(self, row: dict) -> None:
        worker, pid = self.worker, row["id"]
        worker.current, worker.row, worker.logs, worker.upload_errors = pid, row, "", []
        worker.finished.clear()
        try:
            worker_input = self.worker_input(row, worker.model)
        except (FetchError, OSError) as e:  # an input file at an outside URL that could not be fetched or stored
            self._complete(pid, "failed", error=getattr(e, "strerror", None) or str(e))
            return
        body = {
            "id": pid,
            "input": worker_input,
            "webhook": f"{self.listen_url}/internal/workers/{quote(worker.name)}/webhook",
            "webhook_events_filter": EVENTS,
        }
        try:
            response = self.session.put(
                f"{worker.url}/predictions/{pid}", json=body, headers={"Prefer": "respond-async"}, timeout=30
            )
        except requests.exceptions.InvalidJSONError as e:  # this prediction's fault, not the worker's: never requeue it
            self._complete(pid, "failed", error=f"the input cannot be sent to the worker as JSON: {e}")
            return
        except requests.RequestException as e:
            log.warning("worker %s unreachable (%s); prediction %s goes back to the queue", worker.name, e, pid)
            predictions.unclaim(self.engine, pid, worker.name)
            worker.ready.clear()
            return
        if response.status_code == 409:  # busy: it is still finishing something we lost track of
            predictions.unclaim(self.engine, pid, worker.name)
            worker.ready.clear()
            return
        if response.status_code >= 400:
            self._complete(pid, "failed", error=_cog_error(response))
            return
        self._progress(pid)
        cancel_sent = False
        while not worker.finished.wait(0.5):
            if self.runtime.stopping.is_set():
                return
            if not cancel_sent and predictions.cancel_requested(self.engine, pid):
                self.cancel(pid)
                cancel_sent = True
        try:
            self.pin_loras(pid)
        except Exception:  # the prediction has ended as it did: this is only its re-runs' insurance
            log.exception("keeping %s's LoRAs for exact re-runs failed", pid)

    def worker_input(self, row: dict, model: Model) -> dict:
        """The input as the worker must see it: this service's file URLs signed for it to fetch, file inputs at
        outside URLs fetched here first (``import_file``), and no nulls (an empty optional input is left out:
        Cog's server rejects ``null``)."""
        out = {}
        for name, value in loras.tags_as_entries(row["input"]).items():
            if isinstance(value, str):
                if name in model.file_inputs and not self.runtime.urls.own_file_ids(value):
                    value = self.import_file(row, name, value)
                else:
                    value = self.runtime.urls.for_worker(value, row["owner"], self.engine)
                if name == "lora_urls":
                    value = self.runtime.urls.names_for_worker(value, row["owner"], self.engine)
            if value is not None:
                out[name] = value
        return out

    def import_file(self, row: dict, name: str, url: str) -> str:
        """An input file at an outside URL, fetched by the service as LoRA URLs are (every hop's address checked
        and connected to, size and time capped) and stored as the owner's upload; the worker gets this service's
        signed URL for it. Handed the outside URL, Cog's server would follow redirects to any address."""
        scratch = self.config.data_dir / "cache" / "inputs"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            policy = FetchPolicy(
                cache_dir=Path(tmp),
                max_bytes=self.config.max_upload_bytes,
                allowed_private_hosts=self.config.allowed_private_hosts,
            )
            try:
                fetched = Fetcher(policy, log=lambda _: None).fetch(url)
            except FetchError as e:
                raise FetchError(f"input {name}: {e}") from None
            filename = PurePosixPath(urlsplit(url).path).name or name
            saved = self._keep(row, fetched.path, filename, self.config.max_upload_bytes, f"input {name}")
        return self.runtime.urls.file(saved, base=self.config.internal_url)

    def pin_loras(self, pid: str) -> None:
        """A generation's LoRAs at outside URLs kept as the owner's files, once per distinct bytes, so that a fork
        re-runs with the same bytes after the URL has changed or its server has gone (``Service.fork_input`` finds
        them by sha256). Done after the prediction ended, by what the worker recorded: its checks and its errors
        stay first. The bytes come from the local workers' disk cache (``lora_cache_dir``), else from the URL again;
        kept only when their sha256 is the one recorded and the owner's upload quota has room (outside URLs must
        not store more than uploads could). Never fails the prediction: a LoRA not kept is logged."""
        row = predictions.get(self.engine, pid)
        if row is None or row["status"] != "succeeded" or not row.get("provenance"):
            return
        for use in row["provenance"].get("loras") or []:
            url, sha256 = str(use.get("url") or ""), use.get("sha256")
            if urlsplit(url).scheme.lower() not in ("http", "https") or self.runtime.urls.own_file_ids(url):
                continue  # this service's files and names are kept already; data: URLs are in the input
            if files.by_sha256(self.engine, row["owner"], sha256):
                continue
            try:
                fetched = self.lora_fetcher.fetch(url)
                if fetched.sha256 != sha256:
                    raise FetchError(f"{url[:100]} names other bytes now")
                room = limits.upload_room(self.engine, row["owner"], self.config.owner_limits)  # kept as uploads
                if room is not None and fetched.size > room:
                    raise limits.LimitReached(f"{fetched.size / 2**20:.0f} MB, more than the owner's quota has left")
                name = PurePosixPath(urlsplit(url).path).name or f"lora-{sha256[:12]}.safetensors"
                self._keep(row, fetched.path, name, fetched.size, f"{pid}'s LoRA")
            except (FetchError, OSError, limits.LimitReached) as e:
                log.warning("%s's LoRA at %s is not kept for exact re-runs: %s", pid, url[:100], e)

    def _keep(self, row: dict, path: Path, name: str, limit: int, what: str) -> dict:
        """A fetched file stored as the owner's upload; a full store says which input it was."""
        with path.open("rb") as stream:
            try:
                return files.save(self.engine, self.store, owner=row["owner"], stream=stream, name=name, limit=limit)
            except StorageFull:
                raise StorageFull(28, f"{what} could not be stored: the file store is full") from None

    def cancel(self, prediction_id: str) -> None:
        try:
            requests.post(f"{self.worker.url}/predictions/{prediction_id}/cancel", timeout=10)  # any thread
        except requests.RequestException as e:
            log.warning("cancel of %s on %s failed: %s", prediction_id, self.worker.name, e)

    # ---- from the worker ----------------------------------------------------------------------------------
    def on_webhook(self, payload: dict) -> bool:
        """A state update from the Cog server; False if it is not about what it runs."""
        worker = self.worker
        pid = payload.get("id")
        if not pid or worker.current != pid or worker.row is None:
            return False
        worker.last_seen = time.monotonic()
        status = payload.get("status")
        if status in predictions.TERMINAL:
            self._complete(
                pid,
                status,
                output=payload.get("output"),
                error=_worker_error(payload.get("error")),
                logs=payload.get("logs"),
                metrics=payload.get("metrics"),
            )
            return True
        if worker.finished.is_set():  # a late update after the final one
            return False
        row = worker.row
        output = self._collect(row, payload.get("output")) if payload.get("output") is not None else None
        self._progress(pid, payload.get("logs") or "", output, _parse_time(payload.get("started_at")))
        return True

    def _progress(
        self, pid: str, logs: str = "", output: Any = None, started_at: datetime.datetime | None = None
    ) -> None:
        """Store what is new (the start, logs, output) and announce it: 'start' first, once."""
        worker = self.worker
        with worker.lock:
            if worker.row is None:  # finished meanwhile
                return
            first = worker.row.get("started_at") is None
            new_logs = logs if logs and logs != worker.logs else None
            if not first and new_logs is None and output is None:
                return
            updated = predictions.update_running(
                self.engine, pid, worker.name, logs=new_logs, output=output, started_at=started_at
            )
            if updated is None:
                return
            worker.row, worker.logs = updated, logs or worker.logs
            events = (
                (["start"] if first else [])
                + (["output"] if output is not None else [])
                + (["logs"] if new_logs is not None and not first else [])
            )
        for event in events:  # no wake-up for waiters: `Prefer: wait` waits for the final state only
            self.runtime.on_event(updated, event)

    def on_upload(self, filename: str, stream, content_type: str | None) -> dict:
        """An output file from the Cog server, stored as a file of the prediction it runs."""
        worker = self.worker
        if worker.current is None or worker.row is None:
            raise LookupError("this worker is running no prediction")
        row = worker.row
        try:
            return files.save(
                self.engine,
                self.store,
                owner=row["owner"],
                name=filename,
                stream=stream,
                limit=self.config.max_output_bytes,
                content_type=content_type,
                prediction_id=row["id"],
            )
        except (OSError, ValueError) as e:
            worker.upload_errors.append(f"{files.safe_name(filename)}: {getattr(e, 'strerror', None) or e}")
            raise

    def _collect(self, row: dict, output: Any) -> Any:
        """The worker's output as stored: file refs, in the predictor's order.

        Cog's server uploads a list's files in parallel and lists them as the uploads finish, so
        ``[out-0.png, out-1.png]`` may arrive swapped; the predictor's order is restored by file name.
        """
        rows = {f["id"]: f for f in files.of_prediction(self.engine, row["id"])}

        def save_data(name: str, content_type: str, data: bytes) -> str:
            saved = files.save(
                self.engine,
                self.store,
                owner=row["owner"],
                name=name,
                stream=io.BytesIO(data),
                limit=self.config.max_output_bytes,
                content_type=content_type,
                prediction_id=row["id"],
            )
            return saved["id"]

        refs = outputs.to_refs(output, self.output_prefix, set(rows), save_data)
        if isinstance(refs, list) and refs and all(isinstance(r, dict) and r.get("$file") in rows for r in refs):
            refs.sort(key=lambda r: _natural(rows[r["$file"]]["name"]))
        return refs

    def _complete(
        self,
        pid: str,
        status: str,
        *,
        output: Any = None,
        error: str | None = None,
        logs: str | None = None,
        metrics: dict | None = None,
    ) -> None:
        worker = self.worker
        row = worker.row if worker.row and worker.row["id"] == pid else predictions.get(self.engine, pid)
        if row is None:
            worker.finished.set()
            return
        if output is not None:
            try:
                output = self._collect(row, output)
            except (OSError, ValueError) as e:
                status, error, output = "failed", f"the output could not be stored: {e}", None
        detail = f" ({'; '.join(worker.upload_errors)})" if worker.upload_errors else ""
        if status == "succeeded":
            problem = worker.model.output_problem(row["input"], output)
            if problem:
                status, error = "failed", problem + detail
        elif status == "failed" and detail and error and detail not in error:
            error += detail  # Cog's server says only "upload returned status 507": say what the store said
        record = _provenance((metrics or {}).get("provenance"), row, self.engine)
        metrics = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        done = predictions.finish(
            self.engine,
            pid,
            status,
            worker=worker.name,
            output=output,
            error=error,
            logs=logs,
            metrics=metrics,
            provenance=record,
        )
        worker.finished.set()
        if done and done["status"] == "succeeded" and done.get("destination"):
            try:
                done = self._publish(done)
            except Exception:  # the prediction stands; its webhook and waiting clients must still hear of it
                log.exception("publishing %s's LoRA as %s failed", pid, done["destination"])
        if done:
            self.runtime.on_event(done, "completed")
            self.runtime.wakeups.prediction_changed(pid)

    def _publish(self, row: dict) -> dict:
        """A training's LoRA as the next version of its destination, said at the end of its logs."""
        owner, name, _ = loras.parse(row["destination"]) or (row["owner"], "", None)
        file_ref = (row["output"] or {}).get("lora") if isinstance(row["output"], dict) else None
        if not name or not isinstance(file_ref, dict) or "$file" not in file_ref:
            return row
        version = loras.publish(self.engine, owner, name, file_ref["$file"], row["id"])
        line = f"published as {owner}/{name}:{version['version']} (lora_urls: {owner}/{name} is its newest version)"
        return predictions.append_log(self.engine, row["id"], line) or row

    # ---- supervision --------------------------------------------------------------------------------------
    def check(self) -> None:
        """Restart a local Cog server that died (failing what it ran), end a prediction whose final webhook never
        came, and follow a remote one's health."""
        worker = self.worker
        if worker.process is not None and worker.process.exit_code() is not None:
            code = worker.process.exit_code()
            log.warning("worker %s died (exit code %s); restarting\n%s", worker.name, code, worker.process.log_tail())
            worker.ready.clear()
            pid = worker.current
            if pid:
                self._complete(
                    pid,
                    "failed",
                    error=f"worker died (exit code {code}) while running this prediction; it has been "
                    "restarted, so you can run the prediction again",
                )
            worker.process.stop()
            worker.restarts += 1
            time.sleep(min(30, 0.5 * 2 ** min(worker.restarts, 6)) if worker.restarts > 3 else 0)
            worker.process.start()
            worker.url = worker.process.url
            return
        if worker.ready.is_set() and worker.current is None and time.monotonic() - worker.last_seen < 5:
            return
        state = self._health()
        worker.last_seen = time.monotonic()
        worker.misses = 0 if state else worker.misses + 1
        worker.idle_checks = worker.idle_checks + 1 if state == "READY" and worker.current else 0
        if worker.idle_checks > LOST_AFTER_CHECKS and worker.current is not None:  # idle, its final webhook lost
            self._complete(
                worker.current,
                "failed",
                error="the worker finished this prediction but its result never reached the service",
            )
            worker.idle_checks = 0
        if state in ("READY", "BUSY"):
            worker.ready.set()
        elif state in ("DEFUNCT", "SETUP_FAILED") and worker.process is not None:
            log.warning("worker %s is %s; restarting\n%s", worker.name, state, worker.process.log_tail())
            worker.process.stop()  # the next check sees it dead and restarts it
        elif state is None and worker.process is None and worker.misses >= 3:
            worker.ready.clear()
            if worker.current:
                self._complete(
                    worker.current,
                    "failed",
                    error=f"worker {worker.name} stopped answering while running this prediction",
                )

    def _health(self) -> str | None:
        if not self.worker.url:
            return None
        try:
            return requests.get(f"{self.worker.url}/health-check", timeout=2).json().get("status")  # supervisor
        except (requests.RequestException, ValueError):
            return None


def _cog_error(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:300]
    if isinstance(detail, list):
        detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[2:])}: {d.get('msg')}" for d in detail)
    return f"the worker refused the input (HTTP {response.status_code}): {detail}"


def _provenance(value: Any, row: dict, engine) -> dict | None:
    """The generation's record from the predictor's metrics, checked against its model (a worker's payload is
    bounded, not trusted for shape); None when absent or malformed (logged: the prediction itself stands). A
    fork's says whether it re-ran its parent exactly, and if not, what differs."""
    if value is None:
        return None
    try:
        record = provenance.Provenance.model_validate({**value, "rerun": None})
    except (ValidationError, TypeError) as e:
        log.warning("ignored a malformed provenance record: %s", e)
        return None
    entries = loras.entries(loras.tags_as_entries(row["input"]).get("lora_urls"))  # as the worker got them, unsigned
    if len(entries) == len(record.loras):  # as the user wrote them, not the signed URLs the worker was handed
        record.loras = [lora.model_copy(update={"url": e}) for lora, e in zip(record.loras, entries, strict=True)]
    parent = predictions.get(engine, row["forked_from"]) if row.get("forked_from") else None
    if parent and parent.get("provenance"):
        try:
            then = provenance.Provenance.model_validate(parent["provenance"])
        except ValidationError:  # a record of an older shape: no comparison, the fork's own record stands
            return record.model_dump(mode="json")
        record = provenance.compared(then, record, parent["id"])
    return record.model_dump(mode="json")


def _worker_error(error: str | None) -> str | None:
    """What the predictor said: Cog's server prefixes it with "Prediction failed: ", twice."""
    while error and error.startswith("Prediction failed: "):
        error = error[len("Prediction failed: ") :]
    return error


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(datetime.UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
