"""Prediction rows: create, read, page, and the queue (claim, start, finish, cancel, recover).

Every state change is one conditional UPDATE, so two service processes sharing a database
can never both claim, finish or cancel the same prediction. Status names are Replicate's:
``starting`` (queued or being handed to a worker), ``processing``, then ``succeeded``,
``failed`` or ``canceled``.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from lora_core.service.storage import files, loras
from lora_core.service.storage.db import instances, predictions as P, row_by_id, utcnow, webhook_deliveries as W
from lora_core.service.storage.file_store import FileStore

TERMINAL = ("succeeded", "failed", "canceled")
INTERRUPTED = (
    "interrupted: the process running this prediction stopped before it finished (restarted, or it died and its "
    "heartbeat lapsed); you can run the prediction again"
)
Row = dict[str, Any]


def new_id() -> str:
    """26 lowercase base32 characters, like Replicate's ids; unguessable (130 bits)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]


def create(
    engine: Engine,
    *,
    owner: str,
    model: str,
    version: str,
    kind: str,
    input: dict,
    source: str = "api",
    webhook: str | None = None,
    webhook_events_filter: list[str] | None = None,
    forked_from: str | None = None,
    destination: str | None = None,
) -> Row:
    row = dict(
        id=new_id(),
        owner=owner,
        model=model,
        version=version,
        kind=kind,
        source=source,
        status="starting",
        input=input,
        output=None,
        error=None,
        logs="",
        metrics=None,
        provenance=None,
        data_removed=False,
        destination=destination,
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
        forked_from=forked_from,
        created_at=utcnow(),
        started_at=None,
        completed_at=None,
        worker=None,
        instance=None,
        cancel_requested=False,
        claimed_at=None,
    )
    with engine.begin() as c:
        c.execute(P.insert().values(**row))
    return row


def get(engine: Engine, prediction_id: str, owner: str | None = None) -> Row | None:
    return row_by_id(engine, P, prediction_id, owner)


def existing(engine: Engine, prediction_id: str) -> Row:
    """The row of a prediction known to exist (predictions are never deleted): for code that created or claimed it."""
    row = get(engine, prediction_id)
    if row is None:
        raise LookupError(f"prediction {prediction_id} is not in the database")
    return row


