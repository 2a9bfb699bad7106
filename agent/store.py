"""The agent's SQLite tables (events, outbox, camera state) and the single writer that owns them.

Every alert is committed (event row, heatmap file, outbox messages) before anything is published; an
outbox row leaves only when the broker has acknowledged it. All writes go through one thread, so the
inference loop never waits for the disk, and SQLite never sees two writers of ours.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import Engine, Float, Integer, LargeBinary, String, Text, delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .config import StorageConfig

log = logging.getLogger(__name__)


class AgentBase(DeclarativeBase):
    """Tables owned by the agent."""


class EventRow(AgentBase):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    camera: Mapped[str] = mapped_column(String(64), index=True)
    line: Mapped[str] = mapped_column(String(128))
    model_id: Mapped[str] = mapped_column(String(32))
    calibration_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(8))  # open | closed
    opened_at: Mapped[str] = mapped_column(String(40))
    closed_at: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_ts: Mapped[float] = mapped_column(Float, index=True)
    first_frame_index: Mapped[int] = mapped_column(Integer)
    last_frame_index: Mapped[int] = mapped_column(Integer)
    frame_index: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    peak_score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    p_value: Mapped[float] = mapped_column(Float)
    regions: Mapped[str] = mapped_column(Text)
    heatmap_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)


class OutboxRow(AgentBase):
    __tablename__ = "outbox"
    # AUTOINCREMENT: ids are never reused after deletes, so id order is the order alerts were raised.
    __table_args__: ClassVar[dict] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(256))
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    qos: Mapped[int] = mapped_column(Integer)
    retain: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created: Mapped[float] = mapped_column(Float)
    captured_mono: Mapped[float] = mapped_column(Float, default=0.0)


class CameraStateRow(AgentBase):
    __tablename__ = "camera_state"

    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[str] = mapped_column(String(128))
    updated: Mapped[str] = mapped_column(String(40))


@dataclass
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    event_id: str | None
    captured_mono: float


@dataclass
class AlertRecord:
    """Everything one alert message writes: the event row's new state, the heatmap, the outbox rows."""

    event: dict[str, Any]
    heatmap_jpeg: bytes | None
    messages: list[tuple[str, bytes, int, bool, str]]  # topic, payload, qos, retain, kind
    captured_mono: float


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, OperationalError) and "full" in str(exc.orig).lower()


def free_mb(path: Path) -> float:
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return float("inf")


