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
from datetime import datetime, timezone
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
    # The latest alert message as published, the frame it shows, and the scores over the event (console).
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)
    frame_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    scores: Mapped[str | None] = mapped_column(Text, nullable=True)


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
    """The line a camera was switched to at run time, and the line its configuration named then."""

    __tablename__ = "camera_state"

    camera: Mapped[str] = mapped_column(String(64), primary_key=True)
    line: Mapped[str] = mapped_column(String(128))
    updated: Mapped[str] = mapped_column(String(40))
    config_line: Mapped[str | None] = mapped_column(String(128), nullable=True)


@dataclass(frozen=True)
class PersistedLines:
    """Which line each camera judges at start. A line switched at run time (`line/set`) stands across
    restarts while the configuration still names the line it named when the switch happened; once someone
    edits the camera's `line` in the configuration, the edit wins."""

    rows: dict[str, tuple[str, str | None, str]]  # camera -> (line, config line then, when)

    def line_for(self, camera: str, config_line: str) -> tuple[str, str]:
        """(line, why) for a camera whose configuration names `config_line`."""
        if camera not in self.rows:
            return config_line, "the configuration"
        line, then, when = self.rows[camera]
        if line == config_line:
            return config_line, "the configuration"
        if then is not None and then != config_line:
            return config_line, f"the configuration, edited since the switch to {line} at {when}"
        return line, f"switched at run time at {when} (the configuration says {config_line})"


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
    """Everything one alert message writes: the event row's new state, the heatmap and the frame it shows, the
    outbox rows."""

    event: dict[str, Any]
    heatmap_jpeg: bytes | None
    messages: list[tuple[str, bytes, int, bool, str]]  # topic, payload, qos, retain, kind
    captured_mono: float
    frame_jpeg: bytes | None = None


# Columns added to tables of an older agent's database: (table, column, SQL type).
ADDED_COLUMNS = (
    ("camera_state", "config_line", "VARCHAR(128)"),
    ("events", "payload", "TEXT"),
    ("events", "frame_path", "VARCHAR(512)"),
    ("events", "scores", "TEXT"),
)


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
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """A database made by an older agent lacks the columns added since; its rows keep what they had."""
        with self.engine.begin() as conn:
            for table, column, sql_type in ADDED_COLUMNS:
                columns = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table})")}
                if column not in columns:
                    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

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

    def camera_lines(self) -> PersistedLines:
        with Session(self.engine) as s:
            return PersistedLines(
                {r.camera: (r.line, r.config_line, r.updated) for r in s.scalars(select(CameraStateRow))}
            )

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
    def _write_files(self, rec: AlertRecord) -> dict[str, str]:
        """The heatmap (one file per message) and the frame (the event's latest) beside the event's row."""
        written: dict[str, str] = {}
        folder = self.heatmaps / rec.event["event_id"]
        files = {
            "heatmap_path": (f"{rec.event['messages']:03d}.jpg", rec.heatmap_jpeg),
            "frame_path": ("frame.jpg", rec.frame_jpeg),
        }
        for column, (name, data) in files.items():
            if data is None:
                continue
            path = folder / name
            try:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written[column] = str(path)
            except OSError as exc:
                if is_disk_full(exc):
                    for done in [path, *map(Path, written.values())]:
                        with contextlib.suppress(OSError):
                            done.unlink()
                    raise
                fields = {"event_id": rec.event["event_id"], "file": name, "error": str(exc)}
                log.error("alert file not written", extra={"fields": fields})
        return written

    def record_alert(self, rec: AlertRecord) -> list[int]:
        ev = rec.event
        written = self._write_files(rec)
        try:
            with Session(self.engine) as s, s.begin():
                row = s.scalar(select(EventRow).where(EventRow.event_id == ev["event_id"]))
                values = dict(ev) | written
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
            for path in written.values():
                with contextlib.suppress(OSError):
                    Path(path).unlink()
            raise

    def ack(self, ids: list[int]) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(delete(OutboxRow).where(OutboxRow.id.in_(ids)))

    def set_line(self, camera: str, line: str, config_line: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(CameraStateRow, camera)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            if row is None:
                s.add(CameraStateRow(camera=camera, line=line, updated=now, config_line=config_line))
            else:
                row.line, row.updated, row.config_line = line, now, config_line

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