def page(
    engine: Engine,
    owner: str,
    cursor: str | None = None,
    limit: int = 20,
    model: str | None = None,
    kind: str | None = None,
) -> tuple[list[Row], str | None, str | None]:
    """Newest first. Returns (rows, cursor of the next (older) page, cursor of the previous (newer) page)."""
    direction, after = _decode_cursor(cursor)
    query = sa.select(P).where(P.c.owner == owner)
    if model:
        query = query.where(P.c.model == model)
    if kind:
        query = query.where(P.c.kind == kind)
    key = sa.tuple_(P.c.created_at, P.c.id)
    if after is not None:
        query = query.where(key < after if direction == "older" else key > after)
    order = (P.c.created_at.desc(), P.c.id.desc()) if direction == "older" else (P.c.created_at, P.c.id)
    with engine.connect() as c:
        rows = [dict(r) for r in c.execute(query.order_by(*order).limit(limit + 1)).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    if direction == "newer":
        rows.reverse()
    if not rows:
        return [], None, None
    older = _encode_cursor("older", rows[-1]) if (more or direction == "newer") else None
    newer = _encode_cursor("newer", rows[0]) if (after is not None and (direction == "older" or more)) else None
    return rows, older, newer


def _encode_cursor(direction: str, row: Row) -> str:
    raw = json.dumps([direction, row["created_at"].isoformat(), row["id"]])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[str, tuple | None]:
    if not cursor:
        return "older", None
    try:
        direction, created, pid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        assert direction in ("older", "newer")
        return direction, (datetime.datetime.fromisoformat(created), str(pid))
    except Exception:  # noqa: BLE001 - any malformed cursor is the same user error
        raise ValueError("invalid cursor; use the 'next' or 'previous' URL of a page") from None


# ---- the queue ------------------------------------------------------------------------------------------------


def claim_next(engine: Engine, model: str, worker: str, instance: str, max_running: int = 0) -> Row | None:
    """The next queued prediction of ``model``, now assigned to ``worker`` (or None).

    Fair across owners: the owner whose last turn on this model is oldest (or who never had one) goes next,
    oldest prediction first within an owner; so one owner's flood delays another owner's next prediction by at
    most one prediction per worker. Owners already running ``max_running`` predictions (0: no limit) wait.
    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` hands each row to one claimer without waiting; SQLite serialises
    writers. Either way the UPDATE's condition makes a lost race harmless.
    """
    turns, running = P.alias("turns"), P.alias("running")
    last_turn = (
        sa.select(sa.func.max(turns.c.claimed_at))
        .where(turns.c.model == P.c.model, turns.c.owner == P.c.owner)
        .scalar_subquery()
    )
    query = sa.select(P.c.id).where(P.c.status == "starting", P.c.model == model, P.c.worker.is_(None))
    if max_running:
        busy = (
            sa.select(sa.func.count())
            .select_from(running)
            .where(
                running.c.owner == P.c.owner,
                running.c.worker.is_not(None),
                running.c.status.in_(("starting", "processing")),
            )
            .scalar_subquery()
        )
        query = query.where(busy < max_running)
    query = query.order_by(sa.func.coalesce(last_turn, _NEVER), P.c.created_at, P.c.id).limit(1)
    for _ in range(5):
        with engine.begin() as c:
            pid = c.execute(query.with_for_update(skip_locked=True, of=P)).scalar()
            if pid is None:
                return None
            claimed = (
                c.execute(
                    P.update()
                    .where(P.c.id == pid, P.c.status == "starting", P.c.worker.is_(None))
                    .values(worker=worker, instance=instance, claimed_at=utcnow())
                    .returning(*P.c)
                )
                .mappings()
                .first()
            )
        if claimed:
            return dict(claimed)
    return None


_NEVER = datetime.datetime(1970, 1, 1)


def unclaim(engine: Engine, prediction_id: str, worker: str) -> bool:
    """Back to the queue: the worker refused it before starting (e.g. it was busy after a restart)."""
    with engine.begin() as c:
        return bool(
            c.execute(
                P.update()
                .where(P.c.id == prediction_id, P.c.worker == worker, P.c.status == "starting")
                .values(worker=None, instance=None, claimed_at=None)
            ).rowcount
        )


def update_running(
    engine: Engine,
    prediction_id: str,
    worker: str,
    *,
    logs: str | None = None,
    output: Any = None,
    started_at: datetime.datetime | None = None,
) -> Row | None:
    """Progress from the worker running it, in one statement; None once it is final or if another worker has it."""
    values: dict[str, Any] = {
        "status": "processing",
        "started_at": sa.func.coalesce(P.c.started_at, started_at or utcnow()),
    }
    if logs is not None:
        values["logs"] = logs
    if output is not None:
        values["output"] = output
    with engine.begin() as c:
        row = (
            c.execute(
                P.update()
                .where(P.c.id == prediction_id, P.c.worker == worker, P.c.status.in_(("starting", "processing")))
                .values(**values)
                .returning(*P.c)
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def finish(
    engine: Engine,
    prediction_id: str,
    status: str,
    *,
    worker: str | None = None,
    output: Any = None,
    error: str | None = None,
    logs: str | None = None,
    metrics: dict | None = None,
    provenance: dict | None = None,
) -> Row | None:
    """The final state, once (None if it already had one, or belongs to another worker)."""
    assert status in TERMINAL
    now = utcnow()
    values: dict[str, Any] = {"status": status, "completed_at": now, "error": error}
    if provenance is not None:
        values["provenance"] = provenance
    if output is not None:
        values["output"] = output
    if logs is not None:
        values["logs"] = logs
    with engine.begin() as c:
        row = c.execute(sa.select(P.c.started_at, P.c.created_at, P.c.metrics).where(P.c.id == prediction_id)).first()
        if row is None:
            return None
        merged = dict(row.metrics or {}) | dict(metrics or {})
        if row.started_at is not None and "predict_time" not in merged:
            merged["predict_time"] = (now - row.started_at).total_seconds()
        merged["total_time"] = (now - row.created_at).total_seconds()
        query = P.update().where(P.c.id == prediction_id, P.c.status.notin_(TERMINAL))
        if worker is not None:
            query = query.where(P.c.worker == worker)
        done = c.execute(query.values(**values, metrics=merged).returning(*P.c)).mappings().first()
    return dict(done) if done else None


def append_log(engine: Engine, prediction_id: str, line: str) -> Row | None:
    """The service's own line at the end of an ended prediction's logs (e.g. where its LoRA was published)."""
    with engine.begin() as c:
        logs = c.execute(sa.select(P.c.logs).where(P.c.id == prediction_id, P.c.data_removed.is_(False))).scalar()
        if logs is None:  # gone, or its data removed since
            return None
        joined = f"{logs}\n{line}\n" if logs and not logs.endswith("\n") else f"{logs}{line}\n"
        c.execute(P.update().where(P.c.id == prediction_id).values(logs=joined))
    return get(engine, prediction_id)


def remove_data(engine: Engine, store: FileStore, prediction_id: str) -> Row | None:
    """An ended prediction's output files deleted from the store (their signed URLs answer 404 from then on) and its
    input, output, logs and provenance emptied, ``data_removed`` set; the row stays, for history and accounting. A
    training's published LoRA versions go with its file (the name's newest is then the version before; their numbers
    are never given again). None if it has not ended: a running one would upload again."""
    cleared: dict[str, Any] = {"input": {}, "output": None, "logs": "", "provenance": None, "data_removed": True}
    cleared |= {"error": None, "webhook": None}  # an error can quote the input; the webhook is the owner's URL
    with engine.begin() as c:  # marked first, at once: of two processes removing it, one deletes the files
        marked = c.execute(
            P.update()
            .where(P.c.id == prediction_id, P.c.status.in_(TERMINAL), P.c.data_removed.is_(False))
            .values(**cleared)
        ).rowcount
        if marked:
            loras.unpublish(c, prediction_id)
            unsent = W.update().where(W.c.prediction_id == prediction_id, W.c.status == "pending")
            c.execute(
                unsent.values(status="failed", completed_at=utcnow(), last_error="not sent: its data was removed")
            )
            c.execute(W.update().where(W.c.prediction_id == prediction_id).values(body=None))  # the events' JSON
    row = get(engine, prediction_id)
    if row is None or not row["data_removed"]:
        return None  # not ended: a running prediction would upload again
    for file_row in files.of_prediction(engine, prediction_id):
        files.delete(engine, store, file_row)
    return row


def remove_expired(engine: Engine, store: FileStore, older_than: datetime.timedelta, limit: int = 100) -> list[str]:
    """The data of up to ``limit`` predictions that ended more than ``older_than`` ago removed (oldest first). A
    training whose LoRA is published under a name is kept: names do not expire (its owner can delete it)."""
    cutoff = utcnow() - older_than
    published = loras.published_trainings()
    with engine.connect() as c:
        ids = list(
            c.execute(
                sa.select(P.c.id)
                .where(P.c.status.in_(TERMINAL), P.c.completed_at < cutoff, P.c.data_removed.is_(False))
                .where(P.c.id.not_in(published))
                .order_by(P.c.completed_at)
                .limit(limit)
            ).scalars()
        )
    return [pid for pid in ids if remove_data(engine, store, pid) is not None]


def cancel(engine: Engine, prediction_id: str) -> str:
    """'canceled' if it was still queued (now final), 'requested' if running, 'final' if already done."""
    with engine.begin() as c:
        queued = c.execute(
            P.update()
            .where(P.c.id == prediction_id, P.c.status == "starting", P.c.worker.is_(None))
            .values(status="canceled", completed_at=utcnow())
        ).rowcount
        if queued:
            return "canceled"
        running = c.execute(
            P.update().where(P.c.id == prediction_id, P.c.status.notin_(TERMINAL)).values(cancel_requested=True)
        ).rowcount
    return "requested" if running else "final"


def cancel_requested(engine: Engine, prediction_id: str) -> bool:
    with engine.connect() as c:
        return bool(c.execute(sa.select(P.c.cancel_requested).where(P.c.id == prediction_id)).scalar())


# ---- instances: who holds which running predictions ------------------------------------------------------------


def heartbeat(engine: Engine, instance: str) -> None:
    with engine.begin() as c:
        if not c.execute(instances.update().where(instances.c.name == instance).values(heartbeat_at=utcnow())).rowcount:
            c.execute(instances.insert().values(name=instance, heartbeat_at=utcnow()))


def fail_interrupted(engine: Engine, instance: str, stale_after_s: float, *, at_start: bool) -> list[str]:
    """Fail ('interrupted') claimed predictions whose service instance is gone: those of instances
    silent for ``stale_after_s`` and, ``at_start``, this instance's own (it has just started, so it
    runs none). Queued ones stay queued."""
    cutoff = utcnow() - datetime.timedelta(seconds=stale_after_s)
    alive = sa.select(instances.c.name).where(instances.c.heartbeat_at >= cutoff, instances.c.name != instance)
    orphaned = P.c.instance.notin_(alive) if at_start else sa.and_(P.c.instance.notin_(alive), P.c.instance != instance)
    with engine.connect() as c:
        ids = list(
            c.execute(sa.select(P.c.id).where(P.c.status.notin_(TERMINAL), P.c.worker.is_not(None), orphaned)).scalars()
        )
    return [pid for pid in ids if finish(engine, pid, "failed", error=INTERRUPTED)]


def queue_figures(engine: Engine) -> dict[str, dict[str, Any]]:
    """Per model: ``queued`` (waiting for a worker), ``oldest_queued_at``, ``running`` (claimed, not finished) and
    ``finished`` (count per final status): what the metrics and an autoscaler read."""
    out: dict[str, dict[str, Any]] = {}

    def entry(model: str) -> dict[str, Any]:
        return out.setdefault(model, {"queued": 0, "oldest_queued_at": None, "running": 0, "finished": {}})

    waiting = P.c.worker.is_(None)
    with engine.connect() as c:
        for model, claimed, n, oldest in c.execute(
            sa.select(P.c.model, ~waiting, sa.func.count(), sa.func.min(P.c.created_at))
            .where(P.c.status.notin_(TERMINAL))
            .group_by(P.c.model, ~waiting)
        ):
            if claimed:
                entry(model)["running"] = n
            else:
                entry(model).update(queued=n, oldest_queued_at=oldest)
        for model, status, n in c.execute(
            sa.select(P.c.model, P.c.status, sa.func.count())
            .where(P.c.status.in_(TERMINAL))
            .group_by(P.c.model, P.c.status)
        ):
            entry(model)["finished"][status] = n
    return out