class AgentStore:
    """Reads from any thread; writes only from the writer thread (see Writer)."""

    def __init__(self, engine: Engine, heatmaps: Path, cfg: StorageConfig):
        self.engine = engine
        self.heatmaps = heatmaps
        self.cfg = cfg
        heatmaps.mkdir(parents=True, exist_ok=True)
        AgentBase.metadata.create_all(engine)

    # ------------------------------------------------------------------ reads
    def pending(self, after_id: int, limit: int) -> list[OutboxMessage]:
        with Session(self.engine) as s:
            rows = s.scalars(select(OutboxRow).where(OutboxRow.id > after_id).order_by(OutboxRow.id).limit(limit))
            return [
                OutboxMessage(r.id, r.topic, r.payload, r.qos, bool(r.retain), r.kind, r.event_id, r.captured_mono)
                for r in rows
            ]

    def outbox_depth(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(OutboxRow)) or 0)

    def camera_lines(self) -> dict[str, str]:
        with Session(self.engine) as s:
            return {r.camera: r.line for r in s.scalars(select(CameraStateRow))}

    def events(self, camera: str | None = None) -> list[EventRow]:
        with Session(self.engine) as s:
            q = select(EventRow).order_by(EventRow.id)
            if camera:
                q = q.where(EventRow.camera == camera)
            rows = list(s.scalars(q))
            s.expunge_all()
            return rows

    def latest_heatmaps(self) -> dict[str, str]:
        """camera -> heatmap file of its latest alert, to republish the retained heatmap after reconnect."""
        out: dict[str, str] = {}
        with Session(self.engine) as s:
            for cam, path in s.execute(select(EventRow.camera, EventRow.heatmap_path).order_by(EventRow.id)):
                if path:
                    out[cam] = path
        return out

    # ------------------------------------------------------------------ writes (writer thread only)
    def record_alert(self, rec: AlertRecord) -> list[int]:
        ev = rec.event
        path = None
        if rec.heatmap_jpeg is not None:
            folder = self.heatmaps / ev["event_id"]
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{ev['messages']:03d}.jpg"
                path.write_bytes(rec.heatmap_jpeg)
            except OSError as exc:
                if is_disk_full(exc):
                    with contextlib.suppress(OSError):
                        path and path.unlink()
                    raise
                log.error("heatmap file not written", extra={"fields": {"event_id": ev["event_id"], "error": str(exc)}})
                path = None
        try:
            with Session(self.engine) as s, s.begin():
                row = s.scalar(select(EventRow).where(EventRow.event_id == ev["event_id"]))
                values = dict(ev)
                if path is not None:
                    values["heatmap_path"] = str(path)
                if row is None:
                    s.add(EventRow(**values))
                else:
                    for k, v in values.items():
                        if k not in ("opened_at", "created_ts", "first_frame_index", "latency_ms") or v is not None:
                            setattr(row, k, v)
                ids = []
                now = time.time()
                for topic, payload, qos, retain, kind in rec.messages:
                    o = OutboxRow(
                        topic=topic,
                        payload=payload,
                        qos=qos,
                        retain=int(retain),
                        kind=kind,
                        event_id=ev["event_id"],
                        created=now,
                        captured_mono=rec.captured_mono,
                    )
                    s.add(o)
                    s.flush()
                    ids.append(o.id)
            return ids
        except Exception:
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
            raise

    def ack(self, ids: list[int]) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))

    def set_line(self, camera: str, line: str) -> None:
        from datetime import datetime, timezone

        with Session(self.engine) as s, s.begin():
            row = s.get(CameraStateRow, camera)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if row is None:
                s.add(CameraStateRow(camera=camera, line=line, updated=now))
            else:
                row.line, row.updated = line, now

    def _delete_events(self, s: Session, rows: list[EventRow]) -> int:
        for r in rows:
            shutil.rmtree(self.heatmaps / r.event_id, ignore_errors=True)
        if rows:
            s.execute(delete(EventRow).where(EventRow.id.in_([r.id for r in rows])))
        return len(rows)

    def retention(self, now: float | None = None, need_space: bool = False) -> dict[str, int]:
        """Delete events (and their heatmaps) by age, by count, and oldest first while free disk space is
        below the floor. Outbox rows are never deleted here: they are alerts not yet delivered."""
        now = time.time() if now is None else now
        out = {"age": 0, "count": 0, "disk": 0}
        with Session(self.engine) as s, s.begin():
            old = list(s.scalars(select(EventRow).where(EventRow.created_ts < now - self.cfg.max_age_days * 86400)))
            out["age"] = self._delete_events(s, old)
            total = int(s.scalar(select(func.count()).select_from(EventRow)) or 0)
            if total > self.cfg.max_events:
                extra = list(s.scalars(select(EventRow).order_by(EventRow.id).limit(total - self.cfg.max_events)))
                out["count"] = self._delete_events(s, extra)
        while need_space or free_mb(self.heatmaps) < self.cfg.min_free_mb:
            with Session(self.engine) as s, s.begin():
                batch = list(s.scalars(select(EventRow).order_by(EventRow.id).limit(20)))
                if not batch:
                    break
                out["disk"] += self._delete_events(s, batch)
            if need_space:
                need_space = False
        if any(out.values()):
            log.info("retention", extra={"fields": out})
        return out


class Writer:
    """The one thread that writes: jobs run in order; a disk-full failure frees space (oldest events
    first) and the job is retried, so an alert is never dropped because the disk filled up."""

    def __init__(self, store: AgentStore, retry_s: float = 2.0):
        self.store = store
        self.retry_s = retry_s
        self._q: queue.Queue[tuple[Callable[[], Any], Callable[[Any], None] | None] | None] = queue.Queue()
        self._retry: deque = deque()
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self.disk_full = False
        self.errors = 0
        self.last_error = ""

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Callable[[], Any], done: Callable[[Any], None] | None = None) -> None:
        self._q.put((job, done))

    def depth(self) -> int:
        return self._q.qsize() + len(self._retry)

    def stop(self, timeout: float = 10.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        done = threading.Event()
        self.submit(lambda: None, lambda _: done.set())
        return done.wait(timeout)

    def _execute(self, job, done) -> bool:
        try:
            result = job()
        except Exception as exc:
            if is_disk_full(exc):
                self.disk_full = True
                self.last_error = "disk full"
                log.error("disk full: freeing space", extra={"fields": {"error": str(exc)[:200]}})
                try:
                    self.store.retention(need_space=True)
                except Exception as rexc:
                    log.error("retention failed", extra={"fields": {"error": str(rexc)[:200]}})
                return False
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.exception("write failed", extra={"fields": {"error": self.last_error}})
            return True  # not a transient condition: do not retry for ever
        self.disk_full = False
        if done is not None:
            try:
                done(result)
            except Exception:
                log.exception("writer callback failed")
        return True

    def _run(self) -> None:
        while True:
            if self._retry:
                job, done = self._retry[0]
                if self._execute(job, done):
                    self._retry.popleft()
                    continue
                time.sleep(self.retry_s)
                # Keep accepting jobs meanwhile: they queue behind the retried one, in order.
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        return
                    self._retry.append(item)
                continue
            item = self._q.get()
            if item is None:
                return
            if not self._execute(*item):
                self._retry.append(item)


def event_values(**kw: Any) -> dict[str, Any]:
    """The events-row columns of an alert message, JSON-encoding the regions."""
    kw["regions"] = json.dumps(kw.get("regions", []))
    return kw
